"""Tests for probes.clients.pop3: the pure parsers (examples and hypothesis), and the client against an
in-process fake POP3 server that can be scripted to show faults a real server cannot be made to show."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from probes.auth.credentials import Credentials
from probes.clients.pop3 import (
    MAX_LINE,
    MAX_LOGIN_DELAY,
    LoginGate,
    POP3Client,
    login_refusal_reason,
    parse_capa,
    parse_list,
    parse_login_delay,
    parse_stat,
    parse_status,
    parse_uidl,
    response_code,
    sasl_plain,
    unstuff,
)
from probes.errors import ProbeError, ProbeTimeout
from probes.recorder import Masker, Recorder
from probes.wire.net import Endpoint, TLSMode, TLSSettings

USER = "canary@example.test"
PASSWORD = 's3cret pa$$ "word"'
SERVER_NAME = "pop.example.test"
BODY_MARKER = b"body-marker-that-must-not-reach-the-transcript"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def stuff(body: bytes) -> list[bytes]:
    """What a server sends for a CRLF-terminated message: each line, dot-stuffed, without terminator."""
    assert body == b"" or body.endswith(b"\r\n")
    lines = body.split(b"\r\n")[:-1] if body else []
    return [b"." + line if line.startswith(b".") else line for line in lines]


def frame(lines: list[bytes], eol: bytes = b"\r\n") -> bytes:
    return b"".join(line + eol for line in lines) + b"." + eol


# --- pure helpers ----------------------------------------------------------------------------------------


class TestParseStatus:
    @pytest.mark.parametrize(
        ("line", "expected"),
        [
            (b"+OK\r\n", (True, "")),
            (b"+OK", (True, "")),
            (b"+OK Dovecot ready.\r\n", (True, "Dovecot ready.")),
            (b"+OK 2 320\n", (True, "2 320")),  # bare LF from a broken server
            (b"-ERR [AUTH] Authentication failed.\r\n", (False, "[AUTH] Authentication failed.")),
            (b"-ERR\r\n", (False, "")),
            (b"-ERR\tno such message\r\n", (False, "no such message")),
            (b"+OK caf\xe9\r\n", (True, "caf\ufffd")),  # Latin-1 from an old server: replaced, no crash
        ],
    )
    def test_valid(self, line: bytes, expected: tuple[bool, str]) -> None:
        assert parse_status(line) == expected

    @pytest.mark.parametrize(
        "line",
        [b"", b"\r\n", b"OK", b"+ok fine", b"+OKAY", b"-ERROR x", b"* OK IMAP4rev1", b"220 smtp", b"+ \r\n"],
    )
    def test_garbage(self, line: bytes) -> None:
        with pytest.raises(ProbeError) as info:
            parse_status(line)
        assert info.value.reason == "receive_protocol"

    @given(st.binary(max_size=300))
    def test_arbitrary_bytes_return_or_probe_error(self, data: bytes) -> None:
        try:
            ok, text = parse_status(data)
        except ProbeError as exc:
            assert exc.reason == "receive_protocol"
        else:
            assert data.startswith(b"+OK" if ok else b"-ERR")
            assert isinstance(text, str)


class TestParseStat:
    def test_valid(self) -> None:
        assert parse_stat("2 320") == (2, 320)
        assert parse_stat("0 0") == (0, 0)
        assert parse_stat("3 1024 extra info") == (3, 1024)

    @pytest.mark.parametrize("text", ["", "2", "two 320", "2  320", "-1 5", "2 3e2", "\u0662 320"])
    def test_garbage(self, text: str) -> None:
        with pytest.raises(ProbeError) as info:
            parse_stat(text)
        assert info.value.reason == "receive_protocol"


class TestParseCapa:
    def test_dovecot_like(self) -> None:
        lines = [b"CAPA", b"TOP", b"UIDL", b"RESP-CODES", b"PIPELINING", b"AUTH-RESP-CODE",
                 b"USER", b"SASL PLAIN LOGIN", b"STLS"]  # fmt: skip
        caps = parse_capa(lines)
        assert caps["SASL"] == ["PLAIN", "LOGIN"]
        assert caps["UIDL"] == [] and caps["TOP"] == [] and caps["STLS"] == []
        assert set(caps) == {"CAPA", "TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE",
                             "USER", "SASL", "STLS"}  # fmt: skip

    def test_liberal(self) -> None:
        caps = parse_capa([b"sasl  PLAIN\tlogin\r\n", b"", b"   ", b"IMPLEMENTATION Some Server 1.0\n"])
        assert caps == {"SASL": ["PLAIN", "login"], "IMPLEMENTATION": ["Some", "Server", "1.0"]}

    def test_empty(self) -> None:
        assert parse_capa([]) == {}

    @given(st.lists(st.binary(max_size=80), max_size=20))
    def test_arbitrary_bytes_return_or_probe_error(self, lines: list[bytes]) -> None:
        try:
            caps = parse_capa(lines)
        except ProbeError as exc:
            assert exc.reason == "receive_protocol"
        else:
            assert all(tag == tag.upper() and tag for tag in caps)


class TestLoginDelay:
    """RFC 2449 section 6.5 (CAPA LOGIN-DELAY) and section 8.1 / RFC 3206 (response codes)."""

    @pytest.mark.parametrize(
        ("lines", "expected"),
        [
            ([b"TOP", b"LOGIN-DELAY 60"], (60, False)),  # Cyrus with popminpoll: 1
            ([b"LOGIN-DELAY 10"], (10, False)),  # Courier
            ([b"login-delay 900 USER"], (900, True)),  # per user: ask again after login
            ([b"LOGIN-DELAY 0"], (0, False)),
            ([b"LOGIN-DELAY 99999999999"], None),  # more than 10 digits: unreadable, not honoured
            ([b"LOGIN-DELAY 9999999999"], (MAX_LOGIN_DELAY, False)),  # bounded
            ([b"LOGIN-DELAY"], None),
            ([b"LOGIN-DELAY sixty"], None),
            ([b"LOGIN-DELAY -5"], None),
            ([b"TOP", b"UIDL"], None),
        ],
    )
    def test_capa_value(self, lines: list[bytes], expected: tuple[int, bool] | None) -> None:
        assert parse_login_delay(parse_capa(lines)) == expected

    @given(st.lists(st.binary(max_size=40), max_size=8))
    def test_capa_value_never_raises_and_is_bounded(self, lines: list[bytes]) -> None:
        parsed = parse_login_delay(parse_capa([b"LOGIN-DELAY " + line for line in lines]))
        assert parsed is None or 0 <= parsed[0] <= MAX_LOGIN_DELAY

    @pytest.mark.parametrize(
        ("text", "code", "reason"),
        [
            ("[LOGIN-DELAY] Logins must be at least 1 minute apart", "LOGIN-DELAY", "receive_login_delay"),
            ("[login-delay] too soon", "LOGIN-DELAY", "receive_login_delay"),
            ("[IN-USE] Unable to lock maildrop", "IN-USE", "receive_protocol"),
            ("[SYS/TEMP] Internal error occurred", "SYS/TEMP", "receive_protocol"),
            ("[SYS/PERM] Mailbox is broken", "SYS/PERM", "receive_protocol"),
            ("[AUTH] Authentication failed.", "AUTH", "receive_auth"),
            ("Authentication failed.", None, "receive_auth"),
            ("[UNKNOWN-CODE] what", "UNKNOWN-CODE", "receive_auth"),
            ("too soon [LOGIN-DELAY]", None, "receive_auth"),  # a code only counts at the start
        ],
    )
    def test_response_code(self, text: str, code: str | None, reason: str) -> None:
        assert response_code(text) == code
        assert login_refusal_reason(text) == reason

    @given(st.text(max_size=120))
    def test_response_code_never_raises(self, text: str) -> None:
        assert login_refusal_reason(text) in ("receive_auth", "receive_login_delay", "receive_protocol")

    def test_gate(self) -> None:
        gate = LoginGate()
        key = ("pop.example.test:995", USER)
        assert gate.allowed_at(key) == 0.0 and gate.delay(key) is None
        gate.note_login(key, at=100.0)
        assert gate.allowed_at(key) == 0.0  # no delay known: at once
        gate.learn(key, 60)
        assert gate.allowed_at(key) == 100.0 + 60 + gate.MARGIN
        assert gate.allowed_at(("pop.example.test:995", "other")) == 0.0  # per account
        for i in range(gate.MAX_ENTRIES + 5):  # bounded: the oldest are forgotten
            gate.note_login((f"h{i}:110", USER), at=1.0)
        assert gate.delay(key) is None


class TestParseListings:
    def test_uidl(self) -> None:
        assert parse_uidl([b"1 whqtswO00WBw418f9t5JxYwZ\r\n", b"2 QhdPYR:00WBw1Ph7x7"]) == {
            1: "whqtswO00WBw418f9t5JxYwZ",
            2: "QhdPYR:00WBw1Ph7x7",
        }
        assert parse_uidl([]) == {}

    def test_list(self) -> None:
        assert parse_list([b"1 120\r\n", b"2 200 extra info allowed by RFC 1939\n", b"10 0"]) == {
            1: 120,
            2: 200,
            10: 0,
        }

    @pytest.mark.parametrize(
        "line",
        [b"", b"1", b"x 120", b"0 120", b"-1 120", b"1 uid\xff", b"\xff\xfe", b"99999999999 a", b"1\x00 a"],
    )
    def test_uidl_garbage(self, line: bytes) -> None:
        with pytest.raises(ProbeError) as info:
            parse_uidl([b"3 fine", line])
        assert info.value.reason == "receive_protocol"

    @pytest.mark.parametrize("line", [b"1 big", b"1 -5", b"1 1.5", b"2 12", b"1 " + b"9" * 21])
    def test_list_garbage(self, line: bytes) -> None:
        with pytest.raises(ProbeError) as info:
            parse_list([b"2 10", line])  # b"2 12" repeats message 2
        assert info.value.reason == "receive_protocol"

    @given(st.lists(st.binary(max_size=60), max_size=20))
    def test_uidl_arbitrary_bytes(self, lines: list[bytes]) -> None:
        try:
            uids = parse_uidl(lines)
        except ProbeError as exc:
            assert exc.reason == "receive_protocol"
        else:
            assert len(uids) == len(lines)
            assert all(number >= 1 and uid and uid.isascii() for number, uid in uids.items())

    @given(st.lists(st.binary(max_size=60), max_size=20))
    def test_list_arbitrary_bytes(self, lines: list[bytes]) -> None:
        try:
            sizes = parse_list(lines)
        except ProbeError as exc:
            assert exc.reason == "receive_protocol"
        else:
            assert all(number >= 1 and size >= 0 for number, size in sizes.items())

    @given(st.dictionaries(st.integers(1, 10**9), st.text("abcXYZ019:+-_.!~", min_size=1, max_size=70)))
    def test_uidl_round_trip(self, uids: dict[int, str]) -> None:
        assert parse_uidl(f"{n} {uid}\r\n".encode() for n, uid in uids.items()) == uids


class TestUnstuff:
    def test_examples(self) -> None:
        wire = [b"Subject: x\r\n", b"\r\n", b"..\r\n", b"...hidden\n", b".x", b"no dot"]
        assert unstuff(wire) == b"Subject: x\r\n\r\n.\r\n..hidden\r\nx\r\nno dot\r\n"
        assert unstuff([]) == b""

    def test_lone_cr_is_data(self) -> None:
        assert unstuff([b"a\r\r\n", b"b\r"]) == b"a\r\r\nb\r\r\n"

    @pytest.mark.parametrize("terminator", [b".", b".\r\n", b".\n"])
    def test_terminator_inside_body(self, terminator: bytes) -> None:
        with pytest.raises(ProbeError) as info:
            unstuff([b"a", terminator, b"b"])
        assert info.value.reason == "receive_protocol"

    @given(st.lists(st.binary(max_size=80), max_size=20))
    def test_arbitrary_bytes_return_or_probe_error(self, lines: list[bytes]) -> None:
        try:
            body = unstuff(lines)
        except ProbeError as exc:
            assert exc.reason == "receive_protocol"
        else:
            assert body.count(b"\r\n") >= len(lines)

    @given(st.lists(st.binary(max_size=120).filter(lambda line: b"\n" not in line), max_size=40))
    def test_stuff_unstuff_round_trip(self, lines: list[bytes]) -> None:
        body = b"".join(line + b"\r\n" for line in lines)
        wire = stuff(body)
        assert b"." not in wire  # a stuffed body can never contain the terminator
        assert unstuff(wire) == body
        assert unstuff(line + b"\r\n" for line in wire) == body


class TestSaslPlain:
    def test_rfc4616_example(self) -> None:
        # RFC 4616 section 4: "\0tim\0tanstaaftanstaaf"
        assert sasl_plain("tim", "tanstaaftanstaaf") == "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"

    def test_utf8(self) -> None:
        assert base64.b64decode(sasl_plain("jos\u00e9", "p\u00e4ss")) == "\0jos\u00e9\0p\u00e4ss".encode()

    def test_masker_hides_it(self) -> None:
        masker = Masker()
        masker.add(PASSWORD, USER)
        assert masker(f"AUTH PLAIN {sasl_plain(USER, PASSWORD)}") == "AUTH PLAIN ********"

    @pytest.mark.parametrize(("user", "password"), [("a\0b", "pw"), ("user", "pw\0secret-tail")])
    def test_nul_refused_without_leaking(self, user: str, password: str) -> None:
        with pytest.raises(ProbeError) as info:
            sasl_plain(user, password)
        assert info.value.reason == "config"
        assert "secret-tail" not in str(info.value)


# --- a fake POP3 server ----------------------------------------------------------------------------------


@dataclass
class FakeMailbox:
    """A real-enough POP3 server for the happy paths: RFC 1939 states, STLS, AUTH PLAIN, USER/PASS."""

    tls: ssl.SSLContext | None = None
    implicit: bool = False  # the listener itself is TLS (the context goes to start_server)
    offer_stls: bool = True
    sasl_plain: bool = True
    plain_only_after_tls: bool = False
    eol: bytes = b"\r\n"
    messages: dict[int, tuple[str, bytes]] = field(default_factory=dict)  # number -> (uid, message)
    received: list[str] = field(default_factory=list)  # every command line, as received
    committed: set[int] = field(default_factory=set)  # deletions committed by QUIT
    max_command: int = 0  # longest command line seen, CRLF included

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        encrypted = self.implicit
        authed = False
        user: str | None = None
        deleted: set[int] = set()

        async def send(*lines: bytes) -> None:
            writer.write(b"".join(line + self.eol for line in lines))
            await writer.drain()

        async def multi(status: bytes, lines: list[bytes]) -> None:
            writer.write(status + self.eol + frame(lines, self.eol))
            await writer.drain()

        def live(arg: str) -> int | None:
            number = int(arg) if arg.isdigit() else 0
            return number if number in self.messages and number not in deleted else None

        await send(b"+OK fake POP3 ready <1896.697170952@dbc.mtview.ca.us>")
        while True:
            raw = await reader.readline()
            if not raw:
                return
            self.max_command = max(self.max_command, len(raw))
            line = raw.rstrip(b"\r\n").decode()
            self.received.append(line)
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            if verb == "CAPA":
                caps = [b"TOP", b"UIDL", b"RESP-CODES", b"USER"]
                if self.sasl_plain and (encrypted or not self.plain_only_after_tls):
                    caps.append(b"SASL PLAIN LOGIN")
                if self.offer_stls and not encrypted and self.tls is not None:
                    caps.append(b"STLS")
                await multi(b"+OK capabilities follow", caps)
            elif verb == "STLS" and self.tls is not None and not encrypted:
                await send(b"+OK begin TLS negotiation")
                await writer.start_tls(self.tls)
                encrypted = True
            elif verb == "AUTH" and not authed:
                mech, _, initial = arg.partition(" ")
                if mech.upper() != "PLAIN":
                    await send(b"-ERR unsupported mechanism")
                    continue
                if not initial:
                    await send(b"+ ")
                    initial = (await reader.readline()).rstrip(b"\r\n").decode()
                if base64.b64decode(initial) == f"\0{USER}\0{PASSWORD}".encode():
                    authed = True
                    await send(b"+OK logged in")
                else:
                    await send(b"-ERR [AUTH] Authentication failed.")
            elif verb == "USER" and not authed:
                user = arg
                await send(b"+OK")
            elif verb == "PASS" and not authed and user is not None:
                if user == USER and arg == PASSWORD:
                    authed = True
                    await send(b"+OK logged in")
                else:
                    await send(b"-ERR [AUTH] Authentication failed.")
            elif verb == "QUIT":
                if authed:
                    self.committed |= deleted
                await send(b"+OK bye")
                return
            elif verb == "NOOP" and authed:
                await send(b"+OK")
            elif verb == "STAT" and authed:
                live_msgs = [msg for n, (_, msg) in self.messages.items() if n not in deleted]
                await send(f"+OK {len(live_msgs)} {sum(map(len, live_msgs))}".encode())
            elif verb == "LIST" and authed and not arg:
                sizes = [
                    f"{n} {len(msg)}".encode() for n, (_, msg) in self.messages.items() if n not in deleted
                ]
                await multi(b"+OK scan listing follows", sizes)
            elif verb == "UIDL" and authed and not arg:
                uids = [f"{n} {uid}".encode() for n, (uid, _) in self.messages.items() if n not in deleted]
                await multi(b"+OK", uids)
            elif verb in ("RETR", "TOP") and authed:
                number, _, count = arg.partition(" ")
                found = live(number)
                if found is None:
                    await send(b"-ERR no such message")
                    continue
                message = self.messages[found][1]
                if verb == "TOP":
                    head, _, body = message.partition(b"\r\n\r\n")
                    kept = b"".join(line + b"\r\n" for line in body.split(b"\r\n")[: int(count)])
                    message = head + b"\r\n\r\n" + kept
                await multi(f"+OK {len(message)} octets".encode(), stuff(message))
            elif verb == "DELE" and authed:
                found = live(arg)
                if found is None:
                    await send(b"-ERR no such message")
                else:
                    deleted.add(found)
                    await send(b"+OK marked")
            else:
                await send(b"-ERR unknown command or wrong state")


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(SERVER_NAME).configure_cert(ctx)
    return ctx


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


Serve = Callable[..., Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a listener on 127.0.0.1 with a handler; teardown cancels handlers that are still stalling."""
    servers: list[asyncio.Server] = []
    tasks: set[asyncio.Task[None]] = set()

    async def start(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> int:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await handler(reader, writer)
            except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.transport.abort()

        server = await asyncio.start_server(run, "127.0.0.1", 0, ssl=ssl_context)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for server in servers:
        server.close()
        await server.wait_closed()


def endpoint(port: int, mode: TLSMode, ca_file: str | None = None) -> Endpoint:
    return Endpoint(
        "127.0.0.1", port, tls_mode=mode, tls=TLSSettings(ca_file=ca_file, server_name=SERVER_NAME)
    )


def recorder() -> Recorder:
    return Recorder(transcript=[])


def message(subject: str) -> bytes:
    return (
        f"From: canary@example.test\r\nSubject: {subject}\r\nX-Canary: token\r\n\r\n".encode()
        + b"first line\r\n.\r\n..two dots\r\n.leading dot\r\n"
        + BODY_MARKER
        + b"\r\n\r\nlast\r\n"
    )


def assert_no_secrets(rec: Recorder) -> None:
    assert rec.transcript is not None
    text = "\n".join(rec.transcript)
    assert PASSWORD not in text
    assert sasl_plain(USER, PASSWORD) not in text
    assert BODY_MARKER.decode() not in text


# --- happy paths -----------------------------------------------------------------------------------------


async def test_implicit_tls_auth_plain_full_session(
    serve: Serve, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    first, second = message("one"), message("two")
    box = FakeMailbox(implicit=True, messages={1: ("uid-1", first), 2: ("uid-2", second)})
    port = await serve(box, server_tls)
    rec = recorder()

    client = await POP3Client.connect(endpoint(port, "implicit", ca_file), rec, timeout=5)
    assert client.encrypted
    assert client.ssl_object is not None and client.ssl_object.version() in ("TLSv1.2", "TLSv1.3")
    assert "fake POP3 ready" in client.greeting
    assert client.capabilities["SASL"] == ["PLAIN", "LOGIN"]
    assert "STLS" not in client.capabilities
    await client.login(Credentials(USER, PASSWORD))
    assert await client.stat() == (2, len(first) + len(second))
    assert await client.list() == {1: len(first), 2: len(second)}
    assert await client.uidl() == {1: "uid-1", 2: "uid-2"}
    headers = await client.top(2, 0)
    assert headers == b"From: canary@example.test\r\nSubject: two\r\nX-Canary: token\r\n\r\n"
    assert await client.top(2, 2) == headers + b"first line\r\n.\r\n"
    assert await client.retr(2) == second
    await client.noop()
    await client.dele(2)
    await client.quit()

    assert box.committed == {2}
    assert box.received[1].startswith("AUTH PLAIN ")  # one round trip, initial response
    assert [line.split()[0] for line in box.received] == [
        "CAPA", "AUTH", "STAT", "LIST", "UIDL", "TOP", "TOP", "RETR", "NOOP", "DELE", "QUIT",
    ]  # fmt: skip
    assert rec.commands == 11
    assert {"receive_connect", "receive_tls", "receive_banner"} <= set(rec.phases)
    assert rec.transcript is not None
    assert "C: pop3 AUTH PLAIN ********" in rec.transcript
    assert "C: pop3 RETR 2" in rec.transcript
    retr = rec.transcript.index("C: pop3 RETR 2")
    assert rec.transcript[retr + 1 : retr + 3] == [f"S: pop3 +OK {len(second)} octets", "S: pop3 (11 lines)"]
    assert_no_secrets(rec)


async def test_stls_user_pass_capabilities_refreshed(
    serve: Serve, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    # No SASL at all: USER/PASS. Capabilities must be re-read after TLS (STLS gone afterwards).
    box = FakeMailbox(tls=server_tls, sasl_plain=False, messages={1: ("u1", message("one"))})
    port = await serve(box)
    rec = recorder()
    async with await POP3Client.connect(endpoint(port, "starttls", ca_file), rec, timeout=5) as client:
        assert client.encrypted
        assert "STLS" not in client.capabilities and "UIDL" in client.capabilities
        await client.login(Credentials(USER, PASSWORD))
        assert await client.uidl() == {1: "u1"}
        await client.quit()
    assert box.received[:3] == ["CAPA", "STLS", "CAPA"]
    assert box.received[3:5] == [f"USER {USER}", f"PASS {PASSWORD}"]
    assert rec.transcript is not None
    assert "C: pop3 PASS ********" in rec.transcript
    assert "C: pop3 STLS" in rec.transcript
    assert {"receive_connect", "receive_banner", "receive_tls"} <= set(rec.phases)
    assert rec.commands == 7  # CAPA STLS CAPA USER PASS UIDL QUIT
    assert_no_secrets(rec)


async def test_stls_sasl_offered_only_after_tls(
    serve: Serve, server_tls: ssl.SSLContext, ca_file: str
) -> None:
    box = FakeMailbox(tls=server_tls, plain_only_after_tls=True)
    port = await serve(box)
    rec = recorder()
    async with await POP3Client.connect(endpoint(port, "starttls", ca_file), rec, timeout=5) as client:
        assert client.capabilities["SASL"] == ["PLAIN", "LOGIN"]
        await client.login(Credentials(USER, PASSWORD))
    assert box.received[3].startswith("AUTH PLAIN ")
    assert_no_secrets(rec)


class ForgetfulMasker(Masker):
    """Learns no secrets, so only the client's own masking of PASS and AUTH lines is left to test."""

    def add(self, secret: str, username: str | None = None) -> None:
        return None


@pytest.mark.parametrize("sasl", [True, False])
async def test_transcript_masks_credentials_by_command(serve: Serve, sasl: bool) -> None:
    port = await serve(FakeMailbox(sasl_plain=sasl))
    rec = Recorder(masker=ForgetfulMasker(), transcript=[])
    async with await POP3Client.connect(endpoint(port, "none"), rec, timeout=5) as client:
        await client.login(Credentials(USER, PASSWORD), allow_plaintext=True)
    assert rec.transcript is not None
    expected = ["C: pop3 AUTH PLAIN ********"] if sasl else [f"C: pop3 USER {USER}", "C: pop3 PASS ********"]
    assert [line for line in rec.transcript if line.startswith("C: pop3 ") and "CAPA" not in line] == expected
    assert_no_secrets(rec)


async def test_close_and_context_exit_do_not_commit_deletions(serve: Serve) -> None:
    box = FakeMailbox(messages={1: ("u1", message("one")), 2: ("u2", message("two"))})
    port = await serve(box)
    async with await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5) as client:
        await client.login(Credentials(USER, PASSWORD), allow_plaintext=True)
        await client.dele(1)
    await asyncio.sleep(0.05)
    assert "QUIT" not in box.received
    assert box.committed == set()
    await client.close()  # a second close is harmless
    with pytest.raises(ProbeError) as info:
        await client.noop()
    assert info.value.reason == "receive_protocol"


async def test_plaintext_login_refused_without_allow_plaintext(serve: Serve) -> None:
    box = FakeMailbox()
    port = await serve(box)
    rec = recorder()
    async with await POP3Client.connect(endpoint(port, "none"), rec, timeout=5) as client:
        assert not client.encrypted
        with pytest.raises(ProbeError) as info:
            await client.login(Credentials(USER, PASSWORD))
        assert info.value.reason == "config"
        assert "UIDL" in await client.capa()  # the session is still usable: nothing was sent
    assert box.received == ["CAPA", "CAPA"]
    assert rec.commands == 2
    assert PASSWORD not in str(info.value)


async def test_plaintext_login_allowed_uses_auth_plain(serve: Serve) -> None:
    box = FakeMailbox()
    port = await serve(box)
    async with await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5) as client:
        await client.login(Credentials(USER, PASSWORD), allow_plaintext=True)
        assert await client.stat() == (0, 0)
        assert await client.uidl() == {}


async def test_long_credentials_use_auth_plain_continuation(serve: Serve) -> None:
    long_password = "p" * 300  # the AUTH line with an initial response would exceed 255 octets
    box = FakeMailbox()
    port = await serve(box)
    rec = recorder()
    async with await POP3Client.connect(endpoint(port, "none"), rec, timeout=5) as client:
        with pytest.raises(ProbeError) as info:
            await client.login(Credentials(USER, long_password), allow_plaintext=True)
    assert info.value.reason == "receive_auth"  # the fake only knows PASSWORD: the continuation got there
    assert box.received[1] == "AUTH PLAIN"
    assert box.max_command <= 255
    assert rec.transcript is not None
    assert "C: pop3 ********" in rec.transcript
    assert long_password not in "\n".join(rec.transcript)


async def test_bare_lf_server(serve: Serve) -> None:
    msg = message("lf")
    box = FakeMailbox(eol=b"\n", messages={1: ("u1", msg)})
    port = await serve(box)
    async with await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5) as client:
        assert "UIDL" in client.capabilities
        await client.login(Credentials(USER, PASSWORD), allow_plaintext=True)
        assert await client.list() == {1: len(msg)}
        assert await client.retr(1) == msg  # lines come back CRLF-terminated


