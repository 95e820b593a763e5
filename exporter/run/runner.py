"""The one place where probe runs get a deadline and exceptions become outcomes: one generic run for
every kind of the registry (:mod:`exporter.registry`); what is particular to a kind is in its module."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import InitVar, dataclass, field
from typing import Any, Generic, TypeVar

import structlog

from exporter import registry
from exporter.config import LoadedConfig
from exporter.registry import AnyKind, RunHooks, Settled, Verdict
from exporter.run.history import BoundedTranscript, History
from exporter.run.results import ResultStore, RunResult
from exporter.state.ledger import Ledger
from probes.context import ProbeContext
from probes.domain.dnsbl import ListingCache
from probes.errors import ProbeError
from probes.recorder import Masker, ReceiverFacts, Recorder
from probes.tls.audit import TLSFacts
from probes.tls.hygiene import CRLCache, Hygiene, OCSPCache, chain_hygiene
from probes.tls.legacy import LegacyCache
from probes.tls.scanning import ScanCache
from probes.wire.net import Endpoint
from probes.wire.slots import ServerSlots, deadline_extender

log = structlog.get_logger("mailcanary.runner")
T = TypeVar("T")


@dataclass(frozen=True)
class Attempt(Generic[T]):
    value: T | None
    reason: str
    message: str
    queued: float = 0.0  # seconds spent waiting for session slots (see QueueClock)


class QueueClock:
    """Wall time a run spends waiting for session slots (probes.wire.slots), overlapping waits counted
    once. Fed by the deadline extender: a wait starts with ``+queue_timeout`` (> 0) and ends with what
    was not waited (<= 0), whatever way it ends."""

    __slots__ = ("since", "total", "waiting")

    def __init__(self) -> None:
        self.waiting, self.since, self.total = 0, 0.0, 0.0

    def note(self, seconds: float) -> None:
        now = time.monotonic()
        if seconds > 0:
            if self.waiting == 0:
                self.since = now
            self.waiting += 1
        elif self.waiting:
            self.waiting -= 1
            if self.waiting == 0:
                self.total += now - self.since

    def seconds(self) -> float:
        return self.total + (time.monotonic() - self.since if self.waiting else 0.0)


# Probe facts about what the receiver did that go into the run's log line (RunResult.receiver), in order:
# the keys of probes.recorder.ReceiverFacts, filled by Facts.receiver().
RECEIVER_FACTS: tuple[str, ...] = tuple(ReceiverFacts.__annotations__)


def _sides(loaded: LoadedConfig) -> list[tuple[Endpoint, str, int | None]]:
    """(endpoint, service, max_sessions) of every server a configured probe talks to."""
    return [side for kind, entry in registry.configured(loaded.config) for side in kind.sessions(entry)]


def session_limits(loaded: LoadedConfig) -> dict[str, int]:
    """Per-pool limits from the endpoints that set ``max_sessions`` (the smallest wins for a shared pool)."""
    limits: dict[str, int] = {}
    for ep, service, limit in _sides(loaded):
        if limit is not None:
            for key in ServerSlots.keys(ep, service):
                limits[key] = min(limits.get(key, limit), limit)
    return limits


def session_pools(loaded: LoadedConfig) -> set[str]:
    """Every pool a configured probe uses."""
    return {key for ep, service, _ in _sides(loaded) for key in ServerSlots.keys(ep, service)}


def _quota_of(rec: Recorder) -> dict[str, tuple[int, int]] | None:
    """The run's quota reading as resource (lower case) -> (used, limit); None if none was read."""
    found = rec.facts.quota
    if found is None:
        return None
    return {res.lower(): (u.used, u.limit) for res, u in found.items()}


# Verdicts a revoked certificate overrides: the run got as far as the certificate. A failure before it
# (no connection, a timeout, a bounce…) keeps its own reason: it says more about that outage.
REVOCABLE: frozenset[str] = frozenset({"success", "tls_verify", "tls_params"})


