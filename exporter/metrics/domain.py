"""Metric families of the domain checks and of certificate hygiene (pure: facts in, families out).

Series of one domain check are per (probe, domain), per (probe, domain, mx) and per
(probe, domain, mx, address); their number is bounded by the entry's ``max_mx`` x ``max_addresses`` (and
the DNSBL zones and must-refuse checks configured). Free text (a DNSBL TXT reason, an error line) never
becomes a label: only fixed words from ``probes`` (statuses, check names, versions, key types).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.metrics.run import run_families
from exporter.run.results import DOMAIN_OUTCOMES, ProbeStats
from probes.domain.mtasts import mx_covered
from probes.domain.mx import resolution_dnssec
from probes.domain.probe import DomainReport
from probes.tls.hygiene import CRL_STATUSES, OCSP_STATUSES, CRLResult, KeyFacts, OCSPResult

HygieneRow = tuple[Sequence[str], KeyFacts, OCSPResult | None, CRLResult | None]


def _b(value: bool) -> int:
    return 1 if value else 0


def hygiene_families(rows: Iterable[HygieneRow], labels: Sequence[str], prefix: str) -> list[Metric]:
    """``<prefix>cert_*`` key/signature/validity/SCT/OCSP facts of each presented leaf certificate."""
    names = list(labels)

    def g(name: str, doc: str, *extra: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{prefix}cert_{name}", doc, labels=[*names, *extra])

    bits = g("key_bits", "Size of the leaf certificate's public key in bits, by key type.", "key_type")
    weak_key = g("weak_key", "1 if the leaf key is weak (RSA/DSA below 2048 bits, EC below 256).")
    sig = g("signature_info", "Hash of the leaf certificate's signature (none for EdDSA).", "hash")
    weak_sig = g("weak_signature", "1 if the leaf certificate is signed with SHA-1 or MD5.")
    validity = g("validity_seconds", "Validity period of the leaf certificate (notAfter - notBefore).")
    scts = g("scts", "Embedded Certificate Transparency SCTs in the leaf certificate.")
    ocsp = g(
        "ocsp_status",
        "1 for the current OCSP answer of the leaf's AIA responder (good, revoked, unknown, unreachable, "
        "invalid, no_responder), 0 for the others; absent when OCSP is not asked.",
        "status",
    )
    crl = g(
        "crl_status",
        "1 for the leaf's status on the CRL it names (good, revoked, unreachable, invalid, no_crl), 0 for "
        "the others; absent unless check_crl.",
        "status",
    )
    for values, facts, answer, listed in rows:
        lv = list(values)
        bits.add_metric([*lv, facts.key_type], facts.key_bits)
        weak_key.add_metric(lv, _b(facts.weak_key))
        sig.add_metric([*lv, facts.signature_hash or "none"], 1)
        weak_sig.add_metric(lv, _b(facts.weak_signature))
        validity.add_metric(lv, facts.validity_days * 86400)
        scts.add_metric(lv, facts.sct_count)
        if answer is not None:
            for status in OCSP_STATUSES:
                ocsp.add_metric([*lv, status], _b(answer.status == status))
        if listed is not None:
            for status in CRL_STATUSES:
                crl.add_metric([*lv, status], _b(listed.status == status))
    return [bits, weak_key, sig, weak_sig, validity, scts, ocsp, crl]


def domain_families(snap: dict[str, ProbeStats], names: list[str]) -> list[Metric]:
    """Per domain check: last success, duration, finish time, runs by outcome, then the domain's facts
    from its last completed report (gone while the check cannot be made: mailcanary_domain_findings
    absent is what MailcanaryDomainCheckFailing looks for)."""
    families = run_families(
        snap,
        names,
        "domain_check",
        "domain check",
        "1 if the last domain check completed without findings, else 0.",
        "Completed domain checks by outcome (success, domain_findings or a failure reason).",
        DOMAIN_OUTCOMES,
    )
    reports = [
        (name, detail)
        for name in names
        if (last := snap[name].last) is not None and isinstance(detail := last.detail, DomainReport)
    ]
    return [*families, *domain_fact_families(reports)]


def domain_fact_families(rows: Iterable[tuple[str, DomainReport]]) -> list[Metric]:
    """Every ``mailcanary_domain_*`` fact family for ``rows`` of (probe name, last report)."""
    dl = ["probe", "domain"]
    ml = [*dl, "mx"]
    al = [*ml, "address"]

    def g(name: str, doc: str, labels: list[str], *extra: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"mailcanary_domain_{name}", doc, labels=[*labels, *extra])

    findings = g("findings", "Findings of the last completed check (0: the domain passes).", dl)
    null_mx = g("null_mx", "1 if the domain publishes a null MX (accepts no mail, RFC 7505).", dl)
    implicit = g("mx_implicit", "1 if the domain has no MX and its A/AAAA is the mail host (RFC 5321).", dl)
    dnssec = g(
        "mx_dnssec_valid",
        "1 if the MX answer and every MX host's addresses validated (AD bit of the resolver), else 0.",
        dl,
    )
    hosts = g("mx_hosts", "MX hosts checked (after max_mx).", dl)
    skipped = g("mx_not_checked", "MX hosts or addresses left out by max_mx / max_addresses.", dl, "kind")
    sts_record = g("mta_sts_record_valid", "1 if exactly one valid v=STSv1 TXT is at _mta-sts.", dl)
    sts_policy = g(
        "mta_sts_policy_valid",
        "1 if the MTA-STS policy was fetched as RFC 8461 asks (verified HTTPS, no redirect, text/plain, "
        "64 KB at most) and parses; absent without a valid record.",
        dl,
    )
    sts_error = g("mta_sts_policy_error_info", "Why the policy fetch failed (fixed words).", dl, "error")
    sts_mode = g("mta_sts_mode_info", "The policy's mode: enforce, testing or none.", dl, "mode")
    sts_age = g("mta_sts_max_age_seconds", "The policy's max_age.", dl)
    covered = g("mta_sts_mx_covered", "1 if the policy's mx patterns cover this MX host.", ml)
    tlsrpt = g(
        "tlsrpt_valid", "1 if exactly one valid v=TLSRPTv1 TXT with a usable rua is at _smtp._tls.", dl
    )
    up = g("mx_up", "1 if the address answered the SMTP dialogue up to STARTTLS, else 0.", al)
    starttls = g("mx_starttls_offered", "1 if the MX offers STARTTLS.", al)
    handshake = g("mx_tls_handshake_ok", "1 if a TLS handshake completed (verified or not).", al)
    verified = g("mx_cert_verified", "1 if the chain verified and matched the MX name.", al)
    verify_error = g(
        "mx_cert_verify_error_info", "Why verification failed (present only then).", al, "reason"
    )
    name_match = g("mx_hostname_match", "1 if the leaf certificate names the MX host.", al)
    version = g("mx_tls_version_info", "Negotiated TLS version.", al, "version")
    legacy = g(
        "mx_legacy_protocol_accepted",
        "1 if the MX completed a handshake pinned to this legacy version; absent if untestable here.",
        al,
        "version",
    )
    auth_clear = g("mx_auth_before_tls", "1 if the MX offers AUTH before STARTTLS.", al)
    expiry = g("mx_cert_earliest_expiry_timestamp_seconds", "Earliest notAfter in the presented chain.", al)
    stage = g("mx_stage_seconds", "Duration of each stage of the MX audit.", al, "stage")
    plain_from = g(
        "mx_mail_from_before_tls_code",
        "Reply code to MAIL FROM on the plain session (asked when must_refuse.mail_from_before_tls).",
        al,
    )
    dane_present = g("dane_present", "1 if TLSA records exist at _25._tcp.<mx>.", al)
    dane_dnssec = g("dane_dnssec_valid", "1 if the TLSA answer validated (DANE counts only then).", al)
    dane_match = g(
        "dane_match", "1 if a usable TLSA record matches the presented chain; absent without TLSA.", al
    )
    dane_roll = g(
        "dane_rollover_ready", "1 if another usable TLSA record is published beside the matching one.", al
    )
    listed = g(
        "dnsbl_listed",
        "1 if the MX address is listed in the zone, 0 if not; absent when the zone gave no usable answer.",
        al,
        "zone",
    )
    bl_status = g(
        "dnsbl_status",
        "1 with the zone's answer: listed, not_listed, refused (127.255.255.x) or error (only that one).",
        al,
        "zone",
        "status",
    )
    refuse_ok = g(
        "must_refuse_success",
        "1 if the MX refused as it must (open_relay, auth_before_tls, own_domain_sender), else 0.",
        al,
        "check",
    )
    refuse_code = g("must_refuse_code", "The reply code that decided the must-refuse check.", al, "check")
    refuse_skipped = g(
        "must_refuse_skipped",
        "1 for a must-refuse check (or mail_from_before_tls) asked but not judged in the last run, by "
        "reason: no_answer (the address did not answer: no more sessions to it that run) or no_result "
        "(the session failed before the deciding answer). Neither a pass nor a failure.",
        al,
        "check",
        "reason",
    )
    hygiene_rows: list[HygieneRow] = []
    for probe, report in rows:
        d = [probe, report.domain]
        findings.add_metric(d, len(report.problems))
        res = report.resolution
        if res is None:
            continue
        null_mx.add_metric(d, _b(res.null_mx))
        implicit.add_metric(d, _b(res.implicit))
        dnssec.add_metric(d, _b(resolution_dnssec(res) == "secure"))
        hosts.add_metric(d, len(res.hosts))
        skipped.add_metric([*d, "hosts"], res.dropped_hosts)
        skipped.add_metric([*d, "addresses"], res.dropped_addresses)
        if report.sts_record is not None:
            sts_record.add_metric(d, _b(report.sts_record.valid))
        fetch = report.sts_policy
        if fetch is not None:
            policy = fetch.policy
            ok = fetch.error is None and policy is not None and policy.valid
            sts_policy.add_metric(d, _b(ok))
            if fetch.error is not None:
                sts_error.add_metric([*d, fetch.error], 1)
            if ok and policy is not None:
                sts_mode.add_metric([*d, policy.mode or "none"], 1)
                if policy.max_age is not None:
                    sts_age.add_metric(d, policy.max_age)
                for h in res.hosts:
                    covered.add_metric([*d, h.name], _b(mx_covered(h.name, policy.mx)))
        if report.tlsrpt is not None:
            tlsrpt.add_metric(d, _b(report.tlsrpt.valid))
        for a in report.addresses:
            r = a.report
            lv = [*d, r.mx, r.address]
            tls = r.tls
            up.add_metric(lv, _b(tls is not None))
            for name, secs in sorted(r.phases.items()):
                stage.add_metric([*lv, name], secs)
            if r.plain_mail_from_code is not None:
                plain_from.add_metric(lv, r.plain_mail_from_code)
            if tls is not None:
                if tls.starttls_offered is not None:
                    starttls.add_metric(lv, _b(tls.starttls_offered))
                handshake.add_metric(lv, _b(tls.handshake_ok))
                if tls.handshake_ok or tls.chain:
                    verified.add_metric(lv, _b(tls.verified))
                    if not tls.verified and tls.verify_reason:
                        verify_error.add_metric([*lv, tls.verify_reason], 1)
                if tls.hostname_match is not None:
                    name_match.add_metric(lv, _b(tls.hostname_match))
                if tls.version:
                    version.add_metric([*lv, tls.version], 1)
                for vname, accepted in tls.legacy.items():
                    if accepted is not None:
                        legacy.add_metric([*lv, vname], _b(accepted))
                if tls.auth_before_tls is not None:
                    auth_clear.add_metric(lv, _b(tls.auth_before_tls))
                if tls.earliest_not_after is not None:
                    expiry.add_metric(lv, tls.earliest_not_after)
            if a.dane is not None:
                dane_present.add_metric(lv, _b(a.dane.present))
                if a.dane.present:
                    dane_dnssec.add_metric(lv, _b(a.dane.dnssec == "secure"))
                    dane_match.add_metric(lv, _b(a.dane.matched))
                    dane_roll.add_metric(lv, _b(a.dane.rollover_ready))
            for li in a.listings:
                if li.status in ("listed", "not_listed"):
                    listed.add_metric([*lv, li.zone], _b(li.status == "listed"))
                bl_status.add_metric([*lv, li.zone, li.status], 1)  # the current one only: 16 zones x 64
            for f in a.refusals:
                refuse_ok.add_metric([*lv, f.check], _b(f.success))
                if f.code is not None:
                    refuse_code.add_metric([*lv, f.check], f.code)
            for check_name, why in a.skipped.items():
                refuse_skipped.add_metric([*lv, check_name, why], 1)
            if a.leaf is not None:
                hygiene_rows.append((lv, a.leaf, a.ocsp, a.crl))
    return [
        findings,
        null_mx,
        implicit,
        dnssec,
        hosts,
        skipped,
        sts_record,
        sts_policy,
        sts_error,
        sts_mode,
        sts_age,
        covered,
        tlsrpt,
        up,
        starttls,
        handshake,
        verified,
        verify_error,
        name_match,
        version,
        legacy,
        auth_clear,
        expiry,
        stage,
        plain_from,
        dane_present,
        dane_dnssec,
        dane_match,
        dane_roll,
        listed,
        bl_status,
        refuse_ok,
        refuse_code,
        refuse_skipped,
        *hygiene_families(hygiene_rows, al, "mailcanary_domain_mx_"),
    ]
