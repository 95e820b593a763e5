"""The TLS scan (probes.tls.scan) against real servers, with ground truth from OpenSSL itself.

Real Postfix and Dovecot (the session ``mailstack``) over every port: SMTP STARTTLS, submission,
submissions (465), IMAP STARTTLS/993, POP3 STLS/995. What the scan reports is compared with what
Python's ``ssl`` (OpenSSL 3) sees on the same port: the versions it can negotiate, the suite it
negotiates when it offers the scan's own order, and the chain it is served. In-process fakes
(tests/support/fakehello.py) only for what no server here can offer (SSLv2, SSLv3, EXPORT) and for
faults (a suite never offered, garbage, truncated or oversize records, 421 after N connections, silence).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from probes.errors import ProbeError
from probes.recorder import Recorder
from probes.tls import hello as h
from probes.tls.audit import TLSCheckSettings, openssl_offers
from probes.tls.chain import Anchors, chain_facts, staple_status, trust_anchors
from probes.tls.scan import INFO_CLASSES, WEAK_CLASSES, ScanCache, ScanFacts, scan, scan_key
from probes.wire.certs import presented_chain
from probes.wire.net import Endpoint, TLSSettings
from probes.wire.slots import ServerSlots
from tests.mailstack import SERVER_NAME, MailStack
from tests.mailstack.variants import TestPKI, VariantSet, reap_orphans
from tests.support import gnutlsns
from tests.support.fakehello import FakeHello, fake_hello
from tests.support.faultservers import refused_port
from tests.support.tlsaudit import NAMES, SOURCE

pytestmark = pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")

PORTS = {
    "smtp": ("smtp", "starttls"),
    "submission": ("smtp", "starttls"),
    "submissions": ("smtp", "implicit"),
    "imap": ("imap", "starttls"),
    "imaps": ("imap", "implicit"),
    "pop3": ("pop3", "starttls"),
    "pop3s": ("pop3", "implicit"),
}


def settings_for(host: str, port: int, protocol: str, mode: str, **kw: object) -> TLSCheckSettings:
    ep = Endpoint(
        host,
        port,
        tls_mode=mode,  # type: ignore[arg-type]
        tls=TLSSettings(server_name=SERVER_NAME),
        source_address=SOURCE,
    )
    return TLSCheckSettings(ep, protocol, timeout=10.0, **kw)  # type: ignore[arg-type]


def openssl_names() -> dict[int, str]:
    """IANA code -> OpenSSL name of every suite this OpenSSL knows (TLS 1.2 and below)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    return {c["id"] & 0xFFFF: c["name"] for c in ctx.get_ciphers() if c["protocol"] != "TLSv1.3"}


@contextlib.contextmanager
def reference(
    settings: TLSCheckSettings, version: ssl.TLSVersion, ciphers: str | None = None
) -> Iterator[ssl.SSLSocket]:
    """Python's ssl on the same port (STARTTLS done by hand), pinned to ``version``."""
    ep = settings.endpoint
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    if ciphers:
        ctx.set_ciphers(ciphers)
    raw = socket.create_connection((ep.host, ep.port), timeout=10, source_address=(SOURCE, 0))
    with raw:
        if ep.tls_mode == "starttls":
            starttls_by_hand(raw, settings.protocol)
        with ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
            yield tls


def starttls_by_hand(sock: socket.socket, protocol: str) -> None:
    f = sock.makefile("rb")

    def smtp_reply() -> bytes:
        while True:
            line = f.readline()
            if line[3:4] != b"-":
                return line

    if protocol == "smtp":
        smtp_reply()
        sock.sendall(b"EHLO scan.test\r\n")
        smtp_reply()
        sock.sendall(b"STARTTLS\r\n")
        assert smtp_reply().startswith(b"220")
    elif protocol == "imap":
        f.readline()
        sock.sendall(b"a STARTTLS\r\n")
        while not (line := f.readline()).startswith(b"a "):
            pass
        assert line.startswith(b"a OK")
    else:
        f.readline()
        sock.sendall(b"STLS\r\n")
        assert f.readline().startswith(b"+OK")
    f.detach() if hasattr(f, "detach") else None


def reference_accepts(settings: TLSCheckSettings, version: ssl.TLSVersion) -> bool:
    try:
        with reference(settings, version, "ALL:@SECLEVEL=0" if version < ssl.TLSVersion.TLSv1_2 else None):
            return True
    except ssl.SSLError:
        return False


def in_class(cls: str) -> Callable[[h.Suite], bool]:
    return lambda suite: cls in suite.classes


