"""Endpoints, TLS client contexts and the TCP connect shared by every protocol probe."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import ssl
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from probes.errors import ProbeError, ProbeTimeout, Reason

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


MAX_CONTEXTS = 256  # distinct TLS configurations kept; a config has a handful, /probe modules a few more
LEGACY_CIPHERS_FLOOR = "ALL:@SECLEVEL=0"

_ContextKey = tuple[TLSSettings, bool, tuple[Any, ...]]
_contexts: OrderedDict[_ContextKey, ssl.SSLContext] = OrderedDict()
_contexts_lock = threading.Lock()
_builds = 0


def _file_stamp(path: str | None) -> tuple[int, int] | None:
    """(mtime, size) of a file the context loads: a rotated CA or client certificate makes a new key."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None  # the build below raises the real error
    return st.st_mtime_ns, st.st_size


def client_context(settings: TLSSettings, *, any_version: bool = False) -> ssl.SSLContext:
    """A shared client context: TLS 1.2+ and full verification unless ``insecure_skip_verify`` says otherwise.

    Built once per distinct configuration (settings, ``any_version``, and the files' mtime and size) and
    reused by every connection: with the system trust store a build costs ~40 ms of CPU. Callers must
    not modify the context they get. ``any_version`` also allows TLS 1.0/1.1 with every cipher (the
    audit's unverified second look, so a server that speaks only old TLS still shows its certificate).
    :func:`clear_contexts` drops them all (a reload does, so a changed trust store is read again).
    """
    global _builds
    key: _ContextKey = (
        settings,
        any_version,
        (_file_stamp(settings.ca_file), _file_stamp(settings.cert_file), _file_stamp(settings.key_file)),
    )
    with _contexts_lock:
        ctx = _contexts.get(key)
        if ctx is not None:
            _contexts.move_to_end(key)
            return ctx
    ctx = _build_context(settings, any_version)
    with _contexts_lock:
        _builds += 1
        _contexts[key] = ctx
        while len(_contexts) > MAX_CONTEXTS:
            _contexts.popitem(last=False)
    return ctx


def _build_context(settings: TLSSettings, any_version: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if settings.cert_file:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    if any_version:
        with contextlib.suppress(ValueError, ssl.SSLError), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # allowing TLS 1.0 on purpose
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.set_ciphers(LEGACY_CIPHERS_FLOOR)
    return ctx


def clear_contexts() -> None:
    """Forget every cached context (on reload): the next connection builds afresh."""
    with _contexts_lock:
        _contexts.clear()


def context_builds() -> int:
    """How many contexts were built so far (tests and benchmarks read it)."""
    return _builds


def _literal_infos(host: str, port: int) -> list[tuple[Any, Any, int, str, tuple[Any, ...]]] | None:
    """The getaddrinfo answer for an IP literal, computed here: no trip to the thread pool."""
    if "%" in host:  # a scoped IPv6 literal needs the interface index: let getaddrinfo do it
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 4:
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
    return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]


def family_of(address: str) -> int:
    """``socket.AF_INET`` or ``socket.AF_INET6`` for an IP literal (ValueError for anything else)."""
    return socket.AF_INET6 if ipaddress.ip_address(address.split("%")[0]).version == 6 else socket.AF_INET


def source_for(sources: Sequence[str], family: int) -> str | None:
    """The configured local address of ``family``, or None: connect from the system's default source.

    A source address can only be bound to a socket of its own family: an IPv4 source for an IPv6
    destination is not an error of the destination, it is simply not that family's source.
    """
    for source in sources:
        if family_of(source) == family:
            return source
    return None


SocketFactory = Callable[[tuple[Any, Any, int, str, tuple[Any, ...]]], socket.socket]


def source_socket_factory(sources: Sequence[str]) -> SocketFactory | None:
    """For aiohttp's ``TCPConnector(socket_factory=...)``: each socket bound to its family's source
    address (none of that family: the default source). None when no source address is configured."""
    if not sources:
        return None
    chosen = tuple(sources)

    def factory(info: tuple[Any, Any, int, str, tuple[Any, ...]]) -> socket.socket:
        family, type_, proto = info[0], info[1], info[2]
        sock = socket.socket(family, type_, proto)
        try:
            source = source_for(chosen, family)
            if source is not None:
                sock.bind((source, 0))
        except BaseException:
            sock.close()
            raise
        return sock

    return factory


async def tcp_connect(endpoint: Endpoint, reason: Reason, timeout: float | None = None) -> socket.socket:
    """Resolve and connect, trying each address in turn; returns a connected non-blocking socket.

    Done by hand (not by ``create_connection``) so that the TCP connect can be timed apart from the TLS
    handshake and the greeting that the protocol libraries fold into their own ``connect``.
    """
    try:
        async with asyncio.timeout(timeout):
            return await _connect(endpoint, reason)
    except TimeoutError as exc:
        raise ProbeTimeout(f"TCP connect to {endpoint.address} timed out after {timeout:g}s") from exc


async def _connect(endpoint: Endpoint, reason: Reason) -> socket.socket:
    loop = asyncio.get_running_loop()
    infos: list[tuple[Any, Any, int, str, tuple[Any, ...]]] | None
    infos = _literal_infos(endpoint.host, endpoint.port)
    if infos is None:
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


CLOSE_TIMEOUT: Final = 2.0  # a TLS close_notify the peer never answers must not hold up a probe


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a session's stream within CLOSE_TIMEOUT, else abort it; never raises but for cancellation
    (closing must not mask the run's result)."""
    try:
        writer.close()
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
    except Exception:
        writer.transport.abort()


def tls_error_message(exc: BaseException) -> str:
    """A one-line, user-facing reason for a failed handshake."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return f"TLS handshake failed: {exc}"
