"""Pure parts of the domain checks: exact values for known inputs, and hypothesis for everything else
(never raises, stable under reordering, no false match)."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from probes.domain import dane, dnsbl, mtasts, mx
from probes.tls.hygiene import key_facts

# ---- certificates for the matchers ---------------------------------------------------------------


def _cert(
    name: str, key: object, issuer_name: str, issuer_key: object, *, ca: bool, algo: object = None
) -> bytes:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=89))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    cert = builder.sign(issuer_key, algo or hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def chain() -> tuple[bytes, bytes, bytes]:
    """leaf <- intermediate <- root, plus an unrelated leaf key's certificate is made per test."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert("root", root_key, "root", root_key, ca=True)
    inter = _cert("inter", inter_key, "root", root_key, ca=True)
    leaf = _cert("mx1.example.test", leaf_key, "inter", inter_key, ca=False)
    return leaf, inter, root


def spki(der: bytes) -> bytes:
    return (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


# ---- DANE ------------------------------------------------------------------------------------------


def test_dane_ee_selectors_and_matching_types(chain: tuple[bytes, bytes, bytes]) -> None:
    leaf, inter, _ = chain
    cases = {
        (3, 0, 0): leaf,
        (3, 0, 1): hashlib.sha256(leaf).digest(),
        (3, 0, 2): hashlib.sha512(leaf).digest(),
        (3, 1, 0): spki(leaf),
        (3, 1, 1): hashlib.sha256(spki(leaf)).digest(),
        (3, 1, 2): hashlib.sha512(spki(leaf)).digest(),
    }
    for (u, s, m), data in cases.items():
        assert dane.record_matches(dane.TLSA(u, s, m, data), [leaf, inter]), (u, s, m)
        stale = bytes(b ^ 1 for b in data)
        assert not dane.record_matches(dane.TLSA(u, s, m, stale), [leaf, inter]), (u, s, m)
    # DANE-EE never matches an intermediate's key
    assert not dane.record_matches(dane.TLSA(3, 1, 1, hashlib.sha256(spki(inter)).digest()), [leaf, inter])


def test_dane_ta_needs_a_signature_path(chain: tuple[bytes, bytes, bytes]) -> None:
    leaf, inter, root = chain
    ta_inter = dane.TLSA(2, 1, 1, hashlib.sha256(spki(inter)).digest())
    ta_root = dane.TLSA(2, 0, 1, hashlib.sha256(root).digest())
    assert dane.record_matches(ta_inter, [leaf, inter])
    assert dane.record_matches(ta_root, [leaf, inter, root])
    assert not dane.record_matches(ta_root, [leaf, inter])  # root not presented
    assert not dane.record_matches(ta_inter, [leaf])  # the leaf itself is no TA
    # a presented "CA" that did not sign the leaf: no path, no match
    other_key = ec.generate_private_key(ec.SECP256R1())
    impostor = _cert("inter", other_key, "root", other_key, ca=True)
    ta_impostor = dane.TLSA(2, 0, 1, hashlib.sha256(impostor).digest())
    assert not dane.record_matches(ta_impostor, [leaf, impostor])


def test_dane_pkix_usages_are_unusable_for_smtp(chain: tuple[bytes, bytes, bytes]) -> None:
    leaf, inter, _ = chain
    recs = [
        dane.TLSA(1, 0, 1, hashlib.sha256(leaf).digest()),
        dane.TLSA(0, 0, 1, hashlib.sha256(inter).digest()),
    ]
    result = dane.evaluate(recs, [leaf, inter], "secure")
    assert (result.present, result.usable, result.matched, result.valid) == (True, 0, False, False)


def test_dane_rollover(chain: tuple[bytes, bytes, bytes]) -> None:
    leaf, inter, _ = chain
    current = dane.TLSA(3, 1, 1, hashlib.sha256(spki(leaf)).digest())
    nxt = dane.TLSA(3, 1, 1, hashlib.sha256(b"next key").digest())
    ta = dane.TLSA(2, 1, 1, hashlib.sha256(spki(inter)).digest())
    single = dane.evaluate([current], [leaf, inter], "secure")
    assert (single.matched, single.rollover_ready, single.valid) == (True, False, True)
    pair = dane.evaluate([current, nxt], [leaf, inter], "secure")
    assert (pair.matched, pair.rollover_ready, pair.matching) == (True, True, (current,))
    both = dane.evaluate([current, ta], [leaf, inter], "secure")
    assert (both.matched, both.rollover_ready, len(both.matching)) == (True, True, 2)
    stale_only = dane.evaluate([nxt], [leaf, inter], "secure")
    assert (stale_only.present, stale_only.matched, stale_only.rollover_ready) == (True, False, False)
    insecure = dane.evaluate([current], [leaf, inter], "insecure")
    assert (insecure.matched, insecure.valid) == (True, False)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(max_size=80),
    st.lists(st.binary(max_size=200), max_size=3),
)
def test_dane_fuzz_never_raises_nor_matches_garbage(
    u: int, s: int, m: int, data: bytes, garbage: list[bytes]
) -> None:
    rec = dane.TLSA(u, s, m, data)
    assert dane.record_matches(rec, garbage) is (
        False if s != 0 or m != 0 or u != 3 else (bool(garbage) and garbage[0] == data)
    )


