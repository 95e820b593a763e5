"""One instance, many mailboxes: N round-trip probes at 60 s against a real Postfix + Dovecot.

    python -m bench.scale [--probes 1000] [--interval 60] [--duration 300] [--anchor-duration 60]

Starts the real Postfix + Dovecot of tests/mailstack on loopback (root) with ``--probes`` numbered
mailboxes (``tests/mailstack --users N``; stock process limits: 100 imap-login, 100 smtpd), then:

1. the anchor: ``mailcanary run`` with a single probe (SMTP STARTTLS + AUTH -> IMAPS) at a 5 s interval
   for ``--anchor-duration`` seconds: its delivery p50 is what one probe alone sees on this machine now;
2. ``mailcanary run`` with ``--probes`` probes, one per mailbox, at ``--interval``, for one interval of
   start-up (every probe's first slot) plus ``--duration`` seconds of measurement, scraped every 15 s
   as Prometheus would (its own Accept header, OpenMetrics first, and gzip).

Over the measured window it reports: the share of successful runs (from the JSON log lines), scheduler
lag p99 (the lag gauges of every scrape), delivery p50/p99 and its ratio to the anchor's p50, mailcanary's
CPU (user + system, all threads, from /proc) as a share of one core beside Dovecot's and Postfix's in the
same window (each master process and all its workers, with those that exited meanwhile), its peak RSS,
and how often Dovecot logged a process limit being reached. Each next to its target: ≥ 99.9 % success,
lag p99 ≤ 1 s, delivery p50 ≤ 2x the single probe's, ≤ 20 % of one core, RSS ≤ 120 MB (issue 23's;
issue 9's were 35 % and 200 MB).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import (
    cpu_seconds,
    free_port,
    json_lines,
    load,
    mailcanary_argv,
    median,
    percentile,
    rss_bytes,
    scrape,
    start_logged,
    stop,
    table,
    tree_cpu_seconds,
    wait_http,
)
from tests.mailstack import MailStack, make_root, numbered_users
from tests.support.stackconfig import roundtrip, write_config

SCRAPE_EVERY = 15.0


def read_master(pid_file: Path) -> int:
    """The master process named by a server's pid file (Postfix, Dovecot)."""
    return int(pid_file.read_text().split()[0])


def probes_for(stack: MailStack, tmp: Path, addresses: list[str]) -> list[dict[str, Any]]:
    return [
        roundtrip(stack, tmp, f"p-{a.split('@')[0]}", a, protocol="imap", receive_tls="implicit")
        for a in addresses
    ]


