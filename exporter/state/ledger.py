"""State that must outlive a restart: the canary HMAC key and the write-ahead ledger of canaries.

The ledger is written *ahead*: a canary is recorded (durably) before its message is sent and marked
accepted once the SMTP server took it, so a daemon killed in the middle of a run still knows, after a
restart, which canary it was waiting for: when that canary turns up it is counted late, and if it never
does it is counted lost, as if the daemon had never died. File I/O happens on one writer thread (never on
the event loop); requests that arrive together share one locked transaction and one ``fdatasync``.

The file is a journal (version 3): its first line is a snapshot of every entry, each further line one
change (an entry set or dropped), appended and ``fdatasync``ed once per transaction; past a bound it is
compacted (a new snapshot written to a temp file, fsynced and renamed into place). A crash mid-append
leaves a torn last line, which is ignored (it was never acknowledged) and cut off before the next append.
Version 2 and 1 files (one JSON object) are read and rewritten as a journal on the first save.

Failures to read or save state are never silent: they are counted (``mailcanary_state_errors_total``),
shown by ``mailcanary_state_writable``, and logged once with what to do. A corrupt ledger is moved aside,
never overwritten.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import json
import os
import queue
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.config import ConfigError
from probes.canary import MIN_KEY_BYTES, Token

log = structlog.get_logger("mailcanary.state")
R = TypeVar("R")

LEDGER_MAX_AGE = 7 * 86400.0  # a canary not seen within a week is forgotten whatever lost_after says
LEDGER_VERSION = 3  # the journal; 2 (one JSON object with "version": 2) and 1 (no version) are read
MAX_LEDGER_BYTES = 16 * 1024 * 1024  # a bigger "ledger" is not ours: moved aside as corrupt
JOURNAL_MIN_BYTES = 64 * 1024  # the journal is compacted once it is past this and 4x its snapshot
MAX_ENTRIES_PER_PROBE = 1000  # canaries remembered per probe; the oldest unowned ones go first
MAX_SESSION_SCAN = 1000  # session lock files looked at per start when cleaning up after dead processes
LEDGER_WAIT = 10.0  # seconds a run waits for the ledger (a hung disk must not hang probes)

# Entry states. Owned by a live run: "sending" (recorded before DATA), "accepted" (the server took it).
# Owned by no run (its run failed, was cancelled or died): "waiting" (accepted: late if seen, lost when
# too old) and "unsure" (its run died before the server answered: late if seen, forgotten when too old).
STATES = ("sending", "accepted", "waiting", "unsure")
_SESSION_RE = re.compile(r"^[0-9a-f]{16}$")


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _identity(st: os.stat_result) -> tuple[int, ...]:
    """What tells one version of the ledger file from another without reading it."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _hand_over(done: concurrent.futures.Future[R], waiter: asyncio.Future[R]) -> None:
    """On the loop: give the writer thread's answer to the waiting run, unless it stopped waiting."""
    if waiter.done():
        return
    exc = done.exception()
    if exc is not None:
        waiter.set_exception(exc)
    else:
        waiter.set_result(done.result())


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


# ---- health: state errors, counted, shown and logged once ---------------------------------------------


class StateHealth:
    """Counts state errors per (file, kind) and logs each kind once until it is over.

    ``kind`` is one of ``corrupt`` (moved aside), ``read`` (exists but cannot be read), ``write`` (cannot
    be saved), ``slow`` (the disk did not answer within LEDGER_WAIT). Thread-safe: the writer thread
    reports here.
    """

    FILES = ("ledger", "key", "heartbeats")
    KINDS = ("corrupt", "read", "write", "slow")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.errors: dict[tuple[str, str], int] = {(f, k): 0 for f in self.FILES for k in self.KINDS}
        self._active: set[tuple[str, str]] = set()

    def error(self, file: str, kind: str, problem: str, action: str) -> None:
        with self._lock:
            self.errors[(file, kind)] = self.errors.get((file, kind), 0) + 1
            first = (file, kind) not in self._active
            if kind != "corrupt":  # a corrupt file is moved aside: each one is news
                self._active.add((file, kind))
        if first:
            log.error("state_error", file=file, kind=kind, problem=problem, action=action)

    def ok(self, file: str) -> None:
        """State of ``file`` saved again: the next failure is logged again."""
        with self._lock:
            over = {a for a in self._active if a[0] == file}
            self._active -= over
        if over:
            log.info("state_recovered", file=file, was=sorted(k for _, k in over))

    @property
    def writable(self) -> bool:
        with self._lock:
            return not any(k in ("read", "write") for _, k in self._active)


