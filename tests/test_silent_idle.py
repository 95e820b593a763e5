"""IDLE that never pushes (Courier without FAM, Cyrus without idled): detection then rests on the poll
gaps. Each IDLE ends at its gap and a NOOP (and, once the mailbox changed, a SEARCH) follows, so the
canary is seen within about one gap of landing; the cost is measured in bench/detection.py
(``--silent-idle-only``), not asserted here."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from probes.clients.imap import IMAPSession, IMAPSettings
from probes.recorder import Recorder
from probes.roundtrip import DEFAULT_IDLE_MAX, PollSchedule, probe_roundtrip
from probes.roundtrip.imap import SILENT_AFTER
from tests.support.faultservers import (
    NO_FAULT,
    Mailboxes,
    Store,
    courier_imap_handler,
    fault_settings,
    serving,
    smtp_handler,
)
from tests.support.wait import eventually_async


class _Later(Store):
    """Delivers the accepted message once the test says so (an event, no fixed sleep)."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[bytes] = []

    def add(self, raw: bytes) -> int:
        self.pending.append(raw)
        return 0

    def land(self) -> None:
        for raw in self.pending:
            super().add(raw)
        self.pending.clear()


async def test_silent_idle_is_bounded_by_the_gap_and_followed_by_noop() -> None:
    three = asyncio.Event()
    boxes = Mailboxes(on_idle=lambda n: three.set() if n >= 3 else None)
    inbox = _Later()
    boxes.folders["INBOX"] = inbox
    rec = Recorder(transcript=[])
    async with serving(smtp_handler(inbox, NO_FAULT)) as sp, serving(courier_imap_handler(boxes)) as ip:
        base = fault_settings("silent", sp, ip)
        assert isinstance(base.receiver, IMAPSettings)
        # The shipped IMAP schedule (gaps up to 0.25 s, IDLE from 0.2 s), IDLE on.
        settings = replace(base, receiver=replace(base.receiver, use_idle=True), poll=PollSchedule())
        run = asyncio.ensure_future(probe_roundtrip(settings, rec))
        await asyncio.wait_for(three.wait(), 30)  # several silent IDLEs pass while nothing has landed
        assert not run.done()
        inbox.land()
        result = await asyncio.wait_for(run, 30)
    assert result.placement == "inbox"
    sent = [line.split(" ", 3)[-1] for line in rec.transcript or [] if line.startswith("C: imap")]
    # Every IDLE is ended by the client (DONE, at the gap: the server never pushes) and a NOOP follows.
    for i, cmd in enumerate(sent):
        if cmd.endswith("IDLE"):
            assert sent[i + 1] == "DONE" and sent[i + 2].endswith("NOOP"), sent[i : i + 3]


async def test_silent_idle_is_learnt_and_then_polled() -> None:
    """Issue 23: on a server that pushes, the wait IDLEs without polling, up to ``idle_max``. Here the
    server never pushes: the first wait finds the canary by the safety look after one whole IDLE (the
    client's DONE, a NOOP, the SEARCH), and the server is remembered as silent; the next run on it polls
    with NOOPs on the gap schedule and sends no IDLE at all."""
    first_idle = asyncio.Event()
    boxes = Mailboxes(on_idle=lambda n: first_idle.set())
    inbox = _Later()
    boxes.folders["INBOX"] = inbox
    async with serving(smtp_handler(inbox, NO_FAULT)) as sp, serving(courier_imap_handler(boxes)) as ip:
        base = fault_settings("silent", sp, ip)
        assert isinstance(base.receiver, IMAPSettings)
        receiver = replace(base.receiver, use_idle=True)
        # One IDLE of 1 s (the shortest that teaches: SILENT_AFTER), not the default 5 s.
        settings = replace(base, receiver=receiver, poll=PollSchedule(), idle_max=1.0)
        server = ("127.0.0.1", ip)
        assert not settings.idle_push.silent(server)
        rec = Recorder(transcript=[])
        run = asyncio.ensure_future(probe_roundtrip(settings, rec))
        await asyncio.wait_for(first_idle.wait(), 30)  # the run is in its (silent) IDLE
        inbox.land()
        await asyncio.wait_for(run, 30)
        sent = [line.split(" ", 3)[-1] for line in rec.transcript or [] if line.startswith("C: imap")]
        idle = sent.index("IDLE")
        # One IDLE, ended by the client; Courier announces nothing after DONE, so a NOOP, then the SEARCH.
        assert sent[idle : idle + 4] == ["IDLE", "DONE", "NOOP", "UID SEARCH"], sent
        assert settings.idle_push.silent(server)

        idles_before = boxes.idles
        rec = Recorder(transcript=[])
        run = asyncio.ensure_future(probe_roundtrip(settings, rec))

        async def noops() -> int:  # looks made while nothing has landed: past the gaps where IDLE began
            return sum(1 for line in rec.transcript or [] if line.endswith(" NOOP"))

        await eventually_async(noops, until=lambda n: n >= 10, timeout=30, interval=0.01, message="ten looks")
        inbox.land()
        await asyncio.wait_for(run, 30)
        assert boxes.idles == idles_before  # polled: no IDLE on a server known to keep its news


async def test_an_unknown_server_is_idled_at_most_silent_after(monkeypatch: pytest.MonkeyPatch) -> None:
    """Until a server has been seen to push, no IDLE is longer than SILENT_AFTER (1 s), whatever
    ``idle_max``: a server that accepts IDLE and never pushes (Cyrus without idled) would otherwise hold
    a delivered canary for ``idle_max`` (5 s) and fail a run with a shorter timeout (found by the
    OpenSMTPD -> Cyrus late-canary test, timeout 2 s)."""
    asked: list[float] = []
    original = IMAPSession.idle

    async def recording(self: IMAPSession, seconds: float, *args: Any, **kw: Any) -> bool:
        asked.append(seconds)
        return await original(self, seconds, *args, **kw)

    monkeypatch.setattr(IMAPSession, "idle", recording)
    two = asyncio.Event()
    boxes = Mailboxes(on_idle=lambda n: two.set() if n >= 2 else None)
    inbox = _Later()
    boxes.folders["INBOX"] = inbox
    async with serving(smtp_handler(inbox, NO_FAULT)) as sp, serving(courier_imap_handler(boxes)) as ip:
        base = fault_settings("silent", sp, ip)
        assert isinstance(base.receiver, IMAPSettings)
        receiver = replace(base.receiver, use_idle=True)
        settings = replace(base, receiver=receiver, poll=PollSchedule(), idle_max=DEFAULT_IDLE_MAX)
        assert settings.idle_max > SILENT_AFTER
        run = asyncio.ensure_future(probe_roundtrip(settings, Recorder()))
        await asyncio.wait_for(two.wait(), 30)
        inbox.land()
        result = await asyncio.wait_for(run, 30)
    assert result.placement == "inbox"
    assert asked and max(asked) <= SILENT_AFTER, asked
