"""Legacy TLS answers (does the server still take TLS 1.0 / 1.1?) remembered per endpoint.

The answer changes when the server's TLS configuration changes, which in practice comes with a new
certificate or a deliberate change, not between two runs a minute apart; re-testing costs two extra
sessions (two more login processes on Dovecot) per run. So an endpoint is re-tested when its answer is
older than ``every`` seconds, when the leaf certificate it presents changed, or when the last answer was
incomplete (an attempt that could not tell). The time of the answer is exported, so its age is visible.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_RECHECK = 86400.0  # seconds
MAX_ENDPOINTS = 4096


@dataclass(frozen=True)
class LegacyAnswer:
    results: dict[str, bool | None]  # version name -> accepted
    fingerprint: str | None  # leaf certificate (sha256) at the time of the test
    checked_at: float  # unix time


class LegacyCache:
    """Bounded (LRU over endpoints); keys are whatever identifies one audited endpoint."""

    def __init__(self, clock: Callable[[], float] = time.time, max_entries: int = MAX_ENDPOINTS) -> None:
        self._answers: OrderedDict[tuple[str, ...], LegacyAnswer] = OrderedDict()
        self.clock = clock
        self.max_entries = max_entries

    def fresh(self, key: tuple[str, ...], fingerprint: str | None, every: float) -> LegacyAnswer | None:
        """The remembered answer if it may be reused now, else None (test again)."""
        answer = self._answers.get(key)
        if answer is None:
            return None
        if answer.fingerprint != fingerprint or self.clock() - answer.checked_at >= every:
            return None
        self._answers.move_to_end(key)
        return answer

    def put(self, key: tuple[str, ...], results: dict[str, bool | None], fingerprint: str | None) -> float:
        """Remember a complete answer (one with an unknown is not kept); returns its time."""
        now = self.clock()
        if any(v is None for v in results.values()):
            self._answers.pop(key, None)
            return now
        self._answers[key] = LegacyAnswer(dict(results), fingerprint, now)
        self._answers.move_to_end(key)
        while len(self._answers) > self.max_entries:
            self._answers.popitem(last=False)
        return now
