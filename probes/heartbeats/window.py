"""Windows of an expected mail: when it is due (the deadline), how late it may be (grace), and the state
a heartbeat is in at any moment (ok / late / missing / failed). Pure: no I/O, no clock of its own (every
function takes ``now`` or an arrival time), so the window math is tested on its own, DST included.

Two schedules, as healthchecks has them:

- ``every`` (a period): a window closes as soon as it has its expected mail (at that mail's arrival) and
  the next one starts there, so the deadline is ``every`` after the last expected mail (healthchecks'
  period). A window that gets too few closes at ``deadline + grace`` as missing and the next starts at
  its deadline.
- ``cron`` (with a time zone): the deadlines are the fire times of APScheduler's ``CronTrigger``; a window
  runs from one fire time to the next and closes at its deadline (or, short, at ``deadline + grace``).

Between deadline and ``deadline + grace`` a short window is *late*; a mail arriving then counts for it.
A mail matching a ``fail_if`` rule marks its window *failed* (a failure report still means the job ran:
with ``every`` it closes the window). After a window closed missing or failed, the state stays so until
a later window gets its expected mail.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from apscheduler.triggers.cron import CronTrigger

State = Literal["ok", "late", "missing", "failed"]
STATES: Final[tuple[State, ...]] = ("ok", "late", "missing", "failed")
RESULTS: Final[tuple[str, ...]] = ("ok", "late", "missing", "failed")  # how a closed window ended
MAX_STEPS: Final = 10_000  # windows closed one by one at most (a daemon down for long jumps ahead)


@functools.lru_cache(maxsize=256)
def _trigger(cron: str, timezone: str) -> CronTrigger:
    """Parsed once per expression and zone (closing many windows asks for many fire times)."""
    return CronTrigger.from_crontab(cron, timezone=ZoneInfo(timezone))


@dataclass(frozen=True)
class Schedule:
    """``every`` seconds, or ``cron`` in ``timezone``; ``grace`` seconds after each deadline."""

    grace: float
    every: float | None = None
    cron: str | None = None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of every, cron")
        if self.every is not None and self.every <= 0:
            raise ValueError("every must be > 0")
        if self.grace < 0:
            raise ValueError("grace must be >= 0")

    def trigger(self) -> CronTrigger:
        assert self.cron is not None
        return _trigger(self.cron, self.timezone)

    def next_fire(self, after: float) -> float:
        """The first cron fire time strictly after ``after`` (unix seconds)."""
        start = datetime.fromtimestamp(after, UTC) + timedelta(microseconds=1)
        nxt = self.trigger().get_next_fire_time(None, start)
        if nxt is None:  # an expression that never fires again (cannot happen with 5 fields)
            raise ValueError(f"cron {self.cron!r} never fires after {start.isoformat()}")
        return float(nxt.timestamp())

    def first_deadline(self, start: float) -> float:
        return start + self.every if self.every is not None else self.next_fire(start)


@dataclass
class Window:
    """The open window: from ``start``, due at ``deadline``; ``count`` mails, ``failed`` a failure report."""

    start: float
    deadline: float
    count: int = 0
    failed: bool = False
    late: bool = False  # a mail was counted after the deadline (in the grace time)


@dataclass
class Heartbeat:
    """Everything kept of one heartbeat between runs (and across restarts, as JSON)."""

    window: Window
    last_seen: float | None = None  # arrival of the last matching mail (success or failure)
    matched_total: int = 0  # matching mails counted (success and failure)
    failed_total: int = 0  # of which failure reports (fail_if)
    last_closed: str | None = None  # how the last closed window ended (RESULTS)
    windows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))

    @classmethod
    def new(cls, schedule: Schedule, now: float) -> Heartbeat:
        """A new heartbeat's first window starts now (mail already in the folder is not counted), on a
        whole second: arrival times (INTERNALDATE) have no fraction."""
        start = float(math.floor(now))
        return cls(window=Window(start=start, deadline=schedule.first_deadline(start)))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Heartbeat:
        w = data["window"]
        window = Window(
            start=float(w["start"]),
            deadline=float(w["deadline"]),
            count=int(w["count"]),
            failed=bool(w["failed"]),
            late=bool(w.get("late", False)),
        )
        windows = dict.fromkeys(RESULTS, 0)
        windows.update({k: int(v) for k, v in dict(data.get("windows") or {}).items() if k in RESULTS})
        last = data.get("last_seen")
        closed = data.get("last_closed")
        return cls(
            window=window,
            last_seen=None if last is None else float(last),
            matched_total=int(data.get("matched_total", 0)),
            failed_total=int(data.get("failed_total", 0)),
            last_closed=closed if closed in RESULTS else None,
            windows=windows,
        )

    # -- time passing ------------------------------------------------------------------------------

    def _close(self, result: str, next_start: float, schedule: Schedule) -> None:
        self.last_closed = result
        self.windows[result] = self.windows.get(result, 0) + 1
        self.window = Window(start=next_start, deadline=schedule.first_deadline(next_start))

    def _result(self, expect: int) -> str:
        w = self.window
        if w.failed:
            return "failed"
        if w.count < expect:
            return "missing"
        return "late" if w.late else "ok"

    def advance(self, schedule: Schedule, expect: int, now: float) -> None:
        """Close every window that is over at ``now``: a short one at ``deadline + grace``, a full one
        (cron) at its deadline. Bounded: after MAX_STEPS windows the rest are skipped as missing."""
        for _ in range(MAX_STEPS):
            w = self.window
            if now >= w.deadline + schedule.grace:
                self._close(self._result(expect), w.deadline, schedule)
                continue
            if schedule.cron is not None and now >= w.deadline and (w.count >= expect or w.failed):
                self._close(self._result(expect), w.deadline, schedule)
                continue
            return
        # Far behind (a daemon down for long with a short schedule): the windows in between had no mail
        # we could count; start afresh at the window that holds ``now``.
        self.last_closed = "missing"
        self.windows["missing"] += 1
        self.window = Window(start=now, deadline=schedule.first_deadline(now))

    # -- mail arriving ----------------------------------------------------------------------------

    def count(self, schedule: Schedule, expect: int, arrival: float, failure: bool) -> bool:
        """Count one matching mail that arrived at ``arrival`` (the server's INTERNALDATE). Returns
        False when it arrived before the open window (a window already closed is never reopened: it
        still counts as seen)."""
        self.advance(schedule, expect, arrival)
        self.matched_total += 1
        if failure:
            self.failed_total += 1
        if self.last_seen is None or arrival > self.last_seen:
            self.last_seen = arrival
        w = self.window
        if arrival < w.start:
            return False
        if schedule.cron is not None and arrival >= w.deadline and (w.count >= expect or w.failed):
            # in the grace time of a window that is already full: it belongs to the next one
            self._close(self._result(expect), w.deadline, schedule)
            w = self.window
        if failure:
            w.failed = True
        else:
            w.count += 1
            w.late = w.late or arrival >= w.deadline
        if schedule.every is not None and (w.failed or w.count >= expect):
            self._close(self._result(expect), max(arrival, w.start), schedule)
        return True

    def state(self, schedule: Schedule, expect: int, now: float) -> State:
        """The state at ``now`` (after :meth:`advance`)."""
        w = self.window
        if w.failed:
            return "failed"
        if w.count >= expect:
            return "ok"
        if self.last_closed in ("missing", "failed"):
            # Stays so until a window gets its mail: never back through "late" at the next deadline,
            # which would resolve a Missing alert for the grace time of every period (flapping).
            return "missing" if self.last_closed == "missing" else "failed"
        if now >= w.deadline:
            return "late"
        return "ok"