def reference_takes(settings: TLSCheckSettings, pred: Callable[[h.Suite], bool]) -> bool:
    """OpenSSL, offering (TLS 1.2) exactly the table's suites that ``pred`` selects, gets a session."""
    names = openssl_names()
    chosen = [names[c] for c in h.suites_where(pred) if c in names]
    if not chosen:
        return False
    try:
        with reference(settings, ssl.TLSVersion.TLSv1_2, ":".join(chosen) + ":@SECLEVEL=0"):
            return True
    except ssl.SSLError:
        return False


# ---- the real stack ------------------------------------------------------------------------------------


@pytest.mark.parametrize("port_name", list(PORTS))
async def test_real_stack_port(mailstack: MailStack, port_name: str) -> None:
    protocol, mode = PORTS[port_name]
    settings = settings_for(mailstack.host, mailstack.ports[port_name], protocol, mode)
    transcript: list[str] = []
    cpu = time.process_time()
    facts = await scan(settings, Recorder(transcript=transcript))
    cpu = time.process_time() - cpu
    print("\n".join(transcript))
    print(f"scan cost {port_name}: {facts.connections} connections, {cpu * 1000:.0f} ms CPU")  # not asserted

    assert facts.errors == {}
    assert facts.checked_at is not None
    assert facts.protocols["SSLv2"] is False
    assert facts.protocols["SSLv3"] is False
    assert facts.protocols["TLSv1.2"] is True
    assert facts.protocols["TLSv1.3"] is True
    for name, version in (("TLSv1", ssl.TLSVersion.TLSv1), ("TLSv1.1", ssl.TLSVersion.TLSv1_1)):
        if openssl_offers(version):
            assert facts.protocols[name] is reference_accepts(settings, version), name
    # Every class, forward secrecy and DHE as OpenSSL sees them offering exactly that class's suites
    # (RC4, 3DES and EXPORT: this OpenSSL knows none, nor do the servers built on it).
    for cls in WEAK_CLASSES + INFO_CLASSES:
        assert facts.classes[cls] is reference_takes(settings, in_class(cls)), cls
    assert facts.non_fs is reference_takes(settings, lambda s: not s.forward_secret)
    assert facts.dhe is reference_takes(settings, lambda s: s.ffdhe)
    assert facts.secure_renegotiation is True
    assert facts.compression is False
    assert facts.stapled is False  # nothing configured to staple
    assert facts.tls13_group == "x25519"
    assert facts.complete
    assert facts.connections <= 11, facts.connections

    # The preferred suites are what OpenSSL negotiates when it offers the scan's own order.
    names = openssl_names()
    order = ":".join(names[c] for c in h.ALL_TLS12 if c in names)
    with reference(settings, ssl.TLSVersion.TLSv1_2, order + ":@SECLEVEL=0") as tls:
        cipher = tls.cipher()
        assert cipher is not None and facts.preferred["TLSv1.2"] == h.suite_name(
            next(c for c, n in names.items() if n == cipher[0])
        )
        assert facts.served_chain == presented_chain(tls)
    with reference(settings, ssl.TLSVersion.TLSv1_3) as tls:
        cipher = tls.cipher()
        assert cipher is not None and facts.preferred["TLSv1.3"] == cipher[0]


async def test_one_slot_for_the_whole_scan(mailstack: MailStack) -> None:
    slots = ServerSlots(default_limit=5)
    settings = settings_for(mailstack.host, mailstack.imaps_port, "imap", "implicit", slots=slots)
    rec = Recorder()
    facts = await scan(settings, rec)
    assert facts.connections >= 10
    for key in ServerSlots.keys(settings.endpoint, "imap"):
        assert slots.high_water(key) == 1
        assert slots.in_use(key) == 0
    assert "tls_scan" in rec.phases and "queue" in rec.phases


# ---- the cache -----------------------------------------------------------------------------------------


def test_cache_keeps_complete_scans_only() -> None:
    now = [1000.0]
    cache = ScanCache(clock=lambda: now[0], max_entries=2)
    settings = settings_for("127.0.0.1", 1, "smtp", "starttls")
    key = scan_key(settings)
    done = ScanFacts(checked_at=now[0], protocols=dict.fromkeys(h.VERSION_NAMES.values(), False))
    done.classes = dict.fromkeys(WEAK_CLASSES + INFO_CLASSES, False)
    done.non_fs = False
    assert done.complete
    assert cache.put(key, done, "fp1")
    assert cache.fresh(key, "fp1", 100) is done
    assert cache.fresh(key, "fp2", 100) is None  # the certificate changed
    now[0] += 100
    assert cache.fresh(key, "fp1", 100) is None  # too old
    partial = ScanFacts(checked_at=now[0])
    assert not cache.put(key, partial, "fp1")
    assert cache.fresh(key, "fp1", 1e9) is None  # the old one is forgotten too
    for i in range(3):
        cache.put(("k", str(i)), done, None)
    assert len(cache) == 2


