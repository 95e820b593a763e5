"""exporter.state: the canary key and the ledger of late canaries."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from exporter.config import ConfigError
from exporter.state import LEDGER_MAX_AGE, Ledger, load_or_create_key
from probes.canary import MIN_KEY_BYTES, Token, new_token

CFG = "/etc/mailcanary/mailcanary.yml"
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
    assert line.startswith(f"{CFG}: global.state_dir: {tmp_path / 'canary.key'} is too short")


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError) as info:
        load_or_create_key(None, blocker / "state", CFG)
    (line,) = info.value.problems
    assert line.startswith(f"{CFG}: global.state_dir: cannot keep the canary key in {blocker / 'state'}: ")


# ---- ledger ---------------------------------------------------------------------------------------------


def test_ledger_in_memory() -> None:
    ledger = Ledger(None)
    assert ledger.nonces("p") == frozenset()
    ledger.add("p", tok("a"))
    ledger.add("p", tok("b"))
    ledger.add("q", tok("c", probe="q"))
    assert ledger.nonces("p") == {"a" * 32, "b" * 32}
    assert ledger.nonces("q") == {"c" * 32}


def test_ledger_settle_counts_only_the_awaited() -> None:
    ledger = Ledger(None)
    ledger.add("p", tok("a"))
    ledger.add("p", tok("b"))
    assert ledger.settle("p", [tok("a"), tok("d")]) == 1  # d was never waited for
    assert ledger.nonces("p") == {"b" * 32}
    assert ledger.settle("p", [tok("a")]) == 0  # already settled
    assert ledger.settle("other", [tok("b")]) == 0  # other probe's ledger is separate
    assert ledger.nonces("p") == {"b" * 32}
    assert ledger.settle("p", []) == 0


def test_ledger_prune_old_and_unconfigured() -> None:
    ledger = Ledger(None)
    ledger.add("p", tok("a", sent=NOW - LEDGER_MAX_AGE - 1))  # older than a week: lost
    ledger.add("p", tok("b", sent=NOW - 60))
    ledger.add("gone", tok("c", sent=NOW - 60, probe="gone"))
    assert ledger.prune(now=NOW) == 1
    assert ledger.nonces("p") == {"b" * 32}
    assert ledger.nonces("gone") == {"c" * 32}
    assert ledger.prune(now=NOW, keep={"p"}) == 0  # dropped for removal, not counted lost
    assert ledger.nonces("gone") == frozenset()
    assert ledger.nonces("p") == {"b" * 32}


def test_ledger_prune_boundary() -> None:
    ledger = Ledger(None)
    ledger.add("p", tok("a", sent=NOW - LEDGER_MAX_AGE))
    assert ledger.prune(now=NOW) == 0  # exactly a week: kept
    assert ledger.prune(now=NOW + 1) == 1


def test_ledger_persists_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.json"
    first = Ledger(path)
    first.add("p", tok("a"))
    first.add("p", tok("b"))
    first.add("q", tok("c", probe="q"))
    assert path.is_file()
    assert json.loads(path.read_text()) == {
        "p": {"a" * 32: NOW, "b" * 32: NOW},
        "q": {"c" * 32: NOW},
    }
    second = Ledger(path)
    assert second.nonces("p") == {"a" * 32, "b" * 32}
    assert second.settle("p", [tok("a")]) == 1
    third = Ledger(path)
    assert third.nonces("p") == {"b" * 32}
    assert third.nonces("q") == {"c" * 32}
    third.add("p", tok("d", sent=NOW - LEDGER_MAX_AGE - 10))
    assert third.prune(now=NOW) == 1
    assert Ledger(path).nonces("p") == {"b" * 32}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".ledger-")]  # no temp files left


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"not json at all",
        b"\xff\xfe\x00garbage",
        b"[1, 2, 3]",
        b'"string"',
        b"null",
        b'{"p": 5}',
        b'{"p": {"n": "not a number"}}',
        b'{"p": {"n": null}}',
        b'{"p": {"n": [1]}}',
        b'{"p": {"n": {"x": 1}}}',
    ],
)
def test_corrupt_ledger_tolerated(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ledger.json"
    path.write_bytes(content)
    ledger = Ledger(path)
    assert ledger.nonces("p") == frozenset()
    ledger.add("p", tok("a"))  # and it recovers: the next save writes a good file
    assert Ledger(path).nonces("p") == {"a" * 32}


def test_partly_odd_ledger_keeps_the_good_probes(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps({"p": {"a" * 32: NOW}, "weird": "x"}))
    ledger = Ledger(path)
    assert ledger.nonces("p") == {"a" * 32}
    assert ledger.nonces("weird") == frozenset()


def test_ledger_save_failure_is_silent(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ledger = Ledger(blocker / "ledger.json")  # its directory cannot be created
    ledger.add("p", tok("a"))
    assert ledger.nonces("p") == {"a" * 32}


def test_ledger_file_is_not_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    Ledger(path).add("p", tok("a"))
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0


def test_two_processes_sharing_a_ledger_keep_each_others_entries(tmp_path: Path) -> None:
    """A daemon and a one-shot `mailcanary probe` on one state dir: neither may overwrite the other."""
    daemon, oneshot = Ledger(tmp_path / "ledger.json"), Ledger(tmp_path / "ledger.json")
    t1, t2 = new_token("p", now=NOW), new_token("p", now=NOW + 1)
    daemon.add("p", t1)
    oneshot.add("p", t2)  # this one has never seen t1 in memory
    assert daemon.nonces("p") == oneshot.nonces("p") == frozenset({t1.nonce, t2.nonce})
    assert daemon.settle("p", [t2]) == 1
    assert oneshot.nonces("p") == frozenset({t1.nonce})