def runs_in(log: Path, since: float, until: float) -> list[dict[str, Any]]:
    """probe_run log lines whose timestamp falls in [since, until) (unix time)."""
    out = []
    for rec in json_lines(log):
        if rec.get("event") != "probe_run":
            continue
        ts = time.mktime(time.strptime(rec["timestamp"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
        if since <= ts < until:
            out.append(rec)
    return out


def lags(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("mailcanary_scheduler_lag_seconds{"):
            labels, value = line.rsplit(" ", 1)
            out[labels] = float(value)
    return out


def anchor(stack: MailStack, tmp: Path, duration: float) -> float:
    """Delivery p50 (s) of one probe alone (NaN with no anchor run)."""
    tmp.mkdir()
    if duration <= 0:
        return float("nan")
    config = write_config(
        tmp, probes_for(stack, tmp, [stack.test_addresses[0]]), interval="5s", timeout="30s"
    )
    port = free_port()
    log = tmp / "mailcanary.log"
    proc = start_logged(mailcanary_argv(config, port), log)
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready")
        t0 = time.time()
        time.sleep(duration)
    finally:
        stop(proc)
    deliveries = [r["delivery_seconds"] for r in runs_in(log, t0, time.time()) if "delivery_seconds" in r]
    return median(deliveries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--duration", type=float, default=300.0, help="measured seconds after start-up")
    parser.add_argument("--anchor-duration", type=float, default=60.0, help="0: no anchor run")
    parser.add_argument("--keep", type=Path, help="copy the daemon's log here (for a later look)")
    parser.add_argument(
        "--start-second",
        type=float,
        help="start the daemon at this second of the minute (the start-up schedule depends on it)",
    )
    args = parser.parse_args()
    with (
        MailStack(make_root(), users=numbered_users(args.probes)) as stack,
        tempfile.TemporaryDirectory() as d,
    ):
        tmp = Path(d)
        print(
            f"stack up with {args.probes} mailboxes; anchor: one probe for {args.anchor_duration:g}s",
            flush=True,
        )
        single_p50 = anchor(stack, tmp / "anchor", args.anchor_duration)
        print(f"single probe delivery p50 {single_p50 * 1000:.0f} ms; now {args.probes} probes", flush=True)
        many = tmp / "many"
        many.mkdir()
        config = write_config(
            many,
            probes_for(stack, many, list(stack.test_addresses)),
            interval=f"{args.interval:g}s",
            timeout="30s",
        )
        port = free_port()
        log = many / "mailcanary.log"
        dovecot_log = stack.log_dir / "dovecot.log"
        limit_hits_before = _limit_hits(dovecot_log)
        if args.start_second is not None:
            time.sleep((args.start_second - time.time()) % 60)
        proc = start_logged(mailcanary_argv(config, port), log)
        rss_peak = 0
        lag_values: list[float] = []
        scrape_ms: list[float] = []
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/-/ready", timeout=120)
            time.sleep(args.interval)  # every probe reaches its first slot
            servers = [read_master(stack.postfix.pid_file), read_master(stack.dovecot.pid_file)]
            t0, cpu0 = time.time(), cpu_seconds(proc.pid)
            servers0 = [tree_cpu_seconds(pid) for pid in servers]
            seen: dict[str, float] = {}
            while time.time() - t0 < args.duration:
                s0 = time.perf_counter()
                text = scrape(f"{base}/metrics").decode()  # as Prometheus asks: OpenMetrics, gzip
                scrape_ms.append((time.perf_counter() - s0) * 1000)
                for key, value in lags(text).items():
                    if seen.get(key) != value:  # a new run's lag
                        lag_values.append(value)
                        seen[key] = value
                rss_peak = max(rss_peak, rss_bytes(proc.pid))
                time.sleep(SCRAPE_EVERY)
            t1, cpu1 = time.time(), cpu_seconds(proc.pid)
            servers1 = [tree_cpu_seconds(pid) for pid in servers]
        finally:
            stop(proc, timeout=30)
        runs = runs_in(log, t0, t1)
        ok = [r for r in runs if r.get("outcome") == "success"]
        failures: dict[str, int] = {}
        for r in runs:
            if r.get("outcome") != "success":
                failures[r.get("outcome", "?")] = failures.get(r.get("outcome", "?"), 0) + 1
        deliveries = [r["delivery_seconds"] for r in ok if "delivery_seconds" in r]
        limit_hits = _limit_hits(dovecot_log) - limit_hits_before
        records = json_lines(log)
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(log, args.keep / "mailcanary.log")
    p50, p99 = median(deliveries), percentile(deliveries, 99)
    durations = [float(r.get("duration_seconds", 0.0)) for r in runs]
    queues = [float(r.get("queue_seconds", r.get("phases", {}).get("queue", 0.0))) for r in runs]
    cpu_share = (cpu1 - cpu0) / (t1 - t0) * 100
    postfix_share, dovecot_share = (
        (b - a) / (t1 - t0) * 100 for a, b in zip(servers0, servers1, strict=True)
    )
    success = len(ok) / len(runs) * 100 if runs else 0.0
    expected = args.probes * (t1 - t0) / args.interval
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {load()}")
    print(
        f"{len(runs)} runs in {t1 - t0:.0f} s (expected ~{expected:.0f}); "
        f"failures by reason: {failures or 'none'}; "
        f"Dovecot 'process_limit reached' lines: {limit_hits}; scrape median {median(scrape_ms):.0f} ms"
    )
    rows = [
        (
            f"successful runs, {args.probes} probes at {args.interval:g} s",
            f"{success:.2f} %",
            "",
            "",
            "≥ 99.9 %",
        ),
        ("scheduler lag p99", f"{percentile(lag_values, 99) * 1000:.0f} ms", "", "", "≤ 1 s"),
        (
            "run duration p50 / p99",
            f"{median(durations) * 1000:.0f} / {percentile(durations, 99) * 1000:.0f} ms",
            "",
            "",
            "p99 ≤ 2 s unless the mail system is slow",
        ),
        (
            "… of which queue (session slots) p50 / p99",
            f"{median(queues) * 1000:.0f} / {percentile(queues, 99) * 1000:.0f} ms",
            "",
            "",
            "",
        ),
        (
            "delivery p50 / p99",
            f"{p50 * 1000:.0f} / {p99 * 1000:.0f} ms",
            f"{single_p50 * 1000:.0f} ms (one probe alone)",
            f"{p50 / single_p50:.2f}x",
            "p50 ≤ 2x one probe's",
        ),
        (
            "mailcanary CPU",
            f"{cpu_share:.1f} % of one core",
            f"Dovecot {dovecot_share:.1f} %, Postfix {postfix_share:.1f} % (same window)",
            f"{cpu_share / dovecot_share:.2f}x Dovecot's" if dovecot_share > 0 else "",
            "≤ 20 %",
        ),
        ("mailcanary peak RSS", f"{rss_peak / 2**20:.0f} MB", "", "", "≤ 120 MB"),
    ]
    print(table(rows))
    print(start_rates(records, args.interval))
    held = [d - q for d, q in zip(durations, queues, strict=True)]
    print(
        f"sessions the receiving side needs at the steady rate: {args.probes / args.interval:.1f} runs/s x "
        f"{sum(held) / len(held) if held else float('nan'):.2f} s held (duration minus queue, mean) = "
        f"{args.probes / args.interval * (sum(held) / len(held) if held else float('nan')):.0f} of "
        f"max_sessions 50 (above 50 runs queue and the queue does not drain)"
    )
    print(breakdown(runs))
    return 0


def _unix(stamp: str) -> float:
    return (
        time.mktime(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
        - time.timezone
        + float("0" + stamp[19:].rstrip("Z"))
    )


def start_rates(records: list[dict[str, Any]], interval: float) -> str:
    """Runs started per second (finish time minus duration) in 10 s bins over the first two intervals
    after the daemon started, and the busiest 10 s later on: a burst at start-up shows here."""
    started = next((_unix(r["timestamp"]) for r in records if r.get("event") == "started"), None)
    if started is None:
        return "no 'started' line"
    bins: dict[int, int] = {}
    for r in records:
        if r.get("event") == "probe_run":
            k = int((_unix(r["timestamp"]) - float(r.get("duration_seconds", 0.0)) - started) // 10)
            bins[k] = bins.get(k, 0) + 1
    early = range(int(2 * interval // 10))
    later = [v for k, v in bins.items() if k >= len(early)]
    return (
        "runs started per second after the daemon started, 10 s bins: "
        + " ".join(f"{k * 10}s:{bins.get(k, 0) / 10:.0f}" for k in early)
        + (f"; busiest 10 s later {max(later) / 10:.0f}/s" if later else "")
    )


OTHER = "(not in a phase)"


def phases_of(run: dict[str, Any]) -> dict[str, float]:
    """A run's phases as logged, plus what its duration holds outside every phase (the ledger's
    transactions, the bookkeeping between phases, time the loop spent elsewhere)."""
    phases = {k: float(v) for k, v in run.get("phases", {}).items()}
    phases[OTHER] = max(0.0, float(run.get("duration_seconds", 0.0)) - sum(phases.values()))
    return phases


def breakdown(runs: list[dict[str, Any]]) -> str:
    """Where run duration goes: p50/p99 of the duration and of each phase over all runs, and the
    slowest 1 % of runs phase by phase (their mean) against the median run (each phase's median)."""
    if not runs:
        return "no runs"
    durations = [float(r.get("duration_seconds", 0.0)) for r in runs]
    per_run = [phases_of(r) for r in runs]
    names = sorted({k for p in per_run for k in p}, key=lambda k: -sum(p.get(k, 0.0) for p in per_run))
    slow_n = max(1, len(runs) // 100)
    order = sorted(range(len(runs)), key=lambda i: durations[i], reverse=True)
    slow = [per_run[i] for i in order[:slow_n]]
    lines = [
        f"run duration over {len(runs)} runs: p50 {median(durations) * 1000:.0f} ms, "
        f"p99 {percentile(durations, 99) * 1000:.0f} ms, max {max(durations) * 1000:.0f} ms",
        "",
        f"| phase | p50 | p99 | max | slowest 1 % ({slow_n} runs), mean |",
        "|---|---|---|---|---|",
    ]
    for name in ["(duration)", *names]:
        vals = durations if name == "(duration)" else [p.get(name, 0.0) for p in per_run]
        slow_vals = (
            [durations[i] for i in order[:slow_n]]
            if name == "(duration)"
            else [p.get(name, 0.0) for p in slow]
        )
        lines.append(
            f"| {name} | {median(vals) * 1000:.1f} ms | {percentile(vals, 99) * 1000:.1f} ms | "
            f"{max(vals) * 1000:.1f} ms | {sum(slow_vals) / len(slow_vals) * 1000:.1f} ms |"
        )
    lines += ["", "slowest runs (finish time, probe, duration, its three longest phases):"]
    for i in order[: min(10, slow_n)]:
        top = sorted(per_run[i].items(), key=lambda kv: -kv[1])[:3]
        lines.append(
            f"  {runs[i].get('timestamp', '?')[11:23]} {runs[i].get('probe')} {durations[i] * 1000:.0f} ms: "
            + ", ".join(f"{k} {v * 1000:.0f}" for k, v in top)
        )
    return "\n".join(lines)


def _limit_hits(path: Path) -> int:
    try:
        return path.read_text(errors="replace").count("process_limit")
    except OSError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
