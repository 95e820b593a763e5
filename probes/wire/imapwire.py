"""IMAP responses as bytes: pure parsers (no I/O), safe on arbitrary input, so they can be fuzzed.

A response is a list of *parts*: text, then for every ``{n}`` literal the literal's bytes and the text
that follows it (``[text, literal, text, literal, text]``). A literal that was too big to keep (a foreign
item) is ``None``. Everything the server may send unasked — other sessions' ``FETCH (FLAGS …)``,
``EXPUNGE``, ``EXISTS``, ``OK`` notes — is parsed on its own and can never be mistaken for ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from probes.errors import ProbeError

Part: TypeAlias = bytes | None
LITERAL: Final = re.compile(rb"\{([0-9]{1,10})\+?\}$")
_NUMBER: Final = re.compile(rb"[0-9]{1,10}")
_REASON: Final = "receive_protocol"


class Literal(bytes):
    """A literal's bytes as a token (so a literal ``NIL`` or ``(`` is data, not syntax)."""


class Skipped:
    """A literal too big to keep: read and dropped."""

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return "Skipped()"


SKIPPED: Final = Skipped()
Token: TypeAlias = bytes | Literal | Skipped | list["Token"]


@dataclass
class Response:
    """One IMAP response: ``tag`` is ``*``, ``+`` or a command tag; ``parts`` as described above."""

    tag: bytes
    parts: list[Part] = field(default_factory=list)

    @property
    def head(self) -> bytes:
        """The first line after the tag."""
        first = self.parts[0] or b""
        _, _, rest = first.partition(b" ")
        return rest

    @property
    def words(self) -> list[bytes]:
        return self.head.split()

    @property
    def status(self) -> bytes | None:
        """OK/NO/BAD/BYE/PREAUTH for a status response, upper-cased; None for data."""
        words = self.words
        if words and words[0].upper() in (b"OK", b"NO", b"BAD", b"BYE", b"PREAUTH"):
            return words[0].upper()
        return None

    def text(self, limit: int = 200) -> str:
        """Printable status text for error messages, bounded."""
        words = self.head.split(None, 1)
        rest = words[1] if len(words) > 1 else b""
        return " ".join(rest[:limit].decode("utf-8", errors="replace").split())


def parse_tag(line: bytes, expected: bytes | None) -> bytes:
    """The tag of a first response line: ``*``, ``+``, or ``expected``; anything else is garbage."""
    if line.startswith(b"* "):
        return b"*"
    if line == b"+" or line.startswith(b"+ "):
        return b"+"
    if expected is not None and line.startswith(expected + b" "):
        return expected
    raise ProbeError(f"garbage from the IMAP server: {show(line)}", reason=_REASON)


def capabilities_of(resp: Response) -> set[str] | None:
    """Capabilities from ``* CAPABILITY …`` or a ``[CAPABILITY …]`` response code, upper-cased."""
    head = resp.head
    words = head.split()
    if words and words[0].upper() == b"CAPABILITY":
        return {w.decode("ascii", "replace").upper() for w in words[1:]}
    m = re.search(rb"\[CAPABILITY ([^\]]*)\]", head, re.IGNORECASE)
    if m is not None:
        return {w.decode("ascii", "replace").upper() for w in m.group(1).split()}
    return None


def number_event(resp: Response) -> tuple[int, bytes] | None:
    """``(n, EXISTS|EXPUNGE|RECENT|FETCH)`` for ``* n NAME …``; None otherwise. Numbers are 32-bit."""
    words = resp.words
    if resp.tag != b"*" or len(words) < 2 or not _NUMBER.fullmatch(words[0]):
        return None
    return int(words[0]), words[1].upper()


def parse_search(resp: Response) -> list[int] | None:
    """UIDs of ``* SEARCH 1 2 …``; None if this is not a SEARCH response. Garbage in one raises."""
    words = resp.words
    if resp.tag != b"*" or not words or words[0].upper() != b"SEARCH":
        return None
    out: list[int] = []
    for w in words[1:]:
        if w.startswith(b"("):  # a trailing (MODSEQ n) from CONDSTORE servers: not a UID
            break
        if not _NUMBER.fullmatch(w):
            raise ProbeError(f"malformed SEARCH response {show(resp.head)}", reason=_REASON)
        out.append(int(w))
    return out


# --- FETCH ---------------------------------------------------------------------------------------------


def tokens(parts: list[Part]) -> list[Token]:
    """Tokens of a response's parts, parenthesised lists nested; raises on unbalanced or broken syntax."""
    stack: list[list[Token]] = [[]]
    for i, part in enumerate(parts):
        if i % 2 == 1:  # a literal
            stack[-1].append(SKIPPED if part is None else Literal(part))
            continue
        data = part or b""
        pos, n = 0, len(data)
        while pos < n:
            c = data[pos : pos + 1]
            if c == b" ":
                pos += 1
            elif c == b"(":
                new: list[Token] = []
                stack[-1].append(new)
                stack.append(new)
                pos += 1
            elif c == b")":
                if len(stack) == 1:
                    raise ProbeError("unbalanced ')' in an IMAP response", reason=_REASON)
                stack.pop()
                pos += 1
            elif c == b'"':
                pos, value = _quoted(data, pos)
                stack[-1].append(Literal(value))
            else:
                pos, atom = _atom(data, pos)
                stack[-1].append(atom)
    if len(stack) != 1:
        raise ProbeError("unbalanced '(' in an IMAP response", reason=_REASON)
    return stack[0]


