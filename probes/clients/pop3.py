"""A small asyncio POP3 client (RFC 1939, 2449, 2595, 5034): none of our dependencies speaks POP3 async.

Whatever the server sends is treated as hostile input: every failure becomes a :class:`ProbeError` with a
fixed reason, and the parsing lives in pure functions next to the client so it can be fuzzed without a socket.
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Final, Self, TypeAlias

from probes.auth.credentials import Credentials
from probes.auth.oauth import error_of_challenge, initial_response
from probes.errors import ProbeError, ProbeTimeout
from probes.recorder import MASK, Recorder
from probes.wire.certs import facts_from_connection
from probes.wire.framing import DEFAULT_MAX_LINE, DEFAULT_MAX_MESSAGE
from probes.wire.net import Endpoint, client_context, close_writer, tcp_connect, tls_error_message

Capabilities: TypeAlias = dict[str, list[str]]
Lines: TypeAlias = list[bytes]  # an alias, because the class has a method called ``list``

MAX_LINE: Final = DEFAULT_MAX_LINE  # RFC 2449 allows 512 octets per status line; message lines are longer
MAX_RESPONSE: Final = DEFAULT_MAX_MESSAGE  # cap on one multi-line response we keep (a canary is ~1 KiB)
MAX_COMMAND: Final = 255  # RFC 2449 section 4: longest command line, CRLF included

_PROTOCOL: Final = "receive_protocol"
_AUTH: Final = "receive_auth"
_LOGIN_DELAY: Final = "receive_login_delay"
MAX_LOGIN_DELAY: Final = 86_400  # a longer announced delay is taken as a day: no monitor can wait longer
_DELAY_VALUE: Final = re.compile(r"[0-9]{1,10}", re.ASCII)
# RFC 2449 section 8: "[" resp-level *("/" resp-level) "]" right after "-ERR ", levels case-insensitive.
_RESP_CODE: Final = re.compile(r"\[([^\]\s]{1,64})\]")
_NUMBER: Final = re.compile(rb"[0-9]{1,10}")
_SIZE: Final = re.compile(rb"[0-9]{1,20}")
_UID: Final = re.compile(rb"[\x21-\x7e]+")  # RFC 1939 section 7: unique-id is printable ASCII
_STAT: Final = re.compile(r"([0-9]{1,10}) ([0-9]{1,20})(?:\s.*)?", re.ASCII | re.DOTALL)


# --- pure helpers: no I/O, safe on arbitrary bytes --------------------------------------------------------


def _strip_eol(line: bytes) -> bytes:
    """Drop one CRLF, or a bare LF from a broken server; a lone CR is data and stays."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


def _text(data: bytes) -> str:
    """Server text for messages and transcripts: never fails on the Latin-1 some servers send."""
    return data.decode("utf-8", errors="replace")


def _show(data: bytes, limit: int = 80) -> str:
    """A bounded, printable rendering of garbage, so a hostile line cannot flood a log or forge lines."""
    text = repr(_text(data[:limit]))
    return text + ("..." if len(data) > limit else "")


def parse_status(line: bytes) -> tuple[bool, str]:
    """``(ok, text)`` of a status line; anything but +OK/-ERR means we are out of step, so it raises."""
    line = _strip_eol(line)
    for indicator, ok in ((b"+OK", True), (b"-ERR", False)):
        if line.startswith(indicator):
            rest = line[len(indicator) :]
            if not rest or rest[:1] in (b" ", b"\t"):
                return ok, _text(rest.strip(b" \t"))
    raise ProbeError(f"malformed POP3 status line {_show(line)}", reason=_PROTOCOL)


def parse_stat(text: str) -> tuple[int, int]:
    """``(messages, octets)`` from the text of a STAT reply (RFC 1939 allows more after the size)."""
    match = _STAT.fullmatch(text)
    if match is None:
        raise ProbeError(f"malformed STAT reply {text[:80]!r}", reason=_PROTOCOL)
    return int(match[1]), int(match[2])


