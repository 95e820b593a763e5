"""exporter.state.ledger: the canary key and the ledger of late canaries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from exporter.config import ConfigError
from exporter.state.ledger import (
    LEDGER_MAX_AGE,
    Ledger,
    StateCollector,
    StateHealth,
    key_problem,
    load_or_create_key,
)
from probes.canary import MIN_KEY_BYTES, Token, new_token
from tests.support.ledgerfile import ledger_on_disk

CFG = "/etc/mailcanary/mailcanary.yml"
DATA = Path(__file__).parent / "data"
NOW = 1_700_000_000.0


def tok(nonce_digit: str, sent: float = NOW, probe: str = "p") -> Token:
    return Token(probe=probe, sent_ms=int(sent * 1000), nonce=nonce_digit * 32)


# ---- key ------------------------------------------------------------------------------------------------


def test_key_generated_once_private_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state" / "mailcanary"
    key = load_or_create_key(None, state, CFG)
    path = state / "canary.key"
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) & 0o077 == 0  # private directory
    assert len(key) == 64
    assert all(c in b"0123456789abcdef" for c in key)
    assert path.read_bytes() == key + b"\n"
    assert load_or_create_key(None, state, CFG) == key  # reused, not regenerated
    assert path.read_bytes() == key + b"\n"


def test_key_differs_between_state_dirs(tmp_path: Path) -> None:
    assert load_or_create_key(None, tmp_path / "a", CFG) != load_or_create_key(None, tmp_path / "b", CFG)


def test_key_file_wins(tmp_path: Path) -> None:
    key_file = tmp_path / "shared.key"
    key_file.write_bytes(b"0123456789abcdef0123456789abcdef\n")
    state = tmp_path / "state"
    assert load_or_create_key(str(key_file), state, CFG) == b"0123456789abcdef0123456789abcdef"
    assert not (state / "canary.key").exists()


def test_key_file_of_exactly_the_minimum_length(tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    key_file.write_bytes(b"x" * MIN_KEY_BYTES)
    assert load_or_create_key(str(key_file), tmp_path, CFG) == b"x" * MIN_KEY_BYTES


@pytest.mark.parametrize("content", [b"", b"short\n", b"x" * (MIN_KEY_BYTES - 1), b"  \n\n"])
def test_short_key_file_rejected(tmp_path: Path, content: bytes) -> None:
    key_file = tmp_path / "short.key"
    key_file.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_or_create_key(str(key_file), tmp_path / "state", CFG)
    (line,) = info.value.problems
    assert line.startswith(f"{CFG}: global.canary_key_file: {key_file} holds ")
    assert f"need at least {MIN_KEY_BYTES}" in line


def test_missing_key_file_rejected(tmp_path: Path) -> None:
    key_file = tmp_path / "absent.key"
    with pytest.raises(ConfigError) as info:
        load_or_create_key(str(key_file), tmp_path / "state", CFG)
    assert info.value.problems == [
        f"{CFG}: global.canary_key_file: cannot read {key_file}: No such file or directory"
    ]


def test_short_generated_key_rejected(tmp_path: Path) -> None:
    (tmp_path / "canary.key").write_bytes(b"oops\n")
    with pytest.raises(ConfigError) as info:
        load_or_create_key(None, tmp_path, CFG)
    (line,) = info.value.problems
    path = tmp_path / "canary.key"
    assert line.startswith(f"{CFG}: global.state_dir: {path} holds 4 bytes, too short to be a key")
    assert line.endswith(f"delete {path} to have a new one generated")
    assert key_problem(None, tmp_path, CFG) == line  # check-config says the same


@pytest.mark.parametrize("content", [b"", b"\n"])
def test_empty_generated_key_names_the_file_to_delete(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "canary.key").write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_or_create_key(None, tmp_path, CFG)
    assert f"delete {tmp_path / 'canary.key'} to have a new one generated" in info.value.problems[0]


def test_key_problem_without_creating_anything(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert key_problem(None, state, CFG) is None and not state.exists()
    short = tmp_path / "short.key"
    short.write_bytes(b"abcd")
    problem = key_problem(str(short), state, CFG)
    assert problem is not None and problem.startswith(f"{CFG}: global.canary_key_file: {short} holds 4 bytes")


def test_key_creation_leaves_no_temp_file(tmp_path: Path) -> None:
    load_or_create_key(None, tmp_path, CFG)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary.key"]


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as info:
        load_or_create_key(None, blocker / "state", CFG)
    (line,) = info.value.problems
    assert line.startswith(f"{CFG}: global.state_dir: cannot keep the canary key in {blocker / 'state'}: ")


# ---- ledger ---------------------------------------------------------------------------------------------


def finish(ledger: Ledger, probe: str, token: Token | None = None, **kw: object) -> tuple[int, int, int]:
    args: dict[str, object] = {"accepted": True, "seen": False, "swept": [], "lost_after": 86400.0}
    args["now"] = NOW
    args.update(kw)
    return asyncio.run(ledger.finish(probe, token, **args))  # type: ignore[arg-type]


def begin(ledger: Ledger, probe: str) -> frozenset[str]:
    return asyncio.run(ledger.begin(probe))


def record(ledger: Ledger, probe: str, token: Token, state: str) -> None:
    asyncio.run(ledger.record(probe, token, state))


def metric(health: StateHealth, name: str, **labels: str) -> float:
    for fam in StateCollector(health).collect():
        for sample in fam.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise KeyError(name)


def test_write_ahead_then_handed_over_when_the_run_fails() -> None:
    ledger = Ledger(None)
    t = tok("a")
    record(ledger, "p", t, "sending")
    assert ledger.entries("p")["a" * 32].state == "sending"
    assert begin(ledger, "p") == frozenset()  # owned by a live run (this one): nobody else's to sweep
    record(ledger, "p", t, "accepted")
    assert finish(ledger, "p", t, accepted=True, seen=False) == (0, 0, 1)  # timed out: now awaited
    entry = ledger.entries("p")["a" * 32]
    assert (entry.state, entry.session) == ("waiting", None)
    assert begin(ledger, "p") == {"a" * 32}
    assert finish(ledger, "p", tok("b"), seen=True, swept=[t, tok("z")]) == (1, 0, 0)  # z never awaited
    assert ledger.nonces("p") == frozenset()


def test_run_that_ends_seen_or_unaccepted_leaves_nothing() -> None:
    ledger = Ledger(None)
    for state, accepted, seen in (("sending", False, False), ("accepted", True, True)):
        t = tok("c")
        record(ledger, "p", t, state)
        assert finish(ledger, "p", t, accepted=accepted, seen=seen) == (0, 0, 0)
        assert ledger.nonces("p") == frozenset()


def test_lost_after_gives_up_on_waiting_ones_only_when_unowned() -> None:
    ledger = Ledger(None)
    old, young = tok("a", sent=NOW - 100), tok("b", sent=NOW - 10)
    finish(ledger, "p", old)
    finish(ledger, "p", young)
    record(ledger, "p", tok("c", sent=NOW - 1000), "accepted")  # a live run's own: never expired
    assert finish(ledger, "p", None, lost_after=50.0) == (0, 1, 1)
    assert ledger.nonces("p") == {"b" * 32, "c" * 32}


def test_prune_old_and_unconfigured() -> None:
    ledger = Ledger(None)
    finish(ledger, "p", tok("a", sent=NOW - LEDGER_MAX_AGE - 1), lost_after=2 * LEDGER_MAX_AGE)
    finish(ledger, "p", tok("b", sent=NOW - 60), lost_after=2 * LEDGER_MAX_AGE)
    finish(ledger, "gone", tok("c", sent=NOW - 60, probe="gone"), lost_after=2 * LEDGER_MAX_AGE)
    assert ledger.prune(keep={"p", "gone"}, now=NOW).result() == 1
    assert ledger.nonces("p") == {"b" * 32}
    assert ledger.prune(keep={"p"}, now=NOW).result() == 0
    assert ledger.nonces("gone") == frozenset()


def test_ledger_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.json"
    first = Ledger(path)
    finish(first, "p", tok("a"))
    finish(first, "q", tok("c", probe="q"))
    data = ledger_on_disk(path)
    assert data["version"] == 3
    assert data["probes"]["p"] == {"a" * 32: {"sent": NOW, "state": "waiting", "session": None}}
    second = Ledger(path)
    assert begin(second, "p") == {"a" * 32}
    assert finish(second, "p", None, swept=[tok("a")]) == (1, 0, 0)
    assert Ledger(path).nonces("p") == frozenset()
    assert Ledger(path).nonces("q") == {"c" * 32}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".ledger-")]  # no temp files left
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0


def test_temp_files_of_a_process_killed_mid_save_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".ledger-abc123.tmp").write_text("{")  # what kill -9 between write and rename leaves
    (tmp_path / ".ledger-k2j4h5").write_text("")  # what older versions leaked on a full disk
    Ledger(tmp_path / "ledger.json")
    assert not list(tmp_path.glob(".ledger-*"))


def test_version_1_ledger_is_read(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps({"p": {"a" * 32: NOW}}))
    ledger = Ledger(path)
    assert begin(ledger, "p") == {"a" * 32}
    assert ledger.health.errors[("ledger", "corrupt")] == 0


def test_ledger_file_of_release_0_3_0_is_read_then_rewritten_as_a_journal(tmp_path: Path) -> None:
    """tests/data/ledger-0.3.0.json was written by the 0.3.0 ledger (one JSON object, version 2): two
    waiting canaries and one a run (long dead) was sending."""
    path = tmp_path / "ledger.json"
    path.write_bytes((DATA / "ledger-0.3.0.json").read_bytes())
    ledger = Ledger(path)
    assert ledger.health.errors[("ledger", "corrupt")] == 0
    assert begin(ledger, "p") == {"a" * 32, "c" * 32}
    assert ledger.entries("p")["c" * 32].state == "unsure"  # its run is gone
    assert ledger.nonces("q") == {"b" * 32}
    record(ledger, "q", tok("d", probe="q"), "sending")
    data = ledger_on_disk(path)
    assert data["version"] == 3 and set(data["probes"]["q"]) == {"b" * 32, "d" * 32}
    assert set(Ledger(path).nonces("p")) == {"a" * 32, "c" * 32}


def test_changes_are_appended_with_one_fdatasync_per_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction appends its changes to the journal and syncs them once: no temp file, no rename,
    no directory fsync; operations queued together share the append and its fdatasync."""
    path = tmp_path / "ledger.json"
    ledger = Ledger(path)
    record(ledger, "p", tok("a"), "sending")  # the first save creates the file (a snapshot)
    inode, size = path.stat().st_ino, path.stat().st_size
    calls: list[str] = []
    real_fdatasync, real_replace = os.fdatasync, os.replace

    def fdatasync(fd: int) -> None:
        calls.append("fdatasync")
        real_fdatasync(fd)

    def replace(a: str, b: str) -> None:
        calls.append("replace")
        real_replace(a, b)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync"))
    monkeypatch.setattr(os, "replace", replace)
    record(ledger, "p", tok("a"), "accepted")
    assert calls == ["fdatasync"]
    assert path.stat().st_ino == inode and path.stat().st_size > size
    assert path.read_bytes().count(b"\n") == 2  # the snapshot and one change

    async def many() -> None:
        await asyncio.gather(*(ledger.record("p", new_token("p"), "sending") for _ in range(50)))

    calls.clear()
    before = ledger.transactions
    asyncio.run(many())
    assert calls == ["fdatasync"] * (ledger.transactions - before) and len(calls) < 50
    assert len(ledger_on_disk(path)["probes"]["p"]) == 51
    assert len(Ledger(path).nonces("p")) == 51