def revocations(tls: Mapping[str, TLSFacts], hygiene: Mapping[str, Hygiene]) -> list[tuple[str, str]]:
    """(endpoint, who says so) for every certificate this run saw that is revoked: the server's stapled
    OCSP response, the OCSP responder the leaf names, or the CRL it names."""
    out: list[tuple[str, str]] = []
    for endpoint, facts in tls.items():
        h = hygiene.get(endpoint)
        said = []
        if facts.ocsp_staple_status == "revoked":
            said.append("stapled OCSP response")
        if h is not None and h.ocsp is not None and h.ocsp.status == "revoked":
            said.append("OCSP responder")
        if h is not None and h.crl is not None and h.crl.status == "revoked":
            said.append("CRL")
        if said:
            out.append((endpoint, " and ".join(said)))
    return out


def revoked_verdict(verdict: Verdict, tls: Mapping[str, TLSFacts], hygiene: Mapping[str, Hygiene]) -> Verdict:
    """A revoked certificate fails the run (``tls_revoked``), whatever else went right: a client that
    checks revocation would not have talked to that server. Delivery facts are kept."""
    found = revocations(tls, hygiene)
    if not found or verdict.reason not in REVOCABLE:
        return verdict
    said = "; ".join(f"certificate of {endpoint} is revoked ({who})" for endpoint, who in found)
    return dataclasses.replace(verdict, reason="tls_revoked", message=said)


def make_masker(loaded: LoadedConfig) -> Masker:
    masker = Masker()
    for username, password in loaded.all_secrets():
        masker.add(password, username)
    return masker


