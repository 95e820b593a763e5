"""Certificate and key hygiene of a presented chain: key type and size, signature hash, validity period,
SCTs, and revocation by OCSP (asked of the responder the certificate's AIA names; stapling alone is not
enough for mail, where most clients never ask for a staple).

Facts are pure functions of the DER; the OCSP request/response handling is pure too (built and checked
with ``cryptography``), and only :func:`ocsp_status` does I/O (aiohttp, bounded body, timeout). Answers
are cached until the response's nextUpdate (bounded cache), so a responder is asked once per update.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Final, Generic, Literal, Protocol, TypeVar

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from probes.wire.net import source_socket_factory

if TYPE_CHECKING:
    from probes.wire.dns import DNSSettings

WEAK_HASHES: Final = frozenset({"sha1", "md5"})
MIN_BITS: Final = {"rsa": 2048, "dsa": 2048, "ec": 256}
MAX_OCSP_BYTES: Final = 64 * 1024
OCSPStatus = Literal["good", "revoked", "unknown", "unreachable", "invalid", "no_responder"]
OCSP_STATUSES: Final = ("good", "revoked", "unknown", "unreachable", "invalid", "no_responder")
_DEFAULT_CACHE_SECONDS: Final = 3600.0  # a response without nextUpdate: ask again after an hour


@dataclass(frozen=True)
class KeyFacts:
    key_type: str  # rsa | ec | ed25519 | ed448 | dsa | other
    key_bits: int
    signature_hash: str | None  # sha256, sha1, md5, ... None for EdDSA (no separate hash)
    weak_key: bool
    weak_signature: bool  # SHA-1 or MD5
    validity_days: float
    sct_count: int  # embedded precertificate SCTs (RFC 6962)
    ocsp_url: str | None
    crl_url: str | None


@functools.lru_cache(maxsize=1024)
def key_facts(der: bytes) -> KeyFacts:
    """Facts of one certificate; raises ValueError only when it cannot be parsed at all.

    Memoised by the DER (so by fingerprint): a server shows the same leaf on every run."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except Exception as exc:
        raise ValueError(f"unparsable certificate: {exc}") from exc
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        kind, bits = "rsa", key.key_size
    elif isinstance(key, ec.EllipticCurvePublicKey):
        kind, bits = "ec", key.curve.key_size
    elif isinstance(key, ed25519.Ed25519PublicKey):
        kind, bits = "ed25519", 256
    elif isinstance(key, ed448.Ed448PublicKey):
        kind, bits = "ed448", 456
    elif isinstance(key, dsa.DSAPublicKey):
        kind, bits = "dsa", key.key_size
    else:
        kind, bits = "other", 0
    try:
        algo = cert.signature_hash_algorithm
        sig_hash = algo.name if algo is not None else None
    except Exception:  # an unknown signature algorithm
        sig_hash = "unknown"
    return KeyFacts(
        key_type=kind,
        key_bits=bits,
        signature_hash=sig_hash,
        weak_key=bits < MIN_BITS.get(kind, 0) or kind == "other",
        weak_signature=sig_hash in WEAK_HASHES,
        validity_days=(cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / 86400,
        sct_count=_sct_count(cert),
        ocsp_url=_aia(cert, AuthorityInformationAccessOID.OCSP),
        crl_url=_crl(cert),
    )


def _sct_count(cert: x509.Certificate) -> int:
    try:
        ext = cert.extensions.get_extension_for_class(x509.PrecertificateSignedCertificateTimestamps)
    except x509.ExtensionNotFound:
        return 0
    except Exception:
        return 0
    return len(list(ext.value))


def _aia(cert: x509.Certificate, method: x509.ObjectIdentifier) -> str | None:
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except Exception:
        return None
    for desc in aia:
        loc = desc.access_location
        if (
            desc.access_method == method
            and isinstance(loc, x509.UniformResourceIdentifier)
            and loc.value.startswith(("http://", "https://"))
        ):
            return loc.value
    return None


def _crl(cert: x509.Certificate) -> str | None:
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except Exception:
        return None
    for point in points:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith("http"):
                return name.value
    return None


# ---- OCSP (pure parts) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OCSPResult:
    status: OCSPStatus
    this_update: float | None = None
    next_update: float | None = None
    revoked_at: float | None = None
    error: str | None = None  # one fixed-vocabulary line for logs


def ocsp_request(leaf_der: bytes, issuer_der: bytes) -> bytes:
    """DER OCSPRequest for the leaf (CertID with SHA-1, what every responder understands, RFC 5019)."""
    leaf = x509.load_der_x509_certificate(leaf_der)
    issuer = x509.load_der_x509_certificate(issuer_der)
    builder = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1())
    return builder.build().public_bytes(serialization.Encoding.DER)


