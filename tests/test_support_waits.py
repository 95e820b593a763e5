"""The test suite's starvation-aware waits (tests/support/procs.py, tests/support/wait.py) on real processes.

A wait on a stack of servers counts only time its processes were not kept off a CPU: these tests make
real starvation (three busy processes pinned to one CPU) and check that it is discounted, that a process
left alone is not, and that the watched set follows a server's children.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.support.procs import RunnableClock, with_descendants
from tests.support.wait import eventually

BUSY = [sys.executable, "-c", "while True: pass"]


@pytest.fixture
def busy_on_one_cpu() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Three processes that never sleep, all on one CPU: each gets at most a third of it."""
    cpu = min(os.sched_getaffinity(0))
    procs = [subprocess.Popen(BUSY) for _ in range(3)]
    try:
        for proc in procs:
            os.sched_setaffinity(proc.pid, {cpu})
        yield procs
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_time_a_process_waits_for_a_cpu_does_not_count(
    busy_on_one_cpu: list[subprocess.Popen[bytes]],
) -> None:
    watched = busy_on_one_cpu[0]
    clock = RunnableClock(lambda: (watched.pid,))
    time.sleep(2)
    counted, wall = clock(), clock.wall
    # It ran at most a third of the time and waited the rest: at most ~1/3 counts (more load: less).
    assert counted < 0.6 * wall, (counted, wall)


def _asleep(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rindex(b")") + 2 :].startswith(b"S")


def _loses_nothing(clock: RunnableClock) -> None:
    """Everything counts: bracketed by wall readings before and after, so however long this (test)
    process itself waits for a CPU between them, nothing but a lost second of the watched one fails it."""
    before = clock.wall
    counted = clock(fresh=True)
    assert before <= counted <= clock.wall, (before, counted, clock.wall)


def test_a_sleeping_process_loses_no_time() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        eventually(lambda: _asleep(sleeper.pid), timeout=30, interval=0.01, message="sleep(1) asleep")
        clock = RunnableClock(lambda: (sleeper.pid,))
        time.sleep(1)
        _loses_nothing(clock)  # it never asked for a CPU, so never waited
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_watched_set_takes_in_children(busy_on_one_cpu: list[subprocess.Popen[bytes]]) -> None:
    """A master that sleeps and a child that is starved: the child's wait counts for the set."""
    cpu = min(os.sched_getaffinity(0))
    code = (
        "import os, subprocess, sys, time; "
        "c = subprocess.Popen([sys.executable, '-c', 'while True: pass']); "
        f"os.sched_setaffinity(c.pid, {{{cpu}}}); "
        "print(c.pid, flush=True); time.sleep(60)"
    )
    master = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert master.stdout is not None
        child = int(master.stdout.readline())
        assert {master.pid, child} <= with_descendants([master.pid])
        clock = RunnableClock(lambda: (master.pid,))
        time.sleep(2)
        counted, wall = clock(), clock.wall
        assert counted < 0.6 * wall, (counted, wall)
        eventually(lambda: _asleep(master.pid), timeout=30, interval=0.01, message="the master asleep")
        alone = RunnableClock(lambda: (master.pid,), children=False)
        time.sleep(1)
        _loses_nothing(alone)
    finally:
        for pid in with_descendants([master.pid]) - {master.pid}:
            os.kill(pid, 9)
        master.kill()
        master.wait()


def test_a_wait_that_never_holds_fails_naming_the_starvation_free_time() -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(AssertionError, match=r"never: not within 0.5 s not waiting for a CPU \(\d"):
            eventually(
                lambda: False, timeout=0.5, interval=0.05, message="never", runnable=lambda: [sleeper.pid]
            )
    finally:
        sleeper.kill()
        sleeper.wait()
