"""The overview dashboard: round trips (delivery now, status, SLO, latency, runs), what the receiver
did, the mailbox, and the exporter itself."""

from __future__ import annotations

from grafana_foundation_sdk.models import common as cm

from .common import (
    BY_THRESHOLDS,
    COLOR_BACKGROUND,
    FIXED_TEXT,
    OK_FAIL,
    RT,
    Board,
    Json,
    S,
    bar_gauge,
    col,
    column_override,
    dashboard,
    latency_heatmap,
    merged_table_panel,
    ok_fail,
    organized,
    series_color,
    stat,
    status_timeline,
    table_panel,
    table_target,
    target,
    thresholds,
    timeseries_panel,
    uptime_columns,
    value_map,
    variable_query,
)

QUANTILES = (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99"))


def build() -> Json:
    b = Board()
    b.row(
        "Delivery now",
        stat(
            "Round trip",
            [target(f"mailcanary_roundtrip_success{{{RT}}}", "{{probe}}")],
            description="Outcome of the last completed run of each round-trip probe.",
            mappings=OK_FAIL,
            color=BY_THRESHOLDS,
            thresholds=thresholds((None, "red")),
            size=(8, 5),
        ),
        stat(
            "Last delivery",
            [target(f"mailcanary_roundtrip_last_delivery_seconds{{{RT}}}", "{{probe}}")],
            description=(
                "Delivery latency of the last successful run: first seen by the receiver minus DATA accepted."
            ),
            unit="s",
            thresholds=thresholds((None, "green"), (30, "orange"), (60, "red")),
            size=(8, 5),
        ),
        stat(
            "Since last success",
            [target(f"time() - mailcanary_roundtrip_last_success_timestamp_seconds{{{RT}}}", "{{probe}}")],
            description="Time since the last successful run finished. Compare with the probe interval.",
            unit="s",
            thresholds=thresholds((None, "green"), (900, "orange"), (1800, "red")),
            size=(8, 5),
        ),
        status_timeline(
            "Delivery success",
            [target(f"mailcanary_roundtrip_success{{{RT}}}", "{{probe}}")],
            description="Outcome of the last completed run over time (green delivered, red failed).",
            size=(24, 6),
        ),
    )
    by = "max by (job, instance, probe)"
    b.row(
        "Status",
        merged_table_panel(
            "Round-trip probes",
            [
                ok_fail("last run", f"{by} (mailcanary_roundtrip_success{{{RT}}})"),
                col(
                    "last delivery",
                    f"{by} (mailcanary_roundtrip_last_delivery_seconds{{{RT}}})",
                    unit="s",
                    decimals=2,
                ),
                col(
                    "since success",
                    f"{by} (time() - mailcanary_roundtrip_last_success_timestamp_seconds{{{RT}}})",
                    unit="s",
                    decimals=0,
                ),
                *uptime_columns(f"{by} (avg_over_time(mailcanary_roundtrip_success{{{RT}}}[{{range}}]))"),
            ],
            description=(
                "One row per probe and instance: last outcome, last delivery latency, time since the last "
                "success, and uptime (share of scrapes whose last run had succeeded) over the dashboard's "
                "time range and over 30 days."
            ),
            size=(24, 7),
        ),
    )
    b.row(
        "Delivery SLO",
        stat(
            "SLO attainment (30 d)",
            [target(f"1 - mailcanary:delivery_slo_errors:ratio_rate30d{{{RT}}}", "{{probe}}")],
            description=(
                "Share of runs over the last 30 days that delivered within the SLO threshold (failed runs "
                "count as bad). Recorded by deploy/prometheus/mailcanary-slo.yml."
            ),
            unit="percentunit",
            decimals=3,
            color=FIXED_TEXT,
            color_mode=cm.BigValueColorMode.VALUE,
            size=(6, 6),
        ),
        stat(
            "Error budget left (30 d)",
            [target(f"mailcanary:delivery_slo:error_budget_remaining_ratio{{{RT}}}", "{{probe}}")],
            description="1 - (bad share over 30 days / allowed bad share). Below 0 the objective is missed.",
            unit="percentunit",
            decimals=1,
            thresholds=thresholds((None, "red"), (0, "orange"), (0.25, "yellow"), (0.5, "green")),
            size=(6, 6),
        ),
        stat(
            "Objective",
            [
                target("mailcanary:delivery_slo:objective_ratio", "target", "A"),
                target("mailcanary:delivery_slo:threshold_seconds", "delivered within (s)", "B"),
            ],
            description="What the SLO rules were generated for (tools/gen_slo_rules.py).",
            color=FIXED_TEXT,
            overrides=[column_override("target", unit="percentunit", decimals=2)],
            color_mode=cm.BigValueColorMode.VALUE,
            size=(4, 6),
        ),
        timeseries_panel(
            "Bad-run ratio (burn)",
            [
                target(f"mailcanary:delivery_slo_errors:ratio_rate1h{{{RT}}}", "{{probe}} 1h", "A"),
                target(f"mailcanary:delivery_slo_errors:ratio_rate6h{{{RT}}}", "{{probe}} 6h", "B"),
                target("1 - mailcanary:delivery_slo:objective_ratio", "budget (1x burn)", "C"),
            ],
            description=(
                "Share of bad runs over 1 h and 6 h against the budget. The page alerts fire at 14.4x (1 h) "
                "and 6x (6 h) the budget line."
            ),
            unit="percentunit",
            overrides=[
                column_override(
                    "budget (1x burn)",
                    color={"mode": "fixed", "fixedColor": "red"},
                    custom__lineStyle={"fill": "dash", "dash": [10, 10]},
                )
            ],
            size=(8, 6),
        ),
    )
    quantile = (
        "histogram_quantile({q}, sum by (job, probe, le) "
        f"(rate(mailcanary_roundtrip_delivery_seconds_bucket{{{RT}}}[$__rate_interval])))"
    )
    range_q = (
        "histogram_quantile({q}, sum by (probe, le) "
        f"(increase(mailcanary_roundtrip_delivery_seconds_bucket{{{RT}}}[$__range])))"
    )
    b.row(
        "Latency",
        timeseries_panel(
            "Delivery latency p50 / p90 / p99",
            [
                target(quantile.replace("{q}", q), "{{probe}} " + name, ref)
                for ref, (name, q) in zip("ABC", QUANTILES, strict=True)
            ],
            description=(
                "Quantiles estimated from the delivery histogram (successful runs only). The minimum "
                "interval of 5m keeps at least one run per window at the default probe interval."
            ),
            unit="s",
            interval="5m",
            size=(12, 8),
        ),
        latency_heatmap(
            "Delivery latency distribution",
            [
                target(
                    "sum by (le) (increase("
                    f"mailcanary_roundtrip_delivery_seconds_bucket{{{RT}}}[$__rate_interval]))",
                    "{{le}}",
                    fmt="heatmap",
                )
            ],
            description="Deliveries per histogram bucket over time (all selected probes).",
            unit="s",
            interval="5m",
            size=(12, 8),
        ),
        timeseries_panel(
            "Delivery latency per run",
            [target(f"mailcanary_roundtrip_last_delivery_seconds{{{RT}}}", "{{probe}}")],
            description="The latency of each successful run (the gauge of the last one, sampled).",
            unit="s",
            points=cm.VisibilityMode.ALWAYS,
            size=(12, 8),
        ),
        merged_table_panel(
            "Latency over the time range",
            [col(name, range_q.replace("{q}", q)) for name, q in QUANTILES],
            description="Quantiles of all deliveries in the selected time range, per probe.",
            unit="s",
            decimals=2,
            size=(12, 8),
        ),
    )
    b.row(
        "Runs",
        timeseries_panel(
            "Phase breakdown (last run): $probe",
            [
                target(
                    "max by (phase) (mailcanary_roundtrip_phase_seconds{" + S + ', probe=~"$probe"})',
                    "{{phase}}",
                )
            ],
            description=(
                "How long each protocol phase of the last run took; receive_wait is the delivery itself."
            ),
            unit="s",
            bars=True,
            stack=True,
            size=(12, 8),
        )
        .repeat("probe")
        .repeat_direction("h")
        .max_per_row(2),
        timeseries_panel(
            "Runs by outcome",
            [
                target(
                    "sum by (probe, outcome) "
                    f"(increase(mailcanary_roundtrip_runs_total{{{RT}}}[$__rate_interval])) > 0",
                    "{{probe}} {{outcome}}",
                )
            ],
            description="Completed runs per interval by outcome: success or the failure reason.",
            unit="short",
            bars=True,
            stack=True,
            overrides=[series_color(".* success", "green")],
            interval="5m",
            size=(12, 8),
        ),
        merged_table_panel(
            "Outcomes over the time range",
            [
                col(
                    "runs",
                    "sum by (probe, outcome) "
                    f"(increase(mailcanary_roundtrip_runs_total{{{RT}}}[$__range])) > 0",
                )
            ],
            description="Runs per probe and outcome in the selected time range.",
            decimals=0,
            size=(8, 8),
        ),
        timeseries_panel(
            "Late, lost and swept canaries",
            [
                target(
                    f"sum by (probe) (increase(mailcanary_roundtrip_late_total{{{RT}}}[$__rate_interval]))",
                    "{{probe}} late",
                    "A",
                ),
                target(
                    f"sum by (probe) (increase(mailcanary_roundtrip_lost_total{{{RT}}}[$__rate_interval]))",
                    "{{probe}} lost",
                    "C",
                ),
                target(
                    f"sum by (probe) (increase(mailcanary_roundtrip_swept_total{{{RT}}}[$__rate_interval]))",
                    "{{probe}} swept",
                    "B",
                ),
            ],
            description=(
                "Late: canaries that arrived after their run had timed out. Lost: timed out and still unseen "
                "lost_after (default 1h) after sending. Swept: stale canaries deleted that were not known to "
                "be late (e.g. sent before a restart)."
            ),
            unit="short",
            bars=True,
            interval="5m",
            size=(8, 8),
        ),
        stat(
            "Late canaries (time range)",
            [
                target(
                    f"sum by (probe) (increase(mailcanary_roundtrip_late_total{{{RT}}}[$__range]))",
                    "{{probe}}",
                )
            ],
            description="Canaries that arrived late in the selected time range.",
            decimals=0,
            thresholds=thresholds((None, "green"), (0.5, "orange")),
            size=(8, 8),
        ),
        timeseries_panel(
            "Run duration and queue time",
            [
                target(f"mailcanary_roundtrip_duration_seconds{{{RT}}}", "{{probe}}", "A"),
                target(f"mailcanary_roundtrip_queue_seconds{{{RT}}}", "{{probe}} queue", "B"),
            ],
            description=(
                "Wall time of the last run, all phases included, and the part of it spent waiting for "
                "this instance's own session slots (max_sessions): a run whose duration is mostly queue "
                "waited for the limit, not for the mail system."
            ),
            unit="s",
            size=(12, 7),
        ),
        timeseries_panel(
            "Scheduler lag and skipped runs",
            [
                target(f"mailcanary_scheduler_lag_seconds{{{RT}}}", "{{probe}} lag", "A"),
                target(
                    "sum by (probe) "
                    f"(increase(mailcanary_scheduler_skipped_runs_total{{{RT}}}[$__rate_interval]))",
                    "{{probe}} skipped",
                    "B",
                ),
            ],
            description="How late runs started, and runs skipped because the previous one was still going.",
            unit="s",
            overrides=[
                column_override(
                    ".* skipped",
                    regexp=True,
                    unit="short",
                    custom__drawStyle="bars",
                    custom__axisPlacement="right",
                )
            ],
            size=(12, 7),
        ),
    )
    b.row(
        "What the receiver did",
        timeseries_panel(
            "Delivered canaries by folder",
            [
                target(
                    "sum by (probe, folder) "
                    f"(increase(mailcanary_roundtrip_placements_total{{{RT}}}[$__rate_interval])) > 0",
                    "{{probe}} {{folder}}",
                )
            ],
            description=(
                "Where each delivered canary was found: inbox, junk (receive.junk, IMAP only) or another "
                "folder (receive.placement_all_folders). POP3 sees the inbox only."
            ),
            unit="short",
            bars=True,
            stack=True,
            overrides=[series_color(".* inbox", "green"), series_color(".* junk", "red")],
            interval="5m",
            size=(16, 8),
        ),
        stat(
            "In junk (time range)",
            [
                target(
                    "sum by (probe) "
                    f'(increase(mailcanary_roundtrip_placements_total{{{RT}, folder="junk"}}[$__range])) '
                    "/ sum by (probe) "
                    f"(increase(mailcanary_roundtrip_placements_total{{{RT}}}[$__range]))",
                    "{{probe}}",
                )
            ],
            description=(
                "Share of the delivered canaries found in the junk folder in the selected time range."
            ),
            unit="percentunit",
            decimals=1,
            min=0,
            max=1,
            thresholds=thresholds((None, "green"), (0.0001, "red")),
            size=(8, 8),
        ),
        timeseries_panel(
            "Bounces by status class",
            [
                target(
                    "sum by (probe, class) "
                    f"(increase(mailcanary_roundtrip_bounces_total{{{RT}}}[$__rate_interval])) > 0",
                    "{{probe}} {{class}}",
                )
            ],
            description=(
                "Verified bounces about the canaries, by RFC 3463 class: 5.x.x permanent (the run ended "
                "bounced: 5.1.x address, 5.2.x mailbox, 5.7.x policy), 4.x.x delay notices (the run went on)."
            ),
            unit="short",
            bars=True,
            stack=True,
            overrides=[series_color(".* 5\\..*", "red")],
            interval="5m",
            size=(12, 8),
        ),
        table_panel(
            "Authentication verdict (last canary)",
            [table_target(f"max by (probe, method, result) (mailcanary_roundtrip_auth_result{{{RT}}}) == 1")],
            description=(
                "spf, dkim, dmarc (and arc) as the receiving side's trusted authserv-ids reported them for "
                "the last delivered canary (receive.trusted_authserv_ids); missing = no trusted result."
            ),
            overrides=[
                column_override(
                    "result",
                    mappings=value_map(("pass", "pass", "green")),
                    custom__cellOptions={"type": "color-text"},
                    color={"mode": "fixed", "fixedColor": "red"},
                )
            ],
            transformations=organized(
                (
                    "Time",
                    "Value",
                ),
                index={"probe": 0, "method": 1, "result": 2},
            ),
            size=(12, 8),
        ),
        timeseries_panel(
            "Spam score",
            [target(f"mailcanary_roundtrip_spam_score{{{RT}}}", "{{probe}} {{engine}}")],
            description=(
                "The receiving side's spam score of each delivered canary (SpamAssassin and rspamd scores, "
                "Microsoft SCL). Spam from 5 (SpamAssassin, SCL) or 6 (rspamd)."
            ),
            unit="short",
            points=cm.VisibilityMode.ALWAYS,
            size=(12, 8),
        ),
        timeseries_panel(
            "Path: hops and time between first and last hop",
            [
                target(f"mailcanary_roundtrip_hops{{{RT}}}", "{{probe}} hops", "A"),
                target(f"mailcanary_roundtrip_path_seconds{{{RT}}}", "{{probe}} path", "B"),
            ],
            description=(
                "From the canary's Received chain: the servers it passed, and last minus first stamp "
                "(1 s resolution, several clocks: a negative value is clock skew, shown as it is)."
            ),
            unit="short",
            overrides=[column_override(".* path", regexp=True, unit="s", custom__axisPlacement="right")],
            size=(12, 8),
        ),
    )
    b.row(
        "Mailbox: quota and sync",
        bar_gauge(
            "Quota used",
            [
                target(
                    f"mailcanary_mailbox_quota_used{{{RT}}} / (mailcanary_mailbox_quota_limit{{{RT}}} > 0)",
                    "{{probe}} {{resource}}",
                )
            ],
            description=(
                "Share of the canary mailbox's quota in use (RFC 9208, read once per run when the IMAP "
                "server offers QUOTA), per resource: storage or message count. At 90 % "
                "MailcanaryMailboxQuotaNearlyFull fires; a full mailbox bounces mail, the canary included."
            ),
            unit="percentunit",
            min=0,
            max=1,
            decimals=1,
            thresholds=thresholds((None, "green"), (0.8, "orange"), (0.9, "red")),
            size=(8, 8),
        ),
        timeseries_panel(
            "Sync to the second session",
            [
                target(f"mailcanary_roundtrip_sync_seconds{{{RT}}}", "{{probe}} flag seen", "A"),
                target(f"mailcanary_roundtrip_sync_arrival_seconds{{{RT}}}", "{{probe}} arrival there", "B"),
            ],
            description=(
                "Sync check (receive.sync), last successful run: from the first IMAP session flagging the "
                "canary until the second session (the other device) saw it, and the delivery latency as the "
                "second session saw it. Failures are outcome sync_timeout."
            ),
            unit="s",
            points=cm.VisibilityMode.ALWAYS,
            size=(8, 8),
        ),
        timeseries_panel(
            "Quota read errors",
            [
                target(
                    "sum by (probe, reason) "
                    f"(increase(mailcanary_mailbox_quota_read_errors_total{{{RT}}}[$__rate_interval]))",
                    "{{probe}} {{reason}}",
                )
            ],
            description=(
                "Quota reads that failed (refused, protocol, timeout); the round trip went on and the last "
                "reading is kept."
            ),
            unit="short",
            bars=True,
            interval="5m",
            size=(8, 8),
        ),
    )
    hb = "max by (job, instance, probe)"
    state = " or ".join(
        f'(mailcanary_heartbeat_state{{{S}, state="{name}"}} * {n})'
        for n, name in enumerate(("ok", "late", "missing", "failed"))
    )
    b.row(
        "Heartbeats: mail others send",
        merged_table_panel(
            "Heartbeats",
            [
                col(
                    "state",
                    f"{hb} ({state})",
                    mappings=value_map(
                        ("0", "ok", "green"),
                        ("1", "late", "orange"),
                        ("2", "MISSING", "red"),
                        ("3", "FAILED", "red"),
                    ),
                    cells=COLOR_BACKGROUND,
                ),
                col("in window", f"{hb} (mailcanary_heartbeat_window_count{{{S}}})", decimals=0),
                col("expected", f"{hb} (mailcanary_heartbeat_expected{{{S}}})", decimals=0),
                col(
                    "due in",
                    f"{hb} (mailcanary_heartbeat_deadline_timestamp_seconds{{{S}}} - time())",
                    unit="s",
                ),
                col(
                    "since last seen",
                    f"{hb} (time() - mailcanary_heartbeat_last_seen_timestamp_seconds{{{S}}})",
                    unit="s",
                ),
                col("mails counted", f"{hb} (mailcanary_heartbeat_matched_total{{{S}}})", decimals=0),
            ],
            description=(
                "One row per heartbeat (a mail others must keep sending, docs/inbound.md): its state as of "
                "the last good read of the mailbox (late: due and inside the grace; MISSING: a window closed "
                "short; FAILED: a fail_if mail came), mails in the open window and expected, time until it "
                "is due (negative: overdue), time since the last matching mail, and mails counted in all."
            ),
            size=(24, 7),
        ),
    )
    b.row(
        "Exporter",
        stat(
            "Exporter scrape",
            [target('up{job=~"$job", instance=~"$instance"}', "{{instance}}")],
            description="Whether Prometheus can scrape each mailcanary instance.",
            mappings=value_map(("1", "UP", "green"), ("0", "DOWN", "red")),
            thresholds=thresholds((None, "red")),
            size=(6, 5),
        ),
        stat(
            "Configuration",
            [
                target(
                    "mailcanary_config_last_reload_successful{" + S + "}",
                    "{{instance}}",
                )
            ],
            description=(
                "1 if the last configuration (re)load succeeded; on failure the previous config runs."
            ),
            mappings=value_map(("1", "loaded", "green"), ("0", "RELOAD FAILED", "red")),
            thresholds=thresholds((None, "red")),
            size=(6, 5),
        ),
        stat(
            "Probes configured",
            [
                target(
                    "sum by (kind) (mailcanary_config_probes{" + S + "})",
                    "{{kind}}",
                )
            ],
            description="Configured round-trip probes and TLS checks.",
            color=FIXED_TEXT,
            color_mode=cm.BigValueColorMode.VALUE,
            size=(6, 5),
        ),
        table_panel(
            "Version",
            [table_target("mailcanary_build_info{" + S + "}")],
            description="mailcanary and Python version of each instance.",
            transformations=organized(
                (
                    "Time",
                    "Value",
                    "__name__",
                    "job",
                )
            ),
            size=(6, 5),
        ),
    )
    return dashboard(
        "mailcanary-overview",
        "mailcanary / Overview",
        "Mail round trips: delivery success, latency, SLO, failures by reason, the exporter itself.",
        [
            variable_query(
                "probe",
                "Probe",
                "label_values(mailcanary_roundtrip_success{" + S + "}, probe)",
            )
        ],
        b,
    )
