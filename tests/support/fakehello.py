"""An in-process TLS first-flight server, for what no real server here can offer (SSLv2, SSLv3, EXPORT,
RC4 without GnuTLS) and for faults (a suite never offered, garbage, truncated or oversize records, a
``421`` after N connections, silence). It reads the ClientHello the scan sends, picks a version and a
suite by its own configuration, and answers with a ServerHello … ServerHelloDone (or an alert); it never
completes a handshake. Loopback only (127.0.0.1, a free port)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

from probes.tls import hello as h

Fault = Literal[
    "none", "unoffered_suite", "unoffered_version", "garbage", "truncated", "oversize", "silent", "reset",
    "drip_banner", "long_line",
]  # fmt: skip


@dataclass
class FakeHello:
    """What the fake accepts. ``versions``: SSL2 … TLS13 constants; ``suites``: its preference order
    (IANA codes; SSLv2 cipher specs in ``sslv2_ciphers``)."""

    versions: frozenset[int] = frozenset({h.TLS12})
    suites: tuple[int, ...] = (0xC02F, 0x009C)
    sslv2_ciphers: tuple[int, ...] = (0x010080, 0x020080)
    certificate: bytes = b"\x30\x03\x02\x01\x00"  # any DER the scan keeps as sent
    dh_bits: int = 2048
    protocol: Literal["tcp", "smtp", "imap", "pop3"] = "tcp"
    refuse_after: int | None = None  # answer 421 / * BYE / -ERR from this connection on (1-based)
    fault: Fault = "none"
    fault_on: frozenset[str] = frozenset({"hello"})  # "hello" (every hello) or "sslv2"
    refuse_by_closing: bool = False  # refuse as Dovecot does: close without an alert
    connections: int = 0
    hellos: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if not await self._dialogue(reader, writer):
            return
        head = await reader.readexactly(2)
        if head[0] & 0x80:  # SSLv2 CLIENT-HELLO
            body = await reader.readexactly(((head[0] & 0x7F) << 8) | head[1])
            self.hellos.append(head + body)
            answer = await self._sslv2(body)
            if not answer:
                return  # close without a word, as SSLv2-less servers often do
            writer.write(answer)
        else:
            rest = await reader.readexactly(3)
            length = struct.unpack("!H", rest[1:3])[0]
            body = await reader.readexactly(length)
            self.hellos.append(head + rest + body)
            answer = await self._tls(body[4:])
            if self.refuse_by_closing and answer[:1] == b"\x15":
                return
            writer.write(answer)
        await writer.drain()
        if self.fault in ("garbage", "truncated", "oversize"):
            return  # and close: a cut record must be seen as cut, not waited for
        await reader.read(1)  # until the scan closes

    async def _dialogue(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        limited = self.refuse_after is not None and self.connections >= self.refuse_after
        if self.protocol == "tcp":
            return True
        if self.protocol == "smtp":
            if limited:
                writer.write(b"421 4.7.0 mail.example.test Error: too many connections\r\n")
                return False
            if self.fault == "drip_banner":  # a banner that never ends, one line at a time
                while True:
                    writer.write(b"220-still greeting\r\n")
                    await writer.drain()
                    await asyncio.sleep(0.1)
            if self.fault == "long_line":
                writer.write(b"220 " + b"x" * 100_000 + b"\r\n")
                await writer.drain()
                await reader.read(1)
                return False
            writer.write(b"220 fake ESMTP\r\n")
            await reader.readline()
            writer.write(b"250-fake\r\n250-STARTTLS\r\n250 8BITMIME\r\n")
            await reader.readline()
            writer.write(b"220 2.0.0 Ready to start TLS\r\n")
        elif self.protocol == "imap":
            if limited:
                writer.write(b"* BYE Too many connections\r\n")
                return False
            writer.write(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] fake\r\n")
            tag = (await reader.readline()).split(b" ")[0]
            writer.write(tag + b" OK Begin TLS negotiation now\r\n")
        else:
            if limited:
                writer.write(b"-ERR [SYS/TEMP] too many connections\r\n")
                return False
            writer.write(b"+OK fake\r\n")
            await reader.readline()
            writer.write(b"+OK Begin TLS\r\n")
        await writer.drain()
        return True

    async def _fault(self) -> bytes | None:
        """The fault's bytes, or None to answer normally."""
        if self.fault == "garbage":
            return b"HTTP/1.1 400 Bad Request\r\n\r\n"
        if self.fault == "truncated":
            return struct.pack("!BHH", 22, h.TLS12, 100) + b"\x02\x00\x00\x46" + bytes(10)
        if self.fault == "oversize":
            return struct.pack("!BHH", 22, h.TLS12, h.MAX_RECORD + 1) + bytes(64)
        if self.fault == "silent":
            await asyncio.Event().wait()
        if self.fault == "reset":
            raise ConnectionResetError
        return None

    async def _sslv2(self, body: bytes) -> bytes:
        if "sslv2" in self.fault_on and (bad := await self._fault()) is not None:
            return bad
        if h.SSL2 not in self.versions:
            return b""
        n_specs = struct.unpack("!H", body[3:5])[0]
        specs_raw = body[9 : 9 + n_specs]
        offered = {int.from_bytes(specs_raw[i : i + 3], "big") for i in range(0, len(specs_raw), 3)}
        chosen = [c for c in self.sslv2_ciphers if c in offered]
        specs = b"".join(c.to_bytes(3, "big") for c in chosen)
        msg = (
            b"\x04\x00\x01"
            + struct.pack("!HHHH", h.SSL2, len(self.certificate), len(specs), 16)
            + self.certificate
            + specs
            + os.urandom(16)
        )
        return struct.pack("!H", 0x8000 | len(msg)) + msg

    async def _tls(self, hello: bytes) -> bytes:
        if "hello" in self.fault_on and (bad := await self._fault()) is not None:
            return bad
        client_version, suites, exts = parse_client_hello(hello)
        offered_versions = exts.get("versions") or []
        if h.TLS13 in offered_versions:
            if h.TLS13 not in self.versions:
                return alert(70)
            suite = next((s for s in self.suites if s in suites and h.SUITES[s].tls13), None)
            if suite is None:
                return alert(40)
            return record(22, server_hello(h.TLS12, suite, tls13=True))
        if self.fault == "unoffered_version":
            return record(22, server_hello(h.TLS13, suites[0]) + handshake(14, b""))
        version = max((v for v in self.versions if h.SSL3 <= v <= min(client_version, h.TLS12)), default=None)
        if version is None:
            return alert(70)
        if self.fault == "unoffered_suite":
            suite = 0x1301 if 0x1301 not in suites else 0xC0FF  # a TLS 1.3 suite in a TLS 1.2 answer
        else:
            suite = next((s for s in self.suites if s in suites and not h.SUITES[s].tls13), None)
            if suite is None:
                return alert(40)
        out = server_hello(version, suite) + handshake(11, _u24(_u24(self.certificate)))
        info = h.SUITES[suite]
        if info.ffdhe:
            prime = (1 << (self.dh_bits - 1)) | 1
            out += handshake(12, _u16(prime.to_bytes((self.dh_bits + 7) // 8, "big")) + _u16(b"\x02"))
        elif info.ecdhe:
            out += handshake(12, b"\x03\x00\x17")
        return record(22, out + handshake(14, b""), version)


def _u16(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def _u24(b: bytes) -> bytes:
    return struct.pack("!I", len(b))[1:] + b


def handshake(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _u24(body)


def record(kind: int, payload: bytes, version: int = h.TLS12) -> bytes:
    return struct.pack("!BHH", kind, version, len(payload)) + payload


def alert(description: int) -> bytes:
    return record(21, bytes([2, description]))


def server_hello(version: int, suite: int, *, tls13: bool = False) -> bytes:
    exts = b""
    if tls13:
        exts += struct.pack("!HHH", h.EXT_SUPPORTED_VERSIONS, 2, h.TLS13)
        share = struct.pack("!H", h.X25519) + _u16(os.urandom(32))
        exts += struct.pack("!H", h.EXT_KEY_SHARE) + _u16(share)
    else:
        exts += struct.pack("!HHB", h.EXT_RENEGOTIATION_INFO, 1, 0)
    body = struct.pack("!H", version) + os.urandom(32) + b"\x00" + struct.pack("!HB", suite, 0) + _u16(exts)
    return handshake(2, body)


def parse_client_hello(body: bytes) -> tuple[int, list[int], dict[str, list[int]]]:
    """(client_version, suites, {"versions": supported_versions, "kinds": extension types}) of a
    ClientHello body."""
    version = struct.unpack("!H", body[0:2])[0]
    pos = 34
    pos += 1 + body[pos]
    n = struct.unpack("!H", body[pos : pos + 2])[0]
    suites = [struct.unpack("!H", body[pos + 2 + i : pos + 4 + i])[0] for i in range(0, n, 2)]
    pos += 2 + n
    pos += 1 + body[pos]
    exts: dict[str, list[int]] = {}
    if pos < len(body):
        end = pos + 2 + struct.unpack("!H", body[pos : pos + 2])[0]
        pos += 2
        while pos < end:
            kind, length = struct.unpack("!HH", body[pos : pos + 4])
            data = body[pos + 4 : pos + 4 + length]
            exts.setdefault("kinds", []).append(kind)
            if kind == h.EXT_SUPPORTED_VERSIONS:
                exts["versions"] = [struct.unpack("!H", data[1 + i : 3 + i])[0] for i in range(0, data[0], 2)]
            pos += 4 + length
    return version, suites, exts


@contextlib.asynccontextmanager
async def fake_hello(fake: FakeHello) -> AsyncIterator[int]:
    """Serve ``fake`` on 127.0.0.1 until the block ends; yields the port."""
    tasks: set[asyncio.Task[None]] = set()

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await fake.handle(reader, writer)
            await writer.drain()
        except (asyncio.CancelledError, asyncio.IncompleteReadError, ConnectionError):
            if fake.fault == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # an RST
                writer.transport.abort()
                return
        finally:
            tasks.discard(task)
            writer.close()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
