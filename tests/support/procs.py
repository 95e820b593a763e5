"""Waiting for a process of ours to end, with a hang guard that a loaded machine does not trip.

On 2 cores with two test suites a process may get a tenth of a core: `mailcanary probe` then takes a
minute of wall clock for seconds of CPU, and a fixed wall-clock timeout fails a process that is only
starved. A hung process sleeps; a starved one is runnable and waits on the run queue. So the guard
here counts a process's wall time minus the time its threads waited for a CPU (Linux schedstat):
``bound`` such seconds without an exit is a hang. ``cap`` bounds the wall time whatever.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Any

_TICK = 0.25
CAP = 900.0  # wall seconds, however starved: the whole suite's budget


def cpu_waits(pid: int) -> dict[int, float]:
    """Seconds each thread of ``pid`` has waited on the run queue (none once it is gone)."""
    waits: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return waits
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                waits[int(tid)] = int(f.read().split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            continue
    return waits


class Hung(AssertionError):
    pass


def _guard(proc: subprocess.Popen[Any], bound: float, cap: float) -> None:
    started, last, starved = time.monotonic(), cpu_waits(proc.pid), 0.0
    while proc.poll() is None:
        wall = time.monotonic() - started
        now = cpu_waits(proc.pid)
        # Per thread (threads come and go), at most the wall time (several may wait at once).
        starved = min(starved + sum(max(w - last.get(t, 0.0), 0.0) for t, w in now.items()), wall)
        last = now
        if wall - starved >= bound or wall >= cap:
            proc.kill()
            proc.wait()
            raise Hung(f"{proc.args!r}: no exit within {bound:g} s not waiting for a CPU ({wall:.1f} s wall)")
        time.sleep(_TICK)


def wait_exit(proc: subprocess.Popen[Any], bound: float, cap: float = CAP) -> int:
    """``proc``'s exit code; a process that spends ``bound`` seconds neither running nor waiting for a
    CPU without exiting is killed and fails the test."""
    _guard(proc, bound, cap)
    return proc.returncode


def run_bounded(
    cmd: Sequence[str], bound: float, cap: float = CAP, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(cmd, capture_output=True, text=True)`` with the guard of :func:`wait_exit`.
    Output goes to temporary files, so a chatty process never blocks on a full pipe."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, **kw)
        try:
            _guard(proc, bound, cap)
        except Hung as exc:
            out.seek(0)
            err.seek(0)
            raise Hung(f"{exc}\nstdout: {out.read()[-3000:]}\nstderr: {err.read()[-3000:]}") from None
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
