"""A real DNS on loopback for the domain checks: NSD (authoritative) behind Unbound (validating resolver).

Zones are written from text at test time; a signed zone is signed here with dnspython (ECDSA P-256, a
fresh key per run) and its key becomes a trust anchor of Unbound, so ``secure`` answers carry the AD bit
for real. ``broken=True`` signs, then flips a byte in every RRSIG over the named owners: Unbound then
answers SERVFAIL (bogus), and data with CD. Unbound forwards everything (".") to NSD, which answers only
its own zones (REFUSED otherwise): no query can ever leave the machine. Both listen on 127.0.0.1 on
free ports and run in the foreground under a temp root.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rdatatype
import dns.rdtypes.ANY.RRSIG
import dns.zone
from cryptography.hazmat.primitives.asymmetric import ec

from tests.mailstack import free_ports
from tests.support.wait import eventually

LOOPBACK = "127.0.0.1"
NSD = "/usr/sbin/nsd"
UNBOUND = "/usr/sbin/unbound"


def available() -> bool:
    return Path(NSD).exists() and Path(UNBOUND).exists()


def free_udp_tcp_port() -> int:
    """A port free for both TCP (checked by free_ports) and UDP on 127.0.0.1."""
    for _ in range(50):
        port = free_ports(1)[0]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free UDP+TCP port on 127.0.0.1")


@dataclass
class ZoneSpec:
    """One zone: ``records`` in zone-file syntax relative to the origin (SOA and NS are added)."""

    origin: str
    records: str
    signed: bool = False
    broken: Sequence[str] = ()  # owner names (relative) whose RRSIGs are corrupted after signing
    ttl: int = 60
    anchor: str | None = field(default=None, init=False)  # the DNSKEY trust anchor line, once signed


def _build(spec: ZoneSpec) -> dns.zone.Zone:
    origin = spec.origin.rstrip(".") + "."
    text = (
        f"$ORIGIN {origin}\n$TTL {spec.ttl}\n"
        f"@ SOA ns1.{origin} hostmaster.{origin} 1 3600 600 86400 60\n"
        f"@ NS ns1.{origin}\nns1 A {LOOPBACK}\n{spec.records}\n"
    )
    zone = dns.zone.from_text(text, origin=origin, relativize=False)
    if spec.signed:
        key = ec.generate_private_key(ec.SECP256R1())
        dnskey = dns.dnssec.make_dnskey(key.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256, flags=257)
        dns.dnssec.sign_zone(zone, keys=[(key, dnskey)], lifetime=86400, dnskey_ttl=spec.ttl)
        spec.anchor = f"{origin} DNSKEY {dnskey.to_text()}"
        for owner in spec.broken:
            _corrupt(zone, dns.name.from_text(owner, dns.name.from_text(origin)))
    return zone


def _corrupt(zone: dns.zone.Zone, owner: dns.name.Name) -> None:
    node = zone.get_node(owner)
    if node is None:
        raise ValueError(f"no node {owner} to break")
    for rdataset in node.rdatasets:
        if rdataset.rdtype != dns.rdatatype.RRSIG:
            continue
        broken = []
        for sig in rdataset:
            assert isinstance(sig, dns.rdtypes.ANY.RRSIG.RRSIG)
            bad = bytearray(sig.signature)
            bad[len(bad) // 2] ^= 0xFF
            broken.append(sig.replace(signature=bytes(bad)))
        rdataset.clear()
        for sig in broken:
            rdataset.add(sig)


class DNSStack:
    """NSD + Unbound serving ``zones``; a context manager. ``resolver_port`` is where probes ask."""

    def __init__(self, zones: Sequence[ZoneSpec]) -> None:
        self.zones = list(zones)
        self.root = Path(tempfile.mkdtemp(prefix="mailcanary-dns-"))
        self.nsd_port = free_udp_tcp_port()
        self.resolver_port = free_udp_tcp_port()
        self._procs: list[subprocess.Popen[bytes]] = []

    # ---- rendering -----------------------------------------------------------------------------------

    def _render(self) -> None:
        zone_lines = []
        for spec in self.zones:
            zone = _build(spec)
            path = self.root / f"{spec.origin.rstrip('.')}.zone"
            zone.to_file(str(path), relativize=False)
            zone_lines.append(f"zone:\n  name: {spec.origin.rstrip('.')}.\n  zonefile: {path}\n")
        (self.root / "nsd.conf").write_text(
            "server:\n"
            f"  ip-address: {LOOPBACK}@{self.nsd_port}\n"
            f"  port: {self.nsd_port}\n"
            "  do-ip6: no\n"
            '  username: ""\n'
            '  chroot: ""\n'
            f"  zonesdir: {self.root}\n"
            f"  pidfile: {self.root}/nsd.pid\n"
            f"  logfile: {self.root}/nsd.log\n"
            f"  xfrdfile: {self.root}/xfrd.state\n"
            f"  zonelistfile: {self.root}/zone.list\n"
            f"  xfrdir: {self.root}\n"
            '  database: ""\n'
            "  server-count: 1\n"
            "  verbosity: 1\n"
            "  hide-version: yes\n"
            "remote-control:\n  control-enable: no\n" + "".join(zone_lines)
        )
        anchors = "".join(f'  trust-anchor: "{z.anchor}"\n' for z in self.zones if z.anchor)
        (self.root / "unbound.conf").write_text(
            "server:\n"
            f"  interface: {LOOPBACK}\n"
            f"  port: {self.resolver_port}\n"
            "  do-ip6: no\n"
            '  username: ""\n'
            '  chroot: ""\n'
            f'  directory: "{self.root}"\n'
            f'  pidfile: "{self.root}/unbound.pid"\n'
            f'  logfile: "{self.root}/unbound.log"\n'
            "  use-syslog: no\n"
            "  do-daemonize: no\n"
            "  do-not-query-localhost: no\n"
            "  num-threads: 1\n"
            "  verbosity: 1\n"
            "  val-log-level: 2\n"
            '  module-config: "validator iterator"\n'
            "  access-control: 127.0.0.0/8 allow\n"
            "  cache-max-ttl: 1\n"
            "  cache-max-negative-ttl: 1\n"
            "  qname-minimisation: no\n"
            "  harden-dnssec-stripped: yes\n"
            # RFC 6761 names: Unbound answers "test." itself (NXDOMAIN) unless told not to.
            '  local-zone: "test." nodefault\n' + anchors + "forward-zone:\n"
            '  name: "."\n'
            f"  forward-addr: {LOOPBACK}@{self.nsd_port}\n"
            "remote-control:\n  control-enable: no\n"
        )

    # ---- life cycle ----------------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        self._render()
        try:
            subprocess.run(
                ["/usr/sbin/nsd-checkconf", str(self.root / "nsd.conf")], check=True, capture_output=True
            )
            self._spawn([NSD, "-d", "-c", str(self.root / "nsd.conf")], "nsd.out")
            self._wait(self.nsd_port, self.zones[0].origin, timeout)
            self._spawn([UNBOUND, "-d", "-c", str(self.root / "unbound.conf")], "unbound.out")
            self._wait(self.resolver_port, self.zones[0].origin, timeout)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, argv: list[str], out: str) -> None:
        with (self.root / out).open("wb") as fh:
            self._procs.append(
                subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            )

    def _wait(self, port: int, origin: str, timeout: float) -> None:
        query = dns.message.make_query(origin, "SOA")

        def answering() -> bool:
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited {proc.returncode}:\n{self.logs()}")
            try:
                dns.query.udp(query, LOOPBACK, port=port, timeout=0.5)
            except Exception:  # refused, timed out, not loaded yet: not up yet
                return False
            return True

        try:
            eventually(answering, timeout=timeout, message=f"DNS server on port {port} answering")
        except AssertionError as exc:
            raise RuntimeError(f"{exc}:\n{self.logs()}") from None

    def logs(self) -> str:
        parts = []
        for name in ("nsd.out", "nsd.log", "unbound.out", "unbound.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self._procs.clear()

    def __enter__(self) -> DNSStack:
        try:
            self.start()
        except BaseException:  # __exit__ will not run: leave no temp root behind
            shutil.rmtree(self.root, ignore_errors=True)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def anchors(zones: Mapping[str, ZoneSpec]) -> dict[str, str | None]:
    return {k: v.anchor for k, v in zones.items()}


@contextlib.contextmanager
def running(zones: Sequence[ZoneSpec]) -> Iterator[DNSStack]:
    with DNSStack(zones) as stack:
        yield stack
