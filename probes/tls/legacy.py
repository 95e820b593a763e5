"""Legacy TLS answers (does the server still take TLS 1.0 / 1.1?) remembered per endpoint.

The answer changes when the server's TLS configuration changes, which in practice comes with a new
certificate or a deliberate change, not between two runs a minute apart; re-testing costs two extra
sessions (two more login processes on Dovecot) per run. So an endpoint is re-tested when its answer is
older than ``every`` seconds, when the leaf certificate it presents changed (or it presented none: then
nothing ties an old answer to the server of today), or when the last answer was incomplete (an attempt
that could not tell). The time of the answer is exported, so its age is visible.

Two runs that want the same endpoint's answer at once share one test (:meth:`LegacyCache.get`): a burst
of ``/probe`` scrapes of one target makes one pair of legacy handshakes, not one per request.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from probes.tls.flights import Flights

DEFAULT_RECHECK = 86400.0  # seconds
MAX_ENDPOINTS = 4096


@dataclass(frozen=True)
class LegacyAnswer:
    results: dict[str, bool | None]  # version name -> accepted
    fingerprint: str | None  # leaf certificate (sha256) at the time of the test
    checked_at: float  # unix time


class LegacyCache:
    """Bounded (LRU over endpoints); keys are whatever identifies one audited endpoint."""

    def __init__(self, clock: Callable[[], float] = time.time, max_entries: int = MAX_ENDPOINTS) -> None:
        self._answers: OrderedDict[tuple[str, ...], LegacyAnswer] = OrderedDict()
        self._flights: Flights[tuple[str, ...], LegacyAnswer] = Flights()
        self.clock = clock
        self.max_entries = max_entries

    def __len__(self) -> int:
        return len(self._answers)

    def fresh(self, key: tuple[str, ...], fingerprint: str | None, every: float) -> LegacyAnswer | None:
        """The remembered answer if it may be reused now, else None (test again)."""
        answer = self._answers.get(key)
        if answer is None or fingerprint is None:
            return None
        if answer.fingerprint != fingerprint or self.clock() - answer.checked_at >= every:
            return None
        self._answers.move_to_end(key)
        return answer

    def put(self, key: tuple[str, ...], results: dict[str, bool | None], fingerprint: str | None) -> float:
        """Remember a complete answer (one with an unknown, or tested without a certificate to tie it
        to, is not kept); returns its time."""
        now = self.clock()
        if fingerprint is None or any(v is None for v in results.values()):
            self._answers.pop(key, None)
            return now
        self._answers[key] = LegacyAnswer(dict(results), fingerprint, now)
        self._answers.move_to_end(key)
        while len(self._answers) > self.max_entries:
            self._answers.popitem(last=False)
        return now

    async def get(
        self,
        key: tuple[str, ...],
        fingerprint: str | None,
        every: float,
        run: Callable[[], Awaitable[dict[str, bool | None]]],
    ) -> tuple[LegacyAnswer, bool]:
        """(the answer, whether it was tested now): the remembered one if fresh, the one another run is
        testing now for the same certificate, else ``run()``'s, remembered. One test in flight per key;
        a run whose test was cut short or failed, or was made for another certificate, leaves its waiters
        to test for themselves (one of them at a time)."""
        while True:
            known = self.fresh(key, fingerprint, every)
            if known is not None:
                return known, False
            running = self._flights.running(key)
            if running is None:
                break
            await asyncio.wait([running])  # a waiter cut short leaves the test running for the others
            if not running.cancelled() and running.exception() is None:
                answer = running.result()
                if answer.fingerprint == fingerprint:
                    return answer, False

        async def test() -> LegacyAnswer:
            results = await run()
            return LegacyAnswer(dict(results), fingerprint, self.put(key, results, fingerprint))

        answer = await self._flights.lead(key, test)
        return answer, True
