"""The POP3 receiving side: a session per look (POP3 shows a snapshot per session), LOGIN-DELAY honoured."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from probes import canary
from probes.canary import Token
from probes.clients.pop3 import POP3Client, Refused, login_key, parse_login_delay
from probes.errors import ProbeError, ProbeTimeout
from probes.recorder import Recorder
from probes.roundtrip.receiver import Receiver, count_skipped
from probes.roundtrip.receiver import looks as _looks
from probes.roundtrip.settings import POP3Settings, RoundTripSettings

MAX_REFUSED = 64  # messages a look could not read (-ERR) remembered per run, to look at again


class POP3Receiver(Receiver):
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
                    count_skipped(self.recorder, 1)
                    self.known.add(uid)
                continue
            if head is None:
                count_skipped(self.recorder, 1)
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
            count_skipped(self.recorder, 1)
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
        """The first look right after DATA was accepted, then one after each gap (or later, as the
        server's LOGIN-DELAY asks); each look is a session of its own, so its schedule is sparser."""
        rec = self.recorder
        for gap in _looks(self.settings):
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
