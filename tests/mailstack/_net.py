"""Loopback port allocation and readiness/closure checks for the daemons of a test stack."""

from __future__ import annotations

import socket
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


def greets(endpoint: Endpoint, timeout: float = 2.0) -> bool:
    """True once the endpoint accepts and (plain-text protocols) sends its first reply line.

    Accepting alone is not enough for Postfix: master(8) accepts before smtpd is spawned. For
    implicit-TLS ports accepting is enough (a handshake would only test the certificate).
    """
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as sock:
            if endpoint.implicit_tls:
                return True
            sock.settimeout(timeout)
            line = sock.recv(512)
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


def wait_closed(endpoints: Sequence[Endpoint], timeout: float) -> list[Endpoint]:
    """Wait until no endpoint accepts; return the ones still open when the timeout ends.

    Checking the port, not the pid: a stopped daemon can linger as a zombie (``kill -0`` succeeds).
    """
    pending = list(endpoints)
    deadline = time.monotonic() + timeout
    while pending:
        pending = [e for e in pending if accepts(e, timeout=0.5)]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return pending
