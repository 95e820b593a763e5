"""Where the receiver filed the canary: the inbox, or the junk folder (RFC 6154 SPECIAL-USE ``\\Junk``).

Pure parsers for ``LIST`` and ``NAMESPACE`` responses and the choice of the junk folder live here, apart
from the IMAP client, so they can be fuzzed; the commands go through :class:`probes.clients.imap.IMAPSession`.

Servers are not all Dovecot: Courier has no SPECIAL-USE and keeps every folder under the personal
namespace ``INBOX.`` (so the junk folder is ``INBOX.Junk``), Cyrus names it ``INBOX/Spam``, Exchange
``Junk Email`` (localised), and names outside ASCII travel in modified UTF-7 (RFC 3501 5.1.3). So the
junk folder is, in this order (deterministic):

1. the first selectable folder the server marks ``\\Junk`` (SPECIAL-USE), in LIST order;
2. the first configured name, in list order, equal to a folder's whole name or its name relative to a
   personal namespace prefix (RFC 2342), compared case-insensitively on the decoded name;
3. the first configured name equal to a folder's last path component (split at the LIST delimiter),
   shallower folders first, then LIST order.

The name used for SELECT is always the one on the wire.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from probes.errors import ProbeError
from probes.wire import imapwire as wire

Placement = Literal["inbox", "junk", "other"]
PLACEMENTS: Final[tuple[Placement, ...]] = ("inbox", "junk", "other")
# The junk folder's name at the big providers and in the common clients/servers, then localised ones:
# Exchange/Outlook ("Junk Email", older "Junk E-mail", and its German, French, Spanish, Italian, Dutch
# and Portuguese names), Gmail ("[Gmail]/Spam", which also marks it \Junk), Yahoo/AOL ("Bulk Mail"),
# GMX/WEB.DE ("Spam-Verdacht"), Dovecot/iCloud/Fastmail/Thunderbird ("Junk", "Spam").
DEFAULT_JUNK_FOLDERS: Final[tuple[str, ...]] = (
    "Junk",
    "Spam",
    "[Gmail]/Spam",
    "Junk E-mail",
    "Junk Email",
    "Bulk Mail",
    "Junk Mail",
    "Courrier indésirable",
    "Spam-Verdacht",
    "Junk-E-Mail",
    "Correo no deseado",
    "Posta indesiderata",
    "Ongewenste e-mail",
    "Lixo Eletrônico",
    "Pourriel",
)
MAX_MAILBOXES: Final = 1000  # LIST entries looked at, at most (a server listing more is cut short)
MAX_NAME_BYTES: Final = 1024
MAX_OTHER_FOLDERS: Final = 100  # upper bound of receive.placement_max_folders
MAX_NAMESPACES: Final = 8  # personal namespaces kept from one NAMESPACE response (servers send one)


@dataclass(frozen=True)
class ListedMailbox:
    name: str  # as on the wire (modified UTF-7 unless UTF8=ACCEPT): what SELECT must send
    flags: frozenset[str]  # lower-cased, e.g. "\\junk", "\\noselect"
    delimiter: str | None = None  # the hierarchy delimiter of the LIST response (None: flat / NIL)

    @property
    def selectable(self) -> bool:
        return "\\noselect" not in self.flags and "\\nonexistent" not in self.flags

    @property
    def display(self) -> str:
        """The name as a person reads it (modified UTF-7 decoded), for matching configured names."""
        return decode_mutf7(self.name)


@dataclass(frozen=True)
class Namespace:
    """One personal namespace (RFC 2342): folder names start with ``prefix`` (e.g. ``INBOX.``)."""

    prefix: str
    delimiter: str | None


def parse_list(resp: wire.Response) -> ListedMailbox | None:
    """One ``* LIST (flags) delim name`` response; None for any other response, or an entry we
    cannot use (a name that is not UTF-8 or too long). Broken syntax in a LIST raises."""
    words = resp.words
    if resp.tag != b"*" or not words or words[0].upper() != b"LIST":
        return None
    toks = wire.tokens(resp.parts)
    # toks: [b"*", b"LIST", [flags...], delimiter, name]
    if len(toks) < 5 or not isinstance(toks[2], list):
        raise ProbeError("malformed LIST response", reason="receive_protocol")
    name_tok = toks[4]
    if not isinstance(name_tok, bytes) or len(name_tok) > MAX_NAME_BYTES:
        return None
    try:
        name = bytes(name_tok).decode("utf-8")  # UTF-8 names (RFC 6855) or plain ASCII/modified UTF-7
    except UnicodeDecodeError:
        return None
    flags = frozenset(
        bytes(f).decode("ascii", errors="replace").lower() for f in toks[2] if isinstance(f, bytes)
    )
    return ListedMailbox(name=name, flags=flags, delimiter=_delimiter(toks[3]))


def _delimiter(tok: wire.Token) -> str | None:
    """A LIST/NAMESPACE hierarchy delimiter: one quoted character, or NIL (None); anything else None."""
    if isinstance(tok, wire.Literal) and len(tok) == 1 and 0x20 < tok[0] < 0x7F:
        return chr(tok[0])
    return None


def parse_namespace(resp: wire.Response) -> list[Namespace] | None:
    """The personal namespaces of ``* NAMESPACE (("INBOX." ".")) NIL NIL`` (RFC 2342); None for any
    other response or one we cannot read. Lenient and bounded: only the first group is looked at,
    extension data after prefix and delimiter is ignored, at most MAX_NAMESPACES entries are kept, and
    a malformed answer is simply not used (names are then matched as if there were no prefix)."""
    words = resp.words
    if resp.tag != b"*" or not words or words[0].upper() != b"NAMESPACE":
        return None
    try:
        toks = wire.tokens(resp.parts)
    except ProbeError:
        return None
    if len(toks) < 3:
        return None
    personal = toks[2]
    if not isinstance(personal, list):  # NIL: no personal namespace
        return [] if personal == b"NIL" or personal == b"nil" else None
    out: list[Namespace] = []
    for entry in personal[:MAX_NAMESPACES]:
        if not isinstance(entry, list) or len(entry) < 2 or not isinstance(entry[0], wire.Literal):
            return None
        raw = bytes(entry[0])
        if len(raw) > MAX_NAME_BYTES:
            return None
        try:
            prefix = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        out.append(Namespace(prefix=prefix, delimiter=_delimiter(entry[1])))
    return out


def decode_mutf7(name: str) -> str:
    """Modified UTF-7 (RFC 3501 5.1.3) to text: ``Courrier ind&AOk-sirable`` → ``Courrier indésirable``.
    A name that is not valid modified UTF-7 (or not ASCII: a UTF-8 name) is returned as it is."""
    if "&" not in name or not name.isascii():
        return name
    out: list[str] = []
    i, n = 0, len(name)
    while i < n:
        c = name[i]
        if c != "&":
            out.append(c)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            return name
        chunk = name[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            try:
                raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
                if len(raw) % 2:
                    return name
                out.append(raw.decode("utf-16-be"))
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return name
        i = end + 1
    return "".join(out)


def _relative(box: ListedMailbox, namespaces: Sequence[Namespace]) -> str | None:
    """The decoded name without a personal namespace prefix (``INBOX.Junk`` → ``Junk``), if it has one.
    The prefix ``INBOX`` part is case-insensitive, as INBOX is (RFC 3501 5.1)."""
    shown = box.display
    for ns in namespaces:
        prefix = decode_mutf7(ns.prefix)
        if not prefix or len(shown) <= len(prefix):
            continue
        head = shown[: len(prefix)]
        if head == prefix or (head.upper().startswith("INBOX") and head.casefold() == prefix.casefold()):
            return shown[len(prefix) :]
    return None


def _last_component(box: ListedMailbox) -> tuple[str, int]:
    """(last path component, depth) of the decoded name, split at the LIST delimiter."""
    shown = box.display
    if not box.delimiter:
        return shown, 1
    parts = shown.split(box.delimiter)
    return parts[-1], len(parts)


def choose_junk(
    listing: Iterable[ListedMailbox],
    fallbacks: Sequence[str],
    inbox: str,
    namespaces: Sequence[Namespace] = (),
) -> str | None:
    """The junk folder's wire name (see the module docstring for the order), never the inbox being
    watched, never a ``\\Noselect`` folder; None if there is none."""
    boxes = [b for b in listing if b.selectable and b.name.upper() != inbox.upper()]
    for box in boxes:
        if "\\junk" in box.flags:
            return box.name
    wanted = [w.casefold() for w in fallbacks]
    by_name: dict[str, str] = {}
    for box in boxes:  # the first in LIST order wins a name
        by_name.setdefault(box.display.casefold(), box.name)
        rel = _relative(box, namespaces)
        if rel is not None:
            by_name.setdefault(rel.casefold(), box.name)
    for w in wanted:
        found = by_name.get(w)
        if found is not None:
            return found
    best: tuple[int, int, int] | None = None
    choice: str | None = None
    for order, box in enumerate(boxes):
        last, depth = _last_component(box)
        key = last.casefold()
        if key in wanted:
            rank = (wanted.index(key), depth, order)
            if best is None or rank < best:
                best, choice = rank, box.name
    return choice


def other_folders(listing: Iterable[ListedMailbox], exclude: Iterable[str], limit: int) -> list[str]:
    """Selectable folders other than those watched already (the inbox, the junk folder), in LIST
    order, at most ``limit``: each costs a SELECT and a SEARCH per look, so the walk is bounded."""
    skip = {_key(e) for e in exclude}
    out: list[str] = []
    for box in listing:
        if box.selectable and _key(box.name) not in skip and box.name not in out:
            out.append(box.name)
            if len(out) >= limit:
                break
    return out


def _key(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501 5.1); every other name is compared as it is."""
    return "INBOX" if name.upper() == "INBOX" else name
