"""The bound on a stop (exporter.stopwatch): past it the process says what it was waiting for and exits 1,
whatever hangs; a stop within it never hears from it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import time

from structlog.testing import capture_logs

from exporter.stopwatch import EXIT_OVERDUE, StopWatch


def test_overdue_names_the_step_the_threads_and_the_tasks() -> None:
    exits: list[int] = []
    exited = threading.Event()

    def fake_exit(code: int) -> None:
        exits.append(code)
        exited.set()

    release = threading.Event()

    def stuck_worker() -> None:
        release.wait(30)

    worker = threading.Thread(target=stuck_worker, name="stuck-worker")
    worker.start()

    async def stuck_task() -> None:
        await asyncio.sleep(30)

    async def main() -> None:
        task = asyncio.create_task(stuck_task(), name="probe:never-ends")
        watch = StopWatch(bound=0.2, exit=fake_exit)
        watch.arm(asyncio.get_running_loop())
        watch.arm(asyncio.get_running_loop())  # a second SIGTERM does not start a second watch
        watch.step = "ledger"
        await asyncio.to_thread(exited.wait, 10)
        task.cancel()

    try:
        with capture_logs() as logs:
            asyncio.run(main())
    finally:
        release.set()
        worker.join()
    assert exits == [EXIT_OVERDUE]
    (line,) = [e for e in logs if e["event"] == "stop_overdue"]
    assert line["log_level"] == "error" and line["step"] == "ledger" and line["bound_seconds"] == 0.2
    (stuck,) = [frames for name, frames in line["threads"].items() if name.startswith("stuck-worker ")]
    assert any("stuck_worker" in f for f in stuck)
    (task,) = [t for t in line["tasks"] if t.startswith("probe:never-ends: ")]
    assert "stuck_task" in task


def test_time_spent_waiting_for_a_cpu_does_not_count() -> None:
    """A process starved of CPU (its main thread runnable, waiting on the run queue the whole time) is
    not mistaken for a hung one: only the wall-time cap ends it, and the line says it was starved."""
    exits: list[int] = []
    exited = threading.Event()

    def fake_exit(code: int) -> None:
        exits.append(code)
        exited.set()

    async def main() -> float:
        started = time.monotonic()
        # Starved throughout: the run-queue wait grows as fast as the wall clock.
        watch = StopWatch(
            bound=0.2, exit=fake_exit, starved_bound=1.0, cpu_wait=lambda: {1: time.monotonic()}
        )
        watch.arm(asyncio.get_running_loop())
        await asyncio.to_thread(exited.wait, 10)
        return time.monotonic() - started

    with capture_logs() as logs:
        took = asyncio.run(main())
    assert exits == [EXIT_OVERDUE] and took >= 1.0  # not at 0.2 s: the starved time was not counted
    (line,) = [e for e in logs if e["event"] == "stop_overdue"]
    assert line["cpu_wait_seconds"] >= 0.7


def test_a_stop_within_the_bound_is_not_interrupted() -> None:
    """A watch disarmed before its bound never fires (and leaves no thread that could log later)."""
    exits: list[int] = []

    async def main() -> StopWatch:
        watch = StopWatch(bound=0.5, exit=exits.append)
        watch.arm(asyncio.get_running_loop())
        await asyncio.sleep(0.1)
        watch.disarm()
        return watch

    with capture_logs() as logs:
        watch = asyncio.run(main())
        assert watch._armed is not None
        watch._armed.join(10)
        assert not watch._armed.is_alive()
        time.sleep(0.6)  # past the bound: nothing
    assert exits == [] and not [e for e in logs if e["event"] == "stop_overdue"]


def test_the_process_exits_even_while_a_thread_holds_its_exit() -> None:
    """A real process whose exit waits on a thread that never ends (what asyncio.run does with its worker
    threads): the watch ends it, exit code 1, one JSON line saying where that thread was."""
    script = textwrap.dedent(
        """
        import asyncio, threading, structlog
        from exporter.stopwatch import StopWatch
        structlog.configure(processors=[structlog.processors.JSONRenderer()])

        async def main():
            StopWatch(bound=0.5).arm(asyncio.get_running_loop())
            await asyncio.to_thread(threading.Event().wait)  # never set: asyncio.run joins it forever

        asyncio.run(main())
        """
    )
    # The 60 s are a hang guard, not a timing assertion: the thread the process waits for never ends.
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_OVERDUE, done.stderr
    (line,) = [json.loads(x) for x in (done.stdout + done.stderr).splitlines() if "stop_overdue" in x]
    assert any(any("wait" in f for f in frames) for frames in line["threads"].values())