class StateCollector(Collector):
    """``mailcanary_state_errors_total{file,kind}`` and ``mailcanary_state_writable``."""

    def __init__(self, health: StateHealth, labels: Callable[[], dict[str, str]] = dict) -> None:
        self.health = health
        self.labels = labels  # extra labels on every series (vantage)

    def collect(self) -> Iterator[Metric]:
        extra = self.labels()
        names = sorted(extra)
        errors = CounterMetricFamily(
            "mailcanary_state_errors",
            "State (ledger, canary key) that could not be read or saved, or was corrupt, by file and kind.",
            labels=["file", "kind", *names],
        )
        for (file, kind), count in sorted(self.health.errors.items()):
            errors.add_metric([file, kind, *(extra[n] for n in names)], count)
        writable = GaugeMetricFamily(
            "mailcanary_state_writable",
            "1 while the ledger is saved, 0 while it cannot be (late/lost accounting in memory only).",
            labels=names,
        )
        writable.add_metric([extra[n] for n in names], 1 if self.health.writable else 0)
        yield errors
        yield writable


# ---- the canary key --------------------------------------------------------------------------------------


def _short_key(path: Path | str, size: int, config_key: str, config_path: str, generated: bool) -> str:
    if generated:
        return (
            f"{config_path}: {config_key}: {path} holds {size} bytes, too short to be a key (cut short, "
            f"e.g. by a full disk?); delete {path} to have a new one generated"
        )
    return (
        f"{config_path}: {config_key}: {path} holds {size} bytes; need at least {MIN_KEY_BYTES} "
        f"(e.g. `openssl rand -hex 32 > {path}`)"
    )


def key_problem(key_file: str | None, state: Path, config_path: str) -> str | None:
    """What ``load_or_create_key`` would refuse, checked without creating anything (``check-config``)."""
    if key_file is not None:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as exc:
            return f"{config_path}: global.canary_key_file: cannot read {key_file}: {_why(exc)}"
        if len(key) < MIN_KEY_BYTES:
            return _short_key(key_file, len(key), "global.canary_key_file", config_path, generated=False)
        return None
    path = state / "canary.key"
    try:
        key = path.read_bytes().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None  # generated on first start (whether the directory can be made is checked apart)
    except OSError as exc:
        return f"{config_path}: global.state_dir: cannot read {path}: {_why(exc)}"
    if len(key) < MIN_KEY_BYTES:
        return _short_key(path, len(key), "global.state_dir", config_path, generated=True)
    return None


def load_or_create_key(
    key_file: str | None, state: Path, config_path: str, health: StateHealth | None = None
) -> bytes:
    """The key from ``canary_key_file``, else from the state dir, generated there on first use.

    Every instance that shares the key recognises (and may clean up) the others' canaries, so share it
    between instances that watch the same mailbox, and only between those. A generated key is written
    to a temporary file, fsynced and then linked into place, so a full disk never leaves a short key.
    """
    problem = key_problem(key_file, state, config_path)
    if problem is not None:
        if health is not None:
            health.error("key", "read", problem, "see the problem text")
        raise ConfigError([problem])
    if key_file is not None:
        key = Path(key_file).read_bytes().strip()
        if health is not None:
            health.ok("key")
        return key
    path = state / "canary.key"
    tmp: str | None = None
    try:
        _private_dir(state)
        if path.exists():
            if health is not None:
                health.ok("key")
            return path.read_bytes().strip()
        fd, tmp = tempfile.mkstemp(dir=state, prefix=".canary-key-", suffix=".tmp")
        key = secrets.token_hex(32).encode()
        with os.fdopen(fd, "wb") as fh:
            fh.write(key + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # atomic and never replaces: a key made meanwhile by another process wins
        except FileExistsError:
            key = path.read_bytes().strip()
        _fsync_dir(state)
        if health is not None:
            health.ok("key")
        return key
    except OSError as exc:
        problem = f"{config_path}: global.state_dir: cannot keep the canary key in {state}: {_why(exc)}"
        if health is not None:
            health.error("key", "write", problem, f"make {state} writable and free disk space")
        raise ConfigError([problem]) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


# ---- the ledger ------------------------------------------------------------------------------------------


@dataclass
class Entry:
    sent: float  # unix seconds the canary was made
    state: str  # one of STATES
    session: str | None = None  # the live run's session while owned, else None

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "state": self.state, "session": self.session}