def test_torn_last_line_of_a_crash_mid_append_is_ignored_and_cut_off(tmp_path: Path) -> None:
    """A writer killed mid-append leaves a line without its newline: it was never acknowledged, so it
    is ignored (no corrupt file, every earlier change kept) and cut off before the next append."""
    path = tmp_path / "ledger.json"
    ledger = Ledger(path)
    record(ledger, "p", tok("a"), "sending")
    record(ledger, "p", tok("a"), "accepted")
    record(ledger, "p", tok("b"), "sending")
    ledger.close()
    good = path.read_bytes()
    with open(path, "ab") as fh:
        fh.write(b'["set", "p", "' + b"c" * 32 + b'", {"sent": 1700000000.0, "sta')
    again = Ledger(path)
    assert again.health.errors[("ledger", "corrupt")] == 0
    assert again.nonces("p") == {"a" * 32, "b" * 32}
    assert again.entries("p")["a" * 32].state == "accepted"
    record(again, "p", tok("d"), "sending")
    assert path.read_bytes().startswith(good) and b"sta\n" not in path.read_bytes()
    assert path.read_bytes().count(b"\n") == good.count(b"\n") + 1
    assert Ledger(path).nonces("p") == {"a" * 32, "b" * 32, "d" * 32}


def test_torn_line_of_another_process_is_not_applied(tmp_path: Path) -> None:
    """The same while another process shares the journal: what it appended whole is read, its torn
    last line is not, and our next append replaces it."""
    path = tmp_path / "ledger.json"
    ours, other = Ledger(path), Ledger(path)
    record(ours, "p", tok("a"), "accepted")
    record(other, "p", tok("b"), "accepted")
    with open(path, "ab") as fh:
        fh.write(b'["del", "p", "' + b"a" * 32)  # killed before the end of the line
    assert ours.nonces("p") == {"a" * 32, "b" * 32}
    record(ours, "p", tok("c"), "accepted")
    assert Ledger(path).nonces("p") == {"a" * 32, "b" * 32, "c" * 32}
    assert other.nonces("p") == {"a" * 32, "b" * 32, "c" * 32}


