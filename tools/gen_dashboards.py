#!/usr/bin/env python3
"""Write the Grafana dashboards in dashboards/ from this file: plain Python data, no dependency.

    python3 tools/gen_dashboards.py            # rewrite dashboards/*.json
    python3 tools/gen_dashboards.py --check    # exit 1 (with a diff) if a committed file is stale

Why code and not hand-edited JSON, and why no dashboard SDK: see docs/dashboards.md. Edit the panels
here, run the script, commit both. tests/test_dashboards.py fails when the JSON and this script differ,
checks every panel's datasource and metric names, and tests/test_prometheus_live.py runs every query
against a real Prometheus scraping a real exporter.

Target: Grafana 10.4 / 11.x (schemaVersion 39; newer Grafana migrates it on load).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "dashboards"
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}

Json = dict[str, Any]


# ---- building blocks -------------------------------------------------------------------------------


def target(expr: str, legend: str = "", ref: str = "A", *, instant: bool = False, fmt: str = "") -> Json:
    t: Json = {
        "datasource": DS,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "refId": ref,
    }
    if fmt:
        t["format"] = fmt
    return t


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for v, c in steps]}


def value_map(*items: tuple[str, str, str]) -> list[Json]:
    """(value, text, color) triples as one Grafana value mapping."""
    return [
        {
            "type": "value",
            "options": {v: {"text": t, "color": c, "index": i} for i, (v, t, c) in enumerate(items)},
        }
    ]


OK_FAIL = value_map(("1", "OK", "green"), ("0", "FAILING", "red"))
YES_NO_GOOD = value_map(("1", "yes", "green"), ("0", "NO", "red"))
YES_NO_BAD = value_map(("1", "YES", "red"), ("0", "no", "green"))
DAYS_THRESHOLDS = thresholds((None, "dark-red"), (0, "red"), (7, "orange"), (21, "green"))


class Board:
    """Lays panels out left to right in rows of 24 grid units and numbers them."""

    def __init__(self) -> None:
        self.panels: list[Json] = []
        self.x = 0
        self.y = 0
        self.row_h = 0

    def _place(self, w: int, h: int) -> Json:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.panels.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y},
                "id": len(self.panels) + 1,
                "panels": [],
                "title": title,
                "type": "row",
            }
        )
        self.y += 1

    def add(
        self,
        kind: str,
        title: str,
        targets: list[Json],
        *,
        w: int,
        h: int,
        description: str = "",
        defaults: Json | None = None,
        overrides: list[Json] | None = None,
        options: Json | None = None,
        **extra: Any,
    ) -> Json:
        panel: Json = {
            "datasource": DS,
            "description": description,
            "fieldConfig": {"defaults": defaults or {}, "overrides": overrides or []},
            "gridPos": self._place(w, h),
            "id": len(self.panels) + 1,
            "options": options or {},
            "targets": targets,
            "title": title,
            "type": kind,
            **extra,
        }
        self.panels.append(panel)
        return panel


def stat_options(text_mode: str = "value_and_name", color_mode: str = "background") -> Json:
    return {
        "colorMode": color_mode,
        "graphMode": "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showPercentChange": False,
        "textMode": text_mode,
        "wideLayout": True,
    }


def ts_defaults(unit: str = "short", *, bars: bool = False, stack: bool = False, **custom: Any) -> Json:
    return {
        "unit": unit,
        "custom": {
            "drawStyle": "bars" if bars else "line",
            "fillOpacity": 60 if bars else 10,
            "lineWidth": 1,
            "pointSize": 4,
            "showPoints": "auto",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if stack else "none"},
            **custom,
        },
    }


TS_OPTIONS = {
    "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
    "tooltip": {"mode": "multi", "sort": "desc"},
}


def table_options() -> Json:
    return {
        "cellHeight": "sm",
        "footer": {"show": False, "reducer": ["sum"], "fields": ""},
        "showHeader": True,
    }


def merged_table(columns: dict[str, str], hide: tuple[str, ...] = ("Time",)) -> list[Json]:
    """Instant queries (one per column, refIds A, B, ...) merged into one row per label set."""
    rename = {f"Value #{ref}": name for ref, name in columns.items()}
    if len(columns) == 1:  # with a single query Grafana names the column "Value", not "Value #A"
        rename["Value"] = next(iter(columns.values()))
    return [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": dict.fromkeys(hide, True),
                "renameByName": rename,
                "indexByName": {},
            },
        },
    ]


def column_override(name: str, **props: Any) -> Json:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": k.replace("__", "."), "value": v} for k, v in props.items()],
    }


ALL = {"selected": True, "text": ["All"], "value": ["$__all"]}


def variable_query(name: str, label: str, query: str, *, all_value: str = ".*") -> Json:
    return {
        "allValue": all_value,
        "current": ALL,
        "datasource": DS,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


DATASOURCE_VAR = {
    # ${DS_PROMETHEUS} is the __inputs entry: grafana.com import asks for the data source and fills it in;
    # provisioned from a file, Grafana finds no such data source and selects the default one.
    "current": {"selected": False, "text": "Prometheus", "value": "${DS_PROMETHEUS}"},
    "hide": 0,
    "includeAll": False,
    "label": "Data source",
    "multi": False,
    "name": "datasource",
    "options": [],
    "query": "prometheus",
    "refresh": 1,
    "regex": "",
    "skipUrlSync": False,
    "type": "datasource",
}
JOB_VAR = variable_query("job", "Job", "label_values(mailcanary_build_info, job)")
# Where the probes run from (global.vantage / --vantage); All also matches instances that set none.
VANTAGE_VAR = variable_query(
    "vantage", "Vantage", 'label_values(mailcanary_build_info{job=~"$job"}, vantage)'
)
INSTANCE_VAR = variable_query(
    "instance", "Instance", 'label_values(mailcanary_build_info{job=~"$job", vantage=~"$vantage"}, instance)'
)
SCOPE_VARS = [JOB_VAR, VANTAGE_VAR, INSTANCE_VAR]

GRAFANA_MIN_VERSION = "10.4.0"
PANEL_NAMES = {
    "stat": "Stat",
    "state-timeline": "State timeline",
    "table": "Table",
    "timeseries": "Time series",
    "bargauge": "Bar gauge",
    "heatmap": "Heatmap",
    "gauge": "Gauge",
    "text": "Text",
    "piechart": "Pie chart",
    "status-history": "Status history",
}


def requires(board: Board) -> list[Json]:
    """``__requires``: what grafana.com's import checks before it accepts the dashboard."""
    kinds = sorted({p["type"] for p in board.panels if p["type"] != "row"})
    return [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": GRAFANA_MIN_VERSION},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
        *({"type": "panel", "id": k, "name": PANEL_NAMES[k], "version": ""} for k in kinds),
    ]


INPUTS = [
    {
        "name": "DS_PROMETHEUS",
        "label": "Prometheus",
        "description": "The Prometheus that scrapes mailcanary",
        "type": "datasource",
        "pluginId": "prometheus",
        "pluginName": "Prometheus",
    }
]


