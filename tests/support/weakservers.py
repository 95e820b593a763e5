"""Real mail servers configured weak, one weakness at a time, for issue 21's TLS scan matrix.

Postfix smtpd (SMTP STARTTLS) and Dovecot (IMAP/POP3 STARTTLS, IMAPS) are configured through their own
settings (tests/mailstack/variants.py renders them): TLS 1.0/1.1, NULL, anonymous, RSA-only key exchange,
DHE with a 1024-bit group, a chain missing its intermediate, a misordered chain, a superfluous certificate.
What OpenSSL 3 cannot offer any more, GnuTLS still can: ``gnutls-serv`` (implicit TLS) serves RC4, 3DES
and stapled OCSP responses (good, revoked) built here with ``cryptography``. ``gnutls-serv`` binds the
wildcard address, so it runs jailed in its own network namespace behind a loopback relay
(tests/support/nsrelay.py), which also counts the connections it is sent.

SSLv2, SSLv3 and EXPORT suites: no server on this machine can offer them (OpenSSL 3 and GnuTLS 3.7 dropped
them); issue 21's in-process fake (tests/support/fakehello.py, from the scanner's branch) covers those.

Each weak server is a :class:`Weak` (what it is meant to show), served on one or more :class:`Target`
endpoints (one per protocol).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import datetime as dt
import ipaddress
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.mailstack import SERVER_NAME, MailStack
from tests.mailstack._net import claim_ports
from tests.mailstack.variants import Issued, TestPKI, VariantSet, reap_orphans

ROOT = Path(__file__).resolve().parents[2]
NAMES = (SERVER_NAME, "localhost", "127.0.0.1")
GNUTLS_HOSTS = tuple(f"127.0.0.{n}" for n in range(41, 60))  # this matrix's loopback addresses

# RFC 2409 section 6.2, the 1024-bit MODP group ("Oakley group 2"): the DH group of old mail servers.
MODP1024_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD"
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE65381FFFFFFFFFFFFFFFF",
    16,
)

# Protocol of an endpoint -> (testssl --starttls, sslscan flag); "tls" is implicit TLS.
STARTTLS = {"smtp": "smtp", "imap": "imap", "pop3": "pop3", "imaps": None, "tls": None}


@dataclass(frozen=True)
class Weak:
    """One weak server: its name, the software, and what it shows (the facts the matrix checks)."""

    name: str
    software: str  # postfix+dovecot | gnutls
    shows: str  # one line, for the report table


@dataclass(frozen=True)
class Target:
    """One endpoint of a weak server, as the scanner and the oracle see it."""

    weak: str  # Weak.name
    protocol: str  # smtp | imap | pop3 | imaps | tls (implicit, gnutls-serv)
    host: str
    port: int
    software: str  # postfix | dovecot | gnutls

    @property
    def id(self) -> str:
        return f"{self.weak}-{self.protocol}"

    @property
    def starttls(self) -> str | None:
        return STARTTLS[self.protocol]

    @property
    def tls_mode(self) -> str:
        return "starttls" if self.starttls else "implicit"


WEAK: tuple[Weak, ...] = (
    Weak("baseline", "postfix+dovecot", "TLS 1.2+, FS suites, full chain (the control)"),
    Weak("legacy", "postfix+dovecot", "TLS 1.0 and 1.1 accepted (@SECLEVEL=0)"),
    Weak("null", "postfix+dovecot", "NULL (no encryption) suites accepted"),
    Weak("anon", "postfix+dovecot", "anonymous (aNULL) suites accepted"),
    Weak("nofs", "postfix+dovecot", "RSA key exchange only up to TLS 1.2 (no forward secrecy)"),
    Weak("dhe1024", "postfix+dovecot", "DHE only up to TLS 1.2, 1024-bit group (@SECLEVEL=0)"),
    Weak("nointer", "postfix+dovecot", "chain missing its intermediate"),
    Weak("misordered", "postfix+dovecot", "chain: leaf, upper intermediate, lower intermediate"),
    Weak("extra", "postfix+dovecot", "chain with a superfluous unrelated CA certificate"),
    Weak("rc4", "gnutls", "RC4 suites accepted (TLS 1.2)"),
    Weak("3des", "gnutls", "3DES suites accepted (TLS 1.2)"),
    Weak("ocspgood", "gnutls", "stapled OCSP response: good"),
    Weak("ocsprevoked", "gnutls", "stapled OCSP response: revoked"),
)

# Cipher lists (OpenSSL syntax) and protocol bounds per Postfix/Dovecot weakness. Not DEFAULT: it
# removes eNULL and aNULL for good ("!"), so a later "eNULL"/"aNULL" adds nothing.
_OPENSSL: dict[str, dict[str, str]] = {
    "legacy": {"ciphers": "ALL:!aNULL:!eNULL:@SECLEVEL=0", "min": "TLSv1"},
    "null": {"ciphers": "HIGH:eNULL:!aNULL:@SECLEVEL=0"},
    "anon": {"ciphers": "HIGH:aNULL:!eNULL:@SECLEVEL=0"},
    "nofs": {"ciphers": "kRSA+AESGCM:kRSA+AES:!aNULL:!eNULL", "max12": "1"},
    "dhe1024": {"ciphers": "kDHE+AESGCM:!aNULL:!eNULL:@SECLEVEL=0", "max12": "1", "dh": "1024"},
}
# gnutls-serv priority strings.
_GNUTLS = {
    "rc4": "NORMAL:-VERS-TLS1.0:-VERS-TLS1.1:+ARCFOUR-128",
    "3des": "NORMAL:-VERS-TLS1.0:-VERS-TLS1.1:+3DES-CBC",
    "ocspgood": "NORMAL:-VERS-TLS1.0:-VERS-TLS1.1",
    "ocsprevoked": "NORMAL:-VERS-TLS1.0:-VERS-TLS1.1",
}


class WeakPKI(TestPKI):
    """The matrix's PKI: EC CAs (root, intermediate, a second-level intermediate), RSA-2048 leaves
    (RSA key exchange and DHE-RSA need an RSA key), and OCSP responses signed by the leaf's issuer."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__("mailcanary weak tls")
        start = self.days(-1)
        self.inter = self.ca(
            "weak intermediate", issuer=self.root, not_before=start, not_after=self.days(900)
        )
        self.inter2 = self.ca(
            "weak 2nd intermediate", issuer=self.inter, not_before=start, not_after=self.days(800)
        )
        self.stray = TestPKI("unrelated").root  # a CA certificate nobody asked for
        self.leaf = self.rsa_leaf(self.inter)
        self.leaf2 = self.rsa_leaf(self.inter2)

    def rsa_leaf(self, issuer: Issued) -> Issued:
        """An RSA-2048 server certificate for NAMES under ``issuer`` (90 days)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.name),
                x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME),
            ]
        )
        sans: list[x509.GeneralName] = [x509.DNSName(SERVER_NAME), x509.DNSName("localhost")]
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
        builder = (
            self._base(subject, issuer.cert.subject, key, self.days(-1), self.days(90))  # type: ignore[arg-type]
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(self._aki(issuer), critical=False)
        )
        return Issued(builder.sign(issuer.key, hashes.SHA256()), key)  # type: ignore[arg-type]

    def ocsp_response(self, status: str) -> bytes:
        """A DER OCSPResponse for ``self.leaf``, signed by its issuer: ``good`` or ``revoked``."""
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        revoked = status == "revoked"
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=self.leaf.cert,
            issuer=self.inter.cert,
            algorithm=hashes.SHA1(),
            cert_status=ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD,
            this_update=now - dt.timedelta(hours=1),
            next_update=now + dt.timedelta(days=3),
            revocation_time=now - dt.timedelta(days=1) if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        )
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, self.inter.cert)
        return builder.sign(self.inter.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _chain(pki: WeakPKI, weak: str) -> list[Issued]:
    if weak == "nointer":
        return [pki.leaf]
    if weak == "misordered":
        return [pki.leaf2, pki.inter, pki.inter2]  # served order; the right one is leaf2, inter2, inter
    if weak == "extra":
        return [pki.leaf, pki.inter, pki.stray]
    return [pki.leaf, pki.inter]


def _der_int(n: int) -> bytes:
    body = n.to_bytes(n.bit_length() // 8 + 1, "big")  # leading zero byte keeps it positive
    return b"\x02" + _der_len(len(body)) + body


def _der_len(n: int) -> bytes:
    return bytes([n]) if n < 128 else bytes([0x80 | 2]) + n.to_bytes(2, "big")


def dh1024_pem(path: Path) -> Path:
    """PKCS#3 DHParameter {p, g=2} of MODP1024_P, the PEM that OpenSSL (Dovecot's ssl_dh, Postfix's
    smtpd_tls_dh1024_param_file) reads. Encoded here: cryptography's FFDH API is deprecated."""
    body = _der_int(MODP1024_P) + _der_int(2)
    der = b"\x30" + _der_len(len(body)) + body
    b64 = base64.encodebytes(der).decode().replace("\n", "")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    path.write_text("-----BEGIN DH PARAMETERS-----\n" + "\n".join(lines) + "\n-----END DH PARAMETERS-----\n")
    path.chmod(0o644)
    return path


