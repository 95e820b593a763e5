"""The TLS audit of a mail endpoint (audit), its legacy-protocol scan (legacy), the scan of what else it
accepts (scan; remembered per endpoint by scanning) and certificate-chain hygiene with revocation
(hygiene: CRL, OCSP, key facts).
"""

from probes.tls.audit import (
    LEGACY_VERSIONS,
    CertInfo,
    TLSCheckSettings,
    TLSFacts,
    imap_auth_offered,
    openssl_offers,
    pop3_auth_offered,
    probe_tls,
    smtp_auth_offered,
)
from probes.tls.hygiene import (
    CRL_STATUSES,
    OCSP_STATUSES,
    CRLCache,
    CRLResult,
    Hygiene,
    KeyFacts,
    OCSPCache,
    OCSPResult,
    chain_hygiene,
    check_crl,
    crl_status,
    key_facts,
    ocsp_status,
)
from probes.tls.legacy import LegacyCache
from probes.tls.scan import ScanFacts
from probes.tls.scanning import ScanCache

__all__ = [
    "CRL_STATUSES",
    "LEGACY_VERSIONS",
    "OCSP_STATUSES",
    "CRLCache",
    "CRLResult",
    "CertInfo",
    "Hygiene",
    "KeyFacts",
    "LegacyCache",
    "OCSPCache",
    "OCSPResult",
    "ScanCache",
    "ScanFacts",
    "TLSCheckSettings",
    "TLSFacts",
    "chain_hygiene",
    "check_crl",
    "crl_status",
    "imap_auth_offered",
    "key_facts",
    "ocsp_status",
    "openssl_offers",
    "pop3_auth_offered",
    "probe_tls",
    "smtp_auth_offered",
]