def _unstuff_lines(lines: Iterable[bytes]) -> list[bytes]:
    """Undo byte-stuffing line by line; the terminator must never be passed in, so a lone "." is garbage."""
    out: list[bytes] = []
    for raw in lines:
        line = _strip_eol(raw)
        if line == b".":
            raise ProbeError("multi-line terminator inside a response body", reason=_PROTOCOL)
        out.append(line[1:] if line.startswith(b".") else line)
    return out


def unstuff(lines: Iterable[bytes]) -> bytes:
    """Reassemble a message from the lines of a multi-line reply (terminators optional, final "." excluded).

    Every line comes back CRLF-terminated, as the message was when the server framed it.
    """
    return b"".join(line + b"\r\n" for line in _unstuff_lines(lines))


def parse_capa(lines: Iterable[bytes]) -> Capabilities:
    """Capability tag (upper-cased, as tags are case-insensitive) -> its arguments; never raises.

    Unknown or odd capabilities are harmless to us, so this is deliberately liberal.
    """
    caps: Capabilities = {}
    for raw in lines:
        words = _text(_strip_eol(raw)).split()
        if words:
            caps[words[0].upper()] = words[1:]
    return caps


def parse_login_delay(caps: Capabilities) -> tuple[int, bool] | None:
    """``(seconds, per_user)`` from CAPA's ``LOGIN-DELAY n [USER]`` (RFC 2449 section 6.5), or None.

    Lenient: extra words are ignored and an unreadable value counts as not announced (we cannot honour a
    delay we cannot read); strict only in bounds: at most MAX_LOGIN_DELAY. ``USER`` (before login only)
    means the value may differ per user, so CAPA is asked again once logged in.
    """
    args = caps.get("LOGIN-DELAY")
    if not args or not _DELAY_VALUE.fullmatch(args[0]):
        return None
    per_user = any(word.upper() == "USER" for word in args[1:])
    return min(int(args[0]), MAX_LOGIN_DELAY), per_user


def response_code(text: str) -> str | None:
    """The extended response code at the start of an -ERR text (RFC 2449 section 8), upper-cased."""
    match = _RESP_CODE.match(text)
    return match[1].upper() if match else None


def login_refusal_reason(text: str) -> str:
    """The failure reason of a refused login, from its response code (RFC 2449 section 8.1, RFC 3206).

    ``LOGIN-DELAY``: logged in too soon after the last login, its own reason. ``IN-USE`` (the maildrop is
    locked by another session) and ``SYS/...`` (the server's own trouble, RFC 3206) are the server
    refusing for something other than the credentials: ``receive_protocol``. ``AUTH``, an unknown code
    or none at all: the credentials, ``receive_auth``.
    """
    code = response_code(text)
    top = code.split("/", 1)[0] if code else None
    if top == "LOGIN-DELAY":
        return _LOGIN_DELAY
    if top in ("IN-USE", "SYS"):
        return _PROTOCOL
    return _AUTH


class LoginGate:
    """Per server and account: the LOGIN-DELAY it announced and when we last logged in, so that no login
    comes sooner than the server allows, across the runs of every probe in this process.

    Times are ``time.monotonic()``. Bounded: the least recently used entries beyond MAX_ENTRIES are
    forgotten (the worst that does is one login refused with ``[LOGIN-DELAY]``, which is reported as such).
    """

    MAX_ENTRIES: Final = 1024
    MARGIN: Final = 1.0  # seconds on top of the delay: the server measures from its own clock, in seconds

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[int | None, float | None]] = OrderedDict()
        self._lock = threading.Lock()

    def _get(self, key: tuple[str, str]) -> tuple[int | None, float | None]:
        entry = self._entries.get(key, (None, None))
        if key in self._entries:
            self._entries.move_to_end(key)
        return entry

    def _put(self, key: tuple[str, str], entry: tuple[int | None, float | None]) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.MAX_ENTRIES:
            self._entries.popitem(last=False)

    def delay(self, key: tuple[str, str]) -> int | None:
        """The delay last announced (0: announced none), or None if never learned."""
        with self._lock:
            return self._get(key)[0]

    def learn(self, key: tuple[str, str], seconds: int) -> None:
        with self._lock:
            self._put(key, (seconds, self._get(key)[1]))

    def note_login(self, key: tuple[str, str], at: float | None = None) -> None:
        """A login is being attempted now (refused ones count too: some servers count them)."""
        with self._lock:
            self._put(key, (self._get(key)[0], time.monotonic() if at is None else at))

    def allowed_at(self, key: tuple[str, str]) -> float:
        """The earliest monotonic time of the next login (0.0: at once)."""
        with self._lock:
            delay, last = self._get(key)
        if not delay or last is None:
            return 0.0
        return last + delay + self.MARGIN