def _quoted(data: bytes, pos: int) -> tuple[int, bytes]:
    out = bytearray()
    pos += 1
    while pos < len(data):
        c = data[pos]
        if c == 0x5C and pos + 1 < len(data):  # backslash
            out.append(data[pos + 1])
            pos += 2
        elif c == 0x22:
            return pos + 1, bytes(out)
        else:
            out.append(c)
            pos += 1
    raise ProbeError("unterminated quoted string in an IMAP response", reason=_REASON)


def _atom(data: bytes, pos: int) -> tuple[int, bytes]:
    """An atom; a ``[...]`` section (which may hold spaces and parentheses) and ``<n>`` belong to it."""
    start = pos
    depth = 0
    while pos < len(data):
        c = data[pos : pos + 1]
        if c == b"[":
            depth += 1
        elif c == b"]":
            depth -= 1
            if depth < 0:
                raise ProbeError("unbalanced ']' in an IMAP response", reason=_REASON)
        elif depth == 0 and c in (b" ", b"(", b")", b'"'):
            break
        pos += 1
    if depth:
        raise ProbeError("unterminated '[' in an IMAP response", reason=_REASON)
    return pos, data[start:pos]


@dataclass(frozen=True)
class FetchItem:
    """What one ``* n FETCH (…)`` says: its UID, its size and body section if present."""

    seq: int
    uid: int | None = None
    size: int | None = None
    body: bytes | None = None  # the (only) BODY[…] section's data
    body_skipped: bool = False  # a BODY[…] literal over the cap: read and dropped
    internaldate: bytes | None = None  # INTERNALDATE as sent ("17-Jul-1996 02:44:25 -0700")
    structure: Token | None = None  # BODYSTRUCTURE as tokens (nested lists)


def parse_fetch(resp: Response) -> FetchItem | None:
    """The items of a FETCH response; None for other responses. Garbage in a FETCH raises."""
    event = number_event(resp)
    if event is None or event[1] != b"FETCH":
        return None
    toks = tokens(resp.parts)
    # toks: [b"*", b"n", b"FETCH", [items...]] (tag included in the first part)
    if len(toks) != 4 or not isinstance(toks[3], list):
        raise ProbeError(f"malformed FETCH response {show(resp.parts[0] or b'')}", reason=_REASON)
    items = toks[3]
    if len(items) % 2:
        raise ProbeError(f"malformed FETCH response {show(resp.parts[0] or b'')}", reason=_REASON)
    uid = size = None
    body: bytes | None = None
    skipped = False
    internaldate: bytes | None = None
    structure: Token | None = None
    for name, value in zip(items[0::2], items[1::2], strict=True):
        if not isinstance(name, bytes) or isinstance(name, Literal):
            raise ProbeError("malformed FETCH item name", reason=_REASON)
        key = name.upper()
        if key in (b"UID", b"RFC822.SIZE"):
            if not isinstance(value, bytes) or isinstance(value, Literal) or not _NUMBER.fullmatch(value):
                raise ProbeError(f"malformed FETCH {key.decode()} value", reason=_REASON)
            if key == b"UID":
                uid = int(value)
            else:
                size = int(value)
        elif key == b"INTERNALDATE":
            if not isinstance(value, Literal):
                raise ProbeError("malformed FETCH INTERNALDATE value", reason=_REASON)
            internaldate = bytes(value)
        elif key in (b"BODYSTRUCTURE", b"BODY") and isinstance(value, list):
            structure = value
        elif key.startswith(b"BODY[") or key in (b"RFC822", b"RFC822.HEADER"):
            if isinstance(value, Skipped):
                skipped = True
            elif isinstance(value, Literal):
                body = bytes(value)
            elif value == b"NIL" or value == []:
                body = b""
            else:
                raise ProbeError("malformed FETCH body value", reason=_REASON)
    return FetchItem(
        seq=event[0],
        uid=uid,
        size=size,
        body=body,
        body_skipped=skipped,
        internaldate=internaldate,
        structure=structure,
    )


def quote(value: str) -> bytes | None:
    """``value`` as an IMAP quoted string, or None if it needs a literal (8-bit, CR, LF, NUL)."""
    raw = value.encode("utf-8")
    if any(b > 0x7E or b in (0, 0x0D, 0x0A) for b in raw):
        return None
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def show(data: bytes, limit: int = 80) -> str:
    text = repr(data[:limit].decode("utf-8", errors="replace"))
    return text + ("..." if len(data) > limit else "")
