"""Metric families of the domain checks and of certificate hygiene (pure: facts in, families out).

Series of one domain check are per (probe, domain), per (probe, domain, mx) and per
(probe, domain, mx, address); their number is bounded by the entry's ``max_mx`` x ``max_addresses`` (and
the DNSBL zones and must-refuse checks configured). Free text (a DNSBL TXT reason, an error line) never
becomes a label: only fixed words from ``probes`` (statuses, check names, versions, key types).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cache
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client.core import Metric

from exporter.metrics.family import NONE, FamilySpec, Samples, each, flag, gauge, info, render, value
from exporter.metrics.run import run_families
from exporter.metrics.tls import legacy_accepted, scan_specs, verified, verify_error
from exporter.run.results import DOMAIN_OUTCOMES, ProbeStats
from probes.tls.hygiene import CRL_STATUSES, OCSP_STATUSES, CRLResult, KeyFacts, OCSPResult

if TYPE_CHECKING:  # the domain checks' modules (dnspython) load with a domain check, not with these families
    from probes.domain.mtasts import Policy
    from probes.domain.mx import MXResolution
    from probes.domain.probe import DomainReport, MXAddressResult
    from probes.wire.certs import TLSFacts

HygieneRow = tuple[Sequence[str], KeyFacts, OCSPResult | None, CRLResult | None]


def _b(value: bool) -> int:
    return 1 if value else 0


class Leaf(NamedTuple):
    """What certificate hygiene knows of one presented leaf."""

    key: KeyFacts
    ocsp: OCSPResult | None
    crl: CRLResult | None


@cache
def hygiene_specs(prefix: str) -> tuple[FamilySpec[Leaf], ...]:
    """``<prefix>cert_*``: key, signature, validity, SCT, OCSP and CRL facts of a leaf."""

    def g(name: str, doc: str, samples: Callable[[Leaf], Samples], *extra: str) -> FamilySpec[Leaf]:
        return gauge(f"{prefix}cert_{name}", doc, samples, *extra)

    return (
        g(
            "key_bits",
            "Size of the leaf certificate's public key in bits, by key type.",
            lambda x: [((x.key.key_type,), x.key.key_bits)],
            "key_type",
        ),
        g(
            "weak_key",
            "1 if the leaf key is weak (RSA/DSA below 2048 bits, EC below 256).",
            lambda x: flag(x.key.weak_key),
        ),
        g(
            "signature_info",
            "Hash of the leaf certificate's signature (none for EdDSA).",
            lambda x: info(x.key.signature_hash or "none"),
            "hash",
        ),
        g(
            "weak_signature",
            "1 if the leaf certificate is signed with SHA-1 or MD5.",
            lambda x: flag(x.key.weak_signature),
        ),
        g(
            "validity_seconds",
            "Validity period of the leaf certificate (notAfter - notBefore).",
            lambda x: value(x.key.validity_days * 86400),
        ),
        g(
            "scts",
            "Embedded Certificate Transparency SCTs in the leaf certificate.",
            lambda x: value(x.key.sct_count),
        ),
        g(
            "ocsp_status",
            "1 for the current OCSP answer of the leaf's AIA responder (good, revoked, unknown, unreachable, "
            "invalid, no_responder), 0 for the others; absent when OCSP is not asked.",
            lambda x: NONE if x.ocsp is None else [((s,), _b(x.ocsp.status == s)) for s in OCSP_STATUSES],
            "status",
        ),
        g(
            "crl_status",
            "1 for the leaf's status on the CRL it names (good, revoked, unreachable, invalid, no_crl), "
            "0 for the others; absent unless check_crl.",
            lambda x: NONE if x.crl is None else [((s,), _b(x.crl.status == s)) for s in CRL_STATUSES],
            "status",
        ),
    )


def hygiene_families(rows: Iterable[HygieneRow], labels: Sequence[str], prefix: str) -> list[Metric]:
    """The :func:`hygiene_specs` families for ``rows`` of (label values, key facts, OCSP, CRL)."""
    return render(hygiene_specs(prefix), ((v, Leaf(k, o, c)) for v, k, o, c in rows), labels)


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
    if not names:  # (the headers, or no domain check configured)
        return [*families, *domain_fact_families([])]
    from probes.domain.probe import DomainReport

    reports = [
        (name, detail)
        for name in names
        if (last := snap[name].last) is not None and isinstance(detail := last.detail, DomainReport)
    ]
    return [*families, *domain_fact_families(reports)]


class Resolved(NamedTuple):
    """A domain's last report whose MX resolution succeeded (the facts below need it)."""

    report: DomainReport
    res: MXResolution


