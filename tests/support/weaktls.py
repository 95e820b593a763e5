"""Real OpenSSL servers (Python's ``ssl``) on loopback with exactly the TLS parameters a test names, and a
real OCSP responder: the ground truth of "the handshake's parameters were refused, the certificate is
fine" (RSA key exchange only, DHE with a 1024-bit group at ``@SECLEVEL=0``) and of "the certificate is
revoked" (issue 21).

The certificates are RSA (DHE-RSA and RSA key exchange need an RSA key), issued by a
:class:`~tests.mailstack.variants.TestPKI` intermediate, so a client that trusts the PKI's root verifies
them, and optionally name an OCSP responder in their AIA.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
import threading
import warnings
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dh, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from tests.mailstack._net import claim_ports
from tests.mailstack.variants import Issued, TestPKI

# RFC 2409 §6.2, the second Oakley group: the 1024-bit MODP group many old servers still offer.
OAKLEY_GROUP_2 = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF",
    16,
)
DHE_ONLY = "DHE-RSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0"
RSA_KX_ONLY = "AES256-GCM-SHA384:AES128-GCM-SHA256:AES256-SHA256:AES128-SHA256"


@dataclass
class RSALeaf:
    """A server certificate with an RSA key, and the files a server context loads."""

    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    chain_file: Path  # leaf then intermediate, PEM
    key_file: Path

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)


def rsa_leaf(
    pki: TestPKI, issuer: Issued, names: Sequence[str], directory: Path, *, ocsp_url: str | None = None
) -> RSALeaf:
    """An RSA-2048 leaf for DNS ``names`` signed by ``issuer``; its AIA names ``ocsp_url`` if given."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, pki.name),
            x509.NameAttribute(NameOID.COMMON_NAME, names[0]),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(pki.days(-1))
        .not_valid_after(pki.days(90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    if ocsp_url is not None:
        aia = x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
        )
        builder = builder.add_extension(x509.AuthorityInformationAccess([aia]), critical=False)
    cert = builder.sign(issuer.key, hashes.SHA256())
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"rsa-{cert.serial_number:x}"
    chain_file, key_file = stem.with_suffix(".pem"), stem.with_suffix(".key")
    chain_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + issuer.pem)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_file.chmod(0o600)
    return RSALeaf(cert, key, chain_file, key_file)


def write_dh_params(path: Path, prime: int = OAKLEY_GROUP_2) -> Path:
    """PKCS#3 DH parameters (generator 2) for ``ssl.SSLContext.load_dh_params``."""
    with warnings.catch_warnings():  # cryptography deprecates finite-field DH: old servers are the point
        warnings.simplefilter("ignore")
        params = dh.DHParameterNumbers(prime, 2).parameters()
    path.write_bytes(params.parameter_bytes(serialization.Encoding.PEM, serialization.ParameterFormat.PKCS3))
    return path


