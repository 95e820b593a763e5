"""``eventually()``: wait for a condition without a hand-written deadline loop or a fixed sleep.

A test waits for an event (a metric, a file, a log line, a queue state) by polling it until it holds,
within a generous timeout (the machine may be loaded: a timeout is a bound, never a measurement). On
timeout the failure says what was awaited and shows the last value seen (or the last error), so a
failure is readable without a rerun.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from tests.support.procs import CAP, RunnableClock

T = TypeVar("T")

# How long a process of ours (the daemon, a server) may take to start serving: a process start and its
# imports, which no code bounds: on a loaded 2-core machine `mailcanary --help` took 42 s of wall clock for
# 0.9 s of CPU (load 12, 2026-12-07), and daemons failed 20 s readiness waits at load 25 while alive. A
# hang guard, not a measurement: a wait that uses it must end at once when the process exits.
STARTUP_BOUND = 120.0

_NOT_YET = object()


def _describe(last: object, error: BaseException | None, limit: int = 2000) -> str:
    text = "nothing (never returned)" if last is _NOT_YET else repr(last)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text) - limit} more characters)"
    out = f"last value: {text}"
    if error is not None:
        out += f"; last error: {type(error).__name__}: {error}"
    return out


def _message(message: str | Callable[[], str]) -> str:
    return message() if callable(message) else message


def eventually(
    check: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.1,
    until: Callable[[T], object] = bool,
    ignoring: tuple[type[BaseException], ...] = (),
    message: str | Callable[[], str] = "condition",
    runnable: Callable[[], Iterable[int]] | None = None,
) -> T:
    """Call ``check`` until ``until(value)`` holds (by default: the value is truthy) and return the value.

    ``ignoring``: exceptions that mean "not yet", from ``check`` or ``until`` (e.g. ``OSError`` while a
    server starts, ``KeyError`` while a metric is not exported yet); any other
    exception, an ``AssertionError`` from ``check`` included (e.g. "the daemon exited"), ends the wait
    at once. After ``timeout`` seconds: ``AssertionError`` naming ``message``, the last value and the last
    ignored error. ``check`` runs at least once, even with a timeout of 0.

    ``runnable``: the processes the awaited event depends on (asked anew each time; their descendants
    count too). The timeout then counts only time in which none of them waited for a CPU
    (:class:`~tests.support.procs.RunnableClock`), with a wall-clock cap of ``CAP``: on a starved machine
    a wait on a stack of servers stretches as they do, and a broken stack still fails it.
    """
    clock = RunnableClock(runnable) if runnable is not None else None
    deadline = time.monotonic() + timeout
    last: object = _NOT_YET
    error: BaseException | None = None
    while True:
        try:
            value = check()
            last = value
            if until(value):
                return value
        except ignoring as exc:
            error = exc
        if clock is None:
            over, within = time.monotonic() >= deadline, f"{timeout:g} s"
        else:
            # a count past the timeout is confirmed by a fresh sample before the wait fails
            over = (clock() >= timeout and clock(fresh=True) >= timeout) or clock.wall >= CAP
            within = f"{timeout:g} s not waiting for a CPU ({clock.wall:.1f} s wall)"
        if over:
            raise AssertionError(f"{_message(message)}: not within {within}; {_describe(last, error)}")
        time.sleep(interval)


async def eventually_async(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float,
    interval: float = 0.1,
    until: Callable[[T], object] = bool,
    ignoring: tuple[type[BaseException], ...] = (),
    message: str | Callable[[], str] = "condition",
) -> T:
    """``eventually`` for a coroutine check, sleeping with ``asyncio.sleep`` (the loop keeps running)."""
    deadline = time.monotonic() + timeout
    last: object = _NOT_YET
    error: BaseException | None = None
    while True:
        try:
            value = await check()
            last = value
            if until(value):
                return value
        except ignoring as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"{_message(message)}: not within {timeout:g} s; {_describe(last, error)}")
        await asyncio.sleep(interval)
