"""The heartbeat window math (every and cron with a time zone, DST included), the matching rules with
fail_if looked at first, BODYSTRUCTURE walking, and one-line config errors. Pure: no server, no clock."""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from exporter.config import ConfigError, parse_config
from probes.heartbeats import (
    Heartbeat,
    MailFacts,
    Rule,
    Rules,
    Schedule,
    TextPart,
    decode_body,
    parse_header,
    walk_structure,
)
from probes.wire import imapwire as wire

BERLIN = ZoneInfo("Europe/Berlin")


def ts(*args: int, tz: ZoneInfo = BERLIN) -> float:
    return datetime(*args, tzinfo=tz).timestamp()  # type: ignore[misc]


def test_every_window_closes_with_its_mail_and_the_next_is_due_a_period_later() -> None:
    s = Schedule(grace=10, every=60)
    hb = Heartbeat.new(s, 1000.0)
    assert (hb.window.start, hb.window.deadline) == (1000, 1060)
    assert hb.state(s, 1, 1030) == "ok"  # waiting, not due yet
    assert hb.count(s, 1, 1030, failure=False)
    assert hb.windows["ok"] == 1 and hb.window.start == 1030 and hb.window.deadline == 1090
    hb.advance(s, 1, 1095)
    assert hb.state(s, 1, 1095) == "late"  # due at 1090, grace until 1100
    hb.advance(s, 1, 1100)
    assert hb.state(s, 1, 1100) == "missing" and hb.windows["missing"] == 1
    assert hb.window.start == 1090 and hb.window.deadline == 1150
    hb.count(s, 1, 1120, failure=False)  # back: the outage ends with the next expected mail
    assert hb.state(s, 1, 1120) == "ok" and hb.windows["ok"] == 2


def test_missing_stays_missing_through_the_next_deadline_until_mail_comes() -> None:
    """No flapping: once a window closed missing (or failed), the next window's deadline does not turn
    the state into "late" for its grace time (which would resolve MailcanaryHeartbeatMissing and fire it
    again every period); the state changes only when a window gets its mail."""
    s = Schedule(grace=1, every=2)
    hb = Heartbeat.new(s, 1000.0)
    seen = []
    for t in (1003.0, 1004.5, 1005.0, 1006.5, 1007.0, 1009.5):
        hb.advance(s, 1, t)
        seen.append(hb.state(s, 1, t))
    assert seen == ["missing"] * 6
    hb.count(s, 1, 1010, failure=False)
    assert hb.state(s, 1, 1010) == "ok"
    failed = Heartbeat.new(s, 1000.0)
    failed.count(s, 1, 1000.5, failure=True)
    failed.advance(s, 1, 1002.7)  # the next window's grace time: still failed, not "late"
    assert failed.state(s, 1, 1002.7) == "failed"


def test_a_mail_in_the_grace_time_counts_late_and_before_the_window_not_at_all() -> None:
    s = Schedule(grace=10, every=60)
    hb = Heartbeat.new(s, 1000.0)
    assert not hb.count(s, 1, 999, failure=False)  # arrived before the window: seen, not counted
    assert hb.matched_total == 1 and hb.window.count == 0
    assert hb.count(s, 1, 1065, failure=False)
    assert hb.windows["late"] == 1 and hb.state(s, 1, 1065) == "ok"


def test_fail_if_marks_the_window_failed_until_a_good_one() -> None:
    s = Schedule(grace=10, every=60)
    hb = Heartbeat.new(s, 1000.0)
    hb.count(s, 1, 1010, failure=True)
    assert hb.state(s, 1, 1010) == "failed" and hb.failed_total == 1 and hb.windows["failed"] == 1
    hb.advance(s, 1, 1085)  # the next window (from 1010) missing too: still an outage
    assert hb.state(s, 1, 1085) == "missing"
    hb.count(s, 1, 1086, failure=False)
    assert hb.state(s, 1, 1086) == "ok"


def test_expected_count_per_window() -> None:
    s = Schedule(grace=0, every=100)
    hb = Heartbeat.new(s, 0.0)
    for t in (10, 20):
        hb.count(s, 3, t, failure=False)
    assert hb.window.count == 2 and hb.state(s, 3, 50) == "ok"
    hb.advance(s, 3, 100)
    assert hb.state(s, 3, 100) == "missing" and hb.windows["missing"] == 1


def test_cron_windows_in_a_time_zone_across_dst() -> None:
    """Daily at 02:30 Berlin time: on 2026-03-29 (spring forward) 02:30 does not exist; on 2026-10-25
    (fall back) it exists twice. The windows follow CronTrigger's answers, in UTC seconds."""
    s = Schedule(grace=3600, cron="30 2 * * *", timezone="Europe/Berlin")
    hb = Heartbeat.new(s, ts(2026, 3, 27, 12, 0))
    assert hb.window.deadline == ts(2026, 3, 28, 2, 30)  # CET, UTC+1
    hb.count(s, 1, ts(2026, 3, 28, 2, 0), failure=False)
    hb.advance(s, 1, ts(2026, 3, 28, 2, 30))
    assert hb.windows["ok"] == 1
    # the DST night: 02:30 does not exist on 2026-03-29; CronTrigger fires at 03:30 CEST (still 01:30 UTC)
    nxt = hb.window.deadline
    assert nxt == ts(2026, 3, 29, 3, 30) and nxt - ts(2026, 3, 28, 2, 30) == 86400
    hb.advance(s, 1, nxt + 3600)
    assert hb.state(s, 1, nxt + 3600) == "missing"
    after = hb.window.deadline
    assert after == ts(2026, 3, 30, 2, 30) and after - nxt == 23 * 3600  # CEST, UTC+2: a shorter window
    # autumn: windows stay one day apart in wall time; 25 hours that night
    s2 = Schedule(grace=60, cron="0 12 * * *", timezone="Europe/Berlin")
    hb2 = Heartbeat.new(s2, ts(2026, 10, 24, 13, 0))
    first = hb2.window.deadline
    assert first == ts(2026, 10, 25, 12, 0)
    assert first - ts(2026, 10, 24, 12, 0) == 25 * 3600


