"""GET /metrics with 1,000 probes, and /-/healthy while a scrape is in flight.

    python -m bench.metrics_scrape [--probes 1000] [--scrapes 50] [--accept prometheus|text]

Runs mailcanary's HTTP server (exporter.web.server, aiohttp, as the daemon does) in a child process whose
result store holds ``--probes`` round trips with full results (every phase, the histogram, TLS facts
for two endpoints each: the ~70 series of a real probe), while runs keep finishing at the rate 1,000
probes at 60 s give (17 a second, each re-rendering its probe). The anchor is prometheus_client's
renderer for the format asked, over the collector, on the event loop at scrape time (route
``/metrics-reference``), in the same run on the same data. Scrapes alternate between the two. Every
request sends Prometheus' own ``Accept`` header (OpenMetrics first), as a real scrape does; ``--accept
text`` measures the text format instead. Prints the median scrape time of each, the ratio, and the
slowest ``/-/healthy`` answer seen while scrapes were in flight, against the targets (≤ 50 ms median;
healthy within 50 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import threading
import time
import urllib.request

from bench._common import PROMETHEUS_ACCEPT, ROOT, free_port, load, median, percentile, table, wait_http

ACCEPT = {"prometheus": PROMETHEUS_ACCEPT, "text": "text/plain;version=0.0.4"}


def _results(name: str, i: int):  # type: ignore[no-untyped-def]
    from exporter.run.results import RunResult
    from tests.support.tlsfacts import facts

    phases = {
        "queue": 0.0,
        "smtp_connect": 0.001,
        "smtp_banner": 0.002,
        "smtp_tls": 0.004,
        "smtp_ehlo": 0.001,
        "smtp_auth": 0.003,
        "smtp_send": 0.01,
        "receive_connect": 0.001,
        "receive_tls": 0.004,
        "receive_banner": 0.001,
        "receive_login": 0.01,
        "receive_sweep": 0.002,
        "receive_wait": 0.05 + (i % 7) / 100,
        "receive_fetch": 0.002,
        "receive_delete": 0.003,
    }
    return RunResult(
        probe=name,
        success=True,
        reason="success",
        message="ok",
        started=time.time(),
        duration=0.2,
        phases=phases,
        delivery=0.05 + (i % 7) / 100,
        tls={
            "127.0.0.1:587": facts("127.0.0.1:587", "smtp"),
            "127.0.0.1:993": facts("127.0.0.1:993", "imap"),
        },
    )


def serve(port: int, probes: int) -> None:
    """The child: a store of ``probes`` round trips behind exporter.web.server, runs finishing meanwhile."""
    from aiohttp import web

    from exporter.metrics.collector import ExporterState, SeriesCache, build_registry, runtime_registry
    from exporter.run.results import ResultStore
    from exporter.web.server import HTTPServer, render

    async def main() -> None:
        store = ResultStore()
        names = [f"user{i:04d}" for i in range(probes)]
        state = ExporterState(probes=dict.fromkeys(names, "roundtrip"), config_digest="bench")
        cache = SeriesCache(store, state, runtime_registry())
        store.ensure(names)
        for i, name in enumerate(names):
            for _ in range(3):
                store.record(_results(name, i))
            store.note_lag(name, 0.01)
        registry = build_registry(store, state)

        async def reference(request: web.Request) -> web.Response:
            # prometheus_client's renderer for the format asked, here, on the loop (the anchor)
            return render(registry, request.headers.get("Accept", ""))

        http = HTTPServer(
            registry,
            ready=lambda: True,
            extra_routes=[web.get("/metrics-reference", reference)],
            metrics_body=cache.parts,
        )
        await http.start(f"127.0.0.1:{port}")

        async def runs() -> None:
            i = 0
            while True:
                await asyncio.sleep(1 / 17)
                name = random.choice(names)
                store.note_lag(name, 0.02)
                store.record(_results(name, i))
                i += 1

        task = asyncio.create_task(runs())
        await asyncio.Event().wait()
        task.cancel()

    asyncio.run(main())


ACCEPT_HEADER = PROMETHEUS_ACCEPT


def get(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": ACCEPT_HEADER})
    with urllib.request.urlopen(request, timeout=60) as resp:
        return bytes(resp.read())


def timed_get(url: str) -> float:
    t0 = time.perf_counter()
    get(url)
    return time.perf_counter() - t0


def healthy_during(scrape_url: str, healthy_url: str, scrapes: int) -> list[float]:
    """/-/healthy latencies, asked every 5 ms while ``scrapes`` scrapes run one after another."""
    done = threading.Event()
    lat: list[float] = []

    def scraper() -> None:
        for _ in range(scrapes):
            timed_get(scrape_url)
        done.set()

    t = threading.Thread(target=scraper)
    t.start()
    while not done.is_set():
        lat.append(timed_get(healthy_url))
        time.sleep(0.005)
    t.join()
    return lat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=50, help="scrapes of each path")
    parser.add_argument("--accept", choices=sorted(ACCEPT), default="prometheus", help="Accept header sent")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: the child
    args = parser.parse_args()
    global ACCEPT_HEADER
    ACCEPT_HEADER = ACCEPT[args.accept]
    if args.serve:
        serve(args.serve, args.probes)
        return 0
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.metrics_scrape", "--serve", str(port), "--probes", str(args.probes)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/-/healthy", timeout=120)
        new, old = f"{base}/metrics", f"{base}/metrics-reference"
        body, ref = get(new), get(old)
        lines = body.count(b"\n")
        ours: list[float] = []
        theirs: list[float] = []
        for _ in range(args.scrapes):
            ours.append(timed_get(new))
            theirs.append(timed_get(old))
        h_ours = healthy_during(new, f"{base}/-/healthy", max(5, args.scrapes // 5))
        h_theirs = healthy_during(old, f"{base}/-/healthy", max(5, args.scrapes // 5))
    finally:
        child.terminate()
        child.wait(10)
    same = "the same series" if len(body) > 0.9 * len(ref) else "DIFFERENT sizes"
    rows = [
        (
            f"GET /metrics, {args.probes} probes, Accept: {args.accept} "
            f"({lines} lines, {len(body) / 1e6:.1f} MB; {same} as anchor)",
            f"{median(ours) * 1000:.1f} ms median",
            f"{median(theirs) * 1000:.1f} ms",
            f"{median(theirs) / median(ours):.0f}x faster",
            "≤ 50 ms median",
        ),
        (
            "/-/healthy while a scrape is in flight (slowest; p99)",
            f"{max(h_ours) * 1000:.1f} ms; {percentile(h_ours, 99) * 1000:.1f} ms",
            f"{max(h_theirs) * 1000:.1f} ms; {percentile(h_theirs, 99) * 1000:.1f} ms",
            f"{max(h_theirs) / max(h_ours):.0f}x",
            "within 50 ms",
        ),
    ]
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {load()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