def dashboard(
    uid: str,
    title: str,
    description: str,
    variables: list[Json],
    board: Board,
    *,
    scope: list[Json] | None = None,
) -> Json:
    return {
        "__inputs": INPUTS,
        "__requires": requires(board),
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "asDropdown": False,
                "icon": "external link",
                "includeVars": True,
                "keepTime": True,
                "tags": ["mailcanary"],
                "targetBlank": False,
                "title": "mailcanary",
                "tooltip": "The other mailcanary dashboards",
                "type": "dashboards",
            }
        ],
        "panels": board.panels,
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["mailcanary", "mail"],
        "templating": {"list": [DATASOURCE_VAR, *(SCOPE_VARS if scope is None else scope), *variables]},
        "time": {"from": "now-24h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
    }


# ---- overview --------------------------------------------------------------------------------------

# Every /metrics query: the job, where it probes from, which instance.
S = 'job=~"$job", instance=~"$instance", vantage=~"$vantage"'
RT = S + ', probe=~"$probe"'


def overview() -> Json:
    b = Board()
    b.row("Delivery now")
    b.add(
        "stat",
        "Round trip",
        [target(f"mailcanary_roundtrip_success{{{RT}}}", "{{probe}}")],
        w=8,
        h=5,
        description="Outcome of the last completed run of each round-trip probe.",
        defaults={
            "mappings": OK_FAIL,
            "color": {"mode": "thresholds"},
            "thresholds": thresholds((None, "red")),
        },
        options=stat_options(),
    )
    b.add(
        "stat",
        "Last delivery",
        [target(f"mailcanary_roundtrip_last_delivery_seconds{{{RT}}}", "{{probe}}")],
        w=8,
        h=5,
        description=(
            "Delivery latency of the last successful run: first seen by the receiver minus DATA accepted."
        ),
        defaults={"unit": "s", "thresholds": thresholds((None, "green"), (30, "orange"), (60, "red"))},
        options=stat_options(),
    )
    b.add(
        "stat",
        "Since last success",
        [target(f"time() - mailcanary_roundtrip_last_success_timestamp_seconds{{{RT}}}", "{{probe}}")],
        w=8,
        h=5,
        description="Time since the last successful run finished. Compare with the probe interval.",
        defaults={"unit": "s", "thresholds": thresholds((None, "green"), (900, "orange"), (1800, "red"))},
        options=stat_options(),
    )
    b.add(
        "state-timeline",
        "Delivery success",
        [target(f"mailcanary_roundtrip_success{{{RT}}}", "{{probe}}")],
        w=24,
        h=6,
        description="Outcome of the last completed run over time (green delivered, red failed).",
        defaults={
            "mappings": OK_FAIL,
            "color": {"mode": "thresholds"},
            "thresholds": thresholds((None, "red")),
            "custom": {"fillOpacity": 80, "lineWidth": 0},
        },
        options={
            "alignValue": "left",
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
            "mergeValues": True,
            "rowHeight": 0.9,
            "showValue": "never",
            "tooltip": {"mode": "single", "sort": "none"},
        },
    )

    b.row("Status")
    by = "max by (job, instance, probe)"
    b.add(
        "table",
        "Round-trip probes",
        [
            target(f"{by} (mailcanary_roundtrip_success{{{RT}}})", ref="A", instant=True, fmt="table"),
            target(
                f"{by} (mailcanary_roundtrip_last_delivery_seconds{{{RT}}})",
                ref="B",
                instant=True,
                fmt="table",
            ),
            target(
                f"{by} (time() - mailcanary_roundtrip_last_success_timestamp_seconds{{{RT}}})",
                ref="C",
                instant=True,
                fmt="table",
            ),
            target(
                f"{by} (avg_over_time(mailcanary_roundtrip_success{{{RT}}}[$__range]))",
                ref="D",
                instant=True,
                fmt="table",
            ),
            target(
                f"{by} (avg_over_time(mailcanary_roundtrip_success{{{RT}}}[30d]))",
                ref="E",
                instant=True,
                fmt="table",
            ),
        ],
        w=24,
        h=7,
        description=(
            "One row per probe and instance: last outcome, last delivery latency, time since the last "
            "success, and uptime (share of scrapes whose last run had succeeded) over the dashboard's "
            "time range and over 30 days."
        ),
        options=table_options(),
        transformations=merged_table(
            {
                "A": "last run",
                "B": "last delivery",
                "C": "since success",
                "D": "uptime (range)",
                "E": "uptime (30 d)",
            }
        ),
        overrides=[
            column_override(
                "last run",
                mappings=OK_FAIL,
                custom__cellOptions={"type": "color-background"},
                thresholds=thresholds((None, "red")),
            ),
            column_override("last delivery", unit="s", decimals=2),
            column_override("since success", unit="s", decimals=0),
            column_override(
                "uptime (range)",
                unit="percentunit",
                decimals=2,
                custom__cellOptions={"type": "color-text"},
                thresholds=thresholds((None, "red"), (0.99, "orange"), (0.999, "green")),
            ),
            column_override(
                "uptime (30 d)",
                unit="percentunit",
                decimals=3,
                custom__cellOptions={"type": "color-text"},
                thresholds=thresholds((None, "red"), (0.99, "orange"), (0.999, "green")),
            ),
        ],
    )

    b.row("Delivery SLO")
    b.add(
        "stat",
        "SLO attainment (30 d)",
        [target(f"1 - mailcanary:delivery_slo_errors:ratio_rate30d{{{RT}}}", "{{probe}}")],
        w=6,
        h=6,
        description=(
            "Share of runs over the last 30 days that delivered within the SLO threshold (failed runs "
            "count as bad). Recorded by deploy/prometheus/mailcanary-slo.yml."
        ),
        defaults={"unit": "percentunit", "decimals": 3, "color": {"mode": "fixed", "fixedColor": "text"}},
        options=stat_options(color_mode="value"),
    )
    b.add(
        "stat",
        "Error budget left (30 d)",
        [target(f"mailcanary:delivery_slo:error_budget_remaining_ratio{{{RT}}}", "{{probe}}")],
        w=6,
        h=6,
        description="1 - (bad share over 30 days / allowed bad share). Below 0 the objective is missed.",
        defaults={
            "unit": "percentunit",
            "decimals": 1,
            "thresholds": thresholds((None, "red"), (0, "orange"), (0.25, "yellow"), (0.5, "green")),
        },
        options=stat_options(),
    )
    b.add(
        "stat",
        "Objective",
        [
            target("mailcanary:delivery_slo:objective_ratio", "target", "A"),
            target("mailcanary:delivery_slo:threshold_seconds", "delivered within (s)", "B"),
        ],
        w=4,
        h=6,
        description="What the SLO rules were generated for (tools/gen_slo_rules.py).",
        defaults={"color": {"mode": "fixed", "fixedColor": "text"}},
        overrides=[column_override("target", unit="percentunit", decimals=2)],
        options=stat_options(color_mode="value"),
    )
    b.add(
        "timeseries",
        "Bad-run ratio (burn)",
        [
            target(f"mailcanary:delivery_slo_errors:ratio_rate1h{{{RT}}}", "{{probe}} 1h", "A"),
            target(f"mailcanary:delivery_slo_errors:ratio_rate6h{{{RT}}}", "{{probe}} 6h", "B"),
            target("1 - mailcanary:delivery_slo:objective_ratio", "budget (1x burn)", "C"),
        ],
        w=8,
        h=6,
        description=(
            "Share of bad runs over 1 h and 6 h against the budget. The page alerts fire at 14.4x (1 h) "
            "and 6x (6 h) the budget line."
        ),
        defaults=ts_defaults("percentunit"),
        overrides=[
            column_override(
                "budget (1x burn)",
                color={"mode": "fixed", "fixedColor": "red"},
                custom__lineStyle={"fill": "dash", "dash": [10, 10]},
            )
        ],
        options=TS_OPTIONS,
    )

    b.row("Latency")
    quantile = (
        "histogram_quantile({q}, sum by (job, probe, le) "
        f"(rate(mailcanary_roundtrip_delivery_seconds_bucket{{{RT}}}[$__rate_interval])))"
    )
    b.add(
        "timeseries",
        "Delivery latency p50 / p90 / p99",
        [
            target(quantile.replace("{q}", "0.5"), "{{probe}} p50", "A"),
            target(quantile.replace("{q}", "0.9"), "{{probe}} p90", "B"),
            target(quantile.replace("{q}", "0.99"), "{{probe}} p99", "C"),
        ],
        w=12,
        h=8,
        description=(
            "Quantiles estimated from the delivery histogram (successful runs only). The minimum "
            "interval of 5m keeps at least one run per window at the default probe interval."
        ),
        defaults=ts_defaults("s"),
        options=TS_OPTIONS,
        interval="5m",
    )
    b.add(
        "heatmap",
        "Delivery latency distribution",
        [
            target(
                "sum by (le) (increase("
                f"mailcanary_roundtrip_delivery_seconds_bucket{{{RT}}}[$__rate_interval]))",
                "{{le}}",
                fmt="heatmap",
            )
        ],
        w=12,
        h=8,
        description="Deliveries per histogram bucket over time (all selected probes).",
        defaults={"custom": {"scaleDistribution": {"type": "linear"}}},
        options={
            "calculate": False,
            "cellGap": 1,
            "color": {"exponent": 0.5, "mode": "scheme", "scheme": "Oranges", "steps": 64},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"mode": "single", "yHistogram": True},
            "yAxis": {"axisPlacement": "left", "unit": "s"},
        },
        interval="5m",
    )
    b.add(
        "timeseries",
        "Delivery latency per run",
        [target(f"mailcanary_roundtrip_last_delivery_seconds{{{RT}}}", "{{probe}}")],
        w=12,
        h=8,
        description="The latency of each successful run (the gauge of the last one, sampled).",
        defaults=ts_defaults("s", showPoints="always"),
        options=TS_OPTIONS,
    )
    range_q = (
        "histogram_quantile({q}, sum by (probe, le) "
        f"(increase(mailcanary_roundtrip_delivery_seconds_bucket{{{RT}}}[$__range])))"
    )
    b.add(
        "table",
        "Latency over the time range",
        [
            target(range_q.replace("{q}", "0.5"), "", "A", instant=True, fmt="table"),
            target(range_q.replace("{q}", "0.9"), "", "B", instant=True, fmt="table"),
            target(range_q.replace("{q}", "0.99"), "", "C", instant=True, fmt="table"),
        ],
        w=12,
        h=8,
        description="Quantiles of all deliveries in the selected time range, per probe.",
        defaults={"unit": "s", "decimals": 2},
        options=table_options(),
        transformations=merged_table({"A": "p50", "B": "p90", "C": "p99"}),
    )

    b.row("Runs")
    b.add(
        "timeseries",
        "Phase breakdown (last run): $probe",
        [
            target(
                "max by (phase) (mailcanary_roundtrip_phase_seconds{" + S + ', probe=~"$probe"})',
                "{{phase}}",
            )
        ],
        w=12,
        h=8,
        description="How long each protocol phase of the last run took; receive_wait is the delivery itself.",
        defaults=ts_defaults("s", bars=True, stack=True),
        options=TS_OPTIONS,
        repeat="probe",
        repeatDirection="h",
        maxPerRow=2,
    )
    b.add(
        "timeseries",
        "Runs by outcome",
        [
            target(
                "sum by (probe, outcome) "
                f"(increase(mailcanary_roundtrip_runs_total{{{RT}}}[$__rate_interval])) > 0",
                "{{probe}} {{outcome}}",
            )
        ],
        w=12,
        h=8,
        description="Completed runs per interval by outcome: success or the failure reason.",
        defaults=ts_defaults("short", bars=True, stack=True),
        overrides=[
            {
                "matcher": {"id": "byRegexp", "options": ".* success"},
                "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "green"}}],
            }
        ],
        options=TS_OPTIONS,
        interval="5m",
    )
    b.add(
        "table",
        "Outcomes over the time range",
        [
            target(
                f"sum by (probe, outcome) (increase(mailcanary_roundtrip_runs_total{{{RT}}}[$__range])) > 0",
                "",
                instant=True,
                fmt="table",
            )
        ],
        w=8,
        h=8,
        description="Runs per probe and outcome in the selected time range.",
        defaults={"decimals": 0},
        options=table_options(),
        transformations=merged_table({"A": "runs"}),
    )
    b.add(
        "timeseries",
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
        w=8,
        h=8,
        description=(
            "Late: canaries that arrived after their run had timed out. Lost: timed out and still unseen "
            "lost_after (default 1h) after sending. Swept: stale canaries deleted that were not known to "
            "be late (e.g. sent before a restart)."
        ),
        defaults=ts_defaults("short", bars=True),
        options=TS_OPTIONS,
        interval="5m",
    )
    b.add(
        "stat",
        "Late canaries (time range)",
        [
            target(
                f"sum by (probe) (increase(mailcanary_roundtrip_late_total{{{RT}}}[$__range]))", "{{probe}}"
            )
        ],
        w=8,
        h=8,
        description="Canaries that arrived late in the selected time range.",
        defaults={"decimals": 0, "thresholds": thresholds((None, "green"), (0.5, "orange"))},
        options=stat_options(),
    )
    b.add(
        "timeseries",
        "Run duration",
        [target(f"mailcanary_roundtrip_duration_seconds{{{RT}}}", "{{probe}}")],
        w=12,
        h=7,
        description="Wall time of the last run, all phases included.",
        defaults=ts_defaults("s"),
        options=TS_OPTIONS,
    )
    b.add(
        "timeseries",
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
        w=12,
        h=7,
        description="How late runs started, and runs skipped because the previous one was still going.",
        defaults=ts_defaults("s"),
        overrides=[
            {
                "matcher": {"id": "byRegexp", "options": ".* skipped"},
                "properties": [
                    {"id": "unit", "value": "short"},
                    {"id": "custom.drawStyle", "value": "bars"},
                    {"id": "custom.axisPlacement", "value": "right"},
                ],
            }
        ],
        options=TS_OPTIONS,
    )

    b.row("What the receiver did")
    b.add(
        "timeseries",
        "Delivered canaries by folder",
        [
            target(
                "sum by (probe, folder) "
                f"(increase(mailcanary_roundtrip_placements_total{{{RT}}}[$__rate_interval])) > 0",
                "{{probe}} {{folder}}",
            )
        ],
        w=16,
        h=8,
        description=(
            "Where each delivered canary was found: inbox, junk (receive.junk, IMAP only) or another "
            "folder (receive.placement_all_folders). POP3 sees the inbox only."
        ),
        defaults=ts_defaults("short", bars=True, stack=True),
        overrides=[
            {
                "matcher": {"id": "byRegexp", "options": ".* inbox"},
                "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "green"}}],
            },
            {
                "matcher": {"id": "byRegexp", "options": ".* junk"},
                "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}],
            },
        ],
        options=TS_OPTIONS,
        interval="5m",
    )
    b.add(
        "stat",
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
        w=8,
        h=8,
        description="Share of the delivered canaries found in the junk folder in the selected time range.",
        defaults={
            "unit": "percentunit",
            "decimals": 1,
            "min": 0,
            "max": 1,
            "thresholds": thresholds((None, "green"), (0.0001, "red")),
        },
        options=stat_options(),
    )

    b.add(
        "timeseries",
        "Bounces by status class",
        [
            target(
                "sum by (probe, class) "
                f"(increase(mailcanary_roundtrip_bounces_total{{{RT}}}[$__rate_interval])) > 0",
                "{{probe}} {{class}}",
            )
        ],
        w=12,
        h=8,
        description=(
            "Verified bounces about the canaries, by RFC 3463 class: 5.x.x permanent (the run ended "
            "bounced: 5.1.x address, 5.2.x mailbox, 5.7.x policy), 4.x.x delay notices (the run went on)."
        ),
        defaults=ts_defaults("short", bars=True, stack=True),
        overrides=[
            {
                "matcher": {"id": "byRegexp", "options": ".* 5\\..*"},
                "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}],
            }
        ],
        options=TS_OPTIONS,
        interval="5m",
    )

    b.add(
        "table",
        "Authentication verdict (last canary)",
        [
            target(
                f"max by (probe, method, result) (mailcanary_roundtrip_auth_result{{{RT}}}) == 1",
                "",
                instant=True,
                fmt="table",
            )
        ],
        w=12,
        h=8,
        description=(
            "spf, dkim, dmarc (and arc) as the receiving side's trusted authserv-ids reported them for the "
            "last delivered canary (receive.trusted_authserv_ids); missing = no trusted result."
        ),
        options=table_options(),
        overrides=[
            column_override(
                "result",
                mappings=value_map(("pass", "pass", "green")),
                custom__cellOptions={"type": "color-text"},
                color={"mode": "fixed", "fixedColor": "red"},
            )
        ],
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value": True},
                    "renameByName": {},
                    "indexByName": {"probe": 0, "method": 1, "result": 2},
                },
            }
        ],
    )
    b.add(
        "timeseries",
        "Spam score",
        [target(f"mailcanary_roundtrip_spam_score{{{RT}}}", "{{probe}} {{engine}}")],
        w=12,
        h=8,
        description=(
            "The receiving side's spam score of each delivered canary (SpamAssassin and rspamd scores, "
            "Microsoft SCL). Spam from 5 (SpamAssassin, SCL) or 6 (rspamd)."
        ),
        defaults=ts_defaults("short", showPoints="always"),
        options=TS_OPTIONS,
    )
    b.add(
        "timeseries",
        "Path: hops and time between first and last hop",
        [
            target(f"mailcanary_roundtrip_hops{{{RT}}}", "{{probe}} hops", "A"),
            target(f"mailcanary_roundtrip_path_seconds{{{RT}}}", "{{probe}} path", "B"),
        ],
        w=12,
        h=8,
        description=(
            "From the canary's Received chain: the servers it passed, and last minus first stamp "
            "(1 s resolution, several clocks: a negative value is clock skew, shown as it is)."
        ),
        defaults=ts_defaults("short"),
        overrides=[
            {
                "matcher": {"id": "byRegexp", "options": ".* path"},
                "properties": [
                    {"id": "unit", "value": "s"},
                    {"id": "custom.axisPlacement", "value": "right"},
                ],
            }
        ],
        options=TS_OPTIONS,
    )

    b.row("Mailbox: quota and sync")
    b.add(
        "bargauge",
        "Quota used",
        [
            target(
                f"mailcanary_mailbox_quota_used{{{RT}}} / (mailcanary_mailbox_quota_limit{{{RT}}} > 0)",
                "{{probe}} {{resource}}",
            )
        ],
        w=8,
        h=8,
        description=(
            "Share of the canary mailbox's quota in use (RFC 9208, read once per run when the IMAP server "
            "offers QUOTA), per resource: storage or message count. At 90 % MailcanaryMailboxQuotaNearlyFull "
            "fires; a full mailbox bounces mail, the canary included."
        ),
        defaults={
            "unit": "percentunit",
            "min": 0,
            "max": 1,
            "decimals": 1,
            "thresholds": thresholds((None, "green"), (0.8, "orange"), (0.9, "red")),
        },
        options={"displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True},
    )
    b.add(
        "timeseries",
        "Sync to the second session",
        [
            target(f"mailcanary_roundtrip_sync_seconds{{{RT}}}", "{{probe}} flag seen", "A"),
            target(f"mailcanary_roundtrip_sync_arrival_seconds{{{RT}}}", "{{probe}} arrival there", "B"),
        ],
        w=8,
        h=8,
        description=(
            "Sync check (receive.sync), last successful run: from the first IMAP session flagging the "
            "canary until the second session (the other device) saw it, and the delivery latency as the "
            "second session saw it. Failures are outcome sync_timeout."
        ),
        defaults=ts_defaults("s", showPoints="always"),
        options=TS_OPTIONS,
    )
    b.add(
        "timeseries",
        "Quota read errors",
        [
            target(
                "sum by (probe, reason) "
                f"(increase(mailcanary_mailbox_quota_read_errors_total{{{RT}}}[$__rate_interval]))",
                "{{probe}} {{reason}}",
            )
        ],
        w=8,
        h=8,
        description=(
            "Quota reads that failed (refused, protocol, timeout); the round trip went on and the last "
            "reading is kept."
        ),
        defaults=ts_defaults("short", bars=True),
        options=TS_OPTIONS,
        interval="5m",
    )

    b.row("Exporter")
    b.add(
        "stat",
        "Exporter scrape",
        [target('up{job=~"$job", instance=~"$instance"}', "{{instance}}")],
        w=6,
        h=5,
        description="Whether Prometheus can scrape each mailcanary instance.",
        defaults={
            "mappings": value_map(("1", "UP", "green"), ("0", "DOWN", "red")),
            "thresholds": thresholds((None, "red")),
        },
        options=stat_options(),
    )
    b.add(
        "stat",
        "Configuration",
        [
            target(
                "mailcanary_config_last_reload_successful{" + S + "}",
                "{{instance}}",
            )
        ],
        w=6,
        h=5,
        description="1 if the last configuration (re)load succeeded; on failure the previous config runs.",
        defaults={
            "mappings": value_map(("1", "loaded", "green"), ("0", "RELOAD FAILED", "red")),
            "thresholds": thresholds((None, "red")),
        },
        options=stat_options(),
    )
    b.add(
        "stat",
        "Probes configured",
        [
            target(
                "sum by (kind) (mailcanary_config_probes{" + S + "})",
                "{{kind}}",
            )
        ],
        w=6,
        h=5,
        description="Configured round-trip probes and TLS checks.",
        defaults={"color": {"mode": "fixed", "fixedColor": "text"}},
        options=stat_options(color_mode="value"),
    )
    b.add(
        "table",
        "Version",
        [
            target(
                "mailcanary_build_info{" + S + "}",
                "",
                instant=True,
                fmt="table",
            )
        ],
        w=6,
        h=5,
        description="mailcanary and Python version of each instance.",
        options=table_options(),
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True},
                    "renameByName": {},
                    "indexByName": {},
                },
            }
        ],
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


