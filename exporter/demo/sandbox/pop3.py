"""A small asyncio POP3 server (RFC 1939 with CAPA/response codes from RFC 2449, STLS from RFC 2595 and
AUTH PLAIN from RFC 5034), for the sandbox: POP3 has no asyncio server library of note.

Commands: CAPA, STLS, USER/PASS, AUTH PLAIN, STAT, LIST, UIDL, TOP, RETR, DELE, NOOP, RSET, QUIT. The
session sees a snapshot of the maildrop taken at login; DELE only marks, and the marked messages are
removed when the client says QUIT (the UPDATE state) — a dropped connection removes nothing. Credentials are
accepted only on an encrypted connection. Like Dovecot's default, there is no exclusive maildrop lock:
two sessions may be open at once, and deleting a message the other session already removed is harmless.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

MAX_LINE = 1024  # RFC 2449 allows 255 octets per command; be lenient, but bounded
IDLE_TIMEOUT = 600.0  # RFC 1939 §3: an autologout timer of at least 10 minutes
_NUMBER = re.compile(r"[1-9][0-9]{0,9}")
_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True)
class DropMessage:
    """One message as a POP3 session sees it: ``ref`` is the store's key, ``uid`` the UIDL value."""

    ref: int
    uid: str
    data: bytes  # CRLF line ends, as it goes over the wire (its length is the octet count POP3 reports)


class Maildrop(Protocol):
    async def snapshot(self) -> Sequence[DropMessage]: ...

    async def delete(self, refs: Sequence[int]) -> None: ...


Authenticator = Callable[[str, str], Awaitable[Maildrop | None]]
_Handler = Callable[["_Session", str], Awaitable[bool]]


def crlf(data: bytes) -> bytes:
    """Bare LF line ends become CRLF, and the message ends with a line end."""
    data = _BARE_LF.sub(b"\r\n", data)
    return data if data.endswith(b"\r\n") or not data else data + b"\r\n"


def stuff(data: bytes) -> bytes:
    """A multi-line response body: dot-stuffed lines (``data`` is CRLF-terminated), then ``.``."""
    lines = data.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    return out + b".\r\n"