async def test_capa_err_means_no_capabilities(serve: Serve) -> None:
    async def old_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK old server\r\n")
        while line := await reader.readline():
            writer.write(b"-ERR what?\r\n" if line.startswith(b"CAPA") else b"+OK\r\n")
            await writer.drain()

    port = await serve(old_server)
    rec = recorder()
    async with await POP3Client.connect(endpoint(port, "none"), rec, timeout=5) as client:
        assert client.capabilities == {}
        assert await client.capa() == {}
        await client.login(Credentials(USER, PASSWORD), allow_plaintext=True)  # falls back to USER/PASS
    assert rec.commands == 4
    assert rec.transcript is not None
    assert rec.transcript[-2:] == ["C: pop3 PASS ********", "S: pop3 +OK"]


# --- faults ----------------------------------------------------------------------------------------------


async def connect_fails(
    port: int, mode: TLSMode = "none", *, read_timeout: float = 5, ca_file: str | None = None
) -> ProbeError:
    with pytest.raises(ProbeError) as info:
        await POP3Client.connect(endpoint(port, mode, ca_file), recorder(), timeout=read_timeout)
    return info.value


async def test_stalled_greeting_times_out(serve: Serve) -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)

    port = await serve(stall)
    loop = asyncio.get_running_loop()
    start = loop.time()
    error = await connect_fails(port, read_timeout=0.2)
    assert isinstance(error, ProbeTimeout) and isinstance(error, TimeoutError)
    assert error.reason == "timeout"
    assert "greeting" in str(error)
    assert loop.time() - start < 2


