"""Pure facts about the chain a server serves: does it reach a trust anchor on its own, in order, without
extras; and what a stapled OCSP response says.

Browsers and most MTAs patch a served chain (AIA fetching, intermediates cached from other sites, any
order): a chain that only works because clients patch it fails the one client that does not. So the
served list is judged as sent, against the trust anchors only (the system store, or the endpoint's
``ca_file``): no fetching, no cached intermediates.

- complete: a path from the leaf through served certificates ends at a trust anchor (the last one is
  issued by an anchor, or is an anchor itself).
- ordered: that path is the served list's prefix in order (each certificate issued by the next; RFC 5246
  7.4.2; TLS 1.3 relaxes it, but clients of TLS 1.2 still break on it).
- superfluous: served certificates that are not on the path (neither leaf nor a link to the anchor).
- anchor_sent: a trust anchor (root) itself is in the served list: harmless, but wasted bytes and a sign
  of a hand-assembled chain.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from probes.tls.hygiene import parse_ocsp_response

MAX_PATH: Final = 10  # certificates on one path (leaf included)
MAX_ANCHOR_BYTES: Final = 64 * 1024 * 1024  # a CA bundle or directory larger than this is not read whole
MAX_ANCHOR_SETS: Final = 16  # distinct ca_file/store configurations kept
# Seconds a trust store's files are taken as unchanged without looking again: the system store is a
# directory of ~300 files, stat'ed on every look (~0.6 ms per connection, two per round trip).
ANCHOR_RECHECK: Final = 5.0
MAX_JUDGED: Final = 64  # served chains judged against a set of anchors, remembered (chain_facts)
STAPLE_STATUSES: Final = ("good", "revoked", "unknown", "stale", "invalid")


@dataclass(frozen=True)
class ChainFacts:
    """Facts of one served chain; every field None when the chain could not be read (``error``)."""

    complete: bool | None
    ordered: bool | None
    superfluous: int | None  # served certificates not on the path
    anchor_sent: bool | None
    path: tuple[int, ...] = ()  # indexes into the served list, leaf first, along the path found
    anchor: str | None = None  # subject (RFC 4514) of the trust anchor reached
    issuer: bytes | None = None  # the leaf's issuer (served or anchor), DER: for the staple's check
    error: str | None = None


@dataclass(frozen=True)
class Anchors:
    """Trust anchors indexed by subject."""

    by_subject: dict[bytes, tuple[x509.Certificate, ...]]

    def __len__(self) -> int:
        return sum(len(v) for v in self.by_subject.values())

    def issuers_of(self, cert: x509.Certificate) -> tuple[x509.Certificate, ...]:
        return self.by_subject.get(cert.issuer.public_bytes(), ())

    def contains(self, cert: x509.Certificate) -> bool:
        """Same subject and same key as an anchor (a re-issued root with the same key counts)."""
        key = _spki(cert)
        return any(_spki(a) == key for a in self.by_subject.get(cert.subject.public_bytes(), ()))

    @classmethod
    def of(cls, certs: Sequence[x509.Certificate]) -> Anchors:
        index: dict[bytes, list[x509.Certificate]] = {}
        for cert in certs:
            index.setdefault(cert.subject.public_bytes(), []).append(cert)
        return cls({k: tuple(v) for k, v in index.items()})


_anchor_cache: OrderedDict[tuple[object, ...], Anchors] = OrderedDict()
_anchor_checked: OrderedDict[tuple[object, ...], tuple[float, tuple[object, ...]]] = OrderedDict()
_anchor_lock = threading.Lock()


def trust_anchors(ca_file: str | None = None) -> Anchors:
    """The anchors a verifying client uses: ``ca_file`` (PEM or DER), or the default store (OpenSSL's
    default CA file and directory). Cached by path, size and mtime, looked at again at most every
    ANCHOR_RECHECK seconds; unreadable files give no anchors (every chain then reads incomplete, which
    is what a client with that store would see)."""
    paths: list[str]
    defaults = ssl.get_default_verify_paths()  # (follows SSL_CERT_FILE / SSL_CERT_DIR)
    store = (ca_file, defaults)
    now = time.monotonic()
    with _anchor_lock:
        checked = _anchor_checked.get(store)
        if checked is not None and now - checked[0] < ANCHOR_RECHECK:
            recent = _anchor_cache.get(checked[1])
            if recent is not None:
                return recent
    if ca_file:
        paths = [ca_file]
    else:
        paths = [p for p in (defaults.cafile, defaults.openssl_cafile) if p]
        capath = defaults.capath or defaults.openssl_capath
        if capath and os.path.isdir(capath):
            with contextlib.suppress(OSError):
                paths += sorted(os.path.join(capath, n) for n in os.listdir(capath))
    stamp = tuple(_stamp(p) for p in paths)
    key = (ca_file, stamp)
    with _anchor_lock:
        _anchor_checked[store] = (now, key)
        _anchor_checked.move_to_end(store)
        while len(_anchor_checked) > MAX_ANCHOR_SETS:
            _anchor_checked.popitem(last=False)
        cached = _anchor_cache.get(key)
        if cached is not None:
            _anchor_cache.move_to_end(key)
            return cached
    anchors = Anchors.of(_load(paths))
    with _anchor_lock:
        _anchor_cache[key] = anchors
        while len(_anchor_cache) > MAX_ANCHOR_SETS:
            _anchor_cache.popitem(last=False)
    return anchors


def _stamp(path: str) -> tuple[str, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (path, -1, -1)
    return (path, st.st_size, st.st_mtime_ns)


def _load(paths: Sequence[str]) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    seen: set[bytes] = set()
    budget = MAX_ANCHOR_BYTES
    for path in paths:
        try:
            if not os.path.isfile(path):
                continue
            size = os.path.getsize(path)
            if size > budget:
                continue
            budget -= size
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        for cert in _parse_certs(data):
            fp = cert.fingerprint(hashes.SHA256())
            if fp not in seen:
                seen.add(fp)
                certs.append(cert)
    return certs


def _parse_certs(data: bytes) -> list[x509.Certificate]:
    with warnings.catch_warnings():  # an old root with a non-positive serial still anchors chains
        warnings.simplefilter("ignore")
        return _parse_certs_quiet(data)


def _parse_certs_quiet(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN" in data:
        try:
            return list(x509.load_pem_x509_certificates(data))
        except ValueError:
            return []
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        return []


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _same(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.subject == b.subject and _spki(a) == _spki(b)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """``issuer`` names and signed ``cert`` (the signature is checked, not only the names)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, ValueError (names), TypeError (unsupported key)
        return False
    return True


