"""Variant servers beside the session MailStack, each showing one TLS property, for the TLS audit tests.

A variant is one extra Dovecot (and, if asked, a Postfix smtpd whose SASL goes to that Dovecot) with its
own root, certificates and settings: an expired leaf, a wrong name, legacy protocols allowed... Each is
its own instance (own ``base_dir``/queue, pid file, log, free loopback ports) so that one odd setting
cannot leak into another case, and the session stack is never touched. Mailboxes and the password file
are borrowed from the session stack (read only): the variants exist to be connected to, not to deliver.

Also here, because every TLS test needs them: :class:`TestPKI`, a throwaway PKI built with
``cryptography`` where every validity period is chosen (trustme cannot date an intermediate), and
:class:`BlackboxExporter`, Debian's ``prometheus-blackbox-exporter`` run on a free loopback port, to
compare our TLS facts with the tool that users already know.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from exporter.demo.sandbox.ca import CA_KEY_USAGE

from ._net import LOOPBACK_V4, free_ports, wait_ready
from ._system import StackError, find_binary, pid_alive, read_pid, tail, terminate
from .dovecot import DovecotInstance
from .postfix import PostfixInstance
from .stack import MailStack
from .tls import SERVER_NAME, TLSFiles

ROOT_PREFIX = "mailcanary-variants-"
OWNER_FILE = "owner.pid"
MANIFEST = "instances.json"
BLACKBOX = "prometheus-blackbox-exporter"
DOVECOT_PORTS = ("imap", "imaps", "pop3", "pop3s")

# ---- a PKI with chosen dates ------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    """A certificate with its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def not_before(self) -> float:
        return self.cert.not_valid_before_utc.timestamp()

    @property
    def not_after(self) -> float:
        return self.cert.not_valid_after_utc.timestamp()


def _utc(when: dt.datetime) -> dt.datetime:
    """Whole seconds: X.509 times have no fractions, so expected values compare exactly."""
    return when.astimezone(dt.UTC).replace(microsecond=0)


