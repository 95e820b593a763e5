"""The /probe dashboard: TLS targets audited on demand through /probe, blackbox_exporter style."""

from __future__ import annotations

from grafana_foundation_sdk.models import common as cm

from .common import (
    COLOR_BACKGROUND,
    COLOR_TEXT,
    DAYS_THRESHOLDS,
    UPTIME_THRESHOLDS,
    YES_NO_BAD,
    YES_NO_GOOD,
    Board,
    Json,
    col,
    dashboard,
    merged_table_panel,
    ok_fail,
    organized,
    stat,
    status_timeline,
    table_panel,
    table_target,
    target,
    thresholds,
    timeseries_panel,
    uptime_columns,
    variable_query,
)

P = 'job=~"$job", instance=~"$instance"'
# /probe's mailcanary_tls_* series carry no endpoint label (the target is the instance): that keeps the
# /metrics series of the same names out of these panels.
PT = P + ', endpoint=""'


def build() -> Json:
    b = Board()
    days = f"(probe_ssl_earliest_cert_expiry{{{P}}} - time()) / 86400"
    by = "max by (job, instance)"
    b.row(
        "Status",
        stat(
            "Targets failing",
            [target(f"count(probe_success{{{P}}} == 0) or vector(0)", "failing")],
            description="Targets whose last /probe scrape failed (probe_success 0).",
            thresholds=thresholds((None, "green"), (1, "red")),
            text_mode=cm.BigValueTextMode.VALUE,
            size=(6, 5),
        ),
        stat(
            "Soonest expiry",
            [target(f"min({days})", "days")],
            description="Days until the first certificate of any target's chain expires.",
            unit="d",
            decimals=1,
            thresholds=DAYS_THRESHOLDS,
            text_mode=cm.BigValueTextMode.VALUE,
            size=(6, 5),
        ),
        stat(
            "Uptime (range)",
            [target(f"avg(avg_over_time(probe_success{{{P}}}[$__range]))", "uptime")],
            description="Share of successful /probe scrapes over the dashboard's time range, all targets.",
            unit="percentunit",
            decimals=2,
            thresholds=UPTIME_THRESHOLDS,
            text_mode=cm.BigValueTextMode.VALUE,
            size=(6, 5),
        ),
        stat(
            "Uptime (30 d)",
            [target(f"avg(avg_over_time(probe_success{{{P}}}[30d]))", "uptime")],
            description="Share of successful /probe scrapes over 30 days, all targets.",
            unit="percentunit",
            decimals=3,
            thresholds=UPTIME_THRESHOLDS,
            text_mode=cm.BigValueTextMode.VALUE,
            size=(6, 5),
        ),
        merged_table_panel(
            "Targets",
            [
                ok_fail("success", f"{by} (probe_success{{{P}}})"),
                col(
                    "days left",
                    f"{by} ({days})",
                    unit="d",
                    decimals=1,
                    cells=COLOR_BACKGROUND,
                    thresholds=DAYS_THRESHOLDS,
                ),
                col(
                    "verified",
                    f"{by} (mailcanary_tls_cert_verified{{{PT}}})",
                    mappings=YES_NO_GOOD,
                    cells=COLOR_TEXT,
                    thresholds=thresholds((None, "red")),
                ),
                col("duration", f"{by} (probe_duration_seconds{{{P}}})", unit="s", decimals=3),
                *uptime_columns(f"{by} (avg_over_time(probe_success{{{P}}}[{{range}}]))", colored=False),
            ],
            description=(
                "One row per /probe target (the instance label of the documented relabel setup): last "
                "result, days to the earliest expiry in the chain, chain verified, probe duration, uptime "
                "over the time range and over 30 days."
            ),
            size=(24, 8),
        ),
    )
    b.row(
        "Over time",
        status_timeline(
            "Probe success",
            [target(f"probe_success{{{P}}}", "{{instance}}")],
            description="Result of each /probe scrape over time (green success, red failure).",
            size=(24, 6),
        ),
        timeseries_panel(
            "Days to expiry",
            [target(days, "{{instance}}")],
            description="Days until the earliest certificate expiry in each target's chain.",
            unit="d",
            size=(12, 7),
        ),
        timeseries_panel(
            "Probe duration",
            [target(f"probe_duration_seconds{{{P}}}", "{{instance}}")],
            description="Wall time of each /probe request, legacy-protocol handshakes included.",
            unit="s",
            size=(12, 7),
        ),
        table_panel(
            "TLS version",
            [table_target(f"probe_tls_version_info{{{P}}}")],
            description="Negotiated TLS version per target (blackbox_exporter's spelling).",
            transformations=organized(
                (
                    "Time",
                    "Value",
                    "__name__",
                )
            ),
            size=(12, 6),
        ),
        table_panel(
            "Legacy TLS accepted",
            [table_target(f"max by (instance, version) (mailcanary_tls_legacy_protocol_accepted{{{PT}}})")],
            description=(
                "1 if the target completed a handshake pinned to TLS 1.0 / 1.1 (deprecated, RFC 8996)."
            ),
            mappings=YES_NO_BAD,
            transformations=organized(("Time",), rename={"Value": "accepted"}),
            size=(12, 6),
        ),
    )
    return dashboard(
        "mailcanary-probe",
        "mailcanary / TLS targets (/probe)",
        "TLS targets audited on demand through /probe (blackbox_exporter names): status, expiry, uptime.",
        [],
        b,
        scope=[
            variable_query("job", "Job", "label_values(probe_success, job)"),
            variable_query("instance", "Target", 'label_values(probe_success{job=~"$job"}, instance)'),
        ],
    )
