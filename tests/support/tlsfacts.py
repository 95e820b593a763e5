"""Made-up TLS facts with every field set (a chain, legacy answers, a verify reason when not ok, a TLS
scan with known and unknown answers): what the scrape golden test and the scrape benchmarks render."""

from __future__ import annotations

from probes.tls.audit import CertInfo, TLSFacts
from probes.tls.scan import ScanFacts


def scan() -> ScanFacts:
    """A scan of a server with weaknesses: SSLv3, 3DES, a non-FS suite, 1024-bit DH; SSLv2 and RC4 unknown."""
    s = ScanFacts(checked_at=1_700_000_200.0, connections=12)
    s.protocols = {
        "SSLv2": None,
        "SSLv3": True,
        "TLSv1": True,
        "TLSv1.1": False,
        "TLSv1.2": True,
        "TLSv1.3": True,
    }
    s.classes = {
        "null": False,
        "anon": False,
        "export": False,
        "rc4": None,
        "3des": True,
        "cbc_only": False,
        "sha1_mac": True,
    }
    s.non_fs = True
    s.preferred = {"TLSv1.2": "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "TLSv1.3": "TLS_AES_256_GCM_SHA384"}
    s.dh_bits = 1024
    s.tls13_group = "x25519"
    s.secure_renegotiation = True
    s.compression = False
    s.stapled = True
    s.errors = {"SSLv2": "421 too many connections", "rc4": "connection refused"}
    return s


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
    if ok:
        f.scan = scan()
        f.chain_complete, f.chain_ordered, f.chain_superfluous = True, False, 1
        f.ocsp_staple_status = "good"
    return f
