"""GET /metrics with 1,000 probes: plain and gzip, on loopback and over a slow link, and what a real
Prometheus pays to scrape it; /-/healthy while a scrape is in flight.

    python -m bench.metrics_scrape [--probes 1000] [--scrapes 50] [--accept prometheus|text]
        [--slow-scrapes 3] [--prometheus-scrapes 10] [--prometheus-interval 3] [--anchor-interval 10]
        [--gzip-level 1]

Runs mailcanary's HTTP server (exporter.web.server, aiohttp, as the daemon does) in a child process whose
result store holds ``--probes`` round trips with full results (every phase, the histogram, TLS facts
for two endpoints each: the ~70 series of a real probe), while runs keep finishing at the rate 1,000
probes at 60 s give (17 a second, each re-rendering its probe: every scrape sees a new generation, so
the compressed copy of the pre-rendered part is made again for nearly every scrape). The anchor is
prometheus_client's renderer for the format asked, over the collector, on the event loop at scrape time
(route ``/metrics-reference``), gzip-compressed as prometheus_client's own handler does when asked
(``gzip.compress``, level 9), in the same run on the same data. Every request sends Prometheus' own
``Accept`` header (OpenMetrics first), as a real scrape does; ``--accept text`` measures the text format.

1. Loopback, interleaved: ours plain, ours gzip at level 1 and at level 6 (``--gzip-level`` is what
   ``/metrics`` uses; the other level is a bench route), the anchor plain and gzip. Each figure is the
   client's time to the whole body, inflated as Prometheus does, the bytes on the wire, and the server's
   CPU per scrape (the child's, so 17 runs a second are in it for every variant alike).
2. A slow link: the same over a relay on 127.0.0.71 that paces each direction to 10 Mbit/s and delays it
   by 10 ms (20 ms RTT), ``--slow-scrapes`` of each (0: skipped).
3. A real Prometheus (Debian's ``/usr/bin/prometheus``, on 127.0.0.72, a temporary data dir) scraping
   each of four targets in turn, ``--prometheus-scrapes`` scrapes at ``--prometheus-interval``: ours with
   gzip (what Prometheus asks for) and without (a bench route that ignores Accept-Encoding), the anchor
   with and without; ``scrape_duration_seconds`` and ``scrape_samples_scraped`` read from its HTTP API
   (0: skipped).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

from bench._common import (
    PROMETHEUS_ACCEPT,
    ROOT,
    cpu_seconds,
    free_port,
    load,
    median,
    percentile,
    table,
    wait_http,
)

ACCEPT = {"prometheus": PROMETHEUS_ACCEPT, "text": "text/plain;version=0.0.4"}
RELAY_HOST, PROMETHEUS_HOST = "127.0.0.71", "127.0.0.72"
SLOW_RATE = 10e6  # bit/s, each direction
SLOW_DELAY = 0.010  # s, each direction (20 ms RTT)
OTHER_LEVEL = {1: 6, 6: 1}


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


def filled_store(probes: int):  # type: ignore[no-untyped-def]
    """A result store of ``probes`` round trips with full results (3 runs each) and its SeriesCache:
    the /metrics of a 1,000-probe daemon (also bench.scrape_memory's)."""
    from exporter.metrics.collector import ExporterState, SeriesCache, runtime_registry
    from exporter.run.results import ResultStore

    store = ResultStore()
    names = [f"user{i:04d}" for i in range(probes)]
    state = ExporterState(probes=dict.fromkeys(names, "roundtrip"), config_digest="bench")
    cache = SeriesCache(store, state, runtime_registry())
    store.ensure(names)
    for i, name in enumerate(names):
        for _ in range(3):
            store.record(_results(name, i))
        store.note_lag(name, 0.01)
    return store, state, cache


def serve(port: int, probes: int, level: int) -> None:
    """The child: a store of ``probes`` round trips behind exporter.web.server, runs finishing meanwhile."""
    from aiohttp import web
    from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE

    from exporter.metrics.collector import build_registry
    from exporter.web.gzipbody import GzipBodies, accepts_gzip, gzip_bytes
    from exporter.web.server import HTTPServer, render, wants_openmetrics

    async def main() -> None:
        store, state, cache = filled_store(probes)
        names = store.names()
        registry = build_registry(store, state)

        def reference_response(request: web.Request, encoding: str) -> web.Response:
            # prometheus_client's renderer for the format asked, here, on the loop (the anchor), and
            # gzip.compress as prometheus_client's handler does it (level 9) when asked
            resp = render(registry, request.headers.get("Accept", ""))
            if accepts_gzip(encoding):
                assert isinstance(resp.body, bytes)
                resp.body = gzip.compress(resp.body)
                resp.headers["Content-Encoding"] = "gzip"
            return resp

        async def reference(request: web.Request) -> web.Response:
            return reference_response(request, request.headers.get("Accept-Encoding", ""))

        async def reference_identity(request: web.Request) -> web.Response:
            return reference_response(request, "identity")

        other = GzipBodies(OTHER_LEVEL[level])

        async def other_level(request: web.Request) -> web.Response:
            parts = await cache.parts(wants_openmetrics(request.headers.get("Accept", "")))
            resp = web.Response(body=await other.body(parts))
            resp.headers["Content-Encoding"] = "gzip"
            return resp

        # The floor: one body captured now, served as is (gzip made once, ahead): what Prometheus pays
        # for the bytes alone, nothing rendered or compressed at scrape time.
        static_body = (await cache.parts(True)).body()
        static_gzip = gzip_bytes(static_body, level)

        async def static(request: web.Request) -> web.Response:
            gzipped = accepts_gzip(request.headers.get("Accept-Encoding", ""))
            resp = web.Response(body=static_gzip if gzipped else static_body)
            resp.headers["Content-Type"] = OPENMETRICS_TYPE
            if gzipped:
                resp.headers["Content-Encoding"] = "gzip"
            return resp

        async def static_identity(request: web.Request) -> web.Response:
            resp = web.Response(body=static_body)
            resp.headers["Content-Type"] = OPENMETRICS_TYPE
            return resp

        async def stats(request: web.Request) -> web.Response:  # compressed copies made by /metrics
            return web.Response(text=str(http.gzip.deflated))

        http: HTTPServer

        async def identity(request: web.Request) -> web.Response:  # ours, Accept-Encoding ignored
            return await http.metrics_response(request.headers.get("Accept", ""), "identity")

        http = HTTPServer(
            registry,
            ready=lambda: True,
            extra_routes=[
                web.get("/metrics-reference", reference),
                web.get("/metrics-reference-identity", reference_identity),
                web.get("/metrics-identity", identity),
                web.get("/metrics-other-level", other_level),
                web.get("/metrics-static", static),
                web.get("/metrics-static-identity", static_identity),
                web.get("/bench-gzip-deflated", stats),
            ],
            metrics_body=cache.parts,
        )
        http.gzip = GzipBodies(level)
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


def relay(listen_port: int, target_port: int) -> None:
    """The child: a TCP relay on RELAY_HOST to 127.0.0.1, each direction paced to SLOW_RATE and delayed
    by SLOW_DELAY (a queue of 64 chunks of 16 KiB at most: bounded, like a router's buffer)."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)

        async def pump() -> None:
            while data := await reader.read(16384):
                await queue.put((loop.time() + SLOW_DELAY, data))
            await queue.put((loop.time() + SLOW_DELAY, b""))

        pumping = asyncio.create_task(pump())
        free = 0.0  # when the link has sent what it was given
        try:
            while True:
                due, data = await queue.get()
                start = max(due, free)
                if start > loop.time():
                    await asyncio.sleep(start - loop.time())
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                free = max(start, loop.time()) + len(data) * 8 / SLOW_RATE
        finally:
            pumping.cancel()
            writer.close()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

    async def main() -> None:
        server = await asyncio.start_server(connection, RELAY_HOST, listen_port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class Fetched:
    def __init__(self, seconds: float, wire: int, body: bytes, cpu: float) -> None:
        self.seconds, self.wire, self.body, self.cpu = seconds, wire, body, cpu


def fetch(url: str, accept: str, gzipped: bool, pid: int | None = None) -> Fetched:
    """One scrape as Prometheus makes it: the whole body read and, when gzip, inflated (timed with it);
    the server's CPU over the request when ``pid`` is given."""
    headers = {"Accept": accept, "Accept-Encoding": "gzip" if gzipped else "identity"}
    request = urllib.request.Request(url, headers=headers)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    t0 = time.perf_counter()
    with urllib.request.urlopen(request, timeout=120) as resp:
        wire = bytes(resp.read())
        encoding = resp.headers.get("Content-Encoding")
    body = zlib.decompress(wire, 16 + zlib.MAX_WBITS) if encoding == "gzip" else wire
    seconds = time.perf_counter() - t0
    if gzipped != (encoding == "gzip"):
        raise SystemExit(f"{url}: asked gzip={gzipped}, got Content-Encoding {encoding!r}")
    return Fetched(seconds, len(wire), body, (cpu_seconds(pid) - cpu0) if pid else 0.0)


def healthy_during(
    scrape_url: str, healthy_url: str, scrapes: int, accept: str, gzipped: bool
) -> list[float]:
    """/-/healthy latencies, asked every 5 ms while ``scrapes`` scrapes run one after another."""
    done = threading.Event()
    lat: list[float] = []

    def scraper() -> None:
        for _ in range(scrapes):
            fetch(scrape_url, accept, gzipped)
        done.set()

    t = threading.Thread(target=scraper)
    t.start()
    while not done.is_set():
        lat.append(fetch(healthy_url, "*/*", False).seconds)
        time.sleep(0.005)
    t.join()
    return lat


# (label, path, gzip) of each variant measured on loopback and over the slow link
def variants(level: int) -> list[tuple[str, str, bool]]:
    return [
        ("ours, plain", "/metrics", False),
        (f"ours, gzip level {level}", "/metrics", True),
        (f"ours, gzip level {OTHER_LEVEL[level]}", "/metrics-other-level", True),
        ("anchor, plain", "/metrics-reference", False),
        ("anchor, gzip level 9 (prometheus_client)", "/metrics-reference", True),
    ]


def measure(base: str, accept: str, rounds: int, pid: int, level: int) -> dict[str, list[Fetched]]:
    """Every variant once per round, in turn (interleaved, so load drifts hit all alike)."""
    out: dict[str, list[Fetched]] = {label: [] for label, _, _ in variants(level)}
    for _ in range(rounds):
        for label, path, gzipped in variants(level):
            out[label].append(fetch(base + path, accept, gzipped, pid))
    return out


def rows_of(results: dict[str, list[Fetched]], where: str) -> list[tuple[str, str, str, str, str]]:
    """One row per variant: median time, wire bytes, server CPU per scrape; against ours plain."""
    plain = median([f.seconds for f in results["ours, plain"]])
    rows = []
    for label, fetched in results.items():
        seconds = median([f.seconds for f in fetched])
        wire = median([float(f.wire) for f in fetched])
        cpu = sum(f.cpu for f in fetched) / len(fetched)  # a mean: /proc counts in 10 ms ticks
        rows.append(
            (
                f"{where}: {label} ({len(fetched)} scrapes)",
                f"{seconds * 1000:,.0f} ms median, {wire / 1e6:.2f} MB on the wire",
                f"server CPU {cpu * 1000:,.0f} ms/scrape",
                f"{seconds / plain:.2f}x ours plain",
                "",
            )
        )
    return rows


# ---- a real Prometheus --------------------------------------------------------------------------------

TARGETS = [  # (job, path): what Prometheus scrapes in each phase
    ("ours_gzip", "/metrics"),
    ("ours_plain", "/metrics-identity"),
    ("floor_gzip", "/metrics-static"),
    ("floor_plain", "/metrics-static-identity"),
    ("anchor_gzip", "/metrics-reference"),
    ("anchor_plain", "/metrics-reference-identity"),
]


def _port_on(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _query(base: str, expr: str) -> list[dict[str, object]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        answer = json.load(resp)
    result: list[dict[str, object]] = answer["data"]["result"]
    return result


def _values(base: str, expr: str) -> list[float]:
    return [float(v) for series in _query(base, expr) for _, v in series["values"]]  # type: ignore[attr-defined]


def prometheus_phase(
    binary: str, target: str, job: str, path: str, scrapes: int, interval: float
) -> tuple[list[float], list[float], list[float]]:
    """A fresh Prometheus scraping one target until ``scrapes`` scrapes are stored: its
    scrape_duration_seconds, scrape_samples_scraped and up, sample by sample."""
    from tests.support.alerting import stop_process, tail

    with tempfile.TemporaryDirectory(prefix="mc-bench-prom-") as tmp:
        config = Path(tmp) / "prometheus.yml"
        every = f"{round(interval * 1000)}ms"  # Prometheus reads no fractions ("1.5s")
        config.write_text(
            json.dumps(  # JSON is YAML
                {
                    "global": {"scrape_interval": every, "scrape_timeout": every},
                    "scrape_configs": [
                        {"job_name": job, "metrics_path": path, "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        port = _port_on(PROMETHEUS_HOST)
        base = f"http://{PROMETHEUS_HOST}:{port}"
        log = Path(tmp) / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp}/data",
                    f"--web.listen-address={PROMETHEUS_HOST}:{port}",
                ],
                cwd=tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                deadline = time.monotonic() + 60
                while True:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"Prometheus ({job}) did not start:\n{tail(log)}")
                    try:
                        wait_http(f"{base}/-/ready", timeout=1)
                        break
                    except OSError:
                        pass
                window = f"[{int(scrapes * interval * 4 + 120)}s]"
                deadline = time.monotonic() + scrapes * interval * 3 + 120
                while len(_values(base, f'up{{job="{job}"}}{window}')) < scrapes:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(f"Prometheus ({job}) did not get {scrapes} scrapes:\n{tail(log)}")
                    time.sleep(interval / 2)
                sel = f'{{job="{job}"}}{window}'
                return (
                    _values(base, f"scrape_duration_seconds{sel}")[:scrapes],
                    _values(base, f"scrape_samples_scraped{sel}")[:scrapes],
                    _values(base, f"up{sel}")[:scrapes],
                )
            finally:
                stop_process(proc)


def prometheus_rows(
    target: str, scrapes: int, interval: float, anchor_interval: float
) -> list[tuple[str, str, str, str, str]]:
    """Each target in turn (so none competes with another for the exporter's loop): ``scrapes`` scrapes
    after the first, which creates every series in Prometheus' TSDB and is reported apart."""
    from tests.support.alerting import binary

    prom = binary("prometheus", package="prometheus")
    got: dict[str, tuple[list[float], list[float], list[float]]] = {}
    for job, path in TARGETS:
        every = anchor_interval if job.startswith("anchor") else interval
        got[job] = prometheus_phase(prom, target, job, path, scrapes + 1, every)
        print(f"  Prometheus scraped {job} every {every:g} s: {load()}", file=sys.stderr)

    def cell(job: str) -> str:
        durations, samples, up = got[job]
        return (
            f"{median(durations[1:]) * 1000:,.0f} ms (max {max(durations[1:]) * 1000:,.0f}; first "
            f"{durations[0] * 1000:,.0f}); {median(samples):,.0f} samples; up=0: {up.count(0.0)}"
        )

    rows = []
    for how in ("gzip", "plain"):
        ours = median(got[f"ours_{how}"][0][1:])
        rows.append(
            (
                f"real Prometheus 2.42 (`scrape_duration_seconds`: fetch, inflate, parse, append), {how}, "
                f"{scrapes} scrapes: mailcanary every {interval:g} s, anchor every {anchor_interval:g} s",
                cell(f"ours_{how}"),
                cell(f"anchor_{how}"),
                f"{median(got[f'anchor_{how}'][0][1:]) / ours:.1f}x faster",
                "the floor's + ≤ 50 ms",
            )
        )
        floor = median(got[f"floor_{how}"][0][1:])
        rows.append(
            (
                f"… the floor, {how}: the same bytes served as they are (nothing rendered at scrape time)",
                f"ours {(ours - floor) * 1000:+,.0f} ms over the floor",
                cell(f"floor_{how}"),
                f"{ours / floor:.2f}x the floor",
                "",
            )
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=50, help="loopback scrapes of each variant")
    parser.add_argument("--accept", choices=sorted(ACCEPT), default="prometheus", help="Accept header sent")
    parser.add_argument("--gzip-level", type=int, choices=sorted(OTHER_LEVEL), default=1)
    parser.add_argument("--slow-scrapes", type=int, default=3, help="scrapes of each over the slow link")
    parser.add_argument("--prometheus-scrapes", type=int, default=10, help="per target; 0: skipped")
    parser.add_argument("--prometheus-interval", type=float, default=3.0, help="seconds")
    parser.add_argument(
        "--anchor-interval", type=float, default=10.0, help="seconds, for the anchor (it renders for seconds)"
    )
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: the child
    parser.add_argument("--relay", type=int, nargs=2, help=argparse.SUPPRESS)  # internal: the relay
    args = parser.parse_args()
    accept = ACCEPT[args.accept]
    if args.serve:
        serve(args.serve, args.probes, args.gzip_level)
        return 0
    if args.relay:
        relay(*args.relay)
        return 0
    port = free_port()
    child = subprocess.Popen(
        [
            sys.executable,
            *("-m", "bench.metrics_scrape", "--serve", str(port)),
            *("--probes", str(args.probes), "--gzip-level", str(args.gzip_level)),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    relay_port = _port_on(RELAY_HOST)
    relayer = subprocess.Popen(
        [sys.executable, "-m", "bench.metrics_scrape", "--relay", str(relay_port), str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    rows: list[tuple[str, str, str, str, str]] = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/-/healthy", timeout=120)
        first = fetch(f"{base}/metrics", accept, False)
        ref = fetch(f"{base}/metrics-reference", accept, False)
        lines = first.body.count(b"\n")
        stamp = f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {load()}"
        loop_results = measure(base, accept, args.scrapes, child.pid, args.gzip_level)
        stamp += f" → {load()}"
        ours = [f.seconds for f in loop_results["ours, plain"]]
        theirs = [f.seconds for f in loop_results["anchor, plain"]]
        h_ours = healthy_during(
            f"{base}/metrics", f"{base}/-/healthy", max(5, args.scrapes // 5), accept, False
        )
        h_gzip = healthy_during(
            f"{base}/metrics", f"{base}/-/healthy", max(5, args.scrapes // 5), accept, True
        )
        h_theirs = healthy_during(
            f"{base}/metrics-reference", f"{base}/-/healthy", max(5, args.scrapes // 5), accept, False
        )
        same = "the same series" if len(first.body) > 0.9 * len(ref.body) else "DIFFERENT sizes"
        rows += [
            (
                f"GET /metrics, {args.probes} probes, Accept: {args.accept} "
                f"({lines} lines, {len(first.body) / 1e6:.1f} MB; {same} as anchor)",
                f"{median(ours) * 1000:.1f} ms median",
                f"{median(theirs) * 1000:.1f} ms",
                f"{median(theirs) / median(ours):.0f}x faster",
                "≤ 50 ms median",
            ),
            (
                "/-/healthy while a scrape is in flight (slowest; p99): plain, gzip",
                f"{max(h_ours) * 1000:.1f} ms; {percentile(h_ours, 99) * 1000:.1f} ms; gzip "
                f"{max(h_gzip) * 1000:.1f} ms; {percentile(h_gzip, 99) * 1000:.1f} ms",
                f"{max(h_theirs) * 1000:.1f} ms; {percentile(h_theirs, 99) * 1000:.1f} ms",
                f"{max(h_theirs) / max(h_ours):.0f}x",
                "within 50 ms",
            ),
            *rows_of(loop_results, "loopback"),
        ]
        if args.slow_scrapes:
            slow_base = f"http://{RELAY_HOST}:{relay_port}"
            wait_http(f"{slow_base}/-/healthy", timeout=30)
            slow = measure(slow_base, accept, args.slow_scrapes, child.pid, args.gzip_level)
            rows += rows_of(slow, f"10 Mbit/s, 20 ms RTT ({load()})")
        if args.prometheus_scrapes:
            rows += prometheus_rows(
                f"127.0.0.1:{port}", args.prometheus_scrapes, args.prometheus_interval, args.anchor_interval
            )
            deflated = fetch(f"{base}/bench-gzip-deflated", "*/*", False).body.decode()
            print(f"/metrics made {deflated} compressed copies in this run", file=sys.stderr)
    finally:
        for proc in (relayer, child):
            proc.terminate()
            proc.wait(10)
    print(stamp, f"; at the end {load()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
