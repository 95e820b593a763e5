"""POP3 transaction commands (RFC 1939, 2449): STAT, UIDL, LIST, TOP, RETR, DELE, NOOP, QUIT, and the
lenient reads of a message that may be foreign (gone, a line too long, too big: None, still in step)."""

from __future__ import annotations

from probes.clients.pop3.connection import POP3Connection
from probes.clients.pop3.parse import PROTOCOL, parse_list, parse_stat, parse_uidl
from probes.errors import ProbeError, Reason
from probes.wire.framing import join_lines


class Refused(ProbeError):
    """The server answered ``-ERR`` to TOP or RETR of a listed message; the session is still in step."""


def _check_number(number: int) -> None:
    """Message numbers start at 1; anything else is a bug in the caller, not the server's fault."""
    if number < 1:
        raise ProbeError(f"invalid POP3 message number {number}", reason="internal")


class POP3Commands(POP3Connection):
    """The commands of the TRANSACTION state, once logged in."""

    async def stat(self) -> tuple[int, int]:
        _, reply, _ = await self._command("STAT")
        return parse_stat(reply)

    async def uidl(self) -> dict[int, str]:
        _, _, lines = await self._command("UIDL", multiline=True)
        return parse_uidl(lines)

    async def list(self) -> dict[int, int]:
        """Message number -> size (the multi-line form)."""
        _, _, lines = await self._command("LIST", multiline=True)
        return parse_list(lines)

    async def top(self, number: int, lines: int = 0) -> bytes:
        """Headers (and ``lines`` body lines) without fetching the whole message."""
        _check_number(number)
        if lines < 0:
            raise ProbeError(f"TOP needs a non-negative line count, not {lines}", reason="internal")
        _, _, reply = await self._command("TOP", str(number), str(lines), multiline=True)
        return join_lines(reply)

    async def retr(self, number: int) -> bytes:
        _check_number(number)
        _, _, reply = await self._command("RETR", str(number), multiline=True)
        return join_lines(reply)

    async def dele(self, number: int, *, err_reason: Reason = PROTOCOL) -> None:
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
        ok, reply, _ = await self._command(verb, str(number), *extra, tolerate_err=True)
        if not ok:
            if refused_raises:
                raise Refused(f"{verb} {number} failed: -ERR {self._mask(reply)}", reason=PROTOCOL)
            return None
        lines = await self._body_or_skip(verb, cap)
        return None if lines is None else join_lines(lines)

    async def noop(self) -> None:
        await self._command("NOOP")

    async def quit(self, *, err_reason: Reason = PROTOCOL) -> None:
        """QUIT, which commits deletions (UPDATE state), then close whatever happened."""
        try:
            await self._command("QUIT", err_reason=err_reason)
        finally:
            await self.close()