async def test_stalled_reply_names_the_command(serve: Serve) -> None:
    async def stall_on_uidl(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK hi\r\n")
        while line := await reader.readline():
            if line.startswith(b"UIDL"):
                writer.write(b"+OK\r\n1 abc\r\n")  # and then nothing: no terminator
            else:
                writer.write(b"-ERR\r\n" if line.startswith(b"CAPA") else b"+OK\r\n")
            await writer.drain()

    port = await serve(stall_on_uidl)
    client = await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=0.2)
    with pytest.raises(ProbeTimeout) as info:
        await client.uidl()
    assert "UIDL" in str(info.value)
    with pytest.raises(ProbeError):  # the connection was dropped: no stale replies
        await client.noop()


@pytest.mark.parametrize(
    "greeting",
    [b"* OK [CAPABILITY IMAP4rev1] ready\r\n", b"220 smtp.example ESMTP\r\n", b"\x16\x03\x01\x00\r\n"],
)
async def test_garbage_greeting(serve: Serve, greeting: bytes) -> None:
    async def talk_nonsense(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        await asyncio.sleep(60)

    error = await connect_fails(await serve(talk_nonsense))
    assert error.reason == "receive_protocol"
    assert "greeting" in str(error)


async def test_err_greeting(serve: Serve) -> None:
    async def busy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"-ERR [SYS/TEMP] too many connections\r\n")
        await writer.drain()

    error = await connect_fails(await serve(busy))
    assert error.reason == "receive_protocol"
    assert "too many connections" in str(error)


