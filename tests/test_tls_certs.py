"""Unit tests of the pure TLS/certificate helpers (probes.wire.certs, the pure parts of probes.tls.audit).

Where OpenSSL is the judge (name matching, verify codes, legacy versions), the helpers are checked
against a real in-memory handshake between two Python ``ssl`` objects, not against our own idea of it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from hypothesis import given, settings
from hypothesis import strategies as st

from probes.errors import ProbeError
from probes.tls.audit import imap_auth_offered, pop3_auth_offered, smtp_auth_offered
from probes.wire.certs import (
    LEGACY_VERSIONS,
    VERIFY_REASONS,
    CertInfo,
    TLSFacts,
    cert_info,
    classify_verify_error,
    dns_pattern_matches,
    earliest_expiry,
    facts_from_connection,
    hostname_matches,
    legacy_context,
    openssl_offers,
    presented_chain,
)
from probes.wire.net import Endpoint, TLSSettings
from tests.mailstack.variants import Issued, TestPKI


@pytest.fixture(scope="module")
def pki() -> TestPKI:
    return TestPKI(now=dt.datetime.now(dt.UTC))


@pytest.fixture(scope="module")
def inter(pki: TestPKI) -> Issued:
    return pki.ca("unit inter", issuer=pki.root, not_before=pki.days(-1), not_after=pki.days(400))


# ---- an in-memory TLS pair: OpenSSL decides, no sockets -------------------------------------------------


@dataclass
class Pair:
    client: ssl.SSLObject
    server: ssl.SSLObject


def _server_context(tmp: Path, chain: Sequence[Issued], name: str) -> ssl.SSLContext:
    files = TestPKI.write_chain(tmp, name, chain, tmp / "unused-ca.pem")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files.chain, files.key)
    return ctx


def _client_context(pki: TestPKI, tmp: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.write_ca(tmp / "ca.pem")))


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str | None) -> Pair:
    """Run a full handshake through memory BIOs; the client's error (if any) is raised."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client_done = server_done = False
    for _ in range(50):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
            finally:
                s_in.write(c_out.read())
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                server_done = True  # the client aborted; its own error follows on its next step
            finally:
                c_in.write(s_out.read())
        if client_done and server_done:
            return Pair(client, server)
    raise AssertionError("handshake did not finish")


# ---- cert_info, earliest_expiry ----------------------------------------------------------------------


def test_cert_info_reports_every_field(pki: TestPKI, inter: Issued) -> None:
    leaf = pki.leaf(
        ["mail.example.test", "127.0.0.1", "::1"],
        issuer=inter,
        common_name="mail.example.test",
        not_before=pki.days(-3),
        not_after=pki.days(45),
    )
    info = cert_info(leaf.der)
    assert info.subject == "CN=mail.example.test,O=mailcanary variants"
    assert info.issuer == "CN=unit inter,O=mailcanary variants"
    assert info.sans == ("mail.example.test", "127.0.0.1", "::1")
    assert info.not_before == pki.days(-3).timestamp() == leaf.not_before
    assert info.not_after == pki.days(45).timestamp() == leaf.not_after
    assert info.serial == format(leaf.cert.serial_number, "x")
    assert info.fingerprint_sha256 == leaf.cert.fingerprint(hashes.SHA256()).hex()
    assert len(info.fingerprint_sha256) == 64
    assert (info.self_signed, info.is_ca) == (False, False)
    ca_info = cert_info(inter.der)
    assert (ca_info.self_signed, ca_info.is_ca, ca_info.sans) == (False, True, ())
    root_info = cert_info(pki.root.der)
    assert (root_info.self_signed, root_info.is_ca) == (True, True)


def test_self_signed_needs_its_own_signature_not_just_equal_names(pki: TestPKI) -> None:
    own = pki.leaf(["mail.example.test"], issuer=None, common_name="mail.example.test")
    assert cert_info(own.der).self_signed
    # Same subject and issuer name, but signed by someone else's key: not self-signed.
    impostor_ca = pki.ca("mail.example.test", issuer=None, not_before=pki.days(-1), not_after=pki.days(9))
    forged = pki.leaf(["mail.example.test"], issuer=impostor_ca, common_name="mail.example.test")
    info = cert_info(forged.der)
    assert info.subject == info.issuer
    assert not info.self_signed


def test_cert_info_rejects_garbage_with_value_error(pki: TestPKI) -> None:
    with pytest.raises(ValueError):
        cert_info(b"")
    with pytest.raises(ValueError):
        cert_info(pki.root.pem)  # PEM is not DER
    with pytest.raises(ValueError):
        cert_info(pki.root.der[:-10])


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_cert_info_on_arbitrary_bytes_raises_only_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):  # any other exception type fails the test
        cert_info(data)


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=2000), st.binary(min_size=1, max_size=4))
def test_cert_info_on_corrupted_certificates_raises_only_value_error(position: int, junk: bytes) -> None:
    der = _FUZZ_CERT
    pos = position % len(der)
    try:
        info = cert_info(der[:pos] + junk + der[pos + len(junk) :])
    except ValueError:
        return
    assert isinstance(info, CertInfo)


def _fuzz_cert() -> bytes:
    p = TestPKI()
    return p.leaf(["a.example.test", "10.0.0.1"], issuer=p.root, common_name="a.example.test").der


_FUZZ_CERT = _fuzz_cert()


def _info(not_after: float, not_before: float = 0.0, self_signed: bool = False) -> CertInfo:
    return CertInfo("CN=x", "CN=x", (), not_before, not_after, "1", self_signed, False, "00")


def test_earliest_expiry_picks_the_first_to_expire_anywhere_in_the_chain() -> None:
    assert earliest_expiry([]) is None
    assert earliest_expiry([_info(300.0), _info(100.0), _info(200.0)]) == 100.0
    facts = TLSFacts("h:1", "imap", "implicit", chain=[_info(300.0, 5.0), _info(100.0)])
    assert (facts.leaf_not_after, facts.leaf_not_before, facts.earliest_not_after) == (300.0, 5.0, 100.0)
    empty = TLSFacts("h:1", "imap", "implicit")
    assert (empty.leaf, empty.leaf_not_after, empty.leaf_not_before, empty.earliest_not_after) == (
        None,
        None,
        None,
        None,
    )
    assert empty.legacy == {"TLSv1": None, "TLSv1.1": None}  # unknown until measured, never a false 0
    assert empty.legacy is not TLSFacts("h:1", "imap", "implicit").legacy


# ---- hostname_matches: ours against OpenSSL's ---------------------------------------------------------


def _cert_for(
    pki: TestPKI, names: Sequence[str], common_name: str | None = None, *, dns_literal: bool = False
) -> Issued:
    """A leaf for ``names``; ``dns_literal`` puts IP-looking names in as DNS names (a common mistake)."""
    if not dns_literal:
        return pki.leaf(names, issuer=pki.root, common_name=common_name)
    key_leaf = pki.leaf([], issuer=pki.root, common_name=common_name)
    builder = (
        x509.CertificateBuilder()
        .subject_name(key_leaf.cert.subject)
        .issuer_name(pki.root.cert.subject)
        .public_key(key_leaf.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(pki.days(-1))
        .not_valid_after(pki.days(30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    )
    return Issued(builder.sign(pki.root.key, hashes.SHA256()), key_leaf.key)


NAME_CASES = [
    # (SAN entries, CN, name we connect to, expected)
    (["mail.example.test"], None, "mail.example.test", True),
    (["mail.example.test"], None, "MAIL.Example.TEST", True),
    (["MAIL.EXAMPLE.TEST"], None, "mail.example.test", True),
    (["mail.example.test"], None, "other.example.test", False),
    (["mail.example.test"], None, "example.test", False),
    (["mail.example.test"], None, "x.mail.example.test", False),
    (["*.example.test"], None, "mail.example.test", True),
    (["*.example.test"], None, "a.b.example.test", False),
    (["*.example.test"], None, "example.test", False),
    (["*.example.test"], None, "xn--bcher-kva.example.test", True),
    (["*.test"], None, "example.test", False),
    (["f*.example.test"], None, "foo.example.test", False),
    (["*oo.example.test"], None, "foo.example.test", False),
    (["mail.*.test"], None, "mail.example.test", False),
    (["xn--bcher-kva.example.test"], None, "bücher.example.test", True),
    (["127.0.0.1"], None, "127.0.0.1", True),
    (["127.0.0.1"], None, "127.0.0.2", False),
    (["::1"], None, "::1", True),
    (["::1"], None, "0:0:0:0:0:0:0:1", True),
    (["127.0.0.1"], "127.0.0.1", "localhost", False),
    ([], "mail.example.test", "mail.example.test", True),
    ([], "*.example.test", "mail.example.test", True),
    (["other.example.test"], "mail.example.test", "mail.example.test", False),
    (["127.0.0.1"], "mail.example.test", "mail.example.test", True),  # IP SANs do not hide the CN
    ([], "127.0.0.1", "127.0.0.1", False),  # IP literals never match a CN
]


@pytest.mark.parametrize(("sans", "cn", "name", "expected"), NAME_CASES)
def test_hostname_matches_agrees_with_openssl(
    pki: TestPKI, tmp_path: Path, sans: list[str], cn: str | None, name: str, expected: bool
) -> None:
    leaf = _cert_for(pki, sans, cn)
    assert hostname_matches(leaf.der, name) is expected
    server = _server_context(tmp_path, [leaf], "srv")
    client = _client_context(pki, tmp_path)
    try:
        handshake(server, client, name)
        openssl = True
    except ssl.SSLCertVerificationError as exc:
        assert exc.verify_code in (62, 64), exc  # only the name may be wrong here
        openssl = False
    assert openssl is expected


def test_ip_looking_dns_san_does_not_match_an_ip_literal(pki: TestPKI, tmp_path: Path) -> None:
    leaf = _cert_for(pki, ["127.0.0.1"], dns_literal=True)
    assert hostname_matches(leaf.der, "127.0.0.1") is False
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(_server_context(tmp_path, [leaf], "srv"), _client_context(pki, tmp_path), "127.0.0.1")


def test_hostname_matches_bracketed_ipv6_and_trailing_dot(pki: TestPKI) -> None:
    leaf = pki.leaf(["mail.example.test", "::1"], issuer=pki.root)
    assert hostname_matches(leaf.der, "[::1]")
    assert hostname_matches(leaf.der, "mail.example.test.")
    assert not hostname_matches(leaf.der, "")
    assert not hostname_matches(leaf.der, ".")
    assert not hostname_matches(b"not a certificate", "mail.example.test")


@pytest.fixture(scope="module")
def fuzz_leaf(pki: TestPKI) -> bytes:
    return pki.leaf(
        ["mail.example.test", "*.wild.example.test", "127.0.0.1", "::1"],
        issuer=pki.root,
        common_name="cn.test",
    ).der


@settings(max_examples=500)
@given(name=st.text(max_size=80))
def test_hostname_matches_never_raises_on_arbitrary_names(fuzz_leaf: bytes, name: str) -> None:
    assert hostname_matches(fuzz_leaf, name) in (True, False)


@settings(max_examples=500)
@given(pattern=st.text(max_size=40), host=st.text(max_size=40))
def test_dns_pattern_matches_never_raises(pattern: str, host: str) -> None:
    assert dns_pattern_matches(pattern, host) in (True, False)


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)


@settings(max_examples=300)
@given(labels=st.lists(LABEL, min_size=3, max_size=6))
def test_wildcard_covers_exactly_one_left_most_label(labels: list[str]) -> None:
    host = ".".join(labels)
    rest = ".".join(labels[1:])
    assert dns_pattern_matches(host, host)
    assert dns_pattern_matches(f"*.{rest}", host)
    assert not dns_pattern_matches(f"*.{host}", host)  # needs one more label
    assert not dns_pattern_matches(f"*.{'.'.join(labels[2:])}", host)  # never two labels


# ---- classify_verify_error: OpenSSL's verify codes, and the chain when there is none -------------------


def _verify_error(code: int, message: str = "x") -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    exc.verify_code = code
    exc.verify_message = message
    return exc


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (10, "expired"),
        (9, "not_yet_valid"),
        (18, "self_signed"),
        (19, "untrusted"),
        (20, "untrusted"),
        (21, "untrusted"),
        (2, "untrusted"),
        (62, "hostname_mismatch"),
        (64, "hostname_mismatch"),
        (7, "other"),  # certificate signature failure
        (0, "other"),
    ],
)
def test_classify_by_openssl_verify_code(code: int, reason: str) -> None:
    assert classify_verify_error(_verify_error(code), [_info(2e9)], 1e9) == reason


def test_classify_finds_the_ssl_error_behind_wrapping_exceptions() -> None:
    try:
        try:
            raise _verify_error(10)
        except ssl.SSLError as inner:
            raise OSError("aiosmtplib-style wrapper") from inner
    except OSError as middle:
        outer = ProbeError("SMTP STARTTLS: certificate verification failed", reason="smtp_tls")
        outer.__cause__ = middle
    assert classify_verify_error(outer, [], 0.0) == "expired"


def test_classify_without_a_verify_code_judges_the_chain() -> None:
    now = 1_000_000.0
    assert classify_verify_error(None, [_info(now + 10), _info(now - 1)], now) == "expired"
    assert classify_verify_error(ssl.SSLError(1, "eof"), [_info(now + 10, now + 5)], now) == "not_yet_valid"
    assert classify_verify_error(None, [_info(now + 10, self_signed=True)], now) == "self_signed"
    assert classify_verify_error(None, [_info(now + 10)], now) == "other"
    assert classify_verify_error(None, [], now) == "other"
    assert {classify_verify_error(_verify_error(c), [], now) for c in range(100)} <= VERIFY_REASONS


@pytest.mark.parametrize(
    "case", ["expired", "not_yet_valid", "self_signed", "untrusted", "hostname_mismatch"]
)
def test_classify_real_openssl_failures(pki: TestPKI, inter: Issued, tmp_path: Path, case: str) -> None:
    names = ["mail.example.test"]
    chain: list[Issued]
    name = "mail.example.test"
    client = _client_context(pki, tmp_path)
    if case == "expired":
        chain = [pki.leaf(names, issuer=inter, not_before=pki.days(-9), not_after=pki.days(-1)), inter]
    elif case == "not_yet_valid":
        chain = [pki.leaf(names, issuer=inter, not_before=pki.days(2), not_after=pki.days(9)), inter]
    elif case == "self_signed":
        chain = [pki.leaf(names, issuer=None)]
    elif case == "untrusted":
        chain = [pki.leaf(names, issuer=inter), inter]
        client = ssl.create_default_context(cafile=str(TestPKI("stranger").write_ca(tmp_path / "other.pem")))
    else:
        chain = [pki.leaf(["other.example.test"], issuer=inter), inter]
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        handshake(_server_context(tmp_path, chain, "srv"), client, name)
    infos = [cert_info(c.der) for c in chain]
    assert classify_verify_error(info.value, infos, pki.now.timestamp()) == case


# ---- legacy versions ---------------------------------------------------------------------------------


def test_legacy_context_pins_one_version_without_verification() -> None:
    for version in LEGACY_VERSIONS.values():
        ctx = legacy_context(version)
        assert ctx.minimum_version == ctx.maximum_version == version
        assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_openssl_offers_matches_a_real_pinned_handshake(pki: TestPKI, tmp_path: Path) -> None:
    """``openssl_offers`` must be True exactly when a pinned client can really complete a handshake
    (with a server that allows it); on this machine DESIGN.md says TLS 1.0 and 1.1 work."""
    leaf = pki.leaf(["mail.example.test"], issuer=pki.root)
    assert openssl_offers(ssl.TLSVersion.TLSv1_2) and openssl_offers(ssl.TLSVersion.TLSv1_3)
    assert not openssl_offers(ssl.TLSVersion.SSLv3)
    for version in (*LEGACY_VERSIONS.values(), ssl.TLSVersion.TLSv1_2):
        server = _server_context(tmp_path, [leaf], "srv")
        server.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        server.set_ciphers("ALL:@SECLEVEL=0")
        try:
            pair = handshake(server, legacy_context(version), "mail.example.test")
            completed = pair.client.version() is not None
        except ssl.SSLError:
            completed = False
        assert openssl_offers(version) is completed, version
    assert openssl_offers(ssl.TLSVersion.TLSv1) and openssl_offers(ssl.TLSVersion.TLSv1_1)


# ---- facts_from_connection, presented_chain ------------------------------------------------------------