def test_bad_line_inside_the_journal_is_corrupt_and_earlier_changes_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = Ledger(path)
    record(ledger, "p", tok("a"), "accepted")
    record(ledger, "p", tok("b"), "accepted")
    ledger.close()
    with open(path, "ab") as fh:
        fh.write(b'["set", "p", "x", {"sent": "never"}]\n["del", "p", "' + b"a" * 32 + b'"]\n')
    again = Ledger(path)
    assert again.health.errors[("ledger", "corrupt")] == 1
    assert again.nonces("p") == {"a" * 32, "b" * 32}  # what came before the bad line
    assert len(list(tmp_path.glob("ledger.json.corrupt-*"))) == 1


def test_journal_is_compacted_past_its_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bound the journal is rewritten as one snapshot (atomically: temp file, rename), so it
    stays small however many runs there are; nothing is lost on the way."""
    import exporter.state.ledger as state_module

    monkeypatch.setattr(state_module, "JOURNAL_MIN_BYTES", 4096)
    path = tmp_path / "ledger.json"
    ledger = Ledger(path)
    compactions: list[str] = []
    real_replace = os.replace

    def replace(a: str, b: str) -> None:
        compactions.append(b)
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    biggest = 0
    for n in range(200):
        t = new_token("p", now=NOW + n)
        record(ledger, "p", t, "sending")
        ledger.record_soon("p", t, "accepted")
        finish(ledger, "p", t, seen=n % 20 != 0)  # one canary in 20 stays awaited
        biggest = max(biggest, path.stat().st_size)
    assert len(compactions) > 5  # compacted again and again
    snapshot = len(path.read_bytes().split(b"\n")[0])
    assert snapshot < 4096 / 4 * 1.5 and biggest < 4096 + 2048  # the bound plus one transaction's lines
    assert len(Ledger(path).nonces("p")) == 10
    assert len(ledger_on_disk(path)["probes"]["p"]) == 10
    assert not list(tmp_path.glob(".ledger-*"))


def test_two_ledgers_appending_and_compacting_in_turn_lose_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon and a one-shot probe on one journal, each appending and compacting (a new inode) in
    turn: each reads the other's appends from where it left off, or the whole file after a compaction."""
    import exporter.state.ledger as state_module

    monkeypatch.setattr(state_module, "JOURNAL_MIN_BYTES", 2048)
    path = tmp_path / "ledger.json"
    first, second = Ledger(path), Ledger(path)
    compactions: list[str] = []
    real_replace = os.replace

    def replace(a: str, b: str) -> None:
        compactions.append(b)
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    kept = set()
    for n in range(90):
        ledger = first if n % 3 else second  # two of three by the first, every third by the second
        t = new_token("p", now=NOW + n)
        record(ledger, "p", t, "accepted")
        finish(ledger, "p", t, seen=n % 10 != 0)  # one canary in ten stays awaited
        if n % 10 == 0:
            kept.add(t.nonce)
    assert len(compactions) > 3  # compacted on the way, by either
    assert first.nonces("p") == second.nonces("p") == kept
    assert set(ledger_on_disk(path)["probes"]["p"]) == kept


