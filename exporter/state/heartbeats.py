"""The heartbeats' state file (``heartbeats.json`` in the state dir): per heartbeat its open window,
last seen time, totals and the mails it counted (UIDVALIDITY + UID, and Message-ID as a fallback when
a folder's UIDVALIDITY changes), per mailbox each folder's cursor and the time of the last good read.

Small and of its own (not the ledger: nothing here is write-ahead): written whole after each read that
changed it, to a temporary file that is fsynced and renamed into place, so a crash leaves the old or the
new file, never half of one. Bounded: counted mails remembered per heartbeat (MAX_KEYS) and the file's
size (MAX_BYTES). Errors are state errors like the ledger's (``mailcanary_state_errors_total{file=
"heartbeats"}``); a corrupt file is moved aside, never overwritten; while the file cannot be saved,
memory is authoritative (and the next save tries again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from exporter.state.ledger import StateHealth
from probes.heartbeats import Cursor, Heartbeat, Match, Schedule

FILE: Final = "heartbeats"
VERSION: Final = 1
MAX_BYTES: Final = 16 * 1024 * 1024
MAX_KEYS: Final = 500  # counted mails remembered per heartbeat (UIDs and Message-IDs each)


@dataclass
class Entry:
    heartbeat: Heartbeat
    spec: str  # the schedule it was made for: a changed schedule starts a new window
    keys: list[str] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)


@dataclass
class Mailbox:
    cursors: dict[str, Cursor] = field(default_factory=dict)
    last_read: float | None = None  # when the last scan that read every folder finished
    read_here: float | None = None  # the same, by this process (not saved: a new process reads anew)


def spec_of(schedule: Schedule, expect: int) -> str:
    return json.dumps([schedule.every, schedule.cron, schedule.timezone, schedule.grace, expect])


class HeartbeatBook:
    """The state of every heartbeat of one daemon, in memory and in ``path`` (None: memory only)."""

    def __init__(self, path: Path | None, health: StateHealth) -> None:
        self.path = path
        self.health = health
        self.entries: dict[str, Entry] = {}
        self.mailboxes: dict[str, Mailbox] = {}
        self.locks: dict[tuple[str, int], asyncio.Lock] = {}
        self.saves = 0
        self._load()

    # -- file --

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read(MAX_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.health.error(
                FILE,
                "read",
                f"cannot read {self.path}: {exc.strerror or exc}",
                "make it readable by this user",
            )
            return
        try:
            if len(raw) > MAX_BYTES:
                raise ValueError(f"bigger than {MAX_BYTES} bytes")
            self._parse(json.loads(raw))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.entries, self.mailboxes = {}, {}
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            self.health.error(
                FILE,
                "corrupt",
                f"{self.path} was corrupt ({exc}); moved aside to {aside}",
                "heartbeats start new windows; mail already counted may be counted again once",
            )

    def _parse(self, data: dict[str, Any]) -> None:
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
        for name, e in dict(data["heartbeats"]).items():
            self.entries[str(name)] = Entry(
                heartbeat=Heartbeat.from_json(e["state"]),
                spec=str(e["spec"]),
                keys=[str(k) for k in e.get("keys", [])][-MAX_KEYS:],
                message_ids=[str(m) for m in e.get("message_ids", [])][-MAX_KEYS:],
            )
        for key, m in dict(data["mailboxes"]).items():
            cursors = {
                str(f): Cursor(None if c[0] is None else int(c[0]), int(c[1]))
                for f, c in dict(m["cursors"]).items()
            }
            last = m.get("last_read")
            self.mailboxes[str(key)] = Mailbox(cursors, None if last is None else float(last))

    def _dump(self) -> bytes:
        data = {
            "version": VERSION,
            "heartbeats": {
                name: {
                    "state": e.heartbeat.to_json(),
                    "spec": e.spec,
                    "keys": e.keys[-MAX_KEYS:],
                    "message_ids": e.message_ids[-MAX_KEYS:],
                }
                for name, e in sorted(self.entries.items())
            },
            "mailboxes": {
                key: {
                    "cursors": {f: [c.uidvalidity, c.last_uid] for f, c in sorted(m.cursors.items())},
                    "last_read": m.last_read,
                }
                for key, m in sorted(self.mailboxes.items())
            },
        }
        return json.dumps(data, separators=(",", ":")).encode()

    def _save_now(self, data: bytes) -> None:
        assert self.path is not None
        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".heartbeats-", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            tmp = None
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            self.health.error(
                FILE,
                "write",
                f"cannot save {self.path}: {exc.strerror or exc}",
                f"free disk space and make {self.path.parent} writable; until then heartbeat state is kept "
                "in "
                "memory only (a restart may count mail again)",
            )
        else:
            self.health.ok(FILE)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    async def save(self) -> None:
        """Write the whole file off the event loop (atomic: temporary file, fsync, rename)."""
        self.saves += 1
        if self.path is not None:
            await asyncio.to_thread(self._save_now, self._dump())

    # -- heartbeats --

    def lock(self, mailbox: str) -> asyncio.Lock:
        """One scan of a mailbox at a time (per event loop: ``mailcanary probe`` runs its own)."""
        key = (mailbox, id(asyncio.get_running_loop()))
        found = self.locks.get(key)
        if found is None:
            found = self.locks[key] = asyncio.Lock()
        return found

    def mailbox(self, key: str) -> Mailbox:
        found = self.mailboxes.get(key)
        if found is None:
            found = self.mailboxes[key] = Mailbox()
        return found

    def ensure(self, name: str, schedule: Schedule, expect: int, now: float) -> Entry:
        """The heartbeat's entry; a new one (or one whose schedule changed) starts its window now."""
        spec = spec_of(schedule, expect)
        e = self.entries.get(name)
        if e is None:
            e = self.entries[name] = Entry(Heartbeat.new(schedule, now), spec)
        elif e.spec != spec:
            fresh = Heartbeat.new(schedule, now)
            old = e.heartbeat
            fresh.last_seen, fresh.matched_total, fresh.failed_total = (
                old.last_seen,
                old.matched_total,
                old.failed_total,
            )
            fresh.windows = old.windows
            e.heartbeat, e.spec = fresh, spec
        return e

    def prune(self, keep: Iterable[str], mailboxes: Iterable[str]) -> None:
        """Forget heartbeats and mailboxes no longer configured (bounded by the config)."""
        names, boxes = set(keep), set(mailboxes)
        for name in [n for n in self.entries if n not in names]:
            del self.entries[name]
        for key in [k for k in self.mailboxes if k not in boxes]:
            del self.mailboxes[key]

    def record(self, matches: list[Match], specs: dict[str, tuple[Schedule, int]]) -> list[Match]:
        """Count each match not counted before (by UIDVALIDITY + UID, else Message-ID), in arrival order;
        returns those newly counted."""
        new: list[Match] = []
        for m in sorted(matches, key=lambda m: (m.arrival, m.uid)):
            e = self.entries.get(m.heartbeat)
            spec = specs.get(m.heartbeat)
            if e is None or spec is None:
                continue
            if m.key in e.keys or (m.message_id is not None and m.message_id in e.message_ids):
                continue
            schedule, expect = spec
            e.heartbeat.count(schedule, expect, m.arrival, m.outcome == "failure")
            e.keys = [*e.keys, m.key][-MAX_KEYS:]
            if m.message_id is not None:
                e.message_ids = [*e.message_ids, m.message_id][-MAX_KEYS:]
            new.append(m)
        return new
