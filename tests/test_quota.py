"""Quota reads (RFC 9208 GETQUOTAROOT) that go wrong never fail the round trip: in-process IMAP server for
the faults (a real Dovecot's quota is read in tests/test_quota_e2e.py)."""

from __future__ import annotations

import pytest

from probes.receipt.quota import Usage
from probes.recorder import Recorder
from probes.roundtrip import probe_roundtrip
from tests.support.faultservers import (
    NO_FAULT,
    Fault,
    Store,
    fault_settings,
    imap_handler,
    serving,
    smtp_handler,
)

ROOT = b'* QUOTAROOT INBOX "User quota"\r\n'
GOOD = ROOT + b'* QUOTA "User quota" (STORAGE 190 200 MESSAGE 19 20)\r\n'


async def _roundtrip(fault: Fault, quota: bytes = GOOD) -> Recorder:
    store = Store()
    rec = Recorder(transcript=[])
    async with (
        serving(smtp_handler(store, NO_FAULT)) as sp,
        serving(imap_handler(store, fault, quota=quota)) as ip,
    ):
        await probe_roundtrip(fault_settings("q", sp, ip), rec)  # raises if the round trip failed
    assert not store.messages  # the canary was found and deleted: the run really went on
    return rec


async def test_a_root_named_by_a_literal_is_read() -> None:
    quota = b"* QUOTAROOT INBOX {10}\r\nUser quota\r\n* QUOTA {10}\r\nUser quota (MESSAGE 5 10)\r\n"
    rec = await _roundtrip(NO_FAULT, quota)
    assert rec.facts.quota == {"MESSAGE": Usage(5, 10)}


async def test_quota_read_with_two_roots_keeps_the_tightest() -> None:
    quota = GOOD + b"* QUOTA other (STORAGE 10 1000 MESSAGE 19 19)\r\n"
    rec = await _roundtrip(NO_FAULT, quota)
    assert rec.facts.quota == {"STORAGE": Usage(190 * 1024, 200 * 1024), "MESSAGE": Usage(19, 19)}
    assert rec.facts.quota_error is None
    assert "receive_quota" in rec.phases


@pytest.mark.parametrize(
    ("fault", "quota", "error", "reopened"),
    [
        (Fault("GETQUOTAROOT", "err"), GOOD, "refused", False),  # NO: the session is still in step
        (NO_FAULT, ROOT + b'* QUOTA "User quota" (STORAGE x 200)\r\n', "protocol", False),
        (Fault("GETQUOTAROOT", "garbage"), GOOD, "protocol", True),  # out of step: a new session
        (Fault("GETQUOTAROOT", "silence"), GOOD, "timeout", True),
        (Fault("GETQUOTAROOT", "close"), GOOD, "protocol", True),
    ],
)
async def test_a_failed_quota_read_is_noted_and_the_round_trip_goes_on(
    fault: Fault, quota: bytes, error: str, reopened: bool
) -> None:
    rec = await _roundtrip(fault, quota)
    assert rec.facts.quota_error == error
    assert rec.facts.quota is None
    logins = [line for line in rec.transcript or [] if line.startswith("C: imap") and " LOGIN " in line]
    assert len(logins) == (2 if reopened else 1)


async def test_no_quota_capability_no_read() -> None:
    store = Store()
    rec = Recorder(transcript=[])
    async with serving(smtp_handler(store, NO_FAULT)) as sp, serving(imap_handler(store, NO_FAULT)) as ip:
        await probe_roundtrip(fault_settings("q", sp, ip), rec)
    assert rec.facts.quota is None and rec.facts.quota_error is None
    assert not any("GETQUOTAROOT" in line for line in rec.transcript or [])


@pytest.mark.parametrize("answer", [b'* QUOTA "ROOT"\r\n', b'* QUOTA "ROOT" ()\r\n'])
async def test_courier_root_without_limits_is_read_as_no_limit(answer: bytes) -> None:
    """Courier's ``* QUOTA "ROOT"`` (no list): no quota_error (the protocol-error counter grew by one
    every run before), no usage exported."""
    rec = await _roundtrip(NO_FAULT, b'* QUOTAROOT "INBOX" "ROOT"\r\n' + answer)
    assert rec.facts.quota == {} and rec.facts.quota_error is None
