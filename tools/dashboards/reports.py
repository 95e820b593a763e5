"""What others see: the domain's TLS-RPT and DMARC aggregate reports (the reports kind): TLS failures by
org and result type, DMARC alignment over time, unknown senders claiming our domains."""

from __future__ import annotations

from grafana_foundation_sdk.models import common as cm

from .common import (
    RT,
    Board,
    Json,
    S,
    dashboard,
    stat,
    target,
    thresholds,
    timeseries_panel,
    variable_query,
)

DOM = RT + ', domain=~"$domain"'


def inc(metric: str, extra: str = "", sel: str = DOM) -> str:
    """What the last day added to ``metric`` under the dashboard's selection (reports come daily): a
    series new within the day (an org's first report) counts whole, as in the alerts; increase() alone
    would see its first value as the start and show 0."""
    series = f"{metric}{{{sel}{extra}}}"
    return f"(({series} unless {series} offset 1d) or increase({series}[1d]))"


UNITS = {"TLS success ratio (1d)": "percentunit", "Newest report": "s"}


def build() -> Json:
    b = Board()
    summary = [
        (
            "TLS sessions failed (1d)",
            "sum(" + inc("mailcanary_tlsrpt_sessions_total", ', result="failed"') + ") or vector(0)",
            "Failed TLS sessions to our MX that senders reported in the last day (TLS-RPT summary totals).",
            thresholds((None, "green"), (1, "orange")),
        ),
        (
            "TLS success ratio (1d)",
            "sum(" + inc("mailcanary_tlsrpt_sessions_total", ', result="successful"') + ") / "
            "sum(" + inc("mailcanary_tlsrpt_sessions_total") + ")",
            "Successful / all TLS sessions reported in the last day.",
            thresholds((None, "red"), (0.99, "orange"), (0.999, "green")),
        ),
        (
            "DMARC failing (1d)",
            "sum(" + inc("mailcanary_dmarc_messages_total", ', dkim="fail", spf="fail"') + ") or vector(0)",
            "Messages claiming our domains with neither DKIM nor SPF aligned, last day (every source).",
            thresholds((None, "green"), (1, "orange")),
        ),
        (
            "Unknown senders (1d)",
            "sum(" + inc("mailcanary_dmarc_messages_total", ', source="unknown"') + ") or vector(0)",
            "Messages claiming our domains from addresses no configured sender covers, last day. The top "
            "addresses are on the status page and in the log (dmarc_unknown_sources).",
            thresholds((None, "green"), (1, "orange")),
        ),
        (
            "Unreadable reports (1d)",
            "sum(" + inc("mailcanary_reports_errors_total", sel=RT) + ") or vector(0)",
            "Report mails refused (bombs, bad JSON/XML, entities, over a cap), last day: one "
            "report_error log line each.",
            thresholds((None, "green"), (1, "orange")),
        ),
        (
            "Newest report",
            f"time() - max(mailcanary_tlsrpt_last_report_timestamp_seconds{{{RT}}} or "
            f"mailcanary_dmarc_last_report_timestamp_seconds{{{RT}}})",
            "Since the newest report of any org was counted (reports come about daily).",
            thresholds((None, "green"), (2 * 86400, "orange")),
        ),
    ]
    b.row(
        "Summary",
        *(
            stat(
                title,
                [target(expr, "")],
                description=description,
                thresholds=steps,
                text_mode=cm.BigValueTextMode.VALUE,
                size=(4, 4),
                unit=UNITS.get(title, "short"),
            )
            for title, expr, description, steps in summary
        ),
    )
    b.row(
        "TLS-RPT",
        timeseries_panel(
            "TLS failures by org and result type",
            [
                target(
                    "sum by (org, result_type) (" + inc("mailcanary_tlsrpt_failures_total") + ") > 0",
                    "{{org}} {{result_type}}",
                )
            ],
            description="Failed sessions per reporting org and RFC 8460 result type over the last day.",
            size=(12, 8),
        ),
        timeseries_panel(
            "TLS sessions by policy type",
            [
                target(
                    "sum by (policy_type, result) (" + inc("mailcanary_tlsrpt_sessions_total") + ")",
                    "{{policy_type}} {{result}}",
                )
            ],
            description="Sessions reported per policy type (sts, tlsa, no-policy-found), last day.",
            size=(12, 8),
        ),
    )
    b.row(
        "DMARC",
        timeseries_panel(
            "DMARC alignment over time",
            [
                target(
                    "sum by (dkim, spf) (" + inc("mailcanary_dmarc_messages_total") + ")",
                    "dkim {{dkim}} / spf {{spf}}",
                )
            ],
            description="Messages claiming our domains by aligned DKIM and SPF result, last day.",
            size=(12, 8),
        ),
        timeseries_panel(
            "Messages by source",
            [
                target(
                    "sum by (source, disposition) (" + inc("mailcanary_dmarc_messages_total") + ")",
                    "{{source}} {{disposition}}",
                )
            ],
            description="By configured sender (unknown: every other address) and the receivers' disposition.",
            size=(12, 8),
        ),
        timeseries_panel(
            "Unknown senders",
            [
                target(
                    "sum by (domain, org) ("
                    + inc("mailcanary_dmarc_messages_total", ', source="unknown"')
                    + ")",
                    "{{domain}} via {{org}}",
                ),
                target(
                    f"max by (probe) (mailcanary_reports_unknown_sources{{{RT}}})",
                    "distinct addresses {{probe}}",
                    "B",
                ),
            ],
            description="Messages from unknown sources per domain and reporter, last day, and the distinct "
            "unknown addresses in the age window.",
            size=(12, 8),
        ),
        timeseries_panel(
            "Reports counted, skipped, unreadable",
            [
                target(
                    "sum by (kind) (" + inc("mailcanary_reports_ingested_total", sel=RT) + ")",
                    "counted {{kind}}",
                ),
                target(
                    "sum by (reason) (" + inc("mailcanary_reports_skipped_total", sel=RT) + ") > 0",
                    "skipped {{reason}}",
                    "B",
                ),
                target(
                    "sum by (reason) (" + inc("mailcanary_reports_errors_total", sel=RT) + ") > 0",
                    "unreadable {{reason}}",
                    "C",
                ),
            ],
            description="Reports per day: counted by kind, skipped (duplicate, too old...) and unreadable "
            "by reason.",
            size=(12, 8),
        ),
    )
    return dashboard(
        "mailcanary-reports",
        "mailcanary / What others see",
        "The domain as other mail servers see it: TLS-RPT (RFC 8460) and DMARC aggregate (RFC 7489) reports "
        "read from the rua mailbox (reports).",
        [
            variable_query(
                "probe", "Reports entry", "label_values(mailcanary_reports_success{" + S + "}, probe)"
            ),
            variable_query(
                "domain",
                "Domain",
                "label_values(mailcanary_tlsrpt_sessions_total{" + S + ', probe=~"$probe"}, domain)',
            ),
        ],
        b,
    )
