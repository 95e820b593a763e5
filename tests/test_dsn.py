"""The bounce parser (probes.receipt.dsn): RFC 3464 reports and plain-text bounces about our canary,
verified by the returned token; fuzzed so that no input makes it raise."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from probes import canary
from probes.receipt.dsn import MAX_BOUNCE_BYTES, parse_bounce, returned_token
from tests.support.messages import dsn

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def _canary(probe: str = "rt", key: bytes = KEY) -> tuple[canary.Token, bytes]:
    token = canary.new_token(probe)
    return token, canary.build_message(token, key, "a@example.test", "nouser@example.test")


def test_permanent_dsn_with_the_full_message_returned() -> None:
    token, original = _canary()
    bounce = parse_bounce(dsn(original))
    assert bounce is not None and bounce.kind == "dsn"
    assert bounce.permanent and bounce.action == "failed"
    assert bounce.status == "5.1.1" and bounce.status_class == "5.1.x"
    assert bounce.diagnostic is not None and "user unknown" in bounce.diagnostic
    assert returned_token(bounce, KEY, "rt") == token


def test_headers_only_return_verifies_too() -> None:
    token, original = _canary()
    bounce = parse_bounce(dsn(original, headers_only=True))
    assert bounce is not None and returned_token(bounce, KEY, "rt") == token


def test_delayed_dsn_is_not_permanent() -> None:
    token, original = _canary()
    bounce = parse_bounce(dsn(original, action="delayed", status="4.4.1", headers_only=True))
    assert bounce is not None and not bounce.permanent and bounce.action == "delayed"
    assert bounce.status_class == "4.4.x"
    assert returned_token(bounce, KEY, "rt") == token


def test_a_canary_is_never_a_bounce() -> None:
    """A late canary (or a forward of one) carries our token at the top: never taken for a bounce."""
    _, original = _canary()
    assert parse_bounce(original) is None
    forwarded = original.replace(b"Subject:", b"Subject: Fwd:", 1) + b"\r\nX-Mailcanary-Token: x\r\n"
    assert parse_bounce(forwarded) is None


def test_other_key_probe_or_altered_headers_do_not_verify() -> None:
    _, original = _canary(key=OTHER_KEY)
    bounce = parse_bounce(dsn(original))
    assert bounce is not None and returned_token(bounce, KEY, "rt") is None  # another instance's canary
    _, original = _canary()
    bounce = parse_bounce(dsn(original))
    assert bounce is not None and returned_token(bounce, KEY, "other") is None  # another probe
    altered = original.replace(b"Message-ID: <", b"Message-ID: <x", 1)
    bounce = parse_bounce(dsn(altered))
    assert bounce is not None and returned_token(bounce, KEY, "rt") is None  # MAC covers the Message-ID


def test_plain_text_bounce_by_token_in_the_body() -> None:
    token, original = _canary()
    head = canary.split_message(original)[0].decode()
    body = (
        "This is the mail system at host mx.example.test.\r\n\r\n"
        "<nouser@example.test>: host mx2 said: 550 5.1.1 <nouser@example.test>:"
        " Recipient address rejected\r\n\r\n"
        "--- Below this line is a copy of the message headers.\r\n\r\n" + head + "\r\n"
    )
    raw = (
        "Return-Path: <>\r\nFrom: MAILER-DAEMON@example.test\r\nSubject: failure notice\r\n"
        "Content-Type: text/plain\r\n\r\n" + body
    ).encode()
    bounce = parse_bounce(raw)
    assert bounce is not None and bounce.kind == "plain" and bounce.permanent
    assert bounce.status == "5.1.1"
    assert returned_token(bounce, KEY, "rt") == token
    quoted = raw.replace(b"\r\nX-Mailcanary-Token", b"\r\n> X-Mailcanary-Token")
    assert (b2 := parse_bounce(quoted)) is not None and returned_token(b2, KEY, "rt") == token


def test_plain_text_without_a_status_is_not_permanent() -> None:
    _, original = _canary()
    raw = b"From: someone@example.test\r\nSubject: hello\r\n\r\nlook:\r\n" + original
    bounce = parse_bounce(raw)
    assert bounce is not None and bounce.action == "unknown" and not bounce.permanent


def test_user_mail_and_oversized_input_are_not_bounces() -> None:
    assert parse_bounce(b"From: a@b\r\nSubject: hi\r\n\r\nhello 5.1.1\r\n") is None
    _, original = _canary()
    assert parse_bounce(dsn(original) + b"x" * MAX_BOUNCE_BYTES) is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_parse_bounce_is_total_on_bytes(data: bytes) -> None:
    bounce = parse_bounce(data)
    if bounce is not None:
        assert returned_token(bounce, KEY, "rt") is None
        assert bounce.status_class == "unknown" or bounce.status_class.endswith(".x")


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=1500), st.binary(max_size=40))
def test_parse_bounce_is_total_on_damaged_reports(cut: int, junk: bytes) -> None:
    _, original = _canary()
    raw = dsn(original)
    damaged = raw[:cut] + junk + raw[cut + len(junk) :]
    bounce = parse_bounce(damaged)
    if bounce is not None:
        assert len(bounce.status_class) <= 5 or bounce.status_class == "unknown"


def opensmtpd_bounce(original: bytes, reply: str) -> bytes:
    """A bounce as OpenSMTPD 6.8 writes it (bounce.c; captured from the interop matrix): multipart/mixed,
    not multipart/report; the reply of the next hop only in the text part (continuation lines joined,
    their codes dropped); ``Status: 5.0.0`` and no Diagnostic-Code; the whole returned message (body
    too) as text/rfc822-headers."""
    b = b"13342223342623336730/mail.example.test"
    return (
        b"Received: from mail.example.test (vm [local])\n\tby vm (OpenSMTPD) with ESMTPA id 1dd1f107\n"
        b"\tfor <a@example.test>;\n\tMon, 7 Dec 2026 02:42:44 +0000 (UTC)\n"
        b"Subject: Delivery status notification: failed\n"
        b"From: Mailer Daemon <MAILER-DAEMON@mail.example.test>\nTo: a@example.test\n"
        b"Date: Mon, 7 Dec 2026 02:42:44 +0000 (UTC)\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed;boundary="' + b + b'"\nMessage-ID: <7946a7dc8beea779@vm>\n\n'
        b"This is a MIME-encapsulated message.\n\n"
        b"--" + b + b"\nContent-Description: Notification\nContent-Type: text/plain; charset=us-ascii\n\n"
        b"    Hi!\n\n    This is the MAILER-DAEMON, please DO NOT REPLY to this email.\n\n"
        b"    An error has occurred while attempting to deliver a message for\n"
        b"    the following list of recipients:\n\n"
        b"nouser@example.test: " + reply.encode() + b"\n\n    Below is a copy of the original message:\n\n"
        b"--" + b + b"\nContent-Description: Delivery Report\nContent-Type: message/delivery-status\n\n"
        b"Reporting-MTA: dns; mail.example.test\n\n"
        b"Final-Recipient: rfc822; nouser@example.test\nAction: failed\nStatus: 5.0.0\n\n"
        b"--"
        + b
        + b"\nContent-Description: Message headers\nContent-Type: text/rfc822-headers\n\n"
        + original.replace(b"\r\n", b"\n")
        + b"\n--"
        + b
        + b"--\n"
    )


def test_opensmtpd_bounce_is_a_report_with_the_quoted_reply() -> None:
    """OpenSMTPD's bounce was read as a plain-text one whose first code is its own ``Status: 5.0.0``
    line: the diagnostic was that line, and the next hop's reply (what went wrong) was lost."""
    token, original = _canary()
    cyrus_reply = (
        "550-Mailbox unknown.  Either there is no mailbox associated with thisname or you do not have"
        " authorization to see it. User unknown"
    )
    bounce = parse_bounce(opensmtpd_bounce(original, cyrus_reply))
    assert bounce is not None and bounce.kind == "dsn" and bounce.permanent
    assert bounce.status == "5.0.0"  # all the report says: the reply quoted no enhanced code
    assert bounce.diagnostic is not None and bounce.diagnostic.startswith("nouser@example.test: 550-Mailbox")
    assert returned_token(bounce, KEY, "rt") == token


def test_opensmtpd_bounce_status_is_the_reports_own() -> None:
    """As for every report (Exim's too): the class is the report's ``Status``; a more specific code in
    the quoted reply is shown in the diagnostic, not taken over."""
    token, original = _canary()
    reply = "550 5.1.1 <nouser@example.test>: Recipient address rejected: User unknown"
    bounce = parse_bounce(opensmtpd_bounce(original, reply))
    assert bounce is not None and bounce.kind == "dsn"
    assert (bounce.status, bounce.status_class) == ("5.0.0", "5.0.x")
    assert bounce.diagnostic is not None and "550 5.1.1" in bounce.diagnostic
    assert returned_token(bounce, KEY, "rt") == token
