"""The round trip's metric families (``mailcanary_roundtrip_*`` and friends), rendered from a snapshot
of stored outcomes; the collector (:mod:`exporter.metrics.collector`) calls them through the kinds table."""

from __future__ import annotations

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from exporter.run.results import DELIVERY_BUCKETS, OUTCOMES, ProbeStats
from probes.domain.dnsbl import STATUSES as DNSBL_STATUSES
from probes.receipt.placement import PLACEMENTS
from probes.receipt.quota import QUOTA_ERRORS
from probes.roundtrip.probe import SYNC_SKIP_REASONS

MAX_HOP_LABELS = 8  # hop label values "1".."8": the path's first hops; the count is exact beyond


def roundtrip_families(snap: dict[str, ProbeStats], names: list[str]) -> list[Metric]:
    """Per round trip: the 29 families documented in docs/metrics.md, in exposition order."""

    def gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=["probe", *labels])

    def counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=["probe", *labels])

    success = gauge(
        "mailcanary_roundtrip_success",
        "1 if the last completed round trip delivered and verified the canary, else 0.",
    )
    last_delivery = gauge(
        "mailcanary_roundtrip_last_delivery_seconds",
        "Delivery latency of the last successful round trip: first seen minus DATA accepted.",
    )
    phase = gauge(
        "mailcanary_roundtrip_phase_seconds",
        "Duration of each protocol phase in the last run.",
        "phase",
    )
    duration = gauge(
        "mailcanary_roundtrip_duration_seconds",
        "Wall time of the last run, all phases included.",
    )
    last_run = gauge(
        "mailcanary_roundtrip_last_run_timestamp_seconds",
        "When the last run finished.",
    )
    last_ok = gauge(
        "mailcanary_roundtrip_last_success_timestamp_seconds",
        "When the last successful run finished.",
    )
    runs = counter(
        "mailcanary_roundtrip_runs",
        "Completed runs by outcome: success or the failure reason.",
        "outcome",
    )
    late = counter(
        "mailcanary_roundtrip_late",
        "Canaries that arrived after their run had timed out (seen and deleted by a later run).",
    )
    swept = counter(
        "mailcanary_roundtrip_swept",
        "Stale canaries of this probe deleted that were not known to be late (sent before a restart).",
    )
    lost = counter(
        "mailcanary_roundtrip_lost",
        "Canaries that timed out and were still unseen lost_after their sending: given up on.",
    )
    outstanding = gauge(
        "mailcanary_roundtrip_canaries_outstanding",
        "Canaries that timed out and are still awaited (would count as late if they turn up).",
    )
    placement = gauge(
        "mailcanary_roundtrip_placement",
        "Where the last delivered canary was found: 1 for that folder (inbox, junk, other), 0 else.",
        "folder",
    )
    placements = counter(
        "mailcanary_roundtrip_placements",
        "Delivered canaries by the folder they were found in (inbox, junk, other).",
        "folder",
    )
    bounces = counter(
        "mailcanary_roundtrip_bounces",
        "Verified bounces (DSNs) about this probe's canaries, by status class (5.1.x, 4.4.x, unknown).",
        "class",
    )
    hops = gauge(
        "mailcanary_roundtrip_hops",
        "Received fields of the last delivered canary: the servers it passed (at most 30 read).",
    )
    path_seconds = gauge(
        "mailcanary_roundtrip_path_seconds",
        "Last minus first Received time stamp of the last delivered canary (1 s resolution, skew shown).",
    )
    hop_delay = gauge(
        "mailcanary_roundtrip_hop_delay_seconds",
        "Per hop (2.. from the sender): its Received stamp minus the previous one's; negative = clock skew.",
        "hop",
    )
    hop_tls = gauge(
        "mailcanary_roundtrip_hop_tls",
        "Per hop (1.. from the sender): 1 if its Received field says the message came in over TLS.",
        "hop",
    )
    clock_offset = gauge(
        "mailcanary_roundtrip_clock_offset_seconds",
        "First Received stamp minus this host's send time: beyond about +-1 s, the clocks disagree.",
    )
    auth_result = gauge(
        "mailcanary_roundtrip_auth_result",
        "1 for the result (pass, fail, ..., missing) trusted authserv-ids gave the last delivered canary.",
        "method",
        "result",
    )
    sender_listed = gauge(
        "mailcanary_roundtrip_sender_dnsbl_listed",
        "1 if the sending IP the receiver saw is listed in the zone, 0 if not; absent on no usable answer.",
        "zone",
    )
    sender_status = gauge(
        "mailcanary_roundtrip_sender_dnsbl_status",
        "1 with the zone's answer for the sending IP: listed, not_listed, refused (127.255.255.x) or error.",
        "zone",
        "status",
    )
    spam_score = gauge(
        "mailcanary_roundtrip_spam_score",
        "Spam score the receiving side gave the last delivered canary (spamassassin, rspamd, microsoft).",
        "engine",
    )
    lag = gauge(
        "mailcanary_scheduler_lag_seconds",
        "How late the scheduler started the last run compared with its planned time.",
    )
    skipped = counter(
        "mailcanary_scheduler_skipped_runs",
        "Runs not started because the previous run of the same probe was still going.",
    )
    sync = gauge(
        "mailcanary_roundtrip_sync_seconds",
        "Sync check, last successful run: from the first IMAP session setting the flag on the canary "
        "until the second session (the other device) saw it.",
    )
    sync_arrival = gauge(
        "mailcanary_roundtrip_sync_arrival_seconds",
        "Sync check, last successful run: delivery latency as the second IMAP session saw it (first "
        "seen there minus DATA accepted).",
    )
    sync_skipped = gauge(
        "mailcanary_roundtrip_sync_skipped",
        "Sync check, last delivered run: 1 for why it did not run (the canary was found in junk or another "
        "folder, not the inbox the second session watches), 0 else; all 0 when it ran.",
        "reason",
    )
    junk_found = gauge(
        "mailcanary_roundtrip_junk_folder_found",
        "Placement on: 1 if the last run found a junk folder to watch (SPECIAL-USE \\Junk or a configured "
        "name), 0 if the mailbox has none (canaries filed as spam then time out).",
    )
    quota_used = gauge(
        "mailcanary_mailbox_quota_used",
        "Quota usage of the canary mailbox at the last reading (RFC 9208): bytes for resource storage, "
        "a count for message.",
        "resource",
    )
    quota_limit = gauge(
        "mailcanary_mailbox_quota_limit",
        "Quota limit of the canary mailbox at the last reading: bytes for storage, a count for message.",
        "resource",
    )
    quota_errors = counter(
        "mailcanary_mailbox_quota_read_errors",
        "Quota reads that failed (the round trip went on): refused (NO/BAD), protocol, timeout.",
        "reason",
    )
    login_delay = gauge(
        "mailcanary_receive_login_delay_seconds",
        "POP3: the LOGIN-DELAY the receiving server announced (RFC 2449), as last learnt; 0: none.",
    )
    hist = HistogramMetricFamily(
        "mailcanary_roundtrip_delivery_seconds",
        "Delivery latency of successful round trips: first seen by the receiver minus DATA accepted.",
        labels=["probe"],
    )
    for name in names:
        st = snap[name]
        if st.last is not None:
            r = st.last
            success.add_metric([name], 1 if r.success else 0)
            duration.add_metric([name], r.duration)
            last_run.add_metric([name], r.started + r.duration)
            for ph, secs in sorted(r.phases.items()):
                phase.add_metric([name, ph], secs)
        if st.last_delivery is not None:
            last_delivery.add_metric([name], st.last_delivery)
        if st.last_success is not None:
            last_ok.add_metric([name], st.last_success)
        for outcome in OUTCOMES:  # every outcome present from the start, so rate() sees the first failure
            runs.add_metric([name, outcome], st.runs.get(outcome, 0))
        late.add_metric([name], st.late_total)
        swept.add_metric([name], st.swept_total)
        lost.add_metric([name], st.lost_total)
        for folder in PLACEMENTS:  # fixed set: every series present from the first delivery
            if st.last_placement is not None:
                placement.add_metric([name, folder], 1 if folder == st.last_placement else 0)
            placements.add_metric([name, folder], st.placements.get(folder, 0))
        path = st.last_path
        if path is not None:
            hops.add_metric([name], path.count)
            if path.total is not None:
                path_seconds.add_metric([name], path.total)
            for hop in path.hops[:MAX_HOP_LABELS]:
                hop_tls.add_metric([name, str(hop.index)], 1 if hop.tls else 0)
            for i, delay in enumerate(path.delays()[: MAX_HOP_LABELS - 1], start=2):
                if delay is not None:
                    hop_delay.add_metric([name, str(i)], delay)
        if st.last_clock_offset is not None:
            clock_offset.add_metric([name], st.last_clock_offset)
        verdict = st.last_verdict
        if verdict is not None:
            for method, result in sorted(verdict.auth.items()):
                auth_result.add_metric([name, method, result], 1)
            for engine, score in sorted(verdict.scores.items()):
                spam_score.add_metric([name, engine], score)
        for li in st.last_sender_dnsbl:
            if li.status in ("listed", "not_listed"):
                sender_listed.add_metric([name, li.zone], 1 if li.status == "listed" else 0)
            for status in DNSBL_STATUSES:
                sender_status.add_metric([name, li.zone, status], 1 if li.status == status else 0)
        for cls, n in sorted(st.bounces.items()):  # only classes seen: RFC 3463 has 16 (4|5 x 8)
            bounces.add_metric([name, cls], n)
        if st.last is not None:
            outstanding.add_metric([name], st.last.outstanding)
        if st.scheduler_lag is not None:
            lag.add_metric([name], st.scheduler_lag)
        skipped.add_metric([name], st.skipped_runs)
        if st.last_sync is not None:
            sync.add_metric([name], st.last_sync)
        if st.last_sync_arrival is not None:
            sync_arrival.add_metric([name], st.last_sync_arrival)
        if st.sync_skipped is not None:
            for why in SYNC_SKIP_REASONS:
                sync_skipped.add_metric([name, why], 1 if why == st.sync_skipped else 0)
        if st.junk_found is not None:
            junk_found.add_metric([name], 1 if st.junk_found else 0)
        for resource, (used, limit) in sorted(st.quota.items()):
            quota_used.add_metric([name, resource], used)
            quota_limit.add_metric([name, resource], limit)
        if st.quota_errors is not None:  # from the first attempt on, so rate() sees the first failure
            for reason in QUOTA_ERRORS:
                quota_errors.add_metric([name, reason], st.quota_errors.get(reason, 0))
        if st.login_delay is not None:
            login_delay.add_metric([name], st.login_delay)
        buckets = [(_le(b), c) for b, c in zip(DELIVERY_BUCKETS, st.bucket_counts, strict=True)]
        buckets.append(("+Inf", st.delivery_count))
        hist.add_metric([name], buckets, sum_value=st.delivery_sum)
    return [
        success,
        hist,
        last_delivery,
        phase,
        duration,
        last_run,
        last_ok,
        runs,
        late,
        swept,
        lost,
        outstanding,
        placement,
        placements,
        bounces,
        hops,
        path_seconds,
        hop_delay,
        hop_tls,
        clock_offset,
        auth_result,
        spam_score,
        sender_listed,
        sender_status,
        lag,
        skipped,
        sync,
        sync_arrival,
        sync_skipped,
        junk_found,
        quota_used,
        quota_limit,
        quota_errors,
        login_delay,
    ]


def _le(bound: float) -> str:
    return f"{bound:g}" if bound != int(bound) else f"{bound:.1f}"