LOGIN_GATE: Final = LoginGate()  # the process's one gate: every run of every probe shares it


def login_key(endpoint: Endpoint, username: str) -> tuple[str, str]:
    """A LOGIN-DELAY applies per server and account (RFC 2449 section 6.5)."""
    return endpoint.address, username


def _listing(lines: Iterable[bytes], what: str, value: re.Pattern[bytes]) -> list[tuple[int, bytes]]:
    """Parse "msg-number SP value [more]" lines; a listing we cannot trust in full we do not use at all."""
    seen: set[int] = set()
    out: list[tuple[int, bytes]] = []
    for raw in lines:
        fields = _strip_eol(raw).split()
        if len(fields) < 2 or not _NUMBER.fullmatch(fields[0]) or not value.fullmatch(fields[1]):
            raise ProbeError(f"malformed {what} line {_show(raw)}", reason=_PROTOCOL)
        number = int(fields[0])
        if number == 0 or number in seen:
            raise ProbeError(
                f"invalid or repeated message number in {what} line {_show(raw)}", reason=_PROTOCOL
            )
        seen.add(number)
        out.append((number, fields[1]))
    return out


def parse_uidl(lines: Iterable[bytes]) -> dict[int, str]:
    """Message number -> unique id from the (unstuffed) lines of a multi-line UIDL reply."""
    return {number: uid.decode("ascii") for number, uid in _listing(lines, "UIDL", _UID)}


def parse_list(lines: Iterable[bytes]) -> dict[int, int]:
    """Message number -> size in octets from the (unstuffed) lines of a multi-line LIST reply."""
    return {number: int(size) for number, size in _listing(lines, "LIST", _SIZE)}


def sasl_plain(username: str, password: str) -> str:
    """The RFC 4616 PLAIN response (empty authzid), base64-encoded; NUL would silently split the fields."""
    if "\0" in username or "\0" in password:
        raise ProbeError(
            "SASL PLAIN cannot carry a NUL character in the username or password", reason="config"
        )
    return base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")


def _is_continuation(line: bytes) -> bool:
    """A SASL challenge ("+ " base64, RFC 5034); "+OK" is not one."""
    return line == b"+" or line.startswith(b"+ ")


# --- the client ----------------------------------------------------------------------------------------


