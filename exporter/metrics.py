"""Prometheus metrics rendered from stored outcomes at scrape time (a custom collector).

Nothing here is a global gauge mutated by probe code: a probe removed from the config disappears from
/metrics with its stats, and a scrape never sees half a result.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from probes.placement import PLACEMENTS

from .buildinfo import build_info
from .results import DELIVERY_BUCKETS, OUTCOMES, TLS_OUTCOMES, ProbeStats, ResultStore
from .tlsmetrics import legacy_testable, tls_families


@dataclass
class ExporterState:
    """The exporter's own facts, updated by the daemon (config loads, scheduler)."""

    config_path: str = ""
    config_digest: str = ""
    reload_ok: bool = True
    reload_success_time: float | None = None
    probes: dict[str, str] = field(default_factory=dict)  # probe name -> kind ("roundtrip", "tls")
    sandbox: bool = False
    shard: str = ""  # "i/N" when this instance runs a share of the probes
    vantage: str = ""  # where this instance probes from; a label on every mailcanary_* series when set


class MailcanaryCollector(Collector):
    def __init__(self, store: ResultStore, state: ExporterState) -> None:
        self.store = store
        self.state = state

    def collect(self) -> Iterator[Metric]:
        snap = self.store.snapshot()
        families = [*self._exporter(), *self._roundtrip(snap), *self._tls(snap)]
        vantage = self.state.vantage
        for fam in families:
            if vantage:
                fam.samples = [s._replace(labels={**s.labels, "vantage": vantage}) for s in fam.samples]
            yield fam

    def _tls(self, snap: dict[str, ProbeStats]) -> Iterator[Metric]:
        checks = sorted(n for n in snap if self.state.probes.get(n) == "tls")
        success = GaugeMetricFamily(
            "mailcanary_tls_check_success",
            "1 if the last TLS check verified the chain and the name, else 0.",
            labels=["probe"],
        )
        duration = GaugeMetricFamily(
            "mailcanary_tls_check_duration_seconds", "Wall time of the last TLS check.", labels=["probe"]
        )
        last_run = GaugeMetricFamily(
            "mailcanary_tls_check_last_run_timestamp_seconds",
            "When the last TLS check finished.",
            labels=["probe"],
        )
        runs = CounterMetricFamily(
            "mailcanary_tls_check_runs", "Completed TLS checks by outcome.", labels=["probe", "outcome"]
        )
        for name in checks:
            st = snap[name]
            if st.last is not None:
                success.add_metric([name], 1 if st.last.success else 0)
                duration.add_metric([name], st.last.duration)
                last_run.add_metric([name], st.last.started + st.last.duration)
            for outcome in TLS_OUTCOMES:
                runs.add_metric([name, outcome], st.runs.get(outcome, 0))
        yield from (success, duration, last_run, runs)
        rows = [
            ([name, facts.endpoint, facts.protocol], facts)
            for name in sorted(snap)
            for _, facts in sorted(snap[name].tls.items())
        ]
        yield from tls_families(rows, ["probe", "endpoint", "protocol"])
        yield legacy_testable()

    def _exporter(self) -> Iterator[Metric]:
        st = self.state
        info = InfoMetricFamily("mailcanary_build", "mailcanary version, git revision and branch, Python.")
        b = build_info()
        labels = {"version": b.version, "revision": b.revision, "branch": b.branch}
        info.add_metric([], {**labels, "python_version": b.python_version})
        yield info
        cfg = InfoMetricFamily("mailcanary_config", "Digest of the loaded configuration file.")
        cfg.add_metric(
            [], {"digest": st.config_digest, "sandbox": "true" if st.sandbox else "false", "shard": st.shard}
        )
        yield cfg
        yield GaugeMetricFamily(
            "mailcanary_config_last_reload_successful",
            "1 if the last configuration load or reload succeeded, else 0 (the old config keeps running).",
            value=1 if st.reload_ok else 0,
        )
        if st.reload_success_time is not None:
            yield GaugeMetricFamily(
                "mailcanary_config_last_reload_success_timestamp_seconds",
                "When the configuration was last loaded successfully.",
                value=st.reload_success_time,
            )
        kinds = GaugeMetricFamily("mailcanary_config_probes", "Configured probes by kind.", labels=["kind"])
        counts: dict[str, int] = {"roundtrip": 0}
        for kind in st.probes.values():
            counts[kind] = counts.get(kind, 0) + 1
        for kind, n in sorted(counts.items()):
            kinds.add_metric([kind], n)
        yield kinds

    def _roundtrip(self, snap: dict[str, ProbeStats]) -> Iterator[Metric]:
        names = sorted(n for n in snap if self.state.probes.get(n, "roundtrip") == "roundtrip")

        def gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["probe", *labels])

        def counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=["probe", *labels])

        success = gauge(
            "mailcanary_roundtrip_success",
            "1 if the last completed round trip delivered and verified the canary, else 0.",
        )
        last_delivery = gauge(
            "mailcanary_roundtrip_last_delivery_seconds",
            "Delivery latency of the last successful round trip: first seen minus DATA accepted.",
        )
        phase = gauge(
            "mailcanary_roundtrip_phase_seconds",
            "Duration of each protocol phase in the last run.",
            "phase",
        )
        duration = gauge(
            "mailcanary_roundtrip_duration_seconds",
            "Wall time of the last run, all phases included.",
        )
        last_run = gauge(
            "mailcanary_roundtrip_last_run_timestamp_seconds",
            "When the last run finished.",
        )
        last_ok = gauge(
            "mailcanary_roundtrip_last_success_timestamp_seconds",
            "When the last successful run finished.",
        )
        runs = counter(
            "mailcanary_roundtrip_runs",
            "Completed runs by outcome: success or the failure reason.",
            "outcome",
        )
        late = counter(
            "mailcanary_roundtrip_late",
            "Canaries that arrived after their run had timed out (seen and deleted by a later run).",
        )
        swept = counter(
            "mailcanary_roundtrip_swept",
            "Stale canaries of this probe deleted that were not known to be late (sent before a restart).",
        )
        lost = counter(
            "mailcanary_roundtrip_lost",
            "Canaries that timed out and were still unseen lost_after their sending: given up on.",
        )
        outstanding = gauge(
            "mailcanary_roundtrip_canaries_outstanding",
            "Canaries that timed out and are still awaited (would count as late if they turn up).",
        )
        placement = gauge(
            "mailcanary_roundtrip_placement",
            "Where the last delivered canary was found: 1 for that folder (inbox, junk, other), 0 else.",
            "folder",
        )
        placements = counter(
            "mailcanary_roundtrip_placements",
            "Delivered canaries by the folder they were found in (inbox, junk, other).",
            "folder",
        )
        lag = gauge(
            "mailcanary_scheduler_lag_seconds",
            "How late the scheduler started the last run compared with its planned time.",
        )
        skipped = counter(
            "mailcanary_scheduler_skipped_runs",
            "Runs not started because the previous run of the same probe was still going.",
        )
        hist = HistogramMetricFamily(
            "mailcanary_roundtrip_delivery_seconds",
            "Delivery latency of successful round trips: first seen by the receiver minus DATA accepted.",
            labels=["probe"],
        )
        for name in names:
            st = snap[name]
            if st.last is not None:
                r = st.last
                success.add_metric([name], 1 if r.success else 0)
                duration.add_metric([name], r.duration)
                last_run.add_metric([name], r.started + r.duration)
                for ph, secs in sorted(r.phases.items()):
                    phase.add_metric([name, ph], secs)
            if st.last_delivery is not None:
                last_delivery.add_metric([name], st.last_delivery)
            if st.last_success is not None:
                last_ok.add_metric([name], st.last_success)
            for outcome in OUTCOMES:  # every outcome present from the start, so rate() sees the first failure
                runs.add_metric([name, outcome], st.runs.get(outcome, 0))
            late.add_metric([name], st.late_total)
            swept.add_metric([name], st.swept_total)
            lost.add_metric([name], st.lost_total)
            for folder in PLACEMENTS:  # fixed set: every series present from the first delivery
                if st.last_placement is not None:
                    placement.add_metric([name, folder], 1 if folder == st.last_placement else 0)
                placements.add_metric([name, folder], st.placements.get(folder, 0))
            if st.last is not None:
                outstanding.add_metric([name], st.last.outstanding)
            if st.scheduler_lag is not None:
                lag.add_metric([name], st.scheduler_lag)
            skipped.add_metric([name], st.skipped_runs)
            buckets = [(_le(b), c) for b, c in zip(DELIVERY_BUCKETS, st.bucket_counts, strict=True)]
            buckets.append(("+Inf", st.delivery_count))
            hist.add_metric([name], buckets, sum_value=st.delivery_sum)
        yield from (
            success,
            hist,
            last_delivery,
            phase,
            duration,
            last_run,
            last_ok,
            runs,
            late,
            swept,
            lost,
            outstanding,
            placement,
            placements,
            lag,
            skipped,
        )


def _le(bound: float) -> str:
    return f"{bound:g}" if bound != int(bound) else f"{bound:.1f}"


def build_registry(store: ResultStore, state: ExporterState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MailcanaryCollector(store, state))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
