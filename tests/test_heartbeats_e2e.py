"""Heartbeats against the real Postfix + Dovecot: mails sent by the test on a schedule, delivered by
Postfix, read over IMAP. Short windows (seconds); the test waits for events (a counted mail, a deadline
passed by the wall clock), never a fixed sleep."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.cli import _probe as run_probe
from exporter.cli import build_parser
from exporter.daemon import Daemon
from exporter.kinds import heartbeats
from exporter.kinds.heartbeats import HeartbeatReport, book_for
from tests.mailstack import MailStack
from tests.support.heartbeats import flags_in, heartbeat, imap, make_runner, run, send, write_config
from tests.support.wait import eventually, eventually_async


def _until_counted(runner, name: str, total: int):  # type: ignore[no-untyped-def]
    return eventually(
        lambda: run(runner, name),
        until=lambda got: got[1].matched_total >= total,
        timeout=60,
        interval=0.3,
        message=f"{name}: {total} mails counted",
    )


def _past(when: float) -> None:
    """Until the wall clock is past ``when`` (the event a window's deadline is)."""
    eventually(
        time.time, until=lambda now: now > when, timeout=120, interval=0.1, message=f"time past {when}"
    )


def test_on_time_is_ok_and_foreign_mail_is_never_touched(
    mailstack: MailStack, mailbox: str, tmp_path: Path
) -> None:
    runner = make_runner(tmp_path, [heartbeat(mailstack, tmp_path, "nightly", mailbox)])
    first, report = run(runner, "nightly")
    assert first.reason == "success" and report.state == "ok" and report.matched_total == 0
    foreign = send(mailstack, mailbox, "Your invoice", sender="billing@shop.example.com")
    mine = send(mailstack, mailbox)
    result, report = _until_counted(runner, "nightly", 1)
    assert result.success and result.reason == "success", result.message
    # every: a window closes with its expected mail, the next is due `every` after it (healthchecks' period)
    assert report.state == "ok" and report.windows["ok"] == 1 and report.count == 0 and report.expect == 1
    assert report.last_seen is not None and report.deadline == report.last_seen + 60
    # nothing counted twice on the next runs; the foreign mail never counted
    _, again = run(runner, "nightly")
    assert again.matched_total == 1
    flags = flags_in(mailstack, mailbox)
    assert flags[foreign] == "" and flags[mine] == "", flags  # read-only: still unseen, no keyword


def test_late_then_ok(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    runner = make_runner(
        tmp_path, [heartbeat(mailstack, tmp_path, "late", mailbox, every="3s", grace="120s")]
    )
    _, report = run(runner, "late")
    _past(report.deadline)
    result, report = run(runner, "late")
    assert result.reason == "heartbeat_late" and report.state == "late", result.message
    send(mailstack, mailbox)
    result, report = _until_counted(runner, "late", 1)
    assert result.reason == "success" and report.state == "ok"
    assert report.windows["late"] == 1 and report.windows["missing"] == 0, report


def test_missing_then_back(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    runner = make_runner(tmp_path, [heartbeat(mailstack, tmp_path, "gone", mailbox, every="2s", grace="1s")])
    _, report = run(runner, "gone")
    _past(report.deadline + 1)
    result, report = run(runner, "gone")
    assert result.reason == "heartbeat_missing" and report.state == "missing", result.message
    assert report.windows["missing"] >= 1
    send(mailstack, mailbox)
    result, report = _until_counted(runner, "gone", 1)
    assert report.state == "ok" and result.success


def test_failure_report_fails_even_though_mail_came(
    mailstack: MailStack, mailbox: str, tmp_path: Path
) -> None:
    entry = heartbeat(mailstack, tmp_path, "backup", mailbox, fail_if=[{"subject": "FAILED"}])
    runner = make_runner(tmp_path, [entry])
    run(runner, "backup")
    send(mailstack, mailbox, "Nightly backup: FAILED (disk full)")
    result, report = _until_counted(runner, "backup", 1)
    assert result.reason == "heartbeat_failed" and report.state == "failed", result.message
    assert report.failed_total == 1 and report.count == 0


def test_restart_counts_nothing_twice(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    entries = [heartbeat(mailstack, tmp_path, "twice", mailbox, expect=3)]
    runner = make_runner(tmp_path, entries)
    run(runner, "twice")
    send(mailstack, mailbox)
    send(mailstack, mailbox)
    _, report = _until_counted(runner, "twice", 2)
    assert report.count == 2
    restarted = make_runner(tmp_path, entries)  # a new daemon on the same state dir
    _, report = run(restarted, "twice")
    assert report.matched_total == 2 and report.count == 2 and report.windows["ok"] == 0
    send(mailstack, mailbox)
    _, report = _until_counted(restarted, "twice", 3)
    assert report.matched_total == 3 and report.windows["ok"] == 1  # the third closed the window
    assert len(list((tmp_path / "state" / "heartbeats").glob("*.json"))) == 1  # one file per mailbox


def test_mark_keyword_and_move_to(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    conn = imap(mailstack, mailbox)
    try:
        conn.create("Reports")
    finally:
        conn.logout()
    entries = [
        heartbeat(
            mailstack, tmp_path, "marked", mailbox, match={"subject": "^Marked"}, mark_keyword="$Heartbeat"
        ),
        heartbeat(mailstack, tmp_path, "moved", mailbox, match={"subject": "^Moved"}, move_to="Reports"),
    ]
    runner = make_runner(tmp_path, entries)
    run(runner, "marked")
    run(runner, "moved")
    marked = send(mailstack, mailbox, "Marked report")
    moved = send(mailstack, mailbox, "Moved report")
    foreign = send(mailstack, mailbox, "Something else", sender="friend@example.net")
    _until_counted(runner, "marked", 1)
    _until_counted(runner, "moved", 1)
    inbox = flags_in(mailstack, mailbox)
    assert "$Heartbeat" in inbox[marked] and "\\Seen" not in inbox[marked]
    assert moved not in inbox and foreign in inbox and inbox[foreign] == ""
    assert moved in flags_in(mailstack, mailbox, "Reports")


def test_body_read_is_bounded(mailstack: MailStack, mailbox: str, tmp_path: Path) -> None:
    entries = [
        heartbeat(mailstack, tmp_path, "head", mailbox, match={"body": "BACKUP-OK"}, body_bytes=4096),
        heartbeat(mailstack, tmp_path, "tail", mailbox, match={"body": "THE-END"}, body_bytes=4096),
    ]
    runner = make_runner(tmp_path, entries)
    run(runner, "head")
    run(runner, "tail")
    filler = ("x" * 76 + "\n") * (5 * 1024 * 1024 // 77)
    send(mailstack, mailbox, "Big report", body="BACKUP-OK\n" + filler + "THE-END\n")
    result, report = _until_counted(runner, "head", 1)
    assert result.success
    _, tail = run(runner, "tail")
    assert tail.matched_total == 0  # its marker is past the cap: never read
    assert report.scanned and 0 < report.body_bytes <= 4096  # of a 5 MB body


async def test_in_the_daemon_metrics_status_page_and_probe_report(
    mailstack: MailStack, mailbox: str, tmp_path: Path
) -> None:
    """The daemon schedules it, /metrics and the status page show it, ``mailcanary probe`` reports it."""
    entry = heartbeat(mailstack, tmp_path, "report", mailbox, interval="1s", fail_if=[{"subject": "FAILED"}])
    path = write_config(tmp_path, [entry])
    daemon = Daemon(str(path), "127.0.0.1:0")
    await daemon.start()
    try:
        host, port = daemon.http.bound[0]

        async def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://{host}:{port}/metrics") as resp,
            ):
                text = await resp.text()
            return {
                (s.name, frozenset(s.labels.items())): s.value
                for fam in text_string_to_metric_families(text)
                for s in fam.samples
            }

        def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
            return (name, frozenset({"probe": "report", **labels}.items()))

        await eventually_async(
            scrape,
            until=lambda got: key("mailcanary_heartbeat_success") in got,
            timeout=60,
            message="a first run",
        )
        await asyncio.to_thread(send, mailstack, mailbox)
        got = await eventually_async(
            scrape,
            until=lambda got: got.get(key("mailcanary_heartbeat_matched_total")) == 1,
            timeout=60,
            message="the mail counted",
        )
        assert got[key("mailcanary_heartbeat_state", state="ok")] == 1
        assert got[key("mailcanary_heartbeat_state", state="missing")] == 0
        assert got[key("mailcanary_heartbeat_windows_total", result="ok")] == 1
        assert got[key("mailcanary_heartbeat_expected")] == 1
        assert got[key("mailcanary_heartbeat_last_seen_timestamp_seconds")] > 0
        assert got[key("mailcanary_heartbeat_runs_total", outcome="heartbeat_missing")] == 0
        assert got[("mailcanary_config_probes", frozenset({"kind": "heartbeat"}.items()))] == 1
        await asyncio.to_thread(send, mailstack, mailbox, "Nightly backup: FAILED")
        got = await eventually_async(
            scrape,
            until=lambda got: got.get(key("mailcanary_heartbeat_state", state="failed")) == 1,
            timeout=60,
            message="the failure report seen",
        )
        assert (
            got[key("mailcanary_heartbeat_success")] == 0
            and got[key("mailcanary_heartbeat_failed_total")] == 1
        )
        async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}/") as resp:
            page = await resp.text()
        assert 'data-probe="report" data-kind="heartbeat" data-outcome="heartbeat_failed"' in page
        assert "failed: 0 of 1 in this window, due" in page
    finally:
        await daemon.shutdown()
    # the one-shot report (a new process's state: same state dir, nothing counted twice)
    args = build_parser().parse_args(["probe", "--config", str(path), "report"])
    buf = io.StringIO()
    assert await run_probe(args, buf) == 2
    out = buf.getvalue()
    assert "report: FAILED heartbeat_failed" in out and "state: failed" in out, out
    assert "counted 2, failure reports 1" in out and "read: 0 new messages" in out, out


def test_a_mailbox_that_cannot_be_read_never_turns_missing(
    mailstack: MailStack, mailbox: str, tmp_path: Path
) -> None:
    good = heartbeat(mailstack, tmp_path, "blind", mailbox, every="2s", grace="1s")
    _, report = run(make_runner(tmp_path, [good]), "blind")
    read_at = report.evaluated_at
    assert read_at is not None
    _past(report.deadline + 2)  # the window is over: had it been read, it would be missing now
    (tmp_path / "wrong.pw").write_text("not-the-password\n")
    bad = {**good, "imap": {**good["imap"], "password_file": str(tmp_path / "wrong.pw")}}
    result, report = run(make_runner(tmp_path, [bad]), "blind")
    assert result.reason == "receive_auth" and not result.success, result.message
    assert report.state == "ok" and report.evaluated_at == read_at  # as of the last good read
    assert "mailbox not read" in result.message


def test_a_foreign_mail_with_a_huge_header_neither_fails_nor_jams(
    mailstack: MailStack, mailbox: str, tmp_path: Path
) -> None:
    runner = make_runner(tmp_path, [heartbeat(mailstack, tmp_path, "robust", mailbox)])
    run(runner, "robust")
    huge = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 900) for i in range(300))  # ~270 KB of header
    mailstack.inject(mailbox, b"From: junk@example.net\r\nSubject: noise\r\n" + huge + b"\r\nbody\r\n")
    send(mailstack, mailbox)
    result, report = _until_counted(runner, "robust", 1)
    assert result.success, result.message
    assert report.matched_total == 1


def test_idle_keeps_one_session_and_the_server_push_is_counted(
    mailstack: MailStack, mailbox: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one event loop (as in the daemon): the first read logs in and leaves the session in IDLE; a
    read with nothing pushed needs no login and no search; a delivered mail is pushed and counted."""
    monkeypatch.setattr(heartbeats, "REUSE", 0.0)  # every run reads (no reuse of a read just made)
    runner = make_runner(tmp_path, [heartbeat(mailstack, tmp_path, "pushed", mailbox, every="1h")])
    entry = runner.loaded.config.heartbeats[0]

    async def scenario() -> None:
        first = await runner.run_entry(entry)
        assert first.success and "receive_login" in first.phases, first.message
        quiet = await runner.run_entry(entry)
        assert isinstance(quiet.detail, HeartbeatReport)
        assert quiet.detail.quiet and quiet.detail.reused and "receive_login" not in quiet.phases
        await asyncio.to_thread(send, mailstack, mailbox)

        async def counted() -> HeartbeatReport:
            got = await runner.run_entry(entry)
            assert isinstance(got.detail, HeartbeatReport), got.message
            return got.detail

        report = await eventually_async(
            counted, until=lambda r: r.matched_total == 1, timeout=60, message="the pushed mail counted"
        )
        assert report.reused and not report.quiet and report.state == "ok"
        box = next(iter(book_for(runner).boxes.values()))
        assert box.keeper.holding
        await box.keeper.close()

    asyncio.run(scenario())


def test_a_due_window_is_judged_on_a_real_search_not_on_idle(
    mailstack: MailStack, mailbox: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heartbeats, "REUSE", 0.0)
    runner = make_runner(tmp_path, [heartbeat(mailstack, tmp_path, "due", mailbox, every="3s", grace="60s")])
    entry = runner.loaded.config.heartbeats[0]

    async def scenario() -> None:
        first = await runner.run_entry(entry)
        assert isinstance(first.detail, HeartbeatReport)
        deadline = first.detail.deadline
        await eventually_async(
            lambda: asyncio.sleep(0.1, time.time()), until=lambda now: now > deadline, timeout=60
        )
        late = await runner.run_entry(entry)
        assert isinstance(late.detail, HeartbeatReport)
        assert late.reason == "heartbeat_late" and late.detail.reused and not late.detail.quiet
        await next(iter(book_for(runner).boxes.values())).keeper.close()

    asyncio.run(scenario())
