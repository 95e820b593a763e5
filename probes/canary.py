"""Canary messages and their signed tokens.

A token names the probe, the send time and a random nonce. Format ``v2`` (current) signs them together
with the message's ``Message-ID`` and a digest of its body, so the token binds to the one message it was
made for: a token header copied onto another message (forwarding, a client copying headers) no longer
verifies, and only a message that verifies as a whole, within a size bound, is ever deleted. Format ``v1``
(before 0.x: the HMAC covers the token fields only) is still recognised, and verified as a whole against
the exact body v1 canaries carried, so canaries left over from an upgrade are swept, never stranded.

The message is built as bytes directly: every header is ours and ASCII, so the email package's header
registry (a measurable share of CPU at a thousand probes) is not needed to write it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Final

HEADER: Final = "X-Mailcanary-Token"
VERSION: Final = "v2"
LEGACY_VERSIONS: Final = frozenset({"v1"})
PROBE_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_TOKEN_RE: Final = re.compile(
    r"^(?P<version>v[12]);probe=(?P<probe>[A-Za-z0-9][A-Za-z0-9_.-]{0,62});sent=(?P<sent>[0-9]{1,16});"
    r"nonce=(?P<nonce>[0-9a-f]{32});mac=(?P<mac>[0-9a-f]{32})$"
)
MIN_KEY_BYTES: Final = 16
MAX_CANARY_BYTES: Final = 64 * 1024  # ours are ~1 KiB plus the Received lines servers add
BODY_LINES_MAX: Final = 64  # a canary body has 4 lines: asking POP3 TOP for this many gets all of it
_HEADER_LOWER: Final = HEADER.lower().encode()
_ATOM_DOMAIN: Final = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


@dataclass(frozen=True)
class Token:
    probe: str
    sent_ms: int  # wall-clock send time, unix milliseconds
    nonce: str  # 128 random bits, hex: what searches look for
    version: str = VERSION

    @property
    def sent(self) -> float:
        return self.sent_ms / 1000.0

    def _signed_part(self) -> str:
        return f"{self.version};probe={self.probe};sent={self.sent_ms};nonce={self.nonce}"

    def mac(self, key: bytes, message_id: str = "", body_digest: str = "") -> str:
        """v1: HMAC of the fields; v2: HMAC of the fields, the Message-ID and the body digest."""
        data = self._signed_part()
        if self.version != "v1":
            data = f"{data}\n{message_id}\n{body_digest}"
        return hmac.new(key, data.encode(), hashlib.sha256).hexdigest()[:32]

    def header_value(self, key: bytes, message_id: str = "", body_digest: str = "") -> str:
        return f"{self._signed_part()};mac={self.mac(key, message_id, body_digest)}"

    @property
    def message_id(self) -> str:
        """The Message-ID a v2 canary carries (derived, so the sender needs no lookup)."""
        return f"<{self.nonce}.{self.sent_ms}@mailcanary.invalid>"


def probe_search_key(probe: str) -> str:
    """The substring every token of ``probe`` contains (IMAP ``SEARCH HEADER`` is a substring match)."""
    return f";probe={probe};"


def new_token(probe: str, now: float | None = None) -> Token:
    if not PROBE_NAME_RE.match(probe):
        raise ValueError(f"invalid probe name {probe!r}")
    sent = time.time() if now is None else now
    return Token(probe=probe, sent_ms=int(sent * 1000), nonce=secrets.token_hex(16))


def parse(value: str) -> tuple[Token, str] | None:
    """``(token, mac)`` if ``value`` has the token syntax (any version); nothing is verified."""
    match = _TOKEN_RE.match(value.strip())
    if match is None:
        return None
    token = Token(
        probe=match["probe"], sent_ms=int(match["sent"]), nonce=match["nonce"], version=match["version"]
    )
    return token, match["mac"]


def verify(
    value: str, key: bytes, probe: str | None = None, *, message_id: str = "", body_digest: str = ""
) -> Token | None:
    """The token in a header value if it parses, its MAC checks out and (if given) it names ``probe``.

    A v2 MAC covers ``message_id`` and ``body_digest`` too. Never raises: the value comes from the
    network and anyone can send a mail with this header.
    """
    parsed = parse(value)
    if parsed is None:
        return None
    token, mac = parsed
    if probe is not None and token.probe != probe:
        return None
    if not hmac.compare_digest(token.mac(key, message_id, body_digest), mac):
        return None
    return token


# --- header blocks ---------------------------------------------------------------------------------------


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """``(header block, body)``; CRLF or bare-LF separated."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    return head, body


def header_values(raw: bytes, name: str, *, spaced: bool = False) -> list[str]:
    """Every value of header ``name`` in a raw header block, unfolded and with whitespace removed
    (``spaced``: each run of whitespace kept as one space, for fields such as ``Received``).

    A small parser of our own: total on arbitrary bytes, linear, and cheap next to the email package.
    """
    head, _ = split_message(raw)
    wanted = name.lower().encode()
    out: list[str] = []
    current: list[bytes] | None = None
    for line in head.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if current is not None:
                current.append(line)
            continue
        if current is not None:
            out.append(_join(current, spaced))
            current = None
        field, colon, value = line.partition(b":")
        if colon and field.strip().lower() == wanted:
            current = [value]
    if current is not None:
        out.append(_join(current, spaced))
    return out


def _join(lines: list[bytes], spaced: bool) -> str:
    return (b" " if spaced else b"").join(b" ".join(lines).split()).decode("latin-1")


