"""The IMAP connection: TCP, implicit TLS or STARTTLS, the greeting and CAPABILITY, and the dialogue
itself: one command at a time (the session's lock), each response read whole through the bounded framing
layer (:mod:`probes.wire.framing`) within one deadline per command, and parsed on its own
(:mod:`probes.wire.imapwire`). Anything that puts the dialogue out of step drops the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from dataclasses import dataclass, field
from typing import Final

from probes.auth.credentials import Credentials
from probes.errors import ProbeError, ProbeTimeout, Reason
from probes.recorder import Recorder
from probes.wire import imapwire as wire
from probes.wire.certs import facts_from_connection
from probes.wire.framing import BoundedReader, ConnectionClosed, FrameError, ReadLimits
from probes.wire.net import (
    Endpoint,
    client_context,
    close_writer,
    tcp_connect,
    tls_error_message,
)

PROTOCOL: Final = "receive_protocol"


@dataclass(frozen=True)
class IMAPSettings:
    endpoint: Endpoint
    credentials: Credentials
    allow_plaintext_auth: bool = False
    mailbox: str = "INBOX"
    timeout: float = 10.0  # per command
    use_idle: bool = True
    limits: ReadLimits = field(default_factory=ReadLimits)
    quota: bool = True  # read RFC 9208 quota (GETQUOTAROOT) when the server offers QUOTA


class IMAPConnection:
    """One IMAP connection with every failure mapped to a probe reason; :meth:`secure` opens it, the
    protocol layers above send their commands through :meth:`_command`."""

    def __init__(self, settings: IMAPSettings, recorder: Recorder, prefix: str = "receive") -> None:
        self.settings = settings
        self.recorder = recorder
        self.prefix = prefix
        self.exists = 0
        self.uidnext: int | None = None  # UIDNEXT of the last SELECT (RFC 3501 requires it)
        self.uidvalidity: int | None = None  # UIDVALIDITY of the last SELECT/EXAMINE, if sent
        self.permanent_flags: frozenset[str] | None = None  # PERMANENTFLAGS of the last SELECT
        self._idle_tag: bytes | None = None  # an IDLE left running by idle_begin (no reader meanwhile)
        self._idle_pushed: list[wire.Response] = []
        self._caps: set[str] = set()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._in: BoundedReader | None = None
        self._tags = (f"M{n}".encode() for n in itertools.count(1))
        self._closed = False
        # One reader per session, always: every command (and IDLE, with its reader task) holds this from
        # the first byte sent to the tagged reply, so no two coroutines ever read the stream at once.
        self._busy = asyncio.Lock()
        self.plain_capabilities: set[str] | None = None  # offered before STARTTLS (None: not seen)

    @property
    def capabilities(self) -> set[str]:
        return set(self._caps)

    # --- opening ---------------------------------------------------------------------------------------

    async def secure(self, tls_context: ssl.SSLContext | None = None) -> None:
        """Connect and secure the session as the endpoint asks, without logging in; phases connect, tls,
        banner. The TLS audit calls it alone: ``tls_context`` replaces the endpoint's context, and the
        capabilities offered before STARTTLS stay in ``plain_capabilities``. The TLS facts of the
        connection go to ``recorder.tls``."""
        st, ep, rec, p = self.settings, self.settings.endpoint, self.recorder, self.prefix
        ctx = (tls_context or client_context(ep.tls)) if ep.tls_mode != "none" else None
        with rec.phase(f"{p}_connect"):
            sock = await tcp_connect(ep, reason="receive_connect", timeout=st.timeout)
            rec.debug("C: imap", f"connect {ep.address} ({ep.tls_mode})")
            try:
                self._reader, self._writer = await asyncio.open_connection(
                    sock=sock, limit=st.limits.max_line + 2
                )
            except OSError as exc:
                sock.close()
                raise ProbeError(f"cannot connect to {ep.address}: {exc}", reason="receive_connect") from exc
            self._in = BoundedReader(self._reader, st.limits, PROTOCOL)
        try:
            if ep.tls_mode == "implicit":
                assert ctx is not None
                with rec.phase(f"{p}_tls"):
                    await self._start_tls(ctx)
            with rec.phase(f"{p}_banner"):
                await self._greeting()
            if ep.tls_mode == "starttls":
                assert ctx is not None
                if not self._caps:
                    await self._capability()
                self.plain_capabilities = set(self._caps)
                if "STARTTLS" not in self._caps:
                    raise ProbeError("IMAP server does not offer STARTTLS", reason="receive_tls")
                with rec.phase(f"{p}_tls"):
                    await self._command("STARTTLS", [b"STARTTLS"], reason="receive_tls")
                    if self._reader is not None and getattr(self._reader, "_buffer", None):
                        # Bytes sent in clear after the STARTTLS reply would be read as if under TLS
                        # (CVE-2011-0411 and kin); StreamReader has no public peek.
                        raise ProbeError(
                            "server sent data after its STARTTLS reply, before the TLS handshake",
                            reason="receive_tls",
                        )
                    await self._start_tls(ctx)
                    # RFC 3501 §6.2.1: capabilities learnt before TLS must be discarded.
                    self._caps = set()
                    await self._capability()
            elif not self._caps:
                await self._capability()
            if self.ssl_object is not None:  # the TLS audit of this endpoint, from this very connection
                rec.tls[ep.address] = await facts_from_connection(self.ssl_object, ep, "imap", ep.tls_mode)
        except BaseException:
            self._abort()
            raise

    async def _greeting(self) -> None:
        """``* OK`` / ``* PREAUTH`` at once; ``* BYE`` is a refused connection; anything else is garbage."""
        try:
            async with asyncio.timeout(self.settings.timeout):
                resp = await self._read_response("greeting", None, self.settings.limits.max_line)
        except TimeoutError:
            self._abort()
            raise ProbeTimeout(f"IMAP greeting: none within {self.settings.timeout:g}s") from None
        except ConnectionClosed as exc:
            self._abort()
            reason: Reason = "receive_connect" if not exc.partial and not self._in_received() else PROTOCOL
            raise ProbeError(f"IMAP greeting: {exc.message}", reason=reason) from None
        except ProbeError:
            self._abort()
            raise
        status = resp.status if resp.tag == b"*" else None
        if status == b"BYE":
            self._abort()
            raise ProbeError(f"IMAP server refused the session: BYE {resp.text()}", reason="receive_connect")
        if status not in (b"OK", b"PREAUTH"):
            self._abort()
            raise ProbeError(f"IMAP greeting is not * OK: {wire.show(resp.parts[0] or b'')}", reason=PROTOCOL)
        caps = wire.capabilities_of(resp)
        if caps is not None:
            self._caps = caps

    def _in_received(self) -> bool:
        return self._in is not None and self._in.received_any

    async def _capability(self) -> None:
        _, untagged = await self._command("CAPABILITY", [b"CAPABILITY"])
        for resp in untagged:
            caps = wire.capabilities_of(resp)
            if caps is not None:
                self._caps = caps

    async def _start_tls(self, ctx: ssl.SSLContext) -> None:
        """The handshake under the step deadline: a stall is ``timeout`` after one step, like any stall."""
        assert self._writer is not None
        ep = self.settings.endpoint
        try:
            async with asyncio.timeout(self.settings.timeout):
                # asyncio's own handshake timeout is set later than ours, so the stall rule is ours alone.
                await self._writer.start_tls(
                    ctx, server_hostname=ep.server_hostname, ssl_handshake_timeout=self.settings.timeout + 5
                )
        except TimeoutError:
            self._abort()
            raise ProbeTimeout(f"IMAP: TLS handshake stalled for {self.settings.timeout:g}s") from None
        except (ssl.SSLError, ConnectionError, OSError, EOFError) as exc:
            self._abort()
            raise ProbeError(f"IMAP: {tls_error_message(exc)}", reason="receive_tls") from exc
        except ValueError as exc:
            self._abort()
            raise ProbeError(f"IMAP: cannot start TLS: {exc}", reason="config") from exc

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        if self._writer is None:
            return None
        obj = self._writer.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    # --- the dialogue ----------------------------------------------------------------------------------

    async def _read_response(self, what: str, tag: bytes | None, literal_cap: int) -> wire.Response:
        """One whole response, literals included; a literal over ``literal_cap`` but within the reply
        budget is read and dropped (``None`` part), a bigger one ends the session."""
        assert self._in is not None
        line = await self._in.line(what)
        self._debug_line(line)
        resp = wire.Response(tag=wire.parse_tag(line, tag))
        while True:
            m = wire.LITERAL.search(line)
            if m is None or resp.tag == b"+":
                resp.parts.append(line)
                return resp
            resp.parts.append(line[: m.start()])
            n = int(m.group(1))
            if n <= literal_cap:
                resp.parts.append(await self._in.exactly(n, literal_cap, what))
            elif n <= self.settings.limits.max_message:
                await self._in.discard(n, what)
                resp.parts.append(None)
            else:
                raise FrameError(
                    f"literal of {n} bytes in the reply to {what} (limit {self.settings.limits.max_message})",
                    reason=PROTOCOL,
                )
            self.recorder.debug("S: imap", f"({n} bytes of literal data)")
            line = await self._in.line(what)
            self._debug_line(line)

    def _debug_line(self, line: bytes) -> None:
        if self.recorder.debugging:
            text = line.decode(errors="replace")
            self.recorder.debug("S: imap", text if len(text) < 300 else text[:300] + " …")

    async def _send(self, tag: bytes, pieces: list[bytes | str], shown: str, what: str) -> None:
        """Send ``tag pieces``: str pieces are strings (quoted, or a synchronising literal if need be)."""
        assert self._writer is not None
        self.recorder.debug("C: imap", f"{tag.decode()} {shown}")
        line = tag + b" "
        for piece in pieces:
            if isinstance(piece, bytes):
                line += piece
                continue
            quoted = wire.quote(piece)
            if quoted is not None:
                line += quoted
                continue
            data = piece.encode("utf-8")
            self._writer.write(line + b"{%d}\r\n" % len(data))
            await self._writer.drain()
            resp = await self._read_response(what, tag, self.settings.limits.max_line)
            if resp.tag != b"+":
                raise ProbeError(f"IMAP {what} answered {resp.text()}", reason=PROTOCOL)
            line = data
        self._writer.write(line + b"\r\n")
        await self._writer.drain()

    async def _command(
        self,
        what: str,
        pieces: list[bytes | str],
        *,
        shown: str | None = None,
        reason: Reason = PROTOCOL,
        literal_cap: int | None = None,
    ) -> tuple[wire.Response, list[wire.Response]]:
        """Send one command and read up to its tagged reply within one step: ``(tagged, untagged)``.

        A NO or BAD raises with ``reason``; garbage, a limit passed, a lost connection raise
        ``receive_protocol`` and end the session (it is out of step); silence raises ``timeout``.
        """
        async with self._busy:
            return await self._command_now(what, pieces, shown=shown, reason=reason, literal_cap=literal_cap)

    async def _command_now(
        self,
        what: str,
        pieces: list[bytes | str],
        *,
        shown: str | None,
        reason: Reason,
        literal_cap: int | None,
    ) -> tuple[wire.Response, list[wire.Response]]:
        if self._closed or self._in is None:
            raise ProbeError(f"IMAP {what}: the connection is closed", reason=PROTOCOL)
        tag = next(self._tags)
        self.recorder.commands += 1
        cap = self.settings.limits.max_line if literal_cap is None else literal_cap
        untagged: list[wire.Response] = []
        try:
            async with asyncio.timeout(self.settings.timeout):
                self._in.reset_budget()
                await self._send(tag, pieces, shown or what, what)
                while True:
                    resp = await self._read_response(what, tag, cap)
                    if resp.tag == tag:
                        break
                    self._note(resp)
                    untagged.append(resp)
        except TimeoutError:
            self._abort()
            raise ProbeTimeout(f"IMAP {what}: no reply within {self.settings.timeout:g}s") from None
        except ProbeError as exc:
            self._abort()
            if exc.reason == reason:
                raise
            raise ProbeError(f"IMAP {what}: {exc.message}", reason=exc.reason) from None
        except OSError as exc:
            self._abort()
            raise ProbeError(f"IMAP {what}: connection lost: {exc}", reason=PROTOCOL) from None
        if resp.status != b"OK":
            status = (resp.status or b"?").decode()
            raise ProbeError(f"IMAP {what} answered {status} {resp.text()}".rstrip(), reason=reason)
        return resp, untagged

    def _note(self, resp: wire.Response) -> None:
        """Keep track of what the server says unasked (the message count)."""
        event = wire.number_event(resp)
        if event is not None and event[1] == b"EXPUNGE" and self.exists > 0:
            self.exists -= 1

    # --- closing ---------------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        """False once the connection was dropped (a timeout or garbage put the dialogue out of step)."""
        return not self._closed and self._in is not None

    async def close(self) -> None:
        """Say LOGOUT and close the connection (TLS close_notify, within CLOSE_TIMEOUT); never raises.
        The reply is not waited for: nothing depends on it once the session's work is done (so it is
        not read, and the transcript shows none). While another command is in flight on this session
        (a task cut short, not yet unwound), no LOGOUT is sent beside it: the connection is dropped."""
        if self._closed or self._writer is None:
            self._closed = True
            return
        if self._busy.locked():
            self._abort()
            await close_writer(self._writer)
            return
        self._closed = True
        try:
            tag = next(self._tags)
            self.recorder.commands += 1
            self.recorder.debug("C: imap", f"{tag.decode()} LOGOUT")
            self._writer.write(tag + b" LOGOUT\r\n")
        except (OSError, RuntimeError):
            pass  # closing must not mask the run's result
        await close_writer(self._writer)

    def abort(self) -> None:
        """Drop the connection at once (a caller cut a command short): no LOGOUT on close."""
        self._abort()

    def _abort(self) -> None:
        """Drop the connection at once: the dialogue can no longer be trusted to be in step."""
        if not self._closed:
            self._closed = True
            if self._writer is not None:
                self._writer.transport.abort()
