"""The long-running daemon: config, probes on a schedule, HTTP, signals, reload."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import structlog
from aiohttp import web

from exporter import logs
from exporter import registry as kinds_registry
from exporter.buildinfo import build_info
from exporter.config import (
    DEFAULT_MODULES,
    ConfigError,
    LoadedConfig,
    ModuleConfig,
    ProbeEndpointConfig,
    in_shard,
    load_config,
    parse_shard,
    state_dir,
)
from exporter.metrics.collector import ExporterState, SeriesCache, build_registry, runtime_registry
from exporter.registry import configured, find
from exporter.run.history import History
from exporter.run.results import ResultStore
from exporter.run.runner import Runner, make_masker
from exporter.run.scheduler import ProbeScheduler
from exporter.state.ledger import Ledger, StateCollector, StateHealth, load_or_create_key
from exporter.stopwatch import StopWatch
from exporter.web.multitarget import probe_handler
from exporter.web.server import HTTPServer
from exporter.web.webconfig import WebConfig
from probes.domain.dnsbl import ListingCache
from probes.recorder import Masker
from probes.tls.hygiene import CRLCache, OCSPCache
from probes.tls.legacy import LegacyCache
from probes.tls.scanning import ScanCache
from probes.wire.net import clear_contexts
from probes.wire.slots import ServerSlots

log = structlog.get_logger("mailcanary")

STOP_GRACE = 3.0  # seconds given to in-flight probes on shutdown before they are cancelled
SETTLE_BOUND = 2.0  # seconds cancelled runs get to log their line and leave the ledger right
CLOSE_BOUND = 1.0  # seconds for the sessions kinds keep between runs (heartbeats' IDLE) to close
LEDGER_BOUND = 3.0  # seconds for the ledger's queued writes (a hung disk: the journal survives a kill)


class Daemon:
    def __init__(
        self,
        config_path: str,
        listen: str,
        loader: Callable[[str], LoadedConfig] = load_config,
        web_config: WebConfig | None = None,
        shard: str | None = None,
        vantage: str | None = None,
        stopwatch: StopWatch | None = None,
    ) -> None:
        self.config_path = config_path
        self.stopwatch = stopwatch  # the process's bound on a stop (the CLI's; none in tests in-process)
        self.listen = listen
        self.loader = loader
        self.shard_override = shard
        self.vantage_override = vantage
        self.store = ResultStore()
        self.state = ExporterState(config_path=config_path)
        self.registry = build_registry(self.store, self.state)
        self.health = StateHealth()
        runtime = runtime_registry()  # rendered live on every scrape, after the pre-rendered series
        for registry in (self.registry, runtime):
            registry.register(StateCollector(self.health, self._labels))
        self.series = SeriesCache(self.store, self.state, runtime)
        self.scheduler = ProbeScheduler(self.store)
        self.slots = ServerSlots()
        self.history = History()
        build_info()  # asks git (a checkout) once, here, rather than on the event loop at the first scrape
        self.http = HTTPServer(
            self.registry,
            ready=lambda: self.scheduler.running and self.runner is not None,
            extra_routes=[
                web.get(
                    "/probe",
                    probe_handler(
                        self._modules,
                        self._masker,
                        controls=self._probe_rules,
                        slots=lambda: self.slots,
                    ),
                ),
                web.post("/-/reload", self._http_reload),
            ],
            web_config=web_config,
            status_page=self._status_page,
            labels=self._labels,
            metrics_body=self.series.parts,
            runtime=runtime,
        )
        self.runner: Runner | None = None
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._inflight: set[asyncio.Task[None]] = set()  # probe runs, in their own tasks (see _run)
        self._stopping = False

    def _status_page(self) -> str:
        """The status page, its module loaded with the first request for it (idle memory)."""
        from exporter.web.status import render_status

        return render_status(self.store.snapshot(), self.state, self.history, self._modules())

    def _labels(self) -> dict[str, str]:
        """Labels on every mailcanary_* series of our own collectors (as MailcanaryCollector adds them)."""
        return {"vantage": self.state.vantage} if self.state.vantage else {}

    def _modules(self) -> dict[str, ModuleConfig]:
        return self.runner.loaded.config.all_modules() if self.runner else DEFAULT_MODULES

    def _probe_rules(self) -> ProbeEndpointConfig:
        return self.runner.loaded.config.probe_endpoint if self.runner else ProbeEndpointConfig()

    def _masker(self) -> Masker:
        return self.runner.masker if self.runner else Masker()

    async def _http_reload(self, request: web.Request) -> web.Response:
        if await self.reload():
            return web.Response(text="reloaded\n")
        return web.Response(status=500, text="reload failed; the previous configuration keeps running\n")

    def _prepare(self, loaded: LoadedConfig) -> Runner:
        """Everything that can fail for a new config, done before anything is swapped in."""
        cfg = loaded.config
        state = state_dir(cfg)
        key = load_or_create_key(cfg.global_.canary_key_file, state, loaded.path, self.health)
        ledger = (
            self.runner.ledger
            if self.runner is not None
            else Ledger(state / "ledger.json", health=self.health)
        )
        legacy = self.runner.legacy if self.runner is not None else LegacyCache()
        scans = self.runner.scans if self.runner is not None else ScanCache()  # a scan is a dozen hellos
        ocsp = self.runner.ocsp if self.runner is not None else OCSPCache()  # answers kept until nextUpdate
        crl = self.runner.crl if self.runner is not None else CRLCache()
        return Runner(
            loaded=loaded,
            key=key,
            ledger=ledger,
            store=self.store,
            masker=make_masker(loaded),
            history=self.history,
            slots=self.slots,  # one limiter for the daemon's life: sessions in flight span reloads
            legacy=legacy,
            scans=scans,
            ocsp=ocsp,
            crl=crl,
            dnsbl=self.runner.dnsbl if self.runner is not None else ListingCache(),  # kept across reloads
            own_slots=False,  # configured in _apply, on the loop, once this config is taken
        )

    def _load(self) -> Runner:
        """Read, parse and prepare the config on a worker thread: a huge or slow file never stalls the
        loop (probes and scrapes go on; the file size is capped in exporter.config.yamlfile)."""
        return self._prepare(self.loader(self.config_path))

    def _apply(self, runner: Runner) -> None:
        loaded = runner.loaded
        clear_contexts()  # TLS contexts are rebuilt from the new config (and re-read trust stores)
        for warning in loaded.warnings:
            log.warning("config_warning", problem=warning)
        self.runner = runner
        runner.limit_sessions()
        logs.set_masker(runner.masker)
        cfg = loaded.config
        shard_text = self.shard_override or cfg.global_.shard
        shard = parse_shard(shard_text) if shard_text else None
        entries = [(k, e) for k, e in configured(cfg) if in_shard(e.name, shard)]
        self.state.shard = shard_text or ""
        self.state.vantage = self.vantage_override or cfg.global_.vantage or ""
        runner.ledger.prune(keep={e.name for k, e in entries if k.ledger})  # queued, not awaited
        self.store.ensure([e.name for _, e in entries])
        self.store.retain_tls({e.name: k.endpoints(e) for k, e in entries})
        self.state.probes = {e.name: k.name for k, e in entries}
        self.state.config_digest = loaded.digest
        self.state.reload_ok = True
        self.state.reload_success_time = time.time()
        jobs: dict[str, tuple[float, Callable[[], Awaitable[Any]], Any]] = {
            e.name: (cfg.interval_of(e), partial(self._run, e.name), k.spec(cfg, e)) for k, e in entries
        }
        self.scheduler.set_jobs(jobs)

    async def _run(self, name: str) -> None:
        """The scheduler's job for probe ``name``: the run itself goes in a task of its own, so that a
        stop can give it the grace period and then cancel it; the job just waits for it."""
        if self._stopping:
            return
        task = asyncio.create_task(self._run_now(name), name=f"probe:{name}")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not (self._stopping and task.cancelled()):
                task.cancel()
                raise
            # cancelled by shutdown after the grace period: the runner has logged it and set the ledger

    async def _run_now(self, name: str) -> None:
        """Probe ``name``, looked up in the config current at run time (reload-safe)."""
        runner = self.runner
        if runner is None:
            return
        found = find(runner.loaded.config, name)
        if found is not None:
            kind, entry = found
            await runner.run(kind, entry)

    async def start(self) -> None:
        """Load the config (raising ConfigError), then serve and schedule."""
        self._apply(await asyncio.to_thread(self._load))
        await self.http.start(self.listen)
        self.scheduler.start()
        log.info(
            "started",
            listen=[f"{h}:{p}" for h, p in self.http.bound],
            config=self.config_path,
            probes=sorted(self.state.probes),
        )

    async def reload(self) -> bool:
        """Validate the new config first; on any problem keep running the old one."""
        async with self._reload_lock:
            try:
                runner = await asyncio.to_thread(self._load)
            except ConfigError as exc:
                self.state.reload_ok = False
                for problem in exc.problems:
                    log.error("config_reload_failed", problem=problem)
                return False
            self._apply(runner)
            log.info("config_reloaded", probes=sorted(self.state.probes), digest=self.state.config_digest)
            return True

    def request_stop(self) -> None:
        self._stop.set()
        if self.stopwatch is not None:
            self.stopwatch.arm(asyncio.get_running_loop())

    def _step(self, name: str) -> None:
        if self.stopwatch is not None:
            self.stopwatch.step = name

    @staticmethod
    async def _bounded(step: str, work: Awaitable[None], bound: float) -> None:
        """``work`` for at most ``bound`` seconds; past it the stop goes on and says what it left."""
        try:
            await asyncio.wait_for(work, bound)
        except TimeoutError:
            log.error("stop_step_overdue", step=step, bound_seconds=bound)

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        try:
            await self.start()
            await self._stop.wait()
            log.info("stopping")
        finally:
            await self.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def shutdown(self) -> None:
        """No new runs; in-flight ones get STOP_GRACE seconds, then are cancelled (each logs its line and
        leaves the ledger right); then the ledger is flushed and HTTP stops. Every step is bounded, so a
        stuck one (a run that ignores its cancel, a hung disk) cannot keep the daemon up past its grace."""
        self._stopping = True
        if self.scheduler.running:
            self.scheduler.scheduler.pause()
        runs = [t for t in self._inflight if not t.done()]
        if runs:
            _, still = await asyncio.wait(runs, timeout=STOP_GRACE)
            for task in still:
                task.cancel()
            if still:
                self._step("cancelled runs")
                _, stuck = await asyncio.wait(still, timeout=SETTLE_BOUND)
                if stuck:
                    stuck_runs = sorted(t.get_name() for t in stuck)
                    log.error(
                        "stop_step_overdue",
                        step="cancelled runs",
                        bound_seconds=SETTLE_BOUND,
                        runs=stuck_runs,
                    )
        await asyncio.sleep(0)  # let the scheduler's jobs see their runs end
        self.scheduler.shutdown()
        if self.runner is not None:
            self._step("kept sessions")
            for kind in kinds_registry.kinds():  # sessions a kind keeps between runs (heartbeats' IDLE)
                if kind.close is not None:
                    await self._bounded(f"{kind.name} sessions", kind.close(self.runner), CLOSE_BOUND)
            self._step("ledger")
            ledger = self.runner.ledger
            await self._bounded("ledger", asyncio.to_thread(ledger.close, LEDGER_BOUND), LEDGER_BOUND + 0.5)
        self._step("http")
        await self.http.stop()
        self._step("exit")
        log.info("stopped", cancelled=sum(1 for t in runs if t.cancelled()))