@dataclass
class GnutlsServer:
    """``gnutls-serv`` in its own network namespace behind a counting relay on ``host:port``."""

    weak: str
    host: str
    port: int
    count_file: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def connections(self) -> int:
        """Connections the relay accepted so far (the server's side of the count)."""
        try:
            return len(self.count_file.read_text().splitlines())
        except FileNotFoundError:
            return 0


def loopback_address(n: int) -> tuple[str, int]:
    """127.0.0.``n`` (41..59, this matrix's range) and a port claimed there (tests/mailstack/_net)."""
    if not 41 <= n <= 59:
        raise ValueError(f"127.0.0.{n} is outside the matrix's addresses 127.0.0.41-59")
    host = f"127.0.0.{n}"
    return host, claim_ports(1, (host,))[0]


def start_relay(
    listen: tuple[str, int],
    count_file: Path,
    log: Path,
    *,
    to: tuple[str, int] | None = None,
    command: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """tests/support/nsrelay.py as a child: a counting proxy to ``to``, or in front of ``command`` jailed
    in a private network namespace. Returns once it printed ``ready`` (raises if it died)."""
    argv = [sys.executable, "-m", "tests.support.nsrelay", "--listen", f"{listen[0]}:{listen[1]}"]
    argv += ["--count-file", str(count_file)]
    if to is not None:
        argv += ["--to", f"{to[0]}:{to[1]}"]
    if command:
        argv += ["--", *command]
    errlog = log.open("ab")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errlog, cwd=ROOT)
    errlog.close()
    return proc


