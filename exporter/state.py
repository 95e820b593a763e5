"""State that must outlive a restart: the canary HMAC key and the ledger of canaries that timed out."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
import time
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

    Persisted (atomically, on every change) so that a restart between the timeout and the late arrival
    does not turn a late canary into an unexplained one.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, dict[str, float]] = {}
        if path is not None and path.exists():
            with contextlib.suppress(OSError, ValueError, TypeError):  # TypeError: float(null)
                raw = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(raw, dict):
                    self._entries = {
                        str(p): {str(n): float(t) for n, t in v.items()}
                        for p, v in raw.items()
                        if isinstance(v, dict)
                    }

    def nonces(self, probe: str) -> frozenset[str]:
        return frozenset(self._entries.get(probe, {}))

    def add(self, probe: str, token: Token) -> None:
        self._entries.setdefault(probe, {})[token.nonce] = token.sent
        self._save()

    def settle(self, probe: str, seen: list[Token]) -> int:
        """Remove the canaries now seen; returns how many of them the ledger was waiting for (late)."""
        waiting = self._entries.get(probe, {})
        late = [t for t in seen if t.nonce in waiting]
        for t in late:
            del waiting[t.nonce]
        if late:
            self._save()
        return len(late)

    def expire(self, probe: str, older_than: float, now: float | None = None) -> int:
        """Give up on this probe's canaries sent more than ``older_than`` seconds ago; returns how many
        (they are lost: if one turns up after all, it is swept as stale, not counted late)."""
        now = time.time() if now is None else now
        waiting = self._entries.get(probe, {})
        old = [n for n, t in waiting.items() if now - t > older_than]
        for n in old:
            del waiting[n]
        if old:
            self._save()
        return len(old)

    def prune(self, now: float | None = None, keep: set[str] | None = None) -> int:
        """Forget entries older than a week (lost) and of probes no longer configured; returns lost count."""
        now = time.time() if now is None else now
        lost = 0
        for probe in list(self._entries):
            if keep is not None and probe not in keep:
                del self._entries[probe]
                continue
            old = [n for n, t in self._entries[probe].items() if now - t > LEDGER_MAX_AGE]
            for n in old:
                del self._entries[probe][n]
            lost += len(old)
        if lost:
            self._save()
        return lost

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            _private_dir(self.path.parent)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ledger-")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self._entries, fh)
            os.replace(tmp, self.path)
        except OSError:
            pass  # losing the ledger only loses "late" accounting; never worth failing a probe over
