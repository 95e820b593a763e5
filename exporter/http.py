"""The HTTP side: /metrics, /-/healthy, /-/ready and a small landing page, on aiohttp in the daemon's loop."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from .webconfig import WebConfig, middleware, server_context

# The status page is inline styles and inline SVG only: nothing to fetch, nothing to run.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'"


def parse_listen(listen: str) -> tuple[str | None, int]:
    """``:9925`` (all interfaces), ``127.0.0.1:9925``, ``[::1]:9925`` -> (host or None, port)."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(
            f"--web.listen-address (--listen) {listen!r}: expected [HOST]:PORT, e.g. :9925 or 127.0.0.1:9925"
        )
    host = host.strip("[]")
    return (host or None), int(port_text)


def render(registry: CollectorRegistry, accept: str) -> web.Response:
    """Prometheus text format, or OpenMetrics when the scraper asks for it."""
    if "application/openmetrics-text" in accept:
        body, ctype = generate_openmetrics(registry), OPENMETRICS_TYPE  # type: ignore[no-untyped-call]
    else:
        body, ctype = generate_latest(registry), CONTENT_TYPE_LATEST
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
        status_page: Callable[[], str] | None = None,
    ) -> None:
        self.registry = registry
        self.ready = ready
        self.status_page = status_page  # the page at / (exporter.status); else the short LANDING
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
        if self.status_page is None:
            return web.Response(text=LANDING, content_type="text/html")
        resp = web.Response(text=self.status_page(), content_type="text/html")
        resp.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return resp

    async def _metrics(self, request: web.Request) -> web.Response:
        return render(self.registry, request.headers.get("Accept", ""))

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
