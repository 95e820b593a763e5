"""A bound on stopping. Each step of a stop has its own bound (exporter.daemon), but a stop also waits
for things no step controls: worker threads asyncio joins at the end, the interpreter's own exit. A
daemon that outlives its SIGTERM gets SIGKILLed by its supervisor with nothing said, and its next start
is late; so past STOP_BOUND the process says in one log line what it was still waiting for (the step,
every thread's stack, the tasks left) and exits 1 at once.

The bound counts the time the process's threads were not waiting for a CPU (Linux: each thread's
schedstat run-queue delay is taken off, at most the wall time), so a starved machine (on 2 cores with
two test suites, a process may get a tenth of a core) is not mistaken for a hang; a hang sleeps, and
its time counts.
STARVED_BOUND caps the wall time all the same."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger("mailcanary")

STOP_BOUND = 9.0  # seconds from SIGTERM to exit, whatever hangs (compose and `podman stop` wait 10 s)
STARVED_BOUND = 25.0  # wall seconds, however starved (Kubernetes' default grace is 30 s)
_TICK = 0.25
EXIT_OVERDUE = 1
_FRAMES = 6  # innermost frames kept per thread and task


class StopWatch:
    """Armed once a stop begins; ``step`` names what the stop is doing (for the overdue line)."""

    def __init__(
        self,
        bound: float = STOP_BOUND,
        exit: Callable[[int], Any] = os._exit,
        starved_bound: float = STARVED_BOUND,
        cpu_wait: Callable[[], dict[int, float] | None] | None = None,
    ) -> None:
        self.bound = bound
        self.starved_bound = starved_bound
        self._cpu_wait = cpu_wait if cpu_wait is not None else _threads_cpu_wait
        self.step = "runs"
        self._exit = exit
        self._armed: threading.Thread | None = None
        self._disarmed = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = 0.0

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._armed is not None:
            return
        self._loop, self._started = loop, time.monotonic()
        # A daemon thread: it never holds up an exit itself, and still runs while the interpreter
        # joins the other threads (which is one of the waits it bounds).
        self._armed = threading.Thread(target=self._watch, name="mailcanary-stopwatch", daemon=True)
        self._armed.start()

    def disarm(self) -> None:
        """The stop finished in process (an embedding or a test): the watch ends without a word."""
        self._disarmed.set()

    def _watch(self) -> None:
        last = self._cpu_wait() or {}
        starved = 0.0
        while True:
            if self._disarmed.wait(_TICK):
                return
            wall = time.monotonic() - self._started
            now = self._cpu_wait() or {}
            # Per thread, so threads that come and go (worker threads) neither add nor take away time.
            starved += sum(max(w - last.get(tid, 0.0), 0.0) for tid, w in now.items())
            last = now
            starved = min(starved, wall)
            if wall - starved >= self.bound or wall >= self.starved_bound:
                break
        try:
            log.error(
                "stop_overdue",
                bound_seconds=self.bound,
                seconds=round(wall, 3),
                cpu_wait_seconds=round(starved, 3),
                step=self.step,
                threads=_threads(),
                tasks=_tasks(self._loop),
            )
            sys.stderr.flush()
        finally:
            self._exit(EXIT_OVERDUE)


def cpu_waits(pid: int | str = "self") -> dict[int, float] | None:
    """Seconds each thread of ``pid`` has spent runnable but waiting for a CPU (Linux schedstat); None
    where the kernel does not say (gone, not Linux, schedstat off). A thread that ends meanwhile is left
    out. Also the test suite's starvation-aware bounds (tests/support/procs.py)."""
    waits: dict[int, float] = {}
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except (OSError, ValueError):
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                waits[tid] = int(f.read().split()[1]) / 1e9
        except (FileNotFoundError, ProcessLookupError):  # a thread that ended meanwhile
            continue
        except (OSError, ValueError, IndexError):
            return None
    return waits


def _threads_cpu_wait() -> dict[int, float] | None:
    """:func:`cpu_waits` of every thread of this process but the calling one (the watch). All threads,
    not only the main one: the main thread waiting for the GIL that a starved thread holds sleeps, and
    would count as hung."""
    waits = cpu_waits()
    if waits is not None:
        waits.pop(threading.get_native_id(), None)
    return waits


def _where(frames: list[traceback.FrameSummary]) -> list[str]:
    return [f"{os.path.basename(f.filename)}:{f.lineno} {f.name}" for f in frames[-_FRAMES:]]


def _threads() -> dict[str, list[str]]:
    names = {t.ident: t.name for t in threading.enumerate()}
    me = threading.get_ident()
    return {
        f"{names.get(ident, 'unknown')} ({ident})": _where(traceback.extract_stack(frame))
        for ident, frame in sys._current_frames().items()
        if ident != me
    }


def _tasks(loop: asyncio.AbstractEventLoop | None) -> list[str]:
    """The loop's unfinished tasks, read from another thread: best effort (the set may change under us)."""
    if loop is None or loop.is_closed():
        return []
    for _ in range(3):
        with contextlib.suppress(RuntimeError):
            tasks = list(asyncio.all_tasks(loop))
            break
    else:
        return ["(the task set kept changing)"]
    out = []
    for task in tasks:
        stack = task.get_stack(limit=_FRAMES)
        frames = [traceback.FrameSummary(f.f_code.co_filename, f.f_lineno, f.f_code.co_name) for f in stack]
        out.append(f"{task.get_name()}: {' < '.join(reversed(_where(frames)))}")
    return out
