"""TLS facts as metric families: one renderer for /metrics (mailcanary_tls_*) and /probe (blackbox names)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.metrics.run import run_families
from exporter.run.results import TLS_OUTCOMES, ProbeStats
from probes.tls.audit import LEGACY_VERSIONS, TLSFacts, openssl_offers

# blackbox_exporter spells versions the Go way; /probe answers as it does, /metrics the OpenSSL way.
BLACKBOX_VERSIONS = {"TLSv1": "TLS 1.0", "TLSv1.1": "TLS 1.1", "TLSv1.2": "TLS 1.2", "TLSv1.3": "TLS 1.3"}


def _bool(v: bool) -> int:
    return 1 if v else 0


def tls_families(rows: Iterable[tuple[Sequence[str], TLSFacts]], labels: Sequence[str]) -> Iterator[Metric]:
    """``mailcanary_tls_*`` families for ``rows`` of (label values, facts); empty facts render nothing."""
    names = list(labels)

    def g(name: str, doc: str, *extra: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"mailcanary_tls_{name}", doc, labels=[*names, *extra])

    not_after = g("cert_not_after_timestamp_seconds", "Leaf certificate notAfter (unix time).")
    not_before = g("cert_not_before_timestamp_seconds", "Leaf certificate notBefore (unix time).")
    earliest = g(
        "earliest_cert_expiry_timestamp_seconds",
        "Earliest notAfter of any certificate in the chain the server presented (unix time).",
    )
    verified = g("cert_verified", "1 if the chain verified against the trust store and matched the name.")
    verify_error = g(
        "cert_verify_error_info", "Why verification failed (present only when it did).", "reason"
    )
    hostname = g("hostname_match", "1 if the leaf certificate's SAN/CN matches the name we connected to.")
    version = g("version_info", "Negotiated TLS version.", "version")
    cipher = g("cipher_info", "Negotiated cipher suite.", "cipher")
    legacy = g(
        "legacy_protocol_accepted",
        "1 if the server completed a handshake pinned to this legacy version; absent if untestable here.",
        "version",
    )
    legacy_at = g(
        "legacy_protocol_checked_timestamp_seconds",
        "When the legacy answers were last tested (re-tested after legacy_recheck or a new certificate).",
    )
    starttls = g("starttls_offered", "1 if the plain port offers STARTTLS/STLS (plain ports only).")
    auth_plain = g(
        "auth_before_tls",
        "1 if the plain port offers AUTH/LOGIN before TLS: credentials could travel in clear.",
    )
    for values, f in rows:
        lv = list(values)
        if f.leaf is not None:
            not_after.add_metric(lv, f.leaf.not_after)
            not_before.add_metric(lv, f.leaf.not_before)
        if f.earliest_not_after is not None:
            earliest.add_metric(lv, f.earliest_not_after)
        if f.handshake_ok or f.chain:
            verified.add_metric(lv, _bool(f.verified))
            if not f.verified and f.verify_reason:
                verify_error.add_metric([*lv, f.verify_reason], 1)
        if f.hostname_match is not None:
            hostname.add_metric(lv, _bool(f.hostname_match))
        if f.version:
            version.add_metric([*lv, f.version], 1)
        if f.cipher:
            cipher.add_metric([*lv, f.cipher], 1)
        for name, accepted in f.legacy.items():
            if accepted is not None:
                legacy.add_metric([*lv, name], _bool(accepted))
        if f.legacy_checked_at is not None:
            legacy_at.add_metric(lv, f.legacy_checked_at)
        if f.starttls_offered is not None:
            starttls.add_metric(lv, _bool(f.starttls_offered))
        if f.auth_before_tls is not None:
            auth_plain.add_metric(lv, _bool(f.auth_before_tls))
    yield from (
        not_after,
        not_before,
        earliest,
        verified,
        verify_error,
        hostname,
        version,
        cipher,
        legacy,
        legacy_at,
        starttls,
        auth_plain,
    )


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
