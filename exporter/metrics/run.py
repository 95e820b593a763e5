"""The four series every scheduled check kind has per probe: last success, duration, finish time, runs
by outcome (TLS checks and domain checks; round trips have more and build their own)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from exporter.run.results import ProbeStats


def run_families(
    snap: dict[str, ProbeStats],
    names: list[str],
    kind: str,
    what: str,
    success_help: str,
    runs_help: str,
    outcomes: Sequence[str],
) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily, CounterMetricFamily]:
    """``mailcanary_<kind>_{success,duration_seconds,last_run_timestamp_seconds,runs}`` for ``names``."""
    success = GaugeMetricFamily(f"mailcanary_{kind}_success", success_help, labels=["probe"])
    duration = GaugeMetricFamily(
        f"mailcanary_{kind}_duration_seconds", f"Wall time of the last {what}.", labels=["probe"]
    )
    last_run = GaugeMetricFamily(
        f"mailcanary_{kind}_last_run_timestamp_seconds", f"When the last {what} finished.", labels=["probe"]
    )
    runs = CounterMetricFamily(f"mailcanary_{kind}_runs", runs_help, labels=["probe", "outcome"])
    for name in names:
        st = snap[name]
        if st.last is not None:
            success.add_metric([name], 1 if st.last.success else 0)
            duration.add_metric([name], st.last.duration)
            last_run.add_metric([name], st.last.started + st.last.duration)
        for outcome in outcomes:
            runs.add_metric([name, outcome], st.runs.get(outcome, 0))
    return success, duration, last_run, runs
