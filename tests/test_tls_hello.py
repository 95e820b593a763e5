"""Our ClientHellos and first-flight parser (probes.tls.hello).

The hellos are checked against real parsers: OpenSSL (a Python ``ssl`` server, and ``openssl
s_server`` where a server feature is needed: an OCSP staple, a 1024-bit DH group, a P-256-only or
ffdhe-only TLS 1.3 group list). The parser is pure and fuzzed: whatever the bytes, it returns a
Flight or raises HelloError, and the judge never calls an unread answer accepted or refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probes.tls import hello as h
from tests.mailstack._net import claim_ports
from tests.support.fakehello import handshake, parse_client_hello, record

# ---- the suite table -----------------------------------------------------------------------------------


def test_table_is_consistent() -> None:
    assert len(h.SUITES) == len({s.name for s in h.SUITES.values()})
    for s in h.SUITES.values():
        assert s.name.startswith("TLS_")
        assert s.tls13 == (s.code >> 8 == 0x13)
    by = {s.name: s for s in h.SUITES.values()}
    assert by["TLS_RSA_WITH_RC4_128_MD5"].classes == {"rc4"}
    assert by["TLS_RSA_WITH_3DES_EDE_CBC_SHA"].classes == {"3des", "cbc_only", "sha1_mac"}
    assert by["TLS_DH_anon_EXPORT_WITH_RC4_40_MD5"].classes == {"anon", "export", "rc4"}
    assert by["TLS_ECDHE_RSA_WITH_NULL_SHA"].classes == {"null", "sha1_mac"}
    assert by["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"].classes == frozenset()
    assert not by["TLS_RSA_WITH_AES_128_GCM_SHA256"].forward_secret
    assert not by["TLS_ECDH_RSA_WITH_AES_128_CBC_SHA"].forward_secret
    assert (
        by["TLS_DHE_RSA_WITH_AES_128_CBC_SHA"].forward_secret and by["TLS_DHE_RSA_WITH_AES_128_CBC_SHA"].ffdhe
    )
    # Every weak class has suites to offer; the weak ones come last in the offered order.
    for cls in h.WEAK:
        assert h.suites_where(lambda s, c=cls: c in s.classes)  # type: ignore[misc]
    first_weak = next(i for i, c in enumerate(h.ALL_TLS12) if h.SUITES[c].weak)
    assert all(h.SUITES[c].forward_secret for c in h.ALL_TLS12[:first_weak][:20])


def test_openssl_agrees_on_names_and_classes() -> None:
    """Every suite this OpenSSL knows has our code, and its key exchange/auth agree with ours."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    kx_of = {"Kx=ECDH": {"ECDHE", "ECDH_anon"}, "Kx=DH": {"DHE", "DH_anon"}, "Kx=RSA": {"RSA"}}
    checked = 0
    for c in ctx.get_ciphers():
        code = c["id"] & 0xFFFF
        suite = h.SUITES.get(code)
        if suite is None or suite.tls13:
            continue
        kx = kx_of.get(c["description"].split()[2])
        if kx is not None:
            assert suite.kx in kx, (suite.name, c["description"])
            checked += 1
        assert ("Au=None" in c["description"]) == suite.anon, suite.name
        assert ("Enc=None" in c["description"]) == suite.null, suite.name
    assert checked > 40


# ---- builders ------------------------------------------------------------------------------------------


def test_hello_structure() -> None:
    data, offer = h.client_hello(h.TLS12, h.ALL_TLS12, server_name="mail.example.test", status_request=True)
    kind, version, length = struct.unpack("!BHH", data[:5])
    assert (kind, version, length) == (22, h.TLS10, len(data) - 5)
    assert data[5] == 1 and int.from_bytes(data[6:9], "big") == length - 4
    assert not 256 <= length < 512  # RFC 7685 padding
    client_version, suites, _ = parse_client_hello(data[9:])
    assert client_version == h.TLS12 and tuple(suites) == h.ALL_TLS12 == offer.suites
    assert b"mail.example.test" in data


