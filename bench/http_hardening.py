"""What a hostile client costs a scraper: a wrong-password flood and slow-loris connections.

Ours: exporter.web.server.HTTPServer with --web.config.file basic auth (bcrypt on a 2-thread pool, cached on
the presented credentials; per-request head timeout; connection cap). Anchor: the same registry served
the plain way (aiohttp TCPSite, bcrypt checked on the event loop, only successes cached), as main did.
Both servers run in this process on loopback, one after the other.

    python -m bench.http_hardening [--flooders 40] [--slow 1000] [--cost 10]

Figures: an authenticated /metrics latency during the flood (median, max of 10), and how many
slow-loris connections are still open 20 s after they were made (and /metrics latency meanwhile).
A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import bcrypt
from aiohttp import web
from prometheus_client import CollectorRegistry

from exporter.web.server import HTTPServer, render
from exporter.web.webconfig import WebConfig

USER, PASSWORD = "prometheus", "right"


def _auth(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{USER}:{password}".encode()).decode()}


def _get(port: int, headers: dict[str, str] | None = None, timeout: float = 60) -> float:
    t0 = time.perf_counter()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError:
        pass
    return time.perf_counter() - t0


class _Loop:
    """An event loop on its own thread, to serve while this thread plays the clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[object]) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


@contextlib.contextmanager
def ours(hashed: str) -> Iterator[int]:
    loop = _Loop()
    server = HTTPServer(
        CollectorRegistry(),
        ready=lambda: True,
        web_config=WebConfig.model_validate({"basic_auth_users": {USER: hashed}}),
    )
    loop.run(server.start("127.0.0.1:0"))
    try:
        yield server.bound[0][1]
    finally:
        loop.run(server.stop())
        loop.close()


@contextlib.contextmanager
def anchor(hashed: str) -> Iterator[int]:
    """main's way: bcrypt on the loop, successes cached, aiohttp's own listener without limits."""
    registry = CollectorRegistry()
    ok_cache: set[bytes] = set()

    @web.middleware
    async def secure(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        user, _, password = base64.b64decode(
            request.headers.get("Authorization", "x x").split()[1]
        ).partition(b":")
        key = hashlib.sha256(user + b"\0" + password).digest()
        if key not in ok_cache:
            if user.decode() != USER or not bcrypt.checkpw(password, hashed.encode()):
                return web.Response(status=401)
            ok_cache.add(key)
        return await handler(request)

    async def metrics(request: web.Request) -> web.Response:
        return render(registry, "")

    app = web.Application(middlewares=[secure])
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    loop = _Loop()
    loop.run(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield port
    finally:
        loop.run(runner.cleanup())
        loop.close()


def flood(port: int, flooders: int) -> tuple[float, float]:
    good = _auth(PASSWORD)
    _get(port, good)  # cached from here on (both servers cache successes)
    stop = threading.Event()

    def one(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            with contextlib.suppress(OSError):
                _get(port, _auth(f"wrong-{i}-{n}"), timeout=60)

    with ThreadPoolExecutor(flooders) as pool:
        for i in range(flooders):
            pool.submit(one, i)
        time.sleep(1)
        latencies = [_get(port, good) for _ in range(10)]
        stop.set()
    return statistics.median(latencies), max(latencies)


def slow_loris(port: int, count: int) -> tuple[int, float]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    t0 = time.monotonic()
    latency = max(_get(port, _auth(PASSWORD)) for _ in range(3))
    time.sleep(max(0.0, 20 - (time.monotonic() - t0)))
    still = 0
    for s in socks:
        s.settimeout(0.01)
        try:
            still += s.recv(10) != b""
        except TimeoutError:
            still += 1
        except OSError:
            pass
        s.close()
    return still, latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flooders", type=int, default=40)
    parser.add_argument("--slow", type=int, default=1000)
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the user's hash")
    args = parser.parse_args()
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=args.cost)).decode()
    rows = []
    for name, serve in (("ours", ours), ("anchor", anchor)):
        with serve(hashed) as port:
            med, worst = flood(port, args.flooders)
        with serve(hashed) as port:
            still, latency = slow_loris(port, args.slow)
        rows.append((name, med, worst, still, latency))
    (_, om, ow, os_, ol), (_, am, aw, as_, al) = rows
    load = os.getloadavg()[0]
    print(f"load {load:.2f}; bcrypt cost {args.cost}; {args.flooders} flooders; {args.slow} slow-loris")
    print(f"{'':44}{'ours':>10}{'anchor':>10}{'ratio':>9}")
    print(f"{'auth /metrics during flood, median (ms)':44}{om * 1e3:10.1f}{am * 1e3:10.1f}{om / am:9.4f}")
    print(f"{'auth /metrics during flood, max (ms)':44}{ow * 1e3:10.1f}{aw * 1e3:10.1f}{ow / aw:9.4f}")
    print(f"{'slow-loris still open after 20 s':44}{os_:10d}{as_:10d}{os_ / max(as_, 1):9.4f}")
    print(f"{'auth /metrics with them open, max (ms)':44}{ol * 1e3:10.1f}{al * 1e3:10.1f}{ol / al:9.4f}")


if __name__ == "__main__":
    main()
