"""Waiting for a process of ours to end, with a hang guard that a loaded machine does not trip.

On 2 cores with two test suites a process may get a tenth of a core: `mailcanary probe` then takes a
minute of wall clock for seconds of CPU, and a fixed wall-clock timeout fails a process that is only
starved. A hung process sleeps; a starved one is runnable and waits on the run queue. So the guard
here counts a process's wall time minus the time its threads waited for a CPU (Linux schedstat):
``bound`` such seconds without an exit is a hang. ``cap`` bounds the wall time whatever.
:class:`RunnableClock` is that count for a wait on several processes at once (``eventually(runnable=)``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, overload

from exporter import stopwatch

_TICK = 0.25
# A RunnableClock samples at most this often (a sample reads /proc: ~1 ms idle, several with a suite's
# processes), however fast a wait polls its condition.
_SAMPLE = 0.2
CAP = 900.0  # wall seconds, however starved: the whole suite's budget


def cpu_waits(pid: int) -> dict[int, float]:
    """Seconds each thread of ``pid`` has waited on the run queue (none once it is gone): the daemon's
    own reader (exporter.stopwatch), which bounds its stop the same way."""
    return stopwatch.cpu_waits(pid) or {}


def _parent(pid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    try:  # the name in parentheses may hold spaces and parentheses: the fields after the last ')'
        return int(stat[stat.rindex(b")") + 2 :].split()[1])
    except (ValueError, IndexError):
        return None


def with_descendants(roots: Iterable[int]) -> set[int]:
    """``roots`` and every live process below them (a server's master and the children it forks)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (parent := _parent(entry)) is not None:
            children.setdefault(parent, []).append(int(entry))
    found: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


class RunnableClock:
    """Seconds since creation in which the watched processes were not kept off a CPU.

    Each call samples every watched process's threads; in each interval between calls, the time lost is
    the longest any one process waited on the run queue (its threads' waits summed, at most the
    interval). The watched set is asked anew on every call (``roots``), with their descendants when
    ``children`` is set, so a server that forks a process per session is covered. One process: the time
    it could have run. Several that hand work to each other (exporter, Prometheus, Postfix, Dovecot): a
    lower bound of the time lost, so a wait stays a bound a broken system still trips.
    """

    def __init__(self, roots: Callable[[], Iterable[int]], *, children: bool = True) -> None:
        self._roots, self._children = roots, children
        self._started = self._at = time.monotonic()
        self._waits = self._sample()
        self._lost = 0.0

    def _sample(self) -> dict[int, dict[int, float]]:
        pids = with_descendants(self._roots()) if self._children else set(self._roots())
        return {pid: cpu_waits(pid) for pid in pids}

    @property
    def wall(self) -> float:
        return time.monotonic() - self._started

    def __call__(self, *, fresh: bool = False) -> float:
        """The count so far. Within ``_SAMPLE`` of the last sample it is not sampled again (the time since
        then counts as not starved, so the count may run ahead by that much) unless ``fresh``."""
        now = time.monotonic()
        if not fresh and now - self._at < _SAMPLE:
            return now - self._started - self._lost
        interval, waits = now - self._at, self._sample()
        worst = 0.0
        for pid, threads in waits.items():
            before = self._waits.get(pid, {})  # a process or thread new since the last call: all its wait
            waited = sum(max(w - before.get(tid, 0.0), 0.0) for tid, w in threads.items())
            worst = max(worst, min(waited, interval))
        self._lost += worst
        self._waits, self._at = waits, now
        return now - self._started - self._lost


def this_process() -> RunnableClock:
    """A :class:`RunnableClock` of the test's own process: for a bound on work done in-process (a stop
    that must not wait out a 30 s delay), which a starved machine must not trip."""
    pid = os.getpid()
    return RunnableClock(lambda: (pid,), children=False)


class Hung(AssertionError):
    pass


def _guard(proc: subprocess.Popen[Any], bound: float, cap: float) -> None:
    # Its children too: a process waiting on a starved child (a shell, `unshare`) sleeps, but is not hung.
    clock = RunnableClock(lambda: (proc.pid,))
    while proc.poll() is None:
        if clock(fresh=True) >= bound or clock.wall >= cap:
            for pid in with_descendants([proc.pid]) - {proc.pid}:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
            wall = clock.wall
            raise Hung(f"{proc.args!r}: no exit within {bound:g} s not waiting for a CPU ({wall:.1f} s wall)")
        time.sleep(_TICK)


def wait_exit(proc: subprocess.Popen[Any], bound: float, cap: float = CAP) -> int:
    """``proc``'s exit code; a process that spends ``bound`` seconds neither running nor waiting for a
    CPU without exiting is killed and fails the test."""
    _guard(proc, bound, cap)
    return proc.returncode


@overload
def run_bounded(
    cmd: Sequence[str],
    bound: float,
    cap: float = ...,
    *,
    input: str | None = ...,
    check: bool = ...,
    text: Literal[True] = ...,
    **kw: Any,
) -> subprocess.CompletedProcess[str]: ...


@overload
def run_bounded(
    cmd: Sequence[str],
    bound: float,
    cap: float = ...,
    *,
    input: bytes | None = ...,
    check: bool = ...,
    text: Literal[False],
    **kw: Any,
) -> subprocess.CompletedProcess[bytes]: ...


def run_bounded(
    cmd: Sequence[str],
    bound: float,
    cap: float = CAP,
    *,
    input: str | bytes | None = None,
    check: bool = False,
    text: bool = True,
    **kw: Any,
) -> subprocess.CompletedProcess[Any]:
    """``subprocess.run(cmd, capture_output=True, input=, check=, text=)`` with the guard of
    :func:`wait_exit` in place of a wall-clock ``timeout``. Input and output go through temporary
    files, so neither side ever blocks on a full pipe."""
    with (
        tempfile.TemporaryFile() as stdin,
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
    ):
        if input is not None:
            stdin.write(input.encode() if isinstance(input, str) else input)
            stdin.seek(0)
        proc = subprocess.Popen(cmd, stdin=stdin if input is not None else None, stdout=out, stderr=err, **kw)

        def output() -> tuple[Any, Any]:
            out.seek(0)
            err.seek(0)
            o, e = out.read(), err.read()
            return (o.decode(errors="replace"), e.decode(errors="replace")) if text else (o, e)

        try:
            _guard(proc, bound, cap)
        except Hung as exc:
            o, e = output()
            raise Hung(f"{exc}\nstdout: {o[-3000:]!s}\nstderr: {e[-3000:]!s}") from None
        o, e = output()
    if check and proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, o, e)
    return subprocess.CompletedProcess(proc.args, proc.returncode, o, e)