def server_context(
    leaf: RSALeaf, *, ciphers: str, max_version: ssl.TLSVersion, dh_params: Path | None = None
) -> ssl.SSLContext:
    """A server context that offers only ``ciphers`` up to ``max_version`` (TLS 1.2 keeps TLS 1.3's
    suites, which ``set_ciphers`` cannot remove, out of the way)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = max_version
    ctx.set_ciphers(ciphers)
    if dh_params is not None:
        ctx.load_dh_params(str(dh_params))
    ctx.load_cert_chain(str(leaf.chain_file), str(leaf.key_file))
    return ctx


@contextlib.asynccontextmanager
async def serve_tls(ctx: ssl.SSLContext, protocol: str, *, sessions: int | None = None) -> AsyncIterator[int]:
    """Serve on 127.0.0.1 (a free port) until the block ends; yields the port. ``tcp``: implicit TLS and
    nothing more; ``smtp``: a plain SMTP dialogue offering STARTTLS, then EHLO/QUIT under TLS; with
    ``sessions``, every SMTP session after that many is greeted ``421`` (Postfix's connection rate limit).

    Blocking sockets in threads, as a real server's OpenSSL does it: a refused handshake ends with the
    server's alert on the wire (asyncio's server side may drop it when it closes the transport)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    open_conns: set[socket.socket] = set()
    count = [0]  # SMTP sessions so far

    def session(conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            if protocol == "tcp":
                tls = ctx.wrap_socket(conn, server_side=True)
                open_conns.add(tls)
                while tls.recv(4096):
                    pass
                return
            _smtp(conn)
        except (OSError, ssl.SSLError):
            pass  # the client refused our parameters, or closed: that is what is under test
        finally:
            conn.close()

    def _smtp(conn: socket.socket) -> None:
        sock: socket.socket = conn
        reader = sock.makefile("rb")
        count[0] += 1
        if sessions is not None and count[0] > sessions:
            sock.sendall(b"421 4.7.0 weak.example.test Error: too many connections from 127.0.0.1\r\n")
            return
        sock.sendall(b"220 weak.example.test ESMTP\r\n")
        secured = False
        while line := reader.readline(1024):
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb in (b"EHLO", b"HELO"):
                offer = b"" if secured else b"250-STARTTLS\r\n"
                sock.sendall(b"250-weak.example.test\r\n" + offer + b"250 8BITMIME\r\n")
            elif verb == b"STARTTLS" and not secured:
                sock.sendall(b"220 go ahead\r\n")
                sock = ctx.wrap_socket(conn, server_side=True)
                open_conns.add(sock)
                reader = sock.makefile("rb")
                secured = True
            elif verb == b"QUIT":
                sock.sendall(b"221 bye\r\n")
                return
            else:
                sock.sendall(b"502 unknown\r\n")

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            open_conns.add(conn)
            threading.Thread(target=session, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        await asyncio.to_thread(acceptor.join, 5)
        listener.close()
        for conn in list(open_conns):
            with contextlib.suppress(OSError):
                conn.close()


@dataclass
class OCSPResponder:
    """A real OCSP responder over HTTP on 127.0.0.1, answers signed by the issuer itself."""

    issuer: Issued
    port: int = 0
    table: dict[int, str] = field(default_factory=dict)  # serial -> "good" | "revoked" (else unknown)
    issued: dict[int, x509.Certificate] = field(default_factory=dict)
    asked: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def answer(self, cert: x509.Certificate, status: str) -> None:
        self.table[cert.serial_number] = status
        self.issued[cert.serial_number] = cert

    def response(self, cert: x509.Certificate, status: str) -> bytes:
        """A signed OCSPResponse (DER) for ``cert``: what a responder answers and a server staples."""
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        revoked = status == "revoked"
        cert_status = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED}.get(
            status, ocsp.OCSPCertStatus.UNKNOWN
        )
        built = (
            ocsp.OCSPResponseBuilder()
            .add_response(
                cert=cert,
                issuer=self.issuer.cert,
                algorithm=hashes.SHA1(),
                cert_status=cert_status,
                this_update=now - dt.timedelta(minutes=1),
                next_update=now + dt.timedelta(hours=1),
                revocation_time=now - dt.timedelta(days=1) if revoked else None,
                revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, self.issuer.cert)
            .sign(self.issuer.key, hashes.SHA256())
        )
        return built.public_bytes(serialization.Encoding.DER)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[OCSPResponder]:
        async def handle(request: web.Request) -> web.Response:
            req = ocsp.load_der_ocsp_request(await request.read())
            self.asked.append(req.serial_number)
            cert = self.issued[req.serial_number]
            body = self.response(cert, self.table.get(req.serial_number, "unknown"))
            return web.Response(body=body, content_type="application/ocsp-response")

        app = web.Application()
        app.router.add_post("/", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        if self.port == 0:
            self.port = claim_ports(1)[0]
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        try:
            yield self
        finally:
            await runner.cleanup()
