"""State that must outlive a restart: the canary HMAC key and the ledger of canaries that timed out."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from probes.canary import MIN_KEY_BYTES, Token

from .config import ConfigError

LEDGER_MAX_AGE = 7 * 86400.0  # a canary not seen within a week is lost, not late


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def load_or_create_key(key_file: str | None, state: Path, config_path: str) -> bytes:
    """The key from ``canary_key_file``, else from the state dir, generated there on first use.

    Every instance that shares the key recognises (and may clean up) the others' canaries, so share it
    between instances that watch the same mailbox, and only between those.
    """
    if key_file is not None:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(
                [f"{config_path}: global.canary_key_file: cannot read {key_file}: {exc.strerror or exc}"]
            ) from None
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(
                [
                    f"{config_path}: global.canary_key_file: {key_file} holds {len(key)} bytes; "
                    f"need at least {MIN_KEY_BYTES} (e.g. `openssl rand -hex 32 > {key_file}`)"
                ]
            )
        return key
    path = state / "canary.key"
    try:
        _private_dir(state)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_bytes().strip()
        else:
            key = secrets.token_hex(32).encode()
            with os.fdopen(fd, "wb") as fh:
                fh.write(key + b"\n")
    except OSError as exc:
        raise ConfigError(
            [f"{config_path}: global.state_dir: cannot keep the canary key in {state}: {exc.strerror or exc}"]
        ) from None
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            [
                f"{config_path}: global.state_dir: {path} is too short to be a key; delete it "
                "to have a new one generated"
            ]
        )
    return key


class Ledger:
    """Canaries sent but not seen in time, per probe: when one turns up later it is counted late.

    Persisted atomically on every change, so that a restart between the timeout and the late arrival does
    not turn a late canary into an unexplained one. Every operation re-reads the file under an exclusive
    lock (``ledger.json.lock``), so a daemon and a one-shot ``mailcanary probe`` sharing the state dir do
    not overwrite each other's entries.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, dict[str, float]] = {}
        with self._transaction():
            pass

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[dict[str, dict[str, float]]]:
        """The entries as on disk now, locked; written back if the body changed them."""
        if self.path is None:
            yield self._entries
            return
        lock_fd: int | None = None
        try:
            _private_dir(self.path.parent)
            lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        except OSError:
            lock_fd = None  # an unwritable state dir: work in memory, as before the first save
        try:
            self._entries = self._read() if lock_fd is not None else self._entries
            before = json.dumps(self._entries, sort_keys=True)
            yield self._entries
            if lock_fd is not None and json.dumps(self._entries, sort_keys=True) != before:
                self._write()
        finally:
            if lock_fd is not None:
                os.close(lock_fd)  # releases the lock

    def _read(self) -> dict[str, dict[str, float]]:
        assert self.path is not None
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(raw, dict):
                return {
                    str(p): {str(n): float(t) for n, t in v.items()}
                    for p, v in raw.items()
                    if isinstance(v, dict)
                }
        except (OSError, ValueError, TypeError):  # missing, corrupt, or float(null)
            pass
        return {}

    def _write(self) -> None:
        assert self.path is not None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ledger-")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self._entries, fh)
            os.replace(tmp, self.path)
        except OSError:
            pass  # losing the ledger only loses "late" accounting; never worth failing a probe over

    def nonces(self, probe: str) -> frozenset[str]:
        with self._transaction() as entries:
            return frozenset(entries.get(probe, {}))

    def add(self, probe: str, token: Token) -> None:
        with self._transaction() as entries:
            entries.setdefault(probe, {})[token.nonce] = token.sent

    def settle(self, probe: str, seen: list[Token]) -> int:
        """Remove the canaries now seen; returns how many of them the ledger was waiting for (late)."""
        with self._transaction() as entries:
            waiting = entries.get(probe, {})
            late = [t for t in seen if t.nonce in waiting]
            for t in late:
                del waiting[t.nonce]
            return len(late)

    def expire(self, probe: str, older_than: float, now: float | None = None) -> int:
        """Give up on this probe's canaries sent more than ``older_than`` seconds ago; returns how many
        (they are lost: if one turns up after all, it is swept as stale, not counted late)."""
        now = time.time() if now is None else now
        with self._transaction() as entries:
            waiting = entries.get(probe, {})
            old = [n for n, t in waiting.items() if now - t > older_than]
            for n in old:
                del waiting[n]
            return len(old)

    def prune(self, now: float | None = None, keep: set[str] | None = None) -> int:
        """Forget entries older than a week (lost) and of probes no longer configured; returns lost count."""
        now = time.time() if now is None else now
        lost = 0
        with self._transaction() as entries:
            for probe in list(entries):
                if keep is not None and probe not in keep:
                    del entries[probe]
                    continue
                old = [n for n, t in entries[probe].items() if now - t > LEDGER_MAX_AGE]
                for n in old:
                    del entries[probe][n]
                lost += len(old)
        return lost
