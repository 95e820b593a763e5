"""probes.clients.imap against the in-process fake IMAP server: what the fault matrix does not cover."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from probes.auth.credentials import Credentials
from probes.clients.imap import IMAPSession, IMAPSettings
from probes.errors import REASONS, ProbeError
from probes.recorder import Recorder
from probes.wire.net import Endpoint
from tests.support.faultservers import NO_FAULT, Store, imap_handler, serving

PASSWORD = 'pässwörd "with" \\ specials'


async def test_non_ascii_password_goes_as_a_literal_and_never_into_the_transcript() -> None:
    store = Store()
    store.add(b"X-Mailcanary-Token: v2;probe=p;x\r\nSubject: s\r\n\r\nbody\r\n")
    async with serving(imap_handler(store, NO_FAULT)) as port:
        rec = Recorder(transcript=[])
        settings = IMAPSettings(
            Endpoint("127.0.0.1", port, "none"), Credentials("u", PASSWORD), allow_plaintext_auth=True
        )
        session = IMAPSession(settings, rec)
        await session.open()
        try:
            assert session.exists == 1
            assert {"IDLE", "UIDPLUS"} <= session.capabilities
            uids = await session.search_header("X-Mailcanary-Token", ";probe=p;")
            assert uids == [1]
            got = await session.fetch(uids, "BODY.PEEK[]")
            assert got.data == {1: store.messages[1]} and got.sizes == {1: len(store.messages[1])}
            # a cap below the message: dropped unread, listed as skipped, the session stays usable
            small = await session.fetch(uids, "BODY.PEEK[]", cap=10)
            assert small.data == {} and small.skipped == {1}
            assert await session.noop() is True  # an EXISTS came with the NOOP
        finally:
            await session.close()
    text = "\n".join(rec.transcript or [])
    assert "LOGIN u ********" in text
    assert PASSWORD not in text and "pässwörd" not in text


async def _session_against(first: bytes, then: bytes) -> str:
    """Open a session against a server that sends ``first`` as greeting, ``then`` to LOGIN, and closes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(first)
        await writer.drain()
        if not first.endswith(
            b"\n"
        ):  # a cut greeting, then the server hangs up (a stall is tested elsewhere)
            writer.close()
            return
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readline()
            writer.write(then)
            await writer.drain()
        writer.close()

    async with serving(handler) as port:
        settings = IMAPSettings(
            Endpoint("127.0.0.1", port, "none"), Credentials("u", "p"), allow_plaintext_auth=True, timeout=1.0
        )
        session = IMAPSession(settings, Recorder())
        try:
            await session.open()
        except ProbeError as exc:
            assert exc.reason in REASONS
            return exc.reason
        finally:
            await session.close()
    return "success"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(st.binary(max_size=300), st.just(b"* OK [CAPABILITY IMAP4rev1 IDLE UIDPLUS] hi\r\n")),
    st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: b"M1 " + b + b"\r\n")),
)
def test_arbitrary_server_bytes_end_in_a_probe_error(greeting: bytes, login_reply: bytes) -> None:
    """Whatever a server sends, the session ends in a ProbeError with a known reason (or succeeds if the
    bytes happen to be a valid dialogue), never in another exception."""
    asyncio.run(_session_against(greeting, login_reply))


def test_valid_bytes_pass_and_garbage_after_greeting_is_protocol() -> None:
    ok = b"* OK [CAPABILITY IMAP4rev1 IDLE UIDPLUS] hi\r\n"
    assert asyncio.run(_session_against(ok, b"M1 NO [AUTHENTICATIONFAILED] nope\r\n")) == "receive_auth"
    assert asyncio.run(_session_against(ok, b"\x00\x01garbage\r\n")) == "receive_protocol"
    assert asyncio.run(_session_against(b"\xff\xfe\r\n", b"")) == "receive_protocol"


async def test_one_reader_per_session_commands_in_parallel_take_turns() -> None:
    """Issue 19's bug class: two coroutines reading one stream. Two commands started at once on one
    session (and an IDLE beside them) take turns on the session's lock, each gets its own reply; before,
    the second read raised ``RuntimeError: readuntil() called while another coroutine is already
    waiting for incoming data``."""
    store = Store()
    store.add(b"X-Mailcanary-Token: v2;probe=p;x\r\nSubject: s\r\n\r\nbody\r\n")
    async with serving(imap_handler(store, NO_FAULT)) as port:
        settings = IMAPSettings(
            Endpoint("127.0.0.1", port, "none"), Credentials("u", "pw"), allow_plaintext_auth=True
        )
        session = IMAPSession(settings, Recorder())
        await session.open()
        try:
            found, announced, idled = await asyncio.gather(
                session.search_header("X-Mailcanary-Token", ";probe=p;"), session.noop(), session.idle(0.05)
            )
            assert found == [1] and announced is True and idled is False
            assert session.is_open
        finally:
            await session.close()


class _Watched(list[str]):
    """A transcript that tells when a line ending in ``suffix`` was written (an event, not a sleep)."""

    def __init__(self, suffix: str) -> None:
        super().__init__()
        self.suffix = suffix
        self.seen = asyncio.Event()

    def append(self, line: str) -> None:
        super().append(line)
        if line.endswith(self.suffix):
            self.seen.set()


async def test_close_beside_a_cut_idle_drops_the_session_instead_of_reading_twice() -> None:
    """A task cut short inside IDLE (its reader still pending) and close() called before it unwound:
    close must not read LOGOUT's reply beside that reader; it drops the connection, never raises."""
    store = Store()
    async with serving(imap_handler(store, NO_FAULT)) as port:
        settings = IMAPSettings(
            Endpoint("127.0.0.1", port, "none"), Credentials("u", "pw"), allow_plaintext_auth=True
        )
        transcript = _Watched("IDLE")
        session = IMAPSession(settings, Recorder(transcript=transcript))
        await session.open()
        idling = asyncio.ensure_future(session.idle(30))
        await asyncio.wait_for(transcript.seen.wait(), 10)
        idling.cancel()  # not awaited: the task has not run its cancellation yet
        await session.close()  # before: RuntimeError from LOGOUT's read
        assert not session.is_open
        await asyncio.gather(idling, return_exceptions=True)


async def test_close_says_logout_and_does_not_wait_for_its_reply(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 23: LOGOUT is sent and the connection closed at once (nothing depends on the reply). A
    server that would answer only once the client is gone sees LOGOUT and then the client's EOF; before,
    close() waited for the reply (up to CLOSE_TIMEOUT). The transcript shows no reply it did not read."""
    import probes.clients.imap.connection as connection

    monkeypatch.setattr(connection, "CLOSE_TIMEOUT", 60.0, raising=False)  # the old wait: min(timeout, it)
    logout, eof = asyncio.Event(), asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 IDLE UIDPLUS] hi\r\n")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                if line.split()[1:2] == [b"LOGOUT"]:
                    logout.set()
                    if await reader.read() == b"":  # replies only after the client's EOF: never
                        eof.set()
                    break
        writer.close()

    async with serving(handler) as port:
        settings = IMAPSettings(Endpoint("127.0.0.1", port, "none"), Credentials("u", "p"), timeout=60.0)
        rec = Recorder(transcript=[])
        session = IMAPSession(settings, rec)
        await session.secure()
        await asyncio.wait_for(session.close(), 30)
        await asyncio.wait_for(eof.wait(), 30)
        assert logout.is_set() and not session.is_open
    assert rec.transcript is not None
    assert rec.transcript[-1].endswith("LOGOUT") and rec.transcript[-1].startswith("C: imap")
