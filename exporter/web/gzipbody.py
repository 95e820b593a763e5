"""/metrics compressed with gzip for scrapers that ask for it (Prometheus sends ``Accept-Encoding: gzip``).

The pre-rendered part of the body (exporter.metrics.collector.BodyParts) is deflated once per rendered
generation and format and kept (one per format: bounded); a scrape then deflates only the live runtime
series and appends them to the same gzip member. That works because a raw deflate stream ended with a
sync flush stops on a byte boundary with no final block: a second, independent deflate stream may follow
it, and the CRC-32 of the whole continues from the first part's. A pre-rendered part of more than one
piece (exporter.metrics.collector.PIECE) is encoded and deflated piece by piece in a worker thread
(zlib releases the GIL), so the event loop keeps answering ``/-/healthy`` and the uncompressed body
never exists whole; a part of one piece is deflated on the loop (cheaper than the thread hop).
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from exporter.metrics.collector import BodyParts

# Level 1: at 1,000 probes (17.6 MB of OpenMetrics) ~30 ms of CPU for a 23x smaller body; level 6 costs
# about three times the CPU for 28x (bench/README.md, "/metrics with gzip").
LEVEL = 1
_XFL = {1: 4, 9: 2}  # RFC 1952's extra flags: fastest, best; 0 otherwise
_MAX_ITEMS = 64  # an Accept-Encoding header of thousands of items is not parsed whole


def accepts_gzip(header: str) -> bool:
    """Content negotiation for Accept-Encoding (RFC 9110 §12.5.3): gzip when the client rates gzip (or
    ``x-gzip``, or ``*`` if gzip is not named) above zero and not below ``identity``. No header: no gzip.
    ``identity`` left unnamed counts below any coding the client named (it asked for them)."""
    q: dict[str, float] = {}
    for item in header.split(",")[:_MAX_ITEMS]:
        coding, *params = item.split(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        coding = "gzip" if coding == "x-gzip" else coding
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    weight = 0.0
        q[coding] = max(q.get(coding, 0.0), weight)
    gzip = q.get("gzip", q.get("*", 0.0))
    identity = q.get("identity", 0.0)
    return gzip > 0 and gzip >= identity


def _header(level: int) -> bytes:
    """A gzip member header: deflate, no name, no mtime (the body is the same whatever its age)."""
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes((_XFL.get(level, 0), 255))


def _deflate(data: bytes, level: int, last: bool) -> bytes:
    """Raw deflate; not ``last``: ended by a sync flush, so another deflate stream can follow it."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def gzip_bytes(data: bytes, level: int = LEVEL) -> bytes:
    """One gzip member of ``data`` (what gzip.compress writes, at ``level``, with mtime 0)."""
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return b"".join((_header(level), _deflate(data, level, last=True), trailer))


@dataclass(frozen=True)
class _Deflated:
    key: tuple[bool, int, str]  # BodyParts.key of the bytes it was made from
    data: bytes  # raw deflate, sync-flushed (not final)
    crc: int
    size: int


def _deflate_stable(key: tuple[bool, int, str], pieces: Iterable[bytes], level: int) -> _Deflated:
    """One raw deflate stream of ``pieces``, sync-flushed, with their CRC-32 and length."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    out: list[bytes] = []
    crc = size = 0
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
        size += len(piece)
        out.append(compressor.compress(piece))
    out.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    return _Deflated(key, b"".join(out), crc, size)


class GzipBodies:
    """The gzip /metrics body, its pre-rendered part compressed once per generation and format."""

    def __init__(self, level: int = LEVEL) -> None:
        self.level = level
        self._kept: dict[bool, _Deflated] = {}  # format -> the newest compressed part (one each: bounded)
        self._pending: dict[tuple[bool, int, str], asyncio.Task[_Deflated]] = {}
        self.deflated = 0  # pre-rendered parts compressed so far (tests read it)

    async def body(self, parts: BodyParts) -> bytes:
        fmt = parts.key[0]
        kept = self._kept.get(fmt)
        if kept is None or kept.key != parts.key:
            kept = await self._stable(parts)
        live = parts.live
        tail = _deflate(live, self.level, last=True)
        crc = zlib.crc32(live, kept.crc)
        trailer = struct.pack("<II", crc, (kept.size + len(live)) & 0xFFFFFFFF)
        return b"".join((_header(self.level), kept.data, tail, trailer))

    async def _stable(self, parts: BodyParts) -> _Deflated:
        """Compress the pre-rendered part once, however many scrapes ask for the same key at once, in a
        task of its own: a scraper that hangs up does not cancel it for the others."""
        task = self._pending.get(parts.key)
        if task is None:
            task = self._pending[parts.key] = asyncio.create_task(self._compress(parts))
        return await asyncio.shield(task)

    async def _compress(self, parts: BodyParts) -> _Deflated:
        try:
            whole, pieces = parts.small()
            if whole is not None:
                done = _deflate_stable(parts.key, (whole,), self.level)
            else:
                done = await asyncio.to_thread(_deflate_stable, parts.key, pieces, self.level)
        finally:
            del self._pending[parts.key]
        self.deflated += 1
        kept = self._kept.get(parts.key[0])
        if kept is None or kept.key[1] <= parts.key[1]:  # an older render finishing late keeps the newer
            self._kept[parts.key[0]] = done
        return done
