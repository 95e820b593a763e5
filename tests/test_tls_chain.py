"""Chain facts (probes.tls.chain) on chains made here: complete, misordered, missing intermediate,
superfluous certificates, root sent; and the stapled OCSP verdicts (good, revoked, stale, invalid)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from probes.tls import STAPLE_STATUSES, chain_facts, staple_status, trust_anchors
from probes.tls.chain import Anchors
from tests.mailstack.variants import Issued, TestPKI


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI("chain facts")


@pytest.fixture(scope="module")
def inter(pki: TestPKI) -> Issued:
    return pki.ca("chain intermediate", issuer=pki.root, not_before=pki.days(-1), not_after=pki.days(900))


@pytest.fixture(scope="module")
def inter2(pki: TestPKI, inter: Issued) -> Issued:
    return pki.ca("chain sub-intermediate", issuer=inter, not_before=pki.days(-1), not_after=pki.days(800))


@pytest.fixture(scope="module")
def leaf(pki: TestPKI, inter: Issued) -> Issued:
    return pki.leaf(["mail.example.test"], issuer=inter, common_name="mail.example.test")


def anchors_of(*roots: Issued) -> Anchors:
    return Anchors.of([r.cert for r in roots])


def test_complete_and_ordered(pki: TestPKI, inter: Issued, leaf: Issued) -> None:
    f = chain_facts([leaf.der, inter.der], anchors_of(pki.root))
    assert (f.complete, f.ordered, f.superfluous, f.anchor_sent) == (True, True, 0, False)
    assert f.path == (0, 1) and f.issuer == inter.der
    assert f.anchor == pki.root.cert.subject.rfc4514_string()


def test_missing_intermediate_is_incomplete(pki: TestPKI, leaf: Issued) -> None:
    f = chain_facts([leaf.der], anchors_of(pki.root))
    assert f.complete is False and f.ordered is True and f.superfluous == 0 and f.issuer is None


def test_misordered_chain(pki: TestPKI, inter: Issued, inter2: Issued) -> None:
    leaf2 = pki.leaf(["mail.example.test"], issuer=inter2)
    f = chain_facts([leaf2.der, inter.der, inter2.der], anchors_of(pki.root))
    assert f.complete is True and f.ordered is False and f.path == (0, 2, 1) and f.superfluous == 0
    assert f.issuer == inter2.der


def test_superfluous_certificate(pki: TestPKI, inter: Issued, leaf: Issued) -> None:
    stray = pki.ca("unrelated CA", issuer=None, not_before=pki.days(-1), not_after=pki.days(10))
    f = chain_facts([leaf.der, inter.der, stray.der], anchors_of(pki.root))
    assert (f.complete, f.ordered, f.superfluous, f.anchor_sent) == (True, True, 1, False)


def test_root_sent(pki: TestPKI, inter: Issued, leaf: Issued) -> None:
    f = chain_facts([leaf.der, inter.der, pki.root.der], anchors_of(pki.root))
    assert (f.complete, f.ordered, f.superfluous, f.anchor_sent) == (True, True, 0, True)
    assert f.path == (0, 1, 2)


def test_untrusted_root_is_incomplete(pki: TestPKI, inter: Issued, leaf: Issued) -> None:
    other = TestPKI("someone else")
    f = chain_facts([leaf.der, inter.der, pki.root.der], anchors_of(other.root))
    assert f.complete is False and f.anchor_sent is False and f.anchor is None


def test_a_name_match_without_the_signature_is_no_link(pki: TestPKI, leaf: Issued) -> None:
    # Same subject as the real intermediate, another key: names match, the signature does not.
    impostor = pki.ca("chain intermediate", issuer=pki.root, not_before=pki.days(-1), not_after=pki.days(9))
    f = chain_facts([leaf.der, impostor.der], anchors_of(pki.root))
    assert f.complete is False and f.superfluous == 1


def test_garbage_and_empty() -> None:
    assert chain_facts([], Anchors.of([])).complete is None
    bad = chain_facts([b"\x30\x00"], Anchors.of([]))
    assert bad.complete is None and bad.error is not None


def test_anchors_from_a_ca_file(tmp_path: Path, pki: TestPKI, inter: Issued, leaf: Issued) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.root.pem)
    f = chain_facts([leaf.der, inter.der], trust_anchors(str(ca)))
    assert f.complete is True
    # The system store does not know this test root.
    assert chain_facts([leaf.der, inter.der], trust_anchors()).complete is False
    assert len(trust_anchors()) > 0


def _ocsp(leaf: Issued, issuer: Issued, status: str, this: dt.datetime, nxt: dt.datetime) -> bytes:
    cert_status = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED}.get(
        status, ocsp.OCSPCertStatus.UNKNOWN
    )
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=leaf.cert,
            issuer=issuer.cert,
            algorithm=hashes.SHA1(),
            cert_status=cert_status,
            this_update=this,
            next_update=nxt,
            revocation_time=this if status == "revoked" else None,
            revocation_reason=x509.ReasonFlags.key_compromise if status == "revoked" else None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.cert)
    )
    return builder.sign(issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("status", ["good", "revoked", "unknown"])
def test_staple_status(pki: TestPKI, inter: Issued, leaf: Issued, status: str) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    der = _ocsp(leaf, inter, status, now - dt.timedelta(hours=1), now + dt.timedelta(days=1))
    assert staple_status(der, leaf.der, inter.der, now.timestamp()) == status


def test_stale_and_invalid_staples(pki: TestPKI, inter: Issued, leaf: Issued) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    old = _ocsp(leaf, inter, "good", now - dt.timedelta(days=9), now - dt.timedelta(days=2))
    assert staple_status(old, leaf.der, inter.der, now.timestamp()) == "stale"
    other = pki.leaf(["other.example.test"], issuer=inter)
    assert staple_status(old, other.der, inter.der, now.timestamp()) == "invalid"  # another serial
    assert staple_status(b"junk", leaf.der, inter.der, now.timestamp()) == "invalid"
    assert staple_status(old, b"junk", inter.der, now.timestamp()) == "invalid"
    assert set(STAPLE_STATUSES) == {"good", "revoked", "unknown", "stale", "invalid"}


def test_trust_store_is_looked_at_again_only_after_the_recheck_period(
    tmp_path: Path, pki: TestPKI, inter: Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 23: the store's files are stat'ed at most every ANCHOR_RECHECK seconds (the system store
    is ~300 files, looked up twice per round trip); a changed store is still seen after that."""
    import probes.tls.chain as chain

    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.root.pem)
    assert len(trust_anchors(str(ca))) == 1
    stats: list[str] = []
    real_stat = chain.os.stat
    monkeypatch.setattr(chain.os, "stat", lambda p, *a, **k: (stats.append(str(p)), real_stat(p, *a, **k))[1])
    ca.write_bytes(pki.root.pem + inter.pem)
    assert len(trust_anchors(str(ca))) == 1 and str(ca) not in stats  # within the period: not looked at
    monkeypatch.setattr(chain, "ANCHOR_RECHECK", 0.0)
    assert len(trust_anchors(str(ca))) == 2 and str(ca) in stats  # after it: the change is seen


def test_a_judged_chain_is_remembered_per_set_of_anchors(pki: TestPKI, inter: Issued, leaf: Issued) -> None:
    """Issue 23: a remembered scan's chain is applied to every run; it is judged once per anchors."""
    served = [leaf.der, inter.der]
    known, empty = anchors_of(pki.root), Anchors.of([])
    first = chain_facts(served, known)
    assert first.complete is True and chain_facts(list(served), known) is first
    assert chain_facts(served, empty).complete is False  # another store: judged on its own
    assert chain_facts(served, anchors_of(pki.root)) == first  # an equal store: the same verdict
