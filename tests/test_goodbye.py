"""Issue 23: SMTP QUIT is sent and the connection closed without waiting for the 221 (the message is
accepted by then; nothing depends on the reply), and the transcript shows no reply that was not read.
(IMAP LOGOUT: tests/test_imap_client.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import warnings

from probes.auth.credentials import Credentials
from probes.clients.smtp import SMTPSettings, send_message
from probes.recorder import Recorder
from probes.wire.net import Endpoint, TLSSettings
from tests.mailstack import MailStack
from tests.support.faultservers import serving


async def test_quit_is_sent_and_its_reply_not_awaited() -> None:
    quit_seen, eof = asyncio.Event(), asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake ESMTP\r\n")
        with contextlib.suppress(ConnectionError):
            while raw := await reader.readline():
                verb = raw.split(b" ", 1)[0].strip().upper()
                if verb == b"EHLO":
                    writer.write(b"250-fake\r\n250 8BITMIME\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 go on\r\n")
                    while await reader.readline() not in (b".\r\n", b""):
                        pass
                    writer.write(b"250 queued\r\n")
                elif verb == b"QUIT":
                    quit_seen.set()
                    if await reader.read() == b"":  # would answer only once the client is gone: never
                        eof.set()
                    break
                else:
                    writer.write(b"250 ok\r\n")
        writer.close()

    async with serving(handler) as port:
        rec = Recorder(transcript=[])
        settings = SMTPSettings(Endpoint("127.0.0.1", port, "none"), timeout=60.0)
        message = b"Subject: t\r\n\r\nbody\r\n"
        sent = await asyncio.wait_for(send_message(settings, "a@x.test", ["b@x.test"], message, rec), 30)
        await asyncio.wait_for(eof.wait(), 30)
    assert quit_seen.is_set() and "queued" in sent.reply
    assert rec.transcript is not None and rec.transcript[-1] == "C: smtp QUIT"


def test_no_transport_outlives_a_submission_over_tls(mailstack: MailStack) -> None:
    """The real Postfix, STARTTLS + AUTH: QUIT unanswered, the session's close (TLS close_notify) is
    still waited for, bounded, so when the loop ends right after the run nothing is left open (before
    the wait, the TLS shutdown was still in flight and the transport was reported unclosed)."""
    user = mailstack.test_addresses[0]
    tls = TLSSettings(ca_file=str(mailstack.ca_file), server_name=mailstack.server_name)
    settings = SMTPSettings(
        Endpoint(mailstack.host, mailstack.ports["submission"], "starttls", tls),
        Credentials(user, mailstack.password(user)),
    )
    message = b"Subject: goodbye test\r\n\r\nbody\r\n"
    # What earlier tests in this worker left for the collector (a subprocess pipe never closed) is
    # collected first: its ResourceWarning is not this test's (it failed one busy run that way).
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(5):
            rec = Recorder(transcript=[])
            asyncio.run(send_message(settings, user, [user], message, rec))  # the loop closes at once
            assert rec.transcript is not None and rec.transcript[-1] == "C: smtp QUIT"
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
