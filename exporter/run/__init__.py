"""Running probes: settings built from the config and one run of an entry (runner), the schedule
(scheduler), stored outcomes (results), recent runs and failures for the status page (history) and the
report of ``mailcanary probe`` (report).
"""

from exporter.run.history import FAILURES_KEPT, BoundedTranscript, Failure, History, Point
from exporter.run.results import (
    DELIVERY_BUCKETS,
    DOMAIN_OUTCOMES,
    OUTCOMES,
    TLS_OUTCOMES,
    ProbeStats,
    ResultStore,
    RunResult,
)
from exporter.run.runner import (
    TLS_CHECK_STEPS,
    Runner,
    domain_settings,
    endpoint_of,
    make_masker,
    roundtrip_settings,
    tls_check_settings,
    tls_outcome,
)
from exporter.run.scheduler import (
    EPOCH,
    START_MIN,
    PhaseTrigger,
    ProbeScheduler,
    jitter_for,
    next_slot,
    offset_for,
    start_window,
)

__all__ = [
    "DELIVERY_BUCKETS",
    "DOMAIN_OUTCOMES",
    "EPOCH",
    "FAILURES_KEPT",
    "OUTCOMES",
    "START_MIN",
    "TLS_CHECK_STEPS",
    "TLS_OUTCOMES",
    "BoundedTranscript",
    "Failure",
    "History",
    "PhaseTrigger",
    "Point",
    "ProbeScheduler",
    "ProbeStats",
    "ResultStore",
    "RunResult",
    "Runner",
    "domain_settings",
    "endpoint_of",
    "jitter_for",
    "make_masker",
    "next_slot",
    "offset_for",
    "roundtrip_settings",
    "start_window",
    "tls_check_settings",
    "tls_outcome",
]
