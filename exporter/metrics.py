"""Prometheus metrics rendered from stored outcomes at scrape time (a custom collector).

Nothing here is a global gauge mutated by probe code: a probe removed from the config disappears from
/metrics with its stats, and a scrape never sees half a result.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter.buildinfo import build_info
from exporter.domainmetrics import hygiene_families
from exporter.results import DELIVERY_BUCKETS, OUTCOMES, TLS_OUTCOMES, ProbeStats, ResultStore
from exporter.runfamilies import run_families
from exporter.tlsmetrics import legacy_testable, tls_families
from probes.domain.dnsbl import STATUSES as DNSBL_STATUSES
from probes.receipt.placement import PLACEMENTS
from probes.receipt.quota import QUOTA_ERRORS
from probes.roundtrip.probe import SYNC_SKIP_REASONS

MAX_HOP_LABELS = 8  # hop label values "1".."8": the path's first hops; the count is exact beyond


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


def kind_of(state: ExporterState, name: str) -> str:
    return state.probes.get(name, "roundtrip")


Families = Callable[[dict[str, ProbeStats], list[str]], list[Metric]]


def kind_families() -> list[tuple[str, Families]]:
    """(kind, result exporter) in the order of the probe-kind table (exporter.kinds, imported here late:
    the table names the renderers of this module)."""
    from exporter.kinds import KINDS

    return [(k.name, k.families) for k in KINDS]


class MailcanaryCollector(Collector):
    """The reference renderer: every family from a fresh snapshot. /metrics serves :class:`SeriesCache`
    (the same bytes, pre-rendered per probe); this one serves OpenMetrics and is what tests compare."""

    def __init__(self, store: ResultStore, state: ExporterState) -> None:
        self.store = store
        self.state = state

    def collect(self) -> Iterator[Metric]:
        snap = self.store.snapshot()
        st = self.state
        families = list(exporter_families(st))
        for kind, render in kind_families():
            families += render(snap, sorted(n for n in snap if kind_of(st, n) == kind))
        families += [*tls_fact_families(snap, sorted(snap)), legacy_testable()]
        vantage = st.vantage
        for fam in families:
            if vantage:
                with_vantage(fam, vantage)
            yield fam


def with_vantage(fam: Metric, vantage: str) -> Metric:
    fam.samples = [s._replace(labels={**s.labels, "vantage": vantage}) for s in fam.samples]
    return fam


def tls_check_families(snap: dict[str, ProbeStats], checks: list[str]) -> list[Metric]:
    """Per TLS check: last success, duration, finish time, runs by outcome."""
    return list(
        run_families(
            snap,
            checks,
            "tls_check",
            "TLS check",
            "1 if the last TLS check verified the chain and the name, else 0.",
            "Completed TLS checks by outcome.",
            TLS_OUTCOMES,
        )
    )


def tls_fact_families(snap: dict[str, ProbeStats], names: list[str]) -> list[Metric]:
    """The ``mailcanary_tls_*`` facts of every endpoint these probes talked to."""
    rows = [
        ([name, facts.endpoint, facts.protocol], facts)
        for name in names
        for _, facts in sorted(snap[name].tls.items())
    ]
    labels = ["probe", "endpoint", "protocol"]
    hygiene = [
        ([name, facts.endpoint, facts.protocol], h.key, h.ocsp, h.crl)
        for name in names
        for endpoint, facts in sorted(snap[name].tls.items())
        if (h := snap[name].hygiene.get(endpoint)) is not None
    ]
    return [*tls_families(rows, labels), *hygiene_families(hygiene, labels, "mailcanary_tls_")]


def exporter_families(st: ExporterState) -> Iterator[Metric]:
    """The exporter's own facts: build, config, probes by kind."""
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


