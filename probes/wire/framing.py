"""Bounded framing under the protocol clients: lines and literals read with hard limits.

Whatever a server sends is hostile input. Every read here has a ceiling (line length, literal size, bytes per
reply) and raises :class:`FrameError` the moment one is passed or garbage is seen, before the bytes are
buffered: a server announcing a 1 GiB literal costs nothing, and an endless line costs at most one line
limit of buffer (``StreamReader``'s own limit, set to the line limit, stops reading from the socket).
The deadline of a step is the caller's (one ``asyncio.timeout`` around a whole reply), so a drip-feed is
bounded in time as a flood is bounded in bytes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

from probes.errors import ProbeError

KiB: Final = 1024
MiB: Final = 1024 * KiB
DEFAULT_MAX_LINE: Final = 64 * KiB
DEFAULT_MAX_HEADER: Final = 64 * KiB
DEFAULT_MAX_MESSAGE: Final = 1 * MiB
_CHUNK: Final = 64 * KiB


@dataclass(frozen=True)
class ReadLimits:
    """Caps on what one session reads (configurable: ``receive.max_line_bytes`` and friends).

    ``max_header`` bounds a fetched header block, ``max_message`` a fetched whole message (a canary is
    about 1 KiB, so anything bigger is not ours and is skipped unread where the protocol allows),
    ``max_line`` any single protocol line.
    """

    max_line: int = DEFAULT_MAX_LINE
    max_header: int = DEFAULT_MAX_HEADER
    max_message: int = DEFAULT_MAX_MESSAGE

    @property
    def max_reply(self) -> int:
        """Bytes one command's whole reply may take (untagged noise from other sessions included)."""
        return 4 * self.max_message + 16 * self.max_line


class FrameError(ProbeError):
    """A limit was passed or the bytes cannot be framed: the session is out of step and must end."""

    reason = "receive_protocol"


class ConnectionClosed(FrameError):
    """The server closed the connection; ``partial`` tells whether a line was cut off."""

    def __init__(self, message: str, *, reason: str | None = None, partial: bool = False) -> None:
        super().__init__(message, reason=reason)
        self.partial = partial


def show(data: bytes, limit: int = 80) -> str:
    """A bounded, printable rendering of server bytes for error text: a hostile line cannot flood a log."""
    text = repr(data[:limit].decode("utf-8", errors="replace"))
    return text + ("..." if len(data) > limit else "")


class BoundedReader:
    """Lines and literals from a ``StreamReader`` whose ``limit`` is at least ``max_line + 2``.

    ``budget`` counts every byte read since :meth:`reset_budget` (one command's reply), so a server that
    floods untagged noise is cut off after ``limits.max_reply`` bytes instead of running the step out.
    """

    def __init__(self, reader: asyncio.StreamReader, limits: ReadLimits, reason: str) -> None:
        self.reader = reader
        self.limits = limits
        self.reason = reason
        self.used = 0
        self.received_any = False

    def reset_budget(self) -> None:
        self.used = 0

    def _spend(self, n: int) -> None:
        self.used += n
        self.received_any = True
        if self.used > self.limits.max_reply:
            raise FrameError(
                f"reply larger than {self.limits.max_reply} bytes (limit max_reply)", reason=self.reason
            )

    async def line(self, what: str) -> bytes:
        """One line without its CRLF (a bare LF is accepted), at most ``max_line`` bytes."""
        try:
            raw = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            raise ConnectionClosed(
                f"connection closed by the server while reading the reply to {what}",
                reason=self.reason,
                partial=bool(exc.partial),
            ) from None
        except asyncio.LimitOverrunError:
            raise FrameError(
                f"line longer than {self.limits.max_line} bytes in the reply to {what}", reason=self.reason
            ) from None
        except OSError as exc:
            raise ConnectionClosed(
                f"connection lost while reading the reply to {what}: {exc}", reason=self.reason
            ) from None
        self._spend(len(raw))
        line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        if len(line) > self.limits.max_line:
            raise FrameError(
                f"line longer than {self.limits.max_line} bytes in the reply to {what}", reason=self.reason
            )
        return line

    async def skip_rest_of_line(self, what: str) -> int:
        """After an over-long line: read and drop up to its end (bounded by the reply budget)."""
        dropped = 0
        while True:
            try:
                raw = await self.reader.readuntil(b"\n")
            except asyncio.LimitOverrunError as exc:
                chunk = await self._exactly_raw(max(exc.consumed, 1), what)
                dropped += len(chunk)
                continue
            except asyncio.IncompleteReadError as exc:
                raise ConnectionClosed(
                    f"connection closed by the server while reading the reply to {what}",
                    reason=self.reason,
                    partial=bool(exc.partial),
                ) from None
            self._spend(len(raw))
            return dropped + len(raw)

    async def _exactly_raw(self, n: int, what: str) -> bytes:
        try:
            data = await self.reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise ConnectionClosed(
                f"connection closed by the server in the middle of the reply to {what}",
                reason=self.reason,
                partial=True,
            ) from None
        except OSError as exc:
            raise ConnectionClosed(
                f"connection lost while reading the reply to {what}: {exc}", reason=self.reason
            ) from None
        self._spend(n)
        return data

    async def exactly(self, n: int, cap: int, what: str) -> bytes:
        """``n`` bytes of literal data, refused before reading anything if ``n`` is over ``cap``."""
        if n > cap:
            raise FrameError(f"literal of {n} bytes in the reply to {what} (limit {cap})", reason=self.reason)
        return await self._exactly_raw(n, what) if n else b""

    async def discard(self, n: int, what: str) -> None:
        """Read and drop ``n`` bytes in small chunks (a foreign item too big to keep), within the budget."""
        if self.used + n > self.limits.max_reply:
            raise FrameError(
                f"literal of {n} bytes in the reply to {what} (limit {self.limits.max_reply})",
                reason=self.reason,
            )
        while n > 0:
            step = min(n, _CHUNK)
            await self._exactly_raw(step, what)
            n -= step
