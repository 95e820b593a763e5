"""The reports kind: time and memory to ingest 1,000 report mails over IMAP, and the series of a
realistic month.

    python -m bench.reports [--reports 1000] [--orgs 20] [--days 30]

1. ``--reports`` report mails (half TLS-RPT gzip, half DMARC zip, 10 orgs per kind, 3 policies or
   20 records each) are put into one mailbox of a real Dovecot (tests/mailstack), then one run of the
   kind reads them all over IMAPS (``max_messages`` = all): wall time, CPU of this process, the peak of
   Python's heap (tracemalloc) and the RSS growth. A second run (nothing new) shows the cost of a run
   that finds the cursor at the end.
2. A month: ``--orgs`` orgs x ``--days`` days x 2 kinds (one report per org, day and kind: 1,200 by
   default) counted into one state, then the families rendered: how many series (each label set one
   series) and the state file's size. Series do not grow with days: counters aggregate.

The figure is printed; nothing is asserted (bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench._common import load
from exporter.kinds.reports import families as report_families
from exporter.run.results import ProbeStats, RunResult
from probes.auth.credentials import Credentials
from probes.clients.imap import IMAPSettings
from probes.recorder import Recorder
from probes.reports import Limits, ReportsResult, ReportsSettings, ReportState, Rules, ingest, probe_reports
from probes.wire.net import Endpoint, TLSSettings
from tests.mailstack import MailStack, make_root
from tests.support.reports import (
    DAY,
    Policy,
    Row,
    dmarc_mail,
    dmarc_xml,
    every_result_type,
    tlsrpt,
    tlsrpt_mail,
)

RULES = Rules(
    domains=("example.test",),
    senders=(("ourmta", (ipaddress.ip_network("192.0.2.0/24"),)),),
    mx_hosts=("mx.example.test",),
    window=60 * DAY,
)


def report_mail(i: int, day: float, orgs: int) -> bytes:
    org = f"Org {i % orgs}"
    if i % 2 == 0:
        doc = tlsrpt(
            org,
            f"t-{i}",
            day,
            [
                Policy(ok=1000, failures=every_result_type()),
                Policy(type="tlsa", ok=50),
                Policy(type="no-policy-found", ok=3),
            ],
        )
        return tlsrpt_mail(doc)
    rows = [Row(f"192.0.2.{j}", 10 + j) for j in range(15)] + [
        Row(f"203.0.113.{j}", 2, "reject", "fail", "fail") for j in range(5)
    ]
    return dmarc_mail(dmarc_xml(org.lower().replace(" ", ""), f"d-{i}", day, rows), how="zip")


def settings(stack: MailStack, address: str, state: Path, n: int) -> ReportsSettings:
    ep = Endpoint(
        host=stack.host,
        port=stack.imaps_port,
        tls_mode="implicit",
        tls=TLSSettings(ca_file=str(stack.ca_file), server_name=stack.server_name),
    )
    return ReportsSettings(
        name="bench",
        imap=IMAPSettings(
            endpoint=ep, credentials=Credentials(address, stack.password(address)), use_idle=False
        ),
        folders=("INBOX",),
        kinds=frozenset({"tlsrpt", "dmarc"}),
        rules=RULES,
        limits=Limits(),
        state_path=state,
        max_messages=n,
    )


async def ingest_run(st: ReportsSettings) -> tuple[ReportsResult, float, float, int]:
    t0, c0 = time.perf_counter(), time.process_time()
    tracemalloc.start()
    result = await probe_reports(st, Recorder())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, time.perf_counter() - t0, time.process_time() - c0, peak


def month(orgs: int, days: int) -> tuple[int, int, int]:
    """(reports, series, state bytes) of ``orgs`` x ``days`` x 2 kinds."""
    state = ReportState()
    start = (int(time.time()) // DAY - days) * DAY
    st = ReportsSettings(
        name="m",
        imap=IMAPSettings(endpoint=Endpoint(host="x", port=1), credentials=Credentials("u", "p")),
        folders=("INBOX",),
        kinds=frozenset({"tlsrpt", "dmarc"}),
        rules=RULES,
        limits=Limits(),
        state_path=Path("/nonexistent"),
    )
    res = ReportsResult(state=state)
    now = time.time()
    for d in range(days):
        for o in range(orgs):
            for k in range(2):
                ingest(_month_mail(o, d, k, start), state, st, res, now, "m")
    stats = ProbeStats()
    stats.last = RunResult("m", True, "success", "ok", now, 1.0, {}, detail=ReportsResult(state=state))
    series = sum(len(f.samples) for f in report_families({"m": stats}, ["m"]))
    return sum(state.ingested.values()), series, len(state.to_json())


def _month_mail(org: int, day: int, kind: int, start: float) -> bytes:
    when = start + day * DAY
    name = f"Org {org}"
    if kind == 0:
        return tlsrpt_mail(
            tlsrpt(name, f"t-{org}-{day}", when, [Policy(ok=1000, failures=every_result_type())])
        )
    rows = [
        Row("192.0.2.1", 100),
        Row("192.0.2.2", 5, "quarantine", "fail", "fail"),
        Row(f"203.0.113.{day}", 3, "reject", "fail", "fail"),
    ]
    return dmarc_mail(dmarc_xml(name, f"d-{org}-{day}", when, rows), how="zip")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reports", type=int, default=1000)
    ap.add_argument("--orgs", type=int, default=20)
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    print(load())
    day = (int(time.time()) // DAY - 2) * DAY
    with MailStack(make_root()) as stack, tempfile.TemporaryDirectory() as tmp:
        address = stack.test_addresses[0]
        stack.clear(address)
        size = 0
        for i in range(args.reports):
            raw = report_mail(i, day, 10)
            size += len(raw)
            stack.inject(address, raw)
        st = settings(stack, address, Path(tmp) / "reports-bench.json", args.reports)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result, wall, cpu, peak = asyncio.run(ingest_run(st))
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        counted = len(result.counted)
        print(
            f"ingest {args.reports} report mails ({size / 1e6:.1f} MB over IMAPS): {counted} counted, "
            f"{sum(result.errors.values())} errors; wall {wall:.2f} s "
            f"({1000 * wall / args.reports:.2f} ms per report), CPU {cpu:.2f} s, "
            f"Python heap peak {peak / 1e6:.1f} MB, max RSS growth {(rss1 - rss0) / 1024:.1f} MB"
        )
        again, wall2, cpu2, _ = asyncio.run(ingest_run(st))
        print(
            f"a second run, nothing new: wall {wall2 * 1000:.0f} ms, CPU {cpu2 * 1000:.0f} ms, "
            f"{again.messages} mails read"
        )
        stack.clear(address)
    reports, series, state_bytes = month(args.orgs, args.days)
    print(
        f"a month: {args.orgs} orgs x {args.days} days x 2 kinds = {reports} reports -> {series} series "
        f"of the reports kind for one entry; state file {state_bytes / 1e3:.0f} kB"
    )
    print(
        json.dumps(
            {
                "reports": args.reports,
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "heap_peak_mb": round(peak / 1e6, 1),
                "month_series": series,
            }
        )
    )


if __name__ == "__main__":
    main()
