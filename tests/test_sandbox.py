"""The sandbox mail server (exporter/sandbox) as a fast fixture: our own probe library against it.

Round trips in every TLS mode over IMAP and POP3, POP3 deletion semantics (QUIT commits, a dropped
connection does not), IMAP IDLE push, credentials refused when wrong or offered before TLS, and the raw
POP3 dialogue (STLS, CAPA, USER/PASS, AUTH PLAIN, LIST/UIDL/TOP/RETR, dot-stuffing, RSET).
"""

from __future__ import annotations

import ast
import asyncio
import base64
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from exporter.demo.sandbox import Sandbox
from exporter.demo.sandbox.pop3 import crlf, parse_plain, stuff, top
from probes.auth.credentials import Credentials
from probes.canary import new_key
from probes.clients.imap import IMAPSession, IMAPSettings
from probes.clients.pop3 import POP3Client
from probes.clients.smtp import SMTPSettings
from probes.errors import ProbeError
from probes.recorder import Recorder
from probes.roundtrip import POP3Settings, RoundTripSettings, probe_roundtrip
from probes.wire.net import Endpoint, TLSSettings
from tests.support.procs import this_process

HOST = "127.0.0.1"


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with Sandbox(tmp_path / "pki") as sb:
        yield sb


def tls_of(sb: Sandbox) -> TLSSettings:
    return TLSSettings(ca_file=str(sb.ca_file))


def endpoint(sb: Sandbox, protocol: str, mode: str) -> Endpoint:
    return Endpoint(HOST, sb.listener(protocol, mode).port, mode, tls_of(sb))  # type: ignore[arg-type]


def creds(sb: Sandbox, password: str | None = None) -> Credentials:
    return Credentials(sb.user, sb.password if password is None else password)


def settings(
    sb: Sandbox,
    protocol: str,
    smtp_tls: str = "starttls",
    receive_tls: str = "implicit",
    *,
    smtp_password: str | None = None,
    receive_password: str | None = None,
    recipient: str | None = None,
) -> RoundTripSettings:
    rx = endpoint(sb, protocol, receive_tls)
    receiver = (
        IMAPSettings(rx, creds(sb, receive_password), timeout=5)
        if protocol == "imap"
        else POP3Settings(rx, creds(sb, receive_password), timeout=5)
    )
    return RoundTripSettings(
        name=f"sb-{protocol}",
        smtp=SMTPSettings(endpoint(sb, "smtp", smtp_tls), creds(sb, smtp_password), timeout=5),
        receiver=receiver,
        sender=sb.user,
        recipient=recipient or sb.user,
        key=new_key(),
    )