def tokens_in_header(raw: bytes) -> list[str]:
    """Every value of our token header in a raw header block (folded lines unfolded)."""
    return header_values(raw, HEADER)


def candidates(raw: bytes, probe: str) -> set[Token]:
    """Tokens of ``probe`` in a header block by syntax alone: a hint where to look, never proof.

    Only :func:`verify_canary` on the whole message decides that a message is ours.
    """
    found = set()
    for value in tokens_in_header(raw):
        parsed = parse(value)
        if parsed is not None and parsed[0].probe == probe:
            found.add(parsed[0])
    return found


def find_token(raw: bytes, key: bytes, probe: str) -> Token | None:
    """The token of ``probe`` in a whole message (or a v1 header block) if it verifies, exactly one."""
    if split_message(raw)[1] or b"\r\n\r\n" in raw or b"\n\n" in raw:
        return verify_canary(raw, key, probe)
    found = {t for v in tokens_in_header(raw) if (t := verify(v, key, probe)) is not None}
    found = {t for t in found if t.version == "v1"}
    return found.pop() if len(found) == 1 else None


# --- the message -----------------------------------------------------------------------------------------


def _body_text(token: Token) -> str:
    return (
        "This is an automated delivery test sent by mailcanary.\n"
        f"Probe: {token.probe}\n"
        f"Canary: {token.nonce}\n"
        "It is deleted automatically when it arrives; no action is needed.\n"
    )


def canonical_body(body: bytes) -> bytes:
    """The body as signed: CRLF line ends, trailing blanks and empty trailing lines dropped (as DKIM's
    relaxed body canonicalisation), so a store that keeps LF line ends still verifies."""
    lines = [line.rstrip(b" \t\r") for line in body.replace(b"\r\n", b"\n").split(b"\n")]
    while lines and not lines[-1]:
        lines.pop()
    return b"\r\n".join(lines)


def body_digest(body: bytes) -> str:
    return hashlib.sha256(canonical_body(body)).hexdigest()[:32]


def expected_body_digest(token: Token) -> str:
    """The body digest a v2 canary of ``token`` carries: the body is determined by the token, so a
    bounce that returns only the headers can still be verified (probes.receipt.dsn)."""
    return body_digest(_body_text(token).replace("\n", "\r\n").encode("ascii"))


def build_message(token: Token, key: bytes, sender: str, recipient: str) -> bytes:
    """A well-formed canary: RFC 5322 headers, a MIME text/plain body, CRLF line ends, 7-bit body."""
    if any(c in sender + recipient for c in "\r\n\0"):
        raise ValueError("canary sender and recipient must not contain line breaks")
    body = _body_text(token).replace("\n", "\r\n").encode("ascii")
    sent = datetime.fromtimestamp(token.sent, tz=UTC)
    message_id = token.message_id
    domain = sender.rpartition("@")[2]
    if _ATOM_DOMAIN.match(domain):
        message_id = message_id.replace("@mailcanary.invalid>", f"@{domain}>")
    value = token.header_value(key, message_id, body_digest(body))
    # No folding: the token must stay on one line so that a server-side substring search finds it.
    head = (
        f"Date: {format_datetime(sent)}\r\n"
        f"Message-ID: {message_id}\r\n"
        f"From: {sender}\r\n"
        f"To: {recipient}\r\n"
        f"Subject: mailcanary probe {token.probe} {sent:%H:%M:%S}Z\r\n"
        "Auto-Submitted: auto-generated\r\n"  # RFC 3834: no vacation replies or bounces to a robot
        f"{HEADER}: {value}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: text/plain; charset="us-ascii"\r\n'
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
    )
    return head.encode("utf-8") + body  # ASCII unless the configured addresses are not (RFC 6532)


def verify_canary(raw: bytes, key: bytes, probe: str) -> Token | None:
    """The token of ``probe`` if ``raw`` verifies *as a whole* as one of its canaries, else None.

    Bounded: a message over :data:`MAX_CANARY_BYTES` is not ours. v2: the MAC covers the Message-ID and
    the body digest. v1: the MAC covers the token fields, and the body must be exactly a v1 canary's.
    Exactly one distinct token of ``probe`` must be in the header, and none only in the body counts.
    """
    if len(raw) > MAX_CANARY_BYTES:
        return None
    head, body = split_message(raw)
    if not body and not raw.endswith((b"\r\n\r\n", b"\n\n")):
        return None
    values = tokens_in_header(head + b"\r\n\r\n")
    parsed = {p[0] for v in values if (p := parse(v)) is not None and p[0].probe == probe}
    if len(parsed) != 1:
        return None
    (token,) = parsed
    if token.version == "v1":
        good = {t for v in values if (t := verify(v, key, probe)) is not None}
        if good != {token} or canonical_body(body) != canonical_body(_body_text(token).encode()):
            return None
        return token
    ids = header_values(head + b"\r\n\r\n", "Message-ID")
    if len(ids) != 1:
        return None
    digest = body_digest(body)
    good = {t for v in values if (t := verify(v, key, probe, message_id=ids[0], body_digest=digest))}
    return token if good == {token} else None


def verify_message(raw: bytes, key: bytes, token: Token) -> bool:
    """The fetched message is this token's canary, verified as a whole."""
    return verify_canary(raw, key, token.probe) == token


def new_key() -> bytes:
    return secrets.token_bytes(32)