# ---- in-process fakes: what no server here offers, and faults -------------------------------------------


def fake_settings(port: int, protocol: str = "tcp", timeout: float = 5.0) -> TLSCheckSettings:
    mode = "implicit" if protocol == "tcp" else "starttls"
    ep = Endpoint("127.0.0.1", port, tls_mode=mode, tls=TLSSettings(server_name=SERVER_NAME))  # type: ignore[arg-type]
    return TLSCheckSettings(ep, protocol, timeout=timeout)


async def scan_fake(fake: FakeHello, timeout: float = 5.0) -> ScanFacts:
    async with fake_hello(fake) as port:
        facts = await scan(fake_settings(port, fake.protocol, timeout), Recorder(transcript=[]))
    assert facts.connections == fake.connections  # every connection the scan counted reached the server
    return facts


def known(facts: ScanFacts) -> list[bool | None]:
    return [*facts.protocols.values(), *facts.classes.values(), facts.non_fs, facts.dhe]


async def test_sslv2_only_server() -> None:
    facts = await scan_fake(FakeHello(versions=frozenset({h.SSL2}), sslv2_ciphers=(0x010080, 0x020080)))
    assert facts.protocols == dict.fromkeys(h.VERSION_NAMES.values(), False) | {"SSLv2": True}
    # The SSLv2 SERVER-HELLO lists RC4 and RC4-EXPORT40; no TLS version, so no TLS suite of any class.
    assert facts.classes == {
        "null": False, "anon": False, "export": True, "rc4": True, "3des": False,
        "cbc_only": False, "sha1_mac": False,
    }  # fmt: skip
    assert facts.non_fs is False and facts.errors == {}
    assert facts.connections == 6


async def test_sslv3_only_server_with_rc4_3des_export() -> None:
    fake = FakeHello(versions=frozenset({h.SSL3}), suites=(0x0005, 0x000A, 0x0003, 0x002F))
    facts = await scan_fake(fake)
    assert facts.protocols == dict.fromkeys(h.VERSION_NAMES.values(), False) | {"SSLv3": True}
    assert facts.preferred == {"SSLv3": "TLS_RSA_WITH_RC4_128_SHA"}
    assert facts.classes == {
        "null": False, "anon": False, "export": True, "rc4": True, "3des": True,
        "cbc_only": True, "sha1_mac": True,
    }  # fmt: skip
    assert facts.non_fs is True and facts.dhe is False and facts.errors == {}
    assert facts.connections == 9
    # The weak hellos went out as SSLv3 hellos (the highest version the server takes), no extensions.
    weak = [x for x in fake.hellos[5:] if x[0] == 22]
    assert weak and all(x[9:11] == b"\x03\x00" for x in weak)


async def test_silent_refusals_count_once_the_server_answered_a_hello() -> None:
    """A TLS 1.3-only server that refuses by closing (as Dovecot does): the TLS 1.2 hello, closed before
    any answer, is refused once the TLS 1.3 hello has been answered; so is every later close."""
    fake = FakeHello(versions=frozenset({h.TLS13}), suites=(0x1301,), refuse_by_closing=True)
    facts = await scan_fake(fake)
    assert facts.protocols == dict.fromkeys(h.VERSION_NAMES.values(), False) | {"TLSv1.3": True}
    assert facts.errors == {} and facts.complete
    assert facts.connections == 6  # nothing up to TLS 1.2: no class needs a hello


async def test_a_server_that_closes_every_hello_is_unknown() -> None:
    facts = await scan_fake(FakeHello(versions=frozenset(), refuse_by_closing=True))
    assert all(v is None for v in known(facts))
    assert facts.errors["TLSv1.2"] == "connection closed without an answer"


async def test_dhe_group_size() -> None:
    facts = await scan_fake(FakeHello(suites=(0x0033,), dh_bits=1024))
    assert facts.dhe is True and facts.dh_bits == 1024
    assert facts.preferred == {"TLSv1.2": "TLS_DHE_RSA_WITH_AES_128_CBC_SHA"}
    assert facts.classes["cbc_only"] is True and facts.classes["sha1_mac"] is True
    assert facts.non_fs is False