# ---- TLS -------------------------------------------------------------------------------------------

T = RT + ', endpoint=~"$endpoint"'
BY = "probe, endpoint, protocol"


def tls() -> Json:
    b = Board()
    days = f"(mailcanary_tls_earliest_cert_expiry_timestamp_seconds{{{T}}} - time()) / 86400"
    b.row("Summary")
    b.add(
        "stat",
        "Audited endpoints",
        [target(f"count(max by (endpoint, protocol) (mailcanary_tls_cert_verified{{{T}}}))", "endpoints")],
        w=6,
        h=4,
        description="Audited endpoints (host:port) with a certificate seen.",
        defaults={"color": {"mode": "fixed", "fixedColor": "text"}},
        options=stat_options(text_mode="value", color_mode="value"),
    )
    b.add(
        "stat",
        "Expiring within 21 days",
        [target(f"count(min by (endpoint) ({days}) < 21) or vector(0)", "endpoints")],
        w=6,
        h=4,
        description="Endpoints whose chain has a certificate expiring in less than 21 days (or expired).",
        defaults={"thresholds": thresholds((None, "green"), (1, "orange"))},
        options=stat_options(text_mode="value"),
    )
    b.add(
        "stat",
        "Not verified",
        [
            target(
                f"count(max by ({BY}) (mailcanary_tls_cert_verified{{{T}}} == 0)) or vector(0)", "endpoints"
            )
        ],
        w=6,
        h=4,
        description="Probe/endpoint pairs whose certificate chain or name did not verify.",
        defaults={"thresholds": thresholds((None, "green"), (1, "red"))},
        options=stat_options(text_mode="value"),
    )
    b.add(
        "stat",
        "Legacy TLS accepted",
        [
            target(
                f"count(max by (endpoint, version) (mailcanary_tls_legacy_protocol_accepted{{{T}}} == 1)) "
                "or vector(0)",
                "endpoints",
            )
        ],
        w=6,
        h=4,
        description="Endpoint/version pairs that completed a TLS 1.0 or 1.1 handshake.",
        defaults={"thresholds": thresholds((None, "green"), (1, "orange"))},
        options=stat_options(text_mode="value"),
    )

    b.row("Certificates")
    columns = {
        "A": "Days left (chain)",
        "B": "Days left (leaf)",
        "C": "Verified",
        "D": "Hostname match",
        "E": "STARTTLS offered",
        "F": "AUTH before TLS",
    }
    b.add(
        "table",
        "Endpoints",
        [
            target(f"min by ({BY}) ({days})", "", "A", instant=True, fmt="table"),
            target(
                f"min by ({BY}) ((mailcanary_tls_cert_not_after_timestamp_seconds{{{T}}} - time()) / 86400)",
                "",
                "B",
                instant=True,
                fmt="table",
            ),
            target(
                f"min by ({BY}) (mailcanary_tls_cert_verified{{{T}}})", "", "C", instant=True, fmt="table"
            ),
            target(
                f"min by ({BY}) (mailcanary_tls_hostname_match{{{T}}})", "", "D", instant=True, fmt="table"
            ),
            target(
                f"min by ({BY}) (mailcanary_tls_starttls_offered{{{T}}})", "", "E", instant=True, fmt="table"
            ),
            target(
                f"max by ({BY}) (mailcanary_tls_auth_before_tls{{{T}}})", "", "F", instant=True, fmt="table"
            ),
        ],
        w=24,
        h=9,
        description=(
            "Every audited endpoint. Days left: red under 7, orange under 21, dark red expired. "
            "STARTTLS and AUTH-before-TLS apply to plain ports only (empty for implicit TLS)."
        ),
        defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
        overrides=[
            column_override(
                name,
                decimals=1,
                thresholds=DAYS_THRESHOLDS,
                custom__cellOptions={"type": "color-background", "mode": "basic"},
            )
            for name in ("Days left (chain)", "Days left (leaf)")
        ]
        + [
            column_override(name, mappings=YES_NO_GOOD, custom__cellOptions={"type": "color-text"})
            for name in ("Verified", "Hostname match", "STARTTLS offered")
        ]
        + [
            column_override(
                "AUTH before TLS", mappings=YES_NO_BAD, custom__cellOptions={"type": "color-text"}
            )
        ],
        options={**table_options(), "sortBy": [{"displayName": "Days left (chain)", "desc": False}]},
        transformations=merged_table(columns),
    )
    b.add(
        "bargauge",
        "Days to earliest expiry",
        [target(f"min by (endpoint) ({days})", "{{endpoint}}")],
        w=12,
        h=8,
        description="Earliest expiry in each endpoint's chain. Thresholds 21 / 7 / 0 days.",
        defaults={"unit": "none", "decimals": 0, "min": 0, "max": 90, "thresholds": DAYS_THRESHOLDS},
        options={
            "displayMode": "gradient",
            "minVizHeight": 10,
            "minVizWidth": 0,
            "namePlacement": "auto",
            "orientation": "horizontal",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showUnfilled": True,
            "sizing": "auto",
            "valueMode": "color",
        },
    )
    b.add(
        "timeseries",
        "Days left over time",
        [target(f"min by (endpoint) ({days})", "{{endpoint}}")],
        w=12,
        h=8,
        description="A renewal shows as a jump up; thresholds at 21 and 7 days.",
        defaults={
            **ts_defaults("none", thresholdsStyle={"mode": "line+area"}),
            "thresholds": thresholds((None, "red"), (7, "orange"), (21, "transparent")),
        },
        options=TS_OPTIONS,
    )

    b.row("Protocol")
    b.add(
        "table",
        "TLS version and cipher",
        [
            target(
                f"max by ({BY}, version, cipher) (mailcanary_tls_version_info{{{T}}} "
                "* on (job, instance, probe, endpoint, protocol) group_left (cipher) "
                f"mailcanary_tls_cipher_info{{{T}}})",
                "",
                instant=True,
                fmt="table",
            )
        ],
        w=12,
        h=8,
        description="Negotiated protocol version and cipher suite of the last handshake.",
        overrides=[
            column_override(
                "version",
                mappings=value_map(
                    ("TLSv1.3", "TLSv1.3", "green"),
                    ("TLSv1.2", "TLSv1.2", "green"),
                    ("TLSv1.1", "TLSv1.1", "red"),
                    ("TLSv1", "TLSv1", "red"),
                ),
                custom__cellOptions={"type": "color-text"},
            )
        ],
        options=table_options(),
        transformations=merged_table({}, hide=("Time", "Value")),
    )
    b.add(
        "table",
        "Legacy protocols accepted",
        [
            target(
                f"max by ({BY}, version) (mailcanary_tls_legacy_protocol_accepted{{{T}}})",
                "",
                instant=True,
                fmt="table",
            )
        ],
        w=12,
        h=8,
        description=(
            "Whether a handshake pinned to TLS 1.0 / 1.1 completed. Absent where it was not tested or "
            "this machine's OpenSSL cannot offer the version (see the panel below)."
        ),
        overrides=[
            column_override(
                "accepted",
                mappings=value_map(("1", "ACCEPTED", "red"), ("0", "refused", "green")),
                custom__cellOptions={"type": "color-text"},
            )
        ],
        options=table_options(),
        transformations=merged_table({"A": "accepted"}),
    )
    b.add(
        "table",
        "Verification",
        [
            target(
                f"max by ({BY}, reason) (mailcanary_tls_cert_verify_error_info{{{T}}}) "
                f"or on ({BY}) "
                f"label_replace(max by ({BY}) (mailcanary_tls_cert_verified{{{T}}} == 1), "
                '"reason", "verified", "", "")',
                "",
                instant=True,
                fmt="table",
            )
        ],
        w=12,
        h=7,
        description="Verification result per probe and endpoint: verified, or the reason it failed.",
        overrides=[
            column_override(
                "reason",
                mappings=[
                    *value_map(("verified", "verified", "green")),
                    {"type": "regex", "options": {"pattern": ".+", "result": {"color": "red", "index": 1}}},
                ],
                custom__cellOptions={"type": "color-text"},
            )
        ],
        options=table_options(),
        transformations=merged_table({}, hide=("Time", "Value")),
    )
    b.add(
        "stat",
        "Legacy protocols testable here",
        [
            target(
                "max by (version) (mailcanary_tls_legacy_protocol_testable{" + S + "})",
                "{{version}}",
            )
        ],
        w=12,
        h=7,
        description="Whether this exporter's OpenSSL can offer TLS 1.0 / 1.1; if not, none is measured.",
        defaults={
            "mappings": value_map(("1", "testable", "green"), ("0", "not testable", "orange")),
            "thresholds": thresholds((None, "orange")),
        },
        options=stat_options(),
    )

    b.row("TLS checks")
    b.add(
        "stat",
        "TLS check status",
        [
            target(
                "mailcanary_tls_check_success{" + S + ', probe=~"$probe"}',
                "{{probe}}",
            )
        ],
        w=12,
        h=6,
        description="Standalone TLS checks (tls_checks): 1 if the last check completed and verified.",
        defaults={"mappings": OK_FAIL, "thresholds": thresholds((None, "red"))},
        options=stat_options(),
    )
    b.add(
        "timeseries",
        "TLS check duration",
        [
            target(
                "mailcanary_tls_check_duration_seconds{" + S + ', probe=~"$probe"}',
                "{{probe}}",
            )
        ],
        w=12,
        h=6,
        description="Wall time of the last check, legacy-protocol handshakes included.",
        defaults=ts_defaults("s"),
        options=TS_OPTIONS,
    )
    return dashboard(
        "mailcanary-tls",
        "mailcanary / TLS",
        "TLS audit of every endpoint mailcanary talks to: expiry, verification, versions, STARTTLS.",
        [
            variable_query(
                "probe",
                "Probe",
                "label_values(mailcanary_tls_cert_verified{" + S + "}, probe)",
            ),
            variable_query(
                "endpoint",
                "Endpoint",
                "label_values(mailcanary_tls_cert_verified{" + S + ', probe=~"$probe"}, endpoint)',
            ),
        ],
        b,
    )