async def test_closed_before_greeting_is_a_connect_failure(serve: Serve) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        return

    error = await connect_fails(await serve(hang_up))
    assert error.reason == "receive_connect"


async def test_closed_right_after_greeting(serve: Serve) -> None:
    async def greet_and_go(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK hello\r\n")
        await writer.drain()

    error = await connect_fails(await serve(greet_and_go))
    assert error.reason == "receive_protocol"
    assert "CAPA" in str(error)


async def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connects are refused
        error = await connect_fails(port)
    assert error.reason == "receive_connect"
    assert "127.0.0.1" in str(error)


async def test_reset_mid_multiline_response(serve: Serve) -> None:
    async def reset_during_retr(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK hi\r\n")
        while line := await reader.readline():
            if line.startswith(b"RETR"):
                writer.write(b"+OK 5000 octets\r\nSubject: x\r\n\r\npartial bo")
                await writer.drain()
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                writer.transport.abort()  # RST, not FIN
                return
            writer.write(b"-ERR\r\n" if line.startswith(b"CAPA") else b"+OK\r\n")
            await writer.drain()

    port = await serve(reset_during_retr)
    client = await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5)
    with pytest.raises(ProbeError) as info:
        await client.retr(1)
    assert info.value.reason == "receive_protocol"
    assert "RETR" in str(info.value)
    await client.close()


async def test_eof_mid_multiline_response(serve: Serve) -> None:
    async def close_during_uidl(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK hi\r\n")
        while line := await reader.readline():
            if line.startswith(b"UIDL"):
                writer.write(b"+OK\r\n1 abc\r\n2 de")
                await writer.drain()
                return  # FIN
            writer.write(b"-ERR\r\n" if line.startswith(b"CAPA") else b"+OK\r\n")
            await writer.drain()

    port = await serve(close_during_uidl)
    async with await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5) as client:
        with pytest.raises(ProbeError) as info:
            await client.uidl()
    assert info.value.reason == "receive_protocol"
    assert "closed" in str(info.value)


def scripted(replies: dict[bytes, bytes]) -> Handler:
    """A server answering each command verb with a canned reply (the default reply is +OK)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK scripted\r\n")
        while line := await reader.readline():
            verb = line.split(b" ", 1)[0].strip().upper()
            writer.write(replies.get(verb, b"+OK\r\n"))
            await writer.drain()

    return handler


async def test_err_on_pass_is_auth_failure_without_password(serve: Serve) -> None:
    # A hostile server echoing the password back must not get it into the error message.
    port = await serve(scripted({b"CAPA": b"-ERR\r\n", b"PASS": f"-ERR [AUTH] bad {PASSWORD}\r\n".encode()}))
    rec = recorder()
    async with await POP3Client.connect(endpoint(port, "none"), rec, timeout=5) as client:
        with pytest.raises(ProbeError) as info:
            await client.login(Credentials(USER, PASSWORD), allow_plaintext=True)
    assert info.value.reason == "receive_auth"
    assert "[AUTH] bad ********" in str(info.value)
    assert PASSWORD not in str(info.value)
    assert_no_secrets(rec)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (b"-ERR [LOGIN-DELAY] Logins must be at least 1 minute apart\r\n", "receive_login_delay"),
        (b"-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n", "receive_protocol"),
        (b"-ERR [SYS/TEMP] Try again later\r\n", "receive_protocol"),
        (b"-ERR [AUTH] Invalid login\r\n", "receive_auth"),
    ],
)
async def test_refused_login_reason_follows_the_response_code(
    serve: Serve, reply: bytes, reason: str
) -> None:
    capa = b"+OK\r\nUSER\r\nLOGIN-DELAY 60\r\n.\r\n"
    port = await serve(scripted({b"CAPA": capa, b"PASS": reply}))
    async with await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5) as client:
        with pytest.raises(ProbeError) as info:
            await client.login(Credentials(USER, PASSWORD), allow_plaintext=True)
    assert info.value.reason == reason
    assert reply.decode().strip()[5:] in str(info.value)  # the server's own words
    if reason == "receive_login_delay":
        assert "LOGIN-DELAY 60s" in str(info.value)


async def test_err_on_user_is_auth_failure(serve: Serve) -> None:
    port = await serve(
        scripted({b"CAPA": b"-ERR\r\n", b"USER": b"-ERR [AUTH] Plaintext auth disallowed\r\n"})
    )
    async with await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5) as client:
        with pytest.raises(ProbeError) as info:
            await client.login(Credentials(USER, PASSWORD), allow_plaintext=True)
    assert info.value.reason == "receive_auth"
    assert "Plaintext auth disallowed" in str(info.value)


async def test_err_on_auth_plain(serve: Serve) -> None:
    box = FakeMailbox()
    port = await serve(box)
    rec = recorder()
    async with await POP3Client.connect(endpoint(port, "none"), rec, timeout=5) as client:
        with pytest.raises(ProbeError) as info:
            await client.login(Credentials(USER, "wrong password"), allow_plaintext=True)
    assert info.value.reason == "receive_auth"
    assert "Authentication failed" in str(info.value)
    assert rec.transcript is not None and "wrong password" not in "\n".join(rec.transcript)


async def test_unexpected_sasl_challenge_is_cancelled(serve: Serve) -> None:
    received: list[bytes] = []

    async def challenge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK hi\r\n")
        while line := await reader.readline():
            received.append(line)
            if line.startswith(b"CAPA"):
                writer.write(b"+OK\r\nSASL PLAIN\r\n.\r\n")
            elif line.startswith(b"AUTH"):
                writer.write(b"+ Y2hhbGxlbmdl\r\n")
            else:
                writer.write(b"-ERR cancelled\r\n")
            await writer.drain()

    port = await serve(challenge)
    async with await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5) as client:
        with pytest.raises(ProbeError) as info:
            await client.login(Credentials(USER, PASSWORD), allow_plaintext=True)
    assert info.value.reason == "receive_auth"
    assert received[-1] == b"*\r\n"


async def test_err_elsewhere_is_protocol(serve: Serve) -> None:
    port = await serve(scripted({b"CAPA": b"-ERR\r\n", b"DELE": b"-ERR message 7 already deleted\r\n"}))
    async with await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5) as client:
        with pytest.raises(ProbeError) as info:
            await client.dele(7)
        assert info.value.reason == "receive_protocol"
        assert "already deleted" in str(info.value)
        await client.noop()  # an -ERR leaves the dialogue in step


async def test_garbage_status_line_mid_session(serve: Serve) -> None:
    port = await serve(scripted({b"CAPA": b"-ERR\r\n", b"STAT": b"hello there\r\n"}))
    client = await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5)
    with pytest.raises(ProbeError) as info:
        await client.stat()
    assert info.value.reason == "receive_protocol"
    assert "STAT" in str(info.value)


async def test_malformed_stat_and_uidl(serve: Serve) -> None:
    port = await serve(
        scripted(
            {b"CAPA": b"-ERR\r\n", b"STAT": b"+OK lots\r\n", b"UIDL": b"+OK\r\n1 ok\r\nnonsense\r\n.\r\n"}
        )
    )
    async with await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5) as client:
        for call in (client.stat, client.uidl):
            with pytest.raises(ProbeError) as info:
                await call()
            assert info.value.reason == "receive_protocol"


@pytest.mark.parametrize(("length", "ok"), [(MAX_LINE, True), (MAX_LINE + 1, False), (200_000, False)])
async def test_line_length_limit(serve: Serve, length: int, ok: bool) -> None:
    line = b"X-Long: " + b"a" * (length - 8)
    port = await serve(scripted({b"CAPA": b"-ERR\r\n", b"RETR": b"+OK\r\n" + line + b"\r\n.\r\n"}))
    async with await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5) as client:
        if ok:
            assert await client.retr(1) == line + b"\r\n"
        else:
            with pytest.raises(ProbeError) as info:
                await client.retr(1)
            assert info.value.reason == "receive_protocol"
            assert f"longer than {MAX_LINE}" in str(info.value)


@pytest.mark.parametrize("length", [2_000, 200_000])  # within the stream's own limit, and beyond it
async def test_foreign_line_over_the_limit_right_before_the_terminator(serve: Serve, length: int) -> None:
    """A foreign message whose last line is over ``max_line`` is skipped and the session stays in step.

    A line longer than ``max_line`` but shorter than the stream's buffer limit arrives whole: nothing of
    it is left to drop. The old POP3 reader then dropped the *next* line too, here the terminator, and
    waited out the step for a reply that had already come (a false ``timeout``)."""
    long_line = b"X-Long: " + b"z" * length
    port = await serve(
        scripted({b"CAPA": b"-ERR\r\n", b"TOP": b"+OK\r\nFrom: a@b\r\n" + long_line + b"\r\n.\r\n"})
    )
    async with await POP3Client.connect(
        endpoint(port, "none"), recorder(), timeout=2, max_line=1000
    ) as client:
        assert await client.top_or_none(1, 64 * 1024) is None
        await client.noop()  # in step: the +OK of NOOP, not a line of the skipped reply


async def test_over_long_greeting_without_newline(serve: Serve) -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK " + b"x" * 1_000_000)
        await writer.drain()
        await asyncio.sleep(60)

    error = await connect_fails(await serve(flood))
    assert error.reason == "receive_protocol"
    assert "longer than" in str(error)


async def test_multiline_response_cap(serve: Serve) -> None:
    body = b"".join(b"line %d\r\n" % i for i in range(200))
    port = await serve(scripted({b"CAPA": b"-ERR\r\n", b"RETR": b"+OK\r\n" + body + b".\r\n"}))
    endpoint_ = endpoint(port, "none")
    async with await POP3Client.connect(endpoint_, recorder(), timeout=5, max_response=len(body)) as client:
        assert await client.retr(1) == body  # exactly at the cap is fine
    async with await POP3Client.connect(
        endpoint_, recorder(), timeout=5, max_response=len(body) - 1
    ) as client:
        with pytest.raises(ProbeError) as info:
            await client.retr(1)
    assert info.value.reason == "receive_protocol"
    assert "larger than" in str(info.value)


async def test_stls_not_offered(serve: Serve, server_tls: ssl.SSLContext, ca_file: str) -> None:
    box = FakeMailbox(tls=server_tls, offer_stls=False)
    error = await connect_fails(await serve(box), "starttls", ca_file=ca_file)
    assert error.reason == "receive_tls"
    assert str(error) == "server does not offer STLS"
    assert "STLS" not in box.received


async def test_stls_refused(serve: Serve) -> None:
    port = await serve(scripted({b"CAPA": b"+OK\r\nSTLS\r\n.\r\n", b"STLS": b"-ERR not today\r\n"}))
    error = await connect_fails(port, "starttls")
    assert error.reason == "receive_tls"
    assert "not today" in str(error)


async def test_stls_injection_refused(serve: Serve) -> None:
    # Plaintext sent right after "+OK" to STLS would otherwise be read as if it had come under TLS.
    port = await serve(scripted({b"CAPA": b"+OK\r\nSTLS\r\n.\r\n", b"STLS": b"+OK go\r\n+OK injected\r\n"}))
    error = await connect_fails(port, "starttls")
    assert error.reason == "receive_tls"
    assert "after its STLS reply" in str(error)


async def test_untrusted_certificate(serve: Serve, server_tls: ssl.SSLContext) -> None:
    port = await serve(FakeMailbox(implicit=True), server_tls)
    error = await connect_fails(port, "implicit", ca_file=None)  # system store: trustme CA unknown
    assert error.reason == "receive_tls"
    assert "certificate verification failed" in str(error)


async def test_wrong_hostname(serve: Serve, server_tls: ssl.SSLContext, ca_file: str) -> None:
    port = await serve(FakeMailbox(implicit=True), server_tls)
    rec = recorder()
    wrong = Endpoint("127.0.0.1", port, tls_mode="implicit", tls=TLSSettings(ca_file=ca_file))
    with pytest.raises(ProbeError) as info:
        await POP3Client.connect(wrong, rec, timeout=5)
    assert info.value.reason == "receive_tls"
    assert "certificate verification failed" in str(info.value)
    assert "receive_tls" in rec.phases


async def test_tls_against_plaintext_server(serve: Serve, ca_file: str) -> None:
    error = await connect_fails(await serve(FakeMailbox()), "implicit", ca_file=ca_file)
    assert error.reason == "receive_tls"


async def test_stalled_tls_handshake(serve: Serve, ca_file: str) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(60)

    error = await connect_fails(await serve(silent), "implicit", read_timeout=0.2, ca_file=ca_file)
    assert isinstance(error, ProbeTimeout)
    assert "TLS handshake" in str(error)


async def test_line_breaks_in_arguments_refused(serve: Serve) -> None:
    box = FakeMailbox()
    port = await serve(box)
    async with await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5) as client:
        # In AUTH PLAIN a line break is base64 inside the response: harmless, merely wrong credentials.
        with pytest.raises(ProbeError) as info:
            await client.login(Credentials("alice\r\nDELE 1", PASSWORD), allow_plaintext=True)
        assert info.value.reason == "receive_auth"
        box.sasl_plain = False
        await client.capa()
        # In USER/PASS it would be a second command: refused before anything is sent.
        for creds in (Credentials("alice\r\nDELE 1", PASSWORD), Credentials(USER, "pw\r\nDELE 1")):
            with pytest.raises(ProbeError) as info:
                await client.login(creds, allow_plaintext=True)
            assert info.value.reason == "config"
            assert "DELE" not in str(info.value)
    assert [line.split()[0] for line in box.received] == ["CAPA", "AUTH", "CAPA", "USER"]
    assert box.received[-1] == f"USER {USER}"


async def test_invalid_message_number_is_a_bug_not_a_server_fault(serve: Serve) -> None:
    port = await serve(FakeMailbox())
    async with await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5) as client:
        for call in (client.retr(0), client.dele(-1), client.top(1, -1)):
            with pytest.raises(ProbeError) as info:
                await call
            assert info.value.reason == "internal"


async def test_debug_off_keeps_no_transcript(serve: Serve) -> None:
    port = await serve(FakeMailbox())
    rec = Recorder()
    async with await POP3Client.connect(endpoint(port, "none"), rec, timeout=5) as client:
        await client.login(Credentials(USER, PASSWORD), allow_plaintext=True)
        await client.noop()
    assert rec.transcript is None
    assert rec.commands == 3


# --- OAuth (the real Dovecot runs the happy path: tests/test_oauth_e2e.py) ----------------------------------


@dataclass
class _StaticToken:
    value: str
    invalidated: int = 0

    async def token(self) -> str:
        return self.value

    def invalidate(self) -> None:
        self.invalidated += 1


def _oauth_server(sasl: bytes, answers: list[bytes], received: list[bytes]) -> Handler:
    """Greets, offers ``SASL sasl``, answers each line after AUTH with the next of ``answers``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK hi\r\n")
        pending = list(answers)
        while line := await reader.readline():
            received.append(line)
            if line.startswith(b"CAPA"):
                writer.write(b"+OK\r\nSASL " + sasl + b"\r\n.\r\n")
            elif pending:
                writer.write(pending.pop(0))
            else:
                writer.write(b"-ERR out of script\r\n")
            await writer.drain()

    return handler


async def test_oauth_without_an_offered_mechanism_is_receive_auth(serve: Serve) -> None:
    received: list[bytes] = []
    port = await serve(_oauth_server(b"PLAIN LOGIN", [], received))
    creds = Credentials(USER, token_source=_StaticToken("tok-123"))
    async with await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5) as client:
        with pytest.raises(ProbeError) as info:
            await client.login(creds, allow_plaintext=True)
    assert info.value.reason == "receive_auth"
    assert "offers no XOAUTH2 or OAUTHBEARER (offered: LOGIN PLAIN)" in str(info.value)
    assert not any(line.startswith(b"AUTH") for line in received)  # nothing sent