def roundtrip_families(snap: dict[str, ProbeStats], names: list[str]) -> list[Metric]:
    """Per round trip: the 29 families documented in docs/metrics.md, in exposition order."""

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
    bounces = counter(
        "mailcanary_roundtrip_bounces",
        "Verified bounces (DSNs) about this probe's canaries, by status class (5.1.x, 4.4.x, unknown).",
        "class",
    )
    hops = gauge(
        "mailcanary_roundtrip_hops",
        "Received fields of the last delivered canary: the servers it passed (at most 30 read).",
    )
    path_seconds = gauge(
        "mailcanary_roundtrip_path_seconds",
        "Last minus first Received time stamp of the last delivered canary (1 s resolution, skew shown).",
    )
    hop_delay = gauge(
        "mailcanary_roundtrip_hop_delay_seconds",
        "Per hop (2.. from the sender): its Received stamp minus the previous one's; negative = clock skew.",
        "hop",
    )
    hop_tls = gauge(
        "mailcanary_roundtrip_hop_tls",
        "Per hop (1.. from the sender): 1 if its Received field says the message came in over TLS.",
        "hop",
    )
    clock_offset = gauge(
        "mailcanary_roundtrip_clock_offset_seconds",
        "First Received stamp minus this host's send time: beyond about +-1 s, the clocks disagree.",
    )
    auth_result = gauge(
        "mailcanary_roundtrip_auth_result",
        "1 for the result (pass, fail, ..., missing) trusted authserv-ids gave the last delivered canary.",
        "method",
        "result",
    )
    sender_listed = gauge(
        "mailcanary_roundtrip_sender_dnsbl_listed",
        "1 if the sending IP the receiver saw is listed in the zone, 0 if not; absent on no usable answer.",
        "zone",
    )
    sender_status = gauge(
        "mailcanary_roundtrip_sender_dnsbl_status",
        "1 with the zone's answer for the sending IP: listed, not_listed, refused (127.255.255.x) or error.",
        "zone",
        "status",
    )
    spam_score = gauge(
        "mailcanary_roundtrip_spam_score",
        "Spam score the receiving side gave the last delivered canary (spamassassin, rspamd, microsoft).",
        "engine",
    )
    lag = gauge(
        "mailcanary_scheduler_lag_seconds",
        "How late the scheduler started the last run compared with its planned time.",
    )
    skipped = counter(
        "mailcanary_scheduler_skipped_runs",
        "Runs not started because the previous run of the same probe was still going.",
    )
    sync = gauge(
        "mailcanary_roundtrip_sync_seconds",
        "Sync check, last successful run: from the first IMAP session setting the flag on the canary "
        "until the second session (the other device) saw it.",
    )
    sync_arrival = gauge(
        "mailcanary_roundtrip_sync_arrival_seconds",
        "Sync check, last successful run: delivery latency as the second IMAP session saw it (first "
        "seen there minus DATA accepted).",
    )
    sync_skipped = gauge(
        "mailcanary_roundtrip_sync_skipped",
        "Sync check, last delivered run: 1 for why it did not run (the canary was found in junk or another "
        "folder, not the inbox the second session watches), 0 else; all 0 when it ran.",
        "reason",
    )
    junk_found = gauge(
        "mailcanary_roundtrip_junk_folder_found",
        "Placement on: 1 if the last run found a junk folder to watch (SPECIAL-USE \\Junk or a configured "
        "name), 0 if the mailbox has none (canaries filed as spam then time out).",
    )
    quota_used = gauge(
        "mailcanary_mailbox_quota_used",
        "Quota usage of the canary mailbox at the last reading (RFC 9208): bytes for resource storage, "
        "a count for message.",
        "resource",
    )
    quota_limit = gauge(
        "mailcanary_mailbox_quota_limit",
        "Quota limit of the canary mailbox at the last reading: bytes for storage, a count for message.",
        "resource",
    )
    quota_errors = counter(
        "mailcanary_mailbox_quota_read_errors",
        "Quota reads that failed (the round trip went on): refused (NO/BAD), protocol, timeout.",
        "reason",
    )
    login_delay = gauge(
        "mailcanary_receive_login_delay_seconds",
        "POP3: the LOGIN-DELAY the receiving server announced (RFC 2449), as last learnt; 0: none.",
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
        path = st.last_path
        if path is not None:
            hops.add_metric([name], path.count)
            if path.total is not None:
                path_seconds.add_metric([name], path.total)
            for hop in path.hops[:MAX_HOP_LABELS]:
                hop_tls.add_metric([name, str(hop.index)], 1 if hop.tls else 0)
            for i, delay in enumerate(path.delays()[: MAX_HOP_LABELS - 1], start=2):
                if delay is not None:
                    hop_delay.add_metric([name, str(i)], delay)
        if st.last_clock_offset is not None:
            clock_offset.add_metric([name], st.last_clock_offset)
        verdict = st.last_verdict
        if verdict is not None:
            for method, result in sorted(verdict.auth.items()):
                auth_result.add_metric([name, method, result], 1)
            for engine, score in sorted(verdict.scores.items()):
                spam_score.add_metric([name, engine], score)
        for li in st.last_sender_dnsbl:
            if li.status in ("listed", "not_listed"):
                sender_listed.add_metric([name, li.zone], 1 if li.status == "listed" else 0)
            for status in DNSBL_STATUSES:
                sender_status.add_metric([name, li.zone, status], 1 if li.status == status else 0)
        for cls, n in sorted(st.bounces.items()):  # only classes seen: RFC 3463 has 16 (4|5 x 8)
            bounces.add_metric([name, cls], n)
        if st.last is not None:
            outstanding.add_metric([name], st.last.outstanding)
        if st.scheduler_lag is not None:
            lag.add_metric([name], st.scheduler_lag)
        skipped.add_metric([name], st.skipped_runs)
        if st.last_sync is not None:
            sync.add_metric([name], st.last_sync)
        if st.last_sync_arrival is not None:
            sync_arrival.add_metric([name], st.last_sync_arrival)
        if st.sync_skipped is not None:
            for why in SYNC_SKIP_REASONS:
                sync_skipped.add_metric([name, why], 1 if why == st.sync_skipped else 0)
        if st.junk_found is not None:
            junk_found.add_metric([name], 1 if st.junk_found else 0)
        for resource, (used, limit) in sorted(st.quota.items()):
            quota_used.add_metric([name, resource], used)
            quota_limit.add_metric([name, resource], limit)
        if st.quota_errors is not None:  # from the first attempt on, so rate() sees the first failure
            for reason in QUOTA_ERRORS:
                quota_errors.add_metric([name, reason], st.quota_errors.get(reason, 0))
        if st.login_delay is not None:
            login_delay.add_metric([name], st.login_delay)
        buckets = [(_le(b), c) for b, c in zip(DELIVERY_BUCKETS, st.bucket_counts, strict=True)]
        buckets.append(("+Inf", st.delivery_count))
        hist.add_metric([name], buckets, sum_value=st.delivery_sum)
    return [
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
        bounces,
        hops,
        path_seconds,
        hop_delay,
        hop_tls,
        clock_offset,
        auth_result,
        spam_score,
        sender_listed,
        sender_status,
        lag,
        skipped,
        sync,
        sync_arrival,
        sync_skipped,
        junk_found,
        quota_used,
        quota_limit,
        quota_errors,
        login_delay,
    ]


def _le(bound: float) -> str:
    return f"{bound:g}" if bound != int(bound) else f"{bound:.1f}"


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _number(value: float) -> str:
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def sample_lines(fam: Metric) -> str:
    """A family's samples in the Prometheus text format, exactly as ``generate_latest`` writes them
    (labels sorted by name, values through ``floatToGoString``); our names never need escaping."""
    out = []
    for sample in fam.samples:
        if sample.labels:
            labels = ",".join(f'{k}="{_escape_value(v)}"' for k, v in sorted(sample.labels.items()))
            out.append(f"{sample.name}{{{labels}}} {_number(sample.value)}\n")
        else:
            out.append(f"{sample.name} {_number(sample.value)}\n")
    return "".join(out)


_TYPES = {"counter": "counter", "info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram"}
_OM_ONLY = ("_created", "_gsum", "_gcount")


def family_header(fam: Metric) -> str:
    """``# HELP`` / ``# TYPE`` lines exactly as ``generate_latest`` writes them."""
    name = fam.name + ("_total" if fam.type == "counter" else "_info" if fam.type == "info" else "")
    kind = _TYPES.get(fam.type, "untyped" if fam.type == "unknown" else fam.type)
    doc = fam.documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


def text_of(families: Iterable[Metric]) -> str:
    """The Prometheus text format of ``families``, as ``generate_latest`` renders it, ~5x faster; what it
    does not handle the same way (OpenMetrics-only samples, timestamps, exemplars) goes through
    prometheus_client itself."""
    fams = list(families)
    for fam in fams:
        for sample in fam.samples:
            extras = (sample.timestamp, sample.exemplar, sample.native_histogram)
            if any(x is not None for x in extras) or sample.name.endswith(_OM_ONLY):
                return _render(fams)
    return "".join(family_header(fam) + sample_lines(fam) for fam in fams)


def _render(families: Iterable[Metric]) -> str:
    class _Once(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Once())
    return generate_latest(registry).decode()


def _headers(families: list[Metric]) -> list[str]:
    """``# HELP`` and ``# TYPE`` of each (empty) family, as generate_latest writes them."""
    return [_render([fam]) for fam in families]


_EMPTY: dict[str, ProbeStats] = {}
FACT_HEADERS = _headers(tls_fact_families(_EMPTY, []))


@dataclass
class _Fragment:
    kind: str
    own: list[str]  # one text per family of its kind's headers
    facts: list[str]  # one text per family of FACT_HEADERS


class SeriesCache:
    """/metrics that costs (almost) nothing at scrape time.

    A probe's series are rendered to text when its stats change (a run finished, the scheduler noted lag
    or a skip, a reload added or pruned it): that costs about 0.3 ms per run, spread over the interval. A
    scrape then writes each family's header and concatenates the probes' pre-rendered lines, sorted by
    name, which gives byte for byte what prometheus_client renders from :class:`MailcanaryCollector`
    (tests/test_scrape_equal.py). A reload that changes probe kinds or the vantage re-renders every probe
    once, in a worker thread, so the event loop keeps answering meanwhile.
    """

    def __init__(
        self, store: ResultStore, state: ExporterState, runtime: CollectorRegistry | None = None
    ) -> None:
        self.store = store
        self.state = state
        self.runtime = runtime  # process, platform and GC collectors: a handful of series, rendered live
        self._lock = threading.Lock()
        self._frags: dict[str, _Fragment] = {}
        self._want: dict[str, int] = {}  # probe -> sequence number of the newest render in progress
        self._seq = 0
        self._legacy = ""
        self._signature: tuple[tuple[tuple[str, str], ...], str] | None = None
        self._kinds = kind_families()
        self._headers = {kind: _headers(render(_EMPTY, [])) for kind, render in self._kinds}
        self.renders = 0  # probe renders so far (tests and benchmarks read it)
        store.subscribe(self._changed)

    def _current_signature(self) -> tuple[tuple[tuple[str, str], ...], str]:
        return tuple(sorted(self.state.probes.items())), self.state.vantage

    def _fragment(self, name: str, st: ProbeStats) -> _Fragment:
        kind = kind_of(self.state, name)
        snap = {name: st}
        vantage = self.state.vantage

        def text(families: list[Metric]) -> list[str]:
            if vantage:
                families = [with_vantage(f, vantage) for f in families]
            return [sample_lines(f) for f in families]

        render = dict(self._kinds).get(kind)
        own = text(render(snap, [name])) if render is not None else []
        return _Fragment(kind, own, text(tls_fact_families(snap, [name])))

    def _changed(self, name: str) -> None:
        with self._lock:  # a render that started later wins, whichever thread finishes first
            self._seq += 1
            mine = self._want[name] = self._seq
        st = self.store.stats_of(name)
        frag = None if st is None else self._fragment(name, st)
        with self._lock:
            if self._want.get(name) != mine:
                return
            del self._want[name]
            if frag is None:
                self._frags.pop(name, None)
            else:
                self._frags[name] = frag
                self.renders += 1

    def rerender_all(self) -> None:
        """Every probe again (the probe kinds or the vantage changed); safe to run in a worker thread."""
        signature = self._current_signature()
        vantage = self.state.vantage
        legacy = legacy_testable()
        self._legacy = _render([with_vantage(legacy, vantage) if vantage else legacy])
        names = set(self.store.names())
        with self._lock:
            for gone in set(self._frags) - names:
                del self._frags[gone]
        for name in names:
            self._changed(name)
        self._signature = signature

    @property
    def stale(self) -> bool:
        return self._signature != self._current_signature()

    def text(self) -> str:
        """The whole mailcanary part of /metrics (call :meth:`rerender_all` first when :attr:`stale`)."""
        if self.stale:
            self.rerender_all()
        vantage = self.state.vantage
        exporter = [with_vantage(f, vantage) if vantage else f for f in exporter_families(self.state)]
        out = [_render(exporter)]
        with self._lock:
            frags = sorted(self._frags.items())
        for kind, _ in self._kinds:
            mine = [f for _, f in frags if f.kind == kind]
            for i, header in enumerate(self._headers[kind]):
                out.append(header)
                out.extend(f.own[i] for f in mine)
        for i, header in enumerate(FACT_HEADERS):
            out.append(header)
            out.extend(f.facts[i] for _, f in frags)
        out.append(self._legacy)
        return "".join(out)

    async def body(self) -> bytes:
        """The /metrics body; a full re-render after a reload runs in a thread, never on the loop."""
        if self.stale:
            await asyncio.to_thread(self.rerender_all)
        body = self.text().encode()
        if self.runtime is None:
            return body
        return b"".join((body, generate_latest(self.runtime)))


def runtime_registry() -> CollectorRegistry:
    """The process, platform and GC collectors alone (rendered live on every scrape: ~20 series)."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def build_registry(store: ResultStore, state: ExporterState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MailcanaryCollector(store, state))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry
