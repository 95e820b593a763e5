"""Recent runs for the status page: a sparkline's worth per probe and a ring buffer of failed dialogues.

blackbox_exporter keeps the logs of its last probes for its landing page; this is the same idea, kept
apart from ResultStore (which renders /metrics) and bounded everywhere: runs per probe, failures kept,
lines per dialogue (the first and last lines survive, the middle is counted), characters per line.
Dialogues are masked when recorded (Recorder.debug runs every line through the config's masker).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from exporter.run.results import RunResult

RUNS_PER_PROBE = 30  # sparkline points
FAILURES_KEPT = 20  # ring buffer of failed runs with their dialogue
HEAD_LINES = 60  # a dialogue keeps its first HEAD_LINES ...
TAIL_LINES = 60  # ... and its last TAIL_LINES lines
MAX_LINE = 300  # characters per line


class BoundedTranscript(list[str]):
    """A Recorder transcript that keeps the start and the end of a dialogue, whatever its length.

    A long IMAP poll loop writes a line per NOOP; the start (connect, TLS, login) and the end (where it
    failed) are what an operator reads. ``lines()`` gives them with a marker for what was left out.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.dropped = 0

    def append(self, line: str) -> None:
        line = line if len(line) <= MAX_LINE else line[:MAX_LINE] + " …"
        if len(self) < HEAD_LINES:
            super().append(line)
            return
        if len(self.tail) == TAIL_LINES:
            self.dropped += 1
        self.tail.append(line)

    def lines(self) -> list[str]:
        gap = [f"… {self.dropped} lines left out …"] if self.dropped else []
        return [*self, *gap, *self.tail]


@dataclass(frozen=True)
class Point:
    finished: float  # unix time
    success: bool
    delivery: float | None


@dataclass(frozen=True)
class Failure:
    probe: str
    finished: float
    reason: str
    failed_phase: str | None
    message: str
    dialogue: tuple[str, ...]


class History:
    """Fed by the runner (one call per finished run), read by the status page; thread-safe."""

    def __init__(self, runs_per_probe: int = RUNS_PER_PROBE, failures: int = FAILURES_KEPT) -> None:
        self._runs_per_probe = runs_per_probe
        self._points: dict[str, deque[Point]] = {}
        self._failures: deque[Failure] = deque(maxlen=failures)
        # Each probe's last failure too, so one flapping probe cannot push every other probe's last
        # failure out of the ring buffer. Bounded by the number of configured probes (see retain).
        self._last_failure: dict[str, Failure] = {}
        self._lock = threading.Lock()

    def record(self, run: RunResult, dialogue: Iterable[str] | None) -> None:
        finished = run.started + run.duration
        lines = dialogue.lines() if isinstance(dialogue, BoundedTranscript) else list(dialogue or ())
        with self._lock:
            points = self._points.setdefault(run.probe, deque(maxlen=self._runs_per_probe))
            points.append(Point(finished, run.success, run.delivery))
            if not run.success:
                phase, message = run.failed_phase, run.message
                failure = Failure(run.probe, finished, run.reason, phase, message, tuple(lines))
                self._failures.append(failure)
                self._last_failure[run.probe] = failure

    def points(self, probe: str) -> list[Point]:
        with self._lock:
            return list(self._points.get(probe, ()))

    def failures(self) -> list[Failure]:
        """The ring buffer plus each probe's last failure if the buffer no longer has it; newest first."""
        with self._lock:
            kept = list(self._failures)
            kept += [f for f in self._last_failure.values() if f not in kept]
        return sorted(kept, key=lambda f: f.finished, reverse=True)

    def last_failure(self, probe: str) -> Failure | None:
        with self._lock:
            return self._last_failure.get(probe)

    def retain(self, probes: set[str]) -> None:
        """Forget probes a reload removed (their failures stay until the ring buffer drops them)."""
        with self._lock:
            for name in set(self._points) - probes:
                del self._points[name]
            for name in set(self._last_failure) - probes:
                del self._last_failure[name]
