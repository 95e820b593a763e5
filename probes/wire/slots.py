"""Per-server session limits: a monitor must never be the cause of the failures it reports.

A stock Dovecot runs at most 100 ``imap-login`` (and ``pop3-login``) processes, and with TLS a login
process proxies the whole session; Postfix runs at most 100 ``smtpd`` per service. Probes that open more
sessions than that at once make the server refuse them, and the monitor would then report the outage it
caused. So every session a probe opens first takes a slot in two pools:

- ``host:port`` (the endpoint: one Postfix service, one Dovecot listener), and
- ``host/service`` (the login service behind every port of a protocol: IMAP on 143 and 993 share
  ``imap-login``; SMTP on 25, 465 and 587 share the host's smtpd processes).

Waiting for a slot is its own phase (``queue``), never connect or TLS time; the runner's overall deadline
is moved on by the time spent waiting, and a run that gets no slot within ``queue_timeout`` fails with
reason ``queue_timeout``. Waiters are served first come, first served.

The limiter knows nothing of the daemon: the runner builds one, configures limits from the config and
hands it to the probes in their settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from probes.errors import ProbeError
from probes.recorder import Recorder
from probes.wire.net import Endpoint

DEFAULT_MAX_SESSIONS = 50  # per host:port and per host/service: half a stock Dovecot/Postfix process limit
DEFAULT_QUEUE_TIMEOUT = 30.0

# Set by whoever holds the overall deadline (the runner): called with +seconds when a wait for a slot
# starts and with -seconds (what was not waited) when it ends, so queueing never eats the deadline.
deadline_extender: contextvars.ContextVar[Callable[[float], None] | None] = contextvars.ContextVar(
    "mailcanary_deadline_extender", default=None
)


@dataclass
class _Pool:
    limit: int
    in_use: int = 0
    high_water: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    wants: dict[asyncio.Future[None], int] = field(default_factory=dict)  # waiter -> slots it waits for


class QueueTimeout(ProbeError):
    reason = "queue_timeout"


class ServerSlots:
    """Counting limiter with one FIFO pool per key; limits may change at any time (a reload)."""

    def __init__(
        self,
        default_limit: int = DEFAULT_MAX_SESSIONS,
        limits: Mapping[str, int] | None = None,
        queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
    ) -> None:
        self._pools: dict[str, _Pool] = {}
        self.known: set[str] | None = None  # None: keep every pool (a limiter used without a config)
        self.default_limit = default_limit
        self.limits: dict[str, int] = {}
        self.queue_timeout = queue_timeout
        self.configure(default_limit, limits or {}, queue_timeout)

    def configure(
        self,
        default_limit: int,
        limits: Mapping[str, int],
        queue_timeout: float,
        known: Iterable[str] | None = None,
    ) -> None:
        """New limits (a reload): a raised limit lets waiters in at once, a lowered one takes effect as
        sessions end (nothing running is cut). ``known``: the pools of configured servers, kept (with
        their high-water mark) while idle; any other pool (a /probe target) goes once idle."""
        self.default_limit, self.limits, self.queue_timeout = default_limit, dict(limits), queue_timeout
        if known is not None:
            self.known = set(known)
        for key in [k for k, p in self._pools.items() if p.in_use == 0 and not p.waiters]:
            del self._pools[key]  # bounded: pools of servers no longer configured go with the reload
        for key, pool in self._pools.items():
            pool.limit = self.limit_of(key)
            self._wake(pool)

    def limit_of(self, key: str) -> int:
        return max(1, self.limits.get(key, self.default_limit))

    @staticmethod
    def keys(endpoint: Endpoint, service: str) -> tuple[str, str]:
        """The two pools a session with ``endpoint`` speaking ``service`` (smtp, imap, pop3, tcp) takes."""
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        return endpoint.address, f"{host}/{service}"

    def in_use(self, key: str) -> int:
        pool = self._pools.get(key)
        return pool.in_use if pool else 0

    def high_water(self, key: str) -> int:
        """The most sessions ever held at once on ``key`` (tests and benchmarks read it)."""
        pool = self._pools.get(key)
        return pool.high_water if pool else 0

    def waiting(self, key: str) -> int:
        pool = self._pools.get(key)
        return sum(1 for f in pool.waiters if not f.done()) if pool else 0

    def _pool(self, key: str) -> _Pool:
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = _Pool(limit=self.limit_of(key))
        return pool

    def _take(self, pool: _Pool, n: int = 1) -> None:
        pool.in_use += n
        pool.high_water = max(pool.high_water, pool.in_use)

    def _wake(self, pool: _Pool) -> None:
        while pool.waiters:
            fut = pool.waiters[0]
            n = pool.wants.get(fut, 1)
            if not fut.done() and pool.in_use + min(n, pool.limit) > pool.limit:
                break  # first come, first served: a waiter for two slots is not overtaken
            pool.waiters.popleft()
            pool.wants.pop(fut, None)
            if not fut.done():
                self._take(pool, n)  # the slots are handed over: the waiter owns them from now
                fut.set_result(None)

    def _release(self, key: str, n: int = 1) -> None:
        pool = self._pools[key]
        pool.in_use -= n
        self._wake(pool)
        if pool.in_use == 0 and not pool.waiters and self.known is not None and key not in self.known:
            del self._pools[key]  # bounded: an idle pool of an unconfigured server (a /probe target)

    async def _acquire(self, key: str, n: int = 1) -> None:
        """``n`` slots at once (a run with two sessions on one server takes both together: taking them
        one by one could leave every run holding one and waiting for another). A pool whose limit is
        below ``n`` admits such a run alone (``in_use`` may then pass the limit by the difference)."""
        pool = self._pool(key)
        if pool.in_use + min(n, pool.limit) <= pool.limit and not pool.waiters:
            self._take(pool, n)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pool.waiters.append(fut)
        if n != 1:
            pool.wants[fut] = n
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self._release(key, n)  # handed over just as we gave up: pass them on
            else:
                fut.cancel()
                pool.wants.pop(fut, None)
                with contextlib.suppress(ValueError):
                    pool.waiters.remove(fut)
                self._wake(pool)  # a waiter for several slots may have held back smaller ones
            raise

    @contextlib.asynccontextmanager
    async def session(
        self, endpoint: Endpoint, service: str, recorder: Recorder, count: int = 1
    ) -> AsyncIterator[None]:
        """Hold ``count`` slots (sessions) in both pools of ``endpoint`` for the body; the wait is the
        ``queue`` phase."""
        keys = self.keys(endpoint, service)
        held: list[str] = []
        budget = self.queue_timeout
        extend = deadline_extender.get()
        loop = asyncio.get_running_loop()
        start = loop.time()
        if extend is not None:
            extend(budget)
        try:
            with recorder.phase("queue"):
                try:
                    async with asyncio.timeout(budget):
                        for key in keys:
                            await self._acquire(key, count)
                            held.append(key)
                except TimeoutError:
                    full = next(k for k in keys if k not in held)
                    raise QueueTimeout(
                        f"no session slot for {full} within {budget:g}s "
                        f"({self.in_use(full)} of {self.limit_of(full)} in use by this exporter)"
                    ) from None
        except BaseException:
            for key in reversed(held):
                self._release(key, count)
            raise
        finally:
            if extend is not None:
                extend(-(budget - min(budget, loop.time() - start)))
        try:
            yield
        finally:
            for key in reversed(held):
                self._release(key, count)


@contextlib.asynccontextmanager
async def maybe_session(
    slots: ServerSlots | None, endpoint: Endpoint, service: str, recorder: Recorder, count: int = 1
) -> AsyncIterator[None]:
    """``slots.session(...)``, or nothing at all when the caller runs without limits."""
    if slots is None:
        yield
        return
    async with slots.session(endpoint, service, recorder, count):
        yield
