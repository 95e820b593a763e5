"""Outcomes of probe runs, kept per probe; the metrics collector renders them at scrape time."""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from probes.domain import Listing
from probes.errors import REASONS
from probes.receipt import Path, Verdict
from probes.recorder import ReceiverFacts
from probes.tls import Hygiene, TLSFacts

# Bounds suit 50 ms .. 10 min; 60 s is an edge so "delivered within 60 s" (the default SLO) is exact.
DELIVERY_BUCKETS: tuple[float, ...] = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)
DOMAIN_ONLY: frozenset[str] = frozenset({"dns_lookup", "domain_findings"})
OUTCOMES: tuple[str, ...] = (
    "success",
    *sorted(r for r in REASONS if not r.startswith(("tls_", "heartbeat_")) and r not in DOMAIN_ONLY),
    "tls_revoked",  # a round trip's SMTP or receiving endpoint presented a revoked certificate
)
DOMAIN_OUTCOMES: tuple[str, ...] = (
    "success",
    "domain_findings",
    "dns_lookup",
    "queue_timeout",
    "timeout",
    "config",
    "internal",
)
HEARTBEAT_OUTCOMES: tuple[str, ...] = (
    "success",
    "heartbeat_late",
    "heartbeat_missing",
    "heartbeat_failed",
    "receive_connect",
    "receive_tls",
    "receive_auth",
    "receive_protocol",
    "queue_timeout",
    "timeout",
    "config",
    "internal",
)
TLS_OUTCOMES: tuple[str, ...] = (
    "success",
    "tls_verify",
    "tls_params",
    "tls_revoked",
    "tls_handshake",
    "tls_connect",
    "queue_timeout",
    "timeout",
    "config",
    "internal",
)


@dataclass(frozen=True)
class RunResult:
    probe: str
    success: bool
    reason: str  # "success" or a failure reason from probes.errors.REASONS
    message: str
    started: float  # wall clock, unix seconds
    duration: float  # includes ``queue``
    phases: dict[str, float]
    # Seconds the run waited for session slots on the servers (probes.wire.slots: this instance's own
    # max_sessions), overlapping waits once; part of ``duration``, never of the deadline.
    queue: float = 0.0
    delivery: float | None = None
    late: int = 0  # earlier canaries seen this run that had timed out
    swept: int = 0  # other stale canaries of this probe deleted this run
    lost: int = 0  # timed-out canaries given up on this run (unseen for lost_after)
    outstanding: int = 0  # timed-out canaries still awaited after this run
    placement: str | None = (
        None  # where the canary was found (probes.receipt.placement.PLACEMENTS), if it was
    )
    tls: dict[str, TLSFacts] = field(default_factory=dict)  # endpoint -> its TLS facts
    # What the receiver did, for the log line and the status page (folders, bounce, path): small,
    # bounded values from the probe's facts (probes.recorder.Facts.receiver), never labels.
    receiver: ReceiverFacts = field(default_factory=lambda: ReceiverFacts())
    bounces: tuple[str, ...] = ()  # status class of each verified bounce seen this run (probes.receipt.dsn)
    path: Path | None = None  # the Received path of the delivered canary
    clock_offset: float | None = None  # first Received stamp minus our send time (seconds)
    verdict: Verdict | None = None  # authentication results and spam scores of the delivered canary
    quota: dict[str, tuple[int, int]] | None = None  # resource -> (used, limit), read this run
    quota_error: str | None = None  # why the quota could not be read (probes.receipt.quota.QUOTA_ERRORS)
    sync_seconds: float | None = None  # sync check: flag set by the first session until the second saw it
    sync_arrival: float | None = None  # sync check: delivery latency as the second session saw it
    failed_phase: str | None = None
    transcript: list[str] | None = None
    hygiene: dict[str, Hygiene] = field(default_factory=dict)  # endpoint -> certificate-chain hygiene
    sender_dnsbl: tuple[Listing, ...] = ()  # the sending IP's listing per zone, this run
    # The kind's own result beside the common fields (domain checks: DomainReport); its readers check
    # its type (isinstance), as exporter.registry.Verdict.detail hands it over.
    detail: object = None


