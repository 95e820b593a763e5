"""IMAP commands of a selected session: SELECT, NOOP and IDLE (how arrival is seen), UID SEARCH, UID
FETCH, UID STORE and UID EXPUNGE (our canary only), LIST, NAMESPACE and GETQUOTAROOT (placement, quota).
Every response is read by :class:`IMAPConnection` and parsed by :mod:`probes.wire.imapwire`.
"""

from __future__ import annotations

import asyncio
import re
from asyncio import FIRST_COMPLETED
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from probes.clients.imap.connection import PROTOCOL, IMAPConnection
from probes.errors import ProbeError, ProbeTimeout
from probes.receipt.placement import Namespace, parse_namespace
from probes.receipt.quota import Usage, parse_quota, tightest
from probes.wire import imapwire as wire

FETCH_BATCH = 50  # UIDs per FETCH: bounds one reply to FETCH_BATCH x the item cap


@dataclass
class Fetched:
    """Messages of one FETCH by UID; ``skipped`` are UIDs whose data was over the cap (not kept)."""

    data: dict[int, bytes] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    skipped: set[int] = field(default_factory=set)


class QuotaMalformed(ProbeError):
    """A ``* QUOTA`` line we cannot read: the dialogue is still in step."""


class IMAPCommands(IMAPConnection):
    """The commands a probe sends once logged in."""

    # Whether the last IDLE was ended by an EXISTS the server pushed before DONE (not one it reported
    # after DONE, as Cyrus without idled does): tells servers that push from those that never do.
    idle_pushed = False

    async def noop(self) -> bool:
        """NOOP (makes servers such as Dovecot look at the mailbox now); True if new mail was announced."""
        _, untagged = await self._command("NOOP", [b"NOOP"])
        return self._saw_exists(untagged)

    def _saw_exists(self, untagged: Iterable[wire.Response]) -> bool:
        count = _exists(untagged, None)
        if count is None:
            return False
        grew = count > self.exists
        self.exists = count
        return grew or count > 0  # an EXISTS at all means the mailbox changed: worth a search

    async def idle(self, seconds: float, stop: asyncio.Event | None = None) -> bool:
        """IDLE for up to ``seconds`` (or until ``stop`` is set: another session of the run saw news);
        True if the server announced new mail meanwhile (``idle_pushed``: before DONE, of its own).

        One reader task runs across the whole IDLE, so no read is ever cut in the middle of a literal;
        ``DONE`` is sent when the time is up or mail was announced, then the tagged reply is awaited
        within one step timeout. Cut short (the run's deadline), the reader is cancelled and the session
        dropped before the session's lock is given up: nothing can read the stream after it.
        """
        async with self._busy:
            return await self._idle_now(seconds, stop)

    async def _idle_now(self, seconds: float, stop: asyncio.Event | None) -> bool:
        self.idle_pushed = False
        if self._closed or self._in is None:
            raise ProbeError("IMAP IDLE: the connection is closed", reason=PROTOCOL)
        tag = next(self._tags)
        self.recorder.commands += 1
        cap = self.settings.limits.max_line
        pushed: list[wire.Response] = []
        reader: asyncio.Task[wire.Response] | None = None
        stopped: asyncio.Task[bool] | None = None
        try:
            async with asyncio.timeout(self.settings.timeout):
                self._in.reset_budget()
                await self._send(tag, [b"IDLE"], "IDLE", "IDLE")
                while True:  # until the continuation (untagged news may come first)
                    resp = await self._read_response("IDLE", tag, cap)
                    if resp.tag == b"+":
                        break
                    if resp.tag == tag:
                        raise ProbeError(f"IMAP IDLE answered {resp.text()}", reason=PROTOCOL)
                    self._note(resp)
                    pushed.append(resp)
            loop = asyncio.get_running_loop()
            until = loop.time() + seconds
            done_sent = False
            done_by = 0.0
            while True:
                if reader is None:
                    reader = asyncio.ensure_future(self._read_response("IDLE", tag, cap))
                left = (until if not done_sent else done_by) - loop.time()
                told = stop is not None and stop.is_set()
                news = _exists(pushed, None) is not None
                if not done_sent and (left <= 0 or told or news):
                    self.idle_pushed = news  # the server's own push, not its report after DONE
                    assert self._writer is not None
                    self.recorder.debug("C: imap", "DONE")
                    self._writer.write(b"DONE\r\n")
                    done_sent = True
                    done_by = loop.time() + self.settings.timeout
                    self._in.reset_budget()
                    continue
                if stop is not None and stopped is None and not done_sent:
                    stopped = asyncio.ensure_future(stop.wait())
                waits: set[asyncio.Future[Any]] = {reader}
                if stopped is not None and not done_sent:
                    waits.add(stopped)
                finished, _ = await asyncio.wait(waits, timeout=max(left, 0), return_when=FIRST_COMPLETED)
                if reader not in finished:
                    if done_sent and loop.time() >= done_by:
                        raise TimeoutError
                    continue
                resp = reader.result()
                reader = None
                if resp.tag == tag:
                    break
                self._note(resp)
                pushed.append(resp)
        except (TimeoutError, ProbeError, OSError) as exc:
            raise self._idle_failed(exc, "no reply") from None
        finally:
            if stopped is not None and not stopped.done():
                stopped.cancel()
            if reader is not None and not reader.done():
                # Cancelled mid-IDLE (the run's deadline): the dialogue is out of step, end it.
                reader.cancel()
                self._abort()
        if resp.status != b"OK":
            raise ProbeError(f"IMAP IDLE answered {resp.text()}", reason=PROTOCOL)
        return self._saw_exists(pushed)

    def _idle_failed(self, exc: BaseException, waiting: str) -> ProbeError:
        """Any failure inside IDLE leaves the dialogue out of step: the connection is dropped, and the
        error says what was waited for (a stall is a timeout, a lost connection a protocol error)."""
        self._abort()
        if isinstance(exc, ProbeError):
            return exc
        if isinstance(exc, TimeoutError):
            return ProbeTimeout(f"IMAP IDLE: {waiting} within {self.settings.timeout:g}s")
        return ProbeError(f"IMAP IDLE: connection lost: {exc}", reason=PROTOCOL)

    async def idle_begin(self) -> None:
        """Start IDLE and leave it running with no reader: what the server pushes meanwhile waits in the
        connection's buffer (bounded: a full buffer pauses the socket) until :meth:`idle_end`. Nothing
        else may be sent before idle_end (heartbeats keep a mailbox's session so between runs)."""
        async with self._busy:
            if self._closed or self._in is None or self._idle_tag is not None:
                raise ProbeError("IMAP IDLE: the connection is closed or already idle", reason=PROTOCOL)
            tag = next(self._tags)
            self.recorder.commands += 1
            try:
                async with asyncio.timeout(self.settings.timeout):
                    self._in.reset_budget()
                    await self._send(tag, [b"IDLE"], "IDLE", "IDLE")
                    while True:
                        resp = await self._read_response("IDLE", tag, self.settings.limits.max_line)
                        if resp.tag == b"+":
                            break
                        if resp.tag == tag:
                            raise ProbeError(f"IMAP IDLE answered {resp.text()}", reason=PROTOCOL)
                        self._note(resp)
                        self._idle_pushed.append(resp)
            except (TimeoutError, ProbeError, OSError) as exc:
                raise self._idle_failed(exc, "no reply") from None
            self._idle_tag = tag

    async def idle_end(self) -> bool:
        """End an IDLE left by :meth:`idle_begin` (``DONE``, then up to its tagged reply within one step):
        True if the server announced a change meanwhile (EXISTS, EXPUNGE, FETCH)."""
        async with self._busy:
            tag, self._idle_tag = self._idle_tag, None
            pushed, self._idle_pushed = self._idle_pushed, []
            if tag is None or self._closed or self._in is None or self._writer is None:
                raise ProbeError("IMAP IDLE: no IDLE to end", reason=PROTOCOL)
            try:
                async with asyncio.timeout(self.settings.timeout):
                    self.recorder.debug("C: imap", "DONE")
                    self._writer.write(b"DONE\r\n")
                    await self._writer.drain()
                    self._in.reset_budget()
                    while True:
                        resp = await self._read_response("IDLE", tag, self.settings.limits.max_line)
                        if resp.tag == tag:
                            break
                        self._note(resp)
                        pushed.append(resp)
            except (TimeoutError, ProbeError, OSError) as exc:
                raise self._idle_failed(exc, "no reply to DONE") from None
            if resp.status != b"OK":
                raise ProbeError(f"IMAP IDLE answered {resp.text()}", reason=PROTOCOL)
            events = [e[1] for r in pushed if (e := wire.number_event(r)) is not None]
            return any(e in (b"EXISTS", b"EXPUNGE", b"FETCH") for e in events)

    async def select(self, mailbox: str, *, readonly: bool = False) -> None:
        """SELECT another mailbox in this session (the all-folders walk); expunges nothing. With
        ``readonly``, EXAMINE: nothing in the mailbox can change (heartbeats that only read)."""
        verb = "EXAMINE" if readonly else "SELECT"
        _, untagged = await self._command(f"{verb} {mailbox}", [verb.encode() + b" ", mailbox])
        self.exists = _exists(untagged, 0) or 0
        self.uidnext = _uidnext(untagged)
        self.uidvalidity = _code_number(untagged, _UIDVALIDITY_RE)
        self.permanent_flags = _permanent_flags(untagged)

    async def examine(self, mailbox: str) -> int | None:
        """EXAMINE ``mailbox`` (read-only: nothing in it can change, not even \\Seen); its UIDVALIDITY,
        if the server sent it. Used by readers of other people's mail (reports, heartbeats)."""
        await self.select(mailbox, readonly=True)
        return self.uidvalidity

    async def search(self, criteria: bytes) -> list[int]:
        """``UID SEARCH criteria`` (criteria we build: atoms and numbers only), UIDs ascending."""
        _, untagged = await self._command("UID SEARCH", [b"UID SEARCH ", criteria])
        uids: set[int] = set()
        for resp in untagged:
            found = wire.parse_search(resp)
            if found is not None:
                uids.update(found)
        return sorted(uids)

    async def search_since(self, since_uid: int, day: str, until_uid: int | None = None) -> list[int]:
        """UIDs from ``since_uid`` (to ``until_uid``, else the last) that arrived on or after ``day``
        (``7-Dec-2026``, RFC 3501 date). A caller bounds one reply by bounding the range."""
        upper = b"*" if until_uid is None else b"%d" % until_uid
        found = await self.search(b"UID %d:%s SINCE %s" % (since_uid, upper, day.encode("ascii")))
        return [u for u in found if u >= since_uid and (until_uid is None or u <= until_uid)]

    async def fetch_items(self, uids: Iterable[int], items: bytes, *, cap: int) -> list[wire.FetchItem]:
        """``UID FETCH`` of ``items`` in batches; each body literal over ``cap`` is dropped unread
        (``body_skipped``). Only responses naming an asked UID count (see :meth:`fetch`)."""
        wanted = sorted(set(uids))
        out: list[wire.FetchItem] = []
        for i in range(0, len(wanted), FETCH_BATCH):
            batch = wanted[i : i + FETCH_BATCH]
            uid_set = ",".join(str(u) for u in batch).encode()
            _, untagged = await self._command(
                "UID FETCH", [b"UID FETCH ", uid_set, b" (UID ", items, b")"], literal_cap=cap
            )
            asked = set(batch)
            for resp in untagged:
                item = wire.parse_fetch(resp)
                if item is not None and item.uid in asked:
                    out.append(item)
        return out

    async def move(self, uids: Iterable[int], mailbox: str) -> bool:
        """Move ``uids`` to ``mailbox``: UID MOVE (RFC 6851) where offered, else UID COPY, then \\Deleted
        and UID EXPUNGE of those UIDs only (UIDPLUS). False, doing nothing, without either: a plain
        EXPUNGE would also remove what the user flagged \\Deleted."""
        uid_set = ",".join(str(u) for u in sorted(set(uids))).encode()
        if not uid_set:
            return True
        if "MOVE" in self._caps:
            await self._command("UID MOVE", [b"UID MOVE ", uid_set, b" ", mailbox])
            return True
        if not self.can_expunge_by_uid:
            return False
        await self._command("UID COPY", [b"UID COPY ", uid_set, b" ", mailbox])
        await self._command("UID STORE", [b"UID STORE ", uid_set, b" +FLAGS.SILENT (\\Deleted)"])
        await self._command("UID EXPUNGE", [b"UID EXPUNGE ", uid_set])
        return True

    async def search_text(self, value: str, since_uid: int) -> list[int]:
        """UIDs from ``since_uid`` on whose text (headers, body, attached messages' headers) contains
        ``value``: how bounces, which carry our token only inside, are found. Limited to new UIDs so the
        server never scans the whole mailbox's bodies."""
        pieces: list[bytes | str] = [b"UID SEARCH UID %d:* TEXT " % since_uid, value]
        _, untagged = await self._command("UID SEARCH", pieces)
        uids: set[int] = set()
        for resp in untagged:
            found = wire.parse_search(resp)
            if found is not None:
                uids.update(u for u in found if u >= since_uid)  # n:* also matches the last UID below n
        return sorted(uids)

    async def search_header(
        self, header: str, value: str, *, undeleted: bool = False, flag: str | None = None
    ) -> list[int]:
        """UIDs whose ``header`` contains ``value``; with ``undeleted``, not those flagged \\Deleted; with
        ``flag`` (``\\Seen`` or a keyword), only those carrying it."""
        pieces: list[bytes | str] = [b"UID SEARCH "]
        if undeleted:
            pieces.append(b"UNDELETED ")
        if flag is not None:
            pieces.append(b"SEEN " if flag.lower() == "\\seen" else b"KEYWORD " + flag.encode("ascii") + b" ")
        pieces += [b"HEADER ", header, b" ", value]
        _, untagged = await self._command("UID SEARCH", pieces)
        uids: list[int] = []
        for resp in untagged:
            found = wire.parse_search(resp)
            if found is not None:
                uids.extend(found)
        return sorted(set(uids))

    async def list_mailboxes(self) -> list[wire.Response]:
        """Untagged replies of ``LIST "" "*"`` (asking for SPECIAL-USE flags where LIST-EXTENDED is
        offered), bounded by the reply budget; parsed by :func:`probes.receipt.placement.parse_list`."""
        pieces: list[bytes | str] = [b'LIST "" "*"']
        if "LIST-EXTENDED" in self._caps and "SPECIAL-USE" in self._caps:
            pieces.append(b" RETURN (SPECIAL-USE)")
        _, untagged = await self._command("LIST", pieces)
        return untagged

    async def namespace(self) -> list[Namespace] | None:
        """The personal namespaces (RFC 2342 ``NAMESPACE``) where the server advertises them, else None.
        Only a help to find folders by name: a NO/BAD or an answer we cannot read is None (the session
        stays in step); garbage or silence end the session as any command."""
        if "NAMESPACE" not in self._caps:
            return None
        try:
            _, untagged = await self._command("NAMESPACE", [b"NAMESPACE"])
        except ProbeError:
            if not self.is_open:
                raise
            return None
        for resp in untagged:
            found = parse_namespace(resp)
            if found is not None:
                return found
        return None

    async def quota(self) -> dict[str, Usage]:
        """RFC 9208 ``GETQUOTAROOT`` on the selected mailbox: per resource (``STORAGE`` in bytes,
        ``MESSAGE``...) the usage of the root nearest its limit; empty when no root has a limit.

        A NO/BAD raises ``receive_protocol`` with the session still open; a ``* QUOTA`` line that does not
        parse raises the same (in step, still open); garbage or silence end the session as any command.
        """
        _, untagged = await self._command("GETQUOTAROOT", [b"GETQUOTAROOT ", self.settings.mailbox])
        found: dict[str, Usage] = {}
        for resp in untagged:
            line = resp.parts[0] or b""
            words = resp.words
            if not words or words[0].upper() != b"QUOTA":
                continue  # QUOTAROOT names the roots; the QUOTA lines carry the numbers
            if len(resp.parts) == 3 and resp.parts[1] is not None and b'"' not in resp.parts[1]:
                # the root name as a literal (RFC 9208 astring): as a quoted string for the parser
                line = b'%s"%s"%s' % (line, resp.parts[1], resp.parts[2] or b"")
            parsed = parse_quota(line) if len(resp.parts) in (1, 3) else None
            if parsed is None:
                raise QuotaMalformed(f"IMAP GETQUOTAROOT: malformed {wire.show(line)}", reason=PROTOCOL)
            tightest(found, parsed[1])
        return found

    @property
    def can_expunge_by_uid(self) -> bool:
        return "UIDPLUS" in self._caps

    async def fetch(self, uids: Iterable[int], part: str, *, cap: int | None = None) -> Fetched:
        """``part`` (e.g. ``BODY.PEEK[]``) and the size of each UID, in batches; data over ``cap``
        (default ``max_message``) is dropped unread and the UID listed in ``skipped``.

        Only FETCH responses that name one of the asked UIDs count: another session's
        ``* n FETCH (FLAGS …)`` in between is noise, never an empty body.
        """
        wanted = sorted(set(uids))
        cap = self.settings.limits.max_message if cap is None else cap
        out = Fetched()
        for i in range(0, len(wanted), FETCH_BATCH):
            batch = wanted[i : i + FETCH_BATCH]
            uid_set = ",".join(str(u) for u in batch).encode()
            _, untagged = await self._command(
                "UID FETCH",
                [b"UID FETCH ", uid_set, b" (UID RFC822.SIZE ", part.encode(), b")"],
                literal_cap=cap,
            )
            asked = set(batch)
            for resp in untagged:
                item = wire.parse_fetch(resp)
                if item is None or item.uid not in asked:
                    continue
                if item.size is not None:
                    out.sizes[item.uid] = item.size
                if item.body_skipped:
                    out.skipped.add(item.uid)
                elif item.body is not None:
                    out.data[item.uid] = item.body
        return out

    async def add_flag(self, uid: int, flag: str) -> None:
        """Set ``flag`` (``\\Seen`` or a keyword atom, checked by the config) on one message: only ever
        called for our own verified canary."""
        await self._command(
            "UID STORE",
            [b"UID STORE %d +FLAGS.SILENT (" % uid, flag.encode("ascii"), b")"],
            shown=f"UID STORE {uid} +FLAGS.SILENT ({flag})",
        )

    async def delete(self, uids: Iterable[int]) -> None:
        """Flag ``uids`` \\Deleted and, with UIDPLUS, expunge exactly those.

        Without UIDPLUS there is no way to expunge only our messages: a plain EXPUNGE also removes
        whatever the user has flagged \\Deleted, even between a check and the EXPUNGE. So our canaries
        stay flagged (gone from view in most clients) until the user's own client expunges, and later
        sweeps pass over them.
        """
        uid_set = ",".join(str(u) for u in sorted(set(uids))).encode()
        if not uid_set:
            return
        await self._command(
            "UID STORE", [b"UID STORE ", uid_set, b" +FLAGS.SILENT (\\Deleted)"], reason="cleanup"
        )
        if self.can_expunge_by_uid:
            await self._command("UID EXPUNGE", [b"UID EXPUNGE ", uid_set], reason="cleanup")
        else:
            self.recorder.facts.imap_expunge_skipped = True


