"""The round trip: send a signed canary over SMTP, detect its arrival over IMAP or POP3, verify, delete.

Detection polls on a geometric schedule that starts dense (Postfix delivers in milliseconds, so the first
looks catch most canaries early) and thins out, so a slow delivery costs few commands while the timing
error stays a bounded fraction of the latency. Over IMAP, gaps long enough are spent in IDLE, so servers
that push at once are seen at once; a NOOP after each gap makes servers that batch IDLE pushes (Dovecot
waits ~0.5 s) look at the mailbox now. Canaries are found by their token, never by position or subject.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from . import canary
from ._framing import ReadLimits
from ._net import Credentials, Endpoint
from ._slots import ServerSlots, maybe_session
from .canary import Token
from .errors import ProbeError, ProbeTimeout
from .imap import IMAPSession, IMAPSettings, QuotaMalformed
from .pop3 import POP3Client
from .recorder import Recorder
from .smtp import SMTPSettings, send_message

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


@dataclass(frozen=True)
class SyncSettings:
    """The multi-device check (IMAP): a second session, the "other device", stays selected on the
    mailbox; once the first session has verified the canary it sets ``flag`` on it (ours only, never a
    user's message), and the second must see the flag within ``timeout`` seconds."""

    flag: str = "$MailcanarySynced"
    timeout: float = 30.0


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
    slots: ServerSlots | None = field(default=None, compare=False, repr=False)  # per-server session limits
    sync: SyncSettings | None = None  # IMAP only: the second-device check


@dataclass
class RoundTripResult:
    token: Token
    delivery_seconds: float
    swept: list[Token] = field(default_factory=list)  # earlier canaries of this probe deleted this run


async def probe_roundtrip(
    settings: RoundTripSettings, recorder: Recorder, late: Collection[str] = ()
) -> RoundTripResult:
    """Run one round trip. ``late`` holds nonces of earlier canaries that timed out: seen, they are
    deleted whatever their age (and reported in ``swept`` so the caller can count them late).

    ``recorder.facts["token"]`` is set before the canary is sent and ``recorder.facts["accepted"]`` once
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
    sessions = 2 if service == "imap" and settings.sync is not None else 1
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
    recorder.facts["swept"] = swept
    await receiver.open_device()
    token = canary.new_token(settings.name)
    message = canary.build_message(token, settings.key, settings.sender, settings.recipient)
    recorder.facts["token"] = token
    async with maybe_session(settings.slots, settings.smtp.endpoint, "smtp", recorder):
        await recorder.canary("sending", token)
        sent = await send_message(settings.smtp, settings.sender, [settings.recipient], message, recorder)
    recorder.facts["accepted"] = True  # from here on the canary is on its way: it may turn up late
    await recorder.canary("accepted", token)
    recorder.facts["smtp_tls_version"] = sent.tls_version
    commands_before = recorder.commands
    receiver.watch(token, sent.accepted_at)
    with recorder.phase("receive_wait"):
        seen_at = await receiver.wait(token, sent.accepted_at)
    recorder.facts.update(seen=True, seen_at=seen_at, accepted_at=sent.accepted_at)
    delivery = seen_at - sent.accepted_at
    recorder.set_phase("receive_wait", delivery)
    recorder.facts["wait_commands"] = recorder.commands - commands_before
    await receiver.fetch_verify_delete(token)
    return RoundTripResult(token=token, delivery_seconds=delivery, swept=swept)


class _Receiver:
    def __init__(self, settings: RoundTripSettings, recorder: Recorder) -> None:
        self.settings = settings
        self.recorder = recorder

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

    async def open_and_sweep(self, late: set[str]) -> list[Token]:
        await self.session.open()
        s, name = self.session, self.settings.name
        with self.recorder.phase("receive_sweep"):
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
        await self._read_quota()
        return list(stale.values())

    async def _read_quota(self) -> None:
        """Quota of the canary mailbox before the canary goes out (a full mailbox is then shown even when
        it bounces the canary). A failed read is only noted (``facts["quota_error"]``, one of
        ``QUOTA_ERRORS``): the round trip goes on, in a fresh session if the old one had to be dropped."""
        s, rec = self.session, self.recorder
        assert isinstance(self.settings.receiver, IMAPSettings)
        if not self.settings.receiver.quota or "QUOTA" not in s.capabilities:
            return
        started = rec.clock()
        try:
            rec.facts["quota"] = await s.quota()
        except ProbeError as exc:
            refused = s.is_open and not isinstance(exc, QuotaMalformed)
            error = "timeout" if isinstance(exc, ProbeTimeout) else "refused" if refused else "protocol"
            rec.facts["quota_error"] = error
            rec.facts["quota_message"] = exc.message
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
        seen, uids = await self._look(self.session, token)
        self.uids = uids[-FETCH_CANDIDATES:]
        return seen

    async def _look(self, s: IMAPSession, token: Token, flag: str | None = None) -> tuple[float, list[int]]:
        """Poll ``s`` until ``token`` (with ``flag``, if given) shows: (when, UIDs). With a flag every
        look searches (a flag change announces no EXISTS)."""
        rec = self.recorder
        use_idle = (
            self.settings.receiver.use_idle if isinstance(self.settings.receiver, IMAPSettings) else False
        )
        use_idle = use_idle and "IDLE" in s.capabilities
        last_search = rec.clock()
        for gap in self.settings.poll.gaps():
            if use_idle and gap >= self.settings.idle_min_gap:
                pushed = await s.idle(gap)
                announced = pushed or await s.noop()
            else:
                await asyncio.sleep(gap)
                announced = await s.noop()
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
                    rec.facts["sync_arrival_seconds"] = arrived - self.accepted_at
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
        rec.facts["sync_seconds"] = max(0.0, seen - flagged)
        rec.set_phase("sync_wait", seen - flagged)

    async def fetch_verify_delete(self, token: Token) -> None:
        assert self.uids
        with self.recorder.phase("receive_fetch"):
            fetched = await self.session.fetch(self.uids, "BODY.PEEK[]", cap=self._canary_cap)
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
        failed: ProbeError | None = None
        failed_phase = None
        if self.device is not None:
            try:
                await self._sync(token, ours[0])
            except ProbeError as exc:
                failed, failed_phase = exc, self.recorder.facts.get("current_phase")
        with self.recorder.phase("receive_delete"):
            await self.session.delete(ours[:1])  # after a failed sync check too: never leave it behind
        if failed is not None:
            self.recorder.facts["current_phase"] = failed_phase  # the failed phase is the sync one
            raise failed

    async def close(self) -> None:
        task = self.device_seen
        if task is not None and not task.done():
            task.cancel()  # not awaited: that could swallow a cancellation of this very run
        elif task is not None and not task.cancelled():
            task.exception()  # retrieved: a failure of the second session is not "never awaited"
        if self.device is not None:
            await self.device.close()
        await self.session.close()


def _count_skipped(recorder: Recorder, n: int) -> None:
    """Foreign messages that carried something like our token but did not verify (or could not be read)."""
    if n > 0:
        recorder.facts["foreign_skipped"] = recorder.facts.get("foreign_skipped", 0) + n


class _POP3Receiver(_Receiver):
    """POP3 shows a snapshot per session, so each look is a fresh session; UIDL keeps it cheap.

    Foreign mail is read as little as possible and never allowed to fail a run: a message gone since
    UIDL (another session deleted it), too big to be a canary, or with a line over the limit is skipped,
    counted and remembered.
    """

    def __init__(self, settings: RoundTripSettings, recorder: Recorder) -> None:
        super().__init__(settings, recorder)
        assert isinstance(settings.receiver, POP3Settings)
        self.pop = settings.receiver
        self.limits = settings.receiver.limits
        self.known: set[str] = set()  # UIDLs already looked at (not the canary)
        self.client: POP3Client | None = None
        self.number: int | None = None
        self.body: bytes | None = None

    @property
    def _canary_cap(self) -> int:
        return min(self.limits.max_message, canary.MAX_CANARY_BYTES)

    async def _session(self, recorder: Recorder, prefix: str) -> POP3Client:
        client = await POP3Client.connect(
            self.pop.endpoint,
            recorder,
            phase_prefix=prefix,
            timeout=self.pop.timeout,
            max_line=self.limits.max_line,
            max_response=self.limits.max_reply,
        )
        try:
            with recorder.phase(f"{prefix}_login"):
                await client.login(self.pop.credentials, allow_plaintext=self.pop.allow_plaintext_auth)
        except BaseException:
            await client.close()
            raise
        return client

    async def _heads(self, client: POP3Client, skip: set[str]) -> AsyncIterator[tuple[int, str, bytes]]:
        """``(number, uidl, header block)`` of each readable message not in ``skip``."""
        listing = await client.uidl()
        fresh = {n: u for n, u in listing.items() if u not in skip}
        if not fresh:
            return
        sizes = await client.list()
        for number, uid in fresh.items():
            size = sizes.get(number)
            if size is None or size > self._canary_cap:  # gone, or too big to be ours: never read
                self.known.add(uid)
                continue
            head = await client.top_or_none(number, self.limits.max_header)
            if head is None:
                _count_skipped(self.recorder, 1)
                self.known.add(uid)
                continue
            yield number, uid, head

    async def open_and_sweep(self, late: set[str]) -> list[Token]:
        client = await self._session(self.recorder, "receive")
        name = self.settings.name
        try:
            with self.recorder.phase("receive_sweep"):
                found: dict[int, Token] = {}
                async for number, uid, head in self._heads(client, set()):
                    hints = canary.candidates(head, name)
                    if len(hints) != 1 or not self._stale({0: next(iter(hints))}, late):
                        if not hints:
                            self.known.add(uid)
                        continue
                    # TOP with enough lines for a whole canary: RETR would flag a foreign message \Seen.
                    raw = await client.top_or_none(number, self._canary_cap, canary.BODY_LINES_MAX)
                    tok = canary.verify_canary(raw, self.settings.key, name) if raw is not None else None
                    if tok is None:
                        _count_skipped(self.recorder, 1)
                        self.known.add(uid)
                    else:
                        found[number] = tok
                stale = self._stale(found, late)
                for number in stale:
                    await client.dele(number, err_reason="cleanup")
                await client.quit(err_reason="cleanup" if stale else "receive_protocol")  # commits
        finally:
            await client.close()
        return list(stale.values())

    async def wait(self, token: Token, since: float) -> float:
        rec = self.recorder
        for gap in self.settings.poll.gaps():
            await asyncio.sleep(gap)
            # Polls must not overwrite the first session's connect/login timings.
            poll_rec = Recorder(masker=rec.masker, transcript=rec.transcript, clock=rec.clock)
            client = await self._session(poll_rec, "poll")
            keep = False
            try:
                async for number, uid, head in self._heads(client, self.known):
                    if token in canary.candidates(head, token.probe):
                        seen = rec.clock()
                        self.client, self.number, keep = client, number, True
                        return seen
                    self.known.add(uid)
                await client.quit()
            finally:
                rec.commands += poll_rec.commands
                if not keep:
                    await client.close()
        raise AssertionError("unreachable: the schedule is endless")  # pragma: no cover

    async def fetch_verify_delete(self, token: Token) -> None:
        assert self.client is not None and self.number is not None
        with self.recorder.phase("receive_fetch"):
            body = await self.client.retr_or_none(self.number, self._canary_cap)
        if body is None or not canary.verify_message(body, self.settings.key, token):
            raise ProbeError(
                "the canary arrived but did not verify (token or body altered)", reason="canary_invalid"
            )
        with self.recorder.phase("receive_delete"):
            await self.client.dele(self.number, err_reason="cleanup")
            await self.client.quit(err_reason="cleanup")

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