def top(data: bytes, body_lines: int) -> bytes:
    """The header, the blank line and the first ``body_lines`` lines of the body."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return data
    lines = body.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    kept = b"".join(line + b"\r\n" for line in lines[:body_lines])
    return head + b"\r\n\r\n" + kept


def parse_plain(response: str) -> tuple[str, str] | None:
    """``(username, password)`` from a base64 SASL PLAIN response; None if malformed or if the
    authorization identity differs from the authentication identity (no proxy logins here)."""
    try:
        raw = base64.b64decode(response.encode("ascii"), validate=True)
        parts = raw.decode("utf-8").split("\0")
    except (binascii.Error, UnicodeError, ValueError):
        return None
    if len(parts) != 3:
        return None
    authz, user, password = parts
    if authz and authz != user:
        return None
    return user, password


@dataclass
class _Session:
    server: POP3Server
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    tls: bool
    user: str | None = None
    drop: Maildrop | None = None
    messages: list[DropMessage] = field(default_factory=list)
    deleted: set[int] = field(default_factory=set)  # message numbers (1-based) marked by DELE

    async def send(self, line: str) -> None:
        self.writer.write(line.encode("utf-8") + b"\r\n")
        await self.writer.drain()

    async def send_multi(self, status: str, body: bytes) -> None:
        self.writer.write(status.encode("utf-8") + b"\r\n" + stuff(body))
        await self.writer.drain()

    async def readline(self) -> str | None:
        """The next command line without its line end; None when the client is gone or too slow."""
        try:
            raw = await asyncio.wait_for(self.reader.readuntil(b"\n"), self.server.idle_timeout)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            return None
        except asyncio.LimitOverrunError:
            await self.send("-ERR line too long")
            return None
        if len(raw) > MAX_LINE:
            await self.send("-ERR line too long")
            return None
        return raw.rstrip(b"\r\n").decode("utf-8", errors="replace")

    # --- the dialogue ------------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.send(f"+OK {self.server.hostname} mailcanary sandbox POP3 server ready")
        while True:
            line = await self.readline()
            if line is None:
                return  # dropped: nothing marked is removed
            verb, _, rest = line.partition(" ")
            verb = verb.upper()
            if verb == "QUIT":
                await self.quit()
                return
            handler = (self.AUTHORIZATION if self.drop is None else self.TRANSACTION).get(verb)
            if handler is None:
                known = verb in self.AUTHORIZATION or verb in self.TRANSACTION
                await self.send("-ERR command not valid in this state" if known else "-ERR unknown command")
                continue
            if not await handler(self, rest):
                return

    async def quit(self) -> None:
        if self.drop is None:
            await self.send("+OK bye")
            return
        refs = [self.messages[n - 1].ref for n in sorted(self.deleted)]
        try:
            if refs:
                await self.drop.delete(refs)
        except Exception:
            await self.send("-ERR [SYS/TEMP] some deleted messages not removed")
            return
        await self.send(f"+OK bye ({len(refs)} messages deleted)")

    # --- AUTHORIZATION state: each handler returns False to end the session ---------------------------------

    async def capa(self, rest: str) -> bool:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE"]
        if self.tls:
            caps += ["USER", "SASL PLAIN"]
        elif self.server.tls_context is not None:
            caps.append("STLS")
        caps.append("IMPLEMENTATION mailcanary-sandbox")
        await self.send_multi("+OK capability list follows", "".join(c + "\r\n" for c in caps).encode())
        return True

    async def stls(self, rest: str) -> bool:
        if self.tls or self.server.tls_context is None:
            await self.send("-ERR STLS not available")
            return True
        await self.send("+OK begin TLS negotiation")
        if self.reader._buffer:  # type: ignore[attr-defined]
            # The client sent more right after STLS: those bytes travelled in clear but would be taken as
            # if they came under TLS (the STARTTLS command-injection hole), so refuse the session.
            return False
        try:
            await self.writer.start_tls(self.server.tls_context)
        except (OSError, ssl.SSLError, TimeoutError):
            return False
        self.tls = True
        return True

    async def usercmd(self, rest: str) -> bool:
        if not self.tls:
            await self.send("-ERR [AUTH] plaintext authentication disallowed; use STLS first")
            return True
        if not rest:
            await self.send("-ERR USER needs a name")
            return True
        self.user = rest
        await self.send("+OK send PASS")
        return True

    async def passcmd(self, rest: str) -> bool:
        if not self.tls:
            await self.send("-ERR [AUTH] plaintext authentication disallowed; use STLS first")
            return True
        if self.user is None:
            await self.send("-ERR USER first")
            return True
        user, self.user = self.user, None
        await self.login(user, rest)
        return True

    async def auth(self, rest: str) -> bool:
        mechanism, _, initial = rest.strip().partition(" ")
        if not mechanism:
            await self.send_multi("+OK SASL mechanisms follow", b"PLAIN\r\n")
            return True
        if not self.tls:
            await self.send("-ERR [AUTH] plaintext authentication disallowed; use STLS first")
            return True
        if mechanism.upper() != "PLAIN":
            await self.send("-ERR unsupported SASL mechanism")
            return True
        if not initial:
            await self.send("+ ")
            answer = await self.readline()
            if answer is None:
                return False
            if answer.strip() == "*":
                await self.send("-ERR authentication cancelled")
                return True
            initial = answer
        initial = "" if initial.strip() == "=" else initial.strip()
        creds = parse_plain(initial)
        if creds is None:
            await self.send("-ERR [AUTH] malformed SASL PLAIN response")
            return True
        await self.login(*creds)
        return True

    async def login(self, user: str, password: str) -> None:
        drop = await self.server.authenticate(user, password)
        if drop is None:
            await self.send("-ERR [AUTH] invalid credentials")
            return
        self.drop = drop
        self.messages = [DropMessage(m.ref, m.uid, crlf(m.data)) for m in await drop.snapshot()]
        count, octets = self.stat()
        await self.send(f"+OK maildrop has {count} messages ({octets} octets)")

    # --- TRANSACTION state ---------------------------------------------------------------------------------

    def stat(self) -> tuple[int, int]:
        live = [m for n, m in enumerate(self.messages, 1) if n not in self.deleted]
        return len(live), sum(len(m.data) for m in live)

    async def number(self, text: str) -> int | None:
        """The message number in ``text`` if it names a message not marked deleted; else says why."""
        if not _NUMBER.fullmatch(text):
            await self.send("-ERR invalid message number")
            return None
        n = int(text)
        if n > len(self.messages):
            await self.send("-ERR no such message")
            return None
        if n in self.deleted:
            await self.send(f"-ERR message {n} already deleted")
            return None
        return n

    async def statcmd(self, rest: str) -> bool:
        count, octets = self.stat()
        await self.send(f"+OK {count} {octets}")
        return True

    async def listing(self, rest: str, value: Callable[[DropMessage], str], what: str) -> bool:
        if rest.strip():
            n = await self.number(rest.strip())
            if n is not None:
                await self.send(f"+OK {n} {value(self.messages[n - 1])}")
            return True
        rows = [f"{n} {value(m)}\r\n" for n, m in enumerate(self.messages, 1) if n not in self.deleted]
        count, octets = self.stat()
        await self.send_multi(f"+OK {count} messages ({octets} octets) {what}", "".join(rows).encode())
        return True

    async def listcmd(self, rest: str) -> bool:
        return await self.listing(rest, lambda m: str(len(m.data)), "scan listing")

    async def uidl(self, rest: str) -> bool:
        return await self.listing(rest, lambda m: m.uid, "unique-id listing")

    async def retr(self, rest: str) -> bool:
        n = await self.number(rest.strip())
        if n is not None:
            data = self.messages[n - 1].data
            await self.send_multi(f"+OK {len(data)} octets", data)
        return True

    async def topcmd(self, rest: str) -> bool:
        args = rest.split()
        if len(args) != 2 or not args[1].isdigit():
            await self.send("-ERR usage: TOP msg n")
            return True
        n = await self.number(args[0])
        if n is not None:
            await self.send_multi("+OK top of message follows", top(self.messages[n - 1].data, int(args[1])))
        return True

    async def dele(self, rest: str) -> bool:
        n = await self.number(rest.strip())
        if n is not None:
            self.deleted.add(n)
            await self.send(f"+OK message {n} deleted")
        return True

    async def noop(self, rest: str) -> bool:
        await self.send("+OK")
        return True

    async def rset(self, rest: str) -> bool:
        self.deleted.clear()
        count, octets = self.stat()
        await self.send(f"+OK maildrop has {count} messages ({octets} octets)")
        return True

    AUTHORIZATION: ClassVar[dict[str, _Handler]] = {
        "CAPA": capa,
        "STLS": stls,
        "USER": usercmd,
        "PASS": passcmd,
        "AUTH": auth,
    }
    TRANSACTION: ClassVar[dict[str, _Handler]] = {
        "CAPA": capa,
        "STAT": statcmd,
        "LIST": listcmd,
        "UIDL": uidl,
        "RETR": retr,
        "TOP": topcmd,
        "DELE": dele,
        "NOOP": noop,
        "RSET": rset,
    }


class POP3Server:
    """Serves POP3 on any number of listeners (implicit TLS or plain-with-STLS), one maildrop source."""

    def __init__(
        self,
        authenticate: Authenticator,
        tls_context: ssl.SSLContext | None,
        *,
        hostname: str = "localhost",
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self.authenticate = authenticate
        self.tls_context = tls_context
        self.hostname = hostname
        self.idle_timeout = idle_timeout
        self._servers: list[asyncio.Server] = []
        self._sessions: set[asyncio.Task[None]] = set()

    async def listen(self, host: str, port: int = 0, *, implicit_tls: bool) -> int:
        """Start a listener; returns the bound port. ``implicit_tls`` needs the TLS context."""
        if implicit_tls and self.tls_context is None:
            raise ValueError("implicit TLS needs a TLS context")

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(reader, writer, implicit_tls)

        server = await asyncio.start_server(
            connected, host=host, port=port, ssl=self.tls_context if implicit_tls else None
        )
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: bool) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        try:
            await _Session(self, reader, writer, tls).run()
        except (ConnectionError, ssl.SSLError):
            pass  # the client went away mid-reply
        finally:
            self._sessions.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def close(self) -> None:
        """Stop listening and end every open session (no QUIT: nothing they marked is removed)."""
        for server in self._servers:
            server.close()
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=2.0)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()
