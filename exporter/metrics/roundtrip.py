"""The round trip's metric families (``mailcanary_roundtrip_*`` and friends), declared as data
(:mod:`exporter.metrics.family`) and rendered from a snapshot of stored outcomes; the collector
(:mod:`exporter.metrics.collector`) calls them through the kinds table."""

from __future__ import annotations

from prometheus_client.core import Metric

from exporter.metrics.family import (
    NONE,
    HistogramSpec,
    Sample,
    Samples,
    Spec,
    counter,
    counts,
    each,
    flag,
    gauge,
    one_of,
    render,
    value,
)
from exporter.metrics.run import QUEUE_HELP, last_duration, last_finish, last_queue, last_success
from exporter.run.results import DELIVERY_BUCKETS, OUTCOMES, ProbeStats
from probes.domain.dnsbl import STATUSES as DNSBL_STATUSES
from probes.receipt.placement import PLACEMENTS
from probes.receipt.quota import QUOTA_ERRORS
from probes.roundtrip import SYNC_SKIP_REASONS

MAX_HOP_LABELS = 8  # hop label values "1".."8": the path's first hops; the count is exact beyond


def _le(bound: float) -> str:
    return f"{bound:g}" if bound != int(bound) else f"{bound:.1f}"


def _delivery(st: ProbeStats) -> tuple[list[tuple[str, float]], float]:
    buckets: list[tuple[str, float]] = [
        (_le(b), c) for b, c in zip(DELIVERY_BUCKETS, st.bucket_counts, strict=True)
    ]
    buckets.append(("+Inf", st.delivery_count))
    return buckets, st.delivery_sum


def _phases(st: ProbeStats) -> Samples:
    return NONE if st.last is None else each(sorted(st.last.phases.items()))


def _hop_delays(st: ProbeStats) -> list[Sample]:
    path = st.last_path
    if path is None:
        return []
    delays = enumerate(path.delays()[: MAX_HOP_LABELS - 1], start=2)
    return [((str(i),), d) for i, d in delays if d is not None]


def _hop_tls(st: ProbeStats) -> list[Sample]:
    path = st.last_path
    hops = [] if path is None else path.hops[:MAX_HOP_LABELS]
    return [((str(hop.index),), 1 if hop.tls else 0) for hop in hops]


def _sender_listed(st: ProbeStats) -> list[Sample]:
    return [
        ((li.zone,), 1 if li.status == "listed" else 0)
        for li in st.last_sender_dnsbl
        if li.status in ("listed", "not_listed")
    ]


def _sender_status(st: ProbeStats) -> list[Sample]:
    return [
        ((li.zone, status), 1 if li.status == status else 0)
        for li in st.last_sender_dnsbl
        for status in DNSBL_STATUSES
    ]


