"""TLS facts as metric families: one renderer for /metrics (mailcanary_tls_*) and /probe (blackbox names)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cache

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.metrics.family import NONE, FamilySpec, Samples, flag, gauge, info, one_of, render, value
from exporter.metrics.run import run_families
from exporter.run.results import TLS_OUTCOMES, ProbeStats
from probes.tls.scan import INFO_CLASSES, PROTOCOLS, WEAK_CLASSES, ScanFacts
from probes.tls.scanning import SCAN_FACTS, STAPLE_STATUSES, unknown_facts
from probes.wire.certs import LEGACY_VERSIONS, TLSFacts, openssl_offers

# blackbox_exporter spells versions the Go way; /probe answers as it does, /metrics the OpenSSL way.
BLACKBOX_VERSIONS = {"TLSv1": "TLS 1.0", "TLSv1.1": "TLS 1.1", "TLSv1.2": "TLS 1.2", "TLSv1.3": "TLS 1.3"}


def _bool(v: bool) -> int:
    return 1 if v else 0


# Sample functions of TLS facts, shared with the domain check's per-address families.


def verified(f: TLSFacts) -> Samples:
    """Judged only when a handshake completed or a chain was seen."""
    return flag(f.verified) if f.handshake_ok or f.chain else NONE


def verify_error(f: TLSFacts) -> Samples:
    judged = f.handshake_ok or f.chain
    return info(f.verify_reason) if judged and not f.verified else NONE


def legacy_accepted(f: TLSFacts) -> Samples:
    return [((name,), _bool(ok)) for name, ok in f.legacy.items() if ok is not None]


def _scanned(samples: Callable[[ScanFacts], Samples]) -> Callable[[TLSFacts], Samples]:
    """Samples of the endpoint's scan: none when it was not scanned (scan off, or not yet)."""
    return lambda f: NONE if f.scan is None or f.scan.checked_at is None else samples(f.scan)


def _checked(samples: Callable[[TLSFacts], Samples]) -> Callable[[TLSFacts], Samples]:
    """Facts the audit derives from the scan: none without a scan."""
    return lambda f: NONE if f.scan is None or f.scan.checked_at is None else samples(f)


def _known(values: dict[str, bool | None], names: Iterable[str]) -> Samples:
    """1/0 for each name of a fixed set whose answer is known; an unknown one has no sample."""
    return [((n,), _bool(v)) for n in names if (v := values.get(n)) is not None]


def _unknown(f: TLSFacts) -> Samples:
    unknown = set(unknown_facts(f))
    return [((n,), _bool(n in unknown)) for n in SCAN_FACTS]


