"""Where the receiver filed the canary: the inbox, or the junk folder (RFC 6154 SPECIAL-USE ``\\Junk``).

Pure parsers for ``LIST`` responses and the choice of the junk folder live here, apart from the IMAP
client, so they can be fuzzed; the one LIST command a probe sends goes through
:meth:`probes.imap.IMAPSession.list_mailboxes`. The junk folder is the one the server marks ``\\Junk``;
only if none is marked is the first existing name of a configured fallback list taken (``Junk``,
``Spam``, ``[Gmail]/Spam``, ...), compared case-insensitively, as clients do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from . import _imapwire as wire
from .errors import ProbeError

Placement = Literal["inbox", "junk", "other"]
PLACEMENTS: Final[tuple[Placement, ...]] = ("inbox", "junk", "other")
DEFAULT_JUNK_FOLDERS: Final[tuple[str, ...]] = ("Junk", "Spam", "[Gmail]/Spam", "Junk E-mail", "Junk Email")
MAX_MAILBOXES: Final = 1000  # LIST entries looked at, at most (a server listing more is cut short)
MAX_NAME_BYTES: Final = 1024
MAX_OTHER_FOLDERS: Final = 100  # upper bound of receive.placement_max_folders


@dataclass(frozen=True)
class ListedMailbox:
    name: str
    flags: frozenset[str]  # lower-cased, e.g. "\\junk", "\\noselect"

    @property
    def selectable(self) -> bool:
        return "\\noselect" not in self.flags and "\\nonexistent" not in self.flags


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
    return ListedMailbox(name=name, flags=flags)


def choose_junk(listing: Iterable[ListedMailbox], fallbacks: Sequence[str], inbox: str) -> str | None:
    """The junk folder: the first selectable one marked ``\\Junk``, else the first fallback name that
    exists (case-insensitive), never the inbox being watched; None if there is none."""
    boxes = [b for b in listing if b.selectable and b.name.upper() != inbox.upper()]
    for box in boxes:
        if "\\junk" in box.flags:
            return box.name
    by_name = {b.name.casefold(): b.name for b in reversed(boxes)}
    for wanted in fallbacks:
        found = by_name.get(wanted.casefold())
        if found is not None:
            return found
    return None


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
