"""Real Postfix + Dovecot: probes sharing a mailbox with a busy mail client, and a mailbox of hostile mail."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from probes import canary
from tests.mailstack import MailStack
from tests.support.messages import legacy_v1_message
from tests.support.sharedmailbox import KEY, make_runner, run_shared

RUNS = int(os.environ.get("MAILCANARY_SHARED_RUNS", "100"))


def test_shared_mailbox_no_false_failures(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    result = run_shared(mailstack, tmp_path, mailbox, RUNS)
    assert result.runs >= RUNS
    # The client really did get in the way: it deleted and moved foreign mail while the probes ran.
    assert result.client.actions["deliver"] > 0
    assert result.client.actions["pop3_delete"] + result.client.actions["imap_delete"] > 0
    assert result.false_failures == 0, result.messages[:5]
    # Nothing of ours is left behind: the two probes cleaned up every canary they sent.
    left = [p for p in mailstack.messages(mailbox) if canary.HEADER.encode() in p.read_bytes()]
    assert left == []


def _flags(path: Path) -> str:
    return path.name.split(":2,", 1)[1] if ":2," in path.name else ""


def _seed_cur(stack: MailStack, address: str, raw: bytes, flags: str) -> Path:
    """A foreign message already seen by a client, with Maildir flags (T = \\Deleted)."""
    path = stack.inject(address, raw)
    target = path.parent.parent / "cur" / f"{path.name}:2,{flags}"
    path.rename(target)
    return target


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
def test_hostile_seeded_mailbox(mailstack: MailStack, mailbox: str, tmp_path: Path, protocol: str) -> None:
    """Every foreign message byte- and flag-identical afterwards; every canary (v2 and legacy v1) gone."""
    # A small line cap, so that a foreign line over it is met (and skipped) in a message small enough to read.
    runner = make_runner(mailstack, tmp_path, mailbox, receive__max_line_bytes=4096)
    probe = next(p for p in runner.loaded.config.roundtrip if p.name == f"shared-{protocol}")
    name = probe.name
    old = time.time() - 7200
    stale_v2 = canary.new_token(name, now=old)
    stale_v1 = canary.new_token(name, now=old - 1)
    real = canary.build_message(stale_v2, KEY, mailbox, mailbox)
    [value] = canary.tokens_in_header(real)
    other_key = b"somebody-elses-key-0123456789abc"
    foreign: list[tuple[bytes, str]] = [
        (b"From: a@example.org\r\nX-Long: " + b"h" * 100_000 + b"\r\nSubject: long header\r\n\r\nx\r\n", ""),
        (b"From: a@example.org\r\nSubject: long body\r\n\r\n" + b"b" * 200_000 + b"\r\n", ""),
        (
            b"From: a@example.org\r\nX-Line: "
            + b"l" * 10_000
            + b"\r\nSubject: over the line cap\r\n\r\nx\r\n",
            "",
        ),
        (b"From: a@example.org\r\nSubject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 10_000, ""),  # 10 MB
        (
            b"From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\r\n"
            b"Subject: =?utf-8?q?broken\r\n\r\n--\r\n--x--\r\n\xff\xfe\r\n",
            "",
        ),
        # our header, our probe, another key (forged)
        (canary.build_message(canary.new_token(name, now=old), other_key, mailbox, mailbox), ""),
        # a real canary's token header transplanted onto a user's mail (forwarding, copied headers)
        (
            f"From: a@example.org\r\nMessage-ID: <user@example.org>\r\n{canary.HEADER}: {value}\r\n"
            "Subject: fwd\r\n\r\nplease read\r\n".encode(),
            "",
        ),
        # the same header on a message keeping the canary's Message-ID but another body
        (real.replace(b"It is deleted automatically", b"It was forwarded by a user"), ""),
        # a token header in the body only
        (b"From: a@example.org\r\nSubject: quoted\r\n\r\n" + f"{canary.HEADER}: {value}\r\n".encode(), ""),
        # user mail flagged \Deleted by the user's client, and flagged/seen mail
        (b"From: a@example.org\r\nSubject: user deleted this\r\n\r\nbye\r\n", "T"),
        (b"From: a@example.org\r\nSubject: flagged\r\n\r\nkeep\r\n", "FS"),
    ]
    seeded: list[tuple[bytes, str]] = []
    for raw, flags in foreign:
        if flags:
            _seed_cur(mailstack, mailbox, raw, flags)
        else:
            mailstack.inject(mailbox, raw)
        seeded.append((raw, flags))
    mailstack.inject(mailbox, real)
    mailstack.inject(mailbox, legacy_v1_message(stale_v1, KEY, mailbox, mailbox))

    result = asyncio.run(runner.run_entry(probe))
    assert result.success, result.message
    assert result.swept == 2

    files = mailstack.messages(mailbox)
    now = [(p.read_bytes(), _flags(p)) for p in files]
    for raw, flags in seeded:
        matches = [f for data, f in now if data in (raw, raw.replace(b"\r\n", b"\n"))]
        assert matches, f"foreign message gone or altered: {raw[:60]!r}"
        assert matches[0] == flags, f"flags of {raw[:60]!r} changed: {flags!r} -> {matches[0]!r}"
    assert len(now) == len(seeded)  # both stale canaries and this run's canary are gone