class POP3Client:
    """One POP3 session, one command at a time (no pipelining: a probe issues a handful of commands).

    Not safe for concurrent use from several tasks. Any failure that may leave the dialogue out of step
    (timeout, garbage, lost connection) aborts the connection, so a later command fails fast instead of
    reading a stale reply.
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
        self._encrypted = False
        self._closed = False
        self._received = False  # anything read yet (a reset before that is a refused connection)
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
    ) -> POP3Client:
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
                # The reader's own limit only bounds buffering; lines are checked against max_line below.
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
            if endpoint.tls_mode == "implicit":
                with recorder.phase(f"{phase_prefix}_tls"):
                    await client._start_tls()
            with recorder.phase(f"{phase_prefix}_banner"):
                ok, text = await client._read_status("greeting", eof_reason="receive_connect")
                if not ok:
                    raise ProbeError(
                        f"server refused the session: -ERR {client._mask(text)}", reason=_PROTOCOL
                    )
                client.greeting = text
            if endpoint.tls_mode == "starttls":
                plain = await client.capa()
                if on_plaintext is not None:
                    on_plaintext(plain)
                if "STLS" not in plain:
                    raise ProbeError("server does not offer STLS", reason="receive_tls")
                with recorder.phase(f"{phase_prefix}_tls"):
                    await client._command("STLS", err_reason="receive_tls")
                    client._refuse_buffered_plaintext()
                    await client._start_tls()
            await client.capa()  # again after STLS: RFC 2595 says capabilities may change
            if (ssl_object := client.ssl_object) is not None:  # TLS audit, from this very connection
                recorder.tls[endpoint.address] = await facts_from_connection(
                    ssl_object, endpoint, "pop3", endpoint.tls_mode
                )
        except BaseException:
            client._abort()
            raise
        return client

    @property
    def encrypted(self) -> bool:
        return self._encrypted

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """For whoever records TLS facts (version, cipher, certificate) of this session."""
        obj = self._writer.get_extra_info("ssl_object")
        return obj if isinstance(obj, ssl.SSLObject) else None

    # --- commands --------------------------------------------------------------------------------------

    async def capa(self) -> Capabilities:
        """Ask for, store and return the capabilities; a server without CAPA (or refusing it) has none."""
        ok, _, lines = await self._command("CAPA", multiline=True, tolerate_err=True)
        self.capabilities = parse_capa(_unstuff_lines(lines)) if ok else {}
        return self.capabilities

    async def login(self, creds: Credentials, *, allow_plaintext: bool = False) -> None:
        """OAuth (XOAUTH2/OAUTHBEARER) with a token source; else AUTH PLAIN when advertised (one round
        trip), else USER/PASS; never sends credentials in clear."""
        self.recorder.masker.add(creds.password, creds.username)
        if not self._encrypted and not allow_plaintext:
            raise ProbeError(
                f"refusing to send credentials over an unencrypted connection to {self.endpoint.address} "
                "(plaintext login is not allowed)",
                reason="config",
            )
        if creds.token_source is not None:
            await self._auth_oauth(creds)
            return
        if "PLAIN" in {mech.upper() for mech in self.capabilities.get("SASL", [])}:
            await self._auth_plain(creds)
        else:
            steps = (("USER", creds.username, None), ("PASS", creds.password, f"PASS {MASK}"))
            for verb, arg, shown in steps:
                ok, text, _ = await self._command(verb, arg, shown=shown, tolerate_err=True)
                if not ok:
                    raise self._refused_login(f"{verb} failed", text)

    def _refused_login(self, what: str, text: str) -> ProbeError:
        """A refused login, with the reason its response code gives (not every refusal is a password)."""
        reason = login_refusal_reason(text)
        shown = f"-ERR {self._mask(text)}"
        if reason == _LOGIN_DELAY:
            delay = parse_login_delay(self.capabilities)
            announced = f" (it announces LOGIN-DELAY {delay[0]}s)" if delay else ""
            return ProbeError(
                f"the server refused the login as too soon after the previous one{announced}: {shown}",
                reason=reason,
            )
        return ProbeError(f"{what}: {shown}", reason=reason)

    async def stat(self) -> tuple[int, int]:
        _, text, _ = await self._command("STAT")
        return parse_stat(text)

    async def uidl(self) -> dict[int, str]:
        _, _, lines = await self._command("UIDL", multiline=True)
        return parse_uidl(_unstuff_lines(lines))

    async def list(self) -> dict[int, int]:
        """Message number -> size (the multi-line form)."""
        _, _, lines = await self._command("LIST", multiline=True)
        return parse_list(_unstuff_lines(lines))

    async def top(self, number: int, lines: int = 0) -> bytes:
        """Headers (and ``lines`` body lines) without fetching the whole message."""
        _check_number(number)
        if lines < 0:
            raise ProbeError(f"TOP needs a non-negative line count, not {lines}", reason="internal")
        _, _, reply = await self._command("TOP", str(number), str(lines), multiline=True)
        return unstuff(reply)

    async def retr(self, number: int) -> bytes:
        _check_number(number)
        _, _, reply = await self._command("RETR", str(number), multiline=True)
        return unstuff(reply)

    async def dele(self, number: int, *, err_reason: str = _PROTOCOL) -> None:
        """Mark for deletion; nothing is removed until :meth:`quit`."""
        _check_number(number)
        await self._command("DELE", str(number), err_reason=err_reason)

    async def top_or_none(
        self, number: int, cap: int, lines: int = 0, *, refused_raises: bool = False
    ) -> bytes | None:
        """The header block (and ``lines`` body lines) of message ``number``, or None if it cannot be
        read as a foreign message may not be: gone (``-ERR``, another session deleted it), a line over
        the line limit, or over ``cap`` bytes. The rest of such a reply is read and dropped (bounded), so
        the session stays in step. Unlike RETR, TOP leaves the message's \\Seen flag alone (Dovecot).

        ``refused_raises``: an ``-ERR`` raises :class:`Refused` (with the server's text) instead, for a
        caller that must tell a message that vanished from a server that fails to serve one."""
        return await self._fetch_or_none("TOP", number, cap, str(lines), refused_raises=refused_raises)

    async def retr_or_none(self, number: int, cap: int, *, refused_raises: bool = False) -> bytes | None:
        """Like :meth:`top_or_none` for the whole message."""
        return await self._fetch_or_none("RETR", number, cap, refused_raises=refused_raises)

    async def _fetch_or_none(
        self, verb: str, number: int, cap: int, *extra: str, refused_raises: bool = False
    ) -> bytes | None:
        _check_number(number)
        ok, text, _ = await self._command(verb, str(number), *extra, tolerate_err=True)
        if not ok:
            if refused_raises:
                raise Refused(f"{verb} {number} failed: -ERR {self._mask(text)}", reason=_PROTOCOL)
            return None
        lines: Lines = []
        total = 0
        fits = True
        drained = 0
        while True:
            try:
                line = await self._read_raw(verb, skippable=True)
            except _Overlong:
                fits = False
                drained += await self._drain_line(verb)
                if drained > self._max_response:
                    self._abort()
                    raise ProbeError(
                        f"reply to {verb} is larger than {self._max_response} octets", reason=_PROTOCOL
                    ) from None
                continue
            if line == b".":
                break
            total += len(line) + 2
            if total > cap:
                fits = False
                drained += len(line) + 2
                lines = []
                if drained > self._max_response:
                    self._abort()
                    raise ProbeError(
                        f"reply to {verb} is larger than {self._max_response} octets", reason=_PROTOCOL
                    )
            elif fits:
                lines.append(line)
        self.recorder.debug("S: pop3", f"({len(lines)} lines)" if fits else "(skipped: over the limits)")
        if not fits:
            return None
        try:
            return unstuff(lines)
        except ProbeError:
            return None

    async def noop(self) -> None:
        await self._command("NOOP")

    async def quit(self, *, err_reason: str = _PROTOCOL) -> None:
        """QUIT, which commits deletions (UPDATE state), then close whatever happened."""
        try:
            await self._command("QUIT", err_reason=err_reason)
        finally:
            await self.close()

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

    # --- plumbing --------------------------------------------------------------------------------------

    async def _auth_plain(self, creds: Credentials) -> None:
        """AUTH PLAIN with an initial response, or after an empty challenge if the line would be too long."""
        response = sasl_plain(creds.username, creds.password)
        with_initial = len(f"AUTH PLAIN {response}\r\n") <= MAX_COMMAND  # RFC 5034 section 4
        self.recorder.commands += 1
        if with_initial:
            await self._send(f"AUTH PLAIN {response}", f"AUTH PLAIN {MASK}", "AUTH")
        else:
            await self._send("AUTH PLAIN", "AUTH PLAIN", "AUTH")
        pending: str | None = None if with_initial else response
        line = await self._read_line("AUTH")
        while _is_continuation(line):
            if pending is None:
                # PLAIN has a single step; a further challenge is a dialogue we cannot follow, so cancel it.
                await self._send("*", "*", "AUTH")
                await self._read_line("AUTH")
                raise ProbeError("AUTH PLAIN: unexpected SASL challenge from the server", reason=_AUTH)
            await self._send(pending, MASK, "AUTH")
            pending = None
            line = await self._read_line("AUTH")
        ok, text = self._status(line, "AUTH")
        if not ok:
            raise self._refused_login("AUTH PLAIN refused", text)

    async def _auth_oauth(self, creds: Credentials) -> None:
        """RFC 5034 AUTH with XOAUTH2/OAUTHBEARER from the server's ``SASL`` capability. A token does not
        fit the 255-octet command line, so the response follows an empty challenge; a refusal comes as an
        error challenge (base64 JSON, RFC 7628 section 3.2.3), answered by an empty line, then ``-ERR``."""
        ep = self.endpoint
        mech, encoded = await initial_response(
            creds,
            self.capabilities.get("SASL", []),
            self.recorder,
            _AUTH,
            "POP3",
            ep.server_hostname,
            ep.port,
        )
        self.recorder.commands += 1
        if len(f"AUTH {mech} {encoded}\r\n") <= MAX_COMMAND:
            await self._send(f"AUTH {mech} {encoded}", f"AUTH {mech} {MASK}", "AUTH")
            pending: str | None = None
        else:
            await self._send(f"AUTH {mech}", f"AUTH {mech}", "AUTH")
            pending = encoded
        detail = ""
        line = await self._read_line("AUTH")
        for _ in range(2):  # at most: the empty challenge, then an error challenge
            if not _is_continuation(line):
                break
            if pending is not None:
                await self._send(pending, MASK, "AUTH")
                pending = None
            else:
                detail = error_of_challenge(line[1:])
                await self._send("", "", "AUTH")
            line = await self._read_line("AUTH")
        if _is_continuation(line):  # a third challenge: a dialogue we cannot follow; cancel it
            await self._send("*", "*", "AUTH")
            await self._read_line("AUTH")
            raise ProbeError(f"AUTH {mech}: unexpected SASL challenge from the server", reason=_AUTH)
        ok, text = self._status(line, "AUTH")
        if not ok:
            refused = self._refused_login(f"POP3 AUTH {mech} refused", text)
            if creds.token_source is not None and refused.reason == _AUTH:
                creds.token_source.invalidate()  # refused: the next run asks for a fresh one
            extra = f" [{detail}]" if detail else ""
            raise ProbeError(f"{refused.message}{extra}", reason=refused.reason)

    async def _command(
        self,
        verb: str,
        *args: str,
        shown: str | None = None,
        multiline: bool = False,
        err_reason: str = _PROTOCOL,
        tolerate_err: bool = False,
    ) -> tuple[bool, str, Lines]:
        """Send one command and read its reply: ``(ok, status text, raw body lines)``.

        ``-ERR`` raises with ``err_reason`` unless ``tolerate_err``; only +OK replies carry a body.
        """
        for arg in args:
            if any(ch in arg for ch in "\r\n\0"):
                # Never show the value: it may be the password.
                raise ProbeError(f"{verb} argument contains a line break or NUL", reason="config")
        line = " ".join((verb, *args))
        self.recorder.commands += 1
        await self._send(line, line if shown is None else shown, verb)
        ok, text = await self._read_status(verb)
        body: Lines = []
        if ok and multiline:
            body = await self._read_body(verb)
            self.recorder.debug("S: pop3", f"({len(body)} lines)")
        if not ok and not tolerate_err:
            raise ProbeError(f"{verb} failed: -ERR {self._mask(text)}", reason=err_reason)
        return ok, text, body

    async def _send(self, line: str, shown: str, what: str) -> None:
        if self._closed:
            raise ProbeError(f"cannot send {what}: the POP3 connection is closed", reason=_PROTOCOL)
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
            raise ProbeError(f"connection lost while sending {what}: {exc}", reason=_PROTOCOL) from exc

    async def _read_line(self, what: str, *, eof_reason: str = _PROTOCOL) -> bytes:
        """One line without its terminator, logged to the transcript, within the per-read timeout."""
        if self._closed:
            raise ProbeError(
                f"cannot read the reply to {what}: the POP3 connection is closed", reason=_PROTOCOL
            )
        line = await self._read_raw(what, eof_reason=eof_reason)
        self.recorder.debug("S: pop3", _text(line))
        return line

    async def _read_raw(self, what: str, *, eof_reason: str = _PROTOCOL, skippable: bool = False) -> bytes:
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._reader.readuntil(b"\n")
        except TimeoutError as exc:
            self._abort()
            raise ProbeTimeout(f"no reply to {what} within {self._timeout:g}s") from exc
        except asyncio.IncompleteReadError as exc:
            self._abort()
            reason = eof_reason if not exc.partial else _PROTOCOL
            raise ProbeError(
                f"connection closed by the server while reading the reply to {what}", reason=reason
            ) from exc
        except asyncio.LimitOverrunError as exc:
            self._abort_unless_skipping(skippable)
            raise _Overlong(
                f"line longer than {self._max_line} octets in the reply to {what}", reason=_PROTOCOL
            ) from exc
        except OSError as exc:
            self._abort()
            # A reset before anything was read (e.g. before the greeting) is a refused connection.
            reason = eof_reason if not self._received else _PROTOCOL
            raise ProbeError(
                f"connection lost while reading the reply to {what}: {exc}", reason=reason
            ) from exc
        self._received = True
        line = _strip_eol(raw)
        if len(line) > self._max_line:
            if skippable:
                raise _Overlong(
                    f"line longer than {self._max_line} octets in the reply to {what}", reason=_PROTOCOL
                )
            self._abort()
            raise ProbeError(
                f"line longer than {self._max_line} octets in the reply to {what}", reason=_PROTOCOL
            )
        return line

    def _abort_unless_skipping(self, skippable: bool) -> None:
        if not skippable:
            self._abort()

    async def _drain_line(self, what: str) -> int:
        """Read and drop the rest of an over-long line (the reader keeps what it could not frame)."""
        dropped = 0
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    raw = await self._reader.readuntil(b"\n")
            except TimeoutError as exc:
                self._abort()
                raise ProbeTimeout(f"no reply to {what} within {self._timeout:g}s") from exc
            except asyncio.LimitOverrunError as exc:
                dropped += len(await self._read_exactly(max(exc.consumed, 1), what))
                if dropped > self._max_response:
                    self._abort()
                    raise ProbeError(
                        f"line longer than {self._max_response} octets in the reply to {what}",
                        reason=_PROTOCOL,
                    ) from None
                continue
            except (asyncio.IncompleteReadError, OSError) as exc:
                self._abort()
                raise ProbeError(
                    f"connection lost while reading the reply to {what}", reason=_PROTOCOL
                ) from exc
            return dropped + len(raw)

    async def _read_exactly(self, n: int, what: str) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except (asyncio.IncompleteReadError, OSError) as exc:
            self._abort()
            raise ProbeError(f"connection lost while reading the reply to {what}", reason=_PROTOCOL) from exc

    async def _read_status(self, what: str, *, eof_reason: str = _PROTOCOL) -> tuple[bool, str]:
        return self._status(await self._read_line(what, eof_reason=eof_reason), what)

    def _status(self, line: bytes, what: str) -> tuple[bool, str]:
        try:
            return parse_status(line)
        except ProbeError as exc:
            self._abort()
            raise ProbeError(f"{self._mask(exc.message)} in reply to {what}", reason=_PROTOCOL) from None

    async def _read_body(self, what: str) -> Lines:
        """The raw (still stuffed) lines of a multi-line reply; bodies never reach the transcript."""
        lines: Lines = []
        total = 0
        while True:
            line = await self._read_raw(what)
            if line == b".":
                return lines
            total += len(line) + 2
            if total > self._max_response:
                self._abort()
                raise ProbeError(
                    f"reply to {what} is larger than {self._max_response} octets", reason=_PROTOCOL
                )
            lines.append(line)

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

    def _mask(self, text: str) -> str:
        return self.recorder.masker(text)


class Refused(ProbeError):
    """The server answered ``-ERR`` to TOP or RETR of a listed message; the session is still in step."""


class _Overlong(ProbeError):
    """A line over the limit: the end of the session, unless a foreign message's line can be skipped."""


def _check_number(number: int) -> None:
    """Message numbers start at 1; anything else is a bug in the caller, not the server's fault."""
    if number < 1:
        raise ProbeError(f"invalid POP3 message number {number}", reason="internal")