class TestPKI:
    """A root CA plus whatever intermediates and leaves a test asks for, dates included.

    ECDSA P-256 keys: fast to make, and (with ``@SECLEVEL=0``) still usable for TLS 1.0/1.1.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, name: str = "mailcanary variants", now: dt.datetime | None = None) -> None:
        self.now = _utc(now or dt.datetime.now(dt.UTC))
        self.name = name
        self.root = self.ca(
            f"{name} root CA",
            issuer=None,
            not_before=self.now - dt.timedelta(days=1),
            not_after=self.now + dt.timedelta(days=3650),
        )

    def days(self, n: float) -> dt.datetime:
        """``now`` plus ``n`` days (negative: in the past)."""
        return self.now + dt.timedelta(days=n)

    def ca(
        self,
        common_name: str,
        *,
        issuer: Issued | None,
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> Issued:
        """A CA certificate signed by ``issuer`` (None: self-signed root)."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.name),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = (
            self._base(subject, issuer.cert.subject if issuer else subject, key, not_before, not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                CA_KEY_USAGE,
                critical=True,
            )
            .add_extension(ski, critical=False)
        )
        if issuer is not None:
            builder = builder.add_extension(self._aki(issuer), critical=False)
        signer = issuer.key if issuer is not None else key
        return Issued(builder.sign(signer, hashes.SHA256()), key)

    def leaf(
        self,
        names: Sequence[str],
        *,
        issuer: Issued | None,
        common_name: str | None = None,
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
    ) -> Issued:
        """A server certificate for ``names`` (DNS names or IP literals); ``issuer=None`` self-signs it."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.name)]
        if common_name:
            attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        subject = x509.Name(attrs)
        general: list[x509.GeneralName] = []
        for name in names:
            try:
                general.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                general.append(x509.DNSName(name))
        builder = self._base(
            subject,
            issuer.cert.subject if issuer else subject,
            key,
            not_before or self.days(-1),
            not_after or self.days(90),
        ).add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        if general:
            builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        if issuer is not None:
            builder = builder.add_extension(self._aki(issuer), critical=False)
        return Issued(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)

    @staticmethod
    def _aki(issuer: Issued) -> x509.AuthorityKeyIdentifier:
        ski = issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)

    @staticmethod
    def _base(
        subject: x509.Name,
        issuer: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        not_before: dt.datetime,
        not_after: dt.datetime,
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_utc(not_before))
            .not_valid_after(_utc(not_after))
        )

    def write_ca(self, path: Path) -> Path:
        """The root certificate, for clients' ``ca_file``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.root.pem)
        path.chmod(0o644)
        return path

    @staticmethod
    def write_chain(directory: Path, name: str, chain: Sequence[Issued], ca_file: Path) -> TLSFiles:
        """``<name>.pem`` (the chain as served, leaf first) and ``<name>.key`` (0600, the leaf's key)."""
        directory.mkdir(parents=True, exist_ok=True)
        pem = directory / f"{name}.pem"
        pem.write_bytes(b"".join(c.pem for c in chain))
        pem.chmod(0o644)
        key = directory / f"{name}.key"
        key.touch(mode=0o600)
        key.chmod(0o600)
        key.write_bytes(
            chain[0].key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return TLSFiles(chain=pem, key=key, ca=ca_file)


# ---- variant instances ------------------------------------------------------------------------------


@dataclass
class Variant:
    """One variant: its chain as served (leaf first) and its ports by name (imap, pop3s, smtp...)."""

    name: str
    chain: tuple[Issued, ...]
    ports: dict[str, int]
    dovecot: DovecotInstance
    postfix: PostfixInstance | None = None
    host: str = LOOPBACK_V4
    server_name: str = SERVER_NAME

    @property
    def leaf(self) -> Issued:
        return self.chain[0]

    @property
    def earliest_not_after(self) -> float:
        return min(c.not_after for c in self.chain)

    def address(self, port_name: str) -> str:
        return f"{self.host}:{self.ports[port_name]}"


def _is_variant_root(root: Path) -> bool:
    return root.name.startswith(ROOT_PREFIX) and root.parent == Path("/tmp")


class VariantSet:
    """Variants started together and stopped together; use as a context manager.

    Their root lives under /tmp (the daemons must traverse it) with an owner file and a manifest of pid
    files, so :func:`reap_orphans` can stop the variants of a test session that was killed.
    """

    def __init__(self, stack: MailStack, pki: TestPKI | None = None, root: Path | None = None) -> None:
        self.stack = stack
        self.pki = pki or TestPKI()
        if root is None:
            root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX, dir="/tmp"))
        self.root = root.absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        (self.root / OWNER_FILE).write_text(f"{os.getpid()}\n")
        self.tls_dir = self.root / "tls"
        self.tls_dir.mkdir(exist_ok=True)
        self.tls_dir.chmod(0o711)
        self.ca_file = self.pki.write_ca(self.tls_dir / "ca.pem")
        self.variants: dict[str, Variant] = {}
        self._started: list[DovecotInstance | PostfixInstance] = []
        self.startup_seconds: float | None = None  # of the last start(), for the suite's time budget

    def add(
        self,
        name: str,
        chain: Sequence[Issued],
        *,
        dovecot_ports: Sequence[str] = DOVECOT_PORTS,
        ssl_min_protocol: str = "TLSv1.2",
        dovecot_settings: Mapping[str, str | int | bool] | None = None,
        postfix_settings: Mapping[str, str] | None = None,
        smtp_host: str | None = None,
        smtp_port: int | None = None,
    ) -> Variant:
        """Declare a Dovecot serving ``chain`` on ``dovecot_ports``; with ``postfix_settings`` (even ``{}``)
        also a Postfix smtpd on an ``smtp`` port with the same chain, authenticating through this Dovecot
        (on ``smtp_host``:``smtp_port`` if given: MX variants on distinct loopback addresses, one port)."""
        if name in self.variants or not name.isidentifier():
            raise ValueError(f"bad or duplicate variant name {name!r}")
        unknown = set(dovecot_ports) - set(DOVECOT_PORTS)
        if unknown:
            raise ValueError(f"unknown Dovecot ports {sorted(unknown)}")
        names = list(dovecot_ports) + (["smtp"] if postfix_settings is not None else [])
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        if smtp_port is not None and "smtp" in ports:
            ports["smtp"] = smtp_port  # MX variants on distinct loopback addresses share one port
        tls = self.pki.write_chain(self.tls_dir, name, chain, self.ca_file)
        base = self.root / name
        log_dir = base / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_dir.chmod(0o755)
        stack = self.stack
        postfix: PostfixInstance | None = None
        if postfix_settings is not None:
            postfix = PostfixInstance(
                base / "postfix",
                name=f"{self.root.name}-{name}-postfix",
                tls=tls,
                ports={"smtp": ports["smtp"]},
                mailboxes={},
                mail_root=stack.mail_root,
                account=stack.account,
                log_file=log_dir / "postfix.log",
                settings=dict(postfix_settings),
                smtp_host=smtp_host,
            )
        dovecot = DovecotInstance(
            base / "dovecot",
            name=f"{self.root.name}-{name}-dovecot",
            tls=tls,
            ports={p: ports[p] for p in dovecot_ports},
            users_file=stack.users_file,
            mail_root=stack.mail_root,
            account=stack.account,
            log_file=log_dir / "dovecot.log",
            ssl_min_protocol=ssl_min_protocol,
            auth_sockets=[postfix.sasl_socket] if postfix is not None else [],
            settings=dovecot_settings,
        )
        variant = Variant(name=name, chain=tuple(chain), ports=ports, dovecot=dovecot, postfix=postfix)
        self.variants[name] = variant
        return variant

    def __getitem__(self, name: str) -> Variant:
        return self.variants[name]

    def start(self, timeout: float = 20.0) -> None:
        """Render every instance, start the Dovecots (they create Postfix's SASL sockets), then the
        Postfixes, and wait until every port greets."""
        began = time.monotonic()
        try:
            for v in self.variants.values():
                if v.postfix is not None:
                    v.postfix.render()  # `postfix check` creates private/, where Dovecot puts the socket
                v.dovecot.render()
            for v in self.variants.values():
                self._launch(v.dovecot)
            for v in self.variants.values():
                if v.postfix is not None:
                    self._launch(v.postfix)
            endpoints = [e for v in self.variants.values() for e in v.dovecot.endpoints()]
            endpoints += [e for v in self.variants.values() if v.postfix for e in v.postfix.endpoints()]
            pending = wait_ready(endpoints, timeout)
            if pending:
                raise StackError(
                    f"variants not greeting after {timeout:.0f}s: {[e.name for e in pending]}\n"
                    + self.log_tails()
                )
            self.startup_seconds = time.monotonic() - began
        except BaseException:
            with contextlib.suppress(StackError):
                self.stop()
            raise

    def _launch(self, instance: DovecotInstance | PostfixInstance) -> None:
        self._started.append(instance)
        self._write_manifest()
        instance.start()

    def _write_manifest(self) -> None:
        entries = [{"pid_file": str(i.pid_file), "executable": i.executable} for i in self._started]
        (self.root / MANIFEST).write_text(json.dumps(entries, indent=1) + "\n")

    def stop(self) -> None:
        """Stop every started instance (Postfixes first); raise StackError listing what would not stop."""
        errors: list[str] = []

        def stop_one(instance: DovecotInstance | PostfixInstance) -> None:
            try:
                instance.stop()
            except StackError as exc:
                errors.append(str(exc))

        # In parallel: a Dovecot master takes about a second to wind down, and there are many.
        for wave in (PostfixInstance, DovecotInstance):
            members = [i for i in self._started if isinstance(i, wave)]
            if members:
                with ThreadPoolExecutor(max_workers=len(members)) as pool:
                    list(pool.map(stop_one, members))
        self._started.clear()
        if errors:
            raise StackError("\n".join(errors))

    def remove(self) -> None:
        """Delete the root (after :meth:`stop`), unless MAILSTACK_KEEP=1 asks to keep it."""
        if os.environ.get("MAILSTACK_KEEP") != "1" and _is_variant_root(self.root):
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tails(self, lines: int = 20) -> str:
        logs = sorted(self.root.glob("*/log/*.log"))
        return "\n".join(f"--- {log}\n{tail(log, lines)}" for log in logs)

    def __enter__(self) -> VariantSet:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self.remove()