# Per round trip: the families documented in docs/metrics.md, in exposition order. Series with a fixed
# set of label values (outcomes, folders, skip reasons, quota errors) are all present from the start, so
# rate() sees the first one; bounce classes only as seen (RFC 3463 has 16: 4|5 x 8).
SPECS: list[Spec[ProbeStats]] = [
    gauge(
        "mailcanary_roundtrip_success",
        "1 if the last completed round trip delivered and verified the canary, else 0.",
        last_success,
    ),
    HistogramSpec(
        "mailcanary_roundtrip_delivery_seconds",
        "Delivery latency of successful round trips: first seen by the receiver minus DATA accepted.",
        _delivery,
    ),
    gauge(
        "mailcanary_roundtrip_last_delivery_seconds",
        "Delivery latency of the last successful round trip: first seen minus DATA accepted.",
        lambda st: value(st.last_delivery),
    ),
    gauge(
        "mailcanary_roundtrip_phase_seconds",
        "Duration of each protocol phase in the last run.",
        _phases,
        "phase",
    ),
    gauge(
        "mailcanary_roundtrip_duration_seconds",
        "Wall time of the last run, all phases included.",
        last_duration,
    ),
    gauge("mailcanary_roundtrip_queue_seconds", QUEUE_HELP.format(what="run"), last_queue),
    gauge("mailcanary_roundtrip_last_run_timestamp_seconds", "When the last run finished.", last_finish),
    gauge(
        "mailcanary_roundtrip_last_success_timestamp_seconds",
        "When the last successful run finished.",
        lambda st: value(st.last_success),
    ),
    counter(
        "mailcanary_roundtrip_runs",
        "Completed runs by outcome: success or the failure reason.",
        lambda st: counts(st.runs, OUTCOMES),
        "outcome",
    ),
    counter(
        "mailcanary_roundtrip_late",
        "Canaries that arrived after their run had timed out (seen and deleted by a later run).",
        lambda st: value(st.late_total),
    ),
    counter(
        "mailcanary_roundtrip_swept",
        "Stale canaries of this probe deleted that were not known to be late (sent before a restart).",
        lambda st: value(st.swept_total),
    ),
    counter(
        "mailcanary_roundtrip_lost",
        "Canaries that timed out and were still unseen lost_after their sending: given up on.",
        lambda st: value(st.lost_total),
    ),
    gauge(
        "mailcanary_roundtrip_canaries_outstanding",
        "Canaries that timed out and are still awaited (would count as late if they turn up).",
        lambda st: NONE if st.last is None else value(st.last.outstanding),
    ),
    gauge(
        "mailcanary_roundtrip_placement",
        "Where the last delivered canary was found: 1 for that folder (inbox, junk, other), 0 else.",
        lambda st: one_of(st.last_placement, PLACEMENTS),
        "folder",
    ),
    counter(
        "mailcanary_roundtrip_placements",
        "Delivered canaries by the folder they were found in (inbox, junk, other).",
        lambda st: counts(st.placements, PLACEMENTS),
        "folder",
    ),
    counter(
        "mailcanary_roundtrip_bounces",
        "Verified bounces (DSNs) about this probe's canaries, by status class (5.1.x, 4.4.x, unknown).",
        lambda st: each(sorted(st.bounces.items())),
        "class",
    ),
    gauge(
        "mailcanary_roundtrip_hops",
        "Received fields of the last delivered canary: the servers it passed (at most 30 read).",
        lambda st: NONE if st.last_path is None else value(st.last_path.count),
    ),
    gauge(
        "mailcanary_roundtrip_path_seconds",
        "Last minus first Received time stamp of the last delivered canary (1 s resolution, skew shown).",
        lambda st: NONE if st.last_path is None else value(st.last_path.total),
    ),
    gauge(
        "mailcanary_roundtrip_hop_delay_seconds",
        "Per hop (2.. from the sender): its Received stamp minus the previous one's; negative = clock skew.",
        _hop_delays,
        "hop",
    ),
    gauge(
        "mailcanary_roundtrip_hop_tls",
        "Per hop (1.. from the sender): 1 if its Received field says the message came in over TLS.",
        _hop_tls,
        "hop",
    ),
    gauge(
        "mailcanary_roundtrip_clock_offset_seconds",
        "First Received stamp minus this host's send time: beyond about +-1 s, the clocks disagree.",
        lambda st: value(st.last_clock_offset),
    ),
    gauge(
        "mailcanary_roundtrip_auth_result",
        "1 for the result (pass, fail, ..., missing) trusted authserv-ids gave the last delivered canary.",
        lambda st: (
            NONE if st.last_verdict is None else [(mr, 1) for mr in sorted(st.last_verdict.auth.items())]
        ),
        "method",
        "result",
    ),
    gauge(
        "mailcanary_roundtrip_spam_score",
        "Spam score the receiving side gave the last delivered canary (spamassassin, rspamd, microsoft).",
        lambda st: NONE if st.last_verdict is None else each(sorted(st.last_verdict.scores.items())),
        "engine",
    ),
    gauge(
        "mailcanary_roundtrip_sender_dnsbl_listed",
        "1 if the sending IP the receiver saw is listed in the zone, 0 if not; absent on no usable answer.",
        _sender_listed,
        "zone",
    ),
    gauge(
        "mailcanary_roundtrip_sender_dnsbl_status",
        "1 with the zone's answer for the sending IP: listed, not_listed, refused (127.255.255.x) or error.",
        _sender_status,
        "zone",
        "status",
    ),
    gauge(
        "mailcanary_scheduler_lag_seconds",
        "How late the scheduler started the last run compared with its planned time.",
        lambda st: value(st.scheduler_lag),
    ),
    counter(
        "mailcanary_scheduler_skipped_runs",
        "Runs not started because the previous run of the same probe was still going.",
        lambda st: value(st.skipped_runs),
    ),
    gauge(
        "mailcanary_roundtrip_sync_seconds",
        "Sync check, last successful run: from the first IMAP session setting the flag on the canary "
        "until the second session (the other device) saw it.",
        lambda st: value(st.last_sync),
    ),
    gauge(
        "mailcanary_roundtrip_sync_arrival_seconds",
        "Sync check, last successful run: delivery latency as the second IMAP session saw it (first "
        "seen there minus DATA accepted).",
        lambda st: value(st.last_sync_arrival),
    ),
    gauge(
        "mailcanary_roundtrip_sync_skipped",
        "Sync check, last delivered run: 1 for why it did not run (the canary was found in junk or another "
        "folder, not the inbox the second session watches), 0 else; all 0 when it ran.",
        lambda st: one_of(st.sync_skipped, SYNC_SKIP_REASONS),
        "reason",
    ),
    gauge(
        "mailcanary_roundtrip_junk_folder_found",
        "Placement on: 1 if the last run found a junk folder to watch (SPECIAL-USE \\Junk or a configured "
        "name), 0 if the mailbox has none (canaries filed as spam then time out).",
        lambda st: flag(st.junk_found),
    ),
    gauge(
        "mailcanary_mailbox_quota_used",
        "Quota usage of the canary mailbox at the last reading (RFC 9208): bytes for resource storage, "
        "a count for message.",
        lambda st: [((res,), used) for res, (used, _) in sorted(st.quota.items())],
        "resource",
    ),
    gauge(
        "mailcanary_mailbox_quota_limit",
        "Quota limit of the canary mailbox at the last reading: bytes for storage, a count for message.",
        lambda st: [((res,), limit) for res, (_, limit) in sorted(st.quota.items())],
        "resource",
    ),
    counter(
        "mailcanary_mailbox_quota_read_errors",
        "Quota reads that failed (the round trip went on): refused (NO/BAD), protocol, timeout.",
        lambda st: NONE if st.quota_errors is None else counts(st.quota_errors, QUOTA_ERRORS),
        "reason",
    ),
    gauge(
        "mailcanary_receive_login_delay_seconds",
        "POP3: the LOGIN-DELAY the receiving server announced (RFC 2449), as last learnt; 0: none.",
        lambda st: value(st.login_delay),
    ),
]


def roundtrip_families(snap: dict[str, ProbeStats], names: list[str]) -> list[Metric]:
    """Per round trip: the families of :data:`SPECS`, in exposition order."""
    return render(SPECS, (([name], snap[name]) for name in names), ["probe"])