def test_cron_late_and_a_full_window_passes_extra_mail_to_the_next() -> None:
    s = Schedule(grace=600, cron="0 * * * *", timezone="UTC")
    start = ts(2026, 1, 1, 10, 0, tz=ZoneInfo("UTC")) + 60
    hb = Heartbeat.new(s, start)
    d = hb.window.deadline
    assert hb.state(s, 1, d + 1) == "late"
    hb.count(s, 1, d + 30, failure=False)  # in the grace time: counts for the due window
    assert hb.state(s, 1, d + 30) == "ok"
    hb.count(s, 1, d + 40, failure=False)  # the due window is full: this one is the next window's
    hb.advance(s, 1, d + 41)
    assert hb.windows["late"] == 1 and hb.window.count == 1


def test_far_behind_is_bounded() -> None:
    s = Schedule(grace=0, every=1)
    hb = Heartbeat.new(s, 0.0)
    hb.advance(s, 1, 10**9)  # a daemon down for decades with a 1 s period: bounded work
    assert hb.state(s, 1, 10**9) == "missing" and hb.window.start == 10**9


def test_state_round_trips_through_json() -> None:
    s = Schedule(grace=5, every=60)
    hb = Heartbeat.new(s, 100.0)
    hb.count(s, 2, 120, failure=False)
    again = Heartbeat.from_json(hb.to_json())
    assert again == hb


HEADER = (
    b"From: =?utf-8?q?Backup_J=C3=B6b?= <Backup@Jobs.Example.org>\r\n"
    b"Subject: =?utf-8?q?Nightly_backup=3A_FAILED?=\r\n"
    b"X-Job: nightly-db\r\n"
    b"Message-ID: <abc@jobs.example.org>\r\n\r\n"
)


def test_fail_if_is_looked_at_before_match() -> None:
    mail = parse_header(HEADER, 1234)
    assert mail.sender == "backup@jobs.example.org" and mail.subject == "Nightly backup: FAILED"
    match = Rule(sender_domain="example.org", headers=(("X-Job", re.compile("^nightly")),))
    rules = Rules(match=match, fail_if=(Rule(subject=re.compile("FAILED")),))
    assert rules.classify(mail) == "failure"
    assert Rules(match=match).classify(mail) == "success"
    assert Rules(match=Rule(sender="other@example.org")).classify(mail) is None
    assert not Rule(sender_domain="ample.org").matches(mail)  # a suffix is not a subdomain
    assert Rule(min_size=1000, max_size=2000).matches(mail) and not Rule(max_size=1000).matches(mail)
    assert not Rule(body="x").matches(mail)  # body not read: no match


def test_bodystructure_attachments_and_text_part() -> None:
    line = (
        b'* 1 FETCH (UID 7 BODYSTRUCTURE (("text" "plain" ("charset" "utf-8") NIL NIL '
        b'"quoted-printable" 20 1 NIL NIL NIL NIL)("application" "pdf" ("name" "r.pdf") NIL NIL '
        b'"base64" 400 NIL ("attachment" ("filename" "report-2026.pdf")) NIL NIL) "mixed" '
        b'("boundary" "b") NIL NIL NIL))'
    )
    item = wire.parse_fetch(wire.Response(tag=b"*", parts=[line]))
    assert item is not None and item.structure is not None
    names, text = walk_structure(item.structure)
    assert names == ["report-2026.pdf"] and text == TextPart("1", "quoted-printable", "utf-8")
    assert Rule(attachment="*.PDF").matches(MailFacts(attachments=names))
    assert decode_body(b"caf=C3=A9 ok=\r\n", text) == "café ok"
    assert decode_body(b"Y2Fmw6kgb2s=\r\nY", TextPart("1", "base64", "utf-8")) == "café ok"


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("match: {}", "heartbeats[0].match: give at least one rule"),
        ("match: {subject: '(['}", "heartbeats[0].match.subject: not a regular expression"),
        ("match: {from_address: a@b}\n    cron: '61 * * * *'", "heartbeats[0].cron: not a cron expression"),
        ("match: {from_address: a@b}\n    every: 1h\n    timezone: Mars/Base", "heartbeats[0].timezone"),
        (
            "match: {from_address: a@b}\n    every: 1h\n    cron: '0 * * * *'",
            "give exactly one of every, cron",
        ),
        ("match: {from_address: a@b}\n    every: 1h\n    mark_keyword: '\\\\Seen'", "mark_keyword: must be"),
        ("match: {from_address: a@b}\n    every: 1h\n    move_to: INBOX", "move_to: is a watched folder"),
        ("match: {from_address: a@b}\n    every: 1h\n    colour: red", "heartbeats[0].colour: unknown key"),
    ],
)
def test_config_errors_are_one_line(entry: str, problem: str, tmp_path: object) -> None:
    grace = "" if "grace" in entry else "\n    grace: 5m"
    text = (
        "heartbeats:\n  - name: hb\n    imap: {host: h, tls: implicit, username: u, password_env: PW}\n"
        f"    {entry}{grace}\n"
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text, "f.yml", {"PW": "x"})
    assert len(err.value.problems) == 1, err.value.problems
    line = err.value.problems[0]
    assert line.startswith("f.yml: ") and problem in line and "\n" not in line, line