@dataclass
class ProbeStats:
    last: RunResult | None = None
    runs: Counter[str] = field(default_factory=Counter)
    late_total: int = 0
    swept_total: int = 0
    lost_total: int = 0
    placements: Counter[str] = field(default_factory=Counter)  # delivered runs by placement
    last_placement: str | None = None
    bounces: Counter[str] = field(default_factory=Counter)  # verified bounces by status class
    last_path: Path | None = None  # the Received path of the last delivered canary
    last_clock_offset: float | None = None
    last_verdict: Verdict | None = None  # authentication results and spam scores of the last delivered canary
    last_sender_dnsbl: tuple[Listing, ...] = ()  # the sending IP's listing per zone, last run that looked
    bucket_counts: list[int] = field(default_factory=lambda: [0] * len(DELIVERY_BUCKETS))
    delivery_sum: float = 0.0
    delivery_count: int = 0
    last_success: float | None = None
    last_delivery: float | None = None
    scheduler_lag: float | None = None
    skipped_runs: int = 0
    tls: dict[str, TLSFacts] = field(default_factory=dict)  # endpoint -> latest known TLS facts
    hygiene: dict[str, Hygiene] = field(default_factory=dict)  # endpoint -> latest certificate-chain hygiene
    quota: dict[str, tuple[int, int]] = field(
        default_factory=dict
    )  # latest reading: resource -> (used, limit)
    quota_errors: Counter[str] | None = None  # None until a run tried to read the quota
    last_sync: float | None = None
    last_sync_arrival: float | None = None
    junk_found: bool | None = None  # placement on: the last run that listed folders found a junk folder
    sync_skipped: str | None = None  # last delivered run with sync on: "" ran, else SYNC_SKIP_REASONS
    login_delay: float | None = None  # POP3: the LOGIN-DELAY last announced by the server (0: none)


