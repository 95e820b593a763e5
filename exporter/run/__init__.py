"""Running probes: one run of an entry of any kind (runner), the schedule (scheduler), the config
pieces every kind shares as settings (settings), stored outcomes (results), recent runs and failures for
the status page (history) and what ``mailcanary probe`` says about a round trip (report).
"""

from typing import TYPE_CHECKING

from probes.lazy import face

if TYPE_CHECKING:
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
    from exporter.run.runner import Runner, make_masker, session_limits, session_pools
    from exporter.run.scheduler import (
        EPOCH,
        START_MIN,
        PhaseTrigger,
        ProbeScheduler,
        first_run,
        jitter_for,
        next_slot,
        offset_for,
        start_window,
    )
    from exporter.run.settings import endpoint_of, tls_settings

__all__ = [
    "DELIVERY_BUCKETS",
    "DOMAIN_OUTCOMES",
    "EPOCH",
    "FAILURES_KEPT",
    "OUTCOMES",
    "START_MIN",
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
    "endpoint_of",
    "first_run",
    "jitter_for",
    "make_masker",
    "next_slot",
    "offset_for",
    "session_limits",
    "session_pools",
    "start_window",
    "tls_settings",
]


if not TYPE_CHECKING:  # a module loads when one of its names is first used (probes/lazy.py)
    __getattr__, __dir__ = face(
        __name__,
        {
            "history": "FAILURES_KEPT BoundedTranscript Failure History Point",
            "results": (
                "DELIVERY_BUCKETS DOMAIN_OUTCOMES OUTCOMES TLS_OUTCOMES ProbeStats ResultStore RunResult"
            ),
            "runner": "Runner make_masker session_limits session_pools",
            "scheduler": (
                "EPOCH START_MIN PhaseTrigger ProbeScheduler first_run jitter_for next_slot offset_for "
                "start_window"
            ),
            "settings": "endpoint_of tls_settings",
        },
    )