Entries = dict[str, dict[str, Entry]]


def _entry(item: object) -> Entry | None:
    if not isinstance(item, dict):
        return None
    sent, state, session = item.get("sent"), item.get("state"), item.get("session")
    if (
        isinstance(sent, int | float)
        and not isinstance(sent, bool)
        and state in STATES
        and (session is None or (isinstance(session, str) and _SESSION_RE.match(session)))
    ):
        return Entry(float(sent), str(state), session)
    return None


def _parse_object(data: object, versions: tuple[int | None, ...]) -> tuple[Entries, str | None]:
    """A snapshot: ``{"version": N, "probes": {probe: {nonce: {sent, state, session}}}}`` (N in
    ``versions``), or the version 1 form ``{probe: {nonce: sent}}`` (all waiting)."""
    if not isinstance(data, dict):
        return {}, f"a JSON {type(data).__name__}, not an object"
    version = data.get("version")
    probes: object = data.get("probes") if version is not None else data
    if version not in versions or not isinstance(probes, dict):
        return {}, "not a mailcanary ledger"
    out: Entries = {}
    bad = 0
    for probe, items in probes.items():
        if not isinstance(items, dict):
            bad += 1
            continue
        for nonce, item in items.items():
            entry: Entry | None = None
            if version is None and isinstance(item, int | float) and not isinstance(item, bool):
                entry = Entry(float(item), "waiting")
            else:
                entry = _entry(item) if version is not None else None
            if entry is None:
                bad += 1
            else:
                out.setdefault(str(probe), {})[str(nonce)] = entry
    return out, (f"{bad} entries of the wrong type" if bad else None)


def _apply(entries: Entries, line: bytes) -> bool:
    """Apply one journal line (``["set", probe, nonce, {sent, state, session}]`` or
    ``["del", probe, nonce]``) to ``entries``; False if it is not one."""
    try:
        rec = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        return False
    if not isinstance(rec, list) or len(rec) < 3 or not all(isinstance(x, str) for x in rec[:3]):
        return False
    op, probe, nonce = rec[0], rec[1], rec[2]
    if op == "del" and len(rec) == 3:
        items = entries.get(probe)
        if items is not None:
            items.pop(nonce, None)
            if not items:
                del entries[probe]
        return True
    entry = _entry(rec[3]) if op == "set" and len(rec) == 4 else None
    if entry is None:
        return False
    entries.setdefault(probe, {})[nonce] = entry
    return True


@dataclass
class _Parsed:
    entries: Entries
    why: str | None  # why the file is corrupt (entries: what could be salvaged), None if good
    end: int  # bytes of complete, good lines: appends go here (a torn last line past it is cut off)
    journal: bool  # a version 3 journal (appendable); else an old format, rewritten on the next save
    snapshot: int  # bytes of the snapshot line (the compaction bound grows with it)


