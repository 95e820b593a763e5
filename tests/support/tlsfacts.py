"""Made-up TLS facts with every field set (a chain, legacy answers, a verify reason when not ok): what
the scrape golden test and the scrape benchmarks render."""

from __future__ import annotations

from probes.tls.audit import CertInfo, TLSFacts


def facts(endpoint: str, protocol: str, *, ok: bool = True) -> TLSFacts:
    leaf = CertInfo(
        subject="CN=mail.example.test",
        issuer='CN=Test "CA"\\x',
        sans=("mail.example.test", "127.0.0.1"),
        not_before=1_690_000_000.0,
        not_after=1_790_000_000.5,
        serial="0a1b",
        self_signed=False,
        is_ca=False,
        fingerprint_sha256="ab" * 32,
    )
    f = TLSFacts(endpoint=endpoint, protocol=protocol, mode="starttls", starttls_offered=True)
    f.auth_before_tls = False
    f.handshake_ok = ok
    f.version = "TLSv1.3" if ok else None
    f.cipher = "TLS_AES_256_GCM_SHA384" if ok else None
    f.chain = [leaf]
    f.verified = ok
    f.verify_reason = None if ok else "expired"
    f.hostname_match = ok
    f.legacy = {"TLSv1": False, "TLSv1.1": None}
    f.legacy_checked_at = 1_700_000_123.0 if ok else None
    return f