@cache
def scan_specs(prefix: str) -> tuple[FamilySpec[TLSFacts], ...]:
    """``<prefix>*`` families of the scan (issue 21): the same facts for every endpoint
    (``mailcanary_tls_``) and for each MX address of a domain check (``mailcanary_domain_mx_``). Every
    fact is absent while unknown, and ``scan_unknown`` says which; ``scan_checked_timestamp_seconds``
    is the time of the scan they all come from."""

    def g(name: str, doc: str, samples: Callable[[TLSFacts], Samples], *extra: str) -> FamilySpec[TLSFacts]:
        return gauge(f"{prefix}{name}", doc, samples, *extra)

    return (
        g(
            "protocol_accepted",
            "1 if the server chose this version for a hello offering only it (SSLv2 ... TLSv1.3), 0 if it "
            "refused; absent when unknown.",
            _scanned(lambda s: _known(s.protocols, PROTOCOLS)),
            "version",
        ),
        g(
            "cipher_class_accepted",
            "1 if the server chose a suite of this class (null, anon, export, rc4, 3des; cbc_only and "
            "sha1_mac informational), 0 if it refused all of them; absent when unknown.",
            _scanned(lambda s: _known(s.classes, (*WEAK_CLASSES, *INFO_CLASSES))),
            "class",
        ),
        g(
            "forward_secrecy",
            "1 if no suite without forward secrecy (static RSA/DH key exchange) was accepted, 0 if one "
            "was; absent when unknown.",
            _scanned(lambda s: NONE if s.non_fs is None else flag(not s.non_fs)),
        ),
        g(
            "preferred_cipher_info",
            "The suite the server chose at each version it accepts, from our full offer (IANA name).",
            _scanned(lambda s: [((v, s.preferred[v]), 1) for v in PROTOCOLS if s.preferred.get(v)]),
            "version",
            "cipher",
        ),
        g(
            "dh_group_bits",
            "Size of the finite-field DHE group the server sends, where it accepts DHE.",
            _scanned(lambda s: value(s.dh_bits)),
        ),
        g(
            "tls13_group_info",
            "The key-share group the server chose in TLS 1.3.",
            _scanned(lambda s: info(s.tls13_group)),
            "group",
        ),
        g(
            "secure_renegotiation",
            "1 if the server supports RFC 5746 secure renegotiation (renegotiation_info), 0 if not.",
            _scanned(lambda s: flag(s.secure_renegotiation)),
        ),
        g(
            "compression",
            "1 if the server chose TLS compression (CRIME), 0 if not.",
            _scanned(lambda s: flag(s.compression)),
        ),
        g(
            "chain_complete",
            "1 if the served chain reaches a trust anchor without fetching an intermediate (AIA).",
            _checked(lambda f: flag(f.chain_complete)),
        ),
        g(
            "chain_ordered",
            "1 if each served certificate is followed by its issuer, 0 if they are out of order.",
            _checked(lambda f: flag(f.chain_ordered)),
        ),
        g(
            "chain_superfluous_certs",
            "Certificates served that the path to the trust anchor does not use.",
            _checked(lambda f: value(f.chain_superfluous)),
        ),
        g(
            "chain_anchor_sent",
            "1 if the served chain includes the trust anchor (root) itself: allowed, wasted bytes.",
            _checked(lambda f: flag(f.chain_anchor_sent)),
        ),
        g(
            "ocsp_stapled",
            "1 if the server stapled an OCSP response when asked (status_request), 0 if not.",
            _scanned(lambda s: flag(s.stapled)),
        ),
        g(
            "ocsp_staple_status",
            "1 for what the stapled OCSP response says (good, revoked, unknown, stale, invalid), 0 for the "
            "others; absent when nothing was stapled.",
            _checked(lambda f: one_of(f.ocsp_staple_status, STAPLE_STATUSES)),
            "status",
        ),
        g(
            "scan_checked_timestamp_seconds",
            "When the scan these facts come from was made (scans are reused for scan_recheck).",
            _scanned(lambda s: value(s.checked_at)),
        ),
        g(
            "scan_connections",
            "Connections that scan opened (its cost to the server).",
            _scanned(lambda s: value(s.connections)),
        ),
        g(
            "scan_unknown",
            "1 for each fact the scan could not tell (a 421, a refused or failed connection, a timeout, "
            "a reply we could not read), 0 for each it told.",
            _checked(_unknown),
            "fact",
        ),
    )


# mailcanary_tls_*: rows of (label values, facts); empty facts render nothing.
SPECS: list[FamilySpec[TLSFacts]] = [
    gauge(
        "mailcanary_tls_cert_not_after_timestamp_seconds",
        "Leaf certificate notAfter (unix time).",
        lambda f: NONE if f.leaf is None else value(f.leaf.not_after),
    ),
    gauge(
        "mailcanary_tls_cert_not_before_timestamp_seconds",
        "Leaf certificate notBefore (unix time).",
        lambda f: NONE if f.leaf is None else value(f.leaf.not_before),
    ),
    gauge(
        "mailcanary_tls_earliest_cert_expiry_timestamp_seconds",
        "Earliest notAfter of any certificate in the chain the server presented (unix time).",
        lambda f: value(f.earliest_not_after),
    ),
    gauge(
        "mailcanary_tls_cert_verified",
        "1 if the chain verified against the trust store and matched the name.",
        verified,
    ),
    gauge(
        "mailcanary_tls_cert_verify_error_info",
        "Why verification failed (present only when it did).",
        verify_error,
        "reason",
    ),
    gauge(
        "mailcanary_tls_hostname_match",
        "1 if the leaf certificate's SAN/CN matches the name we connected to.",
        lambda f: flag(f.hostname_match),
    ),
    gauge("mailcanary_tls_version_info", "Negotiated TLS version.", lambda f: info(f.version), "version"),
    gauge("mailcanary_tls_cipher_info", "Negotiated cipher suite.", lambda f: info(f.cipher), "cipher"),
    gauge(
        "mailcanary_tls_legacy_protocol_accepted",
        "1 if the server completed a handshake pinned to this legacy version; absent if untestable here.",
        legacy_accepted,
        "version",
    ),
    gauge(
        "mailcanary_tls_legacy_protocol_checked_timestamp_seconds",
        "When the legacy answers were last tested (re-tested after legacy_recheck or a new certificate).",
        lambda f: value(f.legacy_checked_at),
    ),
    gauge(
        "mailcanary_tls_starttls_offered",
        "1 if the plain port offers STARTTLS/STLS (plain ports only).",
        lambda f: flag(f.starttls_offered),
    ),
    gauge(
        "mailcanary_tls_auth_before_tls",
        "1 if the plain port offers AUTH/LOGIN before TLS: credentials could travel in clear.",
        lambda f: flag(f.auth_before_tls),
    ),
]


