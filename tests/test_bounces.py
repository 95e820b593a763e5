"""Bounces from a real Postfix: an undeliverable recipient (a pipe transport exiting 67, EX_NOUSER) makes
Postfix send a real RFC 3464 DSN to the sender; the run ends with reason ``bounced`` and the status code,
not a timeout, and the DSN (verified as about our canary) is deleted while the sender's own mail stays.
A deferred delivery (exit 75 a few times, with delay_warning_time) makes a real delay DSN: reported,
and the run still succeeds when the canary arrives."""

from __future__ import annotations

import copy
import os
import shutil
import smtplib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from exporter.metrics.collector import ExporterState, build_registry
from probes import canary
from tests.mailstack import MailStack, make_root
from tests.support.messages import dsn
from tests.support.roundtrip import KEY, make_runner, run_one
from tests.support.stackconfig import roundtrip, secret_file


def _bounce_probe(stack: MailStack, tmp: Path, name: str, sender: str, recipient: str) -> dict[str, Any]:
    """Submit as ``sender`` to ``recipient``; read ``recipient``'s mailbox, and ``sender``'s for bounces."""
    probe = roundtrip(stack, tmp, name, sender, timeout="40s")
    probe["recipient"] = recipient
    bounce = copy.deepcopy(probe["receive"])
    probe["bounce_receive"] = bounce
    probe["receive"]["username"] = recipient
    probe["receive"]["password_file"] = secret_file(tmp, f"{name}-rcpt", stack.password(recipient))
    return probe


def _send_foreign(stack: MailStack, address: str) -> None:
    with smtplib.SMTP(stack.host, stack.smtp_port, timeout=10) as s:
        s.sendmail(
            "alice@example.test", [address], b"From: alice@example.test\r\nSubject: hi\r\n\r\nmail\r\n"
        )


def test_undeliverable_recipient_bounces_with_the_status(
    mailstack: MailStack, mailbox: str, tmp_path: Path
) -> None:
    mailstack.clear(mailstack.nouser_address)
    _send_foreign(mailstack, mailbox)  # the sender's own mail: must stay
    mailstack.wait_for_messages(mailbox, 1)
    runner = make_runner(
        tmp_path, [_bounce_probe(mailstack, tmp_path, "bnc", mailbox, mailstack.nouser_address)]
    )
    result = run_one(runner, debug=True)
    assert result.reason == "bounced", result.message
    assert "5.1.1" in result.message
    assert result.bounces == ("5.1.x",)
    events = result.receiver["bounces"]
    assert events[0]["action"] == "failed" and events[0]["this_run"] is True and events[0]["kind"] == "dsn"
    assert len(mailstack.messages(mailbox)) == 1  # the DSN was deleted, the foreign message kept
    text = generate_latest(build_registry(runner.store, ExporterState())).decode()
    assert 'mailcanary_roundtrip_bounces_total{class="5.1.x",probe="bnc"} 1.0' in text
    assert 'mailcanary_roundtrip_runs_total{outcome="bounced",probe="bnc"} 1.0' in text
    assert 'mailcanary_roundtrip_canaries_outstanding{probe="bnc"} 0.0' in text  # it will never arrive


def _deliver(stack: MailStack, address: str, raw: bytes) -> None:
    with smtplib.SMTP(stack.host, stack.smtp_port, timeout=10) as s:
        s.sendmail("", [address], raw)  # null sender, as an MTA sends a DSN


def test_foreign_and_earlier_dsns_never_end_the_run(
    mailstack: MailStack, mailbox: str, tmp_path: Path
) -> None:
    """In the sender's mailbox before the run: a DSN about a canary signed with another key (another
    instance's, or forged) and a DSN about an earlier canary of this probe. Neither ends the run (the
    canary still arrives, slowly); the foreign one stays untouched, the earlier one is ours: deleted and
    counted."""
    foreign_token = canary.new_token("bslow")
    foreign = canary.build_message(foreign_token, b"x" * 32, mailbox, mailstack.slow_address)
    earlier_token = canary.new_token("bslow", now=time.time() - 600)
    earlier = canary.build_message(earlier_token, KEY, mailbox, mailstack.slow_address)
    _deliver(mailstack, mailbox, dsn(foreign))
    _deliver(mailstack, mailbox, dsn(earlier))
    mailstack.wait_for_messages(mailbox, 2)
    old_delay = mailstack.slow_delay
    mailstack.slow_delay = 6.0  # past the first periodic look (every 5 s)
    try:
        probe = _bounce_probe(mailstack, tmp_path, "bslow", mailbox, mailstack.slow_address)
        runner = make_runner(tmp_path, [probe])
        result = run_one(runner)
    finally:
        mailstack.slow_delay = old_delay
    assert result.success, result.message
    assert result.bounces == ("5.1.x",)  # the earlier canary's bounce, handled
    assert result.receiver["bounces"][0]["this_run"] is False
    left = [p.read_bytes() for p in mailstack.messages(mailbox)]
    assert len(left) == 1 and foreign_token.nonce.encode() in left[0]  # the foreign DSN is untouched


@pytest.fixture(scope="module")
def deferring_stack() -> Iterator[MailStack]:
    """A stack of its own whose Postfix retries every second and warns of a delay after 1 s."""
    stack = MailStack(
        make_root(),
        postfix_settings={
            "delay_warning_time": "1s",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        },
    )
    stack.claim()
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        if os.environ.get("MAILSTACK_KEEP") != "1":
            shutil.rmtree(stack.root, ignore_errors=True)


def test_deferred_delivery_is_reported_and_the_run_succeeds(
    deferring_stack: MailStack, tmp_path: Path
) -> None:
    stack = deferring_stack
    sender = stack.test_addresses[0]
    stack.clear(sender)
    stack.clear(stack.defer_address)
    stack.defer_count = 3
    runner = make_runner(tmp_path, [_bounce_probe(stack, tmp_path, "dfr", sender, stack.defer_address)])
    result = run_one(runner, debug=True)
    assert result.success, result.message
    events = result.receiver.get("bounces", [])
    assert events, "no delay notice seen"
    assert all(e["action"] == "delayed" and e["this_run"] for e in events)
    assert all(str(e["class"]).startswith("4.") for e in events)
    assert stack.messages(sender) == []  # the delay DSN, verified as about our canary, was deleted