def test_no_sni_for_an_ip_literal_and_sslv3_has_no_extensions() -> None:
    for name in ("127.0.0.1", "::1", "[::1]", "", None):
        data, _ = h.client_hello(h.TLS12, (0xC02F,), server_name=name)
        _, _, exts = parse_client_hello(data[9:])
        assert h.EXT_SERVER_NAME not in exts["kinds"] and h.EXT_SUPPORTED_GROUPS in exts["kinds"]
        assert h.sni_name(name) is None
    _, _, exts = parse_client_hello(h.client_hello(h.TLS12, (0xC02F,), server_name="mx.example.")[0][9:])
    assert exts["kinds"][0] == h.EXT_SERVER_NAME and h.sni_name("mx.example.") == "mx.example"
    data, _ = h.client_hello(h.SSL3, (0x0005,), extensions=False)
    _, suites, exts = parse_client_hello(data[9:])
    assert suites == [0x0005, h.SCSV_RENEGOTIATION] and exts == {}
    assert len(data) == 5 + 4 + 2 + 32 + 1 + 2 + 4 + 2


def test_sslv2_hello_structure() -> None:
    data, offer = h.sslv2_client_hello(bytes(16))
    assert data[0] & 0x80 and ((data[0] & 0x7F) << 8 | data[1]) == len(data) - 2
    assert data[2] == 1 and data[3:5] == b"\x00\x02" and offer.sslv2
    specs = int.from_bytes(data[5:7], "big")
    assert specs == 3 * len(h.SSL2_CIPHERS)


# ---- against OpenSSL -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes]:
    """A self-signed RSA certificate (RSA: DHE-RSA needs one), its key and its DER."""
    d = tmp_path_factory.mktemp("hello")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return d / "cert.pem", d / "key.pem", cert.public_bytes(serialization.Encoding.DER)