def test_io_runs_on_the_writer_thread_and_batches(tmp_path: Path) -> None:
    """Ledger file I/O never runs on the event loop: it runs on one thread, and concurrent requests
    share transactions (one read-modify-write and fsync for many)."""
    ledger = Ledger(tmp_path / "ledger.json")
    threads: set[str] = set()

    async def main() -> None:
        def op(entries: object) -> None:
            threads.add(threading.current_thread().name)

        before = ledger.transactions
        await asyncio.gather(*(ledger.run(op, None) for _ in range(50)))
        await asyncio.gather(*(ledger.record("p", new_token("p"), "sending") for _ in range(50)))
        assert ledger.transactions - before < 100

    asyncio.run(main())
    assert threads == {"mailcanary-ledger"}
    assert len(ledger.nonces("p")) == 50


def test_unchanged_file_is_not_reread_but_any_other_writer_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction reads the file only if it is not the version this process last read or wrote
    (a stat instead of a read and parse per operation); another writer's save is always picked up."""
    import exporter.state.ledger as state_module

    parsed: list[int] = []
    real_parse = state_module._parse

    def counting_parse(raw: bytes) -> object:
        parsed.append(len(raw))
        return real_parse(raw)

    monkeypatch.setattr(state_module, "_parse", counting_parse)
    path = tmp_path / "ledger.json"
    ours, other = Ledger(path), Ledger(path)
    record(ours, "p", tok("a"), "accepted")
    parsed.clear()
    assert begin(ours, "p") == frozenset()  # our own save: not read back
    record(ours, "p", tok("b"), "accepted")
    assert parsed == []
    record(other, "p", tok("c"), "accepted")  # another process's append to the journal
    parsed.clear()
    assert ours.nonces("p") == {"a" * 32, "b" * 32, "c" * 32}
    assert parsed == []  # only the lines it appended were read, not the whole file
    data = ledger_on_disk(path)  # an edit in place (in the old format), same inode: size or times differ
    del data["probes"]["p"]["a" * 32]
    path.write_text(json.dumps({**data, "version": 2}))
    assert ours.nonces("p") == {"b" * 32, "c" * 32}