def parse_ocsp_response(data: bytes, leaf_der: bytes, issuer_der: bytes, now: float) -> OCSPResult:
    """Check a response: successful, about our serial, signed by the issuer or a delegated responder it
    certified for OCSP signing, and current. Anything else is ``invalid`` (never a false good)."""
    try:
        resp = ocsp.load_der_ocsp_response(data)
    except Exception:
        return OCSPResult("invalid", error="unparsable OCSP response")
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return OCSPResult("invalid", error=f"responder status {resp.response_status.name}")
    leaf = x509.load_der_x509_certificate(leaf_der)
    issuer = x509.load_der_x509_certificate(issuer_der)
    try:
        if resp.serial_number != leaf.serial_number:
            return OCSPResult("invalid", error="response for another certificate")
        if not _signed_by_issuer_or_delegate(resp, issuer):
            return OCSPResult("invalid", error="response signature does not verify")
        this_update = resp.this_update_utc.timestamp()
        next_dt = resp.next_update_utc
        next_update = next_dt.timestamp() if next_dt is not None else None
        if this_update > now + 300 or (next_update is not None and next_update < now):
            return OCSPResult("invalid", this_update, next_update, error="response not current")
        status = resp.certificate_status
    except Exception:
        return OCSPResult("invalid", error="malformed OCSP response")
    if status == ocsp.OCSPCertStatus.GOOD:
        return OCSPResult("good", this_update, next_update)
    if status == ocsp.OCSPCertStatus.REVOKED:
        rev = resp.revocation_time_utc
        return OCSPResult("revoked", this_update, next_update, rev.timestamp() if rev else None)
    return OCSPResult("unknown", this_update, next_update)


def _signed_by_issuer_or_delegate(resp: ocsp.OCSPResponse, issuer: x509.Certificate) -> bool:
    def verify_with(cert: x509.Certificate) -> bool:
        try:
            cert_key = cert.public_key()
            algo = resp.signature_hash_algorithm
            if isinstance(cert_key, rsa.RSAPublicKey):
                from cryptography.hazmat.primitives.asymmetric import padding

                assert algo is not None
                cert_key.verify(resp.signature, resp.tbs_response_bytes, padding.PKCS1v15(), algo)
            elif isinstance(cert_key, ec.EllipticCurvePublicKey):
                assert algo is not None
                cert_key.verify(resp.signature, resp.tbs_response_bytes, ec.ECDSA(algo))
            elif isinstance(cert_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
                cert_key.verify(resp.signature, resp.tbs_response_bytes)
            else:
                return False
        except (InvalidSignature, AssertionError, TypeError, ValueError):
            return False
        return True

    if verify_with(issuer):
        return True
    for cert in resp.certificates:  # a delegated responder (RFC 6960 §4.2.2.2)
        try:
            cert.verify_directly_issued_by(issuer)
            eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except Exception:
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in eku and verify_with(cert):
            return True
    return False


# ---- CRL (optional; pure check, then bounded I/O, cached) -----------------------------------------

MAX_CRL_BYTES: Final = 4 * 1024 * 1024  # big public CAs publish CRLs of a few MB; more is refused
CRLStatus = Literal["good", "revoked", "unreachable", "invalid", "no_crl"]
CRL_STATUSES: Final = ("good", "revoked", "unreachable", "invalid", "no_crl")


@dataclass(frozen=True)
class CRLResult:
    status: CRLStatus
    next_update: float | None = None
    error: str | None = None  # one fixed-vocabulary line for logs


def check_crl(data: bytes, leaf_der: bytes, issuer_der: bytes, now: float) -> CRLResult:
    """Is the leaf on this CRL? Only a CRL signed by the leaf's issuer, naming it, and current counts;
    anything else is ``invalid`` (never a false good). DER or PEM."""
    try:
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----BEGIN")
            else x509.load_der_x509_crl(data)
        )
        leaf = x509.load_der_x509_certificate(leaf_der)
        issuer = x509.load_der_x509_certificate(issuer_der)
    except Exception:
        return CRLResult("invalid", error="unparsable CRL")
    try:
        if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            return CRLResult("invalid", error="CRL not signed by the issuer")
        next_dt = crl.next_update_utc
        next_update = next_dt.timestamp() if next_dt is not None else None
        if crl.last_update_utc.timestamp() > now + 300 or (next_update is not None and next_update < now):
            return CRLResult("invalid", next_update, error="CRL not current")
        revoked = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
    except Exception:
        return CRLResult("invalid", error="malformed CRL")
    return CRLResult("revoked" if revoked is not None else "good", next_update)


