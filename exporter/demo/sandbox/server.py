"""The sandbox mail server: SMTP in, one in-memory mailbox, IMAP and POP3 out, all in the caller's loop.

- SMTP (aiosmtpd): submission with STARTTLS + AUTH, and submissions with implicit TLS + AUTH. Mail for the
  demo user goes into the mailbox at once, or after an artificial delay (``delay`` plus up to ``jitter``
  seconds, so latency panels have something to show), the way an MTA queues then delivers.
- IMAP (pymap, its in-memory ``dict`` backend): implicit TLS, and STARTTLS on the plain port; IDLE, UIDPLUS.
- POP3 (our own small server, :mod:`.pop3`): implicit TLS, and STLS on the plain port; it reads and deletes
  in the same pymap mailbox, so IMAP sessions see POP3 deletions as EXPUNGEs.

Every listener binds ``host`` (loopback by default) on a free port, with a certificate from a throwaway CA
made at start (:mod:`.ca`). Credentials are only accepted under TLS, on every port, even from loopback.
pymap's internals (its dict backend's Login/Identity/Config) are used directly: pin pymap==0.36.7.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import random
import secrets
import shutil
import ssl
import tempfile
import uuid
import warnings
import weakref
from argparse import Namespace
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session, TLSSetupException
from proxyprotocol.sock import SocketInfoLocal
from pymap.backend.dict import Config as DictConfig
from pymap.backend.dict import Login
from pymap.backend.dict.mailbox import MailboxData
from pymap.concurrent import Subsystem
from pymap.imap import IMAPServer
from pymap.parsing.message import AppendMessage
from pymap.parsing.specials import FetchRequirement
from pymap.user import Passwords, UserMetadata
from pysasl.hashing import BuiltinHash

from exporter.demo.sandbox.ca import SandboxPKI, make_pki
from exporter.demo.sandbox.pop3 import DropMessage, POP3Server

log = logging.getLogger("mailcanary.sandbox")

DEMO_USER = "canary@sandbox.mailcanary.test"
HOSTNAME = "localhost"  # the name clients verify (the certificate also covers 127.0.0.1 and ::1)

Protocol = Literal["smtp", "imap", "pop3"]
TLSMode = Literal["starttls", "implicit"]
_MODES: tuple[TLSMode, ...] = ("starttls", "implicit")

_SERVICES: dict[tuple[str, str], tuple[str, str]] = {
    # (protocol, tls) -> (service name, what a user reads in the banner)
    ("smtp", "starttls"): ("submission", "SMTP submission, STARTTLS + AUTH"),
    ("smtp", "implicit"): ("submissions", "SMTP submission, implicit TLS + AUTH"),
    ("imap", "starttls"): ("imap", "IMAP, STARTTLS, IDLE"),
    ("imap", "implicit"): ("imaps", "IMAP, implicit TLS, IDLE"),
    ("pop3", "starttls"): ("pop3", "POP3, STLS"),
    ("pop3", "implicit"): ("pop3s", "POP3, implicit TLS"),
}


@dataclass(frozen=True)
class Listener:
    protocol: Protocol
    tls: TLSMode
    host: str
    port: int

    @property
    def service(self) -> str:
        return _SERVICES[(self.protocol, self.tls)][0]

    @property
    def description(self) -> str:
        return _SERVICES[(self.protocol, self.tls)][1]

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class _AiosmtpdNoise(logging.Filter):
    """aiosmtpd warns on every connection of a listener that allows AUTH without STARTTLS (our implicit
    TLS port, where the whole connection is TLS) and on its own deprecated login_data: not news."""

    NOISE = (
        "auth_required == True but auth_require_tls == False",
        "Requiring AUTH while not requiring TLS",
        "login_data is deprecated",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.NOISE)


def _quiet_aiosmtpd() -> None:
    logger = logging.getLogger("mail.log")
    if not any(isinstance(f, _AiosmtpdNoise) for f in logger.filters):
        logger.addFilter(_AiosmtpdNoise())


class _IMAPConfig(DictConfig):
    @property
    def greeting(self) -> bytes:
        return b"mailcanary sandbox IMAP server ready"  # pymap's default asks DNS for the FQDN


class _NotLocal(SocketInfoLocal):
    """pymap lets loopback clients LOGIN before STARTTLS (as Dovecot does); the sandbox stands in for a
    remote server, so it must demand TLS first even from 127.0.0.1."""

    @property
    def from_localhost(self) -> bool:
        return False


class _Maildrop:
    """The POP3 server's view of the pymap mailbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    async def snapshot(self) -> Sequence[DropMessage]:
        inbox = await self.sandbox._inbox()
        out: list[DropMessage] = []
        async for msg in inbox.messages():
            loaded = await msg.load_content(FetchRequirement.CONTENT)
            out.append(DropMessage(msg.uid, f"{inbox.uid_validity}.{msg.uid}", bytes(loaded.content)))
        return out

    async def delete(self, refs: Sequence[int]) -> None:
        inbox = await self.sandbox._inbox()
        await inbox.delete(refs)


