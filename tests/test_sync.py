"""The sync check against in-process servers: a view that never shows the flag is ``sync_timeout`` (and
the canary is still deleted); runs that each need two sessions on a server with two slots take turns
instead of deadlocking. The real Dovecot runs in tests/test_sync_e2e.py."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from exporter.config import ConfigError, parse_config
from probes.errors import ProbeError
from probes.recorder import Recorder
from probes.roundtrip import SyncSettings, probe_roundtrip
from probes.wire.slots import ServerSlots
from tests.support.faultservers import (
    NO_FAULT,
    Fault,
    Store,
    fault_settings,
    imap_handler,
    serving,
    smtp_handler,
)
from tests.support.procs import this_process


async def test_a_flag_that_never_shows_is_sync_timeout_and_the_canary_is_still_deleted() -> None:
    store = Store()
    rec = Recorder(transcript=[])
    async with serving(smtp_handler(store, NO_FAULT)) as sp, serving(imap_handler(store, NO_FAULT)) as ip:
        settings = dataclasses.replace(fault_settings("s", sp, ip), sync=SyncSettings(timeout=0.5))
        clock = this_process()
        try:
            await probe_roundtrip(settings, rec)
        except ProbeError as exc:
            error = exc
        else:  # pragma: no cover - the assertion below says what went wrong
            raise AssertionError("the sync check passed on a view that never shows the flag")
    assert error.reason == "sync_timeout"
    assert "did not see $MailcanarySynced on the canary within 0.5s" in error.message
    assert clock() < 5, clock.wall  # time this process waited for a CPU not counted
    assert not store.messages and store.deleted  # deleted all the same
    text = "\n".join(rec.transcript or [])
    assert "+FLAGS.SILENT ($MailcanarySynced)" in text  # set by the first session, on our canary only
    assert {"sync_connect", "sync_login", "sync_flag", "sync_wait"} <= set(rec.phases)
    assert rec.facts.current_phase == "sync_wait"  # the failed phase, though the delete ran after it
    assert rec.facts.sync_arrival_seconds is not None  # the second session did see the arrival


async def test_runs_needing_two_sessions_take_turns_on_two_slots() -> None:
    store = Store()
    slots = ServerSlots(default_limit=2, queue_timeout=20)
    async with serving(smtp_handler(store, NO_FAULT)) as sp, serving(imap_handler(store, NO_FAULT)) as ip:
        base = dataclasses.replace(fault_settings("t", sp, ip), sync=SyncSettings(timeout=0.3), slots=slots)
        runs = [dataclasses.replace(base, name=f"t{i}") for i in range(4)]

        async def one(settings: object) -> str:
            assert isinstance(settings, type(base))
            try:
                await probe_roundtrip(settings, Recorder())
            except ProbeError as exc:
                return exc.reason
            return "success"  # pragma: no cover - the fake server never shows the flag

        async with asyncio.timeout(30):  # a deadlock would hang here
            reasons = await asyncio.gather(*(one(s) for s in runs))
    assert reasons == ["sync_timeout"] * 4  # every run got both its sessions and ran to its end
    assert slots.high_water(f"127.0.0.1:{ip}") == 2  # two sessions: one run at a time
    assert slots.in_use(f"127.0.0.1:{ip}") == 0


async def test_a_stalled_second_session_is_sync_timeout() -> None:
    """The other device's session stops answering (its NOOP never gets a reply): the run ends as
    sync_timeout within its bounds, the canary deleted by the first session."""
    store = Store()
    sessions = 0

    async def first_fine_then_stalled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sessions
        sessions += 1
        fault = NO_FAULT if sessions == 1 else Fault("NOOP", "silence")
        await imap_handler(store, fault)(reader, writer)

    async with serving(smtp_handler(store, NO_FAULT)) as sp, serving(first_fine_then_stalled) as ip:
        settings = dataclasses.replace(fault_settings("st", sp, ip), sync=SyncSettings(timeout=3.0))
        clock = this_process()
        try:
            await probe_roundtrip(settings, Recorder())
        except ProbeError as exc:
            error = exc
        else:  # pragma: no cover
            raise AssertionError("a stalled second session passed the sync check")
    assert error.reason == "sync_timeout", error.message
    assert "the second session stalled" in error.message
    assert clock() < 8, clock.wall
    assert sessions == 2 and not store.messages and store.deleted


F = "/etc/mailcanary.yml"


def _config(receive_extra: str, protocol: str = "imap") -> str:
    return f"""\
roundtrip:
  - name: sy
    sender: canary@example.com
    recipient: inbox@example.net
    smtp:
      host: smtp.example.com
    receive:
      protocol: {protocol}
      host: imap.example.net
      tls: implicit
      username: inbox@example.net
      password: pw
{receive_extra}"""


@pytest.mark.parametrize(
    ("extra", "protocol", "expected"),
    [
        ("      sync: {}\n", "pop3", "roundtrip[0].receive.sync: an IMAP check (POP3 has no flags"),
        ("      sync:\n        flag: 'two words'\n", "imap", "roundtrip[0].receive.sync.flag: "),
        ("      sync:\n        flag: '\\\\Deleted'\n", "imap", "roundtrip[0].receive.sync.flag: "),
        ("      sync:\n        timeout: 0s\n", "imap", "roundtrip[0].receive.sync: timeout must be > 0"),
        ("      sync:\n        every: 1s\n", "imap", "roundtrip[0].receive.sync.every: "),
    ],
)
def test_sync_config_errors_are_one_line(extra: str, protocol: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_config(extra, protocol), F, {})
    assert len(info.value.problems) == 1, info.value.problems
    line = info.value.problems[0]
    assert line.startswith(f"{F}: {expected}") and "\n" not in line, line


def test_sync_config_defaults_and_disabled() -> None:
    loaded = parse_config(_config("      sync: {}\n"), F, {})
    sync = loaded.config.roundtrip[0].receive.sync
    assert sync is not None and (sync.enabled, sync.flag, sync.timeout) == (True, "$MailcanarySynced", 30.0)
    off = parse_config(_config("      sync: {enabled: false}\n", "pop3"), F, {})  # off: allowed anywhere
    assert off.config.roundtrip[0].receive.sync is not None


def test_a_sync_timeout_not_shorter_than_the_probe_timeout_is_warned_about() -> None:
    text = _config("      sync:\n        timeout: 60s\n").replace(
        "  - name: sy\n", "  - name: sy\n    timeout: 30s\n"
    )
    loaded = parse_config(text, F, {})
    assert any("receive.sync.timeout: not shorter than the probe's timeout" in w for w in loaded.warnings)
    assert not any("sync" in w for w in parse_config(_config("      sync: {}\n"), F, {}).warnings)
