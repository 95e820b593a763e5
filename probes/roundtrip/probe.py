"""The round trip: send a signed canary over SMTP, detect its arrival over IMAP or POP3, verify, delete.

Detection polls on a geometric schedule that starts dense (Postfix delivers in milliseconds, so the first
looks catch most canaries early) and thins out, so a slow delivery costs few commands while the timing
error stays a bounded fraction of the latency. Over IMAP, gaps long enough are spent in IDLE, so servers
that push at once are seen at once; a NOOP after each gap makes servers that batch IDLE pushes (Dovecot
waits ~0.5 s) look at the mailbox now. Canaries are found by their token, never by position or subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass, field, replace
from typing import TypeVar

from probes import canary
from probes.auth.credentials import Credentials
from probes.canary import Token
from probes.clients.imap import IMAPSession, IMAPSettings, QuotaMalformed
from probes.clients.pop3 import LOGIN_GATE, LoginGate, POP3Client, Refused, login_key, parse_login_delay
from probes.clients.smtp import SMTPSettings, send_message
from probes.errors import ProbeError, ProbeTimeout
from probes.receipt.dsn import MAX_BOUNCE_BYTES, parse_bounce, returned_token
from probes.receipt.placement import (
    MAX_MAILBOXES,
    ListedMailbox,
    Namespace,
    Placement,
    choose_junk,
    other_folders,
    parse_list,
)
from probes.receipt.received import Path as ReceivedPath
from probes.receipt.received import path_of
from probes.receipt.verdict import Preset, verdict_of
from probes.recorder import BounceEvent, Recorder
from probes.wire.framing import ReadLimits
from probes.wire.net import CLOSE_TIMEOUT, Endpoint
from probes.wire.slots import ServerSlots, maybe_session

K = TypeVar("K")
FETCH_CANDIDATES = 8  # messages carrying this run's nonce fetched at most (ours plus copies of it)


# Default cap on the gap between looks, per protocol: an IMAP look is one NOOP (plus IDLE in the gap),
# a POP3 look is a whole session (connect, TLS, login, UIDL), so POP3 looks less often.
DEFAULT_POLL_MAX = {"imap": 0.25, "pop3": 1.0}
DEFAULT_POLL_FACTOR = {"imap": 1.25, "pop3": 2.0}


@dataclass(frozen=True)
class PollSchedule:
    """Gaps between looks: ``initial``, growing by ``factor``, capped at ``maximum`` (seconds)."""

    initial: float = 0.05
    factor: float = DEFAULT_POLL_FACTOR["imap"]
    maximum: float = DEFAULT_POLL_MAX["imap"]

    def gaps(self) -> Iterator[float]:
        gap = self.initial
        while True:
            yield gap
            gap = min(gap * self.factor, self.maximum)


@dataclass(frozen=True)
class POP3Settings:
    endpoint: Endpoint
    credentials: Credentials
    allow_plaintext_auth: bool = False
    timeout: float = 10.0  # per command
    limits: ReadLimits = field(default_factory=ReadLimits)
    # The whole run's time (the runner's deadline), so that a look the server's LOGIN-DELAY would put
    # past it is not attempted; None: unknown (looks then wait for the delay, the caller's deadline cuts).
    run_timeout: float | None = None
    gate: LoginGate = field(default=LOGIN_GATE, compare=False, repr=False)  # last logins, per process


@dataclass(frozen=True)
class SyncSettings:
    """The multi-device check (IMAP): a second session, the "other device", stays selected on the
    mailbox; once the first session has verified the canary it sets ``flag`` on it (ours only, never a
    user's message), and the second must see the flag within ``timeout`` seconds."""

    flag: str = "$MailcanarySynced"
    timeout: float = 30.0


# Why the sync check did not run on a delivered canary: where it was found instead of the inbox the second
# device watches (mailcanary_roundtrip_sync_skipped{reason}).
SYNC_SKIP_REASONS = ("junk", "other")


@dataclass(frozen=True)
class RoundTripSettings:
    name: str
    smtp: SMTPSettings
    receiver: IMAPSettings | POP3Settings
    sender: str
    recipient: str
    key: bytes = field(repr=False)
    poll: PollSchedule = PollSchedule()
    idle_min_gap: float = 0.2  # shorter gaps are slept, not IDLEd: IDLE + DONE costs more than it saves
    search_every: float = 5.0  # search even without an EXISTS this often (servers that announce nothing)
    sweep_after: float = 3600.0  # our own canaries older than this are deleted when seen
    # IMAP only: also watch the junk folder (SPECIAL-USE \\Junk, else the first of these names that
    # exists); None: the inbox only.
    junk_folders: tuple[str, ...] | None = None
    # IMAP only: also look in up to this many other folders (0: none). Each look at them is one
    # SELECT + SEARCH per folder, done every search_every, in a session of its own.
    other_folders: int = 0
    # Bounces (IMAP): watch the receive session's mailbox (the sender's, when sender = recipient) or a
    # mailbox of its own (bounce_receiver) for DSNs and bounces about our canary.
    bounces_here: bool = False
    bounce_receiver: IMAPSettings | None = None
    # Verdict: Authentication-Results only from these authserv-ids (none: no verdict); spam scores
    # from the receiver's spam headers.
    trusted_authserv_ids: frozenset[str] = frozenset()
    # A provider that breaks RFC 8601 (probes.receipt.verdict.Preset), set only by the operator.
    verdict_preset: Preset = "none"
    spam_headers: bool = True
    slots: ServerSlots | None = field(default=None, compare=False, repr=False)  # per-server session limits
    sync: SyncSettings | None = None  # IMAP only: the second-device check


@dataclass
class RoundTripResult:
    token: Token
    delivery_seconds: float
    swept: list[Token] = field(default_factory=list)  # earlier canaries of this probe deleted this run
    placement: Placement = "inbox"  # where the receiver filed it (POP3 sees the inbox only)
    bounces: list[BounceEvent] = field(default_factory=list)  # delay notices etc. seen this run
    path: ReceivedPath | None = None  # from the canary's Received chain


async def probe_roundtrip(
    settings: RoundTripSettings, recorder: Recorder, late: Collection[str] = ()
) -> RoundTripResult:
    """Run one round trip. ``late`` holds nonces of earlier canaries that timed out: seen, they are
    deleted whatever their age (and reported in ``swept`` so the caller can count them late).

    ``recorder.facts.token`` is set before the canary is sent and ``recorder.facts.accepted`` once
    the SMTP server took it, so a caller whose deadline cancels the wait knows which canary is in flight.
    """
    receiver: _Receiver
    if isinstance(settings.receiver, IMAPSettings):
        receiver = _IMAPReceiver(settings, recorder)
    else:
        receiver = _POP3Receiver(settings, recorder)
    service = "imap" if isinstance(settings.receiver, IMAPSettings) else "pop3"
    # With the sync check an IMAP run holds two sessions: both slots are taken at once (one by one, runs
    # could each hold one and wait for another forever).
    # So are the junk folder's and the all-folders walk's sessions, and a bounce mailbox on the same server.
    sessions = 1
    if service == "imap":
        sessions += settings.sync is not None
        sessions += settings.junk_folders is not None
        sessions += settings.other_folders > 0
        br = settings.bounce_receiver
        sessions += br is not None and br.endpoint == settings.receiver.endpoint
    with recorder.masked_errors():
        # The receiving side's slot is held for the whole run (its session, or POP3's looks, one at a
        # time); the SMTP slot only while sending (see _run).
        async with maybe_session(settings.slots, settings.receiver.endpoint, service, recorder, sessions):
            try:
                return await _run(settings, recorder, receiver, late)
            finally:
                await receiver.close()


async def _run(
    settings: RoundTripSettings, recorder: Recorder, receiver: _Receiver, late: Collection[str]
) -> RoundTripResult:
    swept = await receiver.open_and_sweep(set(late))
    recorder.facts.swept = swept
    await receiver.open_device()
    token = canary.new_token(settings.name)
    message = canary.build_message(token, settings.key, settings.sender, settings.recipient)
    recorder.facts.token = token
    async with maybe_session(settings.slots, settings.smtp.endpoint, "smtp", recorder):
        await recorder.canary("sending", token)
        sent = await send_message(settings.smtp, settings.sender, [settings.recipient], message, recorder)
    recorder.facts.accepted = True  # from here on the canary is on its way: it may turn up late
    await recorder.canary("accepted", token)
    recorder.facts.smtp_tls_version = sent.tls_version
    commands_before = recorder.commands
    receiver.watch(token, sent.accepted_at)
    with recorder.phase("receive_wait"):
        seen_at = await receiver.wait(token, sent.accepted_at)
    recorder.facts.seen, recorder.facts.seen_at, recorder.facts.accepted_at = True, seen_at, sent.accepted_at
    delivery = seen_at - sent.accepted_at
    recorder.set_phase("receive_wait", delivery)
    recorder.facts.wait_commands = recorder.commands - commands_before
    await receiver.fetch_verify_delete(token)
    placement = receiver.placement
    recorder.facts.placement = placement
    raw = receiver.verified
    path = path_of(raw) if raw is not None else None
    if raw is not None and path is not None:
        recorder.facts.path = path
        if path.sender_ip is not None:
            recorder.facts.sender_ip = path.sender_ip  # for a blocklist check, and the log
        verdict = verdict_of(
            raw, settings.trusted_authserv_ids, settings.spam_headers, settings.verdict_preset
        )
        recorder.facts.verdict = verdict
        first = path.hops[0].timestamp if path.hops else None
        if first is not None:  # the first server's clock against ours (1 s resolution): skew shown
            recorder.facts.clock_offset = round(first - token.sent, 3)
    return RoundTripResult(
        token=token,
        delivery_seconds=delivery,
        swept=swept,
        placement=placement,
        bounces=list(recorder.facts.bounces or ()),
        path=path,
    )


class _Receiver:
    def __init__(self, settings: RoundTripSettings, recorder: Recorder) -> None:
        self.settings = settings
        self.recorder = recorder
        self.placement: Placement = "inbox"
        self.verified: bytes | None = None  # the canary as received (with the receiver's headers)

    async def open_and_sweep(self, late: set[str]) -> list[Token]:
        raise NotImplementedError

    async def open_device(self) -> None:
        """Open the second device's session (the sync check), if there is one."""

    def watch(self, token: Token, accepted_at: float) -> None:
        """Let the second device look for ``token`` while the first waits for it."""

    async def wait(self, token: Token, since: float) -> float:
        raise NotImplementedError

    async def fetch_verify_delete(self, token: Token) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    def _stale(self, found: dict[K, Token], late: set[str]) -> dict[K, Token]:
        """Which of our earlier canaries to delete: known-late ones at once, others once old enough."""
        cutoff_ms = (time.time() - self.settings.sweep_after) * 1000
        return {ref: t for ref, t in found.items() if t.nonce in late or t.sent_ms < cutoff_ms}


class _IMAPReceiver(_Receiver):
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
        self.bounce: _BounceWatch | None = None
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
            self.bounce = _BounceWatch(self.bounce_session, aux, st, self.recorder)
        elif st.bounces_here:
            self.bounce = _BounceWatch(self.session, self.recorder, st, self.recorder)

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
            _count_skipped(self.recorder, len(heads.skipped) + len(maybe_stale) - len(found))
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
        s, rec = self.session, self.recorder
        use_idle = self._idles(s)
        last_search = rec.clock()
        for gap in self.settings.poll.gaps():
            announced = await self._pause(s, gap, use_idle)
            junk_announced = False
            if self.junk is not None:
                junk_announced = await self.junk.noop()
                self._count_junk_commands()
            seen = rec.clock()
            due = seen - last_search >= self.settings.search_every
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
                own = self.bounce_session is not None
                bounce_announced = await self.bounce.session.noop() if own else announced
                if bounce_announced or due:
                    await self.bounce.look(token)  # raises "bounced" on a permanent failure
                self._count_junk_commands()
            if due:
                last_search = seen
        raise AssertionError("unreachable: the schedule is endless")  # pragma: no cover

    def _idles(self, s: IMAPSession) -> bool:
        receiver = self.settings.receiver
        return isinstance(receiver, IMAPSettings) and receiver.use_idle and "IDLE" in s.capabilities

    async def _pause(self, s: IMAPSession, gap: float, use_idle: bool) -> bool:
        """One poll gap on ``s`` (in IDLE when allowed and long enough, else asleep), then NOOP unless IDLE
        was told already: whether the server announced anything."""
        if use_idle and gap >= self.settings.idle_min_gap:
            return await s.idle(gap) or await s.noop()
        await asyncio.sleep(gap)
        return await s.noop()

    def _count_junk_commands(self) -> None:
        """Commands of the second and third session count as the run's (wait_commands)."""
        bounce = self.bounce.recorder if self.bounce is not None and self.bounce_session else None
        for aux in (self.junk_recorder, self.other_recorder, bounce):
            if aux is not None:
                self.recorder.commands += aux.commands
                aux.commands = 0

    async def _look(self, s: IMAPSession, token: Token, flag: str | None = None) -> tuple[float, list[int]]:
        """Poll ``s`` until ``token`` (with ``flag``, if given) shows: (when, UIDs). With a flag every
        look searches (a flag change announces no EXISTS)."""
        rec = self.recorder
        use_idle = self._idles(s)
        last_search = rec.clock()
        for gap in self.settings.poll.gaps():
            announced = await self._pause(s, gap, use_idle)
            seen = rec.clock()
            if announced or flag is not None or seen - last_search >= self.settings.search_every:
                last_search = seen
                uids = await s.search_header(canary.HEADER, token.nonce, flag=flag)
                if uids:
                    return seen, uids
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


class _BounceWatch:
    """Finds bounces about our canaries in one IMAP mailbox: ``UID SEARCH UID n:* TEXT`` for the probe's
    token key among mail that arrived since the run began (a DSN carries the token only inside), then
    each candidate fetched (at most MAX_BOUNCE_BYTES) and parsed. A message that carries our token at
    the top is a canary, never a bounce; a bounce counts only if the canary headers it returns verify
    (probes.receipt.dsn). Verified bounces are deleted (they are about our canary and nothing else); a
    permanent failure of this run's canary ends the run with reason ``bounced``."""

    MAX_LOOKED = 1000  # UIDs remembered as looked at (not bounces, or handled): bounded
    FETCH_AT_ONCE = 8
    LOOK_BACK = 50  # UIDs before the run's start looked at too

    def __init__(
        self, session: IMAPSession, recorder: Recorder, settings: RoundTripSettings, run: Recorder
    ) -> None:
        self.session, self.recorder, self.settings, self.run = session, recorder, settings, run
        # From a few UIDs back: a bounce that arrived between two runs is still seen (and deleted).
        self.since = None if session.uidnext is None else max(1, session.uidnext - self.LOOK_BACK)
        self.looked: set[int] = set()
        if self.since is None:  # pragma: no cover - RFC 3501 requires UIDNEXT in SELECT
            run.facts.bounce_watch = "off: the server sent no UIDNEXT"

    async def look(self, token: Token) -> None:
        if self.since is None:
            return
        name = self.settings.name
        uids = await self.session.search_text(canary.probe_search_key(name), self.since)
        fresh = [u for u in uids if u not in self.looked][: self.FETCH_AT_ONCE]
        if not fresh:
            return
        if len(self.looked) < self.MAX_LOOKED:
            self.looked.update(fresh)
        else:  # never grows past the bound: from here on, look only past the highest UID seen
            self.since = max(fresh) + 1
        # Sizes first (with a small header item): a big message that merely quotes our key is never
        # fetched whole, so it can neither pass a read cap nor cost memory.
        sized = await self.session.fetch(
            fresh, "BODY.PEEK[HEADER.FIELDS (Content-Type)]", cap=self.session.settings.limits.max_header
        )
        cap = min(MAX_BOUNCE_BYTES, self.session.settings.limits.max_message)
        small = [u for u in fresh if sized.sizes.get(u, cap + 1) <= cap]
        fetched = await self.session.fetch(small, "BODY.PEEK[]", cap=cap)
        ours: list[int] = []
        permanent: BounceEvent | None = None
        for uid, raw in sorted(fetched.data.items()):
            bounce = parse_bounce(raw)
            if bounce is None:
                continue  # our canary (a late one, or this run's), or mail that merely quotes the key
            tok = returned_token(bounce, self.settings.key, name)
            if tok is None:
                _count_skipped(self.run, 1)
                continue
            ours.append(uid)
            event: BounceEvent = {
                "action": bounce.action,
                "status": bounce.status,
                "class": bounce.status_class,
                "kind": bounce.kind,
                "this_run": tok.nonce == token.nonce,
            }
            if bounce.diagnostic:
                event["diagnostic"] = bounce.diagnostic
            if self.run.facts.bounces is None:
                self.run.facts.bounces = []
            events = self.run.facts.bounces
            if len(events) < 20:
                events.append(event)
            if tok.nonce == token.nonce and bounce.permanent and permanent is None:
                permanent = event
        if ours:
            with self.recorder.phase("bounce_delete"):
                await self.session.delete(ours)
        if permanent is not None:
            self.run.facts.bounced = True
            status = permanent["status"] or "no status code"
            detail = f": {permanent['diagnostic']}" if permanent.get("diagnostic") else ""
            raise ProbeError(f"the canary bounced ({status}){detail}", reason="bounced")


def _count_skipped(recorder: Recorder, n: int) -> None:
    """Foreign messages that carried something like our token but did not verify (or could not be read)."""
    if n > 0:
        recorder.facts.foreign_skipped += n


MAX_REFUSED = 64  # messages a look could not read (-ERR) remembered per run, to look at again


class _POP3Receiver(_Receiver):
    """POP3 shows a snapshot per session (RFC 1939), so each look is a fresh session; UIDL keeps it cheap.

    Foreign mail is read as little as possible and never allowed to fail a run: a message gone since
    UIDL (another session deleted it), too big to be a canary, or with a line over the limit is skipped,
    counted and remembered. A message that a look could not read (``-ERR``) and that a later session
    still lists did not vanish: the server fails to serve it, ``receive_protocol`` (it may be the canary).

    LOGIN-DELAY (RFC 2449 section 6.5): no login comes sooner than the server allows (:class:`LoginGate`,
    shared by every run of the process). With a delay announced, a run logs in only to look: the sweep
    of earlier canaries rides along with each look, and the last look that fits in the run's time is
    made as late as it can be, so a slow delivery still counts.
    """

    def __init__(self, settings: RoundTripSettings, recorder: Recorder) -> None:
        super().__init__(settings, recorder)
        assert isinstance(settings.receiver, POP3Settings)
        self.pop = settings.receiver
        self.limits = settings.receiver.limits
        self.gate = self.pop.gate
        self.key = login_key(self.pop.endpoint, self.pop.credentials.username)
        self.started = time.monotonic()
        self.known: set[str] = set()  # UIDLs already looked at (not the canary)
        self.client: POP3Client | None = None
        self.number: int | None = None
        self.uid: str | None = None  # the canary's UIDL, once seen
        self.late: set[str] = set()
        self.swept: list[Token] = []  # the same list is the run's "swept" fact: looks may add to it
        self.pending: list[Token] = []  # stale canaries marked for deletion, committed at QUIT
        self.once = False  # one login per look, the sweep riding along (a LOGIN-DELAY is announced)
        self.per_user = False  # LOGIN-DELAY ... USER: ask CAPA again once logged in
        self.refused: dict[str, str] = {}  # UIDL -> the -ERR of the look that could not read it
        self.again: list[str] = []  # the same, refused again by a later session while still listed
        self.looks = 0

    @property
    def _canary_cap(self) -> int:
        return min(self.limits.max_message, canary.MAX_CANARY_BYTES)

    # --- LOGIN-DELAY -------------------------------------------------------------------------------

    def _delay(self) -> int:
        return self.gate.delay(self.key) or 0

    def _learn(self, caps: dict[str, list[str]], *, after_login: bool = False) -> None:
        """Note the LOGIN-DELAY of this CAPA answer (none announced: 0); no CAPA at all teaches nothing,
        nor does a CAPA after login without the value (the one announced before login stands)."""
        parsed = parse_login_delay(caps)
        if not caps or (after_login and parsed is None):
            return
        seconds, self.per_user = parsed if parsed is not None else (0, False)
        self.gate.learn(self.key, seconds)
        self.recorder.facts.login_delay = seconds

    def _deadline(self) -> float | None:
        t = self.pop.run_timeout
        return None if t is None else self.started + t

    def _reserve(self) -> float:
        """Time kept for the last look's session (connect, login, UIDL, TOP, RETR, DELE, QUIT)."""
        t = self.pop.run_timeout
        return 0.0 if t is None else min(self.pop.timeout, t / 5)

    def _too_late(self, wait: float) -> str:
        return (
            f"the server's LOGIN-DELAY of {self._delay()}s allows the next login in {wait:.1f}s, "
            f"too late for this run's timeout of {self.pop.run_timeout:g}s"
        )

    async def _until_login_allowed(self) -> None:
        """Sleep until the server's LOGIN-DELAY allows a login; if that is past the run's time, say so."""
        wait = self.gate.allowed_at(self.key) - time.monotonic()
        if wait <= 0:
            return
        deadline = self._deadline()
        if deadline is not None and time.monotonic() + wait > deadline - self._reserve():
            raise ProbeError(self._too_late(wait), reason="receive_login_delay")
        await asyncio.sleep(wait)

    async def _next_look(self, gap: float) -> None:
        """Sleep ``gap``, or longer if the delay asks; the last look that fits is made as late as it can be.

        No look left before the run's time is up: ``receive_login_delay`` if none was made at all, else
        ``timeout`` (the canary was not there when we could last look), both saying why."""
        delay = self._delay()
        if not delay:
            await asyncio.sleep(gap)
            return
        now = time.monotonic()
        at = max(now + gap, self.gate.allowed_at(self.key))
        deadline = self._deadline()
        if deadline is not None:
            limit = deadline - self._reserve()
            if at > limit:
                wait = at - now
                if self.looks == 0:
                    raise ProbeError(self._too_late(wait), reason="receive_login_delay")
                refused = f"; not readable: {next(iter(self.refused.values()))}" if self.refused else ""
                raise ProbeTimeout(
                    f"the canary was not seen in {self.looks} look(s); {self._too_late(wait)}{refused}"
                )
            if at + delay + self.gate.MARGIN > limit:
                at = limit
        await asyncio.sleep(max(0.0, at - time.monotonic()))

    # --- sessions ----------------------------------------------------------------------------------

    async def _connect(self, recorder: Recorder, prefix: str) -> POP3Client:
        client = await POP3Client.connect(
            self.pop.endpoint,
            recorder,
            phase_prefix=prefix,
            timeout=self.pop.timeout,
            max_line=self.limits.max_line,
            max_response=self.limits.max_reply,
        )
        self._learn(client.capabilities)
        return client

    async def _login(self, client: POP3Client, recorder: Recorder, prefix: str) -> None:
        self.gate.note_login(self.key)
        with recorder.phase(f"{prefix}_login"):
            await client.login(self.pop.credentials, allow_plaintext=self.pop.allow_plaintext_auth)
            if self.per_user:  # RFC 2449: the value for this user comes after authentication
                self._learn(await client.capa(), after_login=True)

    async def _session(self, recorder: Recorder, prefix: str) -> POP3Client:
        await self._until_login_allowed()
        client = await self._connect(recorder, prefix)
        try:
            await self._login(client, recorder, prefix)
        except BaseException:
            await client.close()
            raise
        return client

    def _poll_recorder(self) -> Recorder:
        """Polls must not overwrite the first session's connect/login timings."""
        rec = self.recorder
        return Recorder(masker=rec.masker, transcript=rec.transcript, clock=rec.clock)

    async def _quit(self, client: POP3Client, *, deleting: bool = False) -> None:
        """QUIT, which commits the deletions marked in this session (``deleting``: the canary's too);
        stale canaries count as swept only then."""
        await client.quit(err_reason="cleanup" if self.pending or deleting else "receive_protocol")
        self.swept.extend(self.pending)
        self.pending.clear()

    # --- reading -----------------------------------------------------------------------------------

    async def _heads(
        self, client: POP3Client, skip: set[str], *, strict: bool = False
    ) -> AsyncIterator[tuple[int, str, bytes]]:
        """``(number, uidl, header block)`` of each readable message not in ``skip``.

        ``strict`` (the looks after the canary was sent): a message the server refuses (``-ERR``) is
        remembered; refused again by this later session while still listed, it goes to ``again``."""
        listing = await client.uidl()
        if strict:
            listed = set(listing.values())
            for uid in [u for u in self.refused if u not in listed]:
                del self.refused[uid]  # vanished since its -ERR: another session removed it
        fresh = {n: u for n, u in listing.items() if u not in skip}
        if not fresh:
            return
        sizes = await client.list()
        for number, uid in fresh.items():
            size = sizes.get(number)
            if size is None or size > self._canary_cap:  # gone, or too big to be ours: never read
                self.known.add(uid)
                continue
            try:
                head = await client.top_or_none(number, self.limits.max_header, refused_raises=strict)
            except Refused as exc:
                if uid in self.refused:
                    self.again.append(f"message {number} (UIDL {uid[:70]!r}): {exc.message}")
                elif len(self.refused) < MAX_REFUSED:
                    self.refused[uid] = exc.message
                else:  # bounded: beyond that, as lenient as for foreign mail
                    _count_skipped(self.recorder, 1)
                    self.known.add(uid)
                continue
            if head is None:
                _count_skipped(self.recorder, 1)
                self.known.add(uid)
                continue
            yield number, uid, head

    async def _stale_one(self, client: POP3Client, number: int, uid: str, head: bytes) -> Token | None:
        """An earlier canary of ours to delete (verified as a whole), or None; others are remembered."""
        name = self.settings.name
        hints = canary.candidates(head, name)
        if len(hints) != 1 or not self._stale({0: next(iter(hints))}, self.late):
            if not hints:
                self.known.add(uid)
            return None
        # TOP with enough lines for a whole canary: RETR would flag a foreign message \Seen.
        raw = await client.top_or_none(number, self._canary_cap, canary.BODY_LINES_MAX)
        tok = canary.verify_canary(raw, self.settings.key, name) if raw is not None else None
        if tok is None:
            _count_skipped(self.recorder, 1)
            self.known.add(uid)
            return None
        return tok if self._stale({0: tok}, self.late) else None

    async def open_and_sweep(self, late: set[str]) -> list[Token]:
        self.late = late
        self.started = time.monotonic()  # the run's clock starts once its session slot is held
        if self._delay() > 0:  # learnt by an earlier run: no login now, the looks sweep
            self._one_login_per_look()
            return self.swept
        client = await self._connect(self.recorder, "receive")
        try:
            if self._delay() > 0:  # announced in this very CAPA, before any login
                await client.quit()
                self._one_login_per_look()
                return self.swept
            await self._until_login_allowed()
            await self._login(client, self.recorder, "receive")
            with self.recorder.phase("receive_sweep"):
                stale: dict[int, Token] = {}
                async for number, uid, head in self._heads(client, set()):
                    tok = await self._stale_one(client, number, uid, head)
                    if tok is not None:
                        stale[number] = tok
                for number, tok in stale.items():
                    await client.dele(number, err_reason="cleanup")
                    self.pending.append(tok)
                await self._quit(client)
        finally:
            await client.close()
        return self.swept

    def _one_login_per_look(self) -> None:
        """With a LOGIN-DELAY a run logs in only to look. If not even one look fits in the run's time,
        fail now, before a canary is sent (it would stay behind until a later run swept it)."""
        self.once = True
        self.recorder.facts.login_delay = self._delay()
        wait = self.gate.allowed_at(self.key) - time.monotonic()
        deadline = self._deadline()
        if wait > 0 and deadline is not None and time.monotonic() + wait > deadline - self._reserve():
            raise ProbeError(self._too_late(wait), reason="receive_login_delay")

    async def wait(self, token: Token, since: float) -> float:
        rec = self.recorder
        for gap in self.settings.poll.gaps():
            await self._next_look(gap)
            poll_rec = self._poll_recorder()
            self.looks += 1
            client = await self._session(poll_rec, "poll")
            keep = False
            try:
                stale: dict[int, Token] = {}
                async for number, uid, head in self._heads(client, self.known, strict=True):
                    if token in canary.candidates(head, token.probe):
                        seen = rec.clock()
                        await self._mark(client, stale)
                        self.client, self.number, self.uid, keep = client, number, uid, True
                        return seen
                    if self.once and (tok := await self._stale_one(client, number, uid, head)):
                        stale[number] = tok
                    self.known.add(uid)
                if self.again:
                    raise ProbeError(
                        "the server failed to serve a message that is still listed after its -ERR in an "
                        f"earlier session (it may be the canary): {self.again[0]}",
                        reason="receive_protocol",
                    )
                await self._mark(client, stale)
                await self._quit(client)
            finally:
                rec.commands += poll_rec.commands
                rec.tls.update(poll_rec.tls)  # with a LOGIN-DELAY the looks are the only sessions
                if not keep:
                    await client.close()
        raise AssertionError("unreachable: the schedule is endless")  # pragma: no cover

    async def _mark(self, client: POP3Client, stale: dict[int, Token]) -> None:
        for number, tok in stale.items():
            await client.dele(number, err_reason="cleanup")
            self.pending.append(tok)

    async def fetch_verify_delete(self, token: Token) -> None:
        assert self.client is not None and self.number is not None
        with self.recorder.phase("receive_fetch"):
            try:
                body = await self.client.retr_or_none(self.number, self._canary_cap, refused_raises=True)
            except Refused as exc:
                body = await self._fetch_again(exc)
        if body is None or not canary.verify_message(body, self.settings.key, token):
            raise ProbeError(
                "the canary arrived but did not verify (token or body altered)", reason="canary_invalid"
            )
        self.verified = body
        with self.recorder.phase("receive_delete"):
            assert self.client is not None and self.number is not None
            await self.client.dele(self.number, err_reason="cleanup")
            await self._quit(self.client, deleting=True)

    async def _fetch_again(self, refused: Refused) -> bytes | None:
        """RETR of the canary refused: gone (another session removed it) or the server failing? A new
        session tells: still listed and refused again is the server's failure, never tampering."""
        assert self.client is not None and self.uid is not None
        await self._quit(self.client)  # commits the sweep's deletions (none of the canary)
        await self.client.close()
        self.client = None
        poll_rec = self._poll_recorder()
        try:
            try:
                self.client = await self._session(poll_rec, "poll")
            except ProbeError as exc:
                if exc.reason != "receive_login_delay":
                    raise
                raise ProbeError(
                    f"{refused.message}; no second session to tell a vanished canary from a server "
                    f"failure: {exc.message}",
                    reason="receive_protocol",
                ) from None
            number = next((n for n, u in (await self.client.uidl()).items() if u == self.uid), None)
            if number is None:
                raise ProbeError(
                    "the canary vanished between TOP and RETR (another session removed it)",
                    reason="canary_invalid",
                )
            self.number = number
            try:
                return await self.client.retr_or_none(number, self._canary_cap, refused_raises=True)
            except Refused as again:
                raise ProbeError(
                    "the server failed to serve the canary, still listed after its -ERR in an earlier "
                    f"session: {again.message}",
                    reason="receive_protocol",
                ) from None
        finally:
            self.recorder.commands += poll_rec.commands
            self.recorder.tls.update(poll_rec.tls)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