def _policy(d: Resolved) -> Policy | None:
    """The MTA-STS policy when it was fetched as the RFC asks and is valid."""
    fetch = d.report.sts_policy
    if fetch is None or fetch.error is not None or fetch.policy is None or not fetch.policy.valid:
        return None
    return fetch.policy


def _policy_valid(d: Resolved) -> Samples:
    fetch = d.report.sts_policy
    return NONE if fetch is None else flag(_policy(d) is not None)


def _policy_error(d: Resolved) -> Samples:
    fetch = d.report.sts_policy
    return NONE if fetch is None or fetch.error is None else (((fetch.error,), 1),)


def _covered(d: Resolved) -> Samples:
    from probes.domain.mtasts import mx_covered

    policy = _policy(d)
    return NONE if policy is None else [((h.name,), _b(mx_covered(h.name, policy.mx))) for h in d.res.hosts]


def _dnssec(res: MXResolution) -> str:
    from probes.domain.mx import resolution_dnssec

    return resolution_dnssec(res)


FINDINGS: FamilySpec[DomainReport] = gauge(
    "mailcanary_domain_findings",
    "Findings of the last completed check (0: the domain passes).",
    lambda r: value(len(r.problems)),
)

# Per (probe, domain), from a report with an MX resolution.
DOMAIN_SPECS: list[FamilySpec[Resolved]] = [
    gauge(
        "mailcanary_domain_null_mx",
        "1 if the domain publishes a null MX (accepts no mail, RFC 7505).",
        lambda d: flag(d.res.null_mx),
    ),
    gauge(
        "mailcanary_domain_mx_implicit",
        "1 if the domain has no MX and its A/AAAA is the mail host (RFC 5321).",
        lambda d: flag(d.res.implicit),
    ),
    gauge(
        "mailcanary_domain_mx_dnssec_valid",
        "1 if the MX answer and every MX host's addresses validated (AD bit of the resolver), else 0.",
        lambda d: flag(_dnssec(d.res) == "secure"),
    ),
    gauge(
        "mailcanary_domain_mx_hosts", "MX hosts checked (after max_mx).", lambda d: value(len(d.res.hosts))
    ),
    gauge(
        "mailcanary_domain_mx_not_checked",
        "MX hosts or addresses left out by max_mx / max_addresses.",
        lambda d: [(("hosts",), d.res.dropped_hosts), (("addresses",), d.res.dropped_addresses)],
        "kind",
    ),
    gauge(
        "mailcanary_domain_mta_sts_record_valid",
        "1 if exactly one valid v=STSv1 TXT is at _mta-sts.",
        lambda d: NONE if d.report.sts_record is None else flag(d.report.sts_record.valid),
    ),
    gauge(
        "mailcanary_domain_mta_sts_policy_valid",
        "1 if the MTA-STS policy was fetched as RFC 8461 asks (verified HTTPS, no redirect, text/plain, "
        "64 KB at most) and parses; absent without a valid record.",
        _policy_valid,
    ),
    gauge(
        "mailcanary_domain_mta_sts_policy_error_info",
        "Why the policy fetch failed (fixed words).",
        _policy_error,
        "error",
    ),
    gauge(
        "mailcanary_domain_mta_sts_mode_info",
        "The policy's mode: enforce, testing or none.",
        lambda d: NONE if (p := _policy(d)) is None else info(p.mode or "none"),
        "mode",
    ),
    gauge(
        "mailcanary_domain_mta_sts_max_age_seconds",
        "The policy's max_age.",
        lambda d: NONE if (p := _policy(d)) is None else value(p.max_age),
    ),
    gauge(
        "mailcanary_domain_mta_sts_mx_covered",
        "1 if the policy's mx patterns cover this MX host.",
        _covered,
        "mx",
    ),
    gauge(
        "mailcanary_domain_tlsrpt_valid",
        "1 if exactly one valid v=TLSRPTv1 TXT with a usable rua is at _smtp._tls.",
        lambda d: NONE if d.report.tlsrpt is None else flag(d.report.tlsrpt.valid),
    ),
]


