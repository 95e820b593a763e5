"""IMAP receiving side on aioimaplib, with the STARTTLS and timing that aioimaplib lacks.

aioimaplib opens its own connection and has no STARTTLS. Here the TCP connection is made first (so it is
timed apart), handed to aioimaplib's protocol as a plain transport, and upgraded in place with
``loop.start_tls`` — before the greeting for implicit TLS, after ``STARTTLS`` for port 143 — which is
exactly what RFC 3501 §6.2.1 / RFC 8314 ask of a client. No downgrade, no second connection.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from aioimaplib import aioimaplib

from ._certs import facts_from_connection
from ._net import Credentials, Endpoint, client_context, tcp_connect, tls_error_message
from .errors import ProbeError, ProbeTimeout
from .recorder import Recorder

T = TypeVar("T")
# IMAP numbers are 32-bit (RFC 3501 nz-number): at most 10 digits. Longer is garbage, and int() of a
# few thousand digits would raise ValueError.
_EXISTS_RE = re.compile(rb"^(?:\* )?(\d{1,10}) EXISTS\b", re.IGNORECASE)
_FETCH_UID_RE = re.compile(rb"\bUID (\d{1,10})\b")


@dataclass(frozen=True)
class IMAPSettings:
    endpoint: Endpoint
    credentials: Credentials
    allow_plaintext_auth: bool = False
    mailbox: str = "INBOX"
    timeout: float = 10.0  # per command
    use_idle: bool = True


class _Client(aioimaplib.IMAP4):  # type: ignore[misc]
    """aioimaplib's client without its own connect: :meth:`IMAPSession.open` makes the connection."""

    def create_client(
        self, host: str, port: int, loop: Any, conn_lost_cb: Any = None, ssl_context: Any = None
    ) -> None:
        self.protocol = aioimaplib.IMAP4ClientProtocol(loop or asyncio.get_running_loop(), conn_lost_cb)


def parse_exists(lines: Iterable[bytes | bytearray]) -> int | None:
    """The last ``* n EXISTS`` count among untagged lines, if any."""
    count = None
    for line in lines:
        if isinstance(line, bytes) and (m := _EXISTS_RE.match(line)):
            count = int(m.group(1))
    return count


def parse_search(lines: Iterable[bytes | bytearray]) -> list[int]:
    """UIDs from the untagged SEARCH data.

    aioimaplib hands ``* SEARCH 1 2`` over as ``1 2`` (the name stripped); both forms are accepted, and a
    line that is not made of numbers only (the tagged status text) is ignored.
    """
    uids: list[int] = []
    for line in lines:
        if not isinstance(line, bytes):
            continue
        words = line.split()
        if words and words[0].upper() == b"SEARCH":
            words = words[1:]
        if words and all(w.isdigit() and len(w) <= 10 for w in words):
            uids.extend(int(w) for w in words)
    return uids


def parse_fetch_literals(lines: Iterable[bytes | bytearray]) -> dict[int, bytes]:
    """UID -> literal from a ``UID FETCH`` response.

    aioimaplib hands each literal over after its FETCH line; the UID may stand before the data
    (``1 FETCH (UID 5 BODY[] {n}``) or after it (``1 FETCH (BODY[] {n}`` ... `` UID 5)``), as servers differ.
    """
    out: dict[int, bytes] = {}
    uid: int | None = None
    literal: bytes | None = None  # a literal whose UID had not been seen yet
    for line in lines:
        if isinstance(line, bytearray):
            if uid is not None:
                out[uid] = bytes(line)
                literal = None
            else:
                literal = bytes(line)
            uid = None
            continue
        m = _FETCH_UID_RE.search(line)
        if b"FETCH" in line:
            uid = int(m.group(1)) if m is not None else None
            literal = None
        elif m is not None and literal is not None:  # the tail of the same FETCH: " UID 5)"
            out[int(m.group(1))] = literal
            literal = None
    return out