def test_slow_disk_gives_the_default_and_an_operation_error_reaches_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import exporter.state.ledger as state_module

    ledger = Ledger(tmp_path / "ledger.json")
    release = threading.Event()
    monkeypatch.setattr(state_module, "LEDGER_WAIT", 0.05)

    async def main() -> None:
        assert await ledger.run(lambda entries: release.wait(5), "default") == "default"
        release.set()

        def broken(entries: object) -> None:
            raise TimeoutError("from the operation itself")

        with pytest.raises(TimeoutError, match="from the operation itself"):
            await ledger.run(broken, None)

    asyncio.run(main())
    assert ledger.health.errors[("ledger", "slow")] == 1


def test_record_soon_is_in_order_before_the_next_operation_and_ledger_on_disk(tmp_path: Path) -> None:
    """``accepted`` is queued, not awaited: the run's finish (queued after it) still sees it, and it
    reaches the file without anyone waiting for it."""
    path = tmp_path / "ledger.json"
    ledger = Ledger(path)
    t, u = tok("a"), tok("b")
    record(ledger, "p", t, "sending")
    ledger.record_soon("p", t, "accepted")
    assert finish(ledger, "p", t, accepted=True, seen=False) == (0, 0, 1)  # handed over as waiting
    ledger.record_soon("p", u, "accepted")
    ledger.close()  # waits for the queue
    entries = Ledger(path).entries("p")
    assert entries[t.nonce].state == "waiting" and entries[t.nonce].session is None
    assert entries[u.nonce].state == "accepted" and entries[u.nonce].session == ledger.sessions.id


