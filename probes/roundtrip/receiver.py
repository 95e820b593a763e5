"""What every receiving side of a round trip does (open and sweep, wait, fetch-verify-delete, close)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from typing import TypeVar

from probes.canary import Token
from probes.receipt.placement import (
    Placement,
)
from probes.recorder import Recorder
from probes.roundtrip.settings import RoundTripSettings

K = TypeVar("K")


class Receiver:
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


def count_skipped(recorder: Recorder, n: int) -> None:
    """Foreign messages that carried something like our token but did not verify (or could not be read)."""
    if n > 0:
        recorder.facts.foreign_skipped += n


class Pacer:
    """The in-flight command budget of one waiting loop (``MAX_WAIT_RATE``): by t seconds after
    ``since``, at most ``rate`` x max(t, 1 s) commands sent by its looks. A look that would exceed it (its
    cost estimated from the last look) waits until it fits, so any wait of a second or more averages at
    most ``rate`` commands per second, and a wait shorter than a second sends at most ``rate``. Only the
    loop's own looks count (the sync check's second session waits beside the first, on its own budget)."""

    def __init__(self, recorder: Recorder, since: float, rate: float) -> None:
        self.recorder, self.since, self.rate = recorder, since, rate
        self.mark = recorder.commands
        self.spent = 0
        self.cost = 1

    def earliest(self, gap: float) -> float:
        """Seconds from now until the next look may start: ``gap``, or longer if the budget asks."""
        wait = gap
        need = self.spent + self.cost
        if self.rate > 0 and need > self.rate:
            wait = max(wait, self.since + need / self.rate - self.recorder.clock())
        return max(0.0, wait)

    async def pause(self, gap: float) -> None:
        wait = self.earliest(gap)
        if wait > 0:
            await asyncio.sleep(wait)
        self.mark = self.recorder.commands

    def looked(self) -> None:
        """A look ended: its commands are spent, and the next look's estimate."""
        delta = self.recorder.commands - self.mark
        self.spent += delta
        self.cost = max(1, delta)
        self.mark = self.recorder.commands


def looks(settings: RoundTripSettings) -> Iterator[float]:
    """The gap before each look: none before the first (it comes right after DATA), then the schedule."""
    gaps = settings.poll.gaps()
    return itertools.chain([0.0], gaps) if settings.first_look else gaps