class IMAPSession:
    """One logged-in IMAP session on a selected mailbox, with every failure mapped to a probe reason."""

    def __init__(self, settings: IMAPSettings, recorder: Recorder, prefix: str = "receive") -> None:
        self.settings = settings
        self.recorder = recorder
        self.prefix = prefix
        self.exists = 0
        self._client: _Client | None = None
        self._lost: asyncio.Future[None] | None = None
        self.plain_capabilities: set[str] | None = None  # offered before STARTTLS (None: not seen)

    @property
    def capabilities(self) -> set[str]:
        return set(self._proto.capabilities) if self._client else set()

    @property
    def _proto(self) -> Any:
        assert self._client is not None
        return self._client.protocol

    async def _run(self, what: str, aw: Awaitable[T], reason: str = "receive_protocol") -> T:
        """Await an aioimaplib call with the per-command timeout, failing fast if the connection drops."""
        assert self._lost is not None
        task: asyncio.Future[T] = asyncio.ensure_future(aw)
        waiting: set[asyncio.Future[Any]] = {task, self._lost}
        try:
            done, _ = await asyncio.wait(
                waiting, timeout=self.settings.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except BaseException:
            task.cancel()
            raise
        if task in done:
            try:
                return task.result()
            except aioimaplib.CommandTimeout as exc:
                raise ProbeTimeout(f"IMAP {what}: no reply within {self.settings.timeout:g}s") from exc
            except (aioimaplib.AioImapException, OSError, ValueError) as exc:
                raise ProbeError(f"IMAP {what}: {exc}", reason=reason) from exc
        task.cancel()
        if self._lost.done():
            raise ProbeError(f"IMAP {what}: server closed the connection", reason=reason)
        raise ProbeTimeout(f"IMAP {what}: no reply within {self.settings.timeout:g}s")

    async def _command(self, what: str, aw: Awaitable[Any], reason: str = "receive_protocol") -> Any:
        self.recorder.commands += 1
        response = await self._run(what, aw, reason)
        if response.result != "OK":
            text = _tail_text(response.lines)
            raise ProbeError(f"IMAP {what} answered {response.result} {text}".rstrip(), reason=reason)
        return response

    async def open(self) -> None:
        """Connect, secure, log in and select; phases connect, tls, banner, login."""
        st, ep, rec, p = self.settings, self.settings.endpoint, self.recorder, self.prefix
        if ep.tls_mode == "none" and not st.allow_plaintext_auth:
            raise ProbeError("refusing IMAP LOGIN over an unencrypted connection", reason="config")
        await self.secure()
        proto = self._proto
        with rec.phase(f"{p}_login"):
            if "LOGINDISABLED" in proto.capabilities:
                raise ProbeError("IMAP server disables LOGIN on this connection", reason="receive_auth")
            resp = await self._run(
                "LOGIN", proto.login(st.credentials.username, st.credentials.password), reason="receive_auth"
            )
            rec.commands += 1
            if resp.result != "OK":
                raise ProbeError(f"IMAP LOGIN refused: {_tail_text(resp.lines)}", reason="receive_auth")
            if not any(c.startswith("IMAP4") for c in proto.capabilities) or len(proto.capabilities) < 3:
                await self._capability()
            resp = await self._command(f"SELECT {st.mailbox}", proto.select(st.mailbox))
            self.exists = parse_exists(resp.lines) or 0

    async def secure(self, tls_context: ssl.SSLContext | None = None) -> None:
        """Connect and secure the session as the endpoint asks, without logging in; phases connect, tls,
        banner. The TLS audit calls it alone: ``tls_context`` replaces the endpoint's context, and the
        capabilities offered before STARTTLS stay in ``plain_capabilities``. The TLS facts of the
        connection go to ``recorder.tls``."""
        st, ep, rec, p = self.settings, self.settings.endpoint, self.recorder, self.prefix
        loop = asyncio.get_running_loop()
        self._lost = loop.create_future()
        lost = self._lost

        def on_lost(exc: Exception | None) -> None:
            if not lost.done():
                lost.set_result(None)

        self._client = _Client(host=ep.host, port=ep.port, timeout=st.timeout, conn_lost_cb=on_lost)
        proto = self._proto
        if rec.debugging:
            _tap(proto, rec)
        ctx = (tls_context or client_context(ep.tls)) if ep.tls_mode != "none" else None
        with rec.phase(f"{p}_connect"):
            sock = await tcp_connect(ep, reason="receive_connect", timeout=st.timeout)
            rec.debug("C: imap", f"connect {ep.address} ({ep.tls_mode})")
            transport, _ = await loop.create_connection(lambda: proto, sock=sock)
        if ep.tls_mode == "implicit":
            assert ctx is not None
            with rec.phase(f"{p}_tls"):
                await self._start_tls(transport, ctx)
        with rec.phase(f"{p}_banner"):
            await self._run("greeting", proto.wait("AUTH|NONAUTH"), reason="receive_connect")
        if ep.tls_mode == "starttls":
            assert ctx is not None
            self.plain_capabilities = set(proto.capabilities)
            if "STARTTLS" not in proto.capabilities:
                raise ProbeError("IMAP server does not offer STARTTLS", reason="receive_tls")
            with rec.phase(f"{p}_tls"):
                cmd = aioimaplib.Command("STARTTLS", proto.new_tag(), loop=loop)
                await self._command("STARTTLS", proto.execute(cmd), reason="receive_tls")
                await self._start_tls(proto.transport, ctx)
                # RFC 3501 §6.2.1: capabilities learnt before TLS must be discarded.
                await self._capability()
        if self.ssl_object is not None:  # the TLS audit of this endpoint, from this very connection
            rec.tls[ep.address] = await facts_from_connection(self.ssl_object, ep, "imap", ep.tls_mode)

    async def _capability(self) -> None:
        """aioimaplib's CAPABILITY returns nothing and raises on NO/BAD; it refreshes ``capabilities``."""
        self.recorder.commands += 1
        await self._run("CAPABILITY", self._proto.capability())

    async def _start_tls(self, transport: asyncio.BaseTransport, ctx: ssl.SSLContext) -> None:
        ep = self.settings.endpoint
        loop = asyncio.get_running_loop()
        try:
            new = await loop.start_tls(
                cast(asyncio.WriteTransport, transport),
                self._proto,
                ctx,
                server_hostname=ep.server_hostname,
                ssl_handshake_timeout=self.settings.timeout,
            )
        except (ssl.SSLError, ConnectionError, OSError) as exc:
            raise ProbeError(f"IMAP: {tls_error_message(exc)}", reason="receive_tls") from exc
        except TimeoutError as exc:
            raise ProbeTimeout("IMAP: TLS handshake timed out") from exc
        if new is None:  # pragma: no cover - only when the transport closed during the handshake
            raise ProbeError("IMAP: connection closed during the TLS handshake", reason="receive_tls")
        self._proto.transport = new

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        transport = self._proto.transport if self._client else None
        return transport.get_extra_info("ssl_object") if transport is not None else None

    async def noop(self) -> bool:
        """NOOP (makes servers such as Dovecot look at the mailbox now); True if new mail was announced."""
        resp = await self._command("NOOP", self._proto.simple_command("NOOP"))
        return self._saw_exists(resp.lines)

    def _saw_exists(self, lines: Iterable[bytes | bytearray]) -> bool:
        count = parse_exists(lines)
        if count is None:
            return False
        grew = count > self.exists
        self.exists = count
        return grew or count > 0  # an EXISTS at all means the mailbox changed: worth a search

    async def idle(self, seconds: float) -> bool:
        """IDLE for up to ``seconds``; True if the server pushed new mail meanwhile."""
        client = self._client
        assert client is not None
        self.recorder.commands += 1
        idle_task = await self._run("IDLE", client.idle_start(timeout=max(seconds, 0.001) + 5))
        pushed: list[bytes] = []
        try:
            try:
                got = await asyncio.wait_for(client.wait_server_push(timeout=seconds), timeout=seconds + 1)
                if isinstance(got, list):
                    pushed.extend(got)
            except TimeoutError:
                pass
        finally:
            if client.has_pending_idle():
                client.idle_done()
                await self._run("DONE", idle_task)
        return self._saw_exists(pushed)

    async def search_header(self, header: str, value: str, *, undeleted: bool = False) -> list[int]:
        """UIDs whose ``header`` contains ``value``; with ``undeleted``, not those flagged \\Deleted."""
        self.recorder.commands += 1
        criteria = ("UNDELETED", "HEADER", header, value) if undeleted else ("HEADER", header, value)
        resp = await self._run("UID SEARCH", self._proto.search(*criteria, charset=None, by_uid=True))
        if resp.result != "OK":
            raise ProbeError(
                f"IMAP UID SEARCH answered {resp.result} {_tail_text(resp.lines)}", reason="receive_protocol"
            )
        return parse_search(resp.lines)

    @property
    def can_expunge_by_uid(self) -> bool:
        return "UIDPLUS" in self.capabilities

    async def fetch(self, uids: Iterable[int], part: str) -> dict[int, bytes]:
        uid_set = ",".join(str(u) for u in uids)
        if not uid_set:
            return {}
        self.recorder.commands += 1
        resp = await self._run(
            "UID FETCH",
            self._proto.fetch(uid_set, f"(UID {part})", by_uid=True, timeout=self.settings.timeout),
        )
        if resp.result != "OK":
            raise ProbeError(f"IMAP UID FETCH answered {resp.result}", reason="receive_protocol")
        return parse_fetch_literals(resp.lines)

    async def delete(self, uids: Iterable[int]) -> None:
        """Flag ``uids`` \\Deleted and, with UIDPLUS, expunge exactly those.

        Without UIDPLUS there is no way to expunge only our messages: a plain EXPUNGE also removes
        whatever the user has flagged \\Deleted, even between a check and the EXPUNGE. So our canaries
        stay flagged (gone from view in most clients) until the user's own client expunges, and later
        sweeps pass over them.
        """
        uid_set = ",".join(str(u) for u in uids)
        if not uid_set:
            return
        proto = self._proto
        await self._command(
            "UID STORE", proto.store(uid_set, "+FLAGS.SILENT", r"(\Deleted)", by_uid=True), reason="cleanup"
        )
        if self.can_expunge_by_uid:
            await self._command("UID EXPUNGE", proto.expunge(uid_set, by_uid=True), reason="cleanup")
        else:
            self.recorder.facts["imap_expunge_skipped"] = True

    async def close(self) -> None:
        """LOGOUT politely if possible, then drop the connection; never raises."""
        if self._client is None:
            return
        proto = self._proto
        try:
            if proto.transport is not None and not proto.transport.is_closing() and proto.state != "LOGOUT":
                await asyncio.wait_for(proto.logout(), timeout=min(self.settings.timeout, 2.0))
        except Exception:
            pass  # closing must not mask the run's result
        finally:
            if proto.transport is not None:
                proto.transport.close()
            self._client = None


def _tail_text(lines: Iterable[bytes | bytearray]) -> str:
    last = b""
    for line in lines:
        if isinstance(line, bytes):
            last = line
    return " ".join(last.decode(errors="replace").split())[:200]


def _tap(proto: Any, recorder: Recorder) -> None:
    """Copy the dialogue into the transcript (the recorder masks secrets by value)."""
    send: Callable[..., None] = proto.send
    received: Callable[[bytes], None] = proto.data_received

    def send_tapped(line: str, scrub: str | None = None) -> None:
        recorder.debug("C: imap", line)
        send(line, scrub=scrub)

    def received_tapped(data: bytes) -> None:
        for raw in bytes(data).split(b"\r\n"):
            if raw:
                text = raw.decode(errors="replace")
                recorder.debug("S: imap", text if len(text) < 300 else text[:300] + " …")
        received(data)

    proto.send = send_tapped
    proto.data_received = received_tapped
