"""Bounces about our canary: RFC 3464 delivery status notifications and plain-text bounce messages.

Pure functions, no I/O, total on arbitrary bytes (fuzzed): :func:`parse_bounce` reads what a bounce
says (action, status, diagnostic) and what it returned of the original message (its header block);
:func:`returned_token` decides whether that returned message was one of our canaries.

What "verifies as ours" means for a message the MTA wrote: we cannot check the bounce itself (nobody
signed it), but it must *return* our canary's header block — a token of this probe whose MAC checks out
over the Message-ID in those same returned headers and over the canary body the token implies (the body
is determined by the token, so a headers-only return verifies as strongly as a full one). A copy of the
token can only come from our canary; a forged one fails the MAC. And the message must not itself carry
our token header at the top: that is a canary (or a forward of one), never a bounce. Only a bounce that
passes both is acted on or deleted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import message_from_bytes
from email.message import Message
from email.policy import compat32
from typing import Final, Literal

from probes import canary
from probes.canary import Token

MAX_BOUNCE_BYTES: Final = 256 * 1024  # a DSN returns at most headers + the ~1 KiB canary; more is not ours
MAX_DIAGNOSTIC_CHARS: Final = 200
MAX_PARTS: Final = 20  # MIME parts looked at, at most
Action = Literal["failed", "delayed", "delivered", "relayed", "expanded", "unknown"]
_ACTIONS: Final = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})
_STATUS_TYPES: Final = ("message/delivery-status", "message/global-delivery-status")
_STATUS_RE: Final = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_CODE_RE: Final = re.compile(r"(?m)(?:^|\s)([45])[0-9][0-9][ -]")
_TOKEN_LINE_RE: Final = re.compile(rb"(?im)^[ \t>]*(X-Mailcanary-Token|Message-ID)[ \t]*:[ \t]*(\S[^\r\n]*)")


@dataclass(frozen=True)
class Bounce:
    kind: Literal["dsn", "plain"]
    action: Action
    status: str | None  # "5.1.1"; None if the bounce names none
    diagnostic: str | None  # Diagnostic-Code (or the first status line of a plain bounce), one line, bounded
    returned: bytes  # the returned header block of the original message (as far as it could be found)

    @property
    def permanent(self) -> bool:
        """A permanent failure: ``Action: failed``, or a plain bounce with a 5.x.x status."""
        return self.action == "failed"

    @property
    def status_class(self) -> str:
        """Bounded label value: ``5.1.x`` (class and subject of the status, RFC 3463), else ``unknown``."""
        if self.status is None:
            return "unknown"
        cls, subject, _ = self.status.split(".")
        return f"{cls}.{subject}.x" if len(subject) == 1 else f"{cls}.x.x"


def _one_line(text: str, limit: int = MAX_DIAGNOSTIC_CHARS) -> str:
    flat = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return flat[:limit]


def _status(text: str | None) -> str | None:
    if not text:
        return None
    m = _STATUS_RE.search(text)
    return f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}" if m else None


def parse_bounce(raw: bytes) -> Bounce | None:
    """What a bounce says, or None if ``raw`` is not one (too big, our canary itself, no returned
    headers of a canary at all). Never raises."""
    if len(raw) > MAX_BOUNCE_BYTES:
        return None
    head, body = canary.split_message(raw)
    if canary.tokens_in_header(head + b"\r\n\r\n"):
        return None  # carries our token at the top: a canary or a forward of one, not a bounce
    try:
        msg = message_from_bytes(raw, policy=compat32)
        ctype = msg.get_content_type()
        report_type = msg.get_param("report-type")
        is_report = ctype == "multipart/report" and str(report_type or "").lower() == "delivery-status"
        if is_report or _has_status_part(msg):
            dsn = _parse_dsn(msg)
            if dsn is not None:
                return dsn
        return _parse_plain(body)
    except (LookupError, ValueError, TypeError, AttributeError, IndexError):  # broken MIME: not ours
        return None


def _parts(msg: Message) -> list[Message]:
    payload = msg.get_payload()
    if not isinstance(payload, list):
        return []
    return [p for p in payload[:MAX_PARTS] if isinstance(p, Message)]


def _has_status_part(msg: Message) -> bool:
    """A report part inside another multipart type: OpenSMTPD sends its bounces as multipart/mixed
    (a text part, ``message/delivery-status``, ``text/rfc822-headers``), not as multipart/report."""
    return any(p.get_content_type() in _STATUS_TYPES for p in _parts(msg))


def _reply_line(msg: Message) -> str | None:
    """The first line of a text part that quotes an SMTP/LMTP reply (``rcpt: 550-Mailbox unknown``): the
    diagnostic of a report without Diagnostic-Code (OpenSMTPD writes none; its text part has the reply)."""
    for part in _parts(msg):
        if part.get_content_type() != "text/plain":
            continue
        text = part.get_payload(decode=True)
        if not isinstance(text, bytes):
            continue
        for line in text[:MAX_BOUNCE_BYTES].decode("utf-8", errors="replace").splitlines():
            if _SMTP_CODE_RE.search(line):
                return _one_line(line)
    return None


def _parse_dsn(msg: Message) -> Bounce | None:
    action: Action = "unknown"
    status = diagnostic = None
    returned = b""
    for part in _parts(msg):
        ctype = part.get_content_type()
        if ctype in _STATUS_TYPES:
            blocks = _parts(part)[1:]  # the first block is per-message
            if not blocks:  # some writers put the fields in one text block
                blocks = _parts(part)
            chosen = next((b for b in blocks if (b.get("Action") or "").strip().lower() == "failed"), None)
            chosen = chosen or (blocks[0] if blocks else None)
            if chosen is not None:
                value = (chosen.get("Action") or "").strip().lower()
                action = value if value in _ACTIONS else "unknown"  # type: ignore[assignment]
                status = _status(chosen.get("Status"))
                code = chosen.get("Diagnostic-Code")
                diagnostic = _one_line(str(code)) if code else None
        elif ctype in ("message/rfc822", "message/global") and not returned:
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                returned = _header_block(inner[0])
        elif ctype in ("text/rfc822-headers", "message/global-headers") and not returned:
            text = part.get_payload(decode=True)
            if isinstance(text, bytes):
                returned = canary.split_message(text)[0] + b"\r\n\r\n"
    if not returned:
        return None
    if diagnostic is None:
        diagnostic = _reply_line(msg)
    if action == "unknown" and status is not None:
        action = "failed" if status.startswith("5") else "delayed" if status.startswith("4") else "unknown"
    return Bounce(kind="dsn", action=action, status=status, diagnostic=diagnostic, returned=returned)


def _header_block(msg: Message) -> bytes:
    lines = [f"{k}: {v}" for k, v in msg.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", errors="replace")


def _parse_plain(body: bytes) -> Bounce | None:
    """A plain-text bounce (or a DSN without a usable report): the token and Message-ID lines of the
    original, quoted somewhere in the body; the status from the first RFC 3463 code, else an SMTP code."""
    found = _TOKEN_LINE_RE.findall(body[:MAX_BOUNCE_BYTES])
    if not any(name.lower() == b"x-mailcanary-token" for name, _ in found):
        return None
    returned = b"".join(name + b": " + value.strip() + b"\r\n" for name, value in found) + b"\r\n"
    text = body.decode("utf-8", errors="replace")
    status = _status(text)
    if status is None:
        m = _SMTP_CODE_RE.search(text)
        status = f"{m.group(1)}.0.0" if m else None
    action: Action = "unknown"
    if status is not None:
        action = "failed" if status.startswith("5") else "delayed" if status.startswith("4") else "unknown"
    line = next((ln for ln in text.splitlines() if status and status in ln), None) if status else None
    diagnostic = _one_line(line) if line else None
    return Bounce(kind="plain", action=action, status=status, diagnostic=diagnostic, returned=returned)


def returned_token(bounce: Bounce, key: bytes, probe: str) -> Token | None:
    """The token of our canary that ``bounce`` returned, if it verifies (see the module docstring):
    exactly one token of ``probe`` in the returned headers, its MAC good over their one Message-ID and
    the canary body the token implies (v2), or over its fields (v1)."""
    values = canary.tokens_in_header(bounce.returned)
    parsed = {p[0] for v in values if (p := canary.parse(v)) is not None and p[0].probe == probe}
    if len(parsed) != 1:
        return None
    (token,) = parsed
    if token.version == "v1":
        good = {t for v in values if (t := canary.verify(v, key, probe)) is not None}
        return token if good == {token} else None
    ids = canary.header_values(bounce.returned, "Message-ID")
    if len(set(ids)) != 1:
        return None
    digest = canary.expected_body_digest(token)
    good = {t for v in values if (t := canary.verify(v, key, probe, message_id=ids[0], body_digest=digest))}
    return token if good == {token} else None
