"""The HTTP side: /metrics, /-/healthy, /-/ready and a small landing page, on aiohttp in the daemon's loop."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector

from exporter.metrics.collector import BodyParts, text_of
from exporter.web.gzipbody import GzipBodies, accepts_gzip, gzip_bytes
from exporter.web.webconfig import WebConfig, middleware, server_context

# The status page is inline styles and inline SVG only: nothing to fetch, nothing to run.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'"

log = structlog.get_logger("mailcanary.http")

# Bounds on what one client can hold. A request's headers (and body, if any) must arrive within
# HEADER_TIMEOUT of its first byte (of the connection, for the first request); an idle keep-alive
# connection is closed after KEEPALIVE_TIMEOUT. At MAX_CONNECTIONS, a new connection evicts the oldest
# one still sending its request (a slow-loris), else the oldest idle keep-alive one, so a scraper gets in.
HEADER_TIMEOUT = 10.0
STOP_TIMEOUT = 0.5  # seconds a request in progress at stop gets, then as many for its cancel (aiohttp: 60)
KEEPALIVE_TIMEOUT = 75.0  # longer than usual scrape intervals, so scrapers reuse connections
MAX_CONNECTIONS = 256
_HEAD_KEEP = 65536  # bytes of a request head kept to read its Content-Length
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,12})[ \t]*\r\n", re.IGNORECASE)


class _BadRequestLog(logging.Filter):
    """aiohttp logs a malformed request (a request line over 8190 bytes, ``GET *``) with a traceback:
    make it one JSON line of ours instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            log.warning("http_bad_request", status=exc.code, problem=" ".join(str(exc.message).split())[:200])
            return False
        return True


_BAD_REQUEST_LOG = _BadRequestLog()


class _Connections:
    """The live connections, oldest first, and how many were closed for what (exported)."""

    def __init__(self) -> None:
        self.live: dict[_Guard, None] = {}
        self.closed = {"header_timeout": 0, "evicted": 0, "over_capacity": 0}

    def admit(self, guard: _Guard) -> bool:
        if len(self.live) >= MAX_CONNECTIONS:
            victim = next((g for g in self.live if g.waiting), None) or next(
                (g for g in self.live if g.idle), None
            )
            if victim is None:
                self.closed["over_capacity"] += 1
                return False
            self.closed["evicted"] += 1
            victim.abort()
        self.live[guard] = None
        return True


