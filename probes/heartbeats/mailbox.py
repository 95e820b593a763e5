"""Reading a mailbox for heartbeats: one IMAP session per mailbox serves every heartbeat on it.

A scan looks at each watched folder once: new UIDs since the folder's cursor (``UID SEARCH UID n:*``),
then for at most ``max_messages`` of them (oldest first; the rest wait for the next scan) the size,
INTERNALDATE, BODYSTRUCTURE and header block, and only where a rule asks, at most ``body_bytes`` of the
first text part (``BODY.PEEK[n]<0.N>``: the server sends no more, a 5 MB body costs N bytes). Everything
is read with PEEK; a folder no heartbeat acts on is opened with EXAMINE (read-only), so flags stay as
they were. The first time a folder is seen its cursor is set to UIDNEXT: mail already there is not read.

What matched is handed to ``commit`` (the caller's durable state) before anything is done to a message:
a keyword (``mark_keyword``, only where PERMANENTFLAGS allows) and a move (``move_to``, MOVE or COPY +
UID EXPUNGE of that UID only) come after the count is saved, so a crash between the two never counts a
mail twice; mail is never deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Final

import structlog

from probes.clients.imap import IMAPSession, IMAPSettings
from probes.errors import ProbeError
from probes.heartbeats.rules import (
    MailFacts,
    Outcome,
    Rules,
    TextPart,
    decode_body,
    parse_header,
    walk_structure,
)
from probes.recorder import Recorder
from probes.wire.net import Endpoint
from probes.wire.slots import ServerSlots, maybe_session

log = structlog.get_logger("mailcanary.heartbeats")

MAX_MESSAGES: Final = 200  # new messages read per folder per scan; the rest at the next scan
HEADER_ITEMS: Final = b"RFC822.SIZE INTERNALDATE"  # + BODYSTRUCTURE where a rule needs it, + the header


@dataclass(frozen=True)
class Watched:
    """One heartbeat as the scan sees it."""

    name: str
    folders: tuple[str, ...]
    rules: Rules
    mark_keyword: str | None = None
    move_to: str | None = None


@dataclass(frozen=True)
class MailboxSettings:
    imap: IMAPSettings
    heartbeats: tuple[Watched, ...]
    slots: ServerSlots | None = None
    max_messages: int = MAX_MESSAGES

    @property
    def folders(self) -> tuple[str, ...]:
        """Every watched folder, once, in the order the heartbeats name them."""
        return tuple(dict.fromkeys(f for h in self.heartbeats for f in h.folders))


@dataclass
class Cursor:
    """Where a folder was read up to: its UIDVALIDITY and the last UID looked at."""

    uidvalidity: int | None
    last_uid: int


@dataclass(frozen=True)
class Match:
    """A mail that matched a heartbeat."""

    heartbeat: str
    folder: str
    uidvalidity: int | None
    uid: int
    message_id: str | None
    arrival: float  # INTERNALDATE (unix seconds)
    outcome: Outcome
    subject: str

    @property
    def key(self) -> str:
        """What makes it the same mail across runs and restarts."""
        return f"{self.folder}\0{self.uidvalidity}\0{self.uid}"


@dataclass
class ScanStats:
    read: int = 0  # messages whose headers were read
    foreign: int = 0  # of them matching no heartbeat (never touched)
    unreadable: int = 0  # no header block came back: looked at by size only
    backlog: int = 0  # new messages left for the next scan (over max_messages)
    body_bytes: int = 0  # bytes of bodies fetched
    idle: bool = False  # the server offers IDLE
    reused: bool = False  # the session kept in IDLE since the last scan was used (no login)
    quiet: bool = False  # ... and the server had pushed nothing: no search
    action_errors: list[str] = field(default_factory=list)


# commit(folder, cursor, matches) -> the matches newly counted (not seen before): saved before it returns
Commit = Callable[[str, Cursor, list[Match]], Awaitable[list[Match]]]


def parse_internaldate(value: bytes | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.strptime(value.decode("ascii").strip(), "%d-%b-%Y %H:%M:%S %z").timestamp()
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass
class _Kept:
    session: IMAPSession
    loop: asyncio.AbstractEventLoop
    slot: contextlib.AsyncExitStack  # the session's slot on the server, held while it is kept
    searched: float  # monotonic: when its folder was last searched
    idle_since: float  # monotonic: when IDLE began


class Keeper:
    """One mailbox's session kept between scans, in IDLE, where the server offers it and the group
    watches one folder: the server pushes what arrives, so a scan with nothing pushed needs no login
    and no search (a full search still every FULL_SEARCH seconds). Any doubt — another event loop, a
    dropped connection, an IDLE older than IDLE_MAX, an error ending IDLE — means a fresh session."""

    IDLE_MAX: Final = 25 * 60.0  # RFC 2177: re-issue IDLE at least every 29 minutes
    FULL_SEARCH: Final = 600.0

    def __init__(self) -> None:
        self._kept: _Kept | None = None

    @property
    def holding(self) -> bool:
        return self._kept is not None

    async def take(self, recorder: Recorder) -> tuple[_Kept, bool] | None:
        """The kept session, out of IDLE, and whether its folder may have changed; None: open anew."""
        kept, self._kept = self._kept, None
        if kept is None:
            return None
        now = time.monotonic()
        if kept.loop is not asyncio.get_running_loop() or not kept.session.is_open:
            await self._drop(kept)
            return None
        if now - kept.idle_since > self.IDLE_MAX:
            await self._drop(kept)
            return None
        kept.session.recorder = recorder
        try:
            changed = await kept.session.idle_end()
        except BaseException as exc:  # cut short too: drop it, its slot back
            await self._drop(kept)
            if isinstance(exc, ProbeError):
                return None
            raise
        return kept, changed or now - kept.searched >= self.FULL_SEARCH

    async def keep(self, kept: _Kept) -> None:
        """Put the session into IDLE and keep it (or drop it if that fails)."""
        try:
            await kept.session.idle_begin()
        except BaseException as exc:
            await self._drop(kept)
            if isinstance(exc, ProbeError):
                return
            raise
        kept.idle_since = time.monotonic()
        self._kept = kept

    async def close(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            await self._drop(kept)

    @staticmethod
    async def _drop(kept: _Kept) -> None:
        """Drop the connection (no LOGOUT inside IDLE) and give its slot back; never raises."""
        with contextlib.suppress(Exception):
            kept.session.abort()
        with contextlib.suppress(Exception):
            await kept.slot.aclose()


async def scan_mailbox(
    settings: MailboxSettings,
    cursors: dict[str, Cursor],
    recorder: Recorder,
    commit: Commit,
    since: float,
    keeper: Keeper | None = None,
    trust_idle: bool = False,
) -> ScanStats:
    """Read every watched folder once (see the module's docstring). ``since``: where to start looking
    when a folder's UIDVALIDITY changed (the oldest open window; Message-IDs keep counts single). With a
    ``keeper``, the session stays in IDLE afterwards where it can (see :class:`Keeper`); with
    ``trust_idle``, a kept session to which nothing was pushed is taken as read (no search). The caller
    gives it only while no window is due: a deadline is always judged on a real search, so a push the
    server is slow to send can delay a count, never make a window missing."""
    stats = ScanStats()
    folders = settings.folders
    imap = replace(settings.imap, mailbox=folders[0])
    taken = await keeper.take(recorder) if keeper is not None else None
    if taken is not None and taken[0].session.settings != imap:  # a reload changed the mailbox's settings
        await Keeper._drop(taken[0])
        taken = None
    if taken is not None:
        kept, changed = taken
        stats.idle = stats.reused = True
        try:
            if not changed and trust_idle and folders[0] in cursors:
                stats.quiet = True  # the server pushed nothing: no search
                await commit(folders[0], cursors[folders[0]], [])
            else:
                with recorder.phase("receive_scan"):
                    await _scan_folder(
                        kept.session, settings, folders[0], cursors, recorder, commit, since, stats
                    )
                kept.searched = time.monotonic()
        except BaseException:
            await Keeper._drop(kept)
            raise
        await _keep_or_close(keeper, kept, settings)
        return stats
    session = IMAPSession(imap, recorder)
    slot = contextlib.AsyncExitStack()
    await slot.enter_async_context(maybe_session(settings.slots, imap.endpoint, "imap", recorder))
    kept = _Kept(session, asyncio.get_running_loop(), slot, time.monotonic(), 0.0)
    try:
        await session.open()
        stats.idle = "IDLE" in session.capabilities
        with recorder.phase("receive_scan"):
            for folder in folders:
                await _scan_folder(session, settings, folder, cursors, recorder, commit, since, stats)
        kept.searched = time.monotonic()
    except BaseException:
        await session.close()
        await slot.aclose()
        raise
    await _keep_or_close(keeper, kept, settings)
    return stats


def _room(slots: ServerSlots | None, endpoint: Endpoint) -> bool:
    """A kept session holds a slot: only while the server's pools are at most half full and nobody
    waits, so kept sessions never starve a round trip or another mailbox of sessions."""
    if slots is None:
        return True
    return all(
        slots.waiting(k) == 0 and slots.in_use(k) * 2 <= slots.limit_of(k)
        for k in ServerSlots.keys(endpoint, "imap")
    )


async def _keep_or_close(keeper: Keeper | None, kept: _Kept, settings: MailboxSettings) -> None:
    """Keep the session in IDLE (one folder, IDLE offered, a keeper given, room on the server), else
    LOGOUT and free its slot."""
    session = kept.session
    if (
        keeper is not None
        and len(settings.folders) == 1
        and "IDLE" in session.capabilities
        and session.is_open
        and _room(settings.slots, settings.imap.endpoint)
    ):
        await keeper.keep(kept)
        return
    try:
        await session.close()
    finally:
        await kept.slot.aclose()


async def _scan_folder(
    session: IMAPSession,
    settings: MailboxSettings,
    folder: str,
    cursors: dict[str, Cursor],
    recorder: Recorder,
    commit: Commit,
    since: float,
    stats: ScanStats,
) -> None:
    here = [h for h in settings.heartbeats if folder in h.folders]
    acting = any(h.mark_keyword or h.move_to for h in here)
    try:
        await session.select(folder, readonly=not acting)
    except ProbeError as exc:
        if not session.is_open:
            raise
        raise ProbeError(
            f"folder {folder!r} cannot be opened: {exc.message}", reason="receive_protocol"
        ) from None
    validity = session.uidvalidity
    cursor = cursors.get(folder)
    if cursor is None:  # first look: start at UIDNEXT, mail already there is not read
        top = (session.uidnext - 1) if session.uidnext else max(await session.search(b"UID *") or [0])
        cursor = Cursor(validity, max(top, 0))
        await commit(folder, cursor, [])
        cursors[folder] = cursor
        return
    if cursor.uidvalidity != validity:
        # The folder was rebuilt: UIDs mean nothing now. Look again from the day the open windows
        # began; what was counted already is known by its Message-ID.
        day = (datetime.fromtimestamp(since, UTC) - timedelta(days=1)).strftime("%d-%b-%Y").encode()
        uids = await session.search(b"SINCE " + day)
        log.warning("heartbeat_uidvalidity_changed", folder=folder, was=cursor.uidvalidity, now=validity)
        cursor = Cursor(validity, 0)
    else:
        uids = [u for u in await session.search(b"UID %d:*" % (cursor.last_uid + 1)) if u > cursor.last_uid]
    if not uids:
        cursors[folder] = cursor
        await commit(folder, cursor, [])
        return
    todo = uids[: settings.max_messages]
    stats.backlog += len(uids) - len(todo)
    # A partial fetch of the header block: the server sends at most max_header bytes, so a foreign
    # message with a huge header is read in part, never refused (nor can it jam the folder's cursor).
    cap = session.settings.limits.max_header
    structure = b" BODYSTRUCTURE" if any(h.rules.needs_structure for h in here) else b""
    items = await session.fetch_items(
        todo, HEADER_ITEMS + structure + b" BODY.PEEK[HEADER]<0.%d>" % cap, cap=cap
    )
    facts: dict[int, tuple[MailFacts, float, TextPart | None]] = {}
    now = time.time()
    for item in items:
        assert item.uid is not None
        stats.read += 1
        if item.body_skipped or item.body is None:
            stats.unreadable += 1
            mail = MailFacts(size=item.size or 0)
        else:
            mail = parse_header(item.body, item.size or 0)
        text: TextPart | None = None
        if item.structure is not None:
            mail.attachments, text = walk_structure(item.structure)
        arrival = parse_internaldate(item.internaldate)
        facts[item.uid] = (mail, arrival if arrival is not None else now, text)
    body_cap = max((h.rules.body_bytes for h in here if h.rules.needs_body), default=0)
    if body_cap:
        await _read_bodies(session, facts, body_cap, stats)
    matches: list[Match] = []
    for uid in sorted(facts):
        mail, arrival, _ = facts[uid]
        mine = False
        for h in here:
            outcome = h.rules.classify(_bounded(mail, h.rules.body_bytes))
            if outcome is not None:
                mine = True
                matches.append(
                    Match(
                        h.name, folder, validity, uid, mail.message_id, arrival, outcome, mail.subject[:200]
                    )
                )
        stats.foreign += 0 if mine else 1
    cursor = Cursor(validity, max(todo))
    cursors[folder] = cursor
    counted = await commit(folder, cursor, matches)
    await _act(session, here, counted, stats)


def _bounded(mail: MailFacts, body_bytes: int) -> MailFacts:
    """The mail as a heartbeat with a smaller body cap sees it."""
    if mail.body is None or mail.body_read <= body_bytes:
        return mail
    return replace(mail, body=mail.body[:body_bytes])


async def _read_bodies(
    session: IMAPSession,
    facts: dict[int, tuple[MailFacts, float, TextPart | None]],
    cap: int,
    stats: ScanStats,
) -> None:
    """At most ``cap`` bytes of each message's first text part (a partial FETCH: the server cuts)."""
    by_section: dict[str, list[int]] = {}
    for uid, (_, _, text) in facts.items():
        if text is not None:
            by_section.setdefault(text.section, []).append(uid)
    for section, uids in by_section.items():
        part = b"BODY.PEEK[%s]<0.%d>" % (section.encode("ascii"), cap)
        for item in await session.fetch_items(uids, part, cap=cap):
            if item.uid is None or item.uid not in facts or item.body is None:
                continue
            mail, _, text = facts[item.uid]
            assert text is not None
            data = item.body[:cap]
            stats.body_bytes += len(data)
            mail.body = decode_body(data, text)
            mail.body_read = len(data)


async def _act(session: IMAPSession, here: Sequence[Watched], counted: list[Match], stats: ScanStats) -> None:
    """The explicit options, on newly counted mail only: a keyword, then a move (first heartbeat wins)."""
    by_name = {h.name: h for h in here}
    moved: set[int] = set()
    for m in counted:
        h = by_name.get(m.heartbeat)
        if h is None or m.uid in moved:
            continue
        try:
            if h.mark_keyword is not None:
                flags = session.permanent_flags
                if flags is not None and ("\\*" in flags or h.mark_keyword in flags):
                    await session.add_flag(m.uid, h.mark_keyword)
                else:
                    stats.action_errors.append(
                        f"{h.name}: the folder does not allow new keywords (PERMANENTFLAGS)"
                    )
            if h.move_to is not None:
                if not await session.move([m.uid], h.move_to):
                    raise ProbeError(
                        "IMAP server offers neither MOVE nor UIDPLUS: not moved", reason="receive_protocol"
                    )
                moved.add(m.uid)
        except ProbeError as exc:
            if not session.is_open:
                raise
            stats.action_errors.append(f"{h.name}: {exc.message}")