def _tls(samples: Callable[[TLSFacts], Samples]) -> Callable[[MXAddressResult], Samples]:
    """An address's TLS samples: none when the address did not answer."""
    return lambda a: NONE if a.report.tls is None else samples(a.report.tls)


def _dane(samples: Callable[[MXAddressResult], Samples]) -> Callable[[MXAddressResult], Samples]:
    """DANE samples judged only when TLSA records exist."""
    return lambda a: samples(a) if a.dane is not None and a.dane.present else NONE


def _listed(a: MXAddressResult) -> Samples:
    return [
        ((li.zone,), _b(li.status == "listed")) for li in a.listings if li.status in ("listed", "not_listed")
    ]


# Per (probe, domain, mx, address).
ADDRESS_SPECS: list[FamilySpec[MXAddressResult]] = [
    gauge(
        "mailcanary_domain_mx_up",
        "1 if the address answered the SMTP dialogue up to STARTTLS, else 0.",
        lambda a: flag(a.report.tls is not None),
    ),
    gauge(
        "mailcanary_domain_mx_starttls_offered",
        "1 if the MX offers STARTTLS.",
        _tls(lambda f: flag(f.starttls_offered)),
    ),
    gauge(
        "mailcanary_domain_mx_tls_handshake_ok",
        "1 if a TLS handshake completed (verified or not).",
        _tls(lambda f: flag(f.handshake_ok)),
    ),
    gauge(
        "mailcanary_domain_mx_cert_verified",
        "1 if the chain verified and matched the MX name.",
        _tls(verified),
    ),
    gauge(
        "mailcanary_domain_mx_cert_verify_error_info",
        "Why verification failed (present only then).",
        _tls(verify_error),
        "reason",
    ),
    gauge(
        "mailcanary_domain_mx_hostname_match",
        "1 if the leaf certificate names the MX host.",
        _tls(lambda f: flag(f.hostname_match)),
    ),
    gauge(
        "mailcanary_domain_mx_tls_version_info",
        "Negotiated TLS version.",
        _tls(lambda f: info(f.version)),
        "version",
    ),
    gauge(
        "mailcanary_domain_mx_legacy_protocol_accepted",
        "1 if the MX completed a handshake pinned to this legacy version; absent if untestable here.",
        _tls(legacy_accepted),
        "version",
    ),
    gauge(
        "mailcanary_domain_mx_auth_before_tls",
        "1 if the MX offers AUTH before STARTTLS.",
        _tls(lambda f: flag(f.auth_before_tls)),
    ),
    gauge(
        "mailcanary_domain_mx_cert_earliest_expiry_timestamp_seconds",
        "Earliest notAfter in the presented chain.",
        _tls(lambda f: value(f.earliest_not_after)),
    ),
    gauge(
        "mailcanary_domain_mx_stage_seconds",
        "Duration of each stage of the MX audit.",
        lambda a: each(sorted(a.report.phases.items())),
        "stage",
    ),
    gauge(
        "mailcanary_domain_mx_mail_from_before_tls_code",
        "Reply code to MAIL FROM on the plain session (asked when must_refuse.mail_from_before_tls).",
        lambda a: value(a.report.plain_mail_from_code),
    ),
    gauge(
        "mailcanary_domain_dane_present",
        "1 if TLSA records exist at _25._tcp.<mx>.",
        lambda a: NONE if a.dane is None else flag(a.dane.present),
    ),
    gauge(
        "mailcanary_domain_dane_dnssec_valid",
        "1 if the TLSA answer validated (DANE counts only then).",
        _dane(lambda a: flag(a.dane is not None and a.dane.dnssec == "secure")),
    ),
    gauge(
        "mailcanary_domain_dane_match",
        "1 if a usable TLSA record matches the presented chain; absent without TLSA.",
        _dane(lambda a: flag(a.dane is not None and a.dane.matched)),
    ),
    gauge(
        "mailcanary_domain_dane_rollover_ready",
        "1 if another usable TLSA record is published beside the matching one.",
        _dane(lambda a: flag(a.dane is not None and a.dane.rollover_ready)),
    ),
    gauge(
        "mailcanary_domain_dnsbl_listed",
        "1 if the MX address is listed in the zone, 0 if not; absent when the zone gave no usable answer.",
        _listed,
        "zone",
    ),
    gauge(
        "mailcanary_domain_dnsbl_status",
        "1 with the zone's answer: listed, not_listed, refused (127.255.255.x) or error (only that one).",
        lambda a: [((li.zone, li.status), 1) for li in a.listings],  # the current one only: 16 zones x 64
        "zone",
        "status",
    ),
    gauge(
        "mailcanary_domain_must_refuse_success",
        "1 if the MX refused as it must (open_relay, auth_before_tls, own_domain_sender), else 0.",
        lambda a: [((f.check,), _b(f.success)) for f in a.refusals],
        "check",
    ),
    gauge(
        "mailcanary_domain_must_refuse_code",
        "The reply code that decided the must-refuse check.",
        lambda a: [((f.check,), f.code) for f in a.refusals if f.code is not None],
        "check",
    ),
    gauge(
        "mailcanary_domain_must_refuse_skipped",
        "1 for a must-refuse check (or mail_from_before_tls) asked but not judged in the last run, by "
        "reason: no_answer (the address did not answer: no more sessions to it that run) or no_result "
        "(the session failed before the deciding answer). Neither a pass nor a failure.",
        lambda a: [((check, why), 1) for check, why in a.skipped.items()],
        "check",
        "reason",
    ),
]


