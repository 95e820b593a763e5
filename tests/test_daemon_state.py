"""The daemon keeps its word across kill -9 and SIGTERM: real stack, real slow delivery, real signals."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.mailstack import MailStack
from tests.support.daemon import Daemon, json_lines
from tests.support.ledgerfile import ledger_on_disk
from tests.support.metrics import scrape, value
from tests.support.postfix import queued
from tests.support.procs import wait_exit
from tests.support.stackconfig import roundtrip, write_config
from tests.support.wait import eventually


def ledger_entries(state: Path, probe: str) -> dict[str, Any]:
    try:
        data = ledger_on_disk(state / "ledger.json")
    except (OSError, ValueError):
        return {}
    entries: dict[str, Any] = data.get("probes", {}).get(probe, {})
    return entries


def wait_queued(stack: MailStack, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Until Postfix holds a message for the slow mailbox: a canary accepted and on its way."""

    def files() -> list[str]:
        assert proc.poll() is None, "daemon exited"
        return queued(stack, ("incoming", "active", "deferred"))

    eventually(
        files,
        timeout=timeout,
        interval=0.05,
        message="a message in the Postfix queue",
        runnable=lambda: [proc.pid, *stack.pids()],
    )


def wait_accepted(state: Path, probe: str, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Until the ledger says the server accepted a canary of ``probe``. A file in Postfix's queue is not
    enough: ``incoming`` holds the message while DATA is still arriving, and a client killed then leaves
    no mail at all (a canary that can never turn up late)."""

    def entries() -> dict[str, Any]:
        assert proc.poll() is None, "daemon exited"
        return ledger_entries(state, probe)

    eventually(
        entries,
        until=lambda found: any(e.get("state") == "accepted" for e in found.values()),
        timeout=timeout,
        interval=0.02,
        message=f"a canary of {probe} recorded as accepted",
        runnable=lambda: [proc.pid],
    )


def test_sigkill_mid_flight_canary_is_counted_late_after_restart(
    mailstack: MailStack, slow_mailbox: str, tmp_path: Path
) -> None:
    """kill -9 while a canary is on its way: after a restart it is awaited, and counted late when seen."""
    mailstack.slow_delay = 4
    probe = roundtrip(mailstack, tmp_path, "killed", slow_mailbox)
    config = write_config(tmp_path, [probe], interval="2s", timeout="20s")
    state = tmp_path / "state"
    first = Daemon(config)
    try:
        wait_queued(mailstack, first.proc)  # on its way, 4 s from arriving, its run waiting for it
        wait_accepted(state, "killed", first.proc)  # and the server's acceptance is on disk
        first.proc.send_signal(signal.SIGKILL)
    finally:
        first.stop()
    written = ledger_entries(state, "killed")  # written ahead: the kill left it recorded
    second = Daemon(config)
    try:

        def late_total() -> float:
            assert second.proc.poll() is None
            return value(scrape(second.port), "mailcanary_roundtrip_late_total", probe="killed")

        late = eventually(
            late_total,
            until=lambda n: n >= 1,
            ignoring=(OSError, KeyError),
            timeout=60,
            interval=0.3,
            message="the canary in flight at kill -9 counted late after the restart",
            runnable=lambda: [second.proc.pid, *mailstack.pids()],
        )
        assert late == 1, "the canary in flight at kill -9 was not counted late after the restart"
        (nonce,) = written
        assert nonce not in ledger_entries(state, "killed")
    finally:
        _out, err = second.stop()
    assert not any(e.get("swept") for e in json_lines(err) if e.get("event") == "probe_run")


def test_sigterm_lets_the_run_in_flight_finish(
    mailstack: MailStack, slow_mailbox: str, tmp_path: Path
) -> None:
    """SIGTERM while a canary is 1.5 s from arriving: the run finishes within the 3 s grace, logs its one
    JSON line, and the ledger is left empty; stderr is JSON only."""
    mailstack.slow_delay = 1.5
    config = write_config(
        tmp_path, [roundtrip(mailstack, tmp_path, "term", slow_mailbox)], interval="1m", timeout="20s"
    )
    state = tmp_path / "state"
    daemon = Daemon(config)
    try:
        wait_queued(mailstack, daemon.proc)
        daemon.proc.send_signal(signal.SIGTERM)
        assert wait_exit(daemon.proc, 20) == 0  # a hang guard; the daemon bounds its own stop
    finally:
        out, err = daemon.stop()
    lines = json_lines(err)
    events = [e["event"] for e in lines]
    assert events.index("stopping") < events.index("probe_run") < events.index("stopped")
    (run,) = [e for e in lines if e["event"] == "probe_run"]
    assert (run["probe"], run["outcome"]) == ("term", "success"), run
    assert ledger_entries(state, "term") == {}
    assert "Traceback" not in err + out


def test_sigterm_past_the_grace_cancels_logs_and_hands_the_canary_over(
    mailstack: MailStack, slow_mailbox: str, tmp_path: Path
) -> None:
    """A run that cannot finish within the grace is cancelled: one JSON line (outcome cancelled), and its
    canary is left in the ledger as awaited, so the next start counts it late or lost."""
    mailstack.slow_delay = 10
    config = write_config(
        tmp_path, [roundtrip(mailstack, tmp_path, "cut", slow_mailbox)], interval="1m", timeout="30s"
    )
    state = tmp_path / "state"
    daemon = Daemon(config)
    try:
        wait_queued(mailstack, daemon.proc)
        daemon.proc.send_signal(signal.SIGTERM)
        assert wait_exit(daemon.proc, 20) == 0  # a hang guard; the daemon bounds its own stop
    finally:
        out, err = daemon.stop()
    lines = json_lines(err)
    (run,) = [e for e in lines if e["event"] == "probe_run"]
    assert (run["probe"], run["outcome"], run["failed_phase"]) == ("cut", "cancelled", "receive_wait")
    (nonce,) = ledger_entries(state, "cut")
    assert ledger_entries(state, "cut")[nonce] == {
        "sent": pytest.approx(time.time(), abs=60),
        "state": "waiting",
        "session": None,
    }
    assert "Traceback" not in err + out
    assert lines[-1]["event"] == "stopped"
