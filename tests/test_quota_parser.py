"""RFC 9208 QUOTA/QUOTAROOT parsing (pure; no live quota export yet)."""

from __future__ import annotations

import random

from probes.receipt.quota import Usage, parse_quota, parse_quotaroot


def test_quota_response_in_base_units() -> None:
    root, usage = parse_quota(b'* QUOTA "User quota" (STORAGE 486 512 MESSAGE 19 20)\r\n') or ("", {})
    assert root == "User quota"
    assert usage == {"STORAGE": Usage(486 * 1024, 512 * 1024), "MESSAGE": Usage(19, 20)}
    assert usage["MESSAGE"].ratio == 0.95
    assert parse_quota(b'* QUOTA "" (STORAGE 0 0)') == ("", {"STORAGE": Usage(0, 0)})
    assert parse_quota(b'* QUOTA "" (STORAGE 0 0)')[1]["STORAGE"].ratio is None  # type: ignore[index]


def test_quotaroot_response() -> None:
    assert parse_quotaroot(b'* QUOTAROOT INBOX "User quota"\r\n') == ("INBOX", ["User quota"])
    assert parse_quotaroot(b"* QUOTAROOT INBOX") == ("INBOX", [])
    assert parse_quotaroot(b'* QUOTAROOT "a b" r1 "r 2"') == ("a b", ["r1", "r 2"])


def test_malformed_is_none_never_an_error() -> None:
    for line in (
        b"* QUOTA root (STORAGE 10)",
        b"* QUOTA root (STORAGE x 10)",
        b"* QUOTA root STORAGE 1 2",
        b"* QUOTA root (STORAGE 1 2",
        b"* QUOTA root (" + b"STORAGE 1 2 " * 40 + b")",
        b"* QUOTA root (STORAGE 123456789012345678901 2)",
        b"* OK hello",
    ):
        assert parse_quota(line) is None, line
    rng = random.Random(9208)
    for _ in range(3000):
        blob = b"* QUOTA " + bytes(
            rng.choice(b' ()"\\0123456789STORAGEMESSAGEx\r\n') for _ in range(rng.randint(0, 60))
        )
        parse_quota(blob)
        parse_quotaroot(blob.replace(b"QUOTA", b"QUOTAROOT", 1))


def test_a_root_without_limits_outside_rfc_9208_is_no_limit() -> None:
    """Issue 19: Courier answers a mailbox without quota with ``* QUOTA "ROOT"`` (no resource list);
    that, and ``()``, mean "no limit" (lenient), never a protocol error that grows every run. A list
    that is there but malformed stays None (strict)."""
    assert parse_quota(b'* QUOTA "ROOT"\r\n') == ("ROOT", {})
    assert parse_quota(b'* QUOTA "ROOT" ()') == ("ROOT", {})
    assert parse_quota(b"* QUOTA ROOT") == ("ROOT", {})
    for line in (b'* QUOTA "ROOT" (STORAGE 1)', b'* QUOTA "ROOT" junk', b"* QUOTA", b'* QUOTA "ROOT" ('):
        assert parse_quota(line) is None, line
