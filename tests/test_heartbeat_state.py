"""The heartbeats' state files: one per mailbox, atomic, re-read when another process wrote it, a
corrupt one moved aside and counted as a state error, bounded memory of counted mails."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from exporter.state.heartbeats import MAX_KEYS, HeartbeatBook
from exporter.state.ledger import StateHealth
from probes.heartbeats import Match, Schedule

EVERY = Schedule(grace=10, every=3600)
SPECS = {"hb": (EVERY, 5)}


def match(uid: int, mid: str | None = None, arrival: float = 1000.0) -> Match:
    return Match("hb", "INBOX", 7, uid, mid, arrival, "success", "report")


async def _count(book: HeartbeatBook, *matches: Match) -> list[Match]:
    box = book.box("u@h:993")
    async with box.locked():
        box.ensure("hb", EVERY, 5, 900.0)
        new = box.record(list(matches), SPECS)
        await box.save()
    return new


def test_counted_once_across_processes_sharing_the_state_dir(tmp_path: Path) -> None:
    daemon, oneshot = HeartbeatBook(tmp_path, StateHealth()), HeartbeatBook(tmp_path, StateHealth())
    assert asyncio.run(_count(daemon, match(1, "<a@x>"))) == [match(1, "<a@x>")]
    # the other process re-reads the file under the lock: the same mail is not counted again, even under
    # another UID (a rebuilt folder), by its Message-ID
    assert asyncio.run(_count(oneshot, match(1, "<a@x>"), match(9, "<a@x>"), match(2, "<b@x>"))) == [
        match(2, "<b@x>")
    ]
    assert asyncio.run(_count(daemon)) == []
    box = daemon.box("u@h:993")
    assert box.entries["hb"].heartbeat.matched_total == 2 and box.entries["hb"].heartbeat.window.count == 2
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["mailbox"] == "u@h:993"
    assert not list(tmp_path.glob(".heartbeats-*"))  # no temporary file left


def test_corrupt_file_is_moved_aside_and_counted(tmp_path: Path) -> None:
    health = StateHealth()
    asyncio.run(_count(HeartbeatBook(tmp_path, health), match(1)))
    path = next(tmp_path.glob("*.json"))
    path.write_text("{not json")
    fresh = HeartbeatBook(tmp_path, health)
    box = fresh.box("u@h:993")
    assert box.entries == {} and health.errors[("heartbeats", "corrupt")] == 1
    assert list(tmp_path.glob("*.json.corrupt-*")) and not path.exists()
    assert asyncio.run(_count(fresh, match(2))) == [match(2)]  # and it starts again


def test_counted_mails_remembered_are_bounded(tmp_path: Path) -> None:
    book = HeartbeatBook(tmp_path, StateHealth())
    asyncio.run(_count(book, *(match(u, f"<{u}@x>", arrival=1000.0 + u) for u in range(1, MAX_KEYS + 50))))
    entry = book.box("u@h:993").entries["hb"]
    assert len(entry.keys) == MAX_KEYS and len(entry.message_ids) == MAX_KEYS


def test_settings_group_a_mailbox_and_take_oauth(tmp_path: Path) -> None:
    """Heartbeats on one login share one mailbox (one session per read); OAuth is the receive side's."""
    from exporter.kinds.heartbeats import heartbeat_settings
    from tests.support.heartbeats import make_runner

    (tmp_path / "tok").write_text('{"access_token": "t"}')
    (tmp_path / "pw").write_text("secret\n")
    imap = {"host": "imap.example.com", "tls": "implicit", "username": "r@example.com"}
    entries = [
        {
            "name": "a",
            "imap": {**imap, "oauth": {"token_file": str(tmp_path / "tok")}},
            "match": {"subject": "a"},
        },
        {"name": "b", "imap": {**imap, "password_file": str(tmp_path / "pw")}, "match": {"subject": "b"}},
        {
            "name": "c",
            "imap": {**imap, "username": "o@example.com", "password_file": str(tmp_path / "pw")},
            "match": {"subject": "c"},
        },
    ]
    for e in entries:
        e.update(every="1h", grace="5m")
    runner = make_runner(tmp_path, entries)
    a, b, c = (heartbeat_settings(h, runner) for h in runner.loaded.config.heartbeats)
    assert a.key == b.key != c.key
    assert [w.name for w in a.mailbox.heartbeats] == ["a", "b"] and set(a.specs) == {"a", "b"}
    assert a.mailbox.imap.credentials.token_source is not None
    assert b.mailbox.imap.credentials.token_source is None
    assert a.book is b.book is c.book  # one state per daemon


def test_a_kept_session_never_takes_the_last_slots() -> None:
    """A session kept in IDLE holds a slot: only while the server's pools are at most half full."""
    from probes.heartbeats.mailbox import _room
    from probes.wire.net import Endpoint
    from probes.wire.slots import ServerSlots

    ep = Endpoint(host="imap.example.com", port=993, tls_mode="implicit")
    slots = ServerSlots(default_limit=4)
    assert _room(slots, ep) and _room(None, ep)

    async def hold(n: int) -> bool:
        from probes.recorder import Recorder

        async with slots.session(ep, "imap", Recorder(), count=n):
            return _room(slots, ep)

    assert asyncio.run(hold(2))  # 2 of 4 in use: half, still room
    assert not asyncio.run(hold(3))  # 3 of 4: no session is kept
