"""What a mail endpoint's TLS accepts, told by ClientHellos of our own (SSLv2 … TLS 1.3, weak classes).

INTERFACE STUB (issue 21): the scanner helper fills in :func:`scan`; the exporter integrates against
these names. Python's ``ssl`` (OpenSSL 3) cannot offer SSLv2/SSLv3, RC4, 3DES or EXPORT, so the hellos
are built by ``probes.tls.hello`` and only the server's first flight (ServerHello … ServerHelloDone) is
read: knowing that a version or suite was chosen needs no finished handshake.

Every fact is three-valued: True/False is what the server answered, None is "unknown" (not checked, a
``421``, a refused connection, a timeout, a reply we could not read): never a false "not accepted".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from probes.recorder import Recorder
    from probes.tls.audit import TLSCheckSettings

# Label values (metrics and reports use exactly these spellings).
PROTOCOLS: Final = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
# Weak classes: accepting any of these is a finding (alerted).
WEAK_CLASSES: Final = ("null", "anon", "export", "rc4", "3des")
# Informational classes: reported, not alerted by default.
INFO_CLASSES: Final = ("cbc_only", "sha1_mac")
DEFAULT_RESCAN: Final = 86400.0  # seconds: re-scanned after this, or when the leaf certificate changes


@dataclass
class ScanFacts:
    """One endpoint's scan; ``checked_at`` None means never scanned (every fact then None)."""

    checked_at: float | None = None  # unix time of the scan these facts come from (may be remembered)
    connections: int = 0  # connections the scan opened (its cost)
    protocols: dict[str, bool | None] = field(default_factory=lambda: dict.fromkeys(PROTOCOLS))
    classes: dict[str, bool | None] = field(
        default_factory=lambda: dict.fromkeys(WEAK_CLASSES + INFO_CLASSES)
    )
    non_fs: bool | None = None  # a suite without forward secrecy (static RSA/DH key exchange) accepted
    preferred: dict[str, str] = field(default_factory=dict)  # protocol -> IANA suite name the server chose
    dh_bits: int | None = None  # finite-field DHE group size when DHE is accepted
    tls13_group: str | None = None  # key-share group chosen in TLS 1.3 (e.g. "x25519")
    secure_renegotiation: bool | None = None  # RFC 5746 renegotiation_info in the TLS 1.2 ServerHello
    compression: bool | None = None  # the server chose a TLS compression method (CRIME)
    served_chain: list[bytes] = field(default_factory=list)  # Certificate message (TLS ≤1.2), as sent
    stapled: bool | None = None  # an OCSP response was stapled (status_request, TLS ≤1.2)
    ocsp_staple: bytes | None = field(default=None, repr=False)  # the stapled OCSPResponse, DER
    errors: dict[str, str] = field(default_factory=dict)  # hello name -> why its answer is unknown


async def scan(settings: TLSCheckSettings, recorder: Recorder) -> ScanFacts:
    """Scan one endpoint (STARTTLS or implicit TLS as ``settings.endpoint`` says), a handful of
    connections, one at a time. Never raises for what the server does; the facts say unknown."""
    raise NotImplementedError("issue 21: the scanner is being built")
