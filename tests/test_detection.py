"""Arrival detection against the real Postfix + Dovecot (issue 23): the first look comes right after the
server accepted DATA, IDLE on a server that pushes is waited without polling, and the in-flight command
budget (``MAX_WAIT_RATE``) holds even for a schedule that asks for more. Counted in commands (the
recorder, the transcript), never timed: speed is measured in bench/detection.py."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from probes.auth.credentials import Credentials
from probes.canary import Token
from probes.clients.imap import IMAPSettings
from probes.clients.smtp import SMTPSettings
from probes.recorder import Recorder
from probes.roundtrip import MAX_WAIT_RATE, IdlePush, PollSchedule, RoundTripSettings, probe_roundtrip
from probes.roundtrip.imap import IMAPReceiver
from probes.wire.net import Endpoint, TLSSettings
from tests.mailstack import MailStack
from tests.support.heartbeats import imap
from tests.support.wait import eventually_async

KEY = b"detection-test-key-0123456789abc"


def settings(stack: MailStack, address: str, *, idle: bool = True, **extra: object) -> RoundTripSettings:
    tls = TLSSettings(ca_file=str(stack.ca_file), server_name=stack.server_name)
    creds = Credentials(address, stack.password(address))
    base = RoundTripSettings(
        name="detect",
        smtp=SMTPSettings(Endpoint(stack.host, stack.ports["submission"], "starttls", tls), creds),
        receiver=IMAPSettings(
            Endpoint(stack.host, stack.ports["imaps"], "implicit", tls), creds, use_idle=idle
        ),
        sender=address,
        recipient=address,
        key=KEY,
        idle_push=IdlePush(),  # nothing learnt from other tests' runs
    )
    return replace(base, **extra)  # type: ignore[arg-type]


def wait_commands(rec: Recorder) -> list[str]:
    """The IMAP commands (``NOOP``, ``IDLE``, ``DONE``, ``UID SEARCH``) the run sent from the end of the
    SMTP dialogue to the FETCH of the canary."""
    lines = rec.transcript or []
    start = next(i for i, line in enumerate(lines) if line.startswith("C: smtp") and "QUIT" in line)
    sent = [line.split(" ", 3)[-1] for line in lines[start:] if line.startswith("C: imap")]
    found = next(i for i, cmd in enumerate(sent) if "UID FETCH" in cmd)
    return sent[:found]


def landed(maildir: Path) -> bool:
    return any(any((maildir / sub).iterdir()) for sub in ("new", "cur") if (maildir / sub).is_dir())


async def test_first_look_comes_right_after_data(
    mailstack: MailStack, mailbox: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A canary already in the mailbox when the wait begins is found by the first look, NOOP and one
    SEARCH, with no gap waited: the schedule's first gap here is 30 s, more than the test allows."""
    original = IMAPReceiver.wait
    maildir = mailstack.maildir(mailbox)

    async def after_landing(self: IMAPReceiver, token: Token, since: float) -> float:
        async def check() -> bool:  # the event awaited: the file in the Maildir (a local delivery)
            return landed(maildir)

        await eventually_async(check, timeout=20, interval=0.002, message="the canary in the Maildir")
        return await original(self, token, since)

    monkeypatch.setattr(IMAPReceiver, "wait", after_landing)
    rec = Recorder(transcript=[])
    st = settings(mailstack, mailbox, idle=False, poll=PollSchedule(30.0, 1.0, 30.0))
    result = await asyncio.wait_for(probe_roundtrip(st, rec), 25)
    assert result.placement == "inbox"
    assert rec.facts.wait_commands == 2
    assert wait_commands(rec) == ["NOOP", "UID SEARCH"]


