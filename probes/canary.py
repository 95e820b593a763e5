"""Canary messages and their signed tokens.

A token binds the probe name, the send time and a random nonce with an HMAC, so that any mailcanary
instance holding the key recognises its own canaries and nothing else is ever mistaken for one: a message
is only ever deleted when its token verifies for the probe that is cleaning up.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.utils import format_datetime, make_msgid
from typing import Final

HEADER: Final = "X-Mailcanary-Token"
VERSION: Final = "v1"
PROBE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_TOKEN_RE: Final = re.compile(
    r"^v1;probe=(?P<probe>[A-Za-z0-9][A-Za-z0-9_.-]{0,62});sent=(?P<sent>[0-9]{1,16});"
    r"nonce=(?P<nonce>[0-9a-f]{32});mac=(?P<mac>[0-9a-f]{32})$"
)
MIN_KEY_BYTES: Final = 16


@dataclass(frozen=True)
class Token:
    probe: str
    sent_ms: int  # wall-clock send time, unix milliseconds
    nonce: str  # 128 random bits, hex: what searches look for

    @property
    def sent(self) -> float:
        return self.sent_ms / 1000.0

    def _signed_part(self) -> str:
        return f"{VERSION};probe={self.probe};sent={self.sent_ms};nonce={self.nonce}"

    def mac(self, key: bytes) -> str:
        return hmac.new(key, self._signed_part().encode(), hashlib.sha256).hexdigest()[:32]

    def header_value(self, key: bytes) -> str:
        return f"{self._signed_part()};mac={self.mac(key)}"


def probe_search_key(probe: str) -> str:
    """The substring every token of ``probe`` contains (IMAP ``SEARCH HEADER`` is a substring match)."""
    return f";probe={probe};"


def new_token(probe: str, now: float | None = None) -> Token:
    if not PROBE_NAME_RE.match(probe):
        raise ValueError(f"invalid probe name {probe!r}")
    sent = time.time() if now is None else now
    return Token(probe=probe, sent_ms=int(sent * 1000), nonce=secrets.token_hex(16))


def verify(value: str, key: bytes, probe: str | None = None) -> Token | None:
    """The token in a header value if it parses, its MAC checks out and (if given) it names ``probe``.

    Never raises: the value comes from the network and anyone can send a mail with this header.
    """
    match = _TOKEN_RE.match(value.strip())
    if match is None:
        return None
    token = Token(probe=match["probe"], sent_ms=int(match["sent"]), nonce=match["nonce"])
    if probe is not None and token.probe != probe:
        return None
    if not hmac.compare_digest(token.mac(key), match["mac"]):
        return None
    return token


def tokens_in_header(raw: bytes) -> list[str]:
    """Every value of our token header in a raw header block (folded lines unfolded)."""
    try:
        msg = BytesHeaderParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
        values = msg.get_all(HEADER) or []
    except Exception:  # the email package may choke on hostile input; that is simply "no token"
        return []
    return ["".join(str(v).split()) for v in values]


def find_token(raw: bytes, key: bytes, probe: str) -> Token | None:
    """The verified token of ``probe`` in a message or header block, if exactly one is there."""
    found = {t for v in tokens_in_header(raw) if (t := verify(v, key, probe)) is not None}
    return found.pop() if len(found) == 1 else None


def build_message(token: Token, key: bytes, sender: str, recipient: str) -> bytes:
    """A well-formed canary: RFC 5322 headers, MIME text body, CRLF line ends."""
    # No folding: the token must stay on one line so that a server-side substring search finds it.
    msg = EmailMessage(policy=policy.SMTP.clone(max_line_length=998))
    sent = datetime.fromtimestamp(token.sent, tz=UTC)
    domain = sender.rpartition("@")[2] or "mailcanary.invalid"
    msg["Date"] = format_datetime(sent)
    msg["Message-ID"] = make_msgid(idstring=token.nonce[:12], domain=domain)
    msg["From"] = sender
    msg["To"] = recipient
    msg["Subject"] = f"mailcanary probe {token.probe} {sent:%H:%M:%S}Z"
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies or bounces to a robot
    msg[HEADER] = token.header_value(key)
    msg.set_content(
        "This is an automated delivery test sent by mailcanary.\n"
        f"Probe: {token.probe}\n"
        f"Canary: {token.nonce}\n"
        "It is deleted automatically when it arrives; no action is needed.\n"
    )
    return msg.as_bytes()


def verify_message(raw: bytes, key: bytes, token: Token) -> bool:
    """The fetched message carries exactly this token and its body arrived intact."""
    head, _, body = raw.partition(b"\r\n\r\n")
    if not body:
        head, _, body = raw.partition(b"\n\n")
    return find_token(head, key, token.probe) == token and token.nonce.encode() in body


def new_key() -> bytes:
    return secrets.token_bytes(32)