def reap_orphans(parent: Path = Path("/tmp")) -> list[Path]:
    """Stop and delete variant sets whose owner process died before stopping them."""
    reaped: list[Path] = []
    for root in sorted(parent.glob(ROOT_PREFIX + "*")):
        owner = read_pid(root / OWNER_FILE)
        if owner is not None and pid_alive(owner):
            continue
        try:
            entries = json.loads((root / MANIFEST).read_text())
        except (OSError, ValueError):
            entries = []
        for entry in entries:
            with contextlib.suppress(OSError, KeyError, TypeError):
                terminate(Path(entry["pid_file"]), str(entry["executable"]), 10.0)
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


# ---- prometheus-blackbox-exporter -------------------------------------------------------------------


def blackbox_available() -> bool:
    return find_binary(BLACKBOX) is not None


class BlackboxExporter:
    """Debian's blackbox_exporter on a free 127.0.0.1 port with a generated config; a context manager.

    ``modules`` is the ``modules:`` mapping of blackbox.yml. :meth:`probe` returns the sample values of
    one ``/probe`` answer by metric name (labels dropped: the TLS series we compare carry none that vary).
    """

    def __init__(self, directory: Path, modules: Mapping[str, object]) -> None:
        self.directory = directory
        self.modules = dict(modules)
        self.port = free_ports(1)[0]
        self.process: subprocess.Popen[bytes] | None = None
        self.log = directory / "blackbox.log"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK_V4}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        binary = find_binary(BLACKBOX)
        if binary is None:
            raise StackError(f"{BLACKBOX} not found (Debian package prometheus-blackbox-exporter)")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "blackbox.yml"
        # JSON is YAML: no YAML writer needed, and no quoting surprises in the regexes.
        config.write_text(json.dumps({"modules": self.modules}, indent=1) + "\n")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--web.listen-address={LOOPBACK_V4}:{self.port}",
                    "--log.level=debug",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise StackError(f"{BLACKBOX} exited {self.process.returncode}:\n{tail(self.log)}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/healthy", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise StackError(f"{BLACKBOX} not healthy after {timeout:g}s:\n{tail(self.log)}")
            time.sleep(0.05)

    def probe_text(self, module: str, target: str, timeout: float = 15.0) -> str:
        query = urllib.parse.urlencode({"module": module, "target": target, "debug": "false"})
        with urllib.request.urlopen(f"{self.url}/probe?{query}", timeout=timeout) as resp:
            return str(resp.read().decode())

    def probe(self, module: str, target: str) -> dict[str, float]:
        return parse_samples(self.probe_text(module, target))

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> BlackboxExporter:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def parse_samples(text: str) -> dict[str, float]:
    """Series -> value from the text exposition format, keyed both by the series as written
    (``probe_tls_version_info{version="TLS 1.3"}``) and by the bare metric name (last sample wins)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[series] = out[series.split("{", 1)[0]] = float(value)
    return out


def blackbox_starttls_modules(server_name: str, ca_file: Path | None) -> dict[str, object]:
    """blackbox tcp modules doing the STARTTLS dialogue per protocol, plus implicit TLS.

    Verification is left to ``ca_file`` when given, else skipped: blackbox exports no certificate facts
    at all when its handshake fails, and the comparison is about the presented chain.
    """
    tls_config: dict[str, object] = {"server_name": server_name}
    if ca_file is None:
        tls_config["insecure_skip_verify"] = True
    else:
        tls_config["ca_file"] = str(ca_file)

    def module(query: list[dict[str, object]] | None) -> dict[str, object]:
        tcp: dict[str, object] = {"tls_config": tls_config, "preferred_ip_protocol": "ip4"}
        if query is None:
            tcp["tls"] = True
        else:
            tcp["query_response"] = query
        return {"prober": "tcp", "timeout": "5s", "tcp": tcp}

    return {
        "implicit": module(None),
        "smtp_starttls": module(
            [
                {"expect": "^220 "},
                {"send": "EHLO prober\r"},
                {"expect": "^250[ -]STARTTLS"},
                {"send": "STARTTLS\r"},
                {"expect": "^220"},
                {"starttls": True},
                {"send": "QUIT\r"},
            ]
        ),
        "imap_starttls": module(
            [
                {"expect": "^\\* OK"},
                {"send": "a1 STARTTLS\r"},
                {"expect": "^a1 OK"},
                {"starttls": True},
                {"send": "a2 LOGOUT\r"},
            ]
        ),
        "pop3_starttls": module(
            [
                {"expect": "^\\+OK"},
                {"send": "STLS\r"},
                {"expect": "^\\+OK"},
                {"starttls": True},
                {"send": "QUIT\r"},
            ]
        ),
    }