_UIDNEXT_RE = re.compile(rb"\[UIDNEXT ([0-9]{1,10})\]", re.IGNORECASE)
_UIDVALIDITY_RE = re.compile(rb"\[UIDVALIDITY ([0-9]{1,10})\]", re.IGNORECASE)
_PERMANENTFLAGS_RE = re.compile(rb"\[PERMANENTFLAGS \(([^)]{0,4096})\)\]", re.IGNORECASE)


def _code_number(untagged: Iterable[wire.Response], pattern: re.Pattern[bytes]) -> int | None:
    """The number of a response code (``* OK [UIDNEXT n]``, ``[UIDVALIDITY n]``), if the server sent it."""
    for resp in untagged:
        first = resp.parts[0] if resp.parts else None
        if resp.tag == b"*" and isinstance(first, bytes):
            m = pattern.search(first)
            if m is not None:
                return int(m.group(1))
    return None


def _permanent_flags(untagged: Iterable[wire.Response]) -> frozenset[str] | None:
    """``* OK [PERMANENTFLAGS (...)]`` of a SELECT (``\\*``: new keywords may be made); None if absent."""
    for resp in untagged:
        first = resp.parts[0] if resp.parts else None
        if resp.tag == b"*" and isinstance(first, bytes):
            m = _PERMANENTFLAGS_RE.search(first)
            if m is not None:
                return frozenset(f.decode("ascii", "replace") for f in m.group(1).split())
    return None


def _uidnext(untagged: Iterable[wire.Response]) -> int | None:
    """``* OK [UIDNEXT n]`` of a SELECT, if the server sent it."""
    return _code_number(untagged, _UIDNEXT_RE)


def _exists(untagged: Iterable[wire.Response], default: int | None) -> int | None:
    """The last ``* n EXISTS`` count among untagged responses, else ``default``."""
    count = default
    for resp in untagged:
        event = wire.number_event(resp)
        if event is not None and event[1] == b"EXISTS":
            count = event[0]
    return count