async def tls_client(
    sb: Sandbox, port: int, implicit: bool
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    ctx = ssl.create_default_context(cafile=str(sb.ca_file))
    return await asyncio.open_connection(HOST, port, ssl=ctx if implicit else None)


# --- round trips with our probe library ---------------------------------------------------------------------


@pytest.mark.parametrize("smtp_tls", ["starttls", "implicit"])
@pytest.mark.parametrize("receive_tls", ["starttls", "implicit"])
@pytest.mark.parametrize("protocol", ["imap", "pop3"])
async def test_roundtrip_every_tls_mode(
    sandbox: Sandbox, protocol: str, smtp_tls: str, receive_tls: str
) -> None:
    rec = Recorder()
    st = settings(sandbox, protocol, smtp_tls, receive_tls)
    result = await asyncio.wait_for(probe_roundtrip(st, rec), 10)
    assert 0 <= result.delivery_seconds < 2
    # TLS facts of both connections, verified against the sandbox CA.
    smtp_ep, rx_ep = st.smtp.endpoint.address, st.receiver.endpoint.address
    assert set(rec.tls) == {smtp_ep, rx_ep}
    for facts in rec.tls.values():
        assert facts.verified and facts.version in ("TLSv1.2", "TLSv1.3")
        assert facts.earliest_not_after is not None and facts.earliest_not_after > time.time() + 80 * 86400
    assert sandbox.delivered == 1
    assert await sandbox.messages() == []  # the probe deleted its canary


async def test_delivery_delay_shows_in_latency(tmp_path: Path) -> None:
    async with Sandbox(tmp_path, delay=0.3, jitter=0.1) as sb:
        result = await asyncio.wait_for(probe_roundtrip(settings(sb, "imap"), Recorder()), 10)
        assert 0.3 <= result.delivery_seconds < 1.5


async def test_delivered_message_has_trace_headers(sandbox: Sandbox) -> None:
    await aiosmtplib.send(
        b"Subject: hi\r\n\r\nbody\r\n",
        sender="someone@example.test",
        recipients=[sandbox.user],
        hostname=HOST,
        port=sandbox.listener("smtp", "implicit").port,
        use_tls=True,
        tls_context=ssl.create_default_context(cafile=str(sandbox.ca_file)),
        username=sandbox.user,
        password=sandbox.password,
        timeout=5,
    )
    [msg] = await sandbox.messages()
    assert msg.startswith(b"Return-Path: <someone@example.test>\r\nReceived: from ")
    assert b"with ESMTPSA id " in msg and msg.endswith(b"\r\n\r\nbody\r\n")


# --- credentials --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "side", "reason"),
    [
        ("imap", "smtp", "smtp_auth"),
        ("imap", "receive", "receive_auth"),
        ("pop3", "receive", "receive_auth"),
    ],
)
async def test_wrong_password_fails(sandbox: Sandbox, protocol: str, side: str, reason: str) -> None:
    wrong = {"smtp_password" if side == "smtp" else "receive_password": "not-the-password"}
    with pytest.raises(ProbeError) as err:
        await asyncio.wait_for(probe_roundtrip(settings(sandbox, protocol, **wrong), Recorder()), 10)
    assert err.value.reason == reason
    assert sandbox.delivered == 0


async def test_unknown_recipient_is_rejected(sandbox: Sandbox) -> None:
    with pytest.raises(ProbeError) as err:
        await probe_roundtrip(settings(sandbox, "pop3", recipient="nobody@example.test"), Recorder())
    assert err.value.reason == "smtp_rejected" and err.value.code == 550


async def test_no_credentials_before_tls(sandbox: Sandbox) -> None:
    # SMTP: no AUTH offered, and refused, before STARTTLS.
    smtp = aiosmtplib.SMTP(hostname=HOST, port=sandbox.listener("smtp", "starttls").port, start_tls=False)
    await smtp.connect()
    try:
        await smtp.ehlo()
        assert "starttls" in smtp.esmtp_extensions and "auth" not in smtp.esmtp_extensions
        reply = await smtp.execute_command(b"AUTH", b"PLAIN", base64.b64encode(b"\0u\0p"))
        assert reply.code == 530  # 530 Must issue a STARTTLS command first
    finally:
        smtp.close()
    # IMAP: LOGINDISABLED before STARTTLS, even from loopback.
    reader, writer = await tls_client(sandbox, sandbox.listener("imap", "starttls").port, implicit=False)
    try:
        greeting = await reader.readline()
        assert b"STARTTLS" in greeting and b"LOGINDISABLED" in greeting
        writer.write(f'a LOGIN "{sandbox.user}" "{sandbox.password}"\r\n'.encode())
        assert not (await reader.readline()).startswith(b"a OK")
    finally:
        writer.close()
    # POP3: STLS offered, USER/AUTH refused before it.
    reader, writer = await tls_client(sandbox, sandbox.listener("pop3", "starttls").port, implicit=False)
    try:
        assert (await reader.readline()).startswith(b"+OK")
        writer.write(b"CAPA\r\n")
        capa = await _multi(reader)
        assert b"STLS" in capa and b"USER" not in capa and b"SASL" not in capa
        writer.write(f"USER {sandbox.user}\r\n".encode())
        assert (await reader.readline()).startswith(b"-ERR [AUTH]")
    finally:
        writer.close()


# --- IMAP IDLE ----------------------------------------------------------------------------------------------


