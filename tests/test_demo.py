"""`mailcanary demo` as a user (and CI) runs it: a subprocess, scraped over HTTP, stopped by a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.mailstack import free_ports
from tests.support.procs import run_bounded, wait_exit
from tests.support.wait import eventually

Samples = list[tuple[str, dict[str, str], float]]
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def mailcanary(*args: str) -> list[str]:
    return [sys.executable, "-m", "exporter.cli", *args]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def value(samples: Samples, name: str, **labels: str) -> float:
    for sample, lab, val in samples:
        if sample == name and all(lab.get(k) == v for k, v in labels.items()):
            return val
    raise KeyError(f"{name}{labels} not exported")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[str], Path]]:
    port = free_ports(1)[0]
    out = tmp_path / "demo-config"
    proc = subprocess.Popen(
        mailcanary("demo", "--listen", f"127.0.0.1:{port}", "--duration", "50", "--write-config", str(out)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        cwd=tmp_path,
    )
    try:
        yield port, proc, out
    finally:
        stop(proc)


def test_demo_round_trips_tls_facts_and_clean_stop(demo: tuple[int, subprocess.Popen[str], Path]) -> None:
    port, proc, out = demo
    t0 = time.monotonic()
    config: dict[str, object] = {}

    def running() -> Samples:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        samples = scrape(port)
        if not config:
            config.update(yaml.safe_load((out / "mailcanary.yml").read_text()))
        return samples

    def all_green(samples: Samples) -> bool:
        checks = config["tls_checks"]
        assert isinstance(checks, list)
        return all(
            value(samples, "mailcanary_roundtrip_success", probe=p) == 1
            for p in ("sandbox-imap", "sandbox-pop3")
        ) and all(
            # the endpoint label names this demo's own sandbox port: a scrape that reached another
            # program on a reused port (another demo) never counts, and our failed bind shows above
            value(samples, "mailcanary_tls_check_success", probe=c["name"]) == 1
            and value(
                samples,
                "mailcanary_tls_cert_verified",
                probe=c["name"],
                endpoint=f"127.0.0.1:{c['port']}",
            )
            == 1
            for c in checks
        )

    samples = eventually(
        running,
        until=all_green,
        ignoring=(OSError, KeyError),
        timeout=25,
        interval=0.2,
        message="successful IMAP and POP3 round trips and TLS checks",
        runnable=lambda: [proc.pid],  # the sandbox's servers run inside it
    )
    ready = time.monotonic() - t0
    # The demo mails itself a "nightly report"; its heartbeat counts it (read-only, beside the round trips).
    heartbeat = eventually(
        running,
        until=lambda s: value(s, "mailcanary_heartbeat_matched_total", probe="sandbox-nightly-report") >= 1,
        ignoring=(OSError, KeyError),
        timeout=30,
        interval=0.2,
        message="the demo's nightly report counted by its heartbeat",
        runnable=lambda: [proc.pid],
    )
    assert value(heartbeat, "mailcanary_heartbeat_state", probe="sandbox-nightly-report", state="ok") == 1

    # Both round trips succeeded, over IMAP and over POP3; the data is marked as sandbox data.
    for probe, protocol in (("sandbox-imap", "imap"), ("sandbox-pop3", "pop3")):
        assert value(samples, "mailcanary_roundtrip_success", probe=probe) == 1
        assert 0 < value(samples, "mailcanary_roundtrip_last_delivery_seconds", probe=probe) < 5
        rt = next(r for r in config["roundtrip"] if r["name"] == probe)  # type: ignore[attr-defined]
        assert rt["receive"]["protocol"] == protocol
    assert value(samples, "mailcanary_config_info", sandbox="true") == 1
    # What the receiver did, from the first run on: placement, the sandbox's own (honest) verdict.
    for probe in ("sandbox-imap", "sandbox-pop3"):
        assert value(samples, "mailcanary_roundtrip_placement", probe=probe, folder="inbox") == 1
        assert (
            value(samples, "mailcanary_roundtrip_auth_result", probe=probe, method="dkim", result="none") == 1
        )
        assert value(samples, "mailcanary_roundtrip_spam_score", probe=probe, engine="spamassassin") == 0
        assert value(samples, "mailcanary_roundtrip_hops", probe=probe) == 1

    # TLS facts for every sandbox port: a certificate expiry ~90 days ahead, verified, no legacy TLS,
    # and no credentials offered before STARTTLS on the plain ports.
    checks = config["tls_checks"]
    assert isinstance(checks, list)
    assert {(c["protocol"], c["tls"]) for c in checks} == {
        (p, m) for p in ("smtp", "imap", "pop3") for m in ("starttls", "implicit")
    }
    now = time.time()
    for check in checks:
        labels = {
            "probe": check["name"],
            "endpoint": f"127.0.0.1:{check['port']}",
            "protocol": check["protocol"],
        }
        expiry = value(samples, "mailcanary_tls_earliest_cert_expiry_timestamp_seconds", **labels)
        assert now + 80 * 86400 < expiry < now + 100 * 86400
        assert value(samples, "mailcanary_tls_cert_verified", **labels) == 1
        for name, lab, val in samples:
            if name == "mailcanary_tls_legacy_protocol_accepted" and lab["probe"] == check["name"]:
                assert val == 0, (check["name"], lab)
        if check["tls"] == "starttls":
            assert value(samples, "mailcanary_tls_starttls_offered", **labels) == 1
            assert value(samples, "mailcanary_tls_auth_before_tls", **labels) == 0

    # Ctrl-C: exit 0 (a hang guard, not a timing: a loaded machine may starve the process for long).
    proc.send_signal(signal.SIGINT)
    assert wait_exit(proc, 10) == 0
    text = proc.stdout.read() if proc.stdout else ""
    assert f"http://127.0.0.1:{port}/metrics" in text
    assert "job_name: mailcanary-demo" in text and f'targets: ["127.0.0.1:{port}"]' in text
    assert "sandbox-imap" in text and "sandbox-pop3" in text
    assert "ok    sandbox-imap" in text and "ok    sandbox-pop3" in text  # the progress feed
    assert "to inbox" in text and "verdict: dkim=none dmarc=none spf=none spamassassin 0" in text
    assert "Traceback" not in text and '"level"' not in text  # no log spam on the console
    password = (out / "sandbox.password").read_text().strip()
    assert password and password not in text
    print(f"demo: all probes green {ready:.2f}s after the process started")

    # The written config is valid and usable on its own (files stay after the demo).
    check = subprocess.run(
        mailcanary("check-config", "--config", str(out / "mailcanary.yml")),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=30,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "ok" in check.stdout
    assert (out / "sandbox.password").stat().st_mode & 0o077 == 0


def test_demo_stops_by_itself_and_sigterm(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    # Stops by itself: a demo that did not would wait, and fail the guard (20 s not waiting for a CPU;
    # the wall clock is no measure on a loaded machine: 18 s for this at load 11).
    done = run_bounded(
        mailcanary(
            "demo", "--listen", f"127.0.0.1:{port}", "--duration", "2", "--delay", "0.2", "--jitter", "0.1"
        ),
        20,
        env=ENV,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "delivery delay   0.2s + random 0..0.1s" in done.stdout
    assert "stopped" in done.stdout

    proc = subprocess.Popen(
        mailcanary("demo", "--listen", f"127.0.0.1:{port}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Ctrl-C stops it" in line:
                break
        proc.send_signal(signal.SIGTERM)
        assert wait_exit(proc, 10) == 0
    finally:
        stop(proc)


def test_demo_usage_errors(tmp_path: Path) -> None:
    bad = subprocess.run(
        mailcanary("demo", "--listen", "nonsense", "--duration", "1"), capture_output=True, text=True, env=ENV
    )
    assert bad.returncode == 3 and "--listen" in bad.stderr
    bad = subprocess.run(mailcanary("demo", "--delay", "soon"), capture_output=True, text=True, env=ENV)
    assert bad.returncode == 3 and "--delay" in bad.stderr
    # A mailcanary.yml that the demo did not write is never overwritten.
    (tmp_path / "mailcanary.yml").write_text("global: {}\n")
    port = free_ports(1)[0]
    bad = subprocess.run(
        mailcanary(
            "demo", "--listen", f"127.0.0.1:{port}", "--duration", "1", "--write-config", str(tmp_path)
        ),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=20,
    )
    assert bad.returncode == 3 and "not overwriting" in bad.stderr
    assert (tmp_path / "mailcanary.yml").read_text() == "global: {}\n"


def test_run_without_config_suggests_demo(tmp_path: Path) -> None:
    env = {**ENV, "MAILCANARY_CONFIG": str(tmp_path / "absent.yml")}
    done = subprocess.run(mailcanary("run"), capture_output=True, text=True, env=env, timeout=20)
    assert done.returncode != 0
    assert "absent.yml" in done.stderr and "mailcanary demo" in done.stderr
