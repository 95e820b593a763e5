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
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from . import canary
from ._net import Credentials, Endpoint
from ._slots import ServerSlots, maybe_session
from .canary import Token
from .errors import ProbeError
from .imap import IMAPSession, IMAPSettings
from .pop3 import POP3Client
from .recorder import Recorder
from .smtp import SMTPSettings, send_message

K = TypeVar("K")


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
    with recorder.masked_errors():
        # The receiving side's slot is held for the whole run (its session, or POP3's looks, one at a
        # time); the SMTP slot only while sending (see _run).
        async with maybe_session(settings.slots, settings.receiver.endpoint, service, recorder):
            try:
                return await _run(settings, recorder, receiver, late)
            finally:
                await receiver.close()


async def _run(
    settings: RoundTripSettings, recorder: Recorder, receiver: _Receiver, late: Collection[str]
) -> RoundTripResult:
    swept = await receiver.open_and_sweep(set(late))
    recorder.facts["swept"] = swept
    token = canary.new_token(settings.name)
    message = canary.build_message(token, settings.key, settings.sender, settings.recipient)
    recorder.facts["token"] = token
    async with maybe_session(settings.slots, settings.smtp.endpoint, "smtp", recorder):
        sent = await send_message(settings.smtp, settings.sender, [settings.recipient], message, recorder)
    recorder.facts["accepted"] = True  # from here on the canary is on its way: it may turn up late
    recorder.facts["smtp_tls_version"] = sent.tls_version
    commands_before = recorder.commands
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
        self.uid: int | None = None

    async def open_and_sweep(self, late: set[str]) -> list[Token]:
        await self.session.open()
        s = self.session
        with self.recorder.phase("receive_sweep"):
            # With UIDPLUS, canaries left flagged by an interrupted delete are finished off too; without
            # it, flagged ones are passed over (they cannot be expunged without touching user mail).
            uids = await s.search_header(
                canary.HEADER, canary.probe_search_key(self.settings.name), undeleted=not s.can_expunge_by_uid
            )
            heads = await s.fetch(uids, f"BODY.PEEK[HEADER.FIELDS ({canary.HEADER})]")
            found: dict[int, Token] = {}
            for uid, head in heads.items():
                tok = canary.find_token(head, self.settings.key, self.settings.name)
                if tok is not None:
                    found[uid] = tok
            stale = self._stale(found, late)
            await s.delete(stale)
        return list(stale.values())

    async def wait(self, token: Token, since: float) -> float:
        s, rec = self.session, self.recorder
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
            if announced or seen - last_search >= self.settings.search_every:
                last_search = seen
                uids = await s.search_header(canary.HEADER, token.nonce)
                if uids:
                    self.uid = max(uids)
                    return seen
        raise AssertionError("unreachable: the schedule is endless")  # pragma: no cover

    async def fetch_verify_delete(self, token: Token) -> None:
        assert self.uid is not None
        with self.recorder.phase("receive_fetch"):
            body = (await self.session.fetch([self.uid], "BODY.PEEK[]")).get(self.uid, b"")
        if not canary.verify_message(body, self.settings.key, token):
            raise ProbeError(
                "the canary arrived but did not verify (token or body altered)", reason="canary_invalid"
            )
        with self.recorder.phase("receive_delete"):
            await self.session.delete([self.uid])

    async def close(self) -> None:
        await self.session.close()


class _POP3Receiver(_Receiver):
    """POP3 shows a snapshot per session, so each look is a fresh session; UIDL keeps it cheap."""

    def __init__(self, settings: RoundTripSettings, recorder: Recorder) -> None:
        super().__init__(settings, recorder)
        assert isinstance(settings.receiver, POP3Settings)
        self.pop = settings.receiver
        self.known: set[str] = set()  # UIDLs already looked at (not the canary)
        self.client: POP3Client | None = None
        self.number: int | None = None

    async def _session(self, recorder: Recorder, prefix: str) -> POP3Client:
        client = await POP3Client.connect(
            self.pop.endpoint, recorder, phase_prefix=prefix, timeout=self.pop.timeout
        )
        try:
            with recorder.phase(f"{prefix}_login"):
                await client.login(self.pop.credentials, allow_plaintext=self.pop.allow_plaintext_auth)
        except BaseException:
            await client.close()
            raise
        return client

    async def open_and_sweep(self, late: set[str]) -> list[Token]:
        client = await self._session(self.recorder, "receive")
        try:
            with self.recorder.phase("receive_sweep"):
                found: dict[int, Token] = {}
                for number, uid in (await client.uidl()).items():
                    tok = canary.find_token(
                        await client.top(number, 0), self.settings.key, self.settings.name
                    )
                    if tok is None:
                        self.known.add(uid)
                    else:
                        found[number] = tok
                stale = self._stale(found, late)
                for number in stale:
                    await client.dele(number)
                await client.quit()  # commits the deletions
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
                for number, uid in (await client.uidl()).items():
                    if uid in self.known:
                        continue
                    head = await client.top(number, 0)
                    if canary.find_token(head, self.settings.key, token.probe) == token:
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
            body = await self.client.retr(self.number)
        if not canary.verify_message(body, self.settings.key, token):
            raise ProbeError(
                "the canary arrived but did not verify (token or body altered)", reason="canary_invalid"
            )
        with self.recorder.phase("receive_delete"):
            await self.client.dele(self.number)
            await self.client.quit()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
