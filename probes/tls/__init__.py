"""The TLS audit of a mail endpoint (audit), its legacy-protocol scan (legacy), certificate-chain
hygiene with revocation (hygiene: CRL, OCSP, key facts), the scan of what the endpoint accepts with
ClientHellos of our own (scan, hello; remembered per endpoint and run as an audit step by scanning) and
the served chain's facts (chain).
"""

from typing import TYPE_CHECKING

from probes.lazy import face

if TYPE_CHECKING:
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
    from probes.tls.chain import (
        STAPLE_STATUSES,
        Anchors,
        ChainFacts,
        chain_facts,
        staple_status,
        trust_anchors,
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
    from probes.tls.scan import (
        DEFAULT_RESCAN,
        INFO_CLASSES,
        WEAK_CLASSES,
        ScanFacts,
        scan,
        scan_key,
    )
    from probes.tls.scan import PROTOCOLS as SCAN_PROTOCOLS
    from probes.tls.scanning import ScanCache

__all__ = [
    "CRL_STATUSES",
    "DEFAULT_RESCAN",
    "INFO_CLASSES",
    "LEGACY_VERSIONS",
    "OCSP_STATUSES",
    "SCAN_PROTOCOLS",
    "STAPLE_STATUSES",
    "WEAK_CLASSES",
    "Anchors",
    "CRLCache",
    "CRLResult",
    "CertInfo",
    "ChainFacts",
    "Hygiene",
    "KeyFacts",
    "LegacyCache",
    "OCSPCache",
    "OCSPResult",
    "ScanCache",
    "ScanFacts",
    "TLSCheckSettings",
    "TLSFacts",
    "chain_facts",
    "chain_hygiene",
    "check_crl",
    "crl_status",
    "imap_auth_offered",
    "key_facts",
    "ocsp_status",
    "openssl_offers",
    "pop3_auth_offered",
    "probe_tls",
    "scan",
    "scan_key",
    "smtp_auth_offered",
    "staple_status",
    "trust_anchors",
]


if not TYPE_CHECKING:  # a module loads when one of its names is first used (probes/lazy.py)
    __getattr__, __dir__ = face(
        __name__,
        {
            "audit": (
                "LEGACY_VERSIONS CertInfo TLSCheckSettings TLSFacts imap_auth_offered openssl_offers"
                " pop3_auth_offered probe_tls smtp_auth_offered"
            ),
            "chain": "STAPLE_STATUSES Anchors ChainFacts chain_facts staple_status trust_anchors",
            "hygiene": (
                "CRL_STATUSES OCSP_STATUSES CRLCache CRLResult Hygiene KeyFacts OCSPCache OCSPResult"
                " chain_hygiene check_crl crl_status key_facts ocsp_status"
            ),
            "legacy": "LegacyCache",
            "scan": (
                "DEFAULT_RESCAN INFO_CLASSES WEAK_CLASSES ScanFacts scan scan_key SCAN_PROTOCOLS=PROTOCOLS"
            ),
            "scanning": "ScanCache",
        },
    )