class _SMTPHandler:
    """aiosmtpd handler: only the demo user is a local recipient; DATA goes to the mailbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() != self.sandbox.user.lower():
            return f"550 5.1.1 <{address}>: recipient unknown here (the sandbox has one mailbox)"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_exception(self, error: Exception) -> str:
        """A failed STARTTLS handshake (a TLS check trying TLS 1.0, a client that distrusts our CA) is the
        client's business, not a server error worth a traceback; anything else is logged."""
        if not isinstance(error, TLSSetupException):
            log.error("sandbox SMTP session failed: %s: %s", type(error).__name__, error)
        return f"500 5.0.0 sandbox error ({type(error).__name__})"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content if envelope.original_content is not None else envelope.content
        data = raw if isinstance(raw, bytes) else (raw or "").encode("utf-8", errors="surrogateescape")
        queue_id = uuid.uuid4().hex[:12].upper()
        transport = server.transport
        secured = session.ssl is not None or (
            transport is not None and transport.get_extra_info("ssl_object")
        )
        tls = "S" if secured else ""
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        received = (
            f"Return-Path: <{envelope.mail_from}>\r\n"
            f"Received: from {session.host_name} ([{peer}])\r\n"
            f"\tby {self.sandbox.hostname} (mailcanary sandbox) with ESMTP{tls}A id {queue_id}\r\n"
            f"\tfor <{envelope.rcpt_tos[0]}>; {format_datetime(datetime.now(UTC))}\r\n"
            # The sandbox's own verdict, so the first run shows one: honest about checking nothing
            # (no DNS: SPF, DKIM and DMARC are "none"), and a filter that scores everything 0.
            f"Authentication-Results: {self.sandbox.hostname} (mailcanary sandbox: no real checks);\r\n"
            f"\tauth={'pass' if session.authenticated else 'none'};\r\n"
            "\tspf=none (sandbox: no DNS); dkim=none (no signature); dmarc=none\r\n"
            "X-Spam-Status: No, score=0.0 required=5.0 tests=NONE (mailcanary sandbox: no filter)\r\n"
        ).encode()
        await self.sandbox._accept(received + data)
        return f"250 2.0.0 OK queued as {queue_id}"


