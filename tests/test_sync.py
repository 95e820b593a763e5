"""The sync check against in-process servers: a view that never shows the flag is ``sync_timeout`` (and
the canary is still deleted); runs that each need two sessions on a server with two slots take turns
instead of deadlocking. The real Dovecot runs in tests/test_sync_e2e.py."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from probes._slots import ServerSlots
from probes.errors import ProbeError
from probes.recorder import Recorder
from probes.roundtrip import SyncSettings, probe_roundtrip
from tests.faultservers import NO_FAULT, Store, imap_handler, serving, smtp_handler
from tests.test_fault_matrix import _settings


async def test_a_flag_that_never_shows_is_sync_timeout_and_the_canary_is_still_deleted() -> None:
    store = Store()
    rec = Recorder(transcript=[])
    async with serving(smtp_handler(store, NO_FAULT)) as sp, serving(imap_handler(store, NO_FAULT)) as ip:
        settings = dataclasses.replace(_settings("s", sp, ip, None), sync=SyncSettings(timeout=0.5))
        started = time.monotonic()
        try:
            await probe_roundtrip(settings, rec)
        except ProbeError as exc:
            error = exc
        else:  # pragma: no cover - the assertion below says what went wrong
            raise AssertionError("the sync check passed on a view that never shows the flag")
    assert error.reason == "sync_timeout"
    assert "did not see $MailcanarySynced on the canary within 0.5s" in error.message
    assert time.monotonic() - started < 5
    assert not store.messages and store.deleted  # deleted all the same
    text = "\n".join(rec.transcript or [])
    assert "+FLAGS.SILENT ($MailcanarySynced)" in text  # set by the first session, on our canary only
    assert {"sync_connect", "sync_login", "sync_flag", "sync_wait"} <= set(rec.phases)
    assert "sync_arrival_seconds" in rec.facts  # the second session did see the arrival


async def test_runs_needing_two_sessions_take_turns_on_two_slots() -> None:
    store = Store()
    slots = ServerSlots(default_limit=2, queue_timeout=20)
    async with serving(smtp_handler(store, NO_FAULT)) as sp, serving(imap_handler(store, NO_FAULT)) as ip:
        base = dataclasses.replace(_settings("t", sp, ip, None), sync=SyncSettings(timeout=0.3), slots=slots)
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
