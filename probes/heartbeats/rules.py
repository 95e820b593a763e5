"""Which mail is a heartbeat's, and whether it reports a failure: rules over what was read of a message
(its header block, its size, the attachment names of its BODYSTRUCTURE and at most ``body_bytes`` of its
first text part). Pure: parsing and matching, no I/O, safe on any input (a foreign message is hostile
input: every regex runs on bounded text).

``fail_if`` rules are looked at before the success rules (healthchecks users asked for that): a mail
matching any ``fail_if`` entry is a failure report even if it also matches ``match``.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.header
import email.utils
import fnmatch
import quopri
import re
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Final, Literal
from urllib.parse import unquote_to_bytes

from probes.wire import imapwire as wire

MAX_HEADER_TEXT: Final = 4096  # characters of one header value a regex sees
MAX_PARTS: Final = 100  # MIME parts walked in a BODYSTRUCTURE
MAX_DEPTH: Final = 8  # nesting of multiparts walked
MAX_NAMES: Final = 32  # attachment names kept per message

Outcome = Literal["success", "failure"]


@dataclass(frozen=True)
class Rule:
    """Every given condition must hold (an empty rule is refused by the config)."""

    sender: str | None = None  # the From address, exactly (case-insensitive)
    sender_domain: str | None = None  # the From address's domain, or a subdomain of it
    subject: re.Pattern[str] | None = None  # searched in the decoded Subject
    headers: tuple[tuple[str, re.Pattern[str]], ...] = ()  # (name, regex searched in any of its values)
    body: str | None = None  # a substring of the first text part (decoded), within body_bytes
    body_regex: re.Pattern[str] | None = None
    attachment: str | None = None  # a file name pattern (fnmatch, case-insensitive)
    min_size: int | None = None  # RFC822.SIZE bounds, bytes
    max_size: int | None = None

    @property
    def needs_body(self) -> bool:
        return self.body is not None or self.body_regex is not None

    @property
    def needs_structure(self) -> bool:
        return self.attachment is not None or self.needs_body

    def matches(self, mail: MailFacts) -> bool:
        if self.sender is not None and mail.sender != self.sender.casefold():
            return False
        if self.sender_domain is not None:
            domain = self.sender_domain.casefold().rstrip(".")
            got = mail.sender.rpartition("@")[2]
            if not mail.sender or (got != domain and not got.endswith("." + domain)):
                return False
        if self.subject is not None and not self.subject.search(mail.subject):
            return False
        for name, pattern in self.headers:
            if not any(pattern.search(v) for v in mail.headers.get(name.lower(), ())):
                return False
        if self.min_size is not None and mail.size < self.min_size:
            return False
        if self.max_size is not None and mail.size > self.max_size:
            return False
        if self.attachment is not None:
            glob = self.attachment.casefold()
            if not any(fnmatch.fnmatchcase(n.casefold(), glob) for n in mail.attachments):
                return False
        if self.body is not None and (mail.body is None or self.body not in mail.body):
            return False
        return not (
            self.body_regex is not None and (mail.body is None or not self.body_regex.search(mail.body))
        )


@dataclass(frozen=True)
class Rules:
    """One heartbeat's rules: what makes a mail its own (``match``) and what makes it a failure report."""

    match: Rule
    fail_if: tuple[Rule, ...] = ()
    body_bytes: int = 65536  # bytes of the first text part read, at most

    @property
    def needs_body(self) -> bool:
        return self.match.needs_body or any(r.needs_body for r in self.fail_if)

    @property
    def needs_structure(self) -> bool:
        return self.match.needs_structure or any(r.needs_structure for r in self.fail_if)

    def classify(self, mail: MailFacts) -> Outcome | None:
        """``failure`` if a fail_if entry matches (first), ``success`` if match does, else None (not ours)."""
        if any(r.matches(mail) for r in self.fail_if):
            return "failure"
        return "success" if self.match.matches(mail) else None


@dataclass
class MailFacts:
    """What was read of one message (every text bounded)."""

    sender: str = ""  # the From address, case-folded ("" if none could be read)
    subject: str = ""
    headers: dict[str, list[str]] = field(default_factory=dict)  # lower-case name -> decoded values
    message_id: str | None = None
    size: int = 0
    attachments: list[str] = field(default_factory=list)
    body: str | None = None  # the first text part, decoded, at most body_bytes of it (None: not read)
    body_read: int = 0  # bytes of it fetched


def _decode(value: str) -> str:
    """An RFC 2047 header value as text (what cannot be decoded is kept as it came)."""
    try:
        text = str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        text = value
    return " ".join(text.split())[:MAX_HEADER_TEXT]


