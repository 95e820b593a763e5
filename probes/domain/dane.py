"""DANE for SMTP (RFC 7672): the TLSA records of ``_25._tcp.<mx>`` against the chain the MX presented.

The matching is pure (no I/O) and fuzzed; :func:`fetch_tlsa` asks the validating resolver of
``probes.wire.dns`` (DNSSEC from its AD bit; see there why). Only usages 2 (DANE-TA) and 3 (DANE-EE) are
usable for SMTP (RFC 7672 §3.1.3); 0 and 1 are counted as unusable, never as a match.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from probes.wire.dns import DNSSECStatus, DNSSettings, query

USABLE_USAGES: Final = frozenset({2, 3})
SELECTORS: Final = frozenset({0, 1})
MATCHING_TYPES: Final = frozenset({0, 1, 2})


@dataclass(frozen=True)
class TLSA:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def usable(self) -> bool:
        return self.usage in USABLE_USAGES and self.selector in SELECTORS and self.mtype in MATCHING_TYPES


@dataclass(frozen=True)
class DANEResult:
    """What the TLSA RRset says about one presented chain."""

    present: bool  # at least one TLSA record
    dnssec: DNSSECStatus  # of the TLSA answer: DANE counts only when "secure"
    usable: int  # records with usage 2/3, selector 0/1, matching type 0/1/2
    matched: bool  # a usable record matches the chain (DANE-TA: a CA in the chain that signs the path)
    matching: tuple[TLSA, ...]  # the records that matched
    rollover_ready: bool  # a second usable record beside the matching one (next key or TA+EE scheme)

    @property
    def valid(self) -> bool:
        return self.present and self.dnssec == "secure" and self.matched


def _selected(cert_der: bytes, selector: int) -> bytes | None:
    if selector == 0:
        return cert_der
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        return cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    except Exception:
        return None


def association(cert_der: bytes, selector: int, mtype: int) -> bytes | None:
    """The certificate association data of ``cert_der`` for a selector and matching type (RFC 6698 §2.1)."""
    content = _selected(cert_der, selector)
    if content is None:
        return None
    if mtype == 0:
        return content
    if mtype == 1:
        return hashlib.sha256(content).digest()
    if mtype == 2:
        return hashlib.sha512(content).digest()
    return None


def _signs(issuer_der: bytes, subject_der: bytes) -> bool:
    try:
        subject = x509.load_der_x509_certificate(subject_der)
        issuer = x509.load_der_x509_certificate(issuer_der)
        subject.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    except Exception:
        return False
    return True


def _path_to(chain: Sequence[bytes], index: int) -> bool:
    """Each certificate from the leaf up to ``chain[index]`` is signed by the next one."""
    return all(_signs(chain[i + 1], chain[i]) for i in range(index))


def record_matches(rec: TLSA, chain: Sequence[bytes]) -> bool:
    """One TLSA record against the presented chain (leaf first). Never raises."""
    if not rec.usable or not chain:
        return False
    if rec.usage == 3:  # DANE-EE: the leaf itself; names and dates do not matter (RFC 7672 §3.1.1)
        return association(chain[0], rec.selector, rec.mtype) == rec.data
    # DANE-TA: a certificate of the chain above the leaf, with a signature path down to the leaf.
    for i in range(1, len(chain)):
        if association(chain[i], rec.selector, rec.mtype) == rec.data and _path_to(chain, i):
            return True
    return False


def evaluate(records: Sequence[TLSA], chain: Sequence[bytes], dnssec: DNSSECStatus) -> DANEResult:
    """Match every record; rollover-ready means another usable record stands beside the matching ones
    (a published next key, or DANE-TA and DANE-EE together), as internet.nl's DaneRollover asks."""
    usable = [r for r in records if r.usable]
    matching = tuple(r for r in usable if record_matches(r, chain))
    others = [r for r in usable if r not in matching]
    usages = {r.usage for r in matching}
    rollover = bool(matching) and (bool(others) or usages == {2, 3})
    return DANEResult(
        present=bool(records),
        dnssec=dnssec,
        usable=len(usable),
        matched=bool(matching),
        matching=matching,
        rollover_ready=rollover,
    )


async def fetch_tlsa(mx: str, settings: DNSSettings, port: int = 25) -> tuple[list[TLSA], DNSSECStatus]:
    """``_<port>._tcp.<mx>`` TLSA records and the answer's DNSSEC status (NXDOMAIN: none)."""
    answer = await query(f"_{port}._tcp.{mx.rstrip('.')}.", "TLSA", settings)
    out = [
        TLSA(int(r.usage), int(r.selector), int(r.mtype), bytes(r.cert))  # type: ignore[attr-defined]
        for r in answer.records
    ]
    return out, answer.dnssec
