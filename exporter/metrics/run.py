"""The five series every scheduled check kind has per probe: last success, duration, queue time, finish
time, runs by outcome (TLS checks and domain checks; round trips have more and reuse the sample
functions)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.core import Metric

from exporter.metrics.family import NONE, FamilySpec, Samples, counter, counts, flag, gauge, render
from exporter.run.results import ProbeStats


def last_success(st: ProbeStats) -> Samples:
    return NONE if st.last is None else flag(st.last.success)


def last_duration(st: ProbeStats) -> Samples:
    return NONE if st.last is None else (((), st.last.duration),)


def last_queue(st: ProbeStats) -> Samples:
    return NONE if st.last is None else (((), st.last.queue),)


QUEUE_HELP = (
    "Seconds the last {what} waited for session slots on the servers (this instance's own max_sessions "
    "limit), part of its duration."
)


def last_finish(st: ProbeStats) -> Samples:
    return NONE if st.last is None else (((), st.last.started + st.last.duration),)


def run_specs(
    kind: str, what: str, success_help: str, runs_help: str, outcomes: Sequence[str]
) -> list[FamilySpec[ProbeStats]]:
    """``mailcanary_<kind>_{success,duration_seconds,queue_seconds,last_run_timestamp_seconds,runs}``."""
    return [
        gauge(f"mailcanary_{kind}_success", success_help, last_success),
        gauge(f"mailcanary_{kind}_duration_seconds", f"Wall time of the last {what}.", last_duration),
        gauge(f"mailcanary_{kind}_queue_seconds", QUEUE_HELP.format(what=what), last_queue),
        gauge(
            f"mailcanary_{kind}_last_run_timestamp_seconds", f"When the last {what} finished.", last_finish
        ),
        counter(f"mailcanary_{kind}_runs", runs_help, lambda st: counts(st.runs, outcomes), "outcome"),
    ]


def run_families(
    snap: dict[str, ProbeStats],
    names: list[str],
    kind: str,
    what: str,
    success_help: str,
    runs_help: str,
    outcomes: Sequence[str],
) -> list[Metric]:
    """The five families of :func:`run_specs` for ``names``."""
    specs = run_specs(kind, what, success_help, runs_help, outcomes)
    return render(specs, (([name], snap[name]) for name in names), ["probe"])
