"""The long-running daemon: config, probes on a schedule, HTTP, signals, reload."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import structlog
from aiohttp import web

from probes._legacy import LegacyCache
from probes._net import clear_contexts
from probes._slots import ServerSlots
from probes.recorder import Masker

from . import logs
from .config import (
    DEFAULT_MODULES,
    ConfigError,
    LoadedConfig,
    ModuleConfig,
    in_shard,
    load_config,
    parse_shard,
    state_dir,
)
from .http import HTTPServer
from .metrics import ExporterState, SeriesCache, build_registry, runtime_registry
from .multitarget import probe_handler
from .results import ResultStore
from .runner import Runner, endpoint_of, make_masker, tls_check_settings
from .scheduler import ProbeScheduler
from .state import Ledger, load_or_create_key
from .webconfig import WebConfig

log = structlog.get_logger("mailcanary")

STOP_GRACE = 3.0  # seconds given to in-flight probes on shutdown before they are cancelled


class Daemon:
    def __init__(
        self,
        config_path: str,
        listen: str,
        loader: Callable[[str], LoadedConfig] = load_config,
        web_config: WebConfig | None = None,
        shard: str | None = None,
        vantage: str | None = None,
    ) -> None:
        self.config_path = config_path
        self.listen = listen
        self.loader = loader
        self.shard_override = shard
        self.vantage_override = vantage
        self.store = ResultStore()
        self.state = ExporterState(config_path=config_path)
        self.registry = build_registry(self.store, self.state)
        self.series = SeriesCache(self.store, self.state, runtime_registry())
        self.scheduler = ProbeScheduler(self.store)
        self.slots = ServerSlots()
        self.http = HTTPServer(
            self.registry,
            ready=lambda: self.scheduler.running and self.runner is not None,
            extra_routes=[
                web.get("/probe", probe_handler(self._modules, self._masker, lambda: self.slots)),
                web.post("/-/reload", self._http_reload),
            ],
            web_config=web_config,
            text_body=self.series.body,
        )
        self.runner: Runner | None = None
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()

    def _modules(self) -> dict[str, ModuleConfig]:
        return self.runner.loaded.config.all_modules() if self.runner else DEFAULT_MODULES

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
        key = load_or_create_key(cfg.global_.canary_key_file, state, loaded.path)
        ledger = self.runner.ledger if self.runner is not None else Ledger(state / "ledger.json")
        slots = self.slots  # one limiter for the daemon's life: sessions in flight span reloads
        legacy = self.runner.legacy if self.runner is not None else LegacyCache()
        return Runner(
            loaded=loaded,
            key=key,
            ledger=ledger,
            store=self.store,
            masker=make_masker(loaded),
            slots=slots,
            legacy=legacy,
        )

    def _apply(self, runner: Runner) -> None:
        loaded = runner.loaded
        clear_contexts()  # TLS contexts are rebuilt from the new config (and re-read trust stores)
        for warning in loaded.warnings:
            log.warning("config_warning", problem=warning)
        self.runner = runner
        logs.set_masker(runner.masker)
        cfg = loaded.config
        shard_text = self.shard_override or cfg.global_.shard
        shard = parse_shard(shard_text) if shard_text else None
        roundtrips = [p for p in cfg.roundtrip if in_shard(p.name, shard)]
        checks = [c for c in cfg.tls_checks if in_shard(c.name, shard)]
        self.state.shard = shard_text or ""
        self.state.vantage = self.vantage_override or cfg.global_.vantage or ""
        names = [p.name for p in roundtrips]
        runner.ledger.prune(keep=set(names))
        self.store.ensure(names + [c.name for c in checks])
        self.store.retain_tls(
            {
                p.name: {
                    endpoint_of(p.smtp, "smtp").address,
                    endpoint_of(p.receive, p.receive.protocol).address,
                }
                for p in roundtrips
            }
            | {c.name: {tls_check_settings(c, c.host, c.port).endpoint.address} for c in checks}
        )
        self.state.probes = {n: "roundtrip" for n in names} | {c.name: "tls" for c in checks}
        self.state.config_digest = loaded.digest
        self.state.reload_ok = True
        self.state.reload_success_time = time.time()
        jobs: dict[str, tuple[float, Callable[[], Awaitable[Any]], Any]] = {}
        for probe in roundtrips:
            spec = (probe, cfg.timeout_of(probe))
            jobs[probe.name] = (cfg.interval_of(probe), partial(self._run, probe.name), spec)
        for check in checks:
            jobs[check.name] = (cfg.interval_of(check), partial(self._run, check.name), check)
        self.scheduler.set_jobs(jobs)

    async def _run(self, name: str) -> None:
        """The job of probe ``name``, looked up in the config current at run time (reload-safe)."""
        runner = self.runner
        if runner is None:
            return
        cfg = runner.loaded.config
        for probe in cfg.roundtrip:
            if probe.name == name:
                await runner.run_roundtrip(probe)
                return
        for check in cfg.tls_checks:
            if check.name == name:
                await runner.run_tls_check(check)
                return

    async def start(self) -> None:
        """Load the config (raising ConfigError), then serve and schedule."""
        loaded = self.loader(self.config_path)
        self._apply(self._prepare(loaded))
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
                runner = self._prepare(self.loader(self.config_path))
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
        self.scheduler.shutdown()
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        probes = [t for t in pending if "run_coroutine_job" in repr(t.get_coro())]
        if probes:
            _, still = await asyncio.wait(probes, timeout=STOP_GRACE)
            for task in still:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*still, return_exceptions=True)
        await self.http.stop()
        log.info("stopped")