def exchange(port: int, data: bytes, *, sslv2: bool = False) -> tuple[h.Flight, bool]:
    """Send one hello to 127.0.0.1:port and read the first flight (blocking; a test helper)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        buf, eof = b"", False
        while True:
            chunk = s.recv(65536)
            if not chunk:
                eof = True
                break
            buf += chunk
            if h.parse_flight(buf, sslv2=sslv2).complete:
                break
    return h.parse_flight(buf, eof=eof, sslv2=sslv2), eof


@contextlib.contextmanager
def python_server(cert: Path, key: Path) -> Iterator[tuple[int, list[str | None]]]:
    """An OpenSSL server (Python ssl) on loopback; yields its port and the SNI names it received."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    names: list[str | None] = []
    ctx.sni_callback = lambda _s, name, _c: names.append(name)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with contextlib.suppress(OSError, ssl.SSLError), ctx.wrap_socket(conn, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()[1], names
    finally:
        stop.set()
        srv.close()
        thread.join(5)


def test_openssl_reads_our_tls12_and_tls13_hellos(rsa_cert: tuple[Path, Path, bytes]) -> None:
    cert, key, der = rsa_cert
    with python_server(cert, key) as (port, names):
        data, offer = h.client_hello(
            h.TLS12, h.ALL_TLS12, server_name="mail.example.test", status_request=True, deflate=True
        )
        flight, _ = exchange(port, data)
        answer = h.judge(flight, offer)
        assert answer.verdict == "accepted" and answer.version == h.TLS12
        assert flight.certificates == [der] and flight.hello_done
        assert flight.compression == 0 and flight.secure_renegotiation is True
        assert flight.ecdh_curve in h.GROUPS
        assert names[-1] == "mail.example.test"

        data, offer = h.tls13_client_hello(server_name="mail.example.test")
        flight, _ = exchange(port, data)
        answer = h.judge(flight, offer)
        assert answer.verdict == "accepted" and answer.version == h.TLS13
        assert flight.key_share_group == h.X25519 and not flight.hrr

        data, offer = h.client_hello(h.TLS12, (0xC02F,), server_name="127.0.0.1")
        flight, _ = exchange(port, data)
        assert h.judge(flight, offer).verdict == "accepted" and names[-1] is None  # no SNI for an IP

        for version in (h.TLS11, h.TLS10, h.SSL3):
            data, offer = h.client_hello(version, h.ALL_TLS12, extensions=version != h.SSL3)
            flight, _ = exchange(port, data)
            assert h.judge(flight, offer).verdict == "refused"
        data, offer = h.sslv2_client_hello()
        flight, closed = exchange(port, data, sslv2=True)
        assert h.judge(flight, offer, closed=closed).verdict == "refused"


# A 1024-bit group made once with ``openssl dhparam 1024`` (made per run it costs seconds).
DH1024 = """\
-----BEGIN DH PARAMETERS-----
MIGHAoGBAOk2f3+vFlqjVovDvCoOCRf59MlJYGRq7YcBHxucjpUCh9+oAWDT3SP1
nMp+A5rwsPEDmS1f/3Z6xF+jmykHebaNp6YphxRXknEeaiMH5g0Yt9UU+Lzfkyfk
C3fjWkOK077n4FAXeZtR5uMKpS1HuyzqLfy3nSe5TICVZCvgym/HAgEC
-----END DH PARAMETERS-----
"""


@contextlib.contextmanager
def s_server(*args: str) -> Iterator[int]:
    """``openssl s_server`` on 127.0.0.1 (a claimed port) until the block ends."""
    port = claim_ports(1)[0]
    proc = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-quiet", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"s_server exited: {proc.stderr.read() if proc.stderr else ''!r}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def test_openssl_staples_and_dh_size(rsa_cert: tuple[Path, Path, bytes], tmp_path: Path) -> None:
    cert, key, _ = rsa_cert
    staple = tmp_path / "staple.der"
    staple.write_bytes(b"\x30\x03\x0a\x01\x01")  # OCSPResponse{malformedRequest}: s_server sends it as is
    dh = tmp_path / "dh1024.pem"
    dh.write_text(DH1024)
    common = ["-cert", str(cert), "-key", str(key), "-tls1_2"]
    with s_server(*common, "-status_file", str(staple), "-cipher", "DHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0",
                  "-dhparam", str(dh)) as port:  # fmt: skip
        data, offer = h.client_hello(
            h.TLS12, h.ALL_TLS12, server_name="mail.example.test", status_request=True
        )
        flight, _ = exchange(port, data)
        assert h.judge(flight, offer).verdict == "accepted"
        assert flight.suite == 0x009E and flight.dh_bits == 1024
        assert flight.ocsp == staple.read_bytes()
        assert flight.messages == [2, 11, 22, 12, 14]


@pytest.mark.parametrize(
    ("groups", "group", "hrr"), [("P-256", h.SECP256R1, False), ("ffdhe2048", 0x0100, True)]
)
def test_tls13_groups(rsa_cert: tuple[Path, Path, bytes], groups: str, group: int, hrr: bool) -> None:
    cert, key, _ = rsa_cert
    with s_server("-cert", str(cert), "-key", str(key), "-tls1_3", "-groups", groups) as port:
        data, offer = h.tls13_client_hello(server_name="mail.example.test")
        flight, _ = exchange(port, data)
        answer = h.judge(flight, offer)
        assert answer.verdict == "accepted" and flight.hrr is hrr and flight.key_share_group == group


# ---- the parser: pure, bounded, one error type ---------------------------------------------------------

_KINDS = st.sampled_from([2, 11, 12, 13, 14, 22, 4, 0])


@st.composite
def flights(draw: st.DrawFn) -> bytes:
    """Records of plausible shape with arbitrary contents (a ServerHello first, mostly)."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from([22, 22, 22, 21, 20, 23]))
        if kind == 22:
            body = b"".join(
                handshake(draw(_KINDS), draw(st.binary(max_size=120))) for _ in range(draw(st.integers(1, 3)))
            )
        else:
            body = draw(st.binary(max_size=4))
        out += record(kind, body, draw(st.sampled_from([h.TLS10, h.TLS12, 0x0300, 0x0304])))
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return out


def _check(data: bytes, eof: bool, sslv2: bool) -> None:
    try:
        flight = h.parse_flight(data, eof=eof, sslv2=sslv2)
    except h.HelloError:
        return
    for offer in (
        h.Offer(h.TLS12, h.ALL_TLS12),
        h.Offer(h.TLS13, h.TLS13_SUITES, min_version=h.TLS13, groups=h.OFFERED_GROUPS),
        h.Offer(h.SSL2, (), min_version=h.SSL2),
    ):
        answer = h.judge(flight, offer, closed=eof)
        if answer.verdict == "accepted" and not offer.sslv2:
            assert flight.suite in offer.suites and answer.version is not None
            assert offer.min_version <= answer.version <= offer.version


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=600), st.booleans(), st.booleans())
def test_fuzz_arbitrary_bytes(data: bytes, eof: bool, sslv2: bool) -> None:
    _check(data, eof, sslv2)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(flights(), st.booleans())
def test_fuzz_record_shaped(data: bytes, eof: bool) -> None:
    _check(data, eof, False)


def test_tls13_answers() -> None:
    def sh13(group: int, *, hrr: bool = False) -> bytes:
        share = struct.pack("!H", group) + (b"" if hrr else struct.pack("!H", 32) + bytes(32))
        exts = struct.pack("!HHH", h.EXT_SUPPORTED_VERSIONS, 2, h.TLS13)
        exts += struct.pack("!HH", h.EXT_KEY_SHARE, len(share)) + share
        rnd = h.HRR_RANDOM if hrr else bytes(32)
        body = struct.pack("!H", h.TLS12) + rnd + b"\x00" + struct.pack("!HBH", 0x1301, 0, len(exts)) + exts
        return record(22, handshake(2, body))

    _, offer = h.tls13_client_hello()
    assert h.judge(h.parse_flight(sh13(h.X25519)), offer).verdict == "accepted"
    assert h.judge(h.parse_flight(sh13(0x0100)), offer).verdict == "unknown"  # no share sent, no HRR
    hrr = h.parse_flight(sh13(0x0100, hrr=True))
    assert hrr.hrr and hrr.complete and h.judge(hrr, offer).verdict == "accepted"
    assert h.judge(h.parse_flight(sh13(0x9999, hrr=True)), offer).verdict == "unknown"
    assert h.judge(h.parse_flight(sh13(h.X25519)), h.Offer(h.TLS12, (0x1301,))).verdict == "unknown"


def test_limits() -> None:
    with pytest.raises(h.HelloError, match="record of"):
        h.parse_flight(struct.pack("!BHH", 22, h.TLS12, h.MAX_RECORD + 1))
    big = handshake(11, bytes(4)).replace(b"\x00\x00\x04", (h.MAX_MESSAGE + 1).to_bytes(3, "big"), 1)
    sh = handshake(2, struct.pack("!H", h.TLS12) + bytes(32) + b"\x00\xc0\x2f\x00")
    with pytest.raises(h.HelloError, match="handshake message of"):
        h.parse_flight(record(22, sh + big[:4]))
    with pytest.raises(h.HelloError, match="larger than"):
        h.parse_flight(bytes(h.MAX_FLIGHT + 1))
    # A record cut short waits for more; at the end of the stream it is an error.
    cut = record(22, sh)[:-3]
    assert not h.parse_flight(cut).complete
    with pytest.raises(h.HelloError, match="truncated"):
        h.parse_flight(cut, eof=True)


def test_judge_unoffered_and_alerts() -> None:
    sh = handshake(2, struct.pack("!H", h.TLS12) + bytes(32) + b"\x00\xc0\x2f\x00")
    flight = h.parse_flight(record(22, sh + handshake(14, b"")))
    assert h.judge(flight, h.Offer(h.TLS12, (0xC02F,))).verdict == "accepted"
    assert h.judge(flight, h.Offer(h.TLS12, (0xC030,))).verdict == "unknown"  # a suite not offered
    assert h.judge(flight, h.Offer(h.TLS11, (0xC02F,))).verdict == "unknown"  # a version not offered
    for desc, verdict in (
        (40, "refused"),
        (70, "refused"),
        (71, "refused"),
        (50, "unknown"),
        (80, "unknown"),
    ):
        alert = h.parse_flight(record(21, bytes([2, desc])))
        assert h.judge(alert, h.Offer(h.TLS12, (0xC02F,))).verdict == verdict
    warning = h.parse_flight(record(21, bytes([1, 112])) + record(22, sh + handshake(14, b"")))
    assert warning.complete and warning.version == h.TLS12  # a warning alert does not end the flight
