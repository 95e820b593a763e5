"""POP3 servers as they are: LOGIN-DELAY advertised and enforced (Cyrus ``popminpoll``), advertised and not
enforced (Courier), and a server failing to serve a message it still lists (issue 19).

In-process fake servers (tests/support/faultservers.py): the enforcement and the login times must be
observed from the server's side, and a delay short enough for a test is a setting no real server ships
with. A real Cyrus runs in the interoperability matrix. Timing assertions are lower bounds only (load
only adds).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from exporter.metrics.collector import ExporterState, SeriesCache
from probes import canary
from probes.auth.credentials import Credentials
from probes.clients.pop3 import LoginGate
from probes.clients.smtp import SMTPSettings
from probes.errors import ProbeError
from probes.recorder import Recorder
from probes.roundtrip import (
    PollSchedule,
    POP3Settings,
    RoundTripResult,
    RoundTripSettings,
    probe_roundtrip,
)
from probes.wire.net import Endpoint, TLSSettings
from tests.support.faultservers import NO_FAULT, Fault, Logins, Store, pop3_handler, serving, smtp_handler
from tests.support.stackconfig import make_runner

KEY = b"login-delay-test-key-0123456789ab"
CREDS = Credentials("canary@example.test", "pw")
DEADLINE = 20.0  # the caller's own deadline; every run here must end well before it


class SlowStore(Store):
    """Delivery takes ``after`` seconds: the fake SMTP server accepts at once, the mailbox gets it later."""

    def __init__(self, after: float) -> None:
        super().__init__()
        self.after = after

    def add(self, raw: bytes) -> int:
        asyncio.get_running_loop().call_later(self.after, super().add, raw)
        return 0


def _settings(smtp_port: int, pop_port: int, **pop: object) -> RoundTripSettings:
    tls = TLSSettings(insecure_skip_verify=True)
    return RoundTripSettings(
        name="delay",
        smtp=SMTPSettings(Endpoint("127.0.0.1", smtp_port, "none", tls), timeout=5, helo_name="probe.test"),
        receiver=POP3Settings(
            Endpoint("127.0.0.1", pop_port, "none", tls), CREDS, allow_plaintext_auth=True, timeout=5, **pop
        ),  # type: ignore[arg-type]
        sender="canary@example.test",
        recipient="canary@example.test",
        key=KEY,
        poll=PollSchedule(0.01, 1.5, 0.05),
    )


async def _run(settings: RoundTripSettings, late: set[str] | None = None) -> RoundTripResult | ProbeError:
    try:
        async with asyncio.timeout(DEADLINE):
            return await probe_roundtrip(settings, Recorder(), late or set())
    except ProbeError as exc:
        return exc


def _gaps(logins: Logins) -> list[float]:
    return [b - a for a, b in zip(logins.at, logins.at[1:], strict=False)]


async def test_cyrus_like_enforced_delay_is_honoured() -> None:
    """Cyrus with ``popminpoll``: CAPA says LOGIN-DELAY and a second login sooner is refused. Before:
    every run ended ``receive_auth`` at its second login. Now: no login is refused, runs succeed."""
    store, logins = Store(), Logins()
    pop = pop3_handler(store, NO_FAULT, capa=b"LOGIN-DELAY 2\r\n", enforce_delay=2.0, logins=logins)
    async with serving(smtp_handler(store, NO_FAULT)) as sp, serving(pop) as pp:
        outcomes = [await _run(_settings(sp, pp)) for _ in range(2)]
    assert [type(o).__name__ for o in outcomes] == ["RoundTripResult"] * 2, outcomes
    assert logins.refused == 0
    assert len(logins.at) == 2  # one login per run: the sweep rides along with the look
    assert all(gap >= 2.0 for gap in _gaps(logins)), _gaps(logins)
    assert not store.messages  # every canary deleted


async def test_login_delay_refusal_has_its_own_reason_and_the_canary_is_swept_later() -> None:
    """Another client (or this process before a restart) logged in a moment ago: the server refuses ours
    with ``[LOGIN-DELAY]``. That is ``receive_login_delay`` with the server's words, not ``receive_auth``;
    the canary left behind is deleted by the next run's sweep."""
    store = Store()
    logins = Logins(last_ok=time.monotonic())
    pop = pop3_handler(store, NO_FAULT, capa=b"LOGIN-DELAY 2\r\n", enforce_delay=2.0, logins=logins)
    async with serving(smtp_handler(store, NO_FAULT)) as sp, serving(pop) as pp:
        first = await _run(_settings(sp, pp))
        assert isinstance(first, ProbeError)
        assert first.reason == "receive_login_delay", first
        assert "Logins must be at least 1 minute apart" in first.message
        left = [canary.candidates(raw, "delay") for raw in store.messages.values()]
        assert len(left) == 1 and len(left[0]) == 1
        (earlier,) = left[0]
        second = await _run(_settings(sp, pp), late={earlier.nonce})
    assert isinstance(second, RoundTripResult), second
    assert [t.nonce for t in second.swept] == [earlier.nonce]
    assert not store.messages
    assert logins.refused == 1 and all(gap >= 2.0 for gap in _gaps(logins)[1:])


