"""The heartbeats' state: one small file per mailbox (``state_dir/heartbeats/<hash>.json``) holding, per
heartbeat on that mailbox, its open window, last seen time, totals and the mails it counted (UIDVALIDITY
+ UID, and Message-ID as the fallback when a folder's UIDVALIDITY changes), and each folder's cursor
and the time of the last good read.

One file per mailbox because a read of a mailbox is one transaction: its file is locked (``flock`` on
``<hash>.json.lock``, so a daemon and a one-shot ``mailcanary probe`` sharing the state dir never
overwrite each other's counts), re-read if another process wrote it, the mailbox scanned, the file saved
— and a slow mailbox never holds up another's. Saves are atomic (temporary file, fsync, rename, fsync of
the directory): a crash leaves the old or the new file, never half of one. Bounded: counted mails
remembered per heartbeat (MAX_KEYS), the file's size (MAX_BYTES). Errors are state errors like the
ledger's (``mailcanary_state_errors_total{file="heartbeats"}``); a corrupt file is moved aside, never
overwritten; while a file cannot be saved, memory is authoritative and the next save tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from exporter.state.ledger import StateHealth
from probes.heartbeats import Cursor, Heartbeat, Keeper, Match, Schedule

FILE: Final = "heartbeats"
VERSION: Final = 1
MAX_BYTES: Final = 4 * 1024 * 1024
MAX_KEYS: Final = 500  # counted mails remembered per heartbeat (UIDs and Message-IDs each)
LOCK_POLL: Final = 0.05  # seconds between tries for a file lock another process holds
QUIET_SAVE: Final = 60.0  # seconds: a read that changed nothing but its time is saved at most this often


@dataclass
class Entry:
    heartbeat: Heartbeat
    spec: str  # the schedule it was made for: a changed schedule starts a new window
    keys: list[str] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)


def spec_of(schedule: Schedule, expect: int) -> str:
    return json.dumps([schedule.every, schedule.cron, schedule.timezone, schedule.grace, expect])


def _identity(path: Path) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class MailboxState:
    """One mailbox's heartbeats and cursors, in memory and in ``path`` (None: memory only)."""

    def __init__(self, key: str, path: Path | None, health: StateHealth) -> None:
        self.key = key
        self.path = path
        self.health = health
        self.entries: dict[str, Entry] = {}
        self.cursors: dict[str, Cursor] = {}
        self.last_read: float | None = None  # when the last scan that read every folder finished
        self.read_here: float | None = None  # the same, by this process (not saved: a new one reads anew)
        self.keeper = Keeper()  # the session kept in IDLE between reads (this process only)
        self.saves = 0
        self._seen: tuple[int, ...] | None = None  # the file as we last read or wrote it
        self._dirty = False  # the last save failed: memory is ahead of the file
        self._saved: tuple[bytes, float] | None = None  # what was last saved (without last_read), when

    # -- the file --

    def load(self) -> None:
        """Read the file if another process wrote it since we last did (memory wins while dirty)."""
        if self.path is None or self._dirty:
            return
        seen = _identity(self.path)
        if seen is None or seen == self._seen:
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
            self._seen = seen
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
            with contextlib.suppress(OSError):
                os.replace(self.path, aside)
            self._seen = None
            self.health.error(
                FILE,
                "corrupt",
                f"{self.path} was corrupt ({exc}); moved aside to {aside}",
                "its heartbeats start new windows; what this process knew is kept",
            )

    def _parse(self, data: dict[str, Any]) -> None:
        if data.get("version") != VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {VERSION}")
        entries = {
            str(name): Entry(
                heartbeat=Heartbeat.from_json(e["state"]),
                spec=str(e["spec"]),
                keys=[str(k) for k in e.get("keys", [])][-MAX_KEYS:],
                message_ids=[str(m) for m in e.get("message_ids", [])][-MAX_KEYS:],
            )
            for name, e in dict(data["heartbeats"]).items()
        }
        cursors = {
            str(f): Cursor(None if c[0] is None else int(c[0]), int(c[1]))
            for f, c in dict(data["cursors"]).items()
        }
        last = data.get("last_read")
        self.entries, self.cursors = entries, cursors
        self.last_read = None if last is None else float(last)

    def _dump(self, with_read: bool = True) -> bytes:
        data = {
            "version": VERSION,
            "mailbox": self.key,
            "heartbeats": {
                name: {
                    "state": e.heartbeat.to_json(),
                    "spec": e.spec,
                    "keys": e.keys[-MAX_KEYS:],
                    "message_ids": e.message_ids[-MAX_KEYS:],
                }
                for name, e in sorted(self.entries.items())
            },
            "cursors": {f: [c.uidvalidity, c.last_uid] for f, c in sorted(self.cursors.items())},
            "last_read": self.last_read if with_read else None,
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
            self._dirty = True
            self.health.error(
                FILE,
                "write",
                f"cannot save {self.path}: {exc.strerror or exc}",
                f"free disk space and make {self.path.parent} writable; until then heartbeat state is kept "
                "in memory only (a restart may count mail again)",
            )
        else:
            self._dirty = False
            self._seen = _identity(self.path)
            self.health.ok(FILE)
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    async def save(self) -> None:
        """Write the whole file off the event loop (atomic: temporary file, fsync, rename). A read that
        changed nothing but the time of the last read is written at most every QUIET_SAVE seconds."""
        if self.path is None:
            return
        body, now = self._dump(with_read=False), time.monotonic()
        if not self._dirty and self._saved is not None:
            same, when = self._saved
            if same == body and now - when < QUIET_SAVE:
                return
        self.saves += 1
        await asyncio.to_thread(self._save_now, self._dump())
        if not self._dirty:
            self._saved = (body, now)

    def _try_lock(self) -> int | None:
        """The file lock if free now (-1: it cannot be had at all, e.g. an unwritable state dir)."""
        assert self.path is not None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return -1  # the save below fails and says so
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            return -1
        return fd

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[None]:
        """The mailbox's file lock (waiting while another process reads this mailbox), with the file
        re-read if it changed. Polled, never a blocked thread: a run cut short leaves no lock behind."""
        fd: int | None = None
        if self.path is not None:
            while (fd := self._try_lock()) is None:  # noqa: ASYNC110 (another process: no event to await)
                await asyncio.sleep(LOCK_POLL)
        try:
            self.load()
            yield
        finally:
            if fd is not None and fd >= 0:
                os.close(fd)

    # -- heartbeats --

    def ensure(self, name: str, schedule: Schedule, expect: int, now: float) -> Entry:
        """The heartbeat's entry; a new one (or one whose schedule changed) starts its window now."""
        spec = spec_of(schedule, expect)
        e = self.entries.get(name)
        if e is None:
            e = self.entries[name] = Entry(Heartbeat.new(schedule, now), spec)
        elif e.spec != spec:
            fresh = Heartbeat.new(schedule, now)
            old = e.heartbeat
            fresh.last_seen, fresh.matched_total = old.last_seen, old.matched_total
            fresh.failed_total, fresh.windows = old.failed_total, old.windows
            e.heartbeat, e.spec = fresh, spec
        return e

    def prune(self, keep: Iterable[str]) -> None:
        """Forget heartbeats no longer configured on this mailbox."""
        names = set(keep)
        for name in [n for n in self.entries if n not in names]:
            del self.entries[name]

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


class HeartbeatBook:
    """Every mailbox's state of one daemon (or one ``mailcanary probe``), under ``directory``."""

    def __init__(self, directory: Path | None, health: StateHealth) -> None:
        self.directory = directory
        self.health = health
        self.boxes: dict[str, MailboxState] = {}
        self.locks: dict[tuple[str, int], asyncio.Lock] = {}

    def box(self, key: str) -> MailboxState:
        found = self.boxes.get(key)
        if found is None:
            name = hashlib.sha256(key.encode()).hexdigest()[:20] + ".json"
            path = self.directory / name if self.directory is not None else None
            found = self.boxes[key] = MailboxState(key, path, self.health)
            found.load()
        return found

    def lock(self, key: str) -> asyncio.Lock:
        """One read of a mailbox at a time in this process (per event loop)."""
        slot = (key, id(asyncio.get_running_loop()))
        found = self.locks.get(slot)
        if found is None:
            found = self.locks[slot] = asyncio.Lock()
        return found

    def prune(self, keys: Iterable[str]) -> None:
        """Forget (in memory) mailboxes no longer configured; their files stay as they are."""
        keep = set(keys)
        for key in [k for k in self.boxes if k not in keep]:
            del self.boxes[key]
