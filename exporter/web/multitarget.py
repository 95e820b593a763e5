"""``GET /probe?module=NAME&target=host:port``: one run on demand, blackbox_exporter style, of the kind
that declares a target probe (:attr:`exporter.registry.Kind.target`: the TLS check)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter import registry
from exporter.config import ModuleConfig, ProbeEndpointConfig
from exporter.registry import TargetProbe
from exporter.run.history import BoundedTranscript
from exporter.web.server import render
from probes.context import ProbeContext
from probes.errors import ProbeError
from probes.recorder import Masker, Recorder
from probes.tls.legacy import LegacyCache
from probes.tls.scanning import SCAN_STEPS, ScanCache
from probes.wire.slots import QueueTimeout, ServerSlots

SCRAPE_TIMEOUT_OFFSET = 0.5  # seconds kept back from Prometheus' scrape timeout to answer in time
# Targets (module x target) whose legacy TLS answers, and whose scans, /probe remembers: LRU beyond this,
# so a scrape storm over many targets costs re-tests, never memory without bound. Its own caches, apart
# from the daemon's checks, so such a storm cannot evict the scheduled checks' answers either.
PROBE_TARGETS = 1024
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


def debug_response(
    rec: Recorder, target: TargetProbe, value: object, duration: float, exposition: str
) -> web.Response:
    """What blackbox_exporter answers to ?debug=true: the probe's log (here its masked dialogue), the
    outcome and the metrics that would have been returned, as plain text."""
    outcome = target.outcome(value)
    lines = rec.transcript.lines() if isinstance(rec.transcript, BoundedTranscript) else []
    text = target.error(value)
    error = f" ({rec.masker(text)})" if text else ""
    text = "\n".join(
        [
            "Logs for the probe (secrets masked):",
            *lines,
            "",
            f"Probe {'succeeded' if outcome == 'success' else 'failed: ' + outcome}{error}, "
            f"duration {duration:.3f}s",
            "",
            "Metrics that would have been returned:",
            exposition,
        ]
    )
    return web.Response(text=text, content_type="text/plain")


def probe_handler(
    modules: Callable[[], dict[str, ModuleConfig]],
    masker: Callable[[], Masker],
    *,
    controls: Callable[[], ProbeEndpointConfig] = ProbeEndpointConfig,
    slots: Callable[[], ServerSlots | None] = lambda: None,
    scans: Callable[[], ScanCache | None] | None = None,
    legacy: Callable[[], LegacyCache | None] | None = None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The /probe handler. ``controls`` (the config's ``probe_endpoint``) can turn it off, cap how many
    run at once and restrict targets and modules: /probe connects wherever its caller says (SSRF).
    ``legacy`` and ``scans`` remember legacy TLS answers and TLS scans per module and target for the
    module's ``legacy_recheck`` / ``scan_recheck``, as the daemon's checks do (default: caches of the
    handler's own, bounded to :data:`PROBE_TARGETS` targets each, for the daemon's life)."""
    own_scans = ScanCache(max_entries=PROBE_TARGETS) if scans is None else None
    own_legacy = LegacyCache(max_entries=PROBE_TARGETS) if legacy is None else None
    running = 0

    async def handle(request: web.Request) -> web.Response:
        nonlocal running
        rules = controls()
        if not rules.enabled:
            return web.Response(status=404, text="/probe is turned off (probe_endpoint.enabled: false)\n")
        kind = registry.target_kind()
        if kind is None or kind.target is None:
            return web.Response(status=404, text="/probe: no probe kind runs against a named target\n")
        available = modules()
        name = request.query.get("module", "")
        if name not in available:
            return web.Response(
                status=400, text=f"unknown module {name!r} (have: {', '.join(sorted(available))})\n"
            )
        if not rules.module_allowed(name):
            return web.Response(status=403, text=f"module {name!r} is not in probe_endpoint.allow_modules\n")
        target = request.query.get("target", "")
        try:
            host, port = parse_target(target)
        except ValueError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        if not rules.target_allowed(host):
            return web.Response(status=403, text=f"target {host!r} is not in probe_endpoint.allow_targets\n")
        limit = rules.max_concurrent
        if running >= limit:
            return web.Response(
                status=503,
                text=f"too many /probe requests at once (probe_endpoint.max_concurrent: {limit})\n",
                headers={"Retry-After": "1"},
            )
        running += 1
        try:
            return await _probe(
                request,
                kind,
                kind.target,
                available[name],
                host,
                port,
                masker(),
                slots(),
                scans() if scans is not None else own_scans,
                legacy() if legacy is not None else own_legacy,
            )
        finally:
            running -= 1

    return handle


async def _probe(
    request: web.Request,
    kind: registry.AnyKind,
    target: TargetProbe,
    module: ModuleConfig,
    host: str,
    port: int | None,
    masker: Masker,
    slots: ServerSlots | None,
    scans: ScanCache | None = None,
    legacy: LegacyCache | None = None,
) -> web.Response:
    """One run of the named target, rendered as blackbox_exporter-style series."""
    # A module with scan: true may scan the target (remembered per target): its own time on top.
    deadline = module.timeout * (target.steps + (SCAN_STEPS if module.scan else 0))
    header = request.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
    if header:
        try:
            deadline = min(deadline, max(float(header) - SCRAPE_TIMEOUT_OFFSET, 0.1))
        except ValueError:
            return web.Response(status=400, text="X-Prometheus-Scrape-Timeout-Seconds is not a number\n")
    settings = target.settings(module, host, port, slots)
    debug = request.query.get("debug", "").lower() == "true"  # blackbox_exporter's ?debug=true
    rec = Recorder(masker=masker, transcript=BoundedTranscript() if debug else None)
    t0 = time.monotonic()
    value: object = None
    try:
        async with asyncio.timeout(deadline):
            ctx = ProbeContext(recorder=rec, slots=slots, scans=scans, legacy=legacy, debug=debug)
            value = await kind.probe(settings, ctx)
    except QueueTimeout as exc:
        # Our own session limit, not the target: a failed scrape, never a false probe_success 0.
        return web.Response(status=503, text=f"{exc.message}\n", headers={"Retry-After": "1"})
    except (ProbeError, TimeoutError) as exc:
        if rec.facts.current_phase == "queue":  # the deadline came while waiting for a slot
            return web.Response(status=503, text="no session slot for the target before the deadline\n")
        rec.debug("error:", str(exc) or f"no answer within {deadline:g}s")
        value = target.recover(rec, settings)
    duration = time.monotonic() - t0
    metrics = target.metrics(value, target.outcome(value) == "success", duration)
    fresh = CollectorRegistry(auto_describe=False)
    fresh.register(_Fixed(metrics))
    if debug:
        return debug_response(rec, target, value, duration, generate_latest(fresh).decode())
    return render(fresh, request.headers.get("Accept", ""))