def parse_header(raw: bytes, size: int) -> MailFacts:
    """Facts from a header block (``BODY.PEEK[HEADER]``)."""
    msg = BytesHeaderParser(policy=compat32).parsebytes(raw)
    headers: dict[str, list[str]] = {}
    for name, value in msg.items():
        if isinstance(value, str):
            headers.setdefault(name.lower(), []).append(_decode(value))
    sender = ""
    addrs = email.utils.getaddresses(headers.get("from", [])[:1])
    if addrs and "@" in addrs[0][1]:
        sender = addrs[0][1].strip().casefold()
    mid = headers.get("message-id", [None])[0]
    return MailFacts(
        sender=sender,
        subject=headers.get("subject", [""])[0],
        headers=headers,
        message_id=mid.strip() if mid else None,
        size=size,
    )


# --- BODYSTRUCTURE -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextPart:
    section: str  # "1", "1.2", or "TEXT" for a single-part message
    encoding: str
    charset: str


def _text(tok: wire.Token) -> str | None:
    if isinstance(tok, bytes) and not (tok.upper() == b"NIL" and not isinstance(tok, wire.Literal)):
        return tok.decode("utf-8", "replace")
    return None


def _params(tok: wire.Token) -> dict[str, str]:
    out: dict[str, str] = {}
    if isinstance(tok, list):
        for k, v in zip(tok[0::2], tok[1::2], strict=False):
            key, val = _text(k), _text(v)
            if key is not None and val is not None:
                out[key.lower()] = val
    return out


def _filename(params: dict[str, str]) -> str | None:
    for key in ("filename", "name"):
        if key in params:
            return _decode(params[key])[:255]
    for key in ("filename*", "name*"):  # RFC 2231 (charset'lang'value, percent-encoded)
        if key in params:
            value = params[key]
            parts = value.split("'", 2)
            raw = parts[2] if len(parts) == 3 else value
            charset = parts[0] if len(parts) == 3 and parts[0] else "utf-8"
            try:
                return unquote_to_bytes(raw).decode(charset, "replace")[:255]
            except LookupError:
                return raw[:255]
    return None


def walk_structure(tok: wire.Token) -> tuple[list[str], TextPart | None]:
    """Attachment names and the first inline text part of a BODYSTRUCTURE, bounded."""
    names: list[str] = []
    texts: list[TextPart] = []
    budget = [MAX_PARTS]

    def visit(node: wire.Token, section: str, depth: int) -> None:
        if not isinstance(node, list) or not node or budget[0] <= 0 or depth > MAX_DEPTH:
            return
        budget[0] -= 1
        if isinstance(node[0], list):  # multipart: parts, then the subtype
            for n, child in enumerate(node, start=1):
                if not isinstance(child, list):
                    break
                visit(child, f"{section}.{n}" if section else str(n), depth + 1)
            return
        if len(node) < 7:
            return
        ctype = (_text(node[0]) or "").lower()
        subtype = (_text(node[1]) or "").lower()
        params = _params(node[2])
        encoding = (_text(node[5]) or "7bit").lower()
        base = 8 if ctype == "text" else 10 if (ctype, subtype) == ("message", "rfc822") else 7
        disposition: dict[str, str] = {}
        disp_kind = ""
        disp = node[base + 1] if len(node) > base + 1 else None
        if isinstance(disp, list) and disp:
            disp_kind = (_text(disp[0]) or "").lower()
            if len(disp) > 1:
                disposition = _params(disp[1])
        name = _filename(disposition) or _filename(params)
        if name is not None and len(names) < MAX_NAMES:
            names.append(name)
        if ctype == "text" and disp_kind != "attachment" and name is None:
            texts.append(TextPart(section or "1", encoding, params.get("charset", "us-ascii")))

    visit(tok, "", 0)
    return names, (texts[0] if texts else None)


def decode_body(data: bytes, part: TextPart) -> str:
    """A (possibly cut) text part as text: base64 and quoted-printable undone, then the charset."""
    raw = data
    if part.encoding == "base64":
        compact = re.sub(rb"[^A-Za-z0-9+/=]", b"", data)
        compact = compact[: len(compact) - len(compact) % 4]
        try:
            raw = base64.b64decode(compact)
        except (binascii.Error, ValueError):
            raw = data
    elif part.encoding == "quoted-printable":
        raw = quopri.decodestring(data)
    try:
        return raw.decode(part.charset, "replace")
    except LookupError:
        return raw.decode("utf-8", "replace")