class Sandbox:
    """A mail server for one demo mailbox, on loopback; ``async with Sandbox() as sb:`` or start/stop.

    ``directory`` receives the CA and server certificate (a private temporary directory, removed on stop,
    if not given). ``password`` is generated if not given.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        host: str = "127.0.0.1",
        user: str = DEMO_USER,
        password: str | None = None,
        delay: float = 0.0,
        jitter: float = 0.0,
        hostname: str = HOSTNAME,
    ) -> None:
        if delay < 0 or jitter < 0:
            raise ValueError("delay and jitter must be >= 0")
        self.host = host
        self.user = user
        self.password = password if password is not None else secrets.token_urlsafe(18)
        self.delay = delay
        self.jitter = jitter
        self.hostname = hostname
        self._directory = directory
        self._tmp: str | None = None
        self.pki: SandboxPKI | None = None
        self.listeners: list[Listener] = []
        self.delivered = 0  # messages put into the mailbox so far
        self._login: Login | None = None
        self._servers: list[asyncio.Server] = []
        self._smtp_sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._imap_sessions: set[asyncio.Task[None]] = set()
        self._pending: set[asyncio.Task[None]] = set()
        self._pop3: POP3Server | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _start(self) -> None:
        _quiet_aiosmtpd()
        if self._directory is None:
            self._tmp = tempfile.mkdtemp(prefix="mailcanary-sandbox-")
            directory = Path(self._tmp)
        else:
            directory = self._directory
        self.pki = pki = make_pki(directory, names=(self.hostname, "127.0.0.1", "::1"))
        tls = pki.server_context()
        await self._start_imap(tls)
        await self._start_smtp(tls)
        self._pop3 = POP3Server(self._pop3_login, tls, hostname=self.hostname)
        for mode in _MODES:
            port = await self._pop3.listen(self.host, 0, implicit_tls=mode == "implicit")
            self.listeners.append(Listener("pop3", mode, self.host, port))
        order = {k: i for i, k in enumerate(_SERVICES)}
        self.listeners.sort(key=lambda lst: order[(lst.protocol, lst.tls)])

    async def _start_imap(self, tls: ssl.SSLContext) -> None:
        args = Namespace(debug=False, passlib_cfg=None, proxy_protocol=None, inherited_sockets=None)
        common: dict[str, Any] = dict(
            host=self.host,
            port=0,
            ssl_context=tls,
            demo_data=False,
            demo_user=self.user,
            demo_password=self.password,
            # Checking a password inline and cheaply: pymap's default (PBKDF2, 500 000 rounds in a thread)
            # costs ~0.2 s per login, which every POP3 poll and IMAP session would pay.
            cpu_subsystem=Subsystem.for_asyncio(),
            hash_context=BuiltinHash(rounds=1000),
            reject_dnsbl=False,
        )
        implicit = _IMAPConfig(args, tls_enabled=False, **common)  # the listener is TLS already
        starttls = _IMAPConfig(args, tls_enabled=True, **common)  # offers STARTTLS, LOGINDISABLED before
        login = Login(implicit)
        hashed = await Passwords(implicit).hash_password(self.password)
        await login.demo_user_identity.set(UserMetadata(implicit, self.user, password=hashed))
        self._login = login
        await self._inbox()  # create the mailbox now, not on the first delivery
        for mode, config in zip(_MODES, (starttls, implicit), strict=True):
            server = await asyncio.start_server(
                self._imap_handler(IMAPServer(login, config)),
                host=self.host,
                port=0,
                ssl=tls if mode == "implicit" else None,
            )
            self._servers.append(server)
            self.listeners.append(Listener("imap", mode, self.host, _port(server)))

    def _imap_handler(
        self, imap: IMAPServer
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._imap_sessions.add(task)
            try:
                await imap(reader, writer, _NotLocal(writer, unique_id=uuid.uuid4().bytes))
            except (ConnectionError, ssl.SSLError, asyncio.CancelledError):
                pass
            except Exception:
                log.exception("sandbox IMAP session failed")
            finally:
                self._imap_sessions.discard(task)
                writer.close()

        return connected

    async def _start_smtp(self, tls: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        handler = _SMTPHandler(self)

        def authenticator(
            server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
        ) -> AuthResult:
            ok = isinstance(auth_data, LoginPassword) and self.check(
                auth_data.login.decode("utf-8", errors="replace"),
                auth_data.password.decode("utf-8", errors="replace"),
            )
            return AuthResult(success=ok, handled=False)  # handled=True would mean: reply already sent

        def factory(implicit: bool) -> SMTP:
            with warnings.catch_warnings():  # "Requiring AUTH while not requiring TLS": see _AiosmtpdNoise
                warnings.simplefilter("ignore", UserWarning)
                smtp = self._smtp(handler, tls, implicit, authenticator, loop)
            self._smtp_sessions.add(smtp)
            return smtp

        for mode in _MODES:
            implicit = mode == "implicit"
            server = await loop.create_server(
                lambda implicit=implicit: factory(implicit),
                host=self.host,
                port=0,
                ssl=tls if implicit else None,
            )
            self._servers.append(server)
            self.listeners.append(Listener("smtp", mode, self.host, _port(server)))

    def _smtp(
        self,
        handler: _SMTPHandler,
        tls: ssl.SSLContext,
        implicit: bool,
        authenticator: Callable[[SMTP, Session, Envelope, str, Any], AuthResult],
        loop: asyncio.AbstractEventLoop,
    ) -> SMTP:
        return SMTP(
            handler,
            hostname=self.hostname,
            ident="mailcanary sandbox ESMTP",
            tls_context=None if implicit else tls,
            require_starttls=not implicit,
            auth_required=True,
            auth_require_tls=not implicit,  # implicit: the whole connection is TLS already
            authenticator=authenticator,
            timeout=60,
            loop=loop,
        )

    async def stop(self) -> None:
        """Stop listening, end every session and pending delivery, remove the temporary directory."""
        for server in self._servers:
            server.close()
        for task in list(self._pending) + list(self._imap_sessions):
            task.cancel()
        for smtp in list(self._smtp_sessions):
            if smtp.transport is not None:
                smtp.transport.close()
        if self._pop3 is not None:
            await self._pop3.close()
        waiting = list(self._pending) + list(self._imap_sessions)
        if waiting:
            await asyncio.wait(waiting, timeout=2.0)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # --- what the protocols share --------------------------------------------------------------------------

    def check(self, user: str, password: str) -> bool:
        """The one mailbox's credentials (user names are case-insensitive, passwords not)."""
        return user.lower() == self.user.lower() and hmac.compare_digest(
            password.encode("utf-8", errors="surrogateescape"), self.password.encode()
        )

    async def _pop3_login(self, user: str, password: str) -> _Maildrop | None:
        return _Maildrop(self) if self.check(user, password) else None

    async def _inbox(self) -> MailboxData:
        assert self._login is not None, "sandbox not started"
        async with self._login.demo_user_identity.new_session() as session:
            return await session.mailbox_set.get_mailbox("INBOX")

    async def _accept(self, data: bytes) -> None:
        """Queue a message accepted by SMTP: into the mailbox now, or after the artificial delay."""
        wait = self.delay + (random.uniform(0, self.jitter) if self.jitter else 0.0)
        if wait <= 0:
            await self.deliver(data)
            return

        async def later() -> None:
            await asyncio.sleep(wait)
            await self.deliver(data)

        task = asyncio.create_task(later())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def deliver(self, data: bytes) -> None:
        """Put a message into the mailbox (marked \\Recent: IMAP IDLE sessions are told at once)."""
        inbox = await self._inbox()
        await inbox.append(AppendMessage(data, datetime.now(UTC), frozenset()), recent=True)
        self.delivered += 1

    async def messages(self) -> list[bytes]:
        """What the mailbox holds now, oldest first (for tests and the demo's own checks)."""
        return [m.data for m in await _Maildrop(self).snapshot()]

    # --- for callers ---------------------------------------------------------------------------------------

    def listener(self, protocol: str, tls: str) -> Listener:
        for lst in self.listeners:
            if lst.protocol == protocol and lst.tls == tls:
                return lst
        raise KeyError(f"no {protocol}/{tls} listener")

    @property
    def ca_file(self) -> Path:
        assert self.pki is not None, "sandbox not started"
        return self.pki.ca_file

    @property
    def pending(self) -> int:
        """Messages accepted but not yet delivered (artificial delay)."""
        return len(self._pending)


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])
