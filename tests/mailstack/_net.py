"""Loopback port allocation and readiness/closure checks for the daemons of a test stack."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

LOOPBACK_V4 = "127.0.0.1"
LOOPBACK_V6 = "::1"

# Ports handed out by this process: the kernel may give a port back once its probe socket is closed,
# and two instances of one session must never be rendered with the same number.
_handed_out: set[int] = set()


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
    """Ports free on 127.0.0.1 (and ``::1`` if asked), chosen by the kernel, never fixed numbers.

    All probe sockets stay bound until every port is chosen, so the numbers are distinct. Another
    process may still take one before the daemon binds it; the start-up check then names that port.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s4)
            s4.bind((LOOPBACK_V4, 0))
            port = int(s4.getsockname()[1])
            if port in _handed_out:
                continue
            if ipv6:
                s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                held.append(s6)
                s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s6.bind((LOOPBACK_V6, port))
                except OSError:
                    continue
            ports.append(port)
    finally:
        for s in held:
            s.close()
    _handed_out.update(ports)
    return ports


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