_judged: OrderedDict[tuple[tuple[bytes, ...], int], tuple[weakref.ref[Anchors], ChainFacts]] = OrderedDict()


def chain_facts(served: Sequence[bytes], anchors: Anchors) -> ChainFacts:
    """Judge the served list (DER, as sent, leaf first) against ``anchors``; pure, never raises.

    Remembered for the last MAX_JUDGED (chain, anchors) pairs: a remembered TLS scan is applied to
    every run's facts (~0.4 ms of certificate parsing and signature checks per side otherwise)."""
    key = (tuple(served), id(anchors))
    with _anchor_lock:
        hit = _judged.get(key)
        if hit is not None and hit[0]() is anchors:
            _judged.move_to_end(key)
            return hit[1]
    facts = _judge(served, anchors)
    with _anchor_lock:
        _judged[key] = (weakref.ref(anchors), facts)
        while len(_judged) > MAX_JUDGED:
            _judged.popitem(last=False)
    return facts


def _judge(served: Sequence[bytes], anchors: Anchors) -> ChainFacts:
    if not served:
        return ChainFacts(None, None, None, None, error="no certificate served")
    certs: list[x509.Certificate] = []
    for i, der in enumerate(served):
        try:
            certs.append(x509.load_der_x509_certificate(der))
        except ValueError:
            return ChainFacts(None, None, None, None, error=f"served certificate {i} does not parse")
    path = [0]
    complete = False
    anchor: x509.Certificate | None = None
    issuer: bytes | None = None
    while len(path) <= MAX_PATH:
        current = certs[path[-1]]
        if anchors.contains(current):
            complete, anchor = True, current
            break
        by_anchor = next((a for a in anchors.issuers_of(current) if _issued_by(current, a)), None)
        if by_anchor is not None:
            complete, anchor = True, by_anchor
            if len(path) == 1:
                issuer = by_anchor.public_bytes(Encoding.DER)
            # The anchor itself served (the root sent along) is on the path, not superfluous.
            order = [path[-1] + 1, *range(len(certs))]
            sent = next(
                (j for j in order if j < len(certs) and j not in path and _same(certs[j], by_anchor)), None
            )
            if sent is not None:
                path.append(sent)
            break
        # The next served certificate first (the right order), then any other not used yet.
        order = [path[-1] + 1, *range(len(certs))]
        nxt = next(
            (j for j in order if j < len(certs) and j not in path and _issued_by(current, certs[j])), None
        )
        if nxt is None:
            break
        if len(path) == 1:
            issuer = served[nxt]
        path.append(nxt)
    on_path = set(path)
    return ChainFacts(
        complete=complete,
        ordered=path == list(range(len(path))),
        superfluous=sum(1 for i in range(len(certs)) if i not in on_path),
        anchor_sent=any(anchors.contains(c) for c in certs),
        path=tuple(path),
        anchor=anchor.subject.rfc4514_string() if anchor is not None else None,
        issuer=issuer,
    )


def staple_status(der: bytes, leaf: bytes, issuer: bytes, now: float) -> str:
    """What a stapled OCSP response says of ``leaf`` (issued by ``issuer``): one of STAPLE_STATUSES.

    good/revoked/unknown: a current response about the leaf, signed by its issuer or a delegate; stale:
    well formed but not current (nextUpdate passed, or thisUpdate in the future); invalid: anything else
    (unparsable, another certificate, a signature that does not verify, a responder error)."""
    try:
        result = parse_ocsp_response(der, leaf, issuer, now)
    except Exception:  # the leaf or issuer DER itself does not parse
        return "invalid"
    if result.status == "invalid" and result.error == "response not current":
        return "stale"
    return result.status if result.status in STAPLE_STATUSES else "invalid"
