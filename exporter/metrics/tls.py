"""TLS facts as metric families: one renderer for /metrics (mailcanary_tls_*) and /probe (blackbox names)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.metrics.family import NONE, FamilySpec, Samples, flag, gauge, info, render, value
from exporter.metrics.run import run_families
from exporter.run.results import TLS_OUTCOMES, ProbeStats
from probes.tls.audit import LEGACY_VERSIONS, TLSFacts, openssl_offers

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
    """The :data:`SPECS` families for ``rows`` of (label values, facts)."""
    yield from render(SPECS, rows, labels)


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