# ---- /probe (TLS targets) -----------------------------------------------------------------------------

P = 'job=~"$job", instance=~"$instance"'
# /probe's mailcanary_tls_* series carry no endpoint label (the target is the instance): that keeps the
# /metrics series of the same names out of these panels.
PT = P + ', endpoint=""'


def probe_targets() -> Json:
    b = Board()
    b.row("Status")
    days = f"(probe_ssl_earliest_cert_expiry{{{P}}} - time()) / 86400"
    by = "max by (job, instance)"
    b.add(
        "stat",
        "Targets failing",
        [target(f"count(probe_success{{{P}}} == 0) or vector(0)", "failing")],
        w=6,
        h=5,
        description="Targets whose last /probe scrape failed (probe_success 0).",
        defaults={"thresholds": thresholds((None, "green"), (1, "red"))},
        options=stat_options(text_mode="value"),
    )
    b.add(
        "stat",
        "Soonest expiry",
        [target(f"min({days})", "days")],
        w=6,
        h=5,
        description="Days until the first certificate of any target's chain expires.",
        defaults={"unit": "d", "decimals": 1, "thresholds": DAYS_THRESHOLDS},
        options=stat_options(text_mode="value"),
    )
    b.add(
        "stat",
        "Uptime (range)",
        [target(f"avg(avg_over_time(probe_success{{{P}}}[$__range]))", "uptime")],
        w=6,
        h=5,
        description="Share of successful /probe scrapes over the dashboard's time range, all targets.",
        defaults={
            "unit": "percentunit",
            "decimals": 2,
            "thresholds": thresholds((None, "red"), (0.99, "orange"), (0.999, "green")),
        },
        options=stat_options(text_mode="value"),
    )
    b.add(
        "stat",
        "Uptime (30 d)",
        [target(f"avg(avg_over_time(probe_success{{{P}}}[30d]))", "uptime")],
        w=6,
        h=5,
        description="Share of successful /probe scrapes over 30 days, all targets.",
        defaults={
            "unit": "percentunit",
            "decimals": 3,
            "thresholds": thresholds((None, "red"), (0.99, "orange"), (0.999, "green")),
        },
        options=stat_options(text_mode="value"),
    )
    b.add(
        "table",
        "Targets",
        [
            target(f"{by} (probe_success{{{P}}})", ref="A", instant=True, fmt="table"),
            target(f"{by} ({days})", ref="B", instant=True, fmt="table"),
            target(f"{by} (mailcanary_tls_cert_verified{{{PT}}})", ref="C", instant=True, fmt="table"),
            target(f"{by} (probe_duration_seconds{{{P}}})", ref="D", instant=True, fmt="table"),
            target(
                f"{by} (avg_over_time(probe_success{{{P}}}[$__range]))", ref="E", instant=True, fmt="table"
            ),
            target(f"{by} (avg_over_time(probe_success{{{P}}}[30d]))", ref="F", instant=True, fmt="table"),
        ],
        w=24,
        h=8,
        description=(
            "One row per /probe target (the instance label of the documented relabel setup): last result, "
            "days to the earliest expiry in the chain, chain verified, probe duration, uptime over the "
            "time range and over 30 days."
        ),
        options=table_options(),
        transformations=merged_table(
            {
                "A": "success",
                "B": "days left",
                "C": "verified",
                "D": "duration",
                "E": "uptime (range)",
                "F": "uptime (30 d)",
            }
        ),
        overrides=[
            column_override(
                "success",
                mappings=OK_FAIL,
                custom__cellOptions={"type": "color-background"},
                thresholds=thresholds((None, "red")),
            ),
            column_override(
                "days left",
                unit="d",
                decimals=1,
                custom__cellOptions={"type": "color-background"},
                thresholds=DAYS_THRESHOLDS,
            ),
            column_override(
                "verified",
                mappings=YES_NO_GOOD,
                custom__cellOptions={"type": "color-text"},
                thresholds=thresholds((None, "red")),
            ),
            column_override("duration", unit="s", decimals=3),
            column_override("uptime (range)", unit="percentunit", decimals=2),
            column_override("uptime (30 d)", unit="percentunit", decimals=3),
        ],
    )

    b.row("Over time")
    b.add(
        "state-timeline",
        "Probe success",
        [target(f"probe_success{{{P}}}", "{{instance}}")],
        w=24,
        h=6,
        description="Result of each /probe scrape over time (green success, red failure).",
        defaults={
            "mappings": OK_FAIL,
            "color": {"mode": "thresholds"},
            "thresholds": thresholds((None, "red")),
            "custom": {"fillOpacity": 80, "lineWidth": 0},
        },
        options={
            "alignValue": "left",
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False},
            "mergeValues": True,
            "rowHeight": 0.9,
            "showValue": "never",
            "tooltip": {"mode": "single", "sort": "none"},
        },
    )
    b.add(
        "timeseries",
        "Days to expiry",
        [target(days, "{{instance}}")],
        w=12,
        h=7,
        description="Days until the earliest certificate expiry in each target's chain.",
        defaults=ts_defaults("d"),
        options=TS_OPTIONS,
    )
    b.add(
        "timeseries",
        "Probe duration",
        [target(f"probe_duration_seconds{{{P}}}", "{{instance}}")],
        w=12,
        h=7,
        description="Wall time of each /probe request, legacy-protocol handshakes included.",
        defaults=ts_defaults("s"),
        options=TS_OPTIONS,
    )
    b.add(
        "table",
        "TLS version",
        [target(f"probe_tls_version_info{{{P}}}", "", instant=True, fmt="table")],
        w=12,
        h=6,
        description="Negotiated TLS version per target (blackbox_exporter's spelling).",
        options=table_options(),
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True, "Value": True, "__name__": True},
                    "renameByName": {},
                    "indexByName": {},
                },
            }
        ],
    )
    b.add(
        "table",
        "Legacy TLS accepted",
        [
            target(
                f"max by (instance, version) (mailcanary_tls_legacy_protocol_accepted{{{PT}}})",
                "",
                instant=True,
                fmt="table",
            )
        ],
        w=12,
        h=6,
        description="1 if the target completed a handshake pinned to TLS 1.0 / 1.1 (deprecated, RFC 8996).",
        options=table_options(),
        defaults={"mappings": YES_NO_BAD},
        transformations=[
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value": "accepted"},
                    "indexByName": {},
                },
            }
        ],
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