@cache
def address_scan_specs() -> tuple[FamilySpec[MXAddressResult], ...]:
    """The TLS scan's families (exporter.metrics.tls.scan_specs) per MX address:
    ``mailcanary_domain_mx_protocol_accepted`` and the rest, absent for an address that did not answer."""
    return tuple(
        FamilySpec(spec.name, spec.type, spec.help, _tls(spec.samples), spec.labels)
        for spec in scan_specs("mailcanary_domain_mx_")
    )


def domain_fact_families(rows: Iterable[tuple[str, DomainReport]]) -> list[Metric]:
    """Every ``mailcanary_domain_*`` fact family for ``rows`` of (probe name, last report): the findings,
    then (only for a report whose MX resolution succeeded) :data:`DOMAIN_SPECS`, :data:`ADDRESS_SPECS`
    and the hygiene of each address's leaf."""
    dl = ["probe", "domain"]
    al = [*dl, "mx", "address"]
    reports = [([probe, report.domain], report) for probe, report in rows]
    resolved = [(d, Resolved(r, r.resolution)) for d, r in reports if r.resolution is not None]
    addresses = [([*d, a.report.mx, a.report.address], a) for d, x in resolved for a in x.report.addresses]
    hygiene = [(lv, Leaf(a.leaf, a.ocsp, a.crl)) for lv, a in addresses if a.leaf is not None]
    return [
        *render([FINDINGS], reports, dl),
        *render(DOMAIN_SPECS, resolved, dl),
        *render(ADDRESS_SPECS, addresses, al),
        *render(address_scan_specs(), addresses, al),
        *render(hygiene_specs("mailcanary_domain_mx_"), hygiene, al),
    ]