# ---- MTA-STS / TLS-RPT -----------------------------------------------------------------------------


def test_sts_record() -> None:
    assert mtasts.parse_sts_records(["v=STSv1; id=20240101T000000;"]) == mtasts.STSRecord(
        True, "20240101T000000"
    )
    assert mtasts.parse_sts_records(["v=STSv1;id=abc", "other"]).id == "abc"
    assert (
        mtasts.parse_sts_records(["v=STSv1; id=a", "v=STSv1; id=b"]).error
        == "2 v=STSv1 records (exactly one allowed)"
    )
    assert mtasts.parse_sts_records([]).error == "no v=STSv1 record"
    assert mtasts.parse_sts_records(["v=STSv1; id=with-dash"]).valid is False
    assert mtasts.parse_sts_records(["v=STSv1"]).valid is False
    assert mtasts.parse_sts_records(["id=1; v=STSv1"]).valid is False


def test_tlsrpt_record() -> None:
    ok = mtasts.parse_tlsrpt_records(["v=TLSRPTv1; rua=mailto:tlsrpt@example.test,https://r.example.test/v1"])
    assert ok == mtasts.TLSRPTRecord(True, ("mailto:tlsrpt@example.test", "https://r.example.test/v1"))
    assert mtasts.parse_tlsrpt_records(["v=TLSRPTv1;"]).error == "rua missing or repeated"
    assert mtasts.parse_tlsrpt_records(["v=TLSRPTv1; rua=ftp://x"]).valid is False
    assert (
        mtasts.parse_tlsrpt_records(["v=TLSRPTv1; rua=mailto:a@b", "v=TLSRPTv1; rua=mailto:c@d"]).valid
        is False
    )


POLICY = (
    "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\n"
    "mx: *.backup.example.test\r\nmax_age: 86400\r\n"
)


def test_policy_and_coverage() -> None:
    policy = mtasts.parse_policy(POLICY)
    assert policy == mtasts.Policy(True, "enforce", 86400, ("mx1.example.test", "*.backup.example.test"))
    assert mtasts.mx_covered("mx1.example.test.", policy.mx)
    assert mtasts.mx_covered("MX9.backup.example.test", policy.mx)
    assert not mtasts.mx_covered("a.b.backup.example.test", policy.mx)  # one label only
    assert not mtasts.mx_covered("backup.example.test", policy.mx)
    assert not mtasts.mx_covered("mx2.example.test", policy.mx)
    assert (
        mtasts.parse_policy(POLICY.replace("enforce", "strict")).error
        == "mode is not enforce, testing or none"
    )
    assert mtasts.parse_policy(POLICY.replace("86400", "31557601")).error == "max_age is not 0..31557600"
    assert mtasts.parse_policy("version: STSv1\nmode: enforce\nmax_age: 1\n").error == "no mx line"
    assert mtasts.parse_policy("version: STSv1\nmode: none\nmax_age: 1\n").valid
    assert mtasts.parse_policy(POLICY + "mode: testing\n").error == "mode repeated"
    assert mtasts.parse_policy(POLICY + "future_key: x\n").valid  # unknown keys ignored
    assert mtasts.parse_policy("garbage").valid is False


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_policy_fuzz(text: str) -> None:
    policy = mtasts.parse_policy(text)
    if policy.valid:
        assert policy.mode in mtasts.MODES and policy.max_age is not None and 0 <= policy.max_age <= 31557600
    mtasts.parse_sts_records([text])
    mtasts.parse_tlsrpt_records([text])