class ResultStore:
    """Thread-safe because prometheus_client may collect from another thread in some deployments."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats: dict[str, ProbeStats] = {}
        self._listeners: list[Callable[[str], None]] = []

    def subscribe(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(probe)`` after every change of that probe's stats (or its removal), outside the
        lock: the metrics cache re-renders the probe's series then, not at scrape time."""
        self._listeners.append(listener)

    def _changed(self, names: list[str]) -> None:
        for listener in self._listeners:
            for name in names:
                listener(name)

    def ensure(self, probes: list[str]) -> None:
        """Keep exactly these probes: new ones start empty, removed ones disappear from /metrics."""
        wanted = set(probes)
        with self._lock:
            changed = [name for name in probes if name not in self._stats]
            for name in changed:
                self._stats[name] = ProbeStats()
            for name in list(self._stats):
                if name not in wanted:
                    del self._stats[name]
                    changed.append(name)
        self._changed(changed)

    def retain_tls(self, endpoints: dict[str, set[str]]) -> None:
        """Forget TLS facts of endpoints a probe no longer uses (after a reload moved it elsewhere)."""
        changed = []
        with self._lock:
            for name, st in self._stats.items():
                keep = endpoints.get(name, set())
                kept = {ep: facts for ep, facts in st.tls.items() if ep in keep}
                hygiene = {ep: h for ep, h in st.hygiene.items() if ep in keep}
                if len(kept) != len(st.tls) or len(hygiene) != len(st.hygiene):
                    st.tls, st.hygiene = kept, hygiene
                    changed.append(name)
        self._changed(changed)

    def record(self, result: RunResult) -> None:
        self._record(result)
        self._changed([result.probe])

    def _record(self, result: RunResult) -> None:
        with self._lock:
            st = self._stats.setdefault(result.probe, ProbeStats())
            st.last = result
            st.runs[result.reason] += 1
            st.tls.update(result.tls)  # facts survive a later run that failed before reaching TLS
            st.hygiene.update(result.hygiene)
            st.late_total += result.late
            st.swept_total += result.swept
            st.lost_total += result.lost
            if result.placement is not None:
                st.placements[result.placement] += 1
                st.last_placement = result.placement
            st.bounces.update(result.bounces)
            if result.path is not None:
                st.last_path = result.path
                st.last_clock_offset = result.clock_offset
            if result.verdict is not None:
                st.last_verdict = result.verdict
            if result.sender_dnsbl:
                st.last_sender_dnsbl = result.sender_dnsbl
            if result.quota is not None:
                st.quota = dict(result.quota)  # the latest reading; a failed read keeps the previous one
            if result.quota is not None or result.quota_error is not None:
                st.quota_errors = st.quota_errors or Counter()
                if result.quota_error is not None:
                    st.quota_errors[result.quota_error] += 1
            if result.sync_seconds is not None:
                st.last_sync = result.sync_seconds
            if result.sync_arrival is not None:
                st.last_sync_arrival = result.sync_arrival
            found = result.receiver.get("junk_folder_found")
            if isinstance(found, bool):
                st.junk_found = found
            skipped = result.receiver.get("sync_skipped")
            if isinstance(skipped, str):
                st.sync_skipped = skipped
            elif result.sync_seconds is not None or result.reason == "sync_timeout":
                st.sync_skipped = ""  # the check ran
            if isinstance(delay := result.receiver.get("login_delay"), int | float):
                st.login_delay = float(delay)
            if result.success:
                st.last_success = result.started + result.duration
            if result.delivery is not None:
                st.last_delivery = result.delivery
                st.delivery_sum += result.delivery
                st.delivery_count += 1
                i = bisect.bisect_left(DELIVERY_BUCKETS, result.delivery)
                for j in range(i, len(DELIVERY_BUCKETS)):
                    st.bucket_counts[j] += 1

    def note_lag(self, probe: str, lag: float) -> None:
        with self._lock:
            if probe not in self._stats:
                return
            self._stats[probe].scheduler_lag = lag
        self._changed([probe])

    def note_skipped(self, probe: str) -> None:
        with self._lock:
            if probe not in self._stats:
                return
            self._stats[probe].skipped_runs += 1
        self._changed([probe])

    def names(self) -> list[str]:
        with self._lock:
            return list(self._stats)

    def stats_of(self, name: str) -> ProbeStats | None:
        """A copy of one probe's stats (None once removed)."""
        with self._lock:
            st = self._stats.get(name)
            return None if st is None else _copy(st)

    def snapshot(self) -> dict[str, ProbeStats]:
        """Copies, so a scrape never sees a half-recorded run."""
        with self._lock:
            return {name: _copy(st) for name, st in self._stats.items()}


def _copy(st: ProbeStats) -> ProbeStats:
    return ProbeStats(
        last=st.last,
        runs=Counter(st.runs),
        late_total=st.late_total,
        swept_total=st.swept_total,
        lost_total=st.lost_total,
        placements=Counter(st.placements),
        last_placement=st.last_placement,
        bounces=Counter(st.bounces),
        last_path=st.last_path,
        last_clock_offset=st.last_clock_offset,
        last_verdict=st.last_verdict,
        last_sender_dnsbl=st.last_sender_dnsbl,
        bucket_counts=list(st.bucket_counts),
        delivery_sum=st.delivery_sum,
        delivery_count=st.delivery_count,
        last_success=st.last_success,
        last_delivery=st.last_delivery,
        scheduler_lag=st.scheduler_lag,
        skipped_runs=st.skipped_runs,
        tls=dict(st.tls),
        hygiene=dict(st.hygiene),
        quota=dict(st.quota),
        quota_errors=None if st.quota_errors is None else Counter(st.quota_errors),
        last_sync=st.last_sync,
        last_sync_arrival=st.last_sync_arrival,
        junk_found=st.junk_found,
        sync_skipped=st.sync_skipped,
        login_delay=st.login_delay,
    )