def wait_relay(proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "ready", or EOF when it died
    if line.strip() != b"ready":
        stop_process(proc)
        raise RuntimeError(f"relay did not come up: {line!r}\n{log.read_text(errors='replace')[-2000:]}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


@dataclass
class WeakServers:
    """Every weak server of the matrix, running; ``targets`` lists their endpoints."""

    pki: WeakPKI
    ca_file: Path
    variants: VariantSet
    gnutls: dict[str, GnutlsServer] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    startup_seconds: float = 0.0

    def target(self, weak: str, protocol: str) -> Target:
        for t in self.targets:
            if t.weak == weak and t.protocol == protocol:
                return t
        raise KeyError(f"{weak}-{protocol}")


def _openssl_settings(weak: str, tls_dir: Path) -> tuple[dict[str, str | int | bool], dict[str, str], str]:
    """(dovecot settings, postfix main.cf settings, dovecot ssl_min_protocol) for one weakness."""
    spec = _OPENSSL.get(weak, {})
    dovecot: dict[str, str | int | bool] = {}
    postfix: dict[str, str] = {}
    min_proto = spec.get("min", "TLSv1.2")
    if "ciphers" in spec:
        dovecot["ssl_cipher_list"] = spec["ciphers"]
        # smtpd's opportunistic grade is "medium": its list is the one in use.
        postfix["tls_medium_cipherlist"] = spec["ciphers"]
    # Stock smtpd offers anonymous suites to opportunistic clients (the test stack's Postfix excludes
    # them): one weakness at a time, so only the anonymous server offers them, and it must say so.
    postfix["smtpd_tls_exclude_ciphers"] = "" if weak == "anon" else "aNULL"
    if min_proto == "TLSv1":
        postfix["smtpd_tls_protocols"] = postfix["smtpd_tls_mandatory_protocols"] = ">=TLSv1"
    if spec.get("max12"):
        # TLS 1.3 suites all have forward secrecy: without a cap the weakness hides behind 1.3 (Postfix;
        # Dovecot 2.3 has no ssl_max_protocol, so its instance keeps TLS 1.3 beside the weak 1.2 suites).
        postfix["smtpd_tls_protocols"] = postfix["smtpd_tls_mandatory_protocols"] = ">=TLSv1.2, <=TLSv1.2"
    if spec.get("dh") == "1024":
        pem = dh1024_pem(tls_dir / "dh1024.pem")
        dovecot["ssl_dh"] = f"<{pem}"
        postfix["smtpd_tls_dh1024_param_file"] = str(pem)
    return dovecot, postfix, min_proto


@contextlib.contextmanager
def weak_servers(stack: MailStack, work: Path) -> Iterator[WeakServers]:
    """Start every weak server at once (Dovecots, Postfixes and gnutls-servs in parallel), yield them,
    stop them all."""
    began = time.monotonic()
    reap_orphans()
    pki = WeakPKI()
    vs = VariantSet(stack, pki)
    ws = WeakServers(pki=pki, ca_file=vs.ca_file, variants=vs)
    relays: list[subprocess.Popen[bytes]] = []
    try:
        # gnutls-serv first: their relays come up while the Dovecots and Postfixes start.
        work.mkdir(parents=True, exist_ok=True)
        hosts = iter(GNUTLS_HOSTS)
        for w in WEAK:
            if w.software != "gnutls":
                continue
            host = next(hosts)
            port = claim_ports(1, (host,))[0]
            tls = pki.write_chain(vs.tls_dir, w.name, [pki.leaf, pki.inter], vs.ca_file)
            cmd = ["gnutls-serv", "--port", "{port}", "--echo", "--quiet", "--disable-client-cert"]
            cmd += ["--x509certfile", str(tls.chain), "--x509keyfile", str(tls.key)]
            cmd += ["--priority", _GNUTLS[w.name]]
            if w.name.startswith("ocsp"):
                resp = vs.tls_dir / f"{w.name}.ocsp.der"
                resp.write_bytes(pki.ocsp_response(w.name.removeprefix("ocsp")))
                cmd += ["--ocsp-response", str(resp), "--ignore-ocsp-response-errors"]
            server = GnutlsServer(w.name, host, port, work / f"{w.name}.connections", work / f"{w.name}.log")
            server.process = start_relay((host, port), server.count_file, server.log, command=cmd)
            relays.append(server.process)
            ws.gnutls[w.name] = server
            ws.targets.append(Target(w.name, "tls", host, port, "gnutls"))
        for w in WEAK:
            if w.software == "gnutls":
                continue
            dovecot, postfix, min_proto = _openssl_settings(w.name, vs.tls_dir)
            v = vs.add(
                w.name,
                _chain(pki, w.name),
                dovecot_ports=("imap", "imaps", "pop3"),
                ssl_min_protocol=min_proto,
                dovecot_settings=dovecot,
                postfix_settings=postfix,
            )
            for proto in ("smtp", "imap", "pop3", "imaps"):
                software = "postfix" if proto == "smtp" else "dovecot"
                ws.targets.append(Target(w.name, proto, v.host, v.ports[proto], software))
        vs.start()
        for server in ws.gnutls.values():
            assert server.process is not None
            wait_relay(server.process, server.log)
        ws.startup_seconds = time.monotonic() - began
        yield ws
    finally:
        for proc in relays:
            stop_process(proc)
        try:
            vs.stop()
        finally:
            vs.remove()


@contextlib.contextmanager
def threaded(serve: Callable[[], contextlib.AbstractAsyncContextManager[int]]) -> Iterator[int]:
    """Run an in-process asyncio server (``fake_hello(...)``, a fault server) on a loop of its own thread,
    so that subprocesses (testssl.sh, sslscan) and other loops can connect to it; yields its port."""
    loop = asyncio.new_event_loop()
    ready: concurrent.futures.Future[int] = concurrent.futures.Future()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with serve() as port:
                ready.set_result(port)
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    try:
        yield ready.result(timeout=10)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


REFUSALS = {
    "smtp": b"421 4.7.0 mail.example.test Error: too many connections from 127.0.0.2\r\n",
    "imap": b"* BYE Too many connections from your IP\r\n",
    "pop3": b"-ERR [SYS/TEMP] Too many connections from your IP\r\n",
}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def rate_limited(
    host: str, port: int, protocol: str, after: int
) -> AsyncIterator[tuple[int, list[str]]]:
    """A fault server in front of a real one: connections 1..``after`` are relayed to ``host:port``, every
    later one gets the server's "too many connections" refusal before TLS (SMTP ``421``, IMAP ``* BYE``,
    POP3 ``-ERR``), as Postfix's anvil limits or a provider's MX do. Yields (port, log of what each
    connection got)."""
    log: list[str] = []
    tasks: set[asyncio.Task[None]] = set()

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            if len(log) >= after:
                log.append("refused")
                cw.write(REFUSALS[protocol])
                await cw.drain()
                cw.close()
                return
            log.append("relayed")
            sr, sw = await asyncio.open_connection(host, port)
            await asyncio.gather(_pipe(cr, sw), _pipe(sr, cw))
        except (OSError, asyncio.CancelledError):
            cw.transport.abort()
        finally:
            tasks.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], log
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


__all__ = [
    "WEAK",
    "GnutlsServer",
    "Target",
    "Weak",
    "WeakPKI",
    "WeakServers",
    "loopback_address",
    "rate_limited",
    "start_relay",
    "stop_process",
    "threaded",
    "wait_relay",
    "weak_servers",
]
