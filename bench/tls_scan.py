"""What issue 21's TLS scan costs: connections and CPU per full check, mailcanary against testssl.sh and
sslscan on the same endpoints in the same run.

    python -m bench.tls_scan [--runs 5] [--endpoints baseline-smtp,legacy-pop3,...]

Starts the real Postfix + Dovecot of tests/mailstack and the weak servers of the TLS matrix
(tests/support/weakservers.py: Postfix/Dovecot variants, gnutls-serv) on loopback (root). In front of each
chosen endpoint runs a counting relay (tests/support/nsrelay.py) on a 127.0.0.5x address: every tool
scans through it, so the connections are counted at the server's side, the same way for all three.

- mailcanary: ``probes.tls.scan.scan`` in this process, ``--runs`` times per endpoint; CPU is this
  process's user + system time around the scans (no interpreter start-up: a daemon pays none per check).
- testssl.sh 3.0.8 with the checks that report what our scan reports (``-p -s -4 -f -S -R -C``), once
  per endpoint; sslscan 2.0 (its default run), ``--runs`` times. Their CPU is their whole process tree's
  (``/usr/bin/time``): bash, openssl and sslscan are what a user of those tools pays per check.

Prints per endpoint: connections and CPU per full check for each tool, the ratios, and the load.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import tempfile
import time
from pathlib import Path

from bench._common import load, median, table
from probes.recorder import Recorder
from probes.tls.audit import TLSCheckSettings
from probes.tls.scan import scan
from probes.wire.net import Endpoint, TLSSettings
from tests.mailstack import SERVER_NAME, MailStack, make_root
from tests.support import oracle
from tests.support.weakservers import (
    Target,
    loopback_address,
    start_relay,
    stop_process,
    wait_relay,
    weak_servers,
)

TESTSSL_CHECKS = ("-p", "-s", "-4", "-f", "-S", "-R", "-C")
DEFAULT_ENDPOINTS = "baseline-smtp,baseline-imap,legacy-pop3,nofs-smtp,rc4-tls"


def _cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _count(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def _settings(t: Target) -> TLSCheckSettings:
    protocol = "tcp" if t.protocol == "tls" else "imap" if t.protocol == "imaps" else t.protocol
    ep = Endpoint(t.host, t.port, tls_mode=t.tls_mode, tls=TLSSettings(server_name=SERVER_NAME))  # type: ignore[arg-type]
    return TLSCheckSettings(ep, protocol, timeout=15.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="mailcanary and sslscan runs per endpoint")
    parser.add_argument("--endpoints", default=DEFAULT_ENDPOINTS, help="weakness-protocol ids")
    args = parser.parse_args()
    wanted = args.endpoints.split(",")
    rows: list[tuple[str, str, str, str, str]] = []
    detail: list[str] = []
    with MailStack(make_root()) as stack, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        with weak_servers(stack, tmp / "servers") as ws:
            for i, tid in enumerate(wanted):
                real = next(t for t in ws.targets if t.id == tid)
                host, port = loopback_address(50 + i % 10)
                counter, log = tmp / f"{tid}.count", tmp / f"{tid}.relay.log"
                relay = start_relay((host, port), counter, log, to=(real.host, real.port))
                try:
                    wait_relay(relay, log)
                    via = Target(real.weak, real.protocol, host, port, real.software)
                    rows += measure(via, args.runs, counter, tmp, detail)
                finally:
                    stop_process(relay)
    print("\n".join(detail))
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {load()}")
    print(table(rows))
    return 0


def measure(
    t: Target, runs: int, counter: Path, tmp: Path, detail: list[str]
) -> list[tuple[str, str, str, str, str]]:
    # mailcanary
    conns, cpus = [], []
    for _ in range(runs):
        before, cpu0 = _count(counter), _cpu_self()
        facts = asyncio.run(scan(_settings(t), Recorder(transcript=[])))
        cpus.append(_cpu_self() - cpu0)
        conns.append(_count(counter) - before)
        if facts.connections != conns[-1]:
            detail.append(f"{t.id}: scan counted {facts.connections}, the relay {conns[-1]}")
    ours_conn, ours_cpu = median(conns), median(cpus)
    # testssl.sh, once (20-60 s a run)
    before = _count(counter)
    ts = asyncio.run(oracle.testssl(t, TESTSSL_CHECKS, tmp / "oracle", None))
    ts_conn = _count(counter) - before
    # sslscan
    s_conns, s_cpus = [], []
    for _ in range(runs):
        before = _count(counter)
        ss = asyncio.run(oracle.sslscan(t, tmp / "oracle"))
        s_conns.append(_count(counter) - before)
        s_cpus.append(ss.cpu_seconds)
    ss_conn, ss_cpu = median(s_conns), median(s_cpus)
    detail.append(
        f"{t.id}: mailcanary {conns} connections, CPU {[round(c * 1000) for c in cpus]} ms; "
        f"testssl {ts_conn} connections, CPU {ts.cpu_seconds:.1f} s, wall {ts.seconds:.0f} s; "
        f"sslscan {s_conns} connections, CPU {[round(c * 1000) for c in s_cpus]} ms"
    )
    print(detail[-1], flush=True)

    def ratio(a: float, b: float) -> str:
        return f"{b / a:.0f}x fewer" if a and b >= a else f"{a / b:.1f}x more" if b else "n/a"

    return [
        (
            f"connections per full check, {t.id} (testssl.sh; sslscan {ss_conn:.0f})",
            f"{ours_conn:.0f}",
            f"{ts_conn}",
            ratio(ours_conn, ts_conn),
            "≤ 15",
        ),
        (
            f"CPU per full check, {t.id} (testssl.sh; sslscan {ss_cpu * 1000:.0f} ms)",
            f"{ours_cpu * 1000:.0f} ms",
            f"{ts.cpu_seconds * 1000:.0f} ms",
            ratio(ours_cpu, ts.cpu_seconds),
            "far below testssl.sh",
        ),
    ]


if __name__ == "__main__":
    sys.exit(main())