async def test_oauth_error_challenge_is_answered_and_decoded(serve: Serve) -> None:
    received: list[bytes] = []
    err = base64.b64encode(b'{"status":"invalid_token"}')
    port = await serve(_oauth_server(b"OAUTHBEARER", [b"+ " + err + b"\r\n", b"-ERR denied\r\n"], received))
    source = _StaticToken("tok-123")
    rec = recorder()
    async with await POP3Client.connect(endpoint(port, "none"), rec, timeout=5) as client:
        with pytest.raises(ProbeError) as info:
            await client.login(Credentials(USER, token_source=source), allow_plaintext=True)
    assert info.value.reason == "receive_auth"
    assert str(info.value).endswith("POP3 AUTH OAUTHBEARER refused: -ERR denied [status=invalid_token]")
    assert received[-2].startswith(b"AUTH OAUTHBEARER ") and received[-1] == b"\r\n"
    assert source.invalidated == 1
    assert rec.transcript is not None and "tok-123" not in "\n".join(rec.transcript)


async def test_oauth_endless_challenges_are_cancelled(serve: Serve) -> None:
    received: list[bytes] = []
    port = await serve(_oauth_server(b"XOAUTH2", [b"+ \r\n"] * 4, received))
    creds = Credentials(USER, token_source=_StaticToken("t" * 400))  # too long to go inline
    async with await POP3Client.connect(endpoint(port, "none"), recorder(), timeout=5) as client:
        with pytest.raises(ProbeError) as info:
            await client.login(creds, allow_plaintext=True)
    assert info.value.reason == "receive_auth"
    assert "unexpected SASL challenge" in str(info.value)
    auth = [line for line in received if not line.startswith(b"CAPA")]
    assert auth[0] == b"AUTH XOAUTH2\r\n" and auth[-1] == b"*\r\n" and len(auth) == 4
