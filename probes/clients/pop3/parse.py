"""POP3 reply syntax (RFC 1939, 2449, 5034): pure functions, no I/O, safe on arbitrary bytes (fuzzed).

A reply we cannot trust is a :class:`ProbeError` with a fixed reason; lenient where a deviation is
harmless (CAPA, LOGIN-DELAY values), strict where it decides what we read or delete (status lines,
listings).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from typing import Final, TypeAlias

from probes.errors import ProbeError, Reason
from probes.wire.framing import show, strip_eol, unstuff

Capabilities: TypeAlias = dict[str, list[str]]

PROTOCOL: Final = "receive_protocol"
AUTH: Final = "receive_auth"
LOGIN_DELAY: Final = "receive_login_delay"
MAX_LOGIN_DELAY: Final = 86_400  # a longer announced delay is taken as a day: no monitor can wait longer
_DELAY_VALUE: Final = re.compile(r"[0-9]{1,10}", re.ASCII)
# RFC 2449 section 8: "[" resp-level *("/" resp-level) "]" right after "-ERR ", levels case-insensitive.
_RESP_CODE: Final = re.compile(r"\[([^\]\s]{1,64})\]")
_NUMBER: Final = re.compile(rb"[0-9]{1,10}")
_SIZE: Final = re.compile(rb"[0-9]{1,20}")
_UID: Final = re.compile(rb"[\x21-\x7e]+")  # RFC 1939 section 7: unique-id is printable ASCII
_STAT: Final = re.compile(r"([0-9]{1,10}) ([0-9]{1,20})(?:\s.*)?", re.ASCII | re.DOTALL)

__all__ = [
    "AUTH",
    "LOGIN_DELAY",
    "MAX_LOGIN_DELAY",
    "PROTOCOL",
    "Capabilities",
    "as_text",
    "is_continuation",
    "login_refusal_reason",
    "parse_capa",
    "parse_list",
    "parse_login_delay",
    "parse_stat",
    "parse_status",
    "parse_uidl",
    "response_code",
    "sasl_plain",
    "unstuff",
]


def as_text(data: bytes) -> str:
    """Server text for messages and transcripts: never fails on the Latin-1 some servers send."""
    return data.decode("utf-8", errors="replace")


def parse_status(line: bytes) -> tuple[bool, str]:
    """``(ok, text)`` of a status line; anything but +OK/-ERR means we are out of step, so it raises."""
    line = strip_eol(line)
    for indicator, ok in ((b"+OK", True), (b"-ERR", False)):
        if line.startswith(indicator):
            rest = line[len(indicator) :]
            if not rest or rest[:1] in (b" ", b"\t"):
                return ok, as_text(rest.strip(b" \t"))
    raise ProbeError(f"malformed POP3 status line {show(line)}", reason=PROTOCOL)


def parse_stat(text: str) -> tuple[int, int]:
    """``(messages, octets)`` from the text of a STAT reply (RFC 1939 allows more after the size)."""
    match = _STAT.fullmatch(text)
    if match is None:
        raise ProbeError(f"malformed STAT reply {text[:80]!r}", reason=PROTOCOL)
    return int(match[1]), int(match[2])


def parse_capa(lines: Iterable[bytes]) -> Capabilities:
    """Capability tag (upper-cased, as tags are case-insensitive) -> its arguments; never raises.

    Unknown or odd capabilities are harmless to us, so this is deliberately liberal.
    """
    caps: Capabilities = {}
    for raw in lines:
        words = as_text(strip_eol(raw)).split()
        if words:
            caps[words[0].upper()] = words[1:]
    return caps


def parse_login_delay(caps: Capabilities) -> tuple[int, bool] | None:
    """``(seconds, per_user)`` from CAPA's ``LOGIN-DELAY n [USER]`` (RFC 2449 section 6.5), or None.

    Lenient: extra words are ignored and an unreadable value counts as not announced (we cannot honour a
    delay we cannot read); strict only in bounds: at most MAX_LOGIN_DELAY. ``USER`` (before login only)
    means the value may differ per user, so CAPA is asked again once logged in.
    """
    args = caps.get("LOGIN-DELAY")
    if not args or not _DELAY_VALUE.fullmatch(args[0]):
        return None
    per_user = any(word.upper() == "USER" for word in args[1:])
    return min(int(args[0]), MAX_LOGIN_DELAY), per_user


def response_code(text: str) -> str | None:
    """The extended response code at the start of an -ERR text (RFC 2449 section 8), upper-cased."""
    match = _RESP_CODE.match(text)
    return match[1].upper() if match else None


def login_refusal_reason(text: str) -> Reason:
    """The failure reason of a refused login, from its response code (RFC 2449 section 8.1, RFC 3206).

    ``LOGIN-DELAY``: logged in too soon after the last login, its own reason. ``IN-USE`` (the maildrop is
    locked by another session) and ``SYS/...`` (the server's own trouble, RFC 3206) are the server
    refusing for something other than the credentials: ``receive_protocol``. ``AUTH``, an unknown code
    or none at all: the credentials, ``receive_auth``.
    """
    code = response_code(text)
    top = code.split("/", 1)[0] if code else None
    if top == "LOGIN-DELAY":
        return LOGIN_DELAY
    if top in ("IN-USE", "SYS"):
        return PROTOCOL
    return AUTH


def _listing(lines: Iterable[bytes], what: str, value: re.Pattern[bytes]) -> list[tuple[int, bytes]]:
    """Parse "msg-number SP value [more]" lines; a listing we cannot trust in full we do not use at all."""
    seen: set[int] = set()
    out: list[tuple[int, bytes]] = []
    for raw in lines:
        fields = strip_eol(raw).split()
        if len(fields) < 2 or not _NUMBER.fullmatch(fields[0]) or not value.fullmatch(fields[1]):
            raise ProbeError(f"malformed {what} line {show(raw)}", reason=PROTOCOL)
        number = int(fields[0])
        if number == 0 or number in seen:
            raise ProbeError(
                f"invalid or repeated message number in {what} line {show(raw)}", reason=PROTOCOL
            )
        seen.add(number)
        out.append((number, fields[1]))
    return out


def parse_uidl(lines: Iterable[bytes]) -> dict[int, str]:
    """Message number -> unique id from the (unstuffed) lines of a multi-line UIDL reply."""
    return {number: uid.decode("ascii") for number, uid in _listing(lines, "UIDL", _UID)}


def parse_list(lines: Iterable[bytes]) -> dict[int, int]:
    """Message number -> size in octets from the (unstuffed) lines of a multi-line LIST reply."""
    return {number: int(size) for number, size in _listing(lines, "LIST", _SIZE)}


def sasl_plain(username: str, password: str) -> str:
    """The RFC 4616 PLAIN response (empty authzid), base64-encoded; NUL would silently split the fields."""
    if "\0" in username or "\0" in password:
        raise ProbeError(
            "SASL PLAIN cannot carry a NUL character in the username or password", reason="config"
        )
    return base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")


def is_continuation(line: bytes) -> bool:
    """A SASL challenge ("+ " base64, RFC 5034); "+OK" is not one."""
    return line == b"+" or line.startswith(b"+ ")
