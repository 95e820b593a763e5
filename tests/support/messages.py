"""Mail built as others build it: a bounce report shaped like Postfix's, and a canary exactly as releases
before token v2 built it. Tests of the parsers and of the round trip both feed these."""

from __future__ import annotations

import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from probes import canary
from probes.canary import HEADER, Token


def dsn(
    original: bytes, *, action: str = "failed", status: str = "5.1.1", headers_only: bool = False
) -> bytes:
    """A report shaped like Postfix's (bounce(8)): human part, delivery-status, the returned message."""
    head = canary.split_message(original)[0] + b"\r\n\r\n"
    returned = (
        b"Content-Type: text/rfc822-headers\r\n\r\n" + head
        if headers_only
        else b"Content-Type: message/rfc822\r\n\r\n" + original
    )
    return (
        b"Return-Path: <>\r\n"
        b"From: MAILER-DAEMON@example.test (Mail Delivery System)\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\n"
        b"To: a@example.test\r\n"
        b"Auto-Submitted: auto-replied\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B1"\r\n\r\n'
        b"--B1\r\nContent-Type: text/plain\r\n\r\nI'm sorry to have to inform you...\r\n\r\n"
        b"--B1\r\nContent-Type: message/delivery-status\r\n\r\n"
        b"Reporting-MTA: dns; mx.example.test\r\nArrival-Date: Tue, 1 Dec 2026 23:00:00 +0000\r\n\r\n"
        b"Final-Recipient: rfc822; nouser@example.test\r\nOriginal-Recipient: rfc822;nouser@example.test\r\n"
        b"Action: " + action.encode() + b"\r\nStatus: " + status.encode() + b"\r\n"
        b"Diagnostic-Code: X-Postfix; user unknown. Command output: no such user\r\n\r\n"
        b"--B1\r\n" + returned + b"\r\n--B1--\r\n"
    )


def legacy_v1_message(token: Token, key: bytes, sender: str, recipient: str) -> bytes:
    """A canary exactly as releases before token v2 built it (EmailMessage, v1 token)."""
    v1 = Token(token.probe, token.sent_ms, token.nonce, version="v1")
    msg = EmailMessage(policy=policy.SMTP.clone(max_line_length=998))
    msg["Date"] = format_datetime(datetime.datetime.fromtimestamp(v1.sent, tz=datetime.UTC))
    msg["Message-ID"] = make_msgid(idstring=v1.nonce[:12], domain="example.com")
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = f"mailcanary probe {v1.probe}"
    msg["Auto-Submitted"] = "auto-generated"
    msg[HEADER] = v1.header_value(key)
    msg.set_content(
        "This is an automated delivery test sent by mailcanary.\n"
        f"Probe: {v1.probe}\n"
        f"Canary: {v1.nonce}\n"
        "It is deleted automatically when it arrives; no action is needed.\n"
    )
    return msg.as_bytes()