@given(st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){1,3}", fullmatch=True))
def test_wildcard_covers_exactly_one_label(host: str) -> None:
    _, _, rest = host.partition(".")
    assert mtasts.mx_covered(host, ["*." + rest])
    assert not mtasts.mx_covered(host, ["*." + host])
    assert mtasts.mx_covered(host, [host.upper() + "."])


# ---- DNSBL -----------------------------------------------------------------------------------------


def test_dnsbl_classify() -> None:
    assert dnsbl.classify([]) == ("not_listed", ())
    assert dnsbl.classify(["127.0.0.2"]) == ("listed", ("127.0.0.2",))
    assert dnsbl.classify(["127.0.0.10", "127.0.0.4", "127.0.0.4"]) == ("listed", ("127.0.0.4", "127.0.0.10"))
    assert dnsbl.classify(["127.255.255.254"]) == ("refused", ())
    assert dnsbl.classify(["127.255.255.255"]) == ("refused", ())
    assert dnsbl.classify(["127.255.255.252", "127.0.0.3"]) == ("listed", ("127.0.0.3",))
    assert dnsbl.classify(["127.0.0.1"]) == ("error", ())
    assert dnsbl.classify(["198.51.100.7"]) == ("error", ())  # an NXDOMAIN-rewriting resolver
    assert dnsbl.reverse_name("192.0.2.1", "zen.example.") == "1.2.0.192.zen.example."
    assert dnsbl.reverse_name("2001:db8::1", "bl.test").endswith(".8.b.d.0.1.0.0.2.bl.test.")


@given(st.lists(st.ip_addresses(v=4).map(str), max_size=6), st.randoms())
def test_dnsbl_stable_under_order(answers: list[str], rnd: object) -> None:
    shuffled = list(answers)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert dnsbl.classify(answers) == dnsbl.classify(shuffled)
    status, codes = dnsbl.classify(answers)
    assert status in dnsbl.STATUSES and list(codes) == sorted(
        set(codes), key=lambda c: tuple(map(int, c.split(".")))
    )


# ---- MX ordering -------------------------------------------------------------------------------------


def test_order_mx() -> None:
    records, null = mx.order_mx(
        [(20, "MX2.example.test."), (10, "mx1.example.test."), (20, "mx2.example.test")]
    )
    assert records == [mx.MXRecord(10, "mx1.example.test"), mx.MXRecord(20, "mx2.example.test")]
    assert null is False
    assert mx.order_mx([(0, ".")]) == ([], True)
    assert mx.order_mx([(0, "."), (10, "mx.example.test.")]) == ([mx.MXRecord(10, "mx.example.test")], False)


@given(
    st.lists(
        st.tuples(st.integers(0, 65535), st.from_regex(r"[a-z]{1,5}\.test\.?", fullmatch=True)), max_size=8
    )
)
def test_order_mx_fuzz(records: list[tuple[int, str]]) -> None:
    out, null = mx.order_mx(records)
    assert not null
    assert [r.preference for r in out] == sorted(r.preference for r in out)
    assert len({r.host for r in out}) == len(out)
    assert mx.order_mx(list(reversed(records)))[0] == out


# ---- key hygiene -------------------------------------------------------------------------------------


def sha1_rsa1024(tmp_path: Path) -> bytes:
    """cryptography refuses to sign with SHA-1: the openssl CLI still does (as old CAs did)."""
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-sha1",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-days",
            "90",
            "-subj",
            "/CN=weak",
            "-keyout",
            str(tmp_path / "k.pem"),
            "-out",
            str(tmp_path / "c.pem"),
        ],
        check=True,
        capture_output=True,
    )
    cert = x509.load_pem_x509_certificate((tmp_path / "c.pem").read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def test_key_facts(tmp_path: Path) -> None:
    weak = key_facts(sha1_rsa1024(tmp_path))
    assert (weak.key_type, weak.key_bits, weak.weak_key, weak.signature_hash, weak.weak_signature) == (
        "rsa",
        1024,
        True,
        "sha1",
        True,
    )
    assert weak.sct_count == 0 and weak.ocsp_url is None and weak.crl_url is None
    assert weak.validity_days == pytest.approx(90)
    eckey = ec.generate_private_key(ec.SECP384R1())
    good = key_facts(_cert("good", eckey, "good", eckey, ca=False, algo=hashes.SHA384()))
    assert (good.key_type, good.key_bits, good.weak_key, good.signature_hash, good.weak_signature) == (
        "ec",
        384,
        False,
        "sha384",
        False,
    )
    with pytest.raises(ValueError):
        key_facts(b"not a certificate")
