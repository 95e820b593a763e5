"""Metric families of the reports kind (``mailcanary_reports_*``, ``mailcanary_tlsrpt_*``,
``mailcanary_dmarc_*``), rendered from the state a run left (its counters' totals, kept across restarts).

Every label value comes from a bounded set: kinds, reasons, policy types, result types, dispositions and
pass/fail are fixed words; ``domain`` is one of the entry's domains or ``other``; ``org`` one of the first
``max_orgs`` organisations seen per kind or ``other``; ``mx`` one of ``mx_hosts`` or ``other``; ``source``
one of the configured senders or ``unknown``. An address never becomes a label (docs/metrics.md has the
cardinality of a realistic month).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import Metric

from exporter.metrics.family import FamilySpec, Samples, counter, gauge, render, value
from exporter.metrics.run import run_families
from exporter.run.results import ProbeStats
from probes import reports as lib  # a lazy face: a report module loads when a family has rows

if TYPE_CHECKING:
    from probes.reports import ReportsResult

REPORTS_OUTCOMES: tuple[str, ...] = (
    "success",
    "receive_connect",
    "receive_tls",
    "receive_auth",
    "receive_protocol",
    "queue_timeout",
    "timeout",
    "config",
    "internal",
)


def _rows(c: Counter[tuple[str, ...]]) -> Samples:
    return [(k, v) for k, v in sorted(c.items())]


def _fixed(c: Counter[tuple[str, ...]], first: Sequence[str], second: Sequence[str]) -> Samples:
    return [((a, b), c.get((a, b), 0)) for a in first for b in second]


def _last(kind: str, at: int) -> Callable[[ReportsResult], Samples]:
    return lambda r: [((org,), v[at]) for (k, org), v in sorted(r.state.last.items()) if k == kind]


REPORTS_SPECS: list[FamilySpec[ReportsResult]] = [
    counter(
        "mailcanary_reports_ingested",
        "Reports counted, by kind (tlsrpt, dmarc); each report once across restarts (kind + org + id).",
        lambda r: [((k,), r.state.ingested.get((k,), 0)) for k in lib.KINDS],
        "kind",
    ),
    counter(
        "mailcanary_reports_skipped",
        "Reports or mails not counted, by kind (tlsrpt, dmarc, unknown) and reason (duplicate, "
        "changed_duplicate, too_old, kind_disabled, not_a_report).",
        lambda r: _fixed(r.state.skipped, lib.ERROR_KINDS, lib.SKIP_REASONS),
        "kind",
        "reason",
    ),
    counter(
        "mailcanary_reports_errors",
        "Reports or mails that could not be read, by kind (tlsrpt, dmarc, unknown) and reason (see "
        "docs/metrics.md); each is logged in one line (report_error) and skipped.",
        lambda r: _fixed(r.state.errors, lib.ERROR_KINDS, lib.ERROR_REASONS),
        "kind",
        "reason",
    ),
    gauge(
        "mailcanary_reports_backlog",
        "Mails left for the next run by max_messages at the last run.",
        lambda r: value(r.backlog),
    ),
    gauge(
        "mailcanary_reports_unknown_sources",
        "Distinct DMARC source addresses no configured sender covers, in the age window (the top ones "
        "are logged and on the status page, never labels).",
        lambda r: value(len(r.state.unknown)),
    ),
    gauge(
        "mailcanary_dmarc_unknown_sender_threshold",
        "The entry's unknown_threshold: MailcanaryDMARCUnknownSenders fires when more messages than this "
        "from unknown sources claim our domains in a day.",
        lambda r: value(r.unknown_threshold),
    ),
    counter(
        "mailcanary_tlsrpt_sessions",
        "TLS sessions to our MX as senders report them (summary totals), by policy domain, policy type "
        "(sts, tlsa, no-policy-found), reporting org and result (successful, failed).",
        lambda r: _rows(r.state.tls_sessions),
        "domain",
        "policy_type",
        "org",
        "result",
    ),
    counter(
        "mailcanary_tlsrpt_failures",
        "Failed TLS sessions by result type (RFC 8460 §4.3; unknown types as other), from the failure "
        "details; every type is present from the first report of a (domain, policy type, org).",
        lambda r: _rows(r.state.tls_failures),
        "domain",
        "policy_type",
        "org",
        "result_type",
    ),
    counter(
        "mailcanary_tlsrpt_mx_failures",
        "Failed TLS sessions by receiving MX: one of mx_hosts, or other (names not listed are logged).",
        lambda r: _rows(r.state.tls_mx),
        "domain",
        "mx",
    ),
    counter(
        "mailcanary_tlsrpt_summary_mismatches",
        "Policies whose total-failure-session-count differs from the sum of their failure details (the "
        "summary is what tlsrpt_sessions counts; each is logged).",
        lambda r: _rows(r.state.tls_mismatches),
        "org",
    ),
    gauge(
        "mailcanary_tlsrpt_last_report_timestamp_seconds",
        "When the last TLS-RPT report of this org was counted.",
        _last("tlsrpt", 0),
        "org",
    ),
    gauge(
        "mailcanary_tlsrpt_report_start_timestamp_seconds",
        "Start of the date range of the org's latest TLS-RPT report.",
        _last("tlsrpt", 1),
        "org",
    ),
    gauge(
        "mailcanary_tlsrpt_report_end_timestamp_seconds",
        "End of the date range of the org's latest TLS-RPT report.",
        _last("tlsrpt", 2),
        "org",
    ),
    counter(
        "mailcanary_dmarc_messages",
        "Messages claiming our domains as DMARC reporters saw them, by header-from domain, reporting org, "
        "disposition (none, quarantine, reject, other), DMARC-aligned DKIM and SPF results (pass, fail) "
        "and source (a configured sender's name, or unknown).",
        lambda r: _rows(r.state.dmarc_messages),
        "domain",
        "org",
        "disposition",
        "dkim",
        "spf",
        "source",
    ),
    gauge(
        "mailcanary_dmarc_policy_info",
        "The DMARC policy our domain published, as the latest report saw it (p and sp: none, quarantine, "
        "reject or other).",
        lambda r: [((d, v[0], v[1]), 1) for d, v in sorted(r.state.policy.items())],
        "domain",
        "p",
        "sp",
    ),
    gauge(
        "mailcanary_dmarc_policy_pct",
        "The pct= of the published DMARC policy, as the latest report saw it.",
        lambda r: [((d,), v[2]) for d, v in sorted(r.state.policy.items())],
        "domain",
    ),
    gauge(
        "mailcanary_dmarc_last_report_timestamp_seconds",
        "When the last DMARC aggregate report of this org was counted.",
        _last("dmarc", 0),
        "org",
    ),
    gauge(
        "mailcanary_dmarc_report_start_timestamp_seconds",
        "Start of the date range of the org's latest DMARC report.",
        _last("dmarc", 1),
        "org",
    ),
    gauge(
        "mailcanary_dmarc_report_end_timestamp_seconds",
        "End of the date range of the org's latest DMARC report.",
        _last("dmarc", 2),
        "org",
    ),
]


def reports_families(
    snap: dict[str, ProbeStats], names: list[str], last: Callable[[str], ReportsResult | None]
) -> list[Metric]:
    """Run families, then the report families of each entry's latest state (``last``: the detail of
    its last run that read the state, kept by the kind so a failed run does not hide the counters)."""
    families = run_families(
        snap,
        names,
        "reports",
        "reports run",
        "1 if the last run read the report mailbox, else 0 (bad reports do not fail a run: see "
        "mailcanary_reports_errors_total).",
        "Runs over the report mailbox by outcome (success or a failure reason).",
        REPORTS_OUTCOMES,
    )
    rows = [([name], found) for name in names if (found := last(name)) is not None]
    return [*families, *render(REPORTS_SPECS, rows, ["probe"])]
