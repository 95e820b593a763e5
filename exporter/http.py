"""The HTTP side: /metrics, /-/healthy, /-/ready and a small landing page, on aiohttp in the daemon's loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from .metrics import text_of
from .webconfig import WebConfig, middleware, server_context


def parse_listen(listen: str) -> tuple[str | None, int]:
    """``:9925`` (all interfaces), ``127.0.0.1:9925``, ``[::1]:9925`` -> (host or None, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--listen {listen!r}: expected [HOST]:PORT, e.g. :9925 or 127.0.0.1:9925")
    host = host.strip("[]")
    return (host or None), int(port_text)


def render(registry: CollectorRegistry, accept: str) -> web.Response:
    """Prometheus text format, or OpenMetrics when the scraper asks for it."""
    if "application/openmetrics-text" in accept:
        body, ctype = generate_openmetrics(registry), OPENMETRICS_TYPE  # type: ignore[no-untyped-call]
    else:  # the same bytes as generate_latest, faster (tests/test_scrape_equal.py)
        body, ctype = text_of(registry.collect()).encode(), CONTENT_TYPE_LATEST
    return _response(body, ctype)


def _response(body: bytes, ctype: str) -> web.Response:
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = ctype
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
        text_body: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        self.registry = registry
        self.text_body = text_body  # pre-rendered Prometheus text (exporter.metrics.SeriesCache.body)
        self.ready = ready
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
        self.bound: list[tuple[str, int]] = []

    async def _landing(self, request: web.Request) -> web.Response:
        return web.Response(text=LANDING, content_type="text/html")

    async def _metrics(self, request: web.Request) -> web.Response:
        """Never renders on the loop: the text format is pre-rendered, OpenMetrics (rarely asked for) is
        rendered in a worker thread."""
        accept = request.headers.get("Accept", "")
        if self.text_body is not None and "application/openmetrics-text" not in accept:
            return _response(await self.text_body(), CONTENT_TYPE_LATEST)
        return await asyncio.to_thread(render, self.registry, accept)

    async def _healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="Healthy\n")

    async def _ready(self, request: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="Ready\n")
        return web.Response(text="Not ready\n", status=503)

    async def start(self, listen: str) -> None:
        host, port = parse_listen(listen)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        tls = self.web_config.tls_server_config if self.web_config else None
        ssl_context = server_context(tls) if tls is not None else None
        site = web.TCPSite(self._runner, host=host, port=port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        server = getattr(site, "_server", None)
        for sock in getattr(server, "sockets", None) or []:
            addr = sock.getsockname()
            self.bound.append((str(addr[0]), int(addr[1])))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