def tls_families(rows: Iterable[tuple[Sequence[str], TLSFacts]], labels: Sequence[str]) -> Iterator[Metric]:
    """The :data:`SPECS` and scan families for ``rows`` of (label values, facts)."""
    yield from render([*SPECS, *scan_specs("mailcanary_tls_")], rows, labels)


def legacy_testable() -> GaugeMetricFamily:
    """Whether this machine's OpenSSL can offer each legacy version at all (else no answer is given)."""
    fam = GaugeMetricFamily(
        "mailcanary_tls_legacy_protocol_testable",
        "1 if this machine's OpenSSL can offer the version, so legacy acceptance can be measured.",
        labels=["version"],
    )
    for name, version in LEGACY_VERSIONS.items():
        fam.add_metric([name], _bool(openssl_offers(version)))
    return fam


def blackbox_families(f: TLSFacts | None, success: bool, duration: float) -> Iterator[Metric]:
    """The blackbox_exporter names, same meaning, so existing rules and dashboards work on /probe."""
    yield GaugeMetricFamily(
        "probe_success", "Displays whether or not the probe was a success", value=_bool(success)
    )
    yield GaugeMetricFamily(
        "probe_duration_seconds", "Returns how long the probe took to complete in seconds", value=duration
    )
    if f is None:
        return
    if f.earliest_not_after is not None:
        yield GaugeMetricFamily(
            "probe_ssl_earliest_cert_expiry",
            "Returns last SSL chain expiry in unixtime",
            value=f.earliest_not_after,
        )
    if f.verified and f.earliest_not_after is not None:
        yield GaugeMetricFamily(
            "probe_ssl_last_chain_expiry_timestamp_seconds",
            "Returns last SSL chain expiry in timestamp",
            value=f.earliest_not_after,
        )
    if f.version:
        fam = GaugeMetricFamily(
            "probe_tls_version_info", "Returns the TLS version used or NaN when unknown", labels=["version"]
        )
        fam.add_metric([BLACKBOX_VERSIONS.get(f.version, f.version)], 1)
        yield fam
    if f.leaf is not None:
        info = GaugeMetricFamily(
            "probe_ssl_last_chain_info",
            "Contains SSL leaf certificate information",
            labels=["fingerprint_sha256", "subject", "issuer", "subjectalternative", "serialnumber"],
        )
        leaf = f.leaf
        info.add_metric(
            [leaf.fingerprint_sha256, leaf.subject, leaf.issuer, ",".join(leaf.sans), leaf.serial], 1
        )
        yield info


def tls_check_families(snap: dict[str, ProbeStats], checks: list[str]) -> list[Metric]:
    """Per TLS check: last success, duration, finish time, runs by outcome."""
    return list(
        run_families(
            snap,
            checks,
            "tls_check",
            "TLS check",
            "1 if the last TLS check verified the chain and the name, else 0.",
            "Completed TLS checks by outcome.",
            TLS_OUTCOMES,
        )
    )
