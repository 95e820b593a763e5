"""``GET /probe?module=NAME&target=host:port``: one TLS check run on demand, blackbox_exporter style."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from probes._slots import QueueTimeout, ServerSlots
from probes.errors import ProbeError
from probes.recorder import Masker, Recorder
from probes.tls import TLSFacts, probe_tls

from .config import ModuleConfig
from .http import render
from .runner import TLS_CHECK_STEPS, tls_check_settings, tls_outcome
from .tlsmetrics import blackbox_families, tls_families

SCRAPE_TIMEOUT_OFFSET = 0.5  # seconds kept back from Prometheus' scrape timeout to answer in time
_TARGET_RE = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9_.-]+))(?::(?P<port>\d{1,5}))?$")


def parse_target(target: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port``; raises ValueError with a one-line reason."""
    m = _TARGET_RE.match(target.strip())
    if m is None:
        raise ValueError(f"target {target!r} is not host:port")
    port = int(m["port"]) if m["port"] else None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"target {target!r}: port out of range")
    return (m["v6"] or m["host"]), port


class _Fixed(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


def probe_handler(
    modules: Callable[[], dict[str, ModuleConfig]],
    masker: Callable[[], Masker],
    slots: Callable[[], ServerSlots | None] = lambda: None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.Response:
        available = modules()
        name = request.query.get("module", "")
        if name not in available:
            return web.Response(
                status=400, text=f"unknown module {name!r} (have: {', '.join(sorted(available))})\n"
            )
        target = request.query.get("target", "")
        try:
            host, port = parse_target(target)
        except ValueError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        module = available[name]
        deadline = module.timeout * TLS_CHECK_STEPS
        header = request.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
        if header:
            try:
                deadline = min(deadline, max(float(header) - SCRAPE_TIMEOUT_OFFSET, 0.1))
            except ValueError:
                return web.Response(status=400, text="X-Prometheus-Scrape-Timeout-Seconds is not a number\n")
        settings = tls_check_settings(module, host, port, slots())
        rec = Recorder(masker=masker())
        t0 = time.monotonic()
        facts: TLSFacts | None = None
        try:
            async with asyncio.timeout(deadline):
                facts = await probe_tls(settings, rec)
        except QueueTimeout as exc:
            # Our own session limit, not the target: a failed scrape, never a false probe_success 0.
            return web.Response(status=503, text=f"{exc.message}\n")
        except (ProbeError, TimeoutError):
            if rec.facts.get("current_phase") == "queue":  # the deadline came while waiting for a slot
                return web.Response(status=503, text="no session slot for the target before the deadline\n")
            facts = rec.tls.get(settings.endpoint.address)
        duration = time.monotonic() - t0
        metrics = list(blackbox_families(facts, tls_outcome(facts) == "success", duration))
        if facts is not None:
            metrics.extend(tls_families([([], facts)], []))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(metrics))
        return render(registry, request.headers.get("Accept", ""))

    return handle
