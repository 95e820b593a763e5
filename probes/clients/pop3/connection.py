"""The POP3 connection: TCP, implicit TLS or STLS (RFC 2595), the greeting, CAPA, and one command at a
time read through the shared bounded reader (:class:`probes.wire.framing.BoundedReader`).

Any failure that may leave the dialogue out of step (timeout, garbage, a limit passed, a lost
connection) aborts the connection, so a later command fails fast instead of reading a stale reply.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Final, Self, TypeAlias, TypeVar

from probes.clients.pop3.parse import PROTOCOL, Capabilities, as_text, parse_capa, parse_status
from probes.errors import ProbeError, ProbeTimeout, Reason
from probes.recorder import Recorder
from probes.wire.certs import facts_from_connection
from probes.wire.framing import (
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_MESSAGE,
    BoundedReader,
    ConnectionClosed,
    ReadLimits,
)
from probes.wire.net import Endpoint, client_context, close_writer, tcp_connect, tls_error_message

Lines: TypeAlias = list[bytes]  # an alias, because the client has a method called ``list``
_T = TypeVar("_T")

MAX_LINE: Final = DEFAULT_MAX_LINE  # RFC 2449 allows 512 octets per status line; message lines are longer
MAX_RESPONSE: Final = DEFAULT_MAX_MESSAGE  # cap on one multi-line response we keep (a canary is ~1 KiB)
MAX_COMMAND: Final = 255  # RFC 2449 section 4: longest command line, CRLF included


class POP3Connection:
    """One POP3 session's transport: connect and secure it, send a command, read its reply.

    Not safe for concurrent use from several tasks (no pipelining: a probe issues a handful of commands).
    The reader gives each line the step timeout (``read_timeout``) and caps every multi-line body at
    ``max_response`` bytes; a line over ``max_line`` ends the session, except in a foreign message
    (:meth:`_body_or_skip`).
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        recorder: Recorder,
        endpoint: Endpoint,
        *,
        timeout: float,
        max_line: int = MAX_LINE,
        max_response: int = MAX_RESPONSE,
    ) -> None:
        self.recorder = recorder
        self.endpoint = endpoint
        self.capabilities: Capabilities = {}
        self.greeting = ""
        self._reader = reader
        self._writer = writer
        self._timeout = timeout
        self._max_line = max_line
        self._max_response = max_response
        limits = ReadLimits(max_line=max_line, max_message=max_response)
        # No reply-wide byte budget: one status line per command, and every body has a cap of its own.
        self._in = BoundedReader(reader, limits, PROTOCOL, reply_budget=False, read_timeout=timeout)
        self._encrypted = False
        self._closed = False
        self._tls_context: ssl.SSLContext | None = None  # None: the endpoint's own (client_context)

    @classmethod
    async def connect(
        cls,
        endpoint: Endpoint,
        recorder: Recorder,
        *,
        phase_prefix: str = "receive",
        timeout: float = 10.0,
        max_line: int = MAX_LINE,
        max_response: int = MAX_RESPONSE,
        tls_context: ssl.SSLContext | None = None,
        on_plaintext: Callable[[Capabilities], None] | None = None,
    ) -> Self:
        """Connect, secure the session as ``endpoint.tls_mode`` asks, read the greeting and capabilities.

        For the TLS audit: ``tls_context`` replaces the endpoint's context, ``on_plaintext`` is shown the
        capabilities offered before STLS. The TLS facts of the connection go to ``recorder.tls``.
        """
        if endpoint.tls_mode not in ("implicit", "starttls", "none"):
            raise ProbeError(f"unknown tls_mode {endpoint.tls_mode!r}", reason="config")
        with recorder.phase(f"{phase_prefix}_connect"):
            try:
                async with asyncio.timeout(timeout):
                    sock = await tcp_connect(endpoint, reason="receive_connect")
            except TimeoutError as exc:
                raise ProbeTimeout(f"TCP connect to {endpoint.address} timed out after {timeout:g}s") from exc
            try:
                # The reader's own limit only bounds buffering; lines are checked against max_line.
                reader, writer = await asyncio.open_connection(sock=sock, limit=max(max_line + 2, 2**16))
            except OSError as exc:
                sock.close()
                raise ProbeError(
                    f"cannot connect to {endpoint.address}: {exc}", reason="receive_connect"
                ) from exc
        client = cls(
            reader, writer, recorder, endpoint, timeout=timeout, max_line=max_line, max_response=max_response
        )
        client._tls_context = tls_context
        try:
            await client._secure(phase_prefix, on_plaintext)
        except BaseException:
            client._abort()
            raise
        return client

    async def _secure(self, prefix: str, on_plaintext: Callable[[Capabilities], None] | None) -> None:
        endpoint, recorder = self.endpoint, self.recorder
        if endpoint.tls_mode == "implicit":
            with recorder.phase(f"{prefix}_tls"):
                await self._start_tls()
        with recorder.phase(f"{prefix}_banner"):
            ok, reply = await self._read_status("greeting", eof_reason="receive_connect")
            if not ok:
                raise ProbeError(f"server refused the session: -ERR {self._mask(reply)}", reason=PROTOCOL)
            self.greeting = reply
        if endpoint.tls_mode == "starttls":
            plain = await self.capa()
            if on_plaintext is not None:
                on_plaintext(plain)
            if "STLS" not in plain:
                raise ProbeError("server does not offer STLS", reason="receive_tls")
            with recorder.phase(f"{prefix}_tls"):
                await self._command("STLS", err_reason="receive_tls")
                self._refuse_buffered_plaintext()
                await self._start_tls()
        await self.capa()  # again after STLS: RFC 2595 says capabilities may change
        if (ssl_object := self.ssl_object) is not None:  # TLS audit, from this very connection
            recorder.tls[endpoint.address] = await facts_from_connection(
                ssl_object, endpoint, "pop3", endpoint.tls_mode
            )

    @property
    def encrypted(self) -> bool:
        return self._encrypted

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """For whoever records TLS facts (version, cipher, certificate) of this session."""
        obj = self._writer.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    async def capa(self) -> Capabilities:
        """Ask for, store and return the capabilities; a server without CAPA (or refusing it) has none."""
        ok, _, lines = await self._command("CAPA", multiline=True, tolerate_err=True)
        self.capabilities = parse_capa(lines) if ok else {}
        return self.capabilities

    async def close(self) -> None:
        """Drop the connection without QUIT, so that marked deletions are rolled back; never raises."""
        if self._closed:
            return
        self._closed = True
        await close_writer(self._writer)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # close, not quit: an aborted run must not commit half of its deletions.
        await self.close()

    # --- one command -----------------------------------------------------------------------------------

    async def _command(
        self,
        verb: str,
        *args: str,
        shown: str | None = None,
        multiline: bool = False,
        err_reason: Reason = PROTOCOL,
        tolerate_err: bool = False,
    ) -> tuple[bool, str, Lines]:
        """Send one command and read its reply: ``(ok, status text, body lines, unstuffed)``.

        ``-ERR`` raises with ``err_reason`` unless ``tolerate_err``; only +OK replies carry a body.
        """
        for arg in args:
            if any(ch in arg for ch in "\r\n\0"):
                # Never show the value: it may be the password.
                raise ProbeError(f"{verb} argument contains a line break or NUL", reason="config")
        line = " ".join((verb, *args))
        self.recorder.commands += 1
        await self._send(line, line if shown is None else shown, verb)
        ok, reply = await self._read_status(verb)
        body: Lines = []
        if ok and multiline:
            body = await self._guarded(self._in.dot_body(verb, self._max_response), verb)
            self.recorder.debug("S: pop3", f"({len(body)} lines)")
        if not ok and not tolerate_err:
            raise ProbeError(f"{verb} failed: -ERR {self._mask(reply)}", reason=err_reason)
        return ok, reply, body

    async def _body_or_skip(self, verb: str, keep: int) -> Lines | None:
        """The body of a message that may be foreign: None if over ``keep`` bytes or with a line over the
        line limit (read to its end and dropped, so the session stays in step)."""
        lines = await self._guarded(self._in.dot_body_or_skip(verb, keep, self._max_response), verb)
        self.recorder.debug(
            "S: pop3", f"({len(lines)} lines)" if lines is not None else "(skipped: over the limits)"
        )
        return lines

    async def _send(self, line: str, shown: str, what: str) -> None:
        if self._closed:
            raise ProbeError(f"cannot send {what}: the POP3 connection is closed", reason=PROTOCOL)
        self.recorder.debug("C: pop3", shown)
        try:
            self._writer.write(line.encode("utf-8") + b"\r\n")
            async with asyncio.timeout(self._timeout):
                await self._writer.drain()
        except TimeoutError as exc:
            self._abort()
            raise ProbeTimeout(f"timed out after {self._timeout:g}s sending {what}") from exc
        except OSError as exc:
            self._abort()
            raise ProbeError(f"connection lost while sending {what}: {exc}", reason=PROTOCOL) from exc

    async def _guarded(self, read: Awaitable[_T], what: str, *, eof_reason: Reason = PROTOCOL) -> _T:
        """Await one read of the reader; whatever fails ends the session. A connection closed or reset
        before the server sent anything (at the greeting) is ``eof_reason``: a refused connection."""
        if self._closed:
            if asyncio.iscoroutine(read):
                read.close()
            raise ProbeError(
                f"cannot read the reply to {what}: the POP3 connection is closed", reason=PROTOCOL
            )
        try:
            return await read
        except ConnectionClosed as exc:
            self._abort()
            if exc.partial or self._in.received_any or eof_reason == exc.reason:
                raise
            raise ProbeError(exc.message, reason=eof_reason) from exc
        except BaseException:
            self._abort()
            raise

    async def _read_line(self, what: str, *, eof_reason: Reason = PROTOCOL) -> bytes:
        """One line without its terminator, logged to the transcript, within the per-read timeout."""
        line = await self._guarded(self._in.line(what), what, eof_reason=eof_reason)
        self.recorder.debug("S: pop3", as_text(line))
        return line

    async def _read_status(self, what: str, *, eof_reason: Reason = PROTOCOL) -> tuple[bool, str]:
        return self._status(await self._read_line(what, eof_reason=eof_reason), what)

    def _status(self, line: bytes, what: str) -> tuple[bool, str]:
        try:
            return parse_status(line)
        except ProbeError as exc:
            self._abort()
            raise ProbeError(f"{self._mask(exc.message)} in reply to {what}", reason=PROTOCOL) from None

    # --- TLS -------------------------------------------------------------------------------------------

    async def _start_tls(self) -> None:
        try:
            context = self._tls_context or client_context(self.endpoint.tls)
        except OSError as exc:  # includes ssl.SSLError: an unreadable CA or client certificate
            raise ProbeError(f"cannot load TLS settings: {exc}", reason="config") from exc
        try:
            async with asyncio.timeout(self._timeout):
                await self._writer.start_tls(context, server_hostname=self.endpoint.server_hostname)
        except TimeoutError as exc:
            self._abort()
            raise ProbeTimeout(
                f"TLS handshake with {self.endpoint.address} timed out after {self._timeout:g}s"
            ) from exc
        except (OSError, EOFError) as exc:
            self._abort()
            raise ProbeError(tls_error_message(exc), reason="receive_tls") from exc
        except ValueError as exc:  # e.g. an empty server_hostname with hostname checking on
            self._abort()
            raise ProbeError(f"cannot start TLS: {exc}", reason="config") from exc
        self._encrypted = True

    def _refuse_buffered_plaintext(self) -> None:
        """Bytes already buffered after the STLS reply were sent in clear but would be read as if under TLS.

        That is the STARTTLS command-injection hole (CVE-2011-0411 and kin); StreamReader offers no public
        way to peek at its buffer, hence the private attribute.
        """
        if getattr(self._reader, "_buffer", b""):
            self._abort()
            raise ProbeError(
                "server sent data after its STLS reply, before the TLS handshake", reason="receive_tls"
            )

    def _abort(self) -> None:
        """Drop the connection at once: the dialogue can no longer be trusted to be in step."""
        if not self._closed:
            self._closed = True
            self._writer.transport.abort()

    def _mask(self, reply: str) -> str:
        return self.recorder.masker(reply)