def _parse(raw: bytes) -> _Parsed:
    """The ledger file: a version 3 journal, or a version 2 / 1 object (read, then rewritten).

    A last line without its newline is a torn append (the writer died mid-write; nobody was told it
    was saved): ignored. Any other bad line makes the file corrupt (the entries before it are kept)."""
    first, nl, _ = raw.partition(b"\n")
    head: object = None
    head_error: str | None = None
    try:
        head = json.loads(first)
    except (UnicodeDecodeError, ValueError) as exc:
        head_error = f"not JSON ({type(exc).__name__})"
    if head_error is None and isinstance(head, dict) and head.get("version") == LEDGER_VERSION:
        entries, why = _parse_object(head, (LEDGER_VERSION,))
        if why is not None:
            return _Parsed(entries, why, 0, False, 0)
        end = len(first) + len(nl)
        if not nl:  # (we always end it with a newline; an edit by hand may not): rewritten on next save
            return _Parsed(entries, None, end, False, end)
        while end < len(raw):
            stop = raw.find(b"\n", end)
            if stop < 0:  # a torn last line: never acknowledged, dropped
                break
            if not _apply(entries, raw[end:stop]):
                return _Parsed(entries, f"bad journal line at byte {end}", end, False, 0)
            end = stop + 1
        return _Parsed(entries, None, end, True, len(first) + 1)
    # One JSON object, possibly over several lines: version 2 or 1.
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return _Parsed({}, head_error or f"not JSON ({type(exc).__name__})", 0, False, 0)
    entries, why = _parse_object(data, (None, 2))
    return _Parsed(entries, why, len(raw), False, len(raw))


def _snapshot(entries: Entries) -> bytes:
    probes = {p: {n: e.to_json() for n, e in sorted(v.items())} for p, v in sorted(entries.items()) if v}
    return json.dumps({"version": LEDGER_VERSION, "probes": probes}, sort_keys=True).encode() + b"\n"


Flat = dict[tuple[str, str], tuple[float, str, str | None]]


def _flat(entries: Entries) -> Flat:
    return {(p, n): (e.sent, e.state, e.session) for p, v in entries.items() for n, e in v.items()}


def _changes(before: Flat, after: Flat) -> bytes:
    """The journal lines that turn ``before`` into ``after`` (one per entry set or dropped)."""
    out = []
    for key, value in after.items():
        if before.get(key) != value:
            sent, state, session = value
            item = {"sent": sent, "state": state, "session": session}
            out.append(json.dumps(["set", key[0], key[1], item]).encode())
    out.extend(json.dumps(["del", *key]).encode() for key in before if key not in after)
    return b"".join(line + b"\n" for line in out)


class _Sessions:
    """Which runs are alive: each Ledger holds an exclusive flock on ``sessions/<id>`` for its lifetime.

    A lock that can be taken belongs to a process that is gone (flock dies with its holder, whatever pid
    a restarted container gets), so that session's canaries are nobody's any more.
    """

    def __init__(self, directory: Path | None) -> None:
        self.dir = directory
        self.id = secrets.token_hex(8)
        self._fd: int | None = None
        self._dead: set[str] = set()

    def register(self) -> None:
        if self.dir is None or self._fd is not None:
            return
        try:
            _private_dir(self.dir)
            # Locked under a name no scan looks at, then renamed: nobody ever sees it unlocked.
            fresh = self.dir / f".{self.id}.new"
            fd = os.open(fresh, os.O_RDONLY | os.O_CREAT, 0o600)  # read-only: flock needs no more
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.rename(fresh, self.dir / self.id)
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
        except OSError:
            return  # state dir unwritable: our entries cannot be saved either, the ledger reports that
        # Lock files of processes that died (kill -9) are removed here, so a crash loop leaves no pile.
        with contextlib.suppress(OSError), os.scandir(self.dir) as found:
            for n, item in enumerate(found):
                if n >= MAX_SESSION_SCAN:
                    break
                if _SESSION_RE.match(item.name):
                    self.alive(item.name)  # unlinks the file of a dead session

    def alive(self, session: str) -> bool:
        if session == self.id:
            return True
        if session in self._dead or self.dir is None or not _SESSION_RE.match(session):
            return False
        try:
            fd = os.open(self.dir / session, os.O_RDONLY)
        except FileNotFoundError:
            self._dead.add(session)
            return False
        except OSError:
            return True  # cannot tell: never take over another run's canary on a guess
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True  # held: that run is alive
        finally:
            os.close(fd)  # (also releases the lock if we got it)
        self._dead.add(session)
        with contextlib.suppress(OSError):
            os.unlink(self.dir / session)
        return False

    def close(self) -> None:
        if self._fd is not None and self.dir is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.dir / self.id)
            os.close(self._fd)
            self._fd = None


