"""Real OpenDKIM milters for the verdict tests: one signing at the submission Postfix, one verifying at the
relay (the "MX"), which stamps ``Authentication-Results: mx2.example.test; dkim=...``.

No DNS server is needed: the verifier reads the selector's TXT record from ``TestDNSData`` (opendkim.conf(5):
"a data set whose keys will be treated as DNS record names and values as TXT record contents. Intended
for use during automated testing."). A wrong public key there makes every signature fail, as a rotated key
without its DNS record does. Both listen on loopback TCP ports; each is our own child process, stopped by
its pid.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.mailstack._net import free_ports
from tests.support.wait import eventually

SELECTOR = "mc"
AUTHSERV_ID = "mx2.example.test"


def _key(directory: Path, name: str) -> tuple[Path, str]:
    """A 2048-bit RSA key: the private key file (0600) and the DKIM TXT value of its public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = directory / f"{name}.private"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, f"v=DKIM1;k=rsa;p={base64.b64encode(der).decode()}"


class OpenDKIM:
    """``opendkim -f -x conf`` as a child process on 127.0.0.1:port."""

    def __init__(self, directory: Path, name: str, settings: dict[str, str], port: int | None = None) -> None:
        binary = shutil.which("opendkim") or "/usr/sbin/opendkim"
        self.port = port or free_ports(1)[0]
        self.conf = directory / f"{name}.conf"
        self.log = directory / f"{name}.log"
        base = {
            "Socket": f"inet:{self.port}@127.0.0.1",
            "Syslog": "no",
            "Background": "no",
            "PidFile": str(directory / f"{name}.pid"),
            "Canonicalization": "relaxed/relaxed",
            "AlwaysAddARHeader": "yes",
            "RequireSafeKeys": "no",  # the key lives under /tmp (world-writable): a test, not a server
        }
        self.conf.write_text("".join(f"{k} {v}\n" for k, v in {**base, **settings}.items()))
        self.proc = subprocess.Popen(
            [binary, "-f", "-x", str(self.conf)],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"opendkim exited: {self.log.read_text(errors='replace')}")
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True

        try:
            eventually(
                listening, ignoring=(OSError,), timeout=10, interval=0.05, message="opendkim listening"
            )
        except AssertionError as exc:
            self.stop()
            raise RuntimeError(str(exc)) from None

    @property
    def milter(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class DKIMPair:
    """A signer for example.test and a verifier whose DNS data holds the signer's public key, or (after
    ``publish(broken=True)``) another one, as after a key rotation without its DNS record."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        private, self.public = _key(directory, "signer")
        _, self.other_public = _key(directory, "other")
        self.signer = OpenDKIM(
            directory,
            "signer",
            {"Mode": "s", "Domain": "example.test", "Selector": SELECTOR, "KeyFile": str(private)},
        )
        self.verifier: OpenDKIM | None = None
        self.verifier_port = free_ports(1)[0]
        try:
            self.publish(broken=False)
        except BaseException:
            self.signer.stop()
            raise

    def publish(self, *, broken: bool) -> None:
        """(Re)start the verifier with the right public key in its DNS data, or another one."""
        if self.verifier is not None:
            self.verifier.stop()
        dns = self.directory / "dns.txt"
        dns.write_text(f"{SELECTOR}._domainkey.example.test {self.other_public if broken else self.public}\n")
        self.verifier = OpenDKIM(
            self.directory,
            "verifier",
            {"Mode": "v", "AuthservID": AUTHSERV_ID, "TestDNSData": f"file:{dns}"},
            port=self.verifier_port,
        )

    @property
    def verifier_milter(self) -> str:
        return f"inet:127.0.0.1:{self.verifier_port}"

    def stop(self) -> None:
        self.signer.stop()
        if self.verifier is not None:
            self.verifier.stop()


class OpenDMARC:
    """Real OpenDMARC (after the verifying OpenDKIM at the relay), its ``_dmarc`` and SPF records served by
    a real NSD.

    opendmarc.conf(5) has no nameserver setting: OpenDMARC (and its SPF check) ask the system resolver
    of /etc/resolv.conf. The machine's resolv.conf is never touched: OpenDMARC runs in its own user,
    network, mount and pid namespaces (``unshare -r -n -m -p``), where /etc/resolv.conf is a private bind
    mount naming 127.0.0.1, and NSD answers on that namespace's own loopback port 53. The namespace has
    no other interface than its loopback, so no query can leave it. Postfix reaches the milter over a unix
    socket in the temp root (a path is shared across network namespaces). Stopping ``unshare`` kills the
    namespace's pid 1 (``--kill-child``) and with it every process in it."""

    def __init__(self, directory: Path, dmarc: str, spf: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.socket = directory / "opendmarc.sock"
        self.log = directory / "opendmarc.log"
        for stale in ("opendmarc.sock", "nsd.pid", "xfrd.state", "zone.list", "opendmarc.pid"):
            (directory / stale).unlink(missing_ok=True)  # a restart with other records starts afresh
        (directory / "example.test.zone").write_text(
            "$ORIGIN example.test.\n$TTL 60\n"
            "@ SOA ns1 hostmaster 1 3600 600 86400 60\n@ NS ns1\nns1 A 127.0.0.1\n"
            f'_dmarc TXT "{dmarc}"\n@ TXT "{spf}"\n'
        )
        (directory / "nsd.conf").write_text(
            "server:\n  ip-address: 127.0.0.1\n  port: 53\n  do-ip6: no\n"
            '  username: ""\n  chroot: ""\n  database: ""\n  server-count: 1\n'
            f"  zonesdir: {directory}\n  pidfile: {directory}/nsd.pid\n  logfile: {directory}/nsd.log\n"
            f"  xfrdfile: {directory}/xfrd.state\n  zonelistfile: {directory}/zone.list\n"
            f"  xfrdir: {directory}\n"
            "remote-control:\n  control-enable: no\n"
            f"zone:\n  name: example.test.\n  zonefile: {directory}/example.test.zone\n"
        )
        (directory / "resolv.conf").write_text("nameserver 127.0.0.1\noptions attempts:1 timeout:2\n")
        (directory / "ignore.hosts").write_text("")  # the default would ignore mail from 127.0.0.1
        (directory / "opendmarc.conf").write_text(
            f"Socket local:{self.socket}\n"
            "UMask 000\n"
            "Background false\n"
            "Syslog false\n"
            f"PidFile {directory}/opendmarc.pid\n"
            f"AuthservID {AUTHSERV_ID}\n"
            f"TrustedAuthservIDs {AUTHSERV_ID}\n"
            f"IgnoreHosts {directory}/ignore.hosts\n"
            "SPFSelfValidate true\n"
            "FailureReports false\n"
            "RejectFailures false\n"
        )
        inner = (
            "set -e\n"
            "ip link set lo up\n"
            f"mount --bind {directory}/resolv.conf /etc/resolv.conf\n"
            f"/usr/sbin/nsd -d -c {directory}/nsd.conf &\n"
            f"exec {shutil.which('opendmarc') or '/usr/sbin/opendmarc'} -f -c {directory}/opendmarc.conf\n"
        )
        (directory / "inner.sh").write_text(inner)
        self.proc = subprocess.Popen(
            ["unshare", "-r", "-n", "-m", "-p", "--fork", "--kill-child", "sh", str(directory / "inner.sh")],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

        def listening() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"opendmarc exited: {self.log.read_text(errors='replace')}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.5)
                s.connect(str(self.socket))
            return True

        try:
            eventually(
                listening, ignoring=(OSError,), timeout=10, interval=0.05, message="opendmarc listening"
            )
        except AssertionError as exc:
            self.stop()
            raise RuntimeError(str(exc)) from None

    @property
    def milter(self) -> str:
        return f"unix:{self.socket}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
