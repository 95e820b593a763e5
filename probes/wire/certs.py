"""Certificate and TLS-fact helpers without network I/O, so they can be tested and fuzzed on their own.

Certificates are parsed with ``cryptography`` only. :func:`facts_from_connection` reads an already
established ``ssl`` object; it lives here (not in ``probes.tls.audit``) so that the protocol clients
can record the facts of their own connections without importing the module that imports them.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from probes.tls.scan import ScanFacts
    from probes.wire.net import Endpoint

VERIFY_REASONS: Final[frozenset[str]] = frozenset(
    {"expired", "not_yet_valid", "untrusted", "self_signed", "hostname_mismatch", "other"}
)
# Label values of the legacy-protocol facts, in the spelling ``SSLObject.version()`` uses.
LEGACY_VERSIONS: Final[dict[str, ssl.TLSVersion]] = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
}
LEGACY_CIPHERS: Final = "ALL:@SECLEVEL=0"  # OpenSSL 3 allows TLS 1.0/1.1 only at security level 0

# OpenSSL X509_V_ERR_* codes (x509_vfy.h) -> our reasons; anything else is "other".
_VERIFY_CODES: Final[dict[int, str]] = {
    2: "untrusted",  # UNABLE_TO_GET_ISSUER_CERT
    9: "not_yet_valid",  # CERT_NOT_YET_VALID
    10: "expired",  # CERT_HAS_EXPIRED
    18: "self_signed",  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: "untrusted",  # SELF_SIGNED_CERT_IN_CHAIN: a root we do not trust
    20: "untrusted",  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "untrusted",  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    27: "untrusted",  # CERT_UNTRUSTED
    62: "hostname_mismatch",  # HOSTNAME_MISMATCH
    64: "hostname_mismatch",  # IP_ADDRESS_MISMATCH
}
_TLS_RECORD_VERSION: Final[dict[ssl.TLSVersion, bytes]] = {
    ssl.TLSVersion.TLSv1: b"\x03\x01",
    ssl.TLSVersion.TLSv1_1: b"\x03\x02",
    ssl.TLSVersion.TLSv1_2: b"\x03\x03",
    ssl.TLSVersion.TLSv1_3: b"\x03\x03",  # 1.3 keeps 1.2 in the legacy field (RFC 8446 §4.1.2)
}


@dataclass(frozen=True)
class CertInfo:
    """What we report about one certificate; times are unix timestamps (UTC)."""

    subject: str
    issuer: str
    sans: tuple[str, ...]  # DNS names and IP addresses, in certificate order
    not_before: float
    not_after: float
    serial: str  # lower-case hex, as blackbox_exporter prints it
    self_signed: bool
    is_ca: bool
    fingerprint_sha256: str  # lower-case hex, no colons
    der: bytes = field(default=b"", repr=False, compare=False)  # for hygiene and OCSP (no new session)


@dataclass
class TLSFacts:
    """Everything the TLS audit knows about one endpoint; mutable so a probe can fill it as it goes."""

    endpoint: str  # "host:port"
    protocol: str  # smtp | imap | pop3 | tcp
    mode: str  # implicit | starttls
    starttls_offered: bool | None = None  # None when mode == implicit
    auth_before_tls: bool | None = None  # plain port offers AUTH/LOGIN before TLS; None: not known
    handshake_ok: bool = False
    version: str | None = None  # e.g. "TLSv1.3"
    cipher: str | None = None  # OpenSSL name, e.g. "TLS_AES_256_GCM_SHA384"
    chain: list[CertInfo] = field(default_factory=list)  # as presented, leaf first
    verified: bool = False  # chain and name verified against the trust store (system or ca_file)
    verify_reason: str | None = None  # one of VERIFY_REASONS; None when verified
    hostname_match: bool | None = None  # None: no certificate seen
    # The scan (probes.tls.scan, issue 21): what else the endpoint accepts, from hellos of our own; None
    # when it was not scanned. It may be remembered from an earlier run: its own ``checked_at`` says when.
    scan: ScanFacts | None = None
    # The chain as the scan's hello saw it served (TLS <= 1.2 Certificate message); None: unknown.
    chain_complete: bool | None = None  # reaches a trust anchor with what was sent (no AIA fetching)
    chain_ordered: bool | None = None  # each certificate is followed by its issuer (RFC 5246 7.4.2)
    chain_superfluous: int | None = None  # certificates sent that the path to the anchor does not use
    chain_anchor_sent: bool | None = None  # the trust anchor itself was sent (allowed, useless)
    # True/False: the server did/did not complete a handshake pinned to that version. None: unknown —
    # not checked, or this machine's OpenSSL cannot offer the version (see openssl_offers); never a false 0.
    legacy: dict[str, bool | None] = field(default_factory=lambda: dict.fromkeys(LEGACY_VERSIONS))
    error: str | None = None  # why the verified handshake (or the whole check) failed, one line
    server_name: str | None = None  # the name sent in SNI and matched against the certificate
    legacy_checked_at: float | None = None  # when the legacy answers were tested (they may be remembered)
    # Why a client with today's defaults (TLS 1.2+, OpenSSL's default security level) was refused although
    # a permissive handshake completed, one line (e.g. "DH key too small"); None: not refused, or unknown.
    # The certificate is then judged on the permissive, still verifying handshake (issue 21).
    handshake_refused: str | None = None
    # The OCSP response the server staples, judged: one of probes.tls.chain.STAPLE_STATUSES; None: not
    # looked at (the scan fills it). "revoked" fails the check whatever the responder says.
    ocsp_staple_status: str | None = None

    @property
    def leaf(self) -> CertInfo | None:
        return self.chain[0] if self.chain else None

    @property
    def leaf_not_before(self) -> float | None:
        return self.chain[0].not_before if self.chain else None

    @property
    def leaf_not_after(self) -> float | None:
        return self.chain[0].not_after if self.chain else None

    @property
    def earliest_not_after(self) -> float | None:
        """The first expiry anywhere in the presented chain (blackbox's probe_ssl_earliest_cert_expiry)."""
        return earliest_expiry(self.chain)


# ---- certificates ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def cert_info(der: bytes) -> CertInfo:
    """Parse one DER certificate; raises ValueError (only) if it cannot be parsed.

    Memoised (CertInfo is frozen): a server presents the same chain on every connection, and parsing it
    was a sixth of a round trip's CPU."""
    try:
        cert = x509.load_der_x509_certificate(der)
        return CertInfo(
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            sans=_san_strings(cert),
            not_before=cert.not_valid_before_utc.timestamp(),
            not_after=cert.not_valid_after_utc.timestamp(),
            serial=format(cert.serial_number, "x"),
            self_signed=_self_signed(cert),
            is_ca=_is_ca(cert),
            fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
            der=der,
        )
    except ValueError:
        raise
    except Exception as exc:  # cryptography parses extensions lazily and raises several types
        raise ValueError(f"unparsable certificate: {exc}") from exc


def earliest_expiry(chain: Iterable[CertInfo]) -> float | None:
    """The smallest ``not_after`` in ``chain``; None for an empty chain."""
    return min((c.not_after for c in chain), default=None)


def _san_strings(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    out: list[str] = []
    for name in san:
        if isinstance(name, x509.DNSName):
            out.append(name.value)
        elif isinstance(name, x509.IPAddress):
            out.append(str(name.value))
    return tuple(out)


def _identities(cert: x509.Certificate) -> tuple[list[str], list[Any], list[str]]:
    """DNS SANs, IP SANs and subject common names."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = san.get_values_for_type(x509.DNSName)
        ips: list[Any] = list(san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = [], []
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return dns, ips, [cn if isinstance(cn, str) else cn.decode("latin-1") for cn in cns]


def _self_signed(cert: x509.Certificate) -> bool:
    """Issued by itself: same name and a signature its own key verifies (a name match alone can lie)."""
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


# ---- names ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def hostname_matches(cert_der: bytes, name: str) -> bool:
    """Does the certificate name ``name``? RFC 6125 rules, as OpenSSL applies them for Python's ``ssl``.

    DNS SANs, with a wildcard only as the whole left-most label (matching exactly one label); IP SANs
    for IP literals (never a wildcard or CN); the subject CN only when there is no DNS SAN at all.
    Never raises: an unparsable certificate or a malformed name simply does not match.
    """
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        dns, ips, cns = _identities(cert)
    except Exception:
        return False
    return names_match(dns, ips, cns, name)


def names_match(
    dns_sans: Sequence[str], ip_sans: Sequence[Any], common_names: Sequence[str], name: str
) -> bool:
    """The matching rules of :func:`hostname_matches` on already extracted identities."""
    ip = _ip_literal(name)
    if ip is not None:
        return any(ip == other for other in ip_sans)
    host = _reference_name(name)
    if host is None:
        return False
    patterns = dns_sans if dns_sans else common_names
    return any(dns_pattern_matches(p, host) for p in patterns)


def _ip_literal(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _reference_name(name: str) -> str | None:
    """The name we connected to as lower-case ASCII (IDNA A-labels); None if it is no valid DNS name."""
    if name.endswith("."):
        name = name[:-1]
    if not name or "*" in name:
        return None
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except (UnicodeError, ValueError):
        return None
    return ascii_name.lower()


def dns_pattern_matches(pattern: str, host: str) -> bool:
    """One presented DNS identity against a normalised reference name (see :func:`_reference_name`)."""
    pattern = pattern.lower()
    if pattern.endswith("."):
        pattern = pattern[:-1]
    if not pattern or not pattern.isascii():
        return False
    if "*" not in pattern:
        return pattern == host
    label, dot, rest = pattern.partition(".")
    # "*" alone as the left-most label, at least two labels after it ("*.com" names nothing).
    if label != "*" or not dot or "*" in rest or "." not in rest or "" in rest.split("."):
        return False
    first, dot, host_rest = host.partition(".")
    return bool(first) and bool(dot) and host_rest == rest


# ---- verification failures ------------------------------------------------------------------------------


def find_ssl_error(exc: BaseException | None) -> ssl.SSLError | None:
    """The ``ssl`` error behind a wrapped exception (aiosmtplib and our probe errors chain them)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ssl.SSLError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def classify_verify_error(exc: BaseException | None, chain: Sequence[CertInfo], now: float) -> str:
    """Why verification failed, as one of :data:`VERIFY_REASONS`.

    OpenSSL's verify code decides when there is one (``exc`` may wrap the SSLCertVerificationError);
    otherwise the presented chain is judged by its dates at ``now`` and by a self-signed leaf.
    """
    err = find_ssl_error(exc)
    if isinstance(err, ssl.SSLCertVerificationError):
        reason = _VERIFY_CODES.get(getattr(err, "verify_code", -1) or -1)
        if reason is not None:
            return reason
    if any(c.not_after < now for c in chain):
        return "expired"
    if any(c.not_before > now for c in chain):
        return "not_yet_valid"
    if len(chain) == 1 and chain[0].self_signed:
        return "self_signed"
    return "other"


# OpenSSL reasons (``SSLError.reason``) of a handshake refused for its parameters, not its certificate,
# as the words of TLSFacts.handshake_refused.
_REFUSALS: Final[dict[str, str]] = {
    "DH_KEY_TOO_SMALL": "DH key too small",
    "BAD_DH_VALUE": "DH key too small",
    "NO_SHARED_CIPHER": "no cipher suite in common",
    "NO_CIPHERS_AVAILABLE": "no cipher suite in common",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no signature algorithm in common",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "handshake_failure alert (no cipher suite in common)",
    "UNSUPPORTED_PROTOCOL": "no protocol version in common",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no protocol version in common",
    "WRONG_VERSION_NUMBER": "no protocol version in common",
    "TLSV1_ALERT_INSUFFICIENT_SECURITY": "the server wants weaker parameters (insufficient_security alert)",
    "UNSAFE_LEGACY_RENEGOTIATION_DISABLED": "no secure renegotiation (RFC 5746)",
    "EE_KEY_TOO_SMALL": "certificate key too small",
    "CA_KEY_TOO_SMALL": "certificate key too small",
    "CA_MD_TOO_WEAK": "certificate signature too weak",
}


def parameters_refused(exc: BaseException | None) -> bool:
    """Did a handshake fail in TLS itself for a reason that is not the certificate's verdict?

    True for an ``ssl`` error that is not an SSLCertVerificationError (DH_KEY_TOO_SMALL, no shared
    cipher, protocol version…): a more permissive, still verifying handshake may then judge the
    certificate. False for a verification failure, and for failures beside TLS (STARTTLS refused, a
    connection reset, a timeout): those say nothing about parameters.
    """
    err = find_ssl_error(exc)
    return err is not None and not isinstance(err, ssl.SSLCertVerificationError)


def describe_refusal(exc: BaseException | None, version: str | None, cipher: str | None) -> str:
    """One line: why a client with today's defaults was refused (``exc``), with what a permissive
    handshake then negotiated (``version``, ``cipher``; None when it did not complete)."""
    err = find_ssl_error(exc)
    code = str(getattr(err, "reason", None) or "")
    words = _REFUSALS.get(code) or (code.replace("_", " ").lower() if code else "handshake refused")
    if not cipher:
        return words
    chose = f"the server chose {cipher}" + (f" ({version})" if version else "")
    if version != "TLSv1.3" and not forward_secret(cipher):
        chose += ": RSA key exchange, no forward secrecy"
    return f"{words}; {chose}"


def forward_secret(cipher: str) -> bool:
    """An OpenSSL suite name with ephemeral key exchange (TLS 1.3 suites always are)."""
    return cipher.startswith(("TLS_", "ECDHE-", "DHE-", "EDH-")) or "-DHE-" in cipher


# ---- legacy protocol versions ---------------------------------------------------------------------------


def legacy_context(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client context that offers only ``version``, at security level 0, without verification.

    Only for asking "does the server still accept this?": nothing is ever sent over it.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():  # Python deprecates pinning to TLS 1.0/1.1: that is the point here
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    ctx.set_ciphers(LEGACY_CIPHERS)
    return ctx


@functools.cache
def openssl_offers(version: ssl.TLSVersion) -> bool:
    """Can this machine's OpenSSL even offer ``version`` (built in, not disabled by policy)?

    Tried for real, in memory: a client pinned to the version must emit a ClientHello for it. Without
    this, a refused handshake could not be told from a client that never asked.
    """
    record_version = _TLS_RECORD_VERSION.get(version)
    if record_version is None:
        return False
    try:
        ctx = legacy_context(version)
        obj = ctx.wrap_bio(ssl.MemoryBIO(), (out := ssl.MemoryBIO()))
        obj.do_handshake()
    except ssl.SSLWantReadError:
        hello = out.read()
        # TLS record of type handshake (22) carrying a ClientHello (1) whose client_version is ours.
        return len(hello) > 10 and hello[0] == 22 and hello[5] == 1 and hello[9:11] == record_version
    except (ssl.SSLError, ValueError, OSError):
        return False
    return False  # pragma: no cover - a handshake cannot complete without a peer


# ---- facts of a live connection ---------------------------------------------------------------------


def presented_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """The certificates the server sent, DER, leaf first, as sent (not as verified).

    Python 3.13 has ``get_unverified_chain()`` in public. On 3.10-3.12 it exists only on the private
    ``_sslobj`` (bpo-18233), and nothing public hands out the intermediates; ``getpeercert`` gives the
    leaf alone. So: public if there, else the private one guarded, else the leaf only.
    """
    getter = getattr(ssl_object, "get_unverified_chain", None)
    if getter is None:
        getter = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if getter is not None:
        try:
            certs = getter() or []
            chain = [c if isinstance(c, bytes) else bytes(c.public_bytes(_ENCODING_DER)) for c in certs]
        except (ssl.SSLError, ValueError, AttributeError, TypeError):
            chain = []
        if chain:
            return chain
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


_ENCODING_DER: Final = 2  # _ssl.ENCODING_DER, for the private Certificate.public_bytes of 3.10-3.12


async def facts_from_connection(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, endpoint: Endpoint, protocol: str, mode: str
) -> TLSFacts:
    """The facts a live connection gives: version, cipher, presented chain, verification, name match.

    A connection made with verification on (CERT_REQUIRED + check_hostname, our default) is verified by
    having completed. One made without (``insecure_skip_verify``) is reported unverified, with a reason
    judged from the chain alone. Legacy versions stay unknown: no extra connection is made. Never
    raises; a certificate that cannot be parsed ends in ``error``.
    """
    facts = TLSFacts(
        endpoint=endpoint.address,
        protocol=protocol,
        mode=mode,
        starttls_offered=True if mode == "starttls" else None,
        handshake_ok=True,
        server_name=endpoint.server_hostname,
    )
    facts.version = ssl_object.version()
    cipher = ssl_object.cipher()
    facts.cipher = cipher[0] if cipher else None
    ders = presented_chain(ssl_object)
    for der in ders:
        try:
            facts.chain.append(cert_info(der))
        except ValueError as exc:
            facts.error = f"presented certificate {len(facts.chain)} cannot be parsed: {exc}"
            break
    if ders:
        facts.hostname_match = hostname_matches(ders[0], endpoint.server_hostname)
    ctx = ssl_object.context
    chain_checked = ctx.verify_mode == ssl.CERT_REQUIRED
    name_checked = ctx.check_hostname or bool(facts.hostname_match)
    facts.verified = chain_checked and name_checked
    if not facts.verified:
        if chain_checked:
            facts.verify_reason = "hostname_mismatch"
        else:
            facts.verify_reason = classify_verify_error(None, facts.chain, time.time())
            if facts.verify_reason == "other" and facts.hostname_match is False:
                facts.verify_reason = "hostname_mismatch"
    return facts