class _Guard(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol: times each request's head (slow-loris) and counts the
    connection against MAX_CONNECTIONS. Bytes pass through unchanged."""

    def __init__(self, inner: Any, pool: _Connections) -> None:
        self.inner = inner
        self.pool = pool
        self.transport: asyncio.BaseTransport | None = None
        self.waiting = True  # a request (head or body) is on its way and not complete
        self._head = bytearray()
        self._body_left = 0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.inner.connection_made(transport)
        if not self.pool.admit(self):
            self.abort()
            return
        self._arm()

    @property
    def idle(self) -> bool:
        """Between requests on a keep-alive connection (aiohttp's own flag; unknown counts as busy)."""
        return not self.waiting and not getattr(self.inner, "_request_in_progress", True)

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(HEADER_TIMEOUT, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        self.pool.closed["header_timeout"] += 1
        self.abort()

    def abort(self) -> None:
        self._disarm()
        self.pool.live.pop(self, None)
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]

    def _scan(self, data: bytes) -> None:
        """Follow request boundaries: head up to a blank line, then Content-Length bytes of body."""
        while data:
            if not self.waiting:  # the first byte of the next request
                self.waiting = True
                self._arm()
            if self._body_left:
                used = min(self._body_left, len(data))
                self._body_left -= used
                data = data[used:]
                if not self._body_left:
                    self._request_complete()
                continue
            tail = bytes(self._head[-3:])
            found = (tail + data).find(b"\r\n\r\n")
            if found < 0:
                self._head = (self._head + data)[-_HEAD_KEEP:]  # bounded; keeps the tail for the search
                return
            used = found + 4 - len(tail)  # bytes of ``data`` up to the end of the head
            head = bytes(self._head + data[:used])
            m = _CONTENT_LENGTH.search(head)
            self._body_left = int(m.group(1)) if m else 0
            self._head = bytearray()
            data = data[used:]
            if not self._body_left:
                self._request_complete()

    def _request_complete(self) -> None:
        self.waiting = False
        self._disarm()

    def data_received(self, data: bytes) -> None:
        self._scan(data)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.pool.live.pop(self, None)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _HTTPCollector(Collector):
    def __init__(self, pool: _Connections, labels: Callable[[], dict[str, str]]) -> None:
        self.pool = pool
        self.labels = labels  # extra labels on every series (vantage)

    def collect(self) -> Iterator[Metric]:
        extra = self.labels()
        names = sorted(extra)
        values = [extra[n] for n in names]
        live = GaugeMetricFamily(
            "mailcanary_http_connections", "Open HTTP connections to the exporter.", labels=names
        )
        live.add_metric(values, len(self.pool.live))
        closed = CounterMetricFamily(
            "mailcanary_http_connections_closed",
            "HTTP connections closed by the exporter: header_timeout (request not sent in time), evicted "
            "(oldest slow or idle one, to admit a new one at the cap), over_capacity (all busy at the cap).",
            labels=["reason", *names],
        )
        for reason, count in self.pool.closed.items():
            closed.add_metric([reason, *values], count)
        yield live
        yield closed


def parse_listen(listen: str) -> tuple[str | None, int]:
    """``:9925`` (all interfaces), ``127.0.0.1:9925``, ``[::1]:9925`` -> (host or None, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(
            f"--web.listen-address (--listen) {listen!r}: expected [HOST]:PORT, e.g. :9925 or 127.0.0.1:9925"
        )
    host = host.strip("[]")
    return (host or None), int(port_text)


def _q(params: list[str]) -> float:
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return min(max(float(value.strip()), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0


def wants_openmetrics(accept: str) -> bool:
    """Content negotiation (RFC 9110 §12.5.1) between the two formats we serve: OpenMetrics when the
    scraper rates it at least as high as the text format (Prometheus since 2.5 sends
    ``application/openmetrics-text;version=1.0.0,…;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1``:
    OpenMetrics). No header, or only text/wildcards: the text format, as prometheus_client does."""
    best = {"openmetrics": 0.0, "text": 0.0}
    for item in accept.split(",")[:64]:  # bounded: a header of thousands of items is not parsed whole
        media, *params = item.split(";")
        media = media.strip().lower()
        q = _q(params)
        if media == "application/openmetrics-text":
            best["openmetrics"] = max(best["openmetrics"], q)
        elif media in ("text/plain", "text/*", "*/*"):
            best["text"] = max(best["text"], q)
    return best["openmetrics"] > 0 and best["openmetrics"] >= best["text"]


def render(registry: CollectorRegistry, accept: str, accept_encoding: str = "") -> web.Response:
    """Prometheus text format, or OpenMetrics when the scraper asks for it; gzip when it asks for that
    (compressed whole, every time: this path has no pre-rendered body to keep a compressed copy of)."""
    if wants_openmetrics(accept):
        body, ctype = generate_openmetrics(registry), OPENMETRICS_TYPE  # type: ignore[no-untyped-call]
    else:  # the same bytes as generate_latest, faster (tests/test_scrape_equal.py)
        body, ctype = text_of(registry.collect()).encode(), CONTENT_TYPE_LATEST
    gzipped = accepts_gzip(accept_encoding)
    return _response(gzip_bytes(body) if gzipped else body, ctype, gzipped)


def _response(body: bytes, ctype: str, gzipped: bool = False) -> web.Response:
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = ctype
    # The body depends on both headers: a cache between scraper and exporter must key on them.
    resp.headers["Vary"] = "Accept, Accept-Encoding"
    if gzipped:
        resp.headers["Content-Encoding"] = "gzip"
    return resp


LANDING = """<!doctype html><html><head><title>mailcanary</title></head><body>
<h1>mailcanary</h1><p>Mail delivery and TLS monitor.</p>
<ul><li><a href="metrics">/metrics</a></li><li><a href="-/healthy">/-/healthy</a></li>
<li><a href="-/ready">/-/ready</a></li></ul></body></html>
"""


class HTTPServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        extra_routes: list[web.RouteDef] | None = None,
        web_config: WebConfig | None = None,
        status_page: Callable[[], str] | None = None,
        labels: Callable[[], dict[str, str]] = dict,
        metrics_body: Callable[[bool], Awaitable[BodyParts]] | None = None,
        runtime: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry
        # Pre-rendered /metrics in either format (exporter.metrics.collector.SeriesCache.parts).
        self.metrics_body = metrics_body
        self.gzip = GzipBodies()  # its compressed copies, one per format
        self.ready = ready
        self.status_page = status_page  # the page at / (exporter.web.status); else the short LANDING
        self.web_config = web_config
        self.app = web.Application(middlewares=[middleware(web_config)] if web_config else [])
        self.app.add_routes(
            [
                web.get("/", self._landing),
                web.get("/metrics", self._metrics),
                web.get("/-/healthy", self._healthy),
                web.get("/-/ready", self._ready),
                *(extra_routes or []),
            ]
        )
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.connections = _Connections()
        # In the OpenMetrics rendering and, with a pre-rendered text body, in its live part (``runtime``).
        for reg in (registry, runtime) if runtime is not None else (registry,):
            reg.register(_HTTPCollector(self.connections, labels))
        self.bound: list[tuple[str, int]] = []

    async def _landing(self, request: web.Request) -> web.Response:
        if self.status_page is None:
            return web.Response(text=LANDING, content_type="text/html")
        resp = web.Response(text=self.status_page(), content_type="text/html")
        resp.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return resp

    async def _metrics(self, request: web.Request) -> web.Response:
        return await self.metrics_response(
            request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", "")
        )

    async def metrics_response(self, accept: str, accept_encoding: str) -> web.Response:
        """/metrics for these request headers. Never renders on the loop: both formats are pre-rendered
        (what Prometheus asks for first is OpenMetrics) and joined in a worker thread, and gzip, when
        asked for, reuses the compressed pre-rendered part while its generation lasts; without a
        pre-rendered body the registry renders (and compresses) in a worker thread."""
        if self.metrics_body is not None:
            openmetrics = wants_openmetrics(accept)
            parts = await self.metrics_body(openmetrics)
            gzipped = accepts_gzip(accept_encoding)
            if gzipped:
                body = await self.gzip.body(parts)
            else:
                whole, pieces = parts.small()
                if whole is not None:
                    body = whole + parts.live
                else:
                    body = await asyncio.to_thread(lambda: b"".join((*pieces, parts.live)))
            return _response(body, OPENMETRICS_TYPE if openmetrics else CONTENT_TYPE_LATEST, gzipped)
        return await asyncio.to_thread(render, self.registry, accept, accept_encoding)

    async def _healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="Healthy\n")

    async def _ready(self, request: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="Ready\n")
        return web.Response(text="Not ready\n", status=503)

    async def start(self, listen: str) -> None:
        host, port = parse_listen(listen)
        server_log = logging.getLogger("aiohttp.server")
        if _BAD_REQUEST_LOG not in server_log.filters:
            server_log.addFilter(_BAD_REQUEST_LOG)
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
            shutdown_timeout=STOP_TIMEOUT,
        )
        await self._runner.setup()
        tls = self.web_config.tls_server_config if self.web_config else None
        ssl_context = server_context(tls) if tls is not None else None
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Guard(server(), self.connections),
            host=host,
            port=port,
            reuse_address=True,
            ssl=ssl_context,
            ssl_handshake_timeout=HEADER_TIMEOUT if ssl_context is not None else None,
        )
        for sock in self._server.sockets:
            addr = sock.getsockname()
            self.bound.append((str(addr[0]), int(addr[1])))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
