"""Arrival detection against the real Cyrus IMAP 3.6 (issue 23). Cyrus here runs without idled, so its
IDLE never pushes: the wait must still find a canary that lands during an IDLE, by the safety look at
the IDLE's end, remember the server as silent, and poll it (no IDLE) from then on. Counted in commands,
never timed (bench/detection.py measures the delays)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest

from probes.auth.credentials import Credentials
from probes.canary import Token
from probes.clients.imap import IMAPSettings
from probes.clients.smtp import SMTPSettings
from probes.recorder import Recorder
from probes.roundtrip import IdlePush, PollSchedule, RoundTripResult, RoundTripSettings, probe_roundtrip
from probes.roundtrip.imap import IMAPReceiver
from probes.wire.net import Endpoint, TLSSettings
from tests.interop.cyrus import CyrusServer
from tests.interop.exim import LATE_LOCAL, EximServer
from tests.interop.probeconfig import KEY
from tests.support.wait import eventually_async


def late_settings(
    cyrus: CyrusServer, exim: EximServer, memory: IdlePush, local: str = LATE_LOCAL
) -> RoundTripSettings:
    """Exim (587, STARTTLS + AUTH) -> Cyrus late@ (held in Exim's queue while ``hold_late``), IMAPS,
    the shipped schedule with IDLE, one IDLE of at most 1 s (the test's length, not the default 5 s)."""
    address = cyrus.address(local)
    creds = Credentials(address, cyrus.users[local])
    tls = TLSSettings(ca_file=str(cyrus.ca_file), server_name=cyrus.server_name)
    return RoundTripSettings(
        name="detect",
        smtp=SMTPSettings(Endpoint(exim.host, exim.ports["submission"], "starttls", tls), creds),
        receiver=IMAPSettings(Endpoint(cyrus.host, cyrus.ports["imaps"], "implicit", tls), creds),
        sender=address,
        recipient=address,
        key=KEY,
        idle_max=1.0,
        idle_push=memory,
    )


async def held_run(
    exim: EximServer, settings: RoundTripSettings, release_after: str, times: int = 1
) -> tuple[Recorder, RoundTripResult]:
    """A run whose canary Exim holds until the run has sent ``release_after`` (an IMAP command)
    ``times`` while waiting; then a queue run delivers it into Cyrus."""
    rec = Recorder(transcript=[])
    exim.hold_late = True
    try:
        run = asyncio.ensure_future(probe_roundtrip(settings, rec))

        async def waiting() -> bool:
            lines = rec.transcript or []
            smtp_quit = [i for i, ln in enumerate(lines) if ln.startswith("C: smtp") and "QUIT" in ln]
            waited = lines[smtp_quit[0] :] if smtp_quit else []
            return sum(ln.endswith(" " + release_after) for ln in waited) >= times

        await eventually_async(waiting, timeout=30, interval=0.01, message=f"the run's {release_after}")
        exim.hold_late = False
        await asyncio.to_thread(exim.deliver_queue)
        return rec, await asyncio.wait_for(run, 30)
    finally:
        exim.hold_late = False


def sent_while_waiting(rec: Recorder) -> list[str]:
    lines = rec.transcript or []
    start = next(i for i, ln in enumerate(lines) if ln.startswith("C: smtp") and "QUIT" in ln)
    sent = [ln.split(" ", 3)[-1] for ln in lines[start:] if ln.startswith("C: imap")]
    return sent[: sent.index("UID FETCH")]


async def test_silent_cyrus_idle_found_by_the_safety_look_then_polled(
    cyrus: CyrusServer, exim: EximServer
) -> None:
    cyrus.clear(LATE_LOCAL)
    memory = IdlePush()
    settings = late_settings(cyrus, exim, memory)
    server = (settings.receiver.endpoint.host, settings.receiver.endpoint.port)
    rec, result = await held_run(exim, settings, "IDLE")
    assert result.placement == "inbox"
    sent = sent_while_waiting(rec)
    # The canary landed during the IDLE; Cyrus pushed nothing. The IDLE ran to its end (DONE from the
    # client), Cyrus reported the message then (or at the NOOP), and only the SEARCH found it.
    assert sent[sent.index("IDLE") :][:2] == ["IDLE", "DONE"], sent
    assert sent[-1] == "UID SEARCH", sent
    assert memory.silent(server) and not memory.pushes(server)
    assert cyrus.count(LATE_LOCAL) == 0

    # Known silent: the next wait polls, no IDLE, also past the gaps where IDLE would begin (0.2 s:
    # the seventh look; released after the tenth).
    rec, result = await held_run(exim, replace(settings), "NOOP", times=10)
    assert result.placement == "inbox"
    sent = sent_while_waiting(rec)
    assert "IDLE" not in sent, sent
    assert sent[-1] == "UID SEARCH" and sent[-2] == "NOOP", sent
    assert cyrus.count(LATE_LOCAL) == 0


async def test_first_look_on_cyrus_comes_right_after_data(
    cyrus: CyrusServer, exim: EximServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A canary already in the Cyrus INBOX when the wait begins is found by the first look (NOOP, one
    SEARCH) with no gap waited: the schedule's first gap here is 30 s, more than the test allows."""
    local = "frank"
    cyrus.clear(local)
    original = IMAPReceiver.wait

    async def after_landing(self: IMAPReceiver, token: Token, since: float) -> float:
        assert await asyncio.to_thread(cyrus.wait_for, local, 1, timeout=20) == 1  # delivered by LMTP
        return await original(self, token, since)

    monkeypatch.setattr(IMAPReceiver, "wait", after_landing)
    settings = replace(late_settings(cyrus, exim, IdlePush(), local), poll=PollSchedule(30.0, 1.0, 30.0))
    rec = Recorder(transcript=[])
    result = await asyncio.wait_for(probe_roundtrip(settings, rec), 25)
    assert result.placement == "inbox"
    assert rec.facts.wait_commands == 2
    assert sent_while_waiting(rec) == ["NOOP", "UID SEARCH"]
    assert cyrus.count(local) == 0
