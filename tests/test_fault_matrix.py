"""The fault matrix: whole round trips against in-process servers that misbehave at one step each.

Each fault asserts the documented reason, that the run ended within its step timeout (not the run's
deadline), that nothing was logged with a traceback (no task exception left unretrieved), that RSS grew
by a bounded amount, and that a healthy round trip on the same event loop kept succeeding meanwhile.
Faults a real server can show (vanished messages, other sessions) are tested on the real stack too.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from probes import canary
from probes.clients.smtp import SMTPSettings
from probes.errors import ProbeError
from probes.recorder import Recorder
from probes.roundtrip import RoundTripSettings, probe_roundtrip
from probes.wire.net import TLSMode
from tests.support.faultservers import (
    NO_FAULT,
    STEP,
    Fault,
    Store,
    fault_settings,
    imap_handler,
    pop3_handler,
    refused_port,
    serving,
    smtp_handler,
)

DEADLINE = 8.0  # the run's own deadline (the runner's): a fault must end well before it
RSS_BOUND = 32 * 1024 * 1024


@dataclass(frozen=True)
class Case:
    id: str
    side: str  # "smtp", "imap" or "pop3": where the fault is
    fault: Fault
    reason: str
    receiver: str = "imap"
    tls: TLSMode = "none"  # of the faulty side's endpoint
    foreign: bytes | None = None  # a foreign message in the mailbox beforehand
    idle: bool = False  # IMAP: wait in IDLE first (the first gap is long enough)


def _smtp_cases() -> Iterator[Case]:
    for step in ("greeting", "EHLO", "MAIL", "RCPT", "DATA", "data-end"):
        lost = "smtp_connect" if step == "greeting" else "smtp_protocol"
        yield Case(f"smtp-{step}-close", "smtp", Fault(step, "close"), lost)
        yield Case(f"smtp-{step}-reset", "smtp", Fault(step, "reset"), lost)
        yield Case(f"smtp-{step}-silence", "smtp", Fault(step, "silence"), "timeout")
        yield Case(f"smtp-{step}-garbage", "smtp", Fault(step, "garbage"), "smtp_protocol")
        yield Case(f"smtp-{step}-overlong", "smtp", Fault(step, "overlong"), "smtp_protocol")
        yield Case(f"smtp-{step}-err", "smtp", Fault(step, "err"), "smtp_rejected")
    yield Case("smtp-greeting-drip", "smtp", Fault("greeting", "drip"), "timeout")
    yield Case("smtp-refused", "smtp", Fault("refused", "refused"), "smtp_connect")
    yield Case("smtp-tls-stall", "smtp", Fault("greeting", "silence"), "timeout", tls="implicit")


def _imap_cases() -> Iterator[Case]:
    g = "greeting"
    yield Case("imap-refused", "imap", Fault("refused", "refused"), "receive_connect")
    yield Case("imap-tls-stall", "imap", Fault(g, "silence"), "timeout", tls="implicit")
    yield Case("imap-greeting-close", "imap", Fault(g, "close"), "receive_connect")
    yield Case("imap-greeting-reset", "imap", Fault(g, "reset"), "receive_connect")
    yield Case("imap-greeting-silence", "imap", Fault(g, "silence"), "timeout")
    yield Case("imap-greeting-garbage", "imap", Fault(g, "garbage"), "receive_protocol")
    yield Case("imap-greeting-no", "imap", Fault(g, "err"), "receive_protocol")
    yield Case("imap-greeting-bye", "imap", Fault(g, "bye"), "receive_connect")
    yield Case("imap-greeting-overlong", "imap", Fault(g, "overlong"), "receive_protocol")
    yield Case("imap-greeting-huge-literal", "imap", Fault(g, "huge_literal"), "receive_protocol")
    yield Case("imap-greeting-drip", "imap", Fault(g, "drip"), "timeout")
    err = {"LOGIN": "receive_auth", "UID STORE": "cleanup", "UID EXPUNGE": "cleanup"}
    for step in ("LOGIN", "SELECT", "UID SEARCH", "UID FETCH", "NOOP", "UID STORE", "UID EXPUNGE"):
        s = step.replace(" ", "_").lower()
        yield Case(f"imap-{s}-close", "imap", Fault(step, "close"), "receive_protocol")
        yield Case(f"imap-{s}-reset", "imap", Fault(step, "reset"), "receive_protocol")
        yield Case(f"imap-{s}-silence", "imap", Fault(step, "silence"), "timeout")
        yield Case(f"imap-{s}-garbage", "imap", Fault(step, "garbage"), "receive_protocol")
        yield Case(f"imap-{s}-overlong", "imap", Fault(step, "overlong"), "receive_protocol")
        yield Case(f"imap-{s}-no", "imap", Fault(step, "err"), err.get(step, "receive_protocol"))
        yield Case(f"imap-{s}-bye", "imap", Fault(step, "bye"), "receive_protocol")
    for step in ("SELECT", "UID FETCH", "NOOP"):
        s = step.replace(" ", "_").lower()
        yield Case(f"imap-{s}-huge-literal", "imap", Fault(step, "huge_literal"), "receive_protocol")
    # IDLE: the continuation comes, then the fault answers our DONE.
    for action, reason in (
        ("close", "receive_protocol"),
        ("silence", "timeout"),
        ("garbage", "receive_protocol"),
        ("overlong", "receive_protocol"),
        ("err", "receive_protocol"),
        ("huge_literal", "receive_protocol"),
    ):
        yield Case(f"imap-idle-{action}", "imap", Fault("IDLE", action), reason, idle=True)
    yield Case("imap-idle-healthy", "imap", NO_FAULT, "success", idle=True)


def _pop3_cases() -> Iterator[Case]:
    p = "pop3"
    g = "greeting"
    yield Case("pop3-refused", p, Fault("refused", "refused"), "receive_connect", receiver=p)
    yield Case("pop3-tls-stall", p, Fault(g, "silence"), "timeout", receiver=p, tls="implicit")
    yield Case("pop3-greeting-close", p, Fault(g, "close"), "receive_connect", receiver=p)
    yield Case("pop3-greeting-reset", p, Fault(g, "reset"), "receive_connect", receiver=p)
    yield Case("pop3-greeting-silence", p, Fault(g, "silence"), "timeout", receiver=p)
    yield Case("pop3-greeting-garbage", p, Fault(g, "garbage"), "receive_protocol", receiver=p)
    yield Case("pop3-greeting-err", p, Fault(g, "err"), "receive_protocol", receiver=p)
    yield Case("pop3-greeting-overlong", p, Fault(g, "overlong"), "receive_protocol", receiver=p)
    yield Case("pop3-greeting-drip", p, Fault(g, "drip"), "timeout", receiver=p)
    err = {"USER": "receive_auth", "PASS": "receive_auth", "DELE": "cleanup", "QUIT": "cleanup"}
    for step in ("USER", "PASS", "UIDL", "LIST", "TOP", "RETR", "DELE", "QUIT"):
        s = step.lower()
        if step != "QUIT":  # a lost connection at QUIT after DELE: nothing committed, see below
            yield Case(f"pop3-{s}-close", p, Fault(step, "close"), "receive_protocol", receiver=p)
            yield Case(f"pop3-{s}-reset", p, Fault(step, "reset"), "receive_protocol", receiver=p)
            yield Case(f"pop3-{s}-garbage", p, Fault(step, "garbage"), "receive_protocol", receiver=p)
        yield Case(f"pop3-{s}-silence", p, Fault(step, "silence"), "timeout", receiver=p)
        if step not in ("TOP", "RETR"):
            yield Case(f"pop3-{s}-err", p, Fault(step, "err"), err.get(step, "receive_protocol"), receiver=p)
    # A server failing to serve a message it still lists (a later session lists it again): its failure,
    # not a slow delivery (TOP) and not tampering (RETR).
    yield Case("pop3-top-err", p, Fault("TOP", "err"), "receive_protocol", receiver=p)
    yield Case("pop3-retr-err", p, Fault("RETR", "err"), "receive_protocol", receiver=p)
    # Our canary removed by another session between TOP and RETR: gone, as IMAP says it (not tampering).
    yield Case("pop3-retr-vanish", p, Fault("RETR", "vanish"), "canary_invalid", receiver=p)
    # Foreign mail never fails a run: gone since UIDL, a header line over the limit, too big to be ours.
    foreign = b"From: user@example.org\r\nSubject: hello\r\n\r\nuser mail\r\n"
    yield Case(
        "pop3-foreign-vanished", p, Fault("TOP", "err", target=1), "success", receiver=p, foreign=foreign
    )
    yield Case(
        "pop3-foreign-overlong-line",
        p,
        Fault("TOP", "overlong", target=1),
        "success",
        receiver=p,
        foreign=foreign,
    )
    big = foreign + b"y" * (canary.MAX_CANARY_BYTES + 10) + b"\r\n"
    yield Case("pop3-foreign-too-big", p, NO_FAULT, "success", receiver=p, foreign=big)
    yield Case("imap-foreign-with-noise", "imap", NO_FAULT, "success", foreign=foreign)


CASES = [*_smtp_cases(), *_imap_cases(), *_pop3_cases()]


def test_the_matrix_is_big_enough() -> None:
    assert len(CASES) >= 60
    assert {c.side for c in CASES} == {"smtp", "imap", "pop3"}


def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0  # pragma: no cover


def _settings(name: str, smtp_port: int, recv_port: int, case: Case) -> RoundTripSettings:
    on_smtp = case.side == "smtp"
    return fault_settings(
        name,
        smtp_port,
        recv_port,
        smtp_tls=case.tls if on_smtp else "none",
        recv_tls="none" if on_smtp else case.tls,
        receiver=case.receiver,
        idle=case.idle,
    )


async def _run(settings: RoundTripSettings) -> str:
    try:
        async with asyncio.timeout(DEADLINE):
            await probe_roundtrip(settings, Recorder())
    except ProbeError as exc:
        return exc.reason
    except TimeoutError:
        return "deadline"
    return "success"


async def _healthy(stop: asyncio.Event, outcomes: list[str]) -> None:
    """Round trips against well-behaved fake servers, back to back, until told to stop."""
    store = Store()
    async with serving(smtp_handler(store, NO_FAULT)) as sp, serving(imap_handler(store, NO_FAULT)) as ip:
        while not stop.is_set():
            settings = fault_settings("healthy", sp, ip)
            settings = RoundTripSettings(
                **{
                    **settings.__dict__,
                    "smtp": SMTPSettings(settings.smtp.endpoint, timeout=5.0, helo_name="h.test"),
                }
            )
            outcomes.append(await _run(settings))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_fault(case: Case, caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    caplog.set_level(logging.WARNING)
    store = Store()
    if case.foreign is not None:
        store.add(case.foreign)
    smtp_fault = case.fault if case.side == "smtp" else NO_FAULT
    recv_fault = case.fault if case.side != "smtp" else NO_FAULT
    recv_handler = (pop3_handler if case.receiver == "pop3" else imap_handler)(store, recv_fault)
    stop = asyncio.Event()
    healthy: list[str] = []
    healthy_task = asyncio.ensure_future(_healthy(stop, healthy))
    gc.collect()
    rss_before = _rss()
    async with serving(smtp_handler(store, smtp_fault)) as smtp_port, serving(recv_handler) as recv_port:
        if case.fault.step == "refused":
            if case.side == "smtp":
                smtp_port = refused_port()
            else:
                recv_port = refused_port()
        started = time.monotonic()
        reason = await _run(_settings("faulty", smtp_port, recv_port, case))
        elapsed = time.monotonic() - started
    # Let the healthy probe finish one more round trip after the fault, then stop it.
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(healthy_task, timeout=10)
    gc.collect()
    await asyncio.sleep(0)
    rss_growth = _rss() - rss_before

    assert reason == case.reason, case.id
    # Within its step timeout: a fault ends the run after at most one step (plus slack), never the deadline.
    assert elapsed < STEP + 4.0, elapsed
    assert not unhandled, unhandled
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    assert rss_growth < RSS_BOUND, rss_growth
    assert healthy and set(healthy) == {"success"}, healthy
    if case.foreign is not None and case.reason == "success":
        assert case.foreign in store.messages.values()  # foreign mail untouched
