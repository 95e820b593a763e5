"""Endpoints, TLS client contexts and the TCP connect shared by every protocol probe."""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .errors import ProbeError, ProbeTimeout

if TYPE_CHECKING:
    from .oauth import TokenSource

TLSMode = Literal["implicit", "starttls", "none"]


@dataclass(frozen=True)
class TLSSettings:
    """How a client verifies a server; defaults verify chain and hostname against the system store."""

    ca_file: str | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    tls_mode: TLSMode = "starttls"
    tls: TLSSettings = field(default_factory=TLSSettings)
    source_address: str | None = None  # bind the client socket here (a chosen loopback, a chosen NIC)

    @property
    def address(self) -> str:
        """``host:port`` with IPv6 literals bracketed: the ``endpoint`` label value."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def server_hostname(self) -> str:
        """The name sent in SNI and checked against the certificate."""
        return self.tls.server_name or self.host


@dataclass(frozen=True)
class Credentials:
    """A login: a password, or with ``token_source`` an OAuth 2.0 bearer token (XOAUTH2/OAUTHBEARER)."""

    username: str
    password: str = field(default="", repr=False)
    token_source: TokenSource | None = field(default=None, repr=False, compare=False)
    mechanism: str = "auto"  # OAuth only: auto (OAUTHBEARER, else XOAUTH2), xoauth2 or oauthbearer


def client_context(settings: TLSSettings) -> ssl.SSLContext:
    """A client context: TLS 1.2+ and full verification unless ``insecure_skip_verify`` says otherwise."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if settings.cert_file:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    return ctx


async def tcp_connect(endpoint: Endpoint, reason: str, timeout: float | None = None) -> socket.socket:
    """Resolve and connect, trying each address in turn; returns a connected non-blocking socket.

    Done by hand (not by ``create_connection``) so that the TCP connect can be timed apart from the TLS
    handshake and the greeting that the protocol libraries fold into their own ``connect``.
    """
    try:
        async with asyncio.timeout(timeout):
            return await _connect(endpoint, reason)
    except TimeoutError as exc:
        raise ProbeTimeout(f"TCP connect to {endpoint.address} timed out after {timeout:g}s") from exc


async def _connect(endpoint: Endpoint, reason: str) -> socket.socket:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ProbeError(f"cannot resolve {endpoint.host}: {exc.strerror or exc}", reason=reason) from exc
    last: OSError | None = None
    for family, type_, proto, _, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            if endpoint.source_address:
                sock.bind((endpoint.source_address, 0))
            await loop.sock_connect(sock, addr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    detail = last.strerror if last is not None and last.strerror else str(last)
    raise ProbeError(f"cannot connect to {endpoint.address}: {detail}", reason=reason)


def tls_error_message(exc: BaseException) -> str:
    """A one-line, user-facing reason for a failed handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return f"TLS handshake failed: {exc}"