# ---- domains (domain_checks) ------------------------------------------------------------------------

DOM = RT + ', domain=~"$domain"'
DOM_BY = "probe, domain"
MX_BY = "probe, domain, mx, address"


def domains() -> Json:
    b = Board()
    b.row("Summary")
    summary = [
        (
            "Domains checked",
            f"count(mailcanary_domain_check_success{{{RT}}})",
            "Domain checks (domain_checks in the config) with a completed run.",
            thresholds((None, "text")),
        ),
        (
            "Domains with findings",
            f"count(mailcanary_domain_findings{{{DOM}}} > 0) or vector(0)",
            "Domains whose last check found something (every finding is a row below and in the log).",
            thresholds((None, "green"), (1, "orange")),
        ),
        (
            "Checks not completing",
            f"count(mailcanary_domain_check_success{{{RT}}} == 0 unless on (job, instance, probe) "
            f"mailcanary_domain_findings{{{RT}}}) or vector(0)",
            "Domain checks whose last run could not check the domain (MX lookup failed, timeout).",
            thresholds((None, "green"), (1, "red")),
        ),
        (
            "MX addresses not verified",
            f"count(mailcanary_domain_mx_cert_verified{{{DOM}}} == 0) or vector(0)",
            "MX addresses whose certificate did not verify for the MX name.",
            thresholds((None, "green"), (1, "orange")),
        ),
        (
            "DNSBL listings",
            f"count(mailcanary_domain_dnsbl_listed{{{DOM}}} == 1) or vector(0)",
            "(MX address, zone) pairs listed.",
            thresholds((None, "green"), (1, "orange")),
        ),
        (
            "Must-refuse failures",
            f"count(mailcanary_domain_must_refuse_success{{{DOM}}} == 0) or vector(0)",
            "(MX address, check) pairs where the server accepted what it must refuse (open relay, "
            "AUTH before TLS, own-domain sender).",
            thresholds((None, "green"), (1, "red")),
        ),
    ]
    for title, expr, description, steps in summary:
        b.add(
            "stat",
            title,
            [target(expr, "")],
            w=4,
            h=4,
            description=description,
            defaults={"thresholds": steps},
            options=stat_options(text_mode="value"),
        )

    b.row("Domains")
    columns = {
        "A": "Findings",
        "B": "MX DNSSEC",
        "C": "MTA-STS record",
        "D": "MTA-STS policy",
        "E": "TLS-RPT",
        "F": "MX hosts",
        "G": "MTA-STS max_age",
    }
    exprs = {
        "A": f"max by ({DOM_BY}) (mailcanary_domain_findings{{{DOM}}})",
        "B": f"min by ({DOM_BY}) (mailcanary_domain_mx_dnssec_valid{{{DOM}}})",
        "C": f"min by ({DOM_BY}) (mailcanary_domain_mta_sts_record_valid{{{DOM}}})",
        "D": f"min by ({DOM_BY}) (mailcanary_domain_mta_sts_policy_valid{{{DOM}}})",
        "E": f"min by ({DOM_BY}) (mailcanary_domain_tlsrpt_valid{{{DOM}}})",
        "F": f"max by ({DOM_BY}) (mailcanary_domain_mx_hosts{{{DOM}}})",
        "G": f"max by ({DOM_BY}) (mailcanary_domain_mta_sts_max_age_seconds{{{DOM}}})",
    }
    b.add(
        "table",
        "Domains",
        [target(e, "", ref, instant=True, fmt="table") for ref, e in exprs.items()],
        w=24,
        h=7,
        description=(
            "One row per domain check: findings of the last run (0 passes), DNSSEC of the MX answer and "
            "the MX addresses, MTA-STS (record, policy fetched as RFC 8461 asks), TLS-RPT. "
            "mailcanary probe NAME prints the same as a report."
        ),
        defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
        overrides=[
            column_override(
                "Findings",
                thresholds=thresholds((None, "green"), (1, "orange")),
                custom__cellOptions={"type": "color-background", "mode": "basic"},
            ),
            column_override("MTA-STS max_age", unit="s"),
        ]
        + [
            column_override(name, mappings=YES_NO_GOOD, custom__cellOptions={"type": "color-text"})
            for name in ("MX DNSSEC", "MTA-STS record", "MTA-STS policy", "TLS-RPT")
        ],
        options={**table_options(), "sortBy": [{"displayName": "Findings", "desc": True}]},
        transformations=merged_table(columns),
    )

    b.row("MX addresses")
    columns = {
        "A": "Up",
        "B": "STARTTLS",
        "C": "Verified",
        "D": "Name match",
        "E": "DANE match",
        "F": "DNSBL listed",
        "G": "Open relay refused",
        "H": "AUTH in clear",
        "I": "Key bits",
        "J": "Weak signature",
        "K": "OCSP revoked",
    }
    exprs = {
        "A": f"min by ({MX_BY}) (mailcanary_domain_mx_up{{{DOM}}})",
        "B": f"min by ({MX_BY}) (mailcanary_domain_mx_starttls_offered{{{DOM}}})",
        "C": f"min by ({MX_BY}) (mailcanary_domain_mx_cert_verified{{{DOM}}})",
        "D": f"min by ({MX_BY}) (mailcanary_domain_mx_hostname_match{{{DOM}}})",
        "E": f"min by ({MX_BY}) (mailcanary_domain_dane_match{{{DOM}}})",
        "F": f"max by ({MX_BY}) (mailcanary_domain_dnsbl_listed{{{DOM}}})",
        "G": f'min by ({MX_BY}) (mailcanary_domain_must_refuse_success{{{DOM}, check="open_relay"}})',
        "H": f"max by ({MX_BY}) (mailcanary_domain_mx_auth_before_tls{{{DOM}}})",
        "I": f"min by ({MX_BY}) (mailcanary_domain_mx_cert_key_bits{{{DOM}}})",
        "J": f"max by ({MX_BY}) (mailcanary_domain_mx_cert_weak_signature{{{DOM}}})",
        "K": f'max by ({MX_BY}) (mailcanary_domain_mx_cert_ocsp_status{{{DOM}, status="revoked"}})',
    }
    b.add(
        "table",
        "Every MX at every address",
        [target(e, "", ref, instant=True, fmt="table") for ref, e in exprs.items()],
        w=24,
        h=9,
        description=(
            "Every (MX host, address) of each domain, bounded by max_mx x max_addresses. Empty cells: not "
            "asked (no TLSA, no DNSBL zone, must_refuse disabled, no OCSP responder named)."
        ),
        defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}}},
        overrides=[
            column_override(name, mappings=YES_NO_GOOD, custom__cellOptions={"type": "color-text"})
            for name in ("Up", "STARTTLS", "Verified", "Name match", "DANE match", "Open relay refused")
        ]
        + [
            column_override(name, mappings=YES_NO_BAD, custom__cellOptions={"type": "color-text"})
            for name in ("DNSBL listed", "AUTH in clear", "Weak signature", "OCSP revoked")
        ],
        options={**table_options(), "sortBy": [{"displayName": "Verified", "desc": False}]},
        transformations=merged_table(columns),
    )

    b.row("History")
    b.add(
        "timeseries",
        "Findings per domain",
        [target(f"max by ({DOM_BY}) (mailcanary_domain_findings{{{DOM}}})", "{{domain}}")],
        w=12,
        h=8,
        description="Findings of each domain's last completed check, over time.",
        defaults=ts_defaults("short"),
        options=TS_OPTIONS,
    )
    b.add(
        "timeseries",
        "MX audit stages",
        [
            target(
                f"max by (mx, address, stage) (mailcanary_domain_mx_stage_seconds{{{DOM}}})",
                "{{mx}} {{address}} {{stage}}",
            )
        ],
        w=12,
        h=8,
        description="Per-stage timings of each MX address's audit (connect, handshake, legacy).",
        defaults=ts_defaults("s"),
        options=TS_OPTIONS,
    )
    return dashboard(
        "mailcanary-domains",
        "mailcanary / Mail domains",
        "Mail domains from the outside: every MX on port 25, DANE, MTA-STS, TLS-RPT, DNSBL, certificate "
        "hygiene and must-refuse checks (domain_checks).",
        [
            variable_query(
                "probe", "Domain check", "label_values(mailcanary_domain_check_success{" + S + "}, probe)"
            ),
            variable_query(
                "domain",
                "Domain",
                "label_values(mailcanary_domain_findings{" + S + ', probe=~"$probe"}, domain)',
            ),
        ],
        b,
    )


DASHBOARDS = {
    "mailcanary-overview.json": overview,
    "mailcanary-tls.json": tls,
    "mailcanary-probe.json": probe_targets,
    "mailcanary-domains.json": domains,
}


def render() -> dict[str, str]:
    return {
        name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with dashboards/ instead of writing")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory to write (default dashboards/)")
    args = parser.parse_args(argv)
    stale = 0
    for name, text in render().items():
        path = args.out / name
        if args.check:
            old = path.read_text(encoding="utf-8") if path.exists() else ""
            if old != text:
                stale += 1
                sys.stdout.writelines(
                    difflib.unified_diff(old.splitlines(True), text.splitlines(True), str(path), "generated")
                )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(
            f"{stale} dashboard(s) differ from tools/gen_dashboards.py; run it to regenerate", file=sys.stderr
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
