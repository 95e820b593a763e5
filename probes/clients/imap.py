"""IMAP receiving side: a small client on a bounded framing layer (RFC 3501, IDLE, UIDPLUS, STARTTLS).

Why not aioimaplib (which this module used before): its protocol buffers whatever arrives with no limit
(a server announcing ``{999999999}`` grew the daemon by 200 MB), parses in callbacks whose errors surface
in tasks nobody awaits (a garbage greeting waited out the step timeout and logged a traceback), and its
response lists lose a literal when another session's ``* n FETCH (FLAGS …)`` lands beside it. Bounding
it from outside would mean re-framing every byte before it sees them, i.e. writing this parser anyway.
The handful of commands a probe needs are here instead, each read through :mod:`probes.wire.framing` with
hard limits and one deadline per command, and every response parsed on its own (:mod:`probes.wire.imapwire`).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field

from probes.auth.credentials import Credentials
from probes.auth.oauth import error_of_challenge, initial_response
from probes.errors import ProbeError, ProbeTimeout
from probes.receipt.placement import Namespace, parse_namespace
from probes.receipt.quota import Usage, parse_quota, tightest
from probes.recorder import MASK, Recorder
from probes.wire import imapwire as wire
from probes.wire.certs import facts_from_connection
from probes.wire.framing import BoundedReader, ConnectionClosed, FrameError, ReadLimits
from probes.wire.net import (
    CLOSE_TIMEOUT,
    Endpoint,
    client_context,
    close_writer,
    tcp_connect,
    tls_error_message,
)

FETCH_BATCH = 50  # UIDs per FETCH: bounds one reply to FETCH_BATCH x the item cap
_PROTOCOL = "receive_protocol"


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


@dataclass
class Fetched:
    """Messages of one FETCH by UID; ``skipped`` are UIDs whose data was over the cap (not kept)."""

    data: dict[int, bytes] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    skipped: set[int] = field(default_factory=set)


class QuotaMalformed(ProbeError):
    """A ``* QUOTA`` line we cannot read: the dialogue is still in step."""


class IMAPSession:
    """One logged-in IMAP session on a selected mailbox, with every failure mapped to a probe reason."""

    def __init__(self, settings: IMAPSettings, recorder: Recorder, prefix: str = "receive") -> None:
        self.settings = settings
        self.recorder = recorder
        self.prefix = prefix
        self.exists = 0
        self.uidnext: int | None = None  # UIDNEXT of the last SELECT (RFC 3501 requires it)
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

    async def open(self) -> None:
        """Connect, secure, log in and select; phases connect, tls, banner, login."""
        st, ep, rec, p = self.settings, self.settings.endpoint, self.recorder, self.prefix
        if ep.tls_mode == "none" and not st.allow_plaintext_auth:
            raise ProbeError("refusing IMAP LOGIN over an unencrypted connection", reason="config")
        await self.secure()
        rec.masker.add(st.credentials.password, st.credentials.username)
        with rec.phase(f"{p}_login"):
            if st.credentials.token_source is not None:
                resp = await self._authenticate_oauth()
            else:
                if "LOGINDISABLED" in self._caps:
                    raise ProbeError("IMAP server disables LOGIN on this connection", reason="receive_auth")
                resp, _ = await self._command(
                    "LOGIN",
                    [b"LOGIN ", st.credentials.username, b" ", st.credentials.password],
                    shown=f"LOGIN {st.credentials.username} {MASK}",
                    reason="receive_auth",
                )
            caps = wire.capabilities_of(resp)
            if caps is not None:
                self._caps = caps
            if not any(c.startswith("IMAP4") for c in self._caps) or len(self._caps) < 3:
                await self._capability()
            _, untagged = await self._command(f"SELECT {st.mailbox}", [b"SELECT ", st.mailbox])
            self.exists = _exists(untagged, 0) or 0
            self.uidnext = _uidnext(untagged)

    async def _authenticate_oauth(self) -> wire.Response:
        """AUTHENTICATE XOAUTH2/OAUTHBEARER (initial response inline with SASL-IR); an error challenge
        (``+ base64 JSON``) is answered with an empty line, after which the server says NO."""
        creds, ep = self.settings.credentials, self.settings.endpoint
        offered = [c[5:] for c in self._caps if c.startswith("AUTH=")]
        mech, encoded = await initial_response(
            creds, offered, self.recorder, "receive_auth", "IMAP", ep.server_hostname, ep.port
        )
        assert self._in is not None and self._writer is not None
        tag = next(self._tags)
        self.recorder.commands += 1
        sasl_ir = "SASL-IR" in self._caps
        detail = ""
        try:
            async with asyncio.timeout(self.settings.timeout):
                self._in.reset_budget()
                line = b"AUTHENTICATE " + mech.encode() + (b" " + encoded.encode() if sasl_ir else b"")
                shown = f"AUTHENTICATE {mech}" + (f" {MASK}" if sasl_ir else "")
                self.recorder.debug("C: imap", f"{tag.decode()} {shown}")
                self._writer.write(tag + b" " + line + b"\r\n")
                await self._writer.drain()
                sent_initial = sasl_ir
                while True:
                    resp = await self._read_response("AUTHENTICATE", tag, self.settings.limits.max_line)
                    if resp.tag == tag:
                        break
                    if resp.tag != b"+":
                        self._note(resp)
                        continue
                    if not sent_initial:
                        self.recorder.debug("C: imap", MASK)
                        self._writer.write(encoded.encode() + b"\r\n")
                        sent_initial = True
                    else:  # an error challenge: end the exchange, the tagged NO follows
                        detail = error_of_challenge(resp.head)
                        self.recorder.debug("C: imap", "")
                        self._writer.write(b"\r\n")
                    await self._writer.drain()
        except TimeoutError:
            self._abort()
            raise ProbeTimeout(f"IMAP AUTHENTICATE: no reply within {self.settings.timeout:g}s") from None
        except ProbeError as exc:
            self._abort()
            raise ProbeError(f"IMAP AUTHENTICATE: {exc.message}", reason=exc.reason) from None
        except OSError as exc:
            self._abort()
            raise ProbeError(f"IMAP AUTHENTICATE: connection lost: {exc}", reason=_PROTOCOL) from None
        if resp.status != b"OK":
            if creds.token_source is not None:
                creds.token_source.invalidate()  # refused: the next run asks for a fresh one
            status = (resp.status or b"?").decode()
            extra = f" [{detail}]" if detail else ""
            text = f"IMAP AUTHENTICATE {mech} answered {status} {resp.text()}{extra}"
            raise ProbeError(text, reason="receive_auth")
        return resp

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
            self._in = BoundedReader(self._reader, st.limits, _PROTOCOL)
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
            reason = "receive_connect" if not exc.partial and not self._in_received() else _PROTOCOL
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
            raise ProbeError(
                f"IMAP greeting is not * OK: {wire.show(resp.parts[0] or b'')}", reason=_PROTOCOL
            )
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
                    reason=_PROTOCOL,
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
                raise ProbeError(f"IMAP {what} answered {resp.text()}", reason=_PROTOCOL)
            line = data
        self._writer.write(line + b"\r\n")
        await self._writer.drain()

    async def _command(
        self,
        what: str,
        pieces: list[bytes | str],
        *,
        shown: str | None = None,
        reason: str = _PROTOCOL,
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
        reason: str,
        literal_cap: int | None,
    ) -> tuple[wire.Response, list[wire.Response]]:
        if self._closed or self._in is None:
            raise ProbeError(f"IMAP {what}: the connection is closed", reason=_PROTOCOL)
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
            raise ProbeError(f"IMAP {what}: connection lost: {exc}", reason=_PROTOCOL) from None
        if resp.status != b"OK":
            status = (resp.status or b"?").decode()
            raise ProbeError(f"IMAP {what} answered {status} {resp.text()}".rstrip(), reason=reason)
        return resp, untagged

    def _note(self, resp: wire.Response) -> None:
        """Keep track of what the server says unasked (the message count)."""
        event = wire.number_event(resp)
        if event is not None and event[1] == b"EXPUNGE" and self.exists > 0:
            self.exists -= 1

    # --- commands --------------------------------------------------------------------------------------

    async def noop(self) -> bool:
        """NOOP (makes servers such as Dovecot look at the mailbox now); True if new mail was announced."""
        _, untagged = await self._command("NOOP", [b"NOOP"])
        return self._saw_exists(untagged)

    def _saw_exists(self, untagged: Iterable[wire.Response]) -> bool:
        count = _exists(untagged, None)
        if count is None:
            return False
        grew = count > self.exists
        self.exists = count
        return grew or count > 0  # an EXISTS at all means the mailbox changed: worth a search

    async def idle(self, seconds: float) -> bool:
        """IDLE for up to ``seconds``; True if the server pushed new mail meanwhile.

        One reader task runs across the whole IDLE, so no read is ever cut in the middle of a literal;
        ``DONE`` is sent when the time is up or mail was announced, then the tagged reply is awaited
        within one step timeout. Cut short (the run's deadline), the reader is cancelled and the session
        dropped before the session's lock is given up: nothing can read the stream after it.
        """
        async with self._busy:
            return await self._idle_now(seconds)

    async def _idle_now(self, seconds: float) -> bool:
        if self._closed or self._in is None:
            raise ProbeError("IMAP IDLE: the connection is closed", reason=_PROTOCOL)
        tag = next(self._tags)
        self.recorder.commands += 1
        cap = self.settings.limits.max_line
        pushed: list[wire.Response] = []
        reader: asyncio.Task[wire.Response] | None = None
        try:
            async with asyncio.timeout(self.settings.timeout):
                self._in.reset_budget()
                await self._send(tag, [b"IDLE"], "IDLE", "IDLE")
                while True:  # until the continuation (untagged news may come first)
                    resp = await self._read_response("IDLE", tag, cap)
                    if resp.tag == b"+":
                        break
                    if resp.tag == tag:
                        raise ProbeError(f"IMAP IDLE answered {resp.text()}", reason=_PROTOCOL)
                    self._note(resp)
                    pushed.append(resp)
            loop = asyncio.get_running_loop()
            until = loop.time() + seconds
            done_sent = False
            done_by = 0.0
            while True:
                if reader is None:
                    reader = asyncio.ensure_future(self._read_response("IDLE", tag, cap))
                left = (until if not done_sent else done_by) - loop.time()
                if not done_sent and (left <= 0 or _exists(pushed, None) is not None):
                    assert self._writer is not None
                    self.recorder.debug("C: imap", "DONE")
                    self._writer.write(b"DONE\r\n")
                    done_sent = True
                    done_by = loop.time() + self.settings.timeout
                    self._in.reset_budget()
                    continue
                finished, _ = await asyncio.wait({reader}, timeout=max(left, 0))
                if not finished:
                    if done_sent and loop.time() >= done_by:
                        raise TimeoutError
                    continue
                resp = reader.result()
                reader = None
                if resp.tag == tag:
                    break
                self._note(resp)
                pushed.append(resp)
        except TimeoutError:
            self._abort()
            raise ProbeTimeout(f"IMAP IDLE: no reply within {self.settings.timeout:g}s") from None
        except ProbeError:
            self._abort()
            raise
        except OSError as exc:
            self._abort()
            raise ProbeError(f"IMAP IDLE: connection lost: {exc}", reason=_PROTOCOL) from None
        finally:
            if reader is not None and not reader.done():
                # Cancelled mid-IDLE (the run's deadline): the dialogue is out of step, end it.
                reader.cancel()
                self._abort()
        if resp.status != b"OK":
            raise ProbeError(f"IMAP IDLE answered {resp.text()}", reason=_PROTOCOL)
        return self._saw_exists(pushed)

    async def select(self, mailbox: str) -> None:
        """SELECT another mailbox in this session (the all-folders walk); expunges nothing."""
        _, untagged = await self._command(f"SELECT {mailbox}", [b"SELECT ", mailbox])
        self.exists = _exists(untagged, 0) or 0
        self.uidnext = _uidnext(untagged)

    async def search_text(self, value: str, since_uid: int) -> list[int]:
        """UIDs from ``since_uid`` on whose text (headers, body, attached messages' headers) contains
        ``value``: how bounces, which carry our token only inside, are found. Limited to new UIDs so the
        server never scans the whole mailbox's bodies."""
        pieces: list[bytes | str] = [b"UID SEARCH UID %d:* TEXT " % since_uid, value]
        _, untagged = await self._command("UID SEARCH", pieces)
        uids: set[int] = set()
        for resp in untagged:
            found = wire.parse_search(resp)
            if found is not None:
                uids.update(u for u in found if u >= since_uid)  # n:* also matches the last UID below n
        return sorted(uids)

    async def search_header(
        self, header: str, value: str, *, undeleted: bool = False, flag: str | None = None
    ) -> list[int]:
        """UIDs whose ``header`` contains ``value``; with ``undeleted``, not those flagged \\Deleted; with
        ``flag`` (``\\Seen`` or a keyword), only those carrying it."""
        pieces: list[bytes | str] = [b"UID SEARCH "]
        if undeleted:
            pieces.append(b"UNDELETED ")
        if flag is not None:
            pieces.append(b"SEEN " if flag.lower() == "\\seen" else b"KEYWORD " + flag.encode("ascii") + b" ")
        pieces += [b"HEADER ", header, b" ", value]
        _, untagged = await self._command("UID SEARCH", pieces)
        uids: list[int] = []
        for resp in untagged:
            found = wire.parse_search(resp)
            if found is not None:
                uids.extend(found)
        return sorted(set(uids))

    async def list_mailboxes(self) -> list[wire.Response]:
        """Untagged replies of ``LIST "" "*"`` (asking for SPECIAL-USE flags where LIST-EXTENDED is
        offered), bounded by the reply budget; parsed by :func:`probes.receipt.placement.parse_list`."""
        pieces: list[bytes | str] = [b'LIST "" "*"']
        if "LIST-EXTENDED" in self._caps and "SPECIAL-USE" in self._caps:
            pieces.append(b" RETURN (SPECIAL-USE)")
        _, untagged = await self._command("LIST", pieces)
        return untagged

    async def namespace(self) -> list[Namespace] | None:
        """The personal namespaces (RFC 2342 ``NAMESPACE``) where the server advertises them, else None.
        Only a help to find folders by name: a NO/BAD or an answer we cannot read is None (the session
        stays in step); garbage or silence end the session as any command."""
        if "NAMESPACE" not in self._caps:
            return None
        try:
            _, untagged = await self._command("NAMESPACE", [b"NAMESPACE"])
        except ProbeError:
            if not self.is_open:
                raise
            return None
        for resp in untagged:
            found = parse_namespace(resp)
            if found is not None:
                return found
        return None

    @property
    def is_open(self) -> bool:
        """False once the connection was dropped (a timeout or garbage put the dialogue out of step)."""
        return not self._closed and self._in is not None

    async def quota(self) -> dict[str, Usage]:
        """RFC 9208 ``GETQUOTAROOT`` on the selected mailbox: per resource (``STORAGE`` in bytes,
        ``MESSAGE``...) the usage of the root nearest its limit; empty when no root has a limit.

        A NO/BAD raises ``receive_protocol`` with the session still open; a ``* QUOTA`` line that does not
        parse raises the same (in step, still open); garbage or silence end the session as any command.
        """
        _, untagged = await self._command("GETQUOTAROOT", [b"GETQUOTAROOT ", self.settings.mailbox])
        found: dict[str, Usage] = {}
        for resp in untagged:
            line = resp.parts[0] or b""
            words = resp.words
            if not words or words[0].upper() != b"QUOTA":
                continue  # QUOTAROOT names the roots; the QUOTA lines carry the numbers
            if len(resp.parts) == 3 and resp.parts[1] is not None and b'"' not in resp.parts[1]:
                # the root name as a literal (RFC 9208 astring): as a quoted string for the parser
                line = b'%s"%s"%s' % (line, resp.parts[1], resp.parts[2] or b"")
            parsed = parse_quota(line) if len(resp.parts) in (1, 3) else None
            if parsed is None:
                raise QuotaMalformed(f"IMAP GETQUOTAROOT: malformed {wire.show(line)}", reason=_PROTOCOL)
            tightest(found, parsed[1])
        return found

    @property
    def can_expunge_by_uid(self) -> bool:
        return "UIDPLUS" in self._caps

    async def fetch(self, uids: Iterable[int], part: str, *, cap: int | None = None) -> Fetched:
        """``part`` (e.g. ``BODY.PEEK[]``) and the size of each UID, in batches; data over ``cap``
        (default ``max_message``) is dropped unread and the UID listed in ``skipped``.

        Only FETCH responses that name one of the asked UIDs count: another session's
        ``* n FETCH (FLAGS …)`` in between is noise, never an empty body.
        """
        wanted = sorted(set(uids))
        cap = self.settings.limits.max_message if cap is None else cap
        out = Fetched()
        for i in range(0, len(wanted), FETCH_BATCH):
            batch = wanted[i : i + FETCH_BATCH]
            uid_set = ",".join(str(u) for u in batch).encode()
            _, untagged = await self._command(
                "UID FETCH",
                [b"UID FETCH ", uid_set, b" (UID RFC822.SIZE ", part.encode(), b")"],
                literal_cap=cap,
            )
            asked = set(batch)
            for resp in untagged:
                item = wire.parse_fetch(resp)
                if item is None or item.uid not in asked:
                    continue
                if item.size is not None:
                    out.sizes[item.uid] = item.size
                if item.body_skipped:
                    out.skipped.add(item.uid)
                elif item.body is not None:
                    out.data[item.uid] = item.body
        return out

    async def add_flag(self, uid: int, flag: str) -> None:
        """Set ``flag`` (``\\Seen`` or a keyword atom, checked by the config) on one message: only ever
        called for our own verified canary."""
        await self._command(
            "UID STORE",
            [b"UID STORE %d +FLAGS.SILENT (" % uid, flag.encode("ascii"), b")"],
            shown=f"UID STORE {uid} +FLAGS.SILENT ({flag})",
        )

    async def delete(self, uids: Iterable[int]) -> None:
        """Flag ``uids`` \\Deleted and, with UIDPLUS, expunge exactly those.

        Without UIDPLUS there is no way to expunge only our messages: a plain EXPUNGE also removes
        whatever the user has flagged \\Deleted, even between a check and the EXPUNGE. So our canaries
        stay flagged (gone from view in most clients) until the user's own client expunges, and later
        sweeps pass over them.
        """
        uid_set = ",".join(str(u) for u in sorted(set(uids))).encode()
        if not uid_set:
            return
        await self._command(
            "UID STORE", [b"UID STORE ", uid_set, b" +FLAGS.SILENT (\\Deleted)"], reason="cleanup"
        )
        if self.can_expunge_by_uid:
            await self._command("UID EXPUNGE", [b"UID EXPUNGE ", uid_set], reason="cleanup")
        else:
            self.recorder.facts["imap_expunge_skipped"] = True

    async def close(self) -> None:
        """LOGOUT politely if possible, then drop the connection; never raises. While another command
        is in flight on this session (a task cut short, not yet unwound), no LOGOUT is read beside it:
        the connection is dropped at once."""
        if self._closed or self._writer is None:
            self._closed = True
            return
        if self._busy.locked():
            self._abort()
            await close_writer(self._writer)
            return
        try:
            async with asyncio.timeout(min(self.settings.timeout, CLOSE_TIMEOUT)):
                await self._command("LOGOUT", [b"LOGOUT"])
        except (ProbeError, OSError, TimeoutError):
            pass  # closing must not mask the run's result
        finally:
            self._closed = True
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


_UIDNEXT_RE = re.compile(rb"\[UIDNEXT ([0-9]{1,10})\]", re.IGNORECASE)


def _uidnext(untagged: Iterable[wire.Response]) -> int | None:
    """``* OK [UIDNEXT n]`` of a SELECT, if the server sent it."""
    for resp in untagged:
        first = resp.parts[0] if resp.parts else None
        if resp.tag == b"*" and isinstance(first, bytes):
            m = _UIDNEXT_RE.search(first)
            if m is not None:
                return int(m.group(1))
    return None


def _exists(untagged: Iterable[wire.Response], default: int | None) -> int | None:
    """The last ``* n EXISTS`` count among untagged responses, else ``default``."""
    count = default
    for resp in untagged:
        event = wire.number_event(resp)
        if event is not None and event[1] == b"EXISTS":
            count = event[0]
    return count