async def test_idle_push(sandbox: Sandbox) -> None:
    session = IMAPSession(
        IMAPSettings(endpoint(sandbox, "imap", "starttls"), creds(sandbox), timeout=5), Recorder()
    )
    await session.open()
    try:
        assert "IDLE" in session.capabilities and "UIDPLUS" in session.capabilities
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, lambda: asyncio.ensure_future(sandbox.deliver(b"Subject: push\r\n\r\nx\r\n")))
        clock = this_process()
        assert await session.idle(5.0) is True  # pushed: True, not the timeout's False
        # Before its own 5 s were up (the code's bound), not counting time this process waited for a CPU.
        assert clock() < 5.0, clock.wall
    finally:
        await session.close()


# --- POP3: deletion semantics and the raw dialogue ----------------------------------------------------------


async def _pop3(sandbox: Sandbox, mode: str = "implicit") -> POP3Client:
    client = await POP3Client.connect(endpoint(sandbox, "pop3", mode), Recorder(), timeout=5)
    await client.login(creds(sandbox))
    return client


async def test_pop3_quit_commits_deletions_and_a_drop_does_not(sandbox: Sandbox) -> None:
    for n in (1, 2, 3):
        await sandbox.deliver(f"Subject: m{n}\r\n\r\nbody {n}\r\n".encode())
    # Dropped without QUIT: nothing marked is removed.
    client = await _pop3(sandbox)
    await client.dele(1)
    assert (await client.stat())[0] == 2  # hidden within the session
    with pytest.raises(ProbeError):
        await client.retr(1)  # deleted: -ERR
    await client.close()
    assert len(await sandbox.messages()) == 3
    # RSET unmarks; QUIT commits.
    client = await _pop3(sandbox, "starttls")
    await client.dele(1)
    await client.noop()
    await client.dele(2)
    await client._command("RSET")
    assert (await client.stat())[0] == 3
    uids = await client.uidl()
    await client.dele(2)
    await client.quit()
    left = await sandbox.messages()
    assert [m.split(b"\r\n\r\n", 1)[1] for m in left] == [b"body 1\r\n", b"body 3\r\n"]
    # UIDs are stable across sessions: the survivors keep theirs.
    client = await _pop3(sandbox)
    try:
        assert sorted((await client.uidl()).values()) == sorted([uids[1], uids[3]])
    finally:
        await client.quit()


async def test_pop3_deletion_is_seen_by_imap(sandbox: Sandbox) -> None:
    await sandbox.deliver(b"Subject: one\r\n\r\nx\r\n")
    session = IMAPSession(
        IMAPSettings(endpoint(sandbox, "imap", "implicit"), creds(sandbox), timeout=5), Recorder()
    )
    await session.open()
    try:
        assert session.exists == 1
        client = await _pop3(sandbox)
        await client.dele(1)
        await client.quit()
        await session.noop()  # a selected session learns of the EXPUNGE at its next command
        assert await session.search_header("Subject", "one") == []
    finally:
        await session.close()


async def _multi(reader: asyncio.StreamReader) -> bytes:
    """Status line and body of a multi-line reply, up to (not including) the terminating dot."""
    status = await reader.readline()
    assert status.startswith(b"+OK"), status
    body = b""
    while (line := await reader.readline()) != b".\r\n":
        assert line, "connection closed inside a multi-line reply"
        body += line
    return body


