"""Loopback port allocation and readiness/closure checks for the daemons of a test stack."""

from __future__ import annotations

import fcntl
import os
import random
import socket
import ssl
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

LOOPBACK_V4 = "127.0.0.1"
LOOPBACK_V6 = "::1"

# Test daemons listen on ports claimed from a range below the kernel's ephemeral range, each claim an
# exclusive flock on a file named for the port, held until this process ends. The kernel never hands out
# such a port (not for bind(0), nor as the source port of a connection), and no other test process (an
# xdist worker, a second suite) claims it: a daemon that is stopped and started again (Dovecot, Postfix
# restarts in the tests) finds its port still free. Ports chosen by bind(0) and released could be taken
# by anything in that gap ("Address already in use", seen with parallel suites).
PORT_LOCK_DIR = Path(tempfile.gettempdir()) / "mailcanary-test-ports"
_claims: dict[int, int] = {}  # port -> the fd whose flock claims it (kept open: closed at exit)


def _claim_range() -> tuple[int, int]:
    """[low, high) for claims: below the ephemeral range (net.ipv4.ip_local_port_range)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    if low <= 11024:
        raise RuntimeError(f"the ephemeral port range starts at {low}: no room below it for test ports")
    return max(1024, low - 12000), low


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def claim_ports(count: int, hosts: Sequence[str] = (LOOPBACK_V4,)) -> list[int]:
    """``count`` distinct ports, each free now on every one of ``hosts`` and claimed for the rest of this
    process: no other test process and no kernel-chosen port will take it (see PORT_LOCK_DIR)."""
    low, high = _claim_range()
    PORT_LOCK_DIR.mkdir(mode=0o1777, exist_ok=True)
    ports: list[int] = []
    start = random.randrange(low, high)
    for i in range(high - low):
        port = low + (start - low + i) % (high - low)
        if port in _claims:
            continue
        fd = os.open(PORT_LOCK_DIR / str(port), os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        if not all(_bindable(h, port) for h in hosts):
            os.close(fd)  # in use by something else: leave it
            continue
        _claims[port] = fd
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"no {count} free test ports in [{low}, {high})")


@dataclass(frozen=True)
class Endpoint:
    """One listening socket of a daemon, as the readiness check sees it."""

    name: str
    host: str
    port: int
    implicit_tls: bool = False

    @property
    def address(self) -> str:
        """``host:port`` with IPv6 literals bracketed, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def ipv6_available() -> bool:
    """True if ``::1`` can be bound: containers often run without IPv6 at all."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK_V6, 0))
    except OSError:
        return False
    return True


def free_ports(count: int, *, ipv6: bool = False) -> list[int]:
    """Ports free on 127.0.0.1 (and ``::1`` if asked), claimed for this process (see claim_ports)."""
    return claim_ports(count, (LOOPBACK_V4, LOOPBACK_V6) if ipv6 else (LOOPBACK_V4,))


def _unverified_context() -> ssl.SSLContext:
    # Readiness only: variant instances may serve expired or foreign chains on purpose.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def greets(endpoint: Endpoint, timeout: float = 2.0) -> bool:
    """True once the endpoint accepts and sends its first reply line (inside TLS for implicit-TLS ports).

    Accepting alone is not enough: Postfix's master(8) accepts before smtpd is spawned. And a
    connection dropped right after accept leaves a Dovecot login process half-initialised; one caught
    by a shutdown then holds the master for 5 s. A full greeting lets it finish first.
    """
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as raw:
            raw.settimeout(timeout)
            if endpoint.implicit_tls:
                with _unverified_context().wrap_socket(raw, server_hostname=None) as tls:
                    line = tls.recv(512)
            else:
                line = raw.recv(512)
    except OSError:
        return False
    return line.startswith((b"220", b"* OK", b"+OK"))


def accepts(endpoint: Endpoint, timeout: float = 1.0) -> bool:
    """True if a TCP connection to the endpoint succeeds at all."""
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_ready(endpoints: Iterable[Endpoint], timeout: float) -> list[Endpoint]:
    """Wait until every endpoint greets; return the ones still silent when the timeout ends."""
    pending = list(endpoints)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [e for e in pending if not greets(e, timeout=min(2.0, max(0.1, timeout)))]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return pending


def _listening_ports() -> set[tuple[str, int]] | None:
    """(host, port) of loopback TCP sockets in LISTEN state, from /proc/net/tcp{,6}; None if unreadable."""
    hosts = {"0100007F": LOOPBACK_V4, "00000000000000000000000001000000": LOOPBACK_V6}
    found: set[tuple[str, int]] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue  # no IPv6 in this kernel
        except OSError:
            return None
        for row in rows:
            fields = row.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                addr, port = fields[1].split(":")
                if addr in hosts:
                    found.add((hosts[addr], int(port, 16)))
    return found


def wait_closed(endpoints: Sequence[Endpoint], timeout: float) -> list[Endpoint]:
    """Wait until no endpoint listens any more; return the ones still listening at the timeout.

    Checking the port, not the pid: a stopped daemon can linger as a zombie (``kill -0`` succeeds).
    The kernel's socket table is read rather than connecting: Dovecot login processes inherit the
    listening socket, and a probe connection would hand one of them a client to wait on for seconds.
    """
    pending = list(endpoints)
    deadline = time.monotonic() + timeout
    while pending:
        listening = _listening_ports()
        if listening is None:
            pending = [e for e in pending if accepts(e, timeout=0.5)]
        else:
            pending = [e for e in pending if (e.host, e.port) in listening]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return pending