class _Verdict(Protocol):
    @property
    def status(self) -> str: ...

    @property
    def next_update(self) -> float | None: ...


V = TypeVar("V", bound=_Verdict)


class _UntilNextUpdate(Generic[V]):
    """Verdicts by (URL, leaf serial, issuer DER), kept until their nextUpdate (an hour without one); at
    most ``size`` entries, least recently used dropped first. Only ``CACHEABLE`` statuses are kept:
    failures are asked again next run. Concurrent askers of one key share one request (:meth:`fetch`)."""

    CACHEABLE: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, int, bytes], tuple[float, V]] = OrderedDict()
        self._pending: dict[tuple[str, int, bytes], asyncio.Task[V]] = {}  # requests on their way
        self.hits = 0
        self.merged = 0  # askers that waited for a request already on its way instead of sending one

    async def fetch(self, key: tuple[str, int, bytes], now: float, ask: Callable[[], Awaitable[V]]) -> V:
        """The cached verdict for ``key``; else the one already being asked for it; else ask (one request
        for every concurrent asker: addresses presenting one certificate ask its responder once). At
        most ``size`` requests are shared at a time; beyond that an asker asks alone."""
        if (hit := self.get(key, now)) is not None:
            return hit
        loop = asyncio.get_running_loop()
        pending = self._pending.get(key)
        if pending is not None and pending.get_loop() is loop and not pending.done():
            self.merged += 1
            return await asyncio.shield(pending)  # one asker cancelled must not cancel the others' request

        async def ask_and_keep() -> V:
            result = await ask()
            self.put(key, result, now)
            return result

        if len(self._pending) >= self.size:
            return await ask_and_keep()
        task = loop.create_task(ask_and_keep())
        self._pending[key] = task

        def forget(done: asyncio.Task[V]) -> None:
            if self._pending.get(key) is done:
                del self._pending[key]

        task.add_done_callback(forget)
        return await asyncio.shield(task)

    def get(self, key: tuple[str, int, bytes], now: float) -> V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: tuple[str, int, bytes], result: V, now: float) -> None:
        if result.status not in self.CACHEABLE:
            return
        until = result.next_update if result.next_update is not None else now + _DEFAULT_CACHE_SECONDS
        self._entries[key] = (until, result)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


class CRLCache(_UntilNextUpdate[CRLResult]):
    """Fetched CRLs' verdicts for a leaf."""

    CACHEABLE = frozenset({"good", "revoked"})


def _resolver(dns: DNSSettings | None) -> aiohttp.abc.AbstractResolver | None:
    """Our own resolver when the caller brings DNS settings (domain checks); dnspython is loaded then only."""
    if dns is None:
        return None
    from probes.wire.dns import DNSResolver

    return DNSResolver(dns)


async def _fetch(
    url: str,
    who: str,
    cap: int,
    timeout: float,
    dns: DNSSettings | None,
    *,
    body: bytes | None = None,
    content_type: str | None = None,
    source: Sequence[str] = (),
) -> tuple[bytes | None, str]:
    """GET (or POST ``body``) ``url`` without redirects or proxies, reading at most ``cap`` + 1 bytes (so
    the caller can tell an oversize answer): (data, "") or (None, why it could not be had). ``source``:
    local addresses to connect from, at most one per family (none of the server's family: the default)."""
    factory = source_socket_factory(source)
    connector = None
    if dns is not None or factory is not None:
        connector = aiohttp.TCPConnector(resolver=_resolver(dns), limit=1, socket_factory=factory)
    try:
        async with (
            aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=timeout),
                trust_env=False,
            ) as session,
            session.request(
                "GET" if body is None else "POST",
                url,
                data=body,
                headers={"Content-Type": content_type} if content_type else None,
                allow_redirects=False,
            ) as resp,
        ):
            if resp.status != 200:
                return None, f"{who} answered HTTP {resp.status}"
            return await resp.content.read(cap + 1), ""
    except TimeoutError:
        return None, f"{who} timed out"
    except (aiohttp.ClientError, OSError) as exc:
        return None, f"{who} unreachable: {type(exc).__name__}"