def test_cancelled_caller_does_not_cancel_the_write(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json")
    t = tok("a")

    async def main() -> None:
        task = asyncio.create_task(ledger.record("p", t, "accepted"))
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    # The write goes on on the writer thread after the caller is gone: queued operations run in order,
    # and close() waits for them; only then is the file read back by another instance.
    assert ledger.nonces("p") == {"a" * 32}
    ledger.close()
    assert Ledger(tmp_path / "ledger.json").nonces("p") == {"a" * 32}


_KILLED_RUN = """
import asyncio, sys
from pathlib import Path
from exporter.state.ledger import Ledger
from probes.canary import Token
ledger = Ledger(Path(sys.argv[1]))
asyncio.run(ledger.record("p", Token(probe="p", sent_ms=int(sys.argv[2]), nonce="d" * 32), "accepted"))
print("recorded", flush=True)
sys.stdin.read()
"""


def test_canary_of_a_killed_process_is_awaited_by_the_next(tmp_path: Path) -> None:
    """kill -9 mid-run: its accepted canary is handed over, so it is counted late (or lost) later."""
    path = tmp_path / "ledger.json"
    live = Ledger(path)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN, str(path), str(int(NOW * 1000))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "recorded\n"
        assert begin(live, "p") == frozenset()  # its owner is alive: not ours to take
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert begin(live, "p") == {"d" * 32}
    assert live.entries("p")["d" * 32].state == "waiting"
    assert finish(live, "p", None, swept=[tok("d")]) == (1, 0, 0)
    assert [p.name for p in (tmp_path / "sessions").iterdir()] == [live.sessions.id]  # the dead one's gone
    live.close()
    assert list((tmp_path / "sessions").iterdir()) == []  # a clean stop removes its own


def test_lock_files_of_dead_processes_are_cleaned_at_start(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    for n in range(3):
        (sessions / f"{n:016x}").write_text("")  # left by processes killed with -9 (no lock held)
    (sessions / "not-a-session").write_text("")
    ledger = Ledger(tmp_path / "ledger.json")
    assert sorted(p.name for p in sessions.iterdir()) == sorted([ledger.sessions.id, "not-a-session"])


def test_orphan_that_was_never_accepted_is_not_counted_lost() -> None:
    ledger = Ledger(None)
    record(ledger, "p", tok("a", sent=NOW - 100), "sending")
    ledger.call(lambda e: setattr(e["p"]["a" * 32], "session", "0" * 16))  # a run that died mid-SMTP
    assert begin(ledger, "p") == {"a" * 32}
    assert ledger.entries("p")["a" * 32].state == "unsure"
    assert finish(ledger, "p", None, lost_after=50.0) == (0, 0, 0)  # forgotten, not lost


def test_two_processes_sharing_a_ledger_keep_each_others_entries(tmp_path: Path) -> None:
    """A daemon and a one-shot `mailcanary probe` on one state dir: neither may overwrite the other."""
    daemon, oneshot = Ledger(tmp_path / "ledger.json"), Ledger(tmp_path / "ledger.json")
    t1, t2 = new_token("p", now=NOW), new_token("p", now=NOW + 1)
    record(daemon, "p", t1, "accepted")
    finish(oneshot, "p", t2)  # this one has never seen t1 in memory
    assert daemon.nonces("p") == oneshot.nonces("p") == frozenset({t1.nonce, t2.nonce})
    assert begin(oneshot, "p") == {t2.nonce}  # t1 is the daemon's live run's
    assert finish(daemon, "p", t1, seen=True, swept=[t2]) == (1, 0, 0)
    assert oneshot.nonces("p") == frozenset()


# ---- state errors: visible, logged once, corrupt files moved aside --------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"not json at all",
        b"\xff\xfe\x00garbage",
        b"[]",
        b"[1, 2, 3]",
        b'"string"',
        b"null",
        b'{"p": 5}',
        b'{"p": {"n": "not a number"}}',
        b'{"p": {"n": null}}',
        b'{"version": 2, "probes": {"p": {"n": {"sent": 1, "state": "bogus"}}}}',
        b'{"version": 9, "probes": {}}',
    ],
)
def test_corrupt_ledger_is_moved_aside_counted_and_logged(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ledger.json"
    path.write_bytes(content)
    with capture_logs() as logs:
        ledger = Ledger(path)
    (aside,) = tmp_path.glob("ledger.json.corrupt-*")
    assert aside.read_bytes() == content  # kept for inspection, never overwritten
    assert metric(ledger.health, "mailcanary_state_errors_total", file="ledger", kind="corrupt") == 1
    assert metric(ledger.health, "mailcanary_state_writable") == 1  # a new ledger is being kept
    (line,) = [e for e in logs if e["event"] == "state_error"]
    assert line["kind"] == "corrupt" and str(aside) in line["problem"] and line["action"]
    finish(ledger, "p", tok("a"))  # and it recovers: the next save writes a good file
    assert Ledger(path).nonces("p") == {"a" * 32}


def test_partly_odd_ledger_keeps_the_good_entries(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps({"p": {"a" * 32: NOW}, "weird": "x"}))
    ledger = Ledger(path)
    assert ledger.nonces("p") == {"a" * 32}
    assert ledger.health.errors[("ledger", "corrupt")] == 1
    assert list(tmp_path.glob("ledger.json.corrupt-*"))


def test_ledger_that_is_a_directory_is_reported_once_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.mkdir()
    with capture_logs() as logs:
        ledger = Ledger(path)
        for n in "abc":
            finish(ledger, "p", tok(n))
    assert ledger.nonces("p") == {"a" * 32, "b" * 32, "c" * 32}  # kept in memory meanwhile
    assert metric(ledger.health, "mailcanary_state_writable") == 0
    assert metric(ledger.health, "mailcanary_state_errors_total", file="ledger", kind="read") >= 4
    errors = [e for e in logs if e["event"] == "state_error"]
    assert len(errors) == 1 and str(path) in errors[0]["problem"]  # logged once, with what to do
    assert path.is_dir()
    path.rmdir()
    with capture_logs() as logs:
        begin(ledger, "p")  # changes nothing, yet saves what memory holds: it could not before
    assert metric(ledger.health, "mailcanary_state_writable") == 1
    assert [e["event"] for e in logs] == ["state_recovered"]
    assert Ledger(path).nonces("p") == {"a" * 32, "b" * 32, "c" * 32}  # memory was saved


def test_unwritable_state_dir_is_visible(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ledger = Ledger(blocker / "ledger.json")  # its directory cannot be created
    finish(ledger, "p", tok("a"))
    assert ledger.nonces("p") == {"a" * 32}
    assert metric(ledger.health, "mailcanary_state_writable") == 0
    assert metric(ledger.health, "mailcanary_state_errors_total", file="ledger", kind="write") >= 1


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs of our own, so a full disk is real (needs root, as CI is)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"x" * 1024)
    finally:
        os.close(fd)
    return filler


def test_full_disk_no_leak_visible_and_recovers(small_fs: Path) -> None:
    """Appends fill the file's last page (tmpfs allocates by page) until the disk refuses one: from
    then on nothing is appended after a failed write (no half line), and the file keeps every change
    saved before; once there is space, memory is written whole."""
    path = small_fs / "ledger.json"
    ledger = Ledger(path)
    finish(ledger, "p", tok("a"))
    filler = fill(small_fs)
    with capture_logs() as logs:
        n = 0
        while metric(ledger.health, "mailcanary_state_writable") == 1:
            n += 1
            assert n < 200, "the full disk never refused a write"
            finish(ledger, "p", new_token("p", now=NOW + n))
        saved = ledger_on_disk(path)["probes"]["p"].keys()
        for m in range(n + 1, n + 8):
            finish(ledger, "p", new_token("p", now=NOW + m))
    assert metric(ledger.health, "mailcanary_state_errors_total", file="ledger", kind="write") == 8
    assert len([e for e in logs if e["event"] == "state_error"]) == 1
    assert not list(small_fs.glob(".ledger-*"))  # no temp file leaked by the failed writes
    assert len(saved) == n  # nothing lost, no torn line:
    assert ledger_on_disk(path)["probes"]["p"].keys() == saved
    assert path.read_bytes().endswith(b"\n")
    filler.unlink()
    finish(ledger, "p", None)
    assert metric(ledger.health, "mailcanary_state_writable") == 1
    assert len(Ledger(path).nonces("p")) == n + 8


def test_read_only_state_dir_is_visible_and_recovers(small_fs: Path) -> None:
    view = small_fs.parent / "view"  # a bind mount of our tmpfs that we can make read-only at will
    view.mkdir()
    subprocess.run(["mount", "--bind", str(small_fs), str(view)], check=True)
    try:
        path = view / "ledger.json"
        ledger = Ledger(path)
        finish(ledger, "p", tok("a"))
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        with capture_logs() as logs:
            finish(ledger, "p", tok("b"))
            finish(ledger, "p", tok("c"))
        assert metric(ledger.health, "mailcanary_state_writable") == 0
        (line,) = [e for e in logs if e["event"] == "state_error"]
        assert "Read-only file system" in line["problem"]
        subprocess.run(["mount", "-o", "remount,bind,rw", str(view)], check=True)
        finish(ledger, "p", None)
        assert metric(ledger.health, "mailcanary_state_writable") == 1
        assert Ledger(path).nonces("p") == {"a" * 32, "b" * 32, "c" * 32}
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


def test_full_disk_at_first_start_leaves_no_short_key(small_fs: Path) -> None:
    fill(small_fs)
    health = StateHealth()
    with pytest.raises(ConfigError) as info:
        load_or_create_key(None, small_fs / "state", CFG, health)
    assert "cannot keep the canary key" in info.value.problems[0]
    assert not (small_fs / "state" / "canary.key").exists()
    assert not list((small_fs / "state").glob(".canary-key-*"))
    assert health.errors[("key", "write")] == 1
    assert not health.writable
    (small_fs / "filler").unlink()
    assert len(load_or_create_key(None, small_fs / "state", CFG, health)) == 64  # next try just works
    assert health.writable