Op = Callable[[Entries], Any]


class Ledger:
    """Canaries in flight or overdue, per probe; persisted in ``path`` (None: in memory only).

    Every operation is a function applied to the entries on the writer thread, inside a transaction that
    reads what others wrote under an exclusive lock (``ledger.json.lock``), so a daemon and a one-shot
    ``mailcanary probe`` sharing the state dir keep each other's entries. Operations queued together
    share one transaction: their changes are appended to the journal with one ``fdatasync``. While the
    file cannot be saved, memory is authoritative and every later transaction tries again (a whole
    rewrite, never an append after a failed one).
    """

    def __init__(self, path: Path | None, health: StateHealth | None = None) -> None:
        self.path = path
        self.health = health if health is not None else StateHealth()
        self.sessions = _Sessions(path.parent / "sessions" if path is not None else None)
        self._entries: Entries = {}
        self._dirty = False  # the last save failed: memory is ahead of the file
        self._unsaved = False  # the file could not be read (so was not written): save when it can be
        self._swept_temps = False
        self._seen: tuple[int, ...] | None = None  # identity of the file as last read or written by us
        self._end = 0  # bytes of good journal in that file: the next change is appended there
        self._journal = False  # that file is a version 3 journal (else: rewritten whole on next save)
        self._snapshot_bytes = 0  # its snapshot line's size: compacted past 4x this
        self._queue: queue.SimpleQueue[tuple[Op, concurrent.futures.Future[Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.transactions = 0  # how many read-modify-writes ran (tests and bench read it)
        self.call(lambda entries: None)  # load now: a corrupt file is reported at start, not at first run

    # -- the writer thread --

    def submit(self, op: Callable[[Entries], R]) -> concurrent.futures.Future[R]:
        fut: concurrent.futures.Future[R] = concurrent.futures.Future()
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._work, name="mailcanary-ledger", daemon=True)
                self._thread.start()
            self._queue.put((op, fut))
        return fut

    def call(self, op: Callable[[Entries], R]) -> R:
        """Run ``op`` and wait (blocking): for start-up and tests, never on the event loop's hot path."""
        return self.submit(op).result()

    async def run(self, op: Callable[[Entries], R], default: R) -> R:
        """Run ``op`` off the loop. Cancelling the caller does not cancel the operation (it still runs,
        in order); a disk that does not answer within LEDGER_WAIT gives ``default``, counted as ``slow``.

        The answer comes back through one loop future that nothing but the writer thread settles (no
        wrap_future/shield/wait_for chain: this runs four times per round trip)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[R] = loop.create_future()

        def settled(done: concurrent.futures.Future[R]) -> None:  # on the writer thread
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError):  # the loop closed just now
                    loop.call_soon_threadsafe(_hand_over, done, waiter)

        self.submit(op).add_done_callback(settled)
        try:
            async with asyncio.timeout(LEDGER_WAIT) as cm:
                return await waiter
        except TimeoutError:
            if not cm.expired():
                raise  # the operation's own error, not a slow disk
            self.health.error(
                "ledger",
                "slow",
                f"{self.path}: no answer from the disk within {LEDGER_WAIT:g}s",
                "check the file system holding the state dir",
            )
            return default

    def close(self, timeout: float = 10.0) -> None:
        """Finish queued operations and stop the writer thread; release this session's lock."""
        with self._start_lock:
            thread = self._thread
            if thread is not None and thread.is_alive():
                self._queue.put(None)
        if thread is not None:
            thread.join(timeout)
        self.sessions.close()

    def _work(self) -> None:
        while True:
            batch = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 1000:
                    batch.append(self._queue.get_nowait())
            jobs = [b for b in batch if b is not None]
            if jobs:
                self._transaction(jobs)
            if len(jobs) != len(batch):  # asked to stop: only once nothing is queued (checked under the
                with self._start_lock:  # lock submit() holds, so nothing submitted meanwhile is stranded)
                    if self._queue.empty():
                        self._thread = None
                        return

    def _transaction(self, jobs: list[tuple[Op, concurrent.futures.Future[Any]]]) -> None:
        self.transactions += 1
        lock_fd = self._lock()
        try:
            if lock_fd is not None and not self._swept_temps:
                self._sweep_temps()
            entries, blocked = (self._entries, False) if self.path is None or self._dirty else self._load()
            before = _flat(entries)
            results: list[tuple[concurrent.futures.Future[Any], Any, BaseException | None]] = []
            for op, fut in jobs:
                try:
                    results.append((fut, op(entries), None))
                except Exception as failure:  # a bug in an operation: its caller gets it
                    results.append((fut, None, failure))
            self._entries = entries
            if blocked:
                self._unsaved = True  # the file could not be read: save once it can be, never over it
            elif self.path is not None:
                changes = _changes(before, _flat(entries))
                bound = min(max(JOURNAL_MIN_BYTES, 4 * self._snapshot_bytes), MAX_LEDGER_BYTES // 2)
                if self._dirty or self._unsaved:
                    self._unsaved = False
                    self._compact(entries)
                elif changes:
                    if not self._journal or self._seen is None or self._end + len(changes) > bound:
                        self._compact(entries)
                    else:
                        self._append(changes)
        finally:
            if lock_fd is not None:
                os.close(lock_fd)  # releases the lock
        for fut, value, exc in results:  # answered only once durable: write-ahead means written first
            if fut.set_running_or_notify_cancel():
                if exc is None:
                    fut.set_result(value)
                else:
                    fut.set_exception(exc)

    def _sweep_temps(self) -> None:
        """Temp files left by a process killed mid-save. Saves happen under the lock we hold, so any
        ``.ledger-*`` present now belongs to nobody."""
        assert self.path is not None
        self._swept_temps = True
        with contextlib.suppress(OSError):
            for stale in self.path.parent.glob(".ledger-*"):  # (older versions: no .tmp suffix)
                with contextlib.suppress(OSError):
                    stale.unlink()

    def _lock(self) -> int | None:
        if self.path is None:
            return None
        try:
            _private_dir(self.path.parent)
            self.sessions.register()
            fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return None  # an unwritable state dir: the save below fails and says so
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            os.close(fd)
            return None
        return fd

    def _load(self) -> tuple[Entries, bool]:
        """(entries, blocked): blocked means the file must not be written (it could not be read)."""
        assert self.path is not None
        try:
            with open(self.path, "rb") as fh:
                stat = os.fstat(fh.fileno())
                seen = _identity(stat)
                if seen == self._seen:
                    # The very file we last read or wrote (a compaction is a new inode renamed into
                    # place, and any write changes size or times): memory holds what it holds.
                    return self._entries, False
                if self._appended(fh, stat):
                    self._seen = seen
                    return self._entries, False
                fh.seek(0)
                raw = fh.read(min(stat.st_size, MAX_LEDGER_BYTES) + 1)
        except (FileNotFoundError, NotADirectoryError):  # not made yet (or its directory cannot be)
            self._seen = None
            return ({} if not self._entries else self._entries), False
        except OSError as exc:
            self.health.error(
                "ledger",
                "read",
                f"cannot read {self.path}: {_why(exc)}",
                f"make {self.path} a regular file readable and writable by this user (or delete it); "
                "it is not overwritten meanwhile and late/lost accounting is kept in memory only",
            )
            return self._entries, True
        if len(raw) > MAX_LEDGER_BYTES:
            parsed = _Parsed({}, f"bigger than {MAX_LEDGER_BYTES} bytes", 0, False, 0)
        else:
            parsed = _parse(raw)
        entries, why = parsed.entries, parsed.why
        if why is None:
            self._seen = seen
            self._end, self._journal, self._snapshot_bytes = parsed.end, parsed.journal, parsed.snapshot
            return entries, False
        self._seen = None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            os.replace(self.path, aside)
        except OSError as exc:
            self.health.error(
                "ledger",
                "read",
                f"{self.path} is corrupt ({why}) and cannot be moved aside: {_why(exc)}",
                f"move {self.path} away by hand; it is not overwritten meanwhile",
            )
            return self._entries, True
        self.health.error(
            "ledger",
            "corrupt",
            f"{self.path} was corrupt ({why}); moved aside to {aside}",
            f"nothing urgent: {sum(len(v) for v in entries.values())} good entries were kept; canaries it "
            f"listed otherwise are swept as stale, not counted late; inspect or delete {aside}",
        )
        for probe, items in self._entries.items():  # what this process knew survives too
            for nonce, entry in items.items():
                entries.setdefault(probe, {}).setdefault(nonce, entry)
        return entries, False

    def _appended(self, fh: Any, stat: os.stat_result) -> bool:
        """Apply what another process appended to the journal we last read or wrote (same file, grown,
        our last line still ending where we left it); False if the file must be read whole."""
        if not self._journal or self._seen is None or self._end <= 0:
            return False
        if (stat.st_dev, stat.st_ino) != self._seen[:2] or stat.st_size < self._end:
            return False
        if stat.st_size - self._end > MAX_LEDGER_BYTES:
            return False
        fh.seek(self._end - 1)
        tail = fh.read(stat.st_size - self._end + 1)
        if tail[:1] != b"\n":
            return False  # not where our journal ended: edited in place
        work = {p: dict(v) for p, v in self._entries.items()}  # applied to a copy: all or nothing
        pos = 1
        while (stop := tail.find(b"\n", pos)) >= 0:
            if not _apply(work, tail[pos:stop]):
                return False  # a bad line: the whole read reports it
            pos = stop + 1
        self._entries = work  # a torn last line (its writer died mid-append) stays past _end
        self._end += pos - 1
        return True

    def _append(self, data: bytes) -> None:
        """Append journal lines at the end of the good journal (cutting off a torn line a crashed
        writer left) and ``fdatasync`` them: durable once this returns."""
        assert self.path is not None
        self._seen = None
        fd = -1
        try:
            fd = os.open(self.path, os.O_WRONLY)
            if os.fstat(fd).st_size != self._end:
                os.ftruncate(fd, self._end)
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], self._end + done)
            os.fdatasync(fd)
            self._seen = _identity(os.fstat(fd))
            self._end += len(data)
        except OSError as exc:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._end)  # (shrinking needs no space) no half line left behind
            self._failed(exc)
        else:
            self._dirty = False
            self.health.ok("ledger")
        finally:
            if fd >= 0:
                os.close(fd)

    def _failed(self, exc: OSError) -> None:
        """A save failed: memory is ahead of the file; the next transaction rewrites it whole."""
        assert self.path is not None
        self._dirty = True
        self._seen = None
        self.health.error(
            "ledger",
            "write",
            f"cannot save {self.path}: {_why(exc)}",
            f"free disk space and make {self.path.parent} writable by this user; until then late/lost "
            "accounting is kept in memory only (lost on restart)",
        )

    def _compact(self, entries: Entries) -> None:
        """Write a new journal holding only the snapshot: temp file, fsync, rename, fsync the directory."""
        assert self.path is not None
        data = _snapshot(entries)
        tmp: str | None = None
        self._seen = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ledger-", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            tmp = None
            _fsync_dir(self.path.parent)
            self._end, self._journal, self._snapshot_bytes = len(data), True, len(data)
            with contextlib.suppress(OSError):
                self._seen = _identity(os.stat(self.path))  # under the lock: nobody wrote since
        except OSError as exc:
            self._failed(exc)
        else:
            self._dirty = False
            self.health.ok("ledger")
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    # -- operations (each runs on the writer thread) --

    def _orphans(self, entries: Entries, probe: str) -> dict[str, Entry]:
        """This probe's entries, those of runs that died handed over to nobody (so they are awaited)."""
        items = entries.setdefault(probe, {})
        for entry in items.values():
            if entry.session is not None and not self.sessions.alive(entry.session):
                entry.session = None
                entry.state = "waiting" if entry.state in ("accepted", "waiting") else "unsure"
        return items

    async def begin(self, probe: str) -> frozenset[str]:
        """Nonces a run of ``probe`` deletes and counts late when it sees them: every entry not owned by a
        live run (another run of the same probe, e.g. a one-shot ``mailcanary probe``, keeps its own)."""

        def op(entries: Entries) -> frozenset[str]:
            items = self._orphans(entries, probe)
            return frozenset(n for n, e in items.items() if e.session is None)

        return await self.run(op, frozenset())

    async def record(self, probe: str, token: Token, state: str) -> None:
        """Write-ahead: ``sending`` before DATA, ``accepted`` once the server took the canary."""
        assert state in ("sending", "accepted")
        session = self.sessions.id

        def op(entries: Entries) -> None:
            entries.setdefault(probe, {})[token.nonce] = Entry(token.sent, state, session)

        await self.run(op, None)

    def record_soon(self, probe: str, token: Token, state: str) -> None:
        """``record`` without waiting: queued in order, so every later operation (the run's
        ``finish``) sees it, and written as soon as the writer gets to it. For ``accepted``, which
        needs no answer before the run goes on (a hop to the writer thread saved per round trip)."""
        assert state in ("sending", "accepted")
        session = self.sessions.id

        def op(entries: Entries) -> None:
            entries.setdefault(probe, {})[token.nonce] = Entry(token.sent, state, session)

        self.submit(op)

    async def finish(
        self,
        probe: str,
        token: Token | None,
        *,
        accepted: bool,
        seen: bool,
        swept: list[Token],
        lost_after: float,
        now: float | None = None,
    ) -> tuple[int, int, int]:
        """End of a run, in one transaction: (late, lost, outstanding).

        Swept canaries the ledger awaited are late. The run's own canary is forgotten if it was seen or
        never accepted, else handed over to nobody (``waiting``). Unowned canaries older than
        ``lost_after`` are given up: lost if they were accepted.
        """
        when = time.time() if now is None else now
        session = self.sessions.id

        def op(entries: Entries) -> tuple[int, int, int]:
            items = self._orphans(entries, probe)
            late = 0
            for t in swept:
                entry = items.get(t.nonce)
                if entry is not None and entry.session in (None, session):
                    del items[t.nonce]
                    late += 1
            if token is not None:
                if seen or not accepted:
                    items.pop(token.nonce, None)
                else:
                    items[token.nonce] = Entry(token.sent, "waiting")
            lost = 0
            for nonce, entry in sorted(items.items(), key=lambda kv: kv[1].sent):
                unowned = entry.session is None
                if unowned and (when - entry.sent > lost_after or len(items) > MAX_ENTRIES_PER_PROBE):
                    del items[nonce]
                    lost += entry.state == "waiting"
            outstanding = sum(1 for e in items.values() if e.session is None)
            if not items:
                del entries[probe]
            return late, lost, outstanding

        return await self.run(op, (0, 0, 0))

    def prune(self, keep: set[str], now: float | None = None) -> concurrent.futures.Future[int]:
        """Forget probes no longer configured and unowned entries older than a week (not awaited)."""
        when = time.time() if now is None else now

        def op(entries: Entries) -> int:
            dropped = 0
            for probe in list(entries):
                if probe not in keep:
                    del entries[probe]
                    continue
                for nonce, entry in list(entries[probe].items()):
                    if entry.session is None and when - entry.sent > LEDGER_MAX_AGE:
                        del entries[probe][nonce]
                        dropped += 1
                if not entries[probe]:
                    del entries[probe]
            return dropped

        return self.submit(op)

    def nonces(self, probe: str) -> frozenset[str]:
        """Every nonce listed for ``probe`` (blocking; for tests and reports)."""
        return self.call(lambda entries: frozenset(entries.get(probe, {})))

    def entries(self, probe: str) -> dict[str, Entry]:
        """A copy of ``probe``'s entries (blocking; for tests and reports)."""
        return self.call(
            lambda entries: {n: Entry(e.sent, e.state, e.session) for n, e in entries.get(probe, {}).items()}
        )