@pytest.mark.parametrize(
    ("fault", "why"),
    [
        ("unoffered_suite", "not offered"),
        ("unoffered_version", "not offered"),
        ("garbage", "unreadable answer"),
        ("truncated", "unreadable answer"),
        ("oversize", "unreadable answer"),
        ("reset", "connection lost"),
    ],
)
async def test_a_server_we_cannot_read_is_unknown_never_refused(fault: str, why: str) -> None:
    facts = await scan_fake(FakeHello(fault=fault))  # type: ignore[arg-type]
    # Nothing read from a bad answer is ever True or False; the versions the fake really refuses
    # (with an alert, or SSLv2 by closing) may be False.
    assert facts.protocols["TLSv1.2"] is None
    assert True not in facts.protocols.values()
    assert all(v is None for v in facts.classes.values())
    assert facts.non_fs is None and facts.dhe is None and facts.preferred == {}
    assert why in facts.errors["TLSv1.2"]
    assert not facts.complete


async def test_rate_limit_421_is_unknown_and_stops() -> None:
    fake = FakeHello(protocol="smtp", versions=frozenset({h.TLS12, h.TLS13}), refuse_after=3)
    fake.suites = (0x1302, 0xC02F)
    facts = await scan_fake(fake)
    assert facts.protocols["TLSv1.2"] is True and facts.protocols["TLSv1.3"] is True
    assert facts.rate_limited
    assert facts.connections == 3  # the third got 421: nothing more was tried
    assert "421" in facts.errors["TLSv1.1"]
    assert all(facts.protocols[v] is None for v in ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1"))
    assert all(v is None for v in facts.classes.values()) and facts.non_fs is None
    assert all(e.startswith("not tried") for k, e in facts.errors.items() if k != "TLSv1.1")


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_refusal_before_tls_is_unknown(protocol: str) -> None:
    facts = await scan_fake(FakeHello(protocol=protocol, refuse_after=1))  # type: ignore[arg-type]
    assert facts.connections == 1 and facts.rate_limited
    assert all(v is None for v in known(facts))


async def test_starttls_dialogues_reach_tls() -> None:
    protocol: Literal["smtp", "imap", "pop3"]
    for protocol in ("smtp", "imap", "pop3"):
        facts = await scan_fake(FakeHello(protocol=protocol))
        assert facts.protocols["TLSv1.2"] is True and facts.errors == {}, protocol


async def test_silent_listener_times_out_as_unknown() -> None:
    facts = await scan_fake(FakeHello(fault="silent"), timeout=0.5)
    assert all(v is None for v in known(facts))
    assert facts.connections == 2  # two unanswered hellos in a row end the scan
    assert "no complete answer" in facts.errors["TLSv1.2"]


@pytest.mark.parametrize(
    ("fault", "why"), [("drip_banner", "no STARTTLS within"), ("long_line", "line longer")]
)
async def test_a_bad_dialogue_before_tls_stops_the_scan(fault: str, why: str) -> None:
    facts = await scan_fake(FakeHello(protocol="smtp", fault=fault), timeout=0.5)  # type: ignore[arg-type]
    assert facts.connections == 1 and all(v is None for v in known(facts))
    assert why in facts.errors["TLSv1.2"] and not facts.rate_limited


async def test_bad_settings_are_config_errors() -> None:
    for settings in (
        TLSCheckSettings(Endpoint("127.0.0.1", 1, "starttls"), "tcp"),
        TLSCheckSettings(Endpoint("127.0.0.1", 1, "none"), "smtp"),
        TLSCheckSettings(Endpoint("127.0.0.1", 1, "implicit"), "ftp"),
    ):
        with pytest.raises(ProbeError) as info:
            await scan(settings, Recorder())
        assert info.value.reason == "config"


async def test_nothing_listening_is_unknown() -> None:
    port = refused_port()
    facts = await scan(fake_settings(port), Recorder())
    assert facts.connections == 1 and all(v is None for v in known(facts))
    assert "cannot connect" in facts.errors["TLSv1.2"]


# ---- GnuTLS: RC4, 3DES, NULL, anonymous and a staple, for real -----------------------------------------


@pytest.mark.skipif(not gnutlsns.available(), reason="gnutls-serv or unprivileged namespaces unavailable")
def test_gnutls_weak_classes_and_staple(tmp_path: Path) -> None:
    pki = TestPKI("gnutls scan")
    leaf = pki.leaf(["mail.example.test"], issuer=pki.root, common_name="mail.example.test")
    (tmp_path / "cert.pem").write_bytes(leaf.pem)
    (tmp_path / "key.pem").write_bytes(
        leaf.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    response = (
        ocsp.OCSPResponseBuilder()
        .add_response(
            cert=leaf.cert,
            issuer=pki.root.cert,
            algorithm=hashes.SHA1(),
            cert_status=ocsp.OCSPCertStatus.GOOD,
            this_update=now - dt.timedelta(hours=1),
            next_update=now + dt.timedelta(days=1),
            revocation_time=None,
            revocation_reason=None,
        )
        .responder_id(ocsp.OCSPResponderEncoding.HASH, pki.root.cert)
        .sign(pki.root.key, hashes.SHA256())
    )
    (tmp_path / "ocsp.der").write_bytes(response.public_bytes(serialization.Encoding.DER))
    priority = "NORMAL:+ARCFOUR-128:+3DES-CBC:+ANON-ECDH:+NULL:+VERS-TLS1.0:+VERS-TLS1.1"
    facts = gnutlsns.scan_in_namespace(tmp_path, priority)
    print("\n".join(facts["transcript"]))
    # GnuTLS 3.7 turns TLS 1.3 off when +NULL is in the priority (its own gnutls-cli gets a fatal alert
    # for TLS 1.3 too): TLS 1.3 False is the server's answer, not our hello's fault.
    assert facts["protocols"] == {
        "SSLv2": False, "SSLv3": False, "TLSv1": True, "TLSv1.1": True, "TLSv1.2": True, "TLSv1.3": False,
    }  # fmt: skip
    assert facts["classes"] == {
        "null": True, "anon": True, "export": False, "rc4": True, "3des": True,
        "cbc_only": True, "sha1_mac": True,
    }  # fmt: skip
    assert facts["errors"] == {}
    assert facts["connections"] <= 14
    served = [base64.b64decode(c) for c in facts["served_chain"]]
    assert served == [leaf.der]
    assert facts["stapled"] is True
    staple = base64.b64decode(facts["ocsp_staple"])
    chain = chain_facts(served, Anchors.of([pki.root.cert]))
    assert chain.complete is True and chain.issuer == pki.root.der
    assert staple_status(staple, leaf.der, chain.issuer, time.time()) == "good"


# ---- served chains of a real Dovecot: complete, missing, misordered, root sent --------------------------


@pytest.fixture(scope="module")
def chain_variants(mailstack: MailStack) -> Iterator[VariantSet]:
    reap_orphans()
    pki = TestPKI("scan chains")
    inter = pki.ca("scan intermediate", issuer=pki.root, not_before=pki.days(-1), not_after=pki.days(900))
    sub = pki.ca("scan sub-intermediate", issuer=inter, not_before=pki.days(-1), not_after=pki.days(800))
    leaf = pki.leaf(NAMES, issuer=sub, common_name=SERVER_NAME)
    vs = VariantSet(mailstack, pki)
    vs.add("complete", [leaf, sub, inter], dovecot_ports=("imaps",))
    vs.add("missing", [leaf, inter], dovecot_ports=("imaps",))
    vs.add("misordered", [leaf, inter, sub], dovecot_ports=("imaps",))
    vs.add("rootsent", [leaf, sub, inter, pki.root], dovecot_ports=("imaps",))
    with vs:
        yield vs


@pytest.mark.parametrize(
    ("name", "complete", "ordered", "superfluous", "anchor_sent"),
    [
        ("complete", True, True, 0, False),
        ("missing", False, True, 1, False),
        ("misordered", True, False, 0, False),
        ("rootsent", True, True, 0, True),
    ],
)
async def test_served_chain_facts(
    chain_variants: VariantSet, name: str, complete: bool, ordered: bool, superfluous: int, anchor_sent: bool
) -> None:
    v = chain_variants.variants[name]
    settings = settings_for(v.host, v.ports["imaps"], "imap", "implicit")
    facts = await scan(settings, Recorder())
    assert facts.served_chain == [c.der for c in v.chain]  # as sent, in the order sent
    chain = chain_facts(facts.served_chain, trust_anchors(str(chain_variants.ca_file)))
    assert (chain.complete, chain.ordered, chain.superfluous, chain.anchor_sent) == (
        complete, ordered, superfluous, anchor_sent,
    )  # fmt: skip
    # What OpenSSL's own verification says of the same chain (no AIA fetching either).
    ctx = ssl.create_default_context(cafile=str(chain_variants.ca_file))
    try:
        with (
            socket.create_connection((v.host, v.ports["imaps"]), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=SERVER_NAME),
        ):
            verified = True
    except ssl.SSLCertVerificationError:
        verified = False
    assert verified is complete