async def test_idle_waits_for_the_push_without_polling(mailstack: MailStack, slow_mailbox: str) -> None:
    """Dovecot pushes (about 0.5 s after delivery). Not yet known to push, a run's IDLEs last at most
    SILENT_AFTER (a server that never pushes must not hold a canary for idle_max); the push ends one and
    is remembered. The next run IDLEs until the push, with no NOOP in between (before issue 23: a NOOP
    every 250 ms).

    On a loaded machine the push may come later than SILENT_AFTER into an IDLE (a NOOP then finds the
    canary and nothing is learnt), so the first kind of run is repeated until one is ended by the push;
    every run must find its canary. The second run's IDLE may end by its own timer as well: what it must
    not do is poll."""
    mailstack.slow_delay = 1.5
    st = settings(mailstack, slow_mailbox)
    endpoint = st.receiver.endpoint
    seen: list[list[str]] = []
    for _ in range(5):
        first = Recorder(transcript=[])
        result = await asyncio.wait_for(probe_roundtrip(st, first), 30)
        assert result.placement == "inbox"
        sent = wait_commands(first)
        seen.append(sent)
        last = len(sent) - 1 - sent[::-1].index("IDLE")
        if sent[last:] == ["IDLE", "DONE", "UID SEARCH"]:  # the push ended the last IDLE
            break
    else:
        raise AssertionError(f"no push ended an IDLE in 5 runs: {seen}")
    assert st.idle_push.pushes((endpoint.host, endpoint.port))
    second = Recorder(transcript=[])
    result = await asyncio.wait_for(probe_roundtrip(st, second), 30)
    assert result.placement == "inbox"
    sent = wait_commands(second)
    # IDLE until the push, DONE, then the SEARCH that finds it: no NOOP (the push ended the IDLE).
    waited = sent[sent.index("IDLE") :]
    assert "NOOP" not in waited and waited[-3:] == ["IDLE", "DONE", "UID SEARCH"], sent


async def test_in_flight_commands_stay_within_the_budget(mailstack: MailStack, slow_mailbox: str) -> None:
    """A schedule asking for a NOOP every 10 ms (100/s) on a slow delivery: the budget holds it to
    MAX_WAIT_RATE per second averaged over the wait (plus the SEARCH that found the canary)."""
    mailstack.slow_delay = 1.5
    rec = Recorder()
    st = settings(mailstack, slow_mailbox, idle=False, poll=PollSchedule(0.005, 2.0, 0.01))
    result = await asyncio.wait_for(probe_roundtrip(st, rec), 30)
    assert result.delivery_seconds > 1.0  # the slow path: a wait long enough for a rate
    commands = rec.facts.wait_commands
    assert commands is not None
    assert commands <= MAX_WAIT_RATE * result.delivery_seconds + 1, (commands, result.delivery_seconds)


async def test_a_foreign_push_during_idle_is_searched_not_taken_for_the_canary(
    mailstack: MailStack, slow_mailbox: str
) -> None:
    """A user's message delivered while the run waits in IDLE: Dovecot pushes its EXISTS, the run
    searches for the token, finds nothing, and goes back to IDLE; the canary is found later by its own
    push. The foreign message is left as it was."""
    mailstack.slow_delay = 2.5
    rec = Recorder(transcript=[])
    st = settings(mailstack, slow_mailbox)
    run = asyncio.ensure_future(probe_roundtrip(st, rec))

    async def idling() -> bool:
        return any(line == "C: imap DONE" or line.endswith(" IDLE") for line in rec.transcript or [])

    await eventually_async(idling, timeout=20, interval=0.01, message="the run in IDLE")
    foreign = b"From: user@example.test\r\nSubject: not ours\r\n\r\nhello\r\n"
    await asyncio.to_thread(append, mailstack, slow_mailbox, foreign)
    result = await asyncio.wait_for(run, 30)
    assert result.placement == "inbox"
    sent = wait_commands(rec)
    # Two pushes, two searches: the foreign message's (nothing found), then the canary's.
    assert sent.count("UID SEARCH") == 2 and sent.count("IDLE") >= 2, sent
    assert sent[sent.index("IDLE") :][:3] == ["IDLE", "DONE", "UID SEARCH"], sent
    assert sent[-3:] == ["IDLE", "DONE", "UID SEARCH"], sent
    stored = [p.read_bytes() for p in mailstack.messages(slow_mailbox)]
    assert stored == [foreign.replace(b"\r\n", b"\n")]  # Dovecot keeps a Maildir file with LF line ends


def append(stack: MailStack, address: str, raw: bytes) -> None:
    """APPEND ``raw`` to the INBOX as the user (another client of the mailbox)."""
    conn = imap(stack, address)
    try:
        typ, _ = conn.append("INBOX", None, None, raw)
        assert typ == "OK"
    finally:
        conn.logout()
