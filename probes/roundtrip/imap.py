"""The IMAP receiving side: the inbox session, the junk folder and other folders, the sync check's second
session, quota, and arrival detection (NOOP and IDLE on the poll schedule)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

from probes import canary
from probes.canary import Token
from probes.clients.imap import IMAPSession, IMAPSettings, QuotaMalformed
from probes.errors import ProbeError, ProbeTimeout
from probes.receipt.placement import (
    MAX_MAILBOXES,
    ListedMailbox,
    Namespace,
    choose_junk,
    other_folders,
    parse_list,
)
from probes.recorder import Recorder
from probes.roundtrip.bounces import BounceWatch
from probes.roundtrip.receiver import Pacer, Receiver, count_skipped
from probes.roundtrip.receiver import looks as _looks
from probes.roundtrip.settings import RoundTripSettings
from probes.wire.net import CLOSE_TIMEOUT, Endpoint
from probes.wire.slots import maybe_session

FETCH_CANDIDATES = 8  # messages carrying this run's nonce fetched at most (ours plus copies of it)
# An IDLE at least this long that ends with news the server did not push marks it silent. Shorter ones
# teach nothing: a server that pushes late (Dovecot: ~0.5 s) would often be caught mid-delay.
SILENT_AFTER = 1.0


class IMAPReceiver(Receiver):
    def __init__(self, settings: RoundTripSettings, recorder: Recorder) -> None:
        super().__init__(settings, recorder)
        assert isinstance(settings.receiver, IMAPSettings)
        self.session = IMAPSession(settings.receiver, recorder)
        self.limits = settings.receiver.limits
        self.uids: list[int] = []
        self.device: IMAPSession | None = None  # the sync check's second session
        self.device_seen: asyncio.Task[tuple[float, list[int]]] | None = None
        self.accepted_at = 0.0
        self.junk: IMAPSession | None = None  # a second session on the junk folder, if watched
        self.junk_recorder: Recorder | None = None
        self.found_in: IMAPSession | None = None  # the junk or walk session, if found there (else inbox)
        self.others: list[str] = []  # other folders looked at (placement_all_folders), bounded
        self.other: IMAPSession | None = None  # the session walking them
        self.other_recorder: Recorder | None = None
        self._aux_slots = contextlib.AsyncExitStack()  # the slot of a bounce mailbox on another server
        self.bounce: BounceWatch | None = None
        self.bounce_session: IMAPSession | None = None  # its own session (bounce_receiver), if any

    async def open_and_sweep(self, late: set[str]) -> list[Token]:
        await self.session.open()
        swept = await self._sweep(self.session, self.recorder, late)
        await self._read_quota()
        await self._open_bounces()
        if self.settings.junk_folders is None and self.settings.other_folders <= 0:
            return swept
        listing = [m for r in (await self.session.list_mailboxes())[:MAX_MAILBOXES] if (m := parse_list(r))]
        if self.settings.junk_folders is not None:
            namespaces = await self.session.namespace() or []
            swept += await self._open_junk(listing, namespaces, late)
        if self.settings.other_folders > 0:
            swept += await self._open_others(listing, late)
        return swept

    async def _open_bounces(self) -> None:
        """Bounce watching starts from the mailbox's UIDNEXT now: only mail arriving during the run is
        searched, so a big mailbox costs nothing (bounces of earlier runs are handled if they arrive now)."""
        st = self.settings
        if st.bounce_receiver is not None:
            aux = await self._aux_recorder(st.bounce_receiver.endpoint)
            self.bounce_session = IMAPSession(st.bounce_receiver, aux, "bounce")
            await self.bounce_session.open()
            self._count_junk_commands()
            self.bounce = BounceWatch(self.bounce_session, aux, st, self.recorder)
        elif st.bounces_here:
            self.bounce = BounceWatch(self.session, self.recorder, st, self.recorder)

    async def _aux_recorder(self, endpoint: Endpoint | None = None) -> Recorder:
        """A recorder for a second session (its timings never overwrite the inbox session's). Its slot
        on the receiving server was taken with the run's (all at once, see probe_roundtrip); a session
        on another server (``endpoint``) takes one there now."""
        rec = self.recorder
        aux = Recorder(masker=rec.masker, transcript=rec.transcript, clock=rec.clock)
        if endpoint is not None and endpoint != self.settings.receiver.endpoint:
            slot = maybe_session(self.settings.slots, endpoint, "imap", aux)
            await self._aux_slots.enter_async_context(slot)
        return aux

    async def _open_junk(
        self, listing: list[ListedMailbox], namespaces: list[Namespace], late: set[str]
    ) -> list[Token]:
        """Watch the junk folder in a session of its own, swept like the inbox at every run (so canaries
        that timed out there, filed as spam, are removed by a later run). No junk folder is a fact
        (``junk_folder_found`` false, a warning in the daemon), not a failure."""
        assert isinstance(self.settings.receiver, IMAPSettings) and self.settings.junk_folders is not None
        folder = choose_junk(listing, self.settings.junk_folders, self.settings.receiver.mailbox, namespaces)
        self.recorder.facts.junk_folder = folder
        self.recorder.facts.junk_folder_found = folder is not None
        if folder is None:
            return []
        self.junk_recorder = await self._aux_recorder()
        self.junk = IMAPSession(replace(self.settings.receiver, mailbox=folder), self.junk_recorder, "junk")
        try:
            await self.junk.open()
            return await self._sweep(self.junk, self.junk_recorder, late)
        finally:
            self._count_junk_commands()

    async def _open_others(self, listing: list[ListedMailbox], late: set[str]) -> list[Token]:
        """Open the session that walks the other folders; each is swept once here."""
        assert isinstance(self.settings.receiver, IMAPSettings)
        watched = [self.settings.receiver.mailbox, *([self.junk.settings.mailbox] if self.junk else [])]
        self.others = other_folders(listing, watched, self.settings.other_folders)
        self.recorder.facts.other_folders = len(self.others)
        if not self.others:
            return []
        self.other_recorder = await self._aux_recorder()
        self.other = IMAPSession(
            replace(self.settings.receiver, mailbox=self.others[0]), self.other_recorder, "other"
        )
        swept: list[Token] = []
        try:
            await self.other.open()
            for i, folder in enumerate(self.others):
                if i:
                    await self.other.select(folder)
                swept += await self._sweep(self.other, self.other_recorder, late)
        finally:
            self._count_junk_commands()
        return swept

    async def _search_others(self, token: Token) -> bool:
        """One walk over the other folders; True (the folder left selected) if the canary is there."""
        assert self.other is not None
        try:
            for folder in self.others:
                await self.other.select(folder)  # a fresh SELECT also makes the server look now
                uids = await self.other.search_header(canary.HEADER, token.nonce)
                if uids:
                    self.uids = uids[-FETCH_CANDIDATES:]
                    self.found_in, self.placement = self.other, "other"
                    self.recorder.facts.found_folder = folder
                    return True
        finally:
            self._count_junk_commands()
        return False

    async def _sweep(self, s: IMAPSession, recorder: Recorder, late: set[str]) -> list[Token]:
        name = self.settings.name
        with recorder.phase("receive_sweep"):
            # With UIDPLUS, canaries left flagged by an interrupted delete are finished off too; without
            # it, flagged ones are passed over (they cannot be expunged without touching user mail).
            uids = await s.search_header(
                canary.HEADER, canary.probe_search_key(name), undeleted=not s.can_expunge_by_uid
            )
            heads = await s.fetch(
                uids, f"BODY.PEEK[HEADER.FIELDS ({canary.HEADER})]", cap=self.limits.max_header
            )
            # The header says where to look; only the whole message, verified, decides what is deleted.
            hinted = {
                uid: toks.pop()
                for uid, h in heads.data.items()
                if len(toks := canary.candidates(h, name)) == 1
            }
            maybe_stale = self._stale(hinted, late)
            # Too big to be a canary (the size came with the header): never fetched whole.
            maybe_stale = {u: t for u, t in maybe_stale.items() if heads.sizes.get(u, 0) <= self._canary_cap}
            whole = await s.fetch(maybe_stale, "BODY.PEEK[]", cap=self._canary_cap)
            found: dict[int, Token] = {}
            for uid, raw in whole.data.items():
                tok = canary.verify_canary(raw, self.settings.key, name)
                if tok is not None:
                    found[uid] = tok
            count_skipped(self.recorder, len(heads.skipped) + len(maybe_stale) - len(found))
            stale = self._stale(found, late)
            await s.delete(stale)
        return list(stale.values())

    async def _read_quota(self) -> None:
        """Quota of the canary mailbox before the canary goes out (a full mailbox is then shown even when
        it bounces the canary). A failed read is only noted (``facts.quota_error``, one of
        ``QUOTA_ERRORS``): the round trip goes on, in a fresh session if the old one had to be dropped."""
        s, rec = self.session, self.recorder
        assert isinstance(self.settings.receiver, IMAPSettings)
        if not self.settings.receiver.quota or "QUOTA" not in s.capabilities:
            return
        started = rec.clock()
        try:
            rec.facts.quota = await s.quota()
        except ProbeError as exc:
            refused = s.is_open and not isinstance(exc, QuotaMalformed)
            error = "timeout" if isinstance(exc, ProbeTimeout) else "refused" if refused else "protocol"
            rec.facts.quota_error = error
            rec.facts.quota_message = exc.message
            rec.debug("quota", f"quota not read ({error}): {exc.message}")
        finally:
            rec.set_phase("receive_quota", rec.clock() - started)
        if not s.is_open:  # the read put the dialogue out of step: go on in a new session
            await s.close()
            self.session = IMAPSession(self.settings.receiver, rec)
            await self.session.open()

    @property
    def _canary_cap(self) -> int:
        return min(self.limits.max_message, canary.MAX_CANARY_BYTES)

    async def wait(self, token: Token, since: float) -> float:
        """Look right away (a local delivery may be done by the time DATA is accepted), then after each
        gap: short ones slept, then a NOOP per session; once the gaps reach ``idle_min_gap`` on a
        server that pushes, one IDLE per session (all at once) until a push or ``idle_max``, no polling
        in between. Only a SEARCH for our token ends the wait: an EXISTS (a foreign message) only
        triggers the search."""
        s, rec, st = self.session, self.recorder, self.settings
        push = self._pushes(s)
        pace = Pacer(rec, since, st.max_rate)
        # Sessions polled per look: the gaps stretch by as much, so the budget holds with them too.
        polled = 1 + (self.junk is not None) + (self.bounce is not None and self.bounce_session is not None)
        last_search = rec.clock()
        for gap in _looks(st):
            if push and gap >= st.idle_min_gap:
                # Until the next periodic search at the latest (other folders, bounces, the safety look);
                # on a server not yet seen to push, only SILENT_AFTER: one that accepts IDLE and never
                # pushes must not cost a run with a short timeout its canary (nor a 5 s detection).
                due_in = st.search_every - (rec.clock() - last_search)
                longest = (
                    st.idle_max if st.idle_push.pushes(self._server(s)) else min(st.idle_max, SILENT_AFTER)
                )
                seconds = max(st.idle_min_gap, min(longest, due_in))
                announced, junk_announced, bounce_announced = await self._idle_all(s, seconds)
            else:
                await pace.pause(gap * polled)
                announced = await s.noop()
                junk_announced = await self.junk.noop() if self.junk is not None else False
                bounce_announced = announced
                if self.bounce is not None and self.bounce_session is not None:
                    bounce_announced = await self.bounce_session.noop()
            self._count_junk_commands()
            seen = rec.clock()
            due = seen - last_search >= st.search_every
            if announced or due:
                uids = await s.search_header(canary.HEADER, token.nonce)
                if uids:
                    self.uids = uids[-FETCH_CANDIDATES:]
                    return seen
            if self.junk is not None and (junk_announced or due):
                uids = await self.junk.search_header(canary.HEADER, token.nonce)
                self._count_junk_commands()
                if uids:
                    self.uids = uids[-FETCH_CANDIDATES:]
                    self.found_in, self.placement = self.junk, "junk"
                    return seen
            if self.other is not None and due and await self._search_others(token):
                return seen
            if self.bounce is not None:
                if bounce_announced or due:
                    await self.bounce.look(token)  # raises "bounced" on a permanent failure
                self._count_junk_commands()
            if due:
                last_search = seen
            pace.looked()
        raise AssertionError("unreachable: the schedule is endless")  # pragma: no cover

    def _idles(self, s: IMAPSession) -> bool:
        receiver = self.settings.receiver
        return isinstance(receiver, IMAPSettings) and receiver.use_idle and "IDLE" in s.capabilities

    def _server(self, s: IMAPSession) -> tuple[str, int]:
        endpoint = s.settings.endpoint
        return endpoint.host, endpoint.port

    def _pushes(self, s: IMAPSession) -> bool:
        """IDLE allowed and offered, and the server not known to keep its news until a NOOP."""
        return self._idles(s) and not self.settings.idle_push.silent(self._server(s))

    async def _idle_all(self, s: IMAPSession, seconds: float) -> tuple[bool, bool, bool]:
        """One IDLE of up to ``seconds`` on the inbox, the junk and the bounce session at once, all
        ended by the first push; a session that was not pushed to then gets a NOOP (the safety look:
        servers that accept IDLE and never push are seen here). What each announced: (inbox, junk,
        bounce). A whole IDLE of a second or more without a push, after which the server reports new
        mail (after DONE, or at the NOOP), marks the server silent."""
        st = self.settings
        stop = asyncio.Event()
        bounce = self.bounce_session if self.bounce is not None else None
        sessions = [x for x in (s, self.junk, bounce) if x is not None]

        async def one(x: IMAPSession) -> tuple[bool, bool]:
            if x is not s and not self._idles(x):  # a bounce mailbox elsewhere without IDLE
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), seconds)
                return False, False
            announced = await x.idle(seconds, stop)
            told = stop.is_set() and not x.idle_pushed
            if x.idle_pushed:
                stop.set()
            return announced, told

        before = s.exists
        tasks = [asyncio.ensure_future(one(x)) for x in sessions]
        try:
            done = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()  # a cut IDLE drops its session: the run is failing anyway
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        seen: list[bool] = []
        for x, (idle_announced, told) in zip(sessions, done, strict=True):
            announced = idle_announced or await x.noop()
            if x is s and self._idles(s):
                if s.idle_pushed:
                    st.idle_push.note(self._server(s), pushed=True)
                elif announced and not told and s.exists > before and seconds >= SILENT_AFTER:
                    # A whole IDLE without a push, yet new mail at its end (after DONE, or at the NOOP).
                    st.idle_push.note(self._server(s), pushed=False)
            seen.append(announced)
        inbox = seen[0]
        junk = seen[1] if self.junk is not None else False
        return inbox, junk, (seen[-1] if bounce is not None else inbox)

    def _count_junk_commands(self) -> None:
        """Commands of the second and third session count as the run's (wait_commands)."""
        bounce = self.bounce.recorder if self.bounce is not None and self.bounce_session else None
        for aux in (self.junk_recorder, self.other_recorder, bounce):
            if aux is not None:
                self.recorder.commands += aux.commands
                aux.commands = 0

    async def _look(self, s: IMAPSession, token: Token, flag: str | None = None) -> tuple[float, list[int]]:
        """Poll ``s`` until ``token`` (with ``flag``, if given) shows: (when, UIDs). The first look comes
        at once. Without a flag (the second device waiting for the canary): then gaps of at least
        ``idle_min_gap``, IDLE without polling on a server that pushes. With a flag every look searches
        (a flag change announces no EXISTS), on the gap schedule."""
        rec, st = self.recorder, self.settings
        use_idle = self._idles(s)
        push = flag is None and self._pushes(s)
        pace = Pacer(rec, rec.clock(), st.max_rate)
        last_search = rec.clock()
        for gap in _looks(st):
            if flag is None and gap > 0:  # the second device: no dense first looks (the wait has them)
                gap = max(gap, st.idle_min_gap)
            if push and gap >= st.idle_min_gap:
                announced = await s.idle(st.idle_max) or await s.noop()
            elif use_idle and gap >= st.idle_min_gap:
                announced = await s.idle(gap) or await s.noop()
            else:
                await pace.pause(gap)
                announced = await s.noop()
            seen = rec.clock()
            if announced or flag is not None or seen - last_search >= st.search_every:
                last_search = seen
                uids = await s.search_header(canary.HEADER, token.nonce, flag=flag)
                if uids:
                    return seen, uids
            pace.looked()
        raise AssertionError("unreachable: the schedule is endless")  # pragma: no cover

    async def open_device(self) -> None:
        if self.settings.sync is None:
            return
        assert isinstance(self.settings.receiver, IMAPSettings)
        self.device = IMAPSession(self.settings.receiver, self.recorder, prefix="sync")
        await self.device.open()  # phases sync_connect, sync_tls, sync_banner, sync_login

    def watch(self, token: Token, accepted_at: float) -> None:
        if self.device is not None:
            self.accepted_at = accepted_at
            self.device_seen = asyncio.ensure_future(self._look(self.device, token))

    async def _sync(self, token: Token, uid: int) -> None:
        """Flag our canary in the first session; the second must see the flag within the timeout."""
        assert self.device is not None and self.device_seen is not None and self.settings.sync is not None
        rec, flag, limit = self.recorder, self.settings.sync.flag, self.settings.sync.timeout
        with rec.phase("sync_flag"):
            await self.session.add_flag(uid, flag)
        flagged = rec.clock()
        try:
            with rec.phase("sync_wait"):
                async with asyncio.timeout(limit):
                    arrived, _ = await self.device_seen  # the arrival as the second device saw it
                    rec.facts.sync_arrival_seconds = arrived - self.accepted_at
                    while True:
                        seen, uids = await self._look(self.device, token, flag)
                        if uid in uids:
                            break
        except TimeoutError as exc:  # the sync timeout, or the second session stalled on a command
            self.device.abort()  # cut mid-command: out of step
            stalled = f" (the second session stalled: {exc})" if isinstance(exc, ProbeError) else ""
            raise ProbeError(
                f"the second IMAP session did not see {flag} on the canary within {limit:g}s{stalled}",
                reason="sync_timeout",
            ) from None
        rec.facts.sync_seconds = max(0.0, seen - flagged)
        rec.set_phase("sync_wait", seen - flagged)

    async def fetch_verify_delete(self, token: Token) -> None:
        assert self.uids
        with self.recorder.phase("receive_fetch"):
            where = self.found_in or self.session
            fetched = await where.fetch(self.uids, "BODY.PEEK[]", cap=self._canary_cap)
        # A copy of our token on another message (forwarded, header copied) is passed over: the one
        # message that verifies as a whole is ours.
        ours = [
            uid for uid, raw in fetched.data.items() if canary.verify_message(raw, self.settings.key, token)
        ]
        if not ours:
            if not fetched.data and not fetched.skipped:
                raise ProbeError(
                    "the canary vanished between SEARCH and FETCH (another session removed it)",
                    reason="canary_invalid",
                )
            raise ProbeError(
                "the canary arrived but did not verify (token or body altered)", reason="canary_invalid"
            )
        self.verified = fetched.data[ours[0]]
        failed: ProbeError | None = None
        failed_phase = None
        if self.device is not None and self.found_in is not None:
            # The second device watches the inbox: a canary filed elsewhere cannot be synced there. Said
            # so (the log line, mailcanary_roundtrip_sync_skipped{reason}), never silently.
            self.recorder.facts.sync_skipped = self.placement  # "junk" or "other": SYNC_SKIP_REASONS
        elif self.device is not None:
            try:
                await self._sync(token, ours[0])
            except ProbeError as exc:
                failed, failed_phase = exc, self.recorder.facts.current_phase
        with self.recorder.phase("receive_delete"):
            # After a failed sync check too (never leave it behind), and from the junk folder too.
            await (self.found_in or self.session).delete(ours[:1])
        if failed is not None:
            self.recorder.facts.current_phase = failed_phase  # the failed phase is the sync one
            raise failed

    async def close(self) -> None:
        task = self.device_seen
        if task is not None and not task.done():
            # Cancelled and waited for (asyncio.wait never swallows a cancellation of this very run):
            # its IDLE reader must be gone before the second session is closed, or LOGOUT would read the
            # stream beside it (issue 19: "readuntil() called while another coroutine is already
            # waiting"). A look that will not unwind in time has its session dropped instead.
            task.cancel()
            await asyncio.wait({task}, timeout=CLOSE_TIMEOUT)
            if not task.done() and self.device is not None:
                self.device.abort()
        if task is not None and task.done() and not task.cancelled():
            task.exception()  # retrieved: a failure of the second session is not "never awaited"
        try:
            if self.device is not None:
                await self.device.close()
            await self.session.close()
            if self.junk is not None:
                await self.junk.close()
            if self.other is not None:
                await self.other.close()
            if self.bounce_session is not None:
                await self.bounce_session.close()
        finally:
            await self._aux_slots.aclose()
