"""One piece of work in flight per key ("single flight"), for the TLS caches: runs that want the same
endpoint's legacy answer or scan at the same moment (a burst of ``/probe`` scrapes, two probes of one
server) share one test instead of each opening its own connections. Waiters decide for themselves what
to do with a leader that failed or was cut short; this only keeps the bookkeeping in one place."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Flights(Generic[K, V]):
    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[V]] = {}

    def running(self, key: K) -> asyncio.Future[V] | None:
        """The work in flight for ``key`` (await it with ``asyncio.wait``: a waiter cut short must not
        cancel it for the others), or None."""
        return self._running.get(key)

    async def lead(
        self, key: K, work: Callable[[], Awaitable[V]], cancelled: Callable[[], None] | None = None
    ) -> V:
        """Do ``work`` as the one in flight for ``key``: its value, or its exception, is also the
        waiters'. ``cancelled`` runs first when the work is cut short (the waiters then see a cancelled
        future)."""
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            value = await work()
        except asyncio.CancelledError:
            if cancelled is not None:
                cancelled()
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters read it through asyncio.wait()
            raise
        finally:
            del self._running[key]
        future.set_result(value)
        return value
