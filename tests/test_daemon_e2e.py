"""`mailcanary run` as a user runs it: a subprocess probing the real stack, scraped over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.mailstack import MailStack, free_ports
from tests.support.metrics import Scrape, scrape, value
from tests.support.procs import run_bounded, wait_exit
from tests.support.stackconfig import exporter_argv, roundtrip, write_config
from tests.support.wait import eventually


@pytest.fixture
def daemon(
    mailstack: MailStack, fresh_mailbox: Callable[[], str], tmp_path: Path
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = free_ports(1)[0]
    probes = [
        roundtrip(mailstack, tmp_path, "imap-rt", fresh_mailbox(), protocol="imap", receive_tls="starttls"),
        roundtrip(
            mailstack,
            tmp_path,
            "pop3-rt",
            fresh_mailbox(),
            protocol="pop3",
            receive_tls="implicit",
            smtp_tls="implicit",
        ),
    ]
    config = write_config(tmp_path, probes, interval="2s", timeout="10s")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        exporter_argv(config, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        yield port, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_daemon_exports_real_roundtrips(
    daemon: tuple[int, subprocess.Popen[str]], mailstack: MailStack
) -> None:
    port, proc = daemon

    def running() -> Scrape:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        return scrape(port)

    metrics = eventually(
        running,
        until=lambda m: all(
            value(m, "mailcanary_roundtrip_runs_total", probe=p, outcome="success") >= 2
            for p in ("imap-rt", "pop3-rt")
        ),
        ignoring=(OSError, KeyError),
        timeout=30,
        interval=0.3,
        message="two successful runs per probe",
        runnable=lambda: [proc.pid, *mailstack.pids()],
    )

    now = time.time()
    for probe in ("imap-rt", "pop3-rt"):
        assert value(metrics, "mailcanary_roundtrip_success", probe=probe) == 1
        last = value(metrics, "mailcanary_roundtrip_last_delivery_seconds", probe=probe)
        assert 0 < last < 5
        assert value(metrics, "mailcanary_roundtrip_delivery_seconds_count", probe=probe) >= 2
        assert value(metrics, "mailcanary_roundtrip_delivery_seconds_bucket", probe=probe, le="60.0") >= 2
        assert value(metrics, "mailcanary_roundtrip_delivery_seconds_sum", probe=probe) > 0
        assert value(metrics, "mailcanary_roundtrip_phase_seconds", probe=probe, phase="smtp_send") > 0
        assert value(metrics, "mailcanary_roundtrip_phase_seconds", probe=probe, phase="receive_wait") == last
        assert value(metrics, "mailcanary_roundtrip_runs_total", probe=probe, outcome="timeout") == 0
        assert value(metrics, "mailcanary_roundtrip_late_total", probe=probe) == 0
        assert (
            abs(value(metrics, "mailcanary_roundtrip_last_success_timestamp_seconds", probe=probe) - now) < 10
        )
        assert value(metrics, "mailcanary_scheduler_lag_seconds", probe=probe) < 5
    # TLS facts of the endpoints each round trip used, from the round trip's own connections.
    for probe, protocol in (("imap-rt", "imap"), ("pop3-rt", "pop3")):
        for proto in ("smtp", protocol):
            assert value(metrics, "mailcanary_tls_cert_verified", probe=probe, protocol=proto) == 1
            assert value(metrics, "mailcanary_tls_hostname_match", probe=probe, protocol=proto) == 1
            assert (
                value(
                    metrics,
                    "mailcanary_tls_earliest_cert_expiry_timestamp_seconds",
                    probe=probe,
                    protocol=proto,
                )
                > now + 86400
            )
    assert value(metrics, "mailcanary_build_info") == 1
    assert value(metrics, "mailcanary_config_last_reload_successful") == 1
    # No label carries anything unbounded (tokens, message ids, nonces).
    for fam in metrics.values():
        for _, labels, _ in fam:
            for v in labels.values():
                assert len(v) < 64 and "@" not in v, v

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/healthy", timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=5) as resp:
        assert resp.status == 200

    proc.send_signal(signal.SIGTERM)
    assert wait_exit(proc, 20) == 0  # a hang guard; the daemon bounds its own stop (STOP_BOUND)
    out = proc.stdout.read() if proc.stdout else ""
    assert '"event": "probe_run"' in out and '"event": "stopped"' in out


def test_run_without_config_names_default_and_demo(tmp_path: Path) -> None:
    env = {**os.environ, "MAILCANARY_CONFIG": str(tmp_path / "nope.yml")}
    proc = run_bounded([sys.executable, "-m", "exporter.cli", "run"], 30, env=env)
    assert proc.returncode == 3
    assert str(tmp_path / "nope.yml") in proc.stderr and "mailcanary demo" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_probe_command_exit_codes_and_debug(
    mailstack: MailStack, fresh_mailbox: Callable[[], str], tmp_path: Path
) -> None:
    good = roundtrip(mailstack, tmp_path, "good", fresh_mailbox())
    bad = roundtrip(
        mailstack, tmp_path, "bad", fresh_mailbox(), protocol="pop3", receive_password="nope-nope"
    )
    config = str(write_config(tmp_path, [good, bad]))
    cmd = [sys.executable, "-m", "exporter.cli", "probe", "--config", config]
    ok = run_bounded([*cmd, "good", "--debug"], 60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("MAILCANARY OK - 1 round trips delivered | 'good_delivery'=")
    assert "C: smtp AUTH PLAIN ********" in ok.stdout and "receive_wait" in ok.stdout
    assert mailstack.password(good["sender"]) not in ok.stdout + ok.stderr
    failed = run_bounded(cmd, 60)
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert failed.stdout.startswith("MAILCANARY CRITICAL - bad: receive_auth")
    unknown = run_bounded([*cmd, "nosuch"], 60)
    assert unknown.returncode == 3
    assert "no probe, TLS check, domain check, heartbeat or reports mailbox named 'nosuch'" in unknown.stderr