async def test_pop3_raw_dialogue(sandbox: Sandbox) -> None:
    message = b"Subject: dots\r\nX-A: 1\r\n\r\nline 1\r\n.starts with a dot\r\n..two dots\r\nline 4\r\n"
    await sandbox.deliver(message)
    reader, writer = await tls_client(sandbox, sandbox.listener("pop3", "starttls").port, implicit=False)
    try:

        async def cmd(line: str) -> bytes:
            writer.write(line.encode() + b"\r\n")
            return await reader.readline()

        assert (await reader.readline()).startswith(b"+OK")
        assert (await cmd("STAT")).startswith(b"-ERR")  # not in AUTHORIZATION state
        assert (await cmd("STLS")).startswith(b"+OK")
        await writer.start_tls(ssl.create_default_context(cafile=str(sandbox.ca_file)), server_hostname=HOST)
        assert (await cmd("STLS")).startswith(b"-ERR")  # once only
        writer.write(b"CAPA\r\n")
        capa = await _multi(reader)
        assert b"USER\r\n" in capa and b"SASL PLAIN\r\n" in capa and b"STLS" not in capa
        assert (await cmd(f"USER {sandbox.user}")).startswith(b"+OK")
        assert (await cmd("PASS wrong")).startswith(b"-ERR [AUTH]")
        assert (await cmd("PASS " + sandbox.password)).startswith(b"-ERR")  # USER must come again
        # AUTH PLAIN after an empty challenge (the form without an initial response).
        assert await cmd("AUTH PLAIN") == b"+ \r\n"
        plain = base64.b64encode(f"\0{sandbox.user}\0{sandbox.password}".encode()).decode()
        assert (await cmd(plain)).startswith(b"+OK maildrop has 1 messages")
        size = len(message)
        assert await cmd("STAT") == f"+OK 1 {size}\r\n".encode()
        assert await cmd("LIST 1") == f"+OK 1 {size}\r\n".encode()
        assert (await cmd("LIST 2")).startswith(b"-ERR")
        assert (await cmd("RETR 0")).startswith(b"-ERR")
        writer.write(b"UIDL\r\n")
        assert (await _multi(reader)).count(b"\r\n") == 1
        writer.write(b"TOP 1 2\r\n")
        assert await _multi(reader) == b"Subject: dots\r\nX-A: 1\r\n\r\nline 1\r\n..starts with a dot\r\n"
        writer.write(b"RETR 1\r\n")
        body = await _multi(reader)
        assert body.replace(b"\r\n..", b"\r\n.") == message  # dot-stuffed on the wire, intact unstuffed
        assert (await cmd("BOGUS")).startswith(b"-ERR")
        assert (await cmd("QUIT")).startswith(b"+OK")
        assert await reader.read() == b""  # the server closed the connection
    finally:
        writer.close()
    assert await sandbox.messages() == [message]  # nothing was deleted


def test_pop3_helpers() -> None:
    assert crlf(b"a\nb\r\nc") == b"a\r\nb\r\nc\r\n"
    assert stuff(b".a\r\nb\r\n") == b"..a\r\nb\r\n.\r\n"
    assert stuff(b"") == b".\r\n"
    assert top(b"H: 1\r\n\r\nl1\r\nl2\r\n", 0) == b"H: 1\r\n\r\n"
    assert top(b"H: 1\r\n\r\nl1\r\nl2\r\n", 5) == b"H: 1\r\n\r\nl1\r\nl2\r\n"
    assert top(b"H: 1\r\n", 3) == b"H: 1\r\n"
    ok = base64.b64encode(b"\0u\0p").decode()
    assert parse_plain(ok) == ("u", "p")
    assert parse_plain(base64.b64encode(b"u\0u\0p").decode()) == ("u", "p")
    assert parse_plain(base64.b64encode(b"admin\0u\0p").decode()) is None  # no proxy authorization
    assert parse_plain("not base64!") is None
    assert parse_plain(base64.b64encode(b"no nuls").decode()) is None


# --- housekeeping -------------------------------------------------------------------------------------------


async def test_stop_ends_open_sessions_and_pending_deliveries(tmp_path: Path) -> None:
    sb = Sandbox(delay=30)
    await sb.start()
    tmp = sb.ca_file.parent
    client = await _pop3(sb)
    await sb._accept(b"Subject: later\r\n\r\nx\r\n")
    assert sb.pending == 1
    clock = this_process()
    await sb.stop()
    assert clock() < 3, clock.wall  # not the 30 s delay (time waiting for a CPU not counted)
    assert sb.pending == 0 and sb.delivered == 0
    assert not tmp.exists()  # the private PKI directory is gone
    with pytest.raises(ProbeError):
        await client.stat()
    await client.close()
    with pytest.raises(OSError):
        await asyncio.open_connection(HOST, sb.listener("imap", "implicit").port)


def test_probes_do_not_depend_on_the_sandbox() -> None:
    probes_dir = Path(__file__).resolve().parent.parent / "probes"
    for source in probes_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            assert not any(m.split(".")[0] == "exporter" for m in modules), f"{source} imports {modules}"