@dataclass
class Runner:
    """Runs probes for the daemon and the one-shot command alike, recording into ``store``."""

    loaded: LoadedConfig
    key: bytes
    ledger: Ledger
    store: ResultStore
    masker: Masker
    history: History | None = None  # the status page's recent runs and failed dialogues
    slots: ServerSlots = field(default_factory=ServerSlots)  # shared across reloads: sessions in flight
    legacy: LegacyCache = field(default_factory=LegacyCache)  # legacy TLS answers, kept across reloads
    scans: ScanCache = field(default_factory=ScanCache)  # TLS scans per endpoint, kept across reloads
    ocsp: OCSPCache = field(default_factory=OCSPCache)  # OCSP answers until nextUpdate, kept across reloads
    crl: CRLCache = field(default_factory=CRLCache)  # CRL verdicts until nextUpdate, kept across reloads
    dnsbl: ListingCache = field(default_factory=ListingCache)  # sending-IP DNSBL answers, for cache_for
    no_junk_warned: set[str] = field(default_factory=set)  # probes told once that no junk folder exists
    own_slots: InitVar[bool] = True  # False: the daemon's shared limiter, set by limit_sessions() in _apply
    # probe -> the LOGIN-DELAY its interval was last warned about (one entry per configured POP3 probe)
    delay_warned: dict[str, float] = field(default_factory=dict)

    def __post_init__(self, own_slots: bool) -> None:
        if own_slots:
            self.limit_sessions()

    def limit_sessions(self) -> None:
        """Apply this config's session limits to the limiter; on the event loop (it wakes waiters), and
        only once the config is really taken (a reload prepared on a worker thread may still fail)."""
        g = self.loaded.config.global_
        self.slots.configure(
            g.max_sessions, session_limits(self.loaded), g.queue_timeout, known=session_pools(self.loaded)
        )

    async def _attempt(self, name: str, run: Callable[[], Awaitable[T]], deadline: float) -> Attempt[T]:
        """Run under the deadline; every way it can end becomes (value or None, reason, message).

        Time spent waiting for a session slot (the ``queue`` phase) moves the deadline on: queueing is
        our own doing and must not turn into a ``timeout`` of the server. It is measured (``queued``)."""
        queue = QueueClock()
        attempt = await self._attempt_in(name, run, deadline, queue)
        return dataclasses.replace(attempt, queued=queue.seconds())

    async def _attempt_in(
        self, name: str, run: Callable[[], Awaitable[T]], deadline: float, queue: QueueClock
    ) -> Attempt[T]:
        try:
            async with asyncio.timeout(deadline) as cm:

                def extend(seconds: float) -> None:
                    queue.note(seconds)
                    when = cm.when()
                    if when is not None:
                        with contextlib.suppress(RuntimeError):  # already expiring: too late to move
                            cm.reschedule(when + seconds)

                token = deadline_extender.set(extend)
                try:
                    return Attempt(await run(), "success", "ok")
                finally:
                    deadline_extender.reset(token)
        except TimeoutError as exc:
            text = str(exc) if isinstance(exc, ProbeError) else f"no result within the {deadline:g}s deadline"
            return Attempt(None, "timeout", text)
        except ProbeError as exc:
            return Attempt(None, exc.reason, exc.message)
        except Exception as exc:  # a bug, not a mail problem: keep the daemon alive, say so loudly
            log.exception("probe_internal_error", probe=name)
            return Attempt(None, "internal", f"{type(exc).__name__}: {exc}")

    def _finish(
        self,
        name: str,
        rec: Recorder,
        verdict: Verdict,
        started: float,
        t0: float,
        settled: Settled,
        hygiene: dict[str, Hygiene],
        queued: float = 0.0,
    ) -> RunResult:
        reason, message = verdict.reason, verdict.message
        run = RunResult(
            probe=name,
            success=reason == "success",
            reason=reason,
            message=self.masker(" ".join(message.split())),
            started=started,
            duration=time.monotonic() - t0,
            queue=queued,
            phases=dict(rec.phases),
            delivery=verdict.delivery,
            late=settled.late,
            swept=settled.swept,
            lost=settled.lost,
            outstanding=settled.outstanding,
            placement=verdict.placement,
            tls=dict(rec.tls),
            receiver=rec.facts.receiver(),
            bounces=tuple(b["class"] for b in rec.facts.bounces or ()),
            path=rec.facts.path if reason == "success" else None,
            clock_offset=rec.facts.clock_offset if reason == "success" else None,
            verdict=rec.facts.verdict if reason == "success" else None,
            quota=_quota_of(rec),
            quota_error=rec.facts.quota_error,
            sync_seconds=rec.facts.sync_seconds if reason == "success" else None,
            sync_arrival=rec.facts.sync_arrival_seconds if reason == "success" else None,
            failed_phase=rec.facts.current_phase if reason != "success" else None,
            transcript=None if isinstance(rec.transcript, BoundedTranscript) else rec.transcript,
            detail=verdict.detail,
            hygiene=hygiene,
            sender_dnsbl=settled.sender_dnsbl,
        )
        if self.history is not None:
            self.history.record(run, rec.transcript)
        self._log(run)
        return run

    def _transcript(self, debug: bool) -> list[str] | None:
        """Everything for --debug; with a status page, a bounded one for the failed-run history."""
        return [] if debug else BoundedTranscript() if self.history is not None else None

    async def run(self, kind: AnyKind, entry: Any, debug: bool = False) -> RunResult:
        """One run of ``entry`` of ``kind``: settings, the probe under its deadline, the kind's verdict,
        hygiene of the chains seen, the stored result and its log line."""
        rec = Recorder(masker=self.masker, transcript=self._transcript(debug))
        started, t0 = time.time(), time.monotonic()
        settings = kind.settings(entry, self)
        ctx = ProbeContext(
            recorder=rec,
            slots=self.slots,
            ocsp=self.ocsp,
            crl=self.crl,
            legacy=self.legacy,
            scans=self.scans,
            dnsbl=self.dnsbl,
            debug=debug,
        )
        hooks: RunHooks | None = kind.hooks(entry, self, ctx) if kind.hooks is not None else None
        settled, spent = Settled(), 0.0
        hygiene: dict[str, Hygiene] = {}
        try:
            if hooks is not None:
                await hooks.begin()
            attempt = await self._attempt(
                entry.name, lambda: kind.probe(settings, ctx), kind.deadline(entry, self.loaded.config)
            )
            if hooks is not None:
                settled = await hooks.after(attempt.reason)
            if kind.hygiene:
                hygiene, spent = await self._hygiene(rec)
        except asyncio.CancelledError:  # the daemon is stopping: leave things right, say so, go on
            if hooks is not None:
                await hooks.cancelled()
            self._log_cancelled(entry.name, rec, t0)
            raise
        verdict = kind.judge(attempt.value, attempt.reason, attempt.message)
        if kind.hygiene and "tls_revoked" in kind.outcomes:
            verdict = revoked_verdict(verdict, rec.tls, hygiene)
        # OCSP, CRL and the sender's DNSBL are not part of the probe's time
        run = self._finish(
            entry.name, rec, verdict, started, t0 + spent + settled.spent, settled, hygiene, attempt.queued
        )
        if hooks is not None:
            hooks.finished(run)
        return run

    async def run_entry(self, entry: Any, debug: bool = False) -> RunResult:
        """:meth:`run` with the kind found from the entry's model."""
        return await self.run(registry.kind_of_entry(entry), entry, debug)

    def _log_cancelled(self, name: str, rec: Recorder, t0: float) -> None:
        """The one log line of a run cut short by shutdown (not recorded: the process is going away)."""
        log.warning(
            "probe_run",
            probe=name,
            outcome="cancelled",
            reason="cancelled",
            error="stopped before the run finished (daemon shutdown after the grace period)",
            failed_phase=rec.facts.current_phase,
            duration_seconds=round(time.monotonic() - t0, 4),
            phases={k: round(v, 4) for k, v in rec.phases.items()},
        )

    async def _hygiene(self, rec: Recorder) -> tuple[dict[str, Hygiene], float]:
        """Certificate hygiene of every chain this run saw (no new session to the server; OCSP answers
        cached until nextUpdate). Returns the facts and the seconds spent, which the run's duration
        leaves out."""
        t = time.monotonic()
        out: dict[str, Hygiene] = {}
        g = self.loaded.config.global_
        for endpoint, facts in rec.tls.items():
            chain = [c.der for c in facts.chain]
            found = await chain_hygiene(
                chain,
                check_ocsp=g.check_ocsp,
                timeout=g.ocsp_timeout,
                cache=self.ocsp,
                check_crl=g.check_crl,
                crl_cache=self.crl,
            )
            if found is not None:
                out[endpoint] = found
        return out, time.monotonic() - t

    def _warn_no_junk(self, run: RunResult) -> None:
        """Placement on and no junk folder: one warning per probe (again only after one was found), as
        every canary filed as spam will then time out; the series says it at every run."""
        found = run.receiver.get("junk_folder_found")
        if found is True:
            self.no_junk_warned.discard(run.probe)
        elif found is False and run.probe not in self.no_junk_warned:
            self.no_junk_warned.add(run.probe)
            log.warning(
                "junk_folder_missing",
                probe=run.probe,
                message="placement is on but the mailbox has no junk folder (no SPECIAL-USE \\Junk, no "
                "receive.junk_folders name matched): a canary filed as spam will time out",
            )

    def _log(self, run: RunResult) -> None:
        self.store.record(run)
        fields: dict[str, object] = {
            "probe": run.probe,
            "outcome": run.reason,
            "duration_seconds": round(run.duration, 4),
            "queue_seconds": round(run.queue, 4),
            "phases": {k: round(v, 4) for k, v in run.phases.items()},
        }
        if run.delivery is not None:
            fields["delivery_seconds"] = round(run.delivery, 4)
        if run.placement is not None:
            fields["placement"] = run.placement
        fields.update(run.receiver)
        if run.verdict is not None and (run.verdict.auth or run.verdict.scores or run.verdict.ignored):
            fields["verdict"] = {
                **run.verdict.auth,
                **({"authserv_id": run.verdict.authserv_id} if run.verdict.authserv_id else {}),
                **({"ignored_fields": run.verdict.ignored} if run.verdict.ignored else {}),
                **{f"{engine}_score": score for engine, score in run.verdict.scores.items()},
            }
        if run.path is not None:
            fields["path"] = {
                "hops": run.path.count,
                "tls": [h.tls for h in run.path.hops],
                "delays_seconds": run.path.delays(),
                "total_seconds": run.path.total,
                **({"truncated": True} if run.path.truncated else {}),
            }
        if run.late or run.swept or run.lost:
            fields.update(late=run.late, swept=run.swept, lost=run.lost)
        tls = {
            endpoint: {
                "version": facts.version,
                "verified": facts.verified,
                "days_left": round((facts.earliest_not_after - time.time()) / 86400, 1),
            }
            for endpoint, facts in run.tls.items()
            if facts.earliest_not_after is not None
        }
        if tls:
            fields["tls"] = tls
        self._warn_no_junk(run)
        if run.success:
            log.info("probe_run", **fields)
        else:
            log.warning(
                "probe_run", reason=run.reason, error=run.message, failed_phase=run.failed_phase, **fields
            )