async def crl_status(
    leaf_der: bytes,
    issuer_der: bytes | None,
    *,
    timeout: float = 10.0,
    cache: CRLCache | None = None,
    now: float | None = None,
    dns: DNSSettings | None = None,
    source: Sequence[str] = (),
) -> CRLResult:
    """Fetch the leaf's CRL distribution point (HTTP GET, ≤ 4 MB, no redirects) and look it up. Never
    raises."""
    now = time.time() if now is None else now
    facts = key_facts(leaf_der)
    if facts.crl_url is None:
        return CRLResult("no_crl")
    if issuer_der is None:
        return CRLResult("invalid", error="issuer certificate not presented")
    serial = x509.load_der_x509_certificate(leaf_der).serial_number
    key = (facts.crl_url, serial, issuer_der)
    url, at = facts.crl_url, now

    async def ask() -> CRLResult:
        data, problem = await _fetch(url, "CRL server", MAX_CRL_BYTES, timeout, dns, source=source)
        if data is None:
            return CRLResult("unreachable", error=problem)
        if len(data) > MAX_CRL_BYTES:
            return CRLResult("invalid", error="CRL larger than 4 MB")
        return check_crl(data, leaf_der, issuer_der, at)

    return await ask() if cache is None else await cache.fetch(key, now, ask)


# ---- OCSP (I/O, cached) --------------------------------------------------------------------------


class OCSPCache(_UntilNextUpdate[OCSPResult]):
    """OCSP responders' answers for a leaf."""

    CACHEABLE = frozenset({"good", "revoked", "unknown"})


async def ocsp_status(
    leaf_der: bytes,
    issuer_der: bytes | None,
    *,
    timeout: float = 10.0,
    cache: OCSPCache | None = None,
    now: float | None = None,
    dns: DNSSettings | None = None,
    source: Sequence[str] = (),
) -> OCSPResult:
    """Ask the AIA responder of ``leaf_der`` (HTTP POST, RFC 6960 Appendix A). Never raises."""
    now = time.time() if now is None else now
    facts = key_facts(leaf_der)
    if facts.ocsp_url is None:
        return OCSPResult("no_responder")
    if issuer_der is None:
        return OCSPResult("invalid", error="issuer certificate not presented")
    serial = x509.load_der_x509_certificate(leaf_der).serial_number
    key = (facts.ocsp_url, serial, issuer_der)
    url, at = facts.ocsp_url, now

    async def ask() -> OCSPResult:
        data, problem = await _fetch(
            url,
            "responder",
            MAX_OCSP_BYTES,
            timeout,
            dns,
            body=ocsp_request(leaf_der, issuer_der),
            content_type="application/ocsp-request",
            source=source,
        )
        if data is None:
            return OCSPResult("unreachable", error=problem)
        if len(data) > MAX_OCSP_BYTES:
            return OCSPResult("invalid", error="response larger than 64 KB")
        return parse_ocsp_response(data, leaf_der, issuer_der, at)

    return await ask() if cache is None else await cache.fetch(key, now, ask)


@dataclass(frozen=True)
class Hygiene:
    """Key facts of a presented leaf and, when asked, its OCSP answer."""

    key: KeyFacts
    ocsp: OCSPResult | None
    crl: CRLResult | None = None


async def chain_hygiene(
    chain: Sequence[bytes],
    *,
    check_ocsp: bool = True,
    timeout: float = 10.0,
    cache: OCSPCache | None = None,
    dns: DNSSettings | None = None,
    check_crl: bool = False,
    crl_cache: CRLCache | None = None,
) -> Hygiene | None:
    """Hygiene of the leaf of ``chain`` (DER, leaf first, as presented). No session to the server: the
    chain is the one a probe already saw; OCSP asks the responder (cached until nextUpdate). Never raises;
    None when there is no parsable leaf."""
    if not chain or not chain[0]:
        return None
    try:
        key = key_facts(chain[0])
    except ValueError:
        return None
    answer: OCSPResult | None = None
    issuer = chain[1] if len(chain) > 1 and chain[1] else None
    # Without the issuer there is no CertID to ask about: not asked (the chain is the server's fault,
    # and verification reports it), rather than an "invalid" that would read as the responder's.
    if check_ocsp and key.ocsp_url is not None and issuer is not None:
        try:
            answer = await asyncio.wait_for(
                ocsp_status(chain[0], issuer, timeout=timeout, cache=cache, dns=dns), timeout + 1
            )
        except TimeoutError:
            answer = OCSPResult("unreachable", error="responder timed out")
    crl: CRLResult | None = None
    if check_crl and key.crl_url is not None and issuer is not None:
        try:
            crl = await asyncio.wait_for(
                crl_status(chain[0], issuer, timeout=timeout, cache=crl_cache, dns=dns), timeout + 1
            )
        except TimeoutError:
            crl = CRLResult("unreachable", error="CRL server timed out")
    return Hygiene(key, answer, crl)
