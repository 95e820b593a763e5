"""In-process SMTP, IMAP and POP3 servers on loopback that misbehave on cue, for faults no real server shows.

One shared :class:`Store` lets the fake SMTP server hand the canary to the fake IMAP/POP3 server, so a whole
``probe_roundtrip`` runs against them. A :class:`Fault` names the step (a command verb, ``greeting`` or
``data-end``) and what goes wrong there; every other step behaves like a plain, correct server (which also
sprinkles other sessions' untagged ``FETCH (FLAGS …)`` into IMAP replies, as a shared mailbox does).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from probes.auth.credentials import Credentials
from probes.clients.imap import IMAPSettings
from probes.clients.smtp import SMTPSettings
from probes.roundtrip import IdlePush, PollSchedule, POP3Settings, RoundTripSettings
from probes.wire.net import Endpoint, TLSMode, TLSSettings
from tests.mailstack._net import claim_ports

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

ACTIONS = ("close", "reset", "silence", "garbage", "overlong", "err", "drip", "huge_literal", "bye", "vanish")


@dataclass(frozen=True)
class Fault:
    step: str  # "greeting", a command verb (upper case), "data-end", or "" for none
    action: str  # one of ACTIONS
    target: int | None = None  # POP3: only for this message number


@dataclass
class Store:
    """Messages by UID; foreign ones may be added by a test. ``deleted`` collects expunged/DELEd UIDs."""

    messages: dict[int, bytes] = field(default_factory=dict)
    deleted: set[int] = field(default_factory=set)
    next_uid: int = 1

    def add(self, raw: bytes) -> int:
        uid = self.next_uid
        self.next_uid += 1
        self.messages[uid] = raw
        return uid


NO_FAULT = Fault("", "")


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _misbehave(writer: asyncio.StreamWriter, action: str, good: bytes, garbage: bytes) -> bool:
    """Do ``action`` instead of sending ``good``; True if the session is over."""
    if action == "close":
        writer.close()
        return True
    if action == "reset":
        _reset(writer)
        return True
    if action == "silence":
        await asyncio.sleep(3600)
        return True
    if action == "garbage":
        writer.write(garbage)
        await writer.drain()
        await asyncio.sleep(3600)
        return True
    if action == "overlong":  # an endless line, no CRLF ever
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        return True
    if action == "drip":  # the right reply, a byte every 0.3 s: slower than any step allows
        with contextlib.suppress(OSError, ConnectionError):
            for b in good:
                writer.write(bytes([b]))
                await writer.drain()
                await asyncio.sleep(0.3)
        await asyncio.sleep(3600)
        return True
    return False


# --- SMTP ------------------------------------------------------------------------------------------------


def smtp_handler(store: Store, fault: Fault) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def reply(step: str, good: bytes, err: bytes) -> bool:
            if fault.step == step:
                if fault.action == "err":
                    writer.write(err)
                    await writer.drain()
                    return False
                if await _misbehave(writer, fault.action, good, b"HELLO THERE\r\n"):
                    return True
            writer.write(good)
            await writer.drain()
            return False

        try:
            if await reply("greeting", b"220 fake ESMTP\r\n", b"554 go away\r\n"):
                return
            while raw := await reader.readline():
                verb = raw.split(b" ", 1)[0].strip().upper().decode()
                if verb in ("EHLO", "HELO"):
                    if await reply(verb, b"250-fake\r\n250 8BITMIME\r\n", b"550 no\r\n"):
                        return
                elif verb in ("MAIL", "RCPT"):
                    if await reply(verb, b"250 ok\r\n", b"550 rejected\r\n"):
                        return
                elif verb == "DATA":
                    if await reply("DATA", b"354 go on\r\n", b"554 no data\r\n"):
                        return
                    if fault.step == "DATA" and fault.action == "err":
                        continue
                    lines = []
                    while (line := await reader.readline()) not in (b".\r\n", b""):
                        lines.append(line[1:] if line.startswith(b"..") else line)
                    store.add(b"".join(lines))
                    if await reply("data-end", b"250 queued\r\n", b"554 rejected after DATA\r\n"):
                        return
                elif verb == "QUIT":
                    writer.write(b"221 bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(b"502 unknown\r\n")
                    await writer.drain()
        except (ConnectionError, OSError):
            return

    return handle


# --- IMAP ------------------------------------------------------------------------------------------------

_NOISE = b"* 1 FETCH (FLAGS (\\Seen))\r\n"  # another session changed a flag: normal on a shared mailbox


def imap_handler(store: Store, fault: Fault, quota: bytes | None = None) -> Handler:
    """``quota``: offer QUOTA after login and answer GETQUOTAROOT with these untagged lines."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        selected = False

        async def reply(step: str, tag: bytes, body: bytes, ok: bytes) -> bool:
            good = body + tag + b" " + ok + b"\r\n"
            if fault.step == step:
                if fault.action == "err":
                    writer.write(tag + b" NO [SERVERBUG] failed\r\n")
                    await writer.drain()
                    return False
                if fault.action == "bye":
                    writer.write(b"* BYE shutting down\r\n")
                    await writer.drain()
                    writer.close()
                    return True
                if fault.action == "huge_literal":
                    with contextlib.suppress(OSError, ConnectionError):
                        writer.write(b"* 1 FETCH (UID 1 BODY[] {999999999}\r\n")
                        while True:
                            writer.write(b"y" * 65536)
                            await writer.drain()
                    return True
                if await _misbehave(writer, fault.action, good, b"HTTP/1.1 400 Bad Request\r\n"):
                    return True
            writer.write((_NOISE if selected else b"") + good)
            await writer.drain()
            return False

        try:
            caps = b"[CAPABILITY IMAP4rev1 IDLE UIDPLUS LITERAL+]"
            if fault.step == "greeting" and fault.action == "huge_literal":
                writer.write(b"* OK {999999999}\r\n")
                with contextlib.suppress(OSError, ConnectionError):
                    while True:
                        writer.write(b"y" * 65536)
                        await writer.drain()
                return
            if fault.step == "greeting" and fault.action == "err":
                fault_ = Fault("greeting", "garbage")
                await _misbehave(writer, fault_.action, b"", b"* NO not today\r\n")
                return
            if fault.step == "greeting" and fault.action == "bye":
                writer.write(b"* BYE too busy\r\n")
                await writer.drain()
                writer.close()
                return
            if fault.step == "greeting":
                if await _misbehave(
                    writer, fault.action, b"* OK " + caps + b" ready\r\n", b"SSH-2.0-OpenSSH\r\n"
                ):
                    return
            else:
                writer.write(b"* OK " + caps + b" ready\r\n")
                await writer.drain()
            while raw := await reader.readline():
                line = raw.rstrip(b"\r\n")
                tag, _, rest = line.partition(b" ")
                verb = rest.split(b" ", 1)[0].upper()
                if verb == b"UID":
                    verb = b"UID " + rest.split(b" ")[1].upper()
                step = verb.decode()
                if verb == b"LOGIN":
                    m = re.search(rb"\{(\d+)\+?\}$", rest)
                    if m is not None:  # a synchronising literal for the password
                        if not rest.endswith(b"+}"):
                            writer.write(b"+ go ahead\r\n")
                            await writer.drain()
                        await reader.readexactly(int(m.group(1)))
                        await reader.readline()
                    caps_after = b"IMAP4rev1 IDLE UIDPLUS" + (b" QUOTA" if quota is not None else b"")
                    if await reply(step, tag, b"", b"OK [CAPABILITY " + caps_after + b"] logged in"):
                        return
                elif verb == b"GETQUOTAROOT" and quota is not None:
                    if await reply(step, tag, quota, b"OK Getquotaroot completed"):
                        return
                elif verb == b"CAPABILITY":
                    if await reply(step, tag, b"* CAPABILITY IMAP4rev1 IDLE UIDPLUS\r\n", b"OK done"):
                        return
                elif verb == b"SELECT":
                    body = b"* %d EXISTS\r\n* OK [UIDVALIDITY 1] ok\r\n" % len(store.messages)
                    if await reply(step, tag, body, b"OK [READ-WRITE] selected"):
                        return
                    selected = True
                elif verb == b"NOOP":
                    body = b"* %d EXISTS\r\n" % len(store.messages)
                    if await reply(step, tag, body, b"OK done"):
                        return
                elif verb == b"IDLE":
                    writer.write(b"+ idling\r\n")
                    await writer.drain()
                    await reader.readline()  # DONE
                    if await reply(step, tag, b"", b"OK idle done"):
                        return
                elif verb == b"UID SEARCH":
                    m = re.search(rb'"([^"]*)"$', rest)
                    needle = m.group(1) if m else b"\x00"
                    found = [u for u, raw_ in store.messages.items() if needle in raw_.split(b"\r\n\r\n")[0]]
                    if b" KEYWORD " in rest or b" SEEN " in rest:
                        found = []  # flags are not kept: a view where a flag set elsewhere never shows
                    body = b"* SEARCH " + b" ".join(b"%d" % u for u in found) + b"\r\n"
                    if await reply(step, tag, body.replace(b"SEARCH \r\n", b"SEARCH\r\n"), b"OK done"):
                        return
                elif verb == b"UID FETCH":
                    uids = [int(u) for u in rest.split(b" ")[2].split(b",")]
                    header_only = b"HEADER.FIELDS" in rest
                    body = b""
                    for seq, uid in enumerate(sorted(store.messages), 1):
                        if uid not in uids:
                            continue
                        raw_ = store.messages[uid]
                        if header_only:
                            data = (
                                b"".join(
                                    ln + b"\r\n"
                                    for ln in raw_.split(b"\r\n")
                                    if ln.lower().startswith(b"x-mailcanary")
                                )
                                + b"\r\n"
                            )
                            section = b"BODY[HEADER.FIELDS (X-MAILCANARY-TOKEN)]"
                        else:
                            data, section = raw_, b"BODY[]"
                        body += (
                            b"* %d FETCH (UID %d RFC822.SIZE %d %s {%d}\r\n"
                            % (seq, uid, len(raw_), section, len(data))
                            + data
                            + b")\r\n"
                            + _NOISE
                        )
                    if await reply(step, tag, body, b"OK fetched"):
                        return
                elif verb == b"UID STORE":
                    if await reply(step, tag, b"", b"OK stored"):
                        return
                elif verb == b"UID EXPUNGE":
                    for u in rest.split(b" ")[2].split(b","):
                        store.deleted.add(int(u))
                        store.messages.pop(int(u), None)
                    if await reply(step, tag, b"", b"OK expunged"):
                        return
                elif verb == b"LOGOUT":
                    writer.write(b"* BYE bye\r\n" + tag + b" OK bye\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(tag + b" BAD unknown\r\n")
                    await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            return

    return handle


# --- Courier-IMAP as it answers ----------------------------------------------------------------------------

# Courier-IMAP 5.0 (Debian), as seen on the wire: no SPECIAL-USE, no LIST-EXTENDED, every folder under the
# personal namespace "INBOX." with "." as delimiter, a root without limits answered with no resource list
# (outside RFC 9208), and IDLE that never pushes (built without FAM: it only rescans on a command).
COURIER_CAPS = b"IMAP4rev1 UIDPLUS CHILDREN NAMESPACE THREAD=ORDEREDSUBJECT THREAD=REFERENCES SORT QUOTA IDLE"
COURIER_NAMESPACE = b'* NAMESPACE (("INBOX." ".")) NIL (("#shared." ".")("shared." "."))\r\n'
COURIER_QUOTA = b'* QUOTAROOT "INBOX" "ROOT"\r\n* QUOTA "ROOT"\r\n'
COURIER_FOLDERS = ("INBOX", "INBOX.Drafts", "INBOX.Sent", "INBOX.Trash", "INBOX.Junk")


@dataclass
class Mailboxes:
    """Folders by wire name, each a :class:`Store`; ``commands`` counts every command received (all
    sessions), ``idles`` the IDLE commands, for benchmarks and tests."""

    folders: dict[str, Store] = field(default_factory=lambda: {f: Store() for f in COURIER_FOLDERS})
    commands: int = 0
    idles: int = 0
    on_idle: Callable[[int], None] | None = None  # called with the IDLE count at each IDLE


def _fetch_body(store: Store, rest: bytes) -> bytes:
    uids = {int(u) for u in rest.split(b" ")[2].split(b",") if u.isdigit()}
    header_only = b"HEADER.FIELDS" in rest
    body = b""
    for seq, uid in enumerate(sorted(store.messages), 1):
        if uid not in uids:
            continue
        raw = store.messages[uid]
        if header_only:
            head = raw.split(b"\r\n\r\n")[0].split(b"\r\n")
            data = b"".join(ln + b"\r\n" for ln in head if ln.lower().startswith(b"x-mailcanary")) + b"\r\n"
            section = b"BODY[HEADER.FIELDS (X-MAILCANARY-TOKEN)]"
        else:
            data, section = raw, b"BODY[]"
        body += b"* %d FETCH (UID %d RFC822.SIZE %d %s {%d}\r\n" % (seq, uid, len(raw), section, len(data))
        body += data + b")\r\n"
    return body


def courier_imap_handler(boxes: Mailboxes, namespace: bytes = COURIER_NAMESPACE) -> Handler:
    """A multi-folder IMAP server that answers NAMESPACE, LIST, GETQUOTAROOT and IDLE as Courier does."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        selected: Store | None = None
        try:
            writer.write(b"* OK [CAPABILITY " + COURIER_CAPS + b"] Courier-IMAP ready.\r\n")
            await writer.drain()
            while raw := await reader.readline():
                boxes.commands += 1
                line = raw.rstrip(b"\r\n")
                tag, _, rest = line.partition(b" ")
                verb = rest.split(b" ", 1)[0].upper()
                if verb == b"UID":
                    verb = b"UID " + rest.split(b" ")[1].upper()
                out = b""
                ok = b"OK done"
                if verb == b"LOGIN":
                    ok = b"OK LOGIN Ok."
                elif verb == b"CAPABILITY":
                    out = b"* CAPABILITY " + COURIER_CAPS + b"\r\n"
                elif verb == b"NAMESPACE":
                    out = namespace
                elif verb == b"LIST":
                    for name in boxes.folders:
                        flags = b"\\HasChildren" if name == "INBOX" else b"\\HasNoChildren"
                        out += b'* LIST (%s) "." "%s"\r\n' % (flags, name.encode())
                elif verb == b"GETQUOTAROOT":
                    out = COURIER_QUOTA
                elif verb == b"SELECT":
                    m = re.match(rb'SELECT "?([^"]*)"?$', rest)
                    selected = boxes.folders.get(m.group(1).decode()) if m else None
                    if selected is None:
                        writer.write(tag + b" NO Mailbox does not exist\r\n")
                        await writer.drain()
                        continue
                    out = b"* %d EXISTS\r\n* OK [UIDVALIDITY 1] Ok\r\n* OK [UIDNEXT %d] Ok\r\n" % (
                        len(selected.messages),
                        selected.next_uid,
                    )
                    ok = b"OK [READ-WRITE] Ok"
                elif verb == b"NOOP" and selected is not None:
                    out = b"* %d EXISTS\r\n" % len(selected.messages)
                elif verb == b"IDLE":
                    boxes.idles += 1
                    if boxes.on_idle is not None:
                        boxes.on_idle(boxes.idles)
                    writer.write(b"+ entering idle mode\r\n")
                    await writer.drain()
                    await reader.readline()  # DONE; nothing is ever pushed meanwhile (no FAM)
                elif verb == b"UID SEARCH" and selected is not None:
                    m = re.search(rb'"([^"]*)"$', rest)
                    needle = m.group(1) if m else b"\x00"
                    store = selected
                    found = [u for u, r in store.messages.items() if needle in r.split(b"\r\n\r\n")[0]]
                    if b" KEYWORD " in rest or b" SEEN " in rest:
                        found = []
                    out = (b"* SEARCH " + b" ".join(b"%d" % u for u in found)).rstrip() + b"\r\n"
                elif verb == b"UID FETCH" and selected is not None:
                    out = _fetch_body(selected, rest)
                elif verb == b"UID STORE" and selected is not None:
                    pass
                elif verb == b"UID EXPUNGE" and selected is not None:
                    for u in rest.split(b" ")[2].split(b","):
                        selected.deleted.add(int(u))
                        selected.messages.pop(int(u), None)
                elif verb == b"LOGOUT":
                    writer.write(b"* BYE Courier-IMAP shutting down\r\n" + tag + b" OK LOGOUT done\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(tag + b" BAD Unknown command\r\n")
                    await writer.drain()
                    continue
                writer.write(out + tag + b" " + ok + b"\r\n")
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            return

    return handle


# --- POP3 ------------------------------------------------------------------------------------------------

CYRUS_LOGIN_DELAY = b"-ERR [LOGIN-DELAY] Logins must be at least 1 minute apart\r\n"  # Cyrus 3.6 pop3d


@dataclass
class Logins:
    """A POP3 fault server's view of logins: when each PASS came (``time.monotonic()``), how many it
    refused for LOGIN-DELAY. ``last_ok`` may be set beforehand: another client logged in then."""

    at: list[float] = field(default_factory=list)
    refused: int = 0
    last_ok: float | None = None


def pop3_handler(
    store: Store,
    fault: Fault,
    *,
    capa: bytes = b"",
    enforce_delay: float | None = None,
    logins: Logins | None = None,
) -> Handler:
    """``capa``: more CAPA lines (e.g. ``b"LOGIN-DELAY 60\\r\\n"``). ``enforce_delay``: refuse a PASS
    sooner than this after the last accepted one, as Cyrus does with ``popminpoll``. Action ``vanish``
    (TOP/RETR): another session deleted the message just before: ``-ERR``, and later sessions lack it."""
    seen = logins if logins is not None else Logins()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        snapshot = sorted(store.messages)  # message numbers are fixed for the session
        marked: set[int] = set()

        def applies(step: str, number: int | None = None) -> bool:
            return fault.step == step and (fault.target is None or fault.target == number)

        async def reply(step: str, good: bytes, number: int | None = None) -> bool:
            if applies(step, number):
                if fault.action == "vanish" and number is not None:
                    store.messages.pop(snapshot[number - 1], None)
                    writer.write(b"-ERR Message %d expunged.\r\n" % number)  # Dovecot's words
                    await writer.drain()
                    return False
                if fault.action == "err":
                    writer.write(
                        b"-ERR Message %d expunged\r\n" % (number or 0) if number else b"-ERR failed\r\n"
                    )
                    await writer.drain()
                    return False
                if fault.action == "overlong" and number is not None:  # a foreign header line over 64 KiB
                    head, _, _ = store.messages[snapshot[number - 1]].partition(b"\r\n")
                    long_line = b"X-Long: " + b"z" * 200_000 + b"\r\n"
                    writer.write(b"+OK\r\n" + head + b"\r\n" + long_line + b"\r\n.\r\n")
                    await writer.drain()
                    return False
                if await _misbehave(writer, fault.action, good, b"HTTP/1.1 200 OK\r\n"):
                    return True
            writer.write(good)
            await writer.drain()
            return False

        def framed(raw: bytes) -> bytes:
            lines = raw.split(b"\r\n")
            if lines and lines[-1] == b"":
                lines.pop()
            return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines) + b".\r\n"

        try:
            if await reply("greeting", b"+OK fake POP3 ready\r\n"):
                return
            while raw := await reader.readline():
                words = raw.rstrip(b"\r\n").split(b" ")
                verb = words[0].upper().decode()
                arg = int(words[1]) if len(words) > 1 and words[1].isdigit() else None
                live = [n for n in range(1, len(snapshot) + 1) if n not in marked]
                if verb == "CAPA":
                    stop = await reply(verb, b"+OK\r\nTOP\r\nUIDL\r\nUSER\r\n" + capa + b".\r\n")
                elif verb == "PASS" and not applies(verb):
                    now = time.monotonic()
                    seen.at.append(now)
                    last = seen.last_ok
                    if enforce_delay is not None and last is not None and now - last < enforce_delay:
                        seen.refused += 1
                        writer.write(CYRUS_LOGIN_DELAY)
                        await writer.drain()
                        continue
                    seen.last_ok = now
                    stop = await reply(verb, b"+OK logged in\r\n")
                elif verb in ("USER", "PASS", "NOOP"):
                    stop = await reply(verb, b"+OK\r\n")
                elif verb == "UIDL":
                    body = b"".join(b"%d uid-%d\r\n" % (n, snapshot[n - 1]) for n in live)
                    stop = await reply(verb, b"+OK\r\n" + body + b".\r\n")
                elif verb == "LIST":
                    body = b"".join(b"%d %d\r\n" % (n, len(store.messages[snapshot[n - 1]])) for n in live)
                    stop = await reply(verb, b"+OK\r\n" + body + b".\r\n")
                elif verb in ("TOP", "RETR") and arg is not None and arg in live:
                    raw_ = store.messages[snapshot[arg - 1]]
                    if verb == "TOP" and len(words) > 2 and words[2] == b"0":
                        raw_ = raw_.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
                    stop = await reply(verb, b"+OK\r\n" + framed(raw_), arg)
                elif verb == "DELE" and arg is not None:
                    stop = await reply(verb, b"+OK marked\r\n", arg)
                    if not (applies(verb, arg) and fault.action == "err"):
                        marked.add(arg)
                elif verb == "QUIT":
                    committing = bool(marked)
                    if committing and applies("QUIT"):
                        stop = await reply("QUIT", b"+OK bye\r\n")
                    else:
                        writer.write(b"+OK bye\r\n")
                        await writer.drain()
                        stop = True
                    if not (applies("QUIT") and fault.action == "err"):
                        for n in marked:
                            uid = snapshot[n - 1]
                            store.deleted.add(uid)
                            store.messages.pop(uid, None)
                    writer.close()
                    return
                else:
                    stop = await reply(verb, b"-ERR no such message\r\n")
                if stop:
                    return
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            return

    return handle


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    """Serve ``handler`` on 127.0.0.1 (a free port) until the block ends; yields the port."""
    tasks: set[asyncio.Task[None]] = set()

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await handler(reader, writer)
        except asyncio.CancelledError:
            pass
        finally:
            tasks.discard(task)
            writer.transport.abort()

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


def refused_port() -> int:
    """A loopback port with nothing listening, claimed so that nothing else starts listening there."""
    return claim_ports(1)[0]


# ---- round trips against these servers -------------------------------------------------------------

KEY = b"fault-matrix-key-0123456789abcdef"
STEP = 1.0  # per-step timeout of the runs under test
CREDS = Credentials("canary@example.test", "pw")


def fault_settings(
    name: str,
    smtp_port: int,
    recv_port: int,
    *,
    smtp_tls: TLSMode = "none",
    recv_tls: TLSMode = "none",
    receiver: str = "imap",
    idle: bool = False,
) -> RoundTripSettings:
    """A round trip from the SMTP server on ``smtp_port`` to the IMAP (or POP3) server on ``recv_port``,
    both on 127.0.0.1, with the short step timeout and quick polls of the fault tests."""
    tls = TLSSettings(insecure_skip_verify=True)
    smtp = SMTPSettings(Endpoint("127.0.0.1", smtp_port, smtp_tls, tls), timeout=STEP, helo_name="probe.test")
    recv_ep = Endpoint("127.0.0.1", recv_port, recv_tls, tls)
    recv: IMAPSettings | POP3Settings
    if receiver == "pop3":
        recv = POP3Settings(recv_ep, CREDS, allow_plaintext_auth=True, timeout=STEP)
    else:
        recv = IMAPSettings(recv_ep, CREDS, allow_plaintext_auth=True, timeout=STEP, use_idle=idle)
    return RoundTripSettings(
        name=name,
        smtp=smtp,
        receiver=recv,
        sender="canary@example.test",
        recipient="canary@example.test",
        key=KEY,
        poll=PollSchedule(initial=0.3, factor=1.0, maximum=0.3) if idle else PollSchedule(0.01, 1.5, 0.05),
        # With IDLE, every look is one (the first too: the server's IDLE faults must be met), of 0.3 s.
        idle_min_gap=0.0 if idle else 0.2,
        idle_max=0.3,
        idle_push=IdlePush(),  # what this server does with IDLE is never taken for another's
    )


# ---- the dialogue before TLS (issue 21: which failures are tls_connect, which tls_handshake) -------------

_PRETLS_GOOD: dict[str, dict[str, bytes]] = {
    "smtp": {
        "greeting": b"220 fake ESMTP\r\n",
        "EHLO": b"250-fake\r\n250-STARTTLS\r\n250 8BITMIME\r\n",
        "STARTTLS": b"220 go ahead\r\n",
        "QUIT": b"221 bye\r\n",
    },
    "imap": {
        "greeting": b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] fake ready\r\n",
        "CAPABILITY": b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n{tag} OK done\r\n",
        "STARTTLS": b"{tag} OK begin TLS\r\n",
        "LOGOUT": b"* BYE bye\r\n{tag} OK done\r\n",
    },
    "pop3": {
        "greeting": b"+OK fake POP3 ready\r\n",
        "CAPA": b"+OK\r\nSTLS\r\nUSER\r\n.\r\n",
        "STLS": b"+OK begin TLS\r\n",
        "QUIT": b"+OK bye\r\n",
    },
}


def pretls_handler(protocol: str, step: str, reply: bytes, *, close: bool = False) -> Handler:
    """A plain SMTP, IMAP or POP3 server that offers STARTTLS/STLS and answers ``reply`` at ``step``
    (``greeting``, or a command: EHLO, STARTTLS, CAPABILITY, CAPA, STLS; ``{tag}`` in an IMAP reply is
    the command's tag), then closes the connection if ``close`` (as a server does after SMTP ``421`` or
    IMAP ``* BYE``). It never speaks TLS: after a STARTTLS it accepted, it hangs up."""
    good = _PRETLS_GOOD[protocol]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def answer(verb: str, tag: bytes) -> bool:
            text = reply if verb == step else good.get(verb)
            if text is None:
                text = b"{tag} BAD unknown\r\n" if protocol == "imap" else b"-ERR unknown\r\n"
                if protocol == "smtp":
                    text = b"502 unknown\r\n"
            writer.write(text.replace(b"{tag}", tag))
            await writer.drain()
            return (
                (verb == step and close)
                or verb in ("QUIT", "LOGOUT")
                or (verb in ("STARTTLS", "STLS") and verb != step)
            )

        try:
            if await answer("greeting", b""):
                return
            while raw := await reader.readline():
                words = raw.strip().split(b" ")
                tag, verb = (words[0], words[1]) if protocol == "imap" and len(words) > 1 else (b"", words[0])
                if await answer(verb.upper().decode(errors="replace"), tag):
                    return
        except (ConnectionError, OSError):
            return

    return handle
