"""Bounded framing under the protocol clients: lines and literals read with hard limits.

Whatever a server sends is hostile input. Every read here has a ceiling (line length, literal size, bytes per
reply) and raises :class:`FrameError` the moment one is passed or garbage is seen, before the bytes are
buffered: a server announcing a 1 GiB literal costs nothing, and an endless line costs at most one line
limit of buffer (``StreamReader``'s own limit, set to the line limit, stops reading from the socket).
The deadline of a step is the caller's (one ``asyncio.timeout`` around a whole reply, IMAP) or one per
read (``read_timeout``, POP3: each line within the step timeout, as that client always read), so a
drip-feed is bounded in time as a flood is bounded in bytes.

Both receiving clients read through :class:`BoundedReader`: IMAP its lines and literals, POP3 its status
lines and dot-terminated multi-line bodies (RFC 1939 section 3), whose byte-stuffing is undone here too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from probes.errors import ProbeError, ProbeTimeout, Reason

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

    def __init__(self, message: str, *, reason: Reason | None = None, partial: bool = False) -> None:
        super().__init__(message, reason=reason)
        self.partial = partial


def show(data: bytes, limit: int = 80) -> str:
    """A bounded, printable rendering of server bytes for error text: a hostile line cannot flood a log."""
    text = repr(data[:limit].decode("utf-8", errors="replace"))
    return text + ("..." if len(data) > limit else "")


def strip_eol(line: bytes) -> bytes:
    """Drop one CRLF, or a bare LF from a broken server; a lone CR is data and stays."""
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


def unstuff_lines(lines: Iterable[bytes]) -> list[bytes]:
    """Undo dot-stuffing line by line (RFC 1939 section 3); the terminator must never be passed in, so a
    lone "." is garbage."""
    out: list[bytes] = []
    for raw in lines:
        line = strip_eol(raw)
        if line == b".":
            raise FrameError("multi-line terminator inside a response body")
        out.append(line[1:] if line.startswith(b".") else line)
    return out


def unstuff(lines: Iterable[bytes]) -> bytes:
    """Reassemble a message from the lines of a multi-line reply (terminators optional, final "." excluded).

    Every line comes back CRLF-terminated, as the message was when the server framed it.
    """
    return join_lines(unstuff_lines(lines))


def join_lines(lines: Iterable[bytes]) -> bytes:
    """Lines already unstuffed, each CRLF-terminated again: the message as the server framed it."""
    return b"".join(line + b"\r\n" for line in lines)


class BoundedReader:
    """Lines, literals and dot-terminated bodies from a ``StreamReader`` whose ``limit`` is at least
    ``max_line + 2``.

    ``budget`` counts every byte read since :meth:`reset_budget` (one command's reply), so a server that
    floods untagged noise is cut off after ``limits.max_reply`` bytes instead of running the step out.
    ``reply_budget=False`` leaves that count to the caller's own caps (POP3 reads one status line per
    command, and each body through :meth:`dot_body` or :meth:`dot_body_or_skip` with a cap of its own).
    ``read_timeout``: each read from the socket waits at most this long (``ProbeTimeout``); None leaves the
    deadline to the caller's ``asyncio.timeout`` around the whole reply.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        limits: ReadLimits,
        reason: Reason,
        *,
        reply_budget: bool = True,
        read_timeout: float | None = None,
    ) -> None:
        self.reader = reader
        self.limits = limits
        self.reason = reason
        self.reply_budget = reply_budget
        self.read_timeout = read_timeout
        self.used = 0
        self.received_any = False

    def reset_budget(self) -> None:
        self.used = 0

    def _spend(self, n: int) -> None:
        self.used += n
        self.received_any = True
        if self.reply_budget and self.used > self.limits.max_reply:
            raise FrameError(
                f"reply larger than {self.limits.max_reply} bytes (limit max_reply)", reason=self.reason
            )

    def _too_long(self, what: str, limit: int) -> FrameError:
        return FrameError(f"line longer than {limit} bytes in the reply to {what}", reason=self.reason)

    async def _readuntil(self, what: str) -> bytes:
        """One ``readuntil(LF)`` within ``read_timeout``; the end of the stream or a socket error is
        :class:`ConnectionClosed`. ``LimitOverrunError`` passes (the bytes stay buffered): the caller
        decides whether a long line ends the session or is skipped."""
        try:
            if self.read_timeout is None:
                return await self.reader.readuntil(b"\n")
            try:
                async with asyncio.timeout(self.read_timeout):
                    return await self.reader.readuntil(b"\n")
            except TimeoutError as exc:
                raise ProbeTimeout(f"no reply to {what} within {self.read_timeout:g}s") from exc
        except ProbeError:
            raise  # ProbeTimeout is a TimeoutError, hence an OSError: not a lost connection
        except asyncio.IncompleteReadError as exc:
            raise ConnectionClosed(
                f"connection closed by the server while reading the reply to {what}",
                reason=self.reason,
                partial=bool(exc.partial),
            ) from None
        except OSError as exc:
            raise ConnectionClosed(
                f"connection lost while reading the reply to {what}: {exc}", reason=self.reason
            ) from None

    async def line(self, what: str) -> bytes:
        """One line without its CRLF (a bare LF is accepted), at most ``max_line`` bytes."""
        try:
            raw = await self._readuntil(what)
        except asyncio.LimitOverrunError:
            raise self._too_long(what, self.limits.max_line) from None
        self._spend(len(raw))
        line = strip_eol(raw)
        if len(line) > self.limits.max_line:
            raise self._too_long(what, self.limits.max_line)
        return line

    async def line_or_dropped(self, what: str, cap: int) -> bytes | int:
        """One line as :meth:`line`; a line over ``max_line`` is read to its end and dropped instead, and
        the number of bytes dropped comes back (more than ``cap`` of them: :class:`FrameError`)."""
        try:
            raw = await self._readuntil(what)
        except asyncio.LimitOverrunError:
            return await self.skip_rest_of_line(what, cap)
        self._spend(len(raw))
        line = strip_eol(raw)
        if len(line) > self.limits.max_line:
            return len(raw)  # read whole already: nothing of it is left to drop
        return line

    async def skip_rest_of_line(self, what: str, cap: int | None = None) -> int:
        """After an over-long line: read and drop up to its end, at most ``cap`` bytes (and the budget)."""
        dropped = 0
        while True:
            try:
                raw = await self._readuntil(what)
            except asyncio.LimitOverrunError as exc:
                chunk = await self._exactly_raw(max(exc.consumed, 1), what)
                dropped += len(chunk)
                if cap is not None and dropped > cap:
                    raise self._too_long(what, cap) from None
                continue
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

    # --- dot-terminated bodies (POP3 multi-line replies, RFC 1939 section 3) ---------------------------

    def _larger(self, what: str, cap: int) -> FrameError:
        return FrameError(f"reply to {what} is larger than {cap} bytes", reason=self.reason)

    async def dot_body(self, what: str, cap: int) -> list[bytes]:
        """The lines of a multi-line reply up to its "." terminator, unstuffed and without CRLF.

        More than ``cap`` bytes of lines (each counted with its CRLF) or a line over ``max_line`` end the
        session (:class:`FrameError`).
        """
        lines: list[bytes] = []
        total = 0
        while True:
            line = await self.line(what)
            if line == b".":
                return lines
            total += len(line) + 2
            if total > cap:
                raise self._larger(what, cap)
            lines.append(line[1:] if line.startswith(b".") else line)

    async def dot_body_or_skip(self, what: str, keep: int, cap: int) -> list[bytes] | None:
        """As :meth:`dot_body` for a message that may be foreign: one over ``keep`` bytes or with a line
        over ``max_line`` is read to its terminator and dropped (None), so the session stays in step.

        What is dropped is bounded too: past ``cap`` bytes of it, :class:`FrameError`.
        """
        lines: list[bytes] = []
        total = 0
        dropped = 0
        fits = True
        while True:
            got = await self.line_or_dropped(what, cap)
            if isinstance(got, int):
                fits = False
                dropped += got
                if dropped > cap:
                    raise self._larger(what, cap)
                continue
            if got == b".":
                return lines if fits else None
            total += len(got) + 2
            if total > keep:
                fits = False
                dropped += len(got) + 2
                lines = []
                if dropped > cap:
                    raise self._larger(what, cap)
            elif fits:
                lines.append(got[1:] if got.startswith(b".") else got)