def _endpoint(name: str = "mail.example.test", **tls: str | bool) -> Endpoint:
    return Endpoint("127.0.0.1", 993, tls_mode="implicit", tls=TLSSettings(server_name=name, **tls))  # type: ignore[arg-type]


async def test_facts_from_a_verified_connection(pki: TestPKI, inter: Issued, tmp_path: Path) -> None:
    early = pki.ca("early inter", issuer=pki.root, not_before=pki.days(-1), not_after=pki.days(20))
    chain = [pki.leaf(["mail.example.test"], issuer=early, not_after=pki.days(60)), early]
    pair = handshake(
        _server_context(tmp_path, chain, "srv"), _client_context(pki, tmp_path), "mail.example.test"
    )
    facts = await facts_from_connection(pair.client, _endpoint(), "imap", "implicit")
    assert facts.endpoint == "127.0.0.1:993" and facts.protocol == "imap" and facts.mode == "implicit"
    assert facts.handshake_ok and facts.verified and facts.verify_reason is None
    assert facts.hostname_match is True and facts.starttls_offered is None
    assert facts.version == pair.client.version() and facts.cipher == pair.client.cipher()[0]  # type: ignore[index]
    assert [c.fingerprint_sha256 for c in facts.chain] == [cert_info(c.der).fingerprint_sha256 for c in chain]
    assert facts.leaf_not_after == pki.days(60).timestamp()
    assert facts.earliest_not_after == pki.days(20).timestamp()  # the intermediate, not the leaf
    assert facts.legacy == {"TLSv1": None, "TLSv1.1": None}
    starttls = await facts_from_connection(pair.client, _endpoint(), "smtp", "starttls")
    assert starttls.starttls_offered is True


async def test_facts_from_an_unverified_connection_say_why_it_would_fail(
    pki: TestPKI, tmp_path: Path
) -> None:
    chain = [pki.leaf(["other.example.test"], issuer=None)]
    insecure = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    pair = handshake(_server_context(tmp_path, chain, "srv"), insecure, "mail.example.test")
    facts = await facts_from_connection(pair.client, _endpoint(), "pop3", "implicit")
    assert facts.handshake_ok and not facts.verified
    assert facts.verify_reason == "self_signed" and facts.hostname_match is False
    assert len(facts.chain) == 1 and facts.chain[0].self_signed


class _LeafOnly:
    """An ssl object without any chain API: what an older or other Python would give."""

    def __init__(self, inner: ssl.SSLObject) -> None:
        self._inner = inner

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        return self._inner.getpeercert(binary_form=True)


def test_presented_chain_is_the_chain_as_sent_with_a_leaf_only_fallback(
    pki: TestPKI, inter: Issued, tmp_path: Path
) -> None:
    chain = [pki.leaf(["mail.example.test"], issuer=inter), inter]
    pair = handshake(
        _server_context(tmp_path, chain, "srv"), _client_context(pki, tmp_path), "mail.example.test"
    )
    assert presented_chain(pair.client) == [c.der for c in chain]
    assert presented_chain(_LeafOnly(pair.client)) == [chain[0].der]  # type: ignore[arg-type]


# ---- what a plain port offers --------------------------------------------------------------------------


def test_auth_before_tls_per_protocol() -> None:
    assert smtp_auth_offered({"pipelining": "", "starttls": "", "auth": "PLAIN LOGIN"})
    assert smtp_auth_offered({"auth": ""})  # aiosmtplib files old-style AUTH=LOGIN under "auth" too
    assert not smtp_auth_offered({"pipelining": "", "starttls": ""})
    assert not imap_auth_offered({"IMAP4rev1", "STARTTLS", "LOGINDISABLED"})
    assert imap_auth_offered({"IMAP4rev1", "STARTTLS"})  # LOGIN is allowed unless disabled
    assert imap_auth_offered({"IMAP4rev1", "STARTTLS", "LOGINDISABLED", "AUTH=PLAIN"})
    assert imap_auth_offered({"imap4rev1", "auth=plain", "logindisabled"})
    assert pop3_auth_offered({"STLS": [], "SASL": []}) is False
    assert pop3_auth_offered({"STLS": [], "USER": []}) is True
    assert pop3_auth_offered({"sasl": ["PLAIN"]}) is True
    assert pop3_auth_offered({}) is None  # no CAPA: cannot tell