async def test_courier_like_advertised_delay_spaces_the_logins() -> None:
    """Courier advertises LOGIN-DELAY and does not enforce it; mailcanary used to log in several times a
    second anyway. Now consecutive logins are at least the advertised delay apart, within a run (a slow
    delivery needs several looks) and across runs."""
    store, logins = SlowStore(after=1.5), Logins()
    pop = pop3_handler(store, NO_FAULT, capa=b"LOGIN-DELAY 1\r\n", logins=logins)
    async with serving(smtp_handler(store, NO_FAULT)) as sp, serving(pop) as pp:
        outcomes = [await _run(_settings(sp, pp)) for _ in range(2)]
    assert all(isinstance(o, RoundTripResult) for o in outcomes), outcomes
    assert len(logins.at) >= 3  # the first run needed more than one look
    assert all(gap >= 1.0 for gap in _gaps(logins)), _gaps(logins)
    assert not store.messages


async def test_delay_longer_than_the_run_one_late_look_then_a_clear_refusal() -> None:
    """LOGIN-DELAY 60 with a 6 s run: the run logs in once, as late as the run allows (a slow delivery
    still counts); the next run cannot log in at all within its time: ``receive_login_delay`` at once,
    before any canary is sent, and no login is attempted."""
    store, logins = SlowStore(after=0.5), Logins()
    gate = LoginGate()
    pop = pop3_handler(store, NO_FAULT, capa=b"LOGIN-DELAY 60\r\n", enforce_delay=60.0, logins=logins)
    async with serving(smtp_handler(store, NO_FAULT)) as sp, serving(pop) as pp:
        first = await _run(_settings(sp, pp, run_timeout=6.0, gate=gate))
        sent_before = store.next_uid
        second = await _run(_settings(sp, pp, run_timeout=6.0, gate=gate))
    assert isinstance(first, RoundTripResult), first
    assert first.delivery_seconds >= 0.5
    assert isinstance(second, ProbeError) and second.reason == "receive_login_delay", second
    assert "LOGIN-DELAY of 60s" in second.message and "timeout of 6s" in second.message
    assert len(logins.at) == 1 and logins.refused == 0
    assert store.next_uid == sent_before and not store.messages  # no canary sent, none left


@pytest.mark.parametrize(
    ("step", "reason", "words"),
    [
        ("TOP", "receive_protocol", "TOP 1 failed: -ERR Message 1 expunged"),
        ("RETR", "receive_protocol", "RETR 1 failed: -ERR Message 1 expunged"),
    ],
)
async def test_a_server_failing_to_serve_a_listed_message(step: str, reason: str, words: str) -> None:
    """-ERR to every TOP used to end ``timeout`` after the whole run (the message "vanished" on each
    look); -ERR to every RETR ended ``canary_invalid`` ("token or body altered"). The message is still
    listed by a later session: the server fails, ``receive_protocol`` with its own words."""
    store = Store()
    async with (
        serving(smtp_handler(store, NO_FAULT)) as sp,
        serving(pop3_handler(store, Fault(step, "err"))) as pp,
    ):
        outcome = await _run(_settings(sp, pp))
    assert isinstance(outcome, ProbeError), outcome
    assert outcome.reason == reason and words in outcome.message, outcome.message
    assert "still listed" in outcome.message


async def test_a_canary_that_vanished_before_retr_says_so() -> None:
    store = Store()
    async with (
        serving(smtp_handler(store, NO_FAULT)) as sp,
        serving(pop3_handler(store, Fault("RETR", "vanish"))) as pp,
    ):
        outcome = await _run(_settings(sp, pp))
    assert isinstance(outcome, ProbeError) and outcome.reason == "canary_invalid", outcome
    assert "vanished" in outcome.message


async def test_the_daemon_exports_the_delay_and_warns_once_when_the_interval_is_shorter(
    tmp_path: Path,
) -> None:
    """Through the exporter: the learnt delay is a series, a run that finds no login allowed within its
    timeout is ``receive_login_delay`` before sending anything, and the interval warning comes once."""
    store, logins = Store(), Logins()
    pop = pop3_handler(store, NO_FAULT, capa=b"LOGIN-DELAY 10\r\n", enforce_delay=10.0, logins=logins)
    async with serving(smtp_handler(store, NO_FAULT)) as sp, serving(pop) as pp:
        pw = tmp_path / "pw"
        pw.write_text("pw\n")
        pw.chmod(0o600)
        side = {"host": "127.0.0.1", "tls": "none", "allow_plaintext_auth": True}
        probe = {
            "name": "delayed",
            "sender": "canary@example.test",
            "recipient": "canary@example.test",
            "interval": "2s",
            "timeout": "3s",
            "smtp": {**side, "port": sp},
            "receive": {
                **side,
                "protocol": "pop3",
                "port": pp,
                "username": "canary@example.test",
                "password_file": str(pw),
            },
        }
        runner = make_runner(tmp_path, [probe], KEY)
        store_ = runner.store
        store_.ensure(["delayed"])
        state = ExporterState(probes={"delayed": "roundtrip"})
        cache = SeriesCache(store_, state)
        (config,) = runner.loaded.config.roundtrip
        with capture_logs() as logs:
            runs = [await runner.run_entry(config) for _ in range(3)]
    assert [r.reason for r in runs] == ["success", "receive_login_delay", "receive_login_delay"], runs
    assert "LOGIN-DELAY of 10s" in runs[1].message
    assert len(logins.at) == 1 and logins.refused == 0  # the refused runs did not even try
    assert not store.messages  # and sent nothing: no canary left behind
    warned = [e for e in logs if e["event"] == "pop3_login_delay_exceeds_interval"]
    assert len(warned) == 1 and warned[0]["login_delay_seconds"] == 10, warned
    assert 'mailcanary_receive_login_delay_seconds{probe="delayed"} 10.0' in cache.text()
    assert 'mailcanary_roundtrip_runs_total{outcome="receive_login_delay",probe="delayed"} 2.0' in (
        cache.text()
    )
