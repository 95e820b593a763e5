"""APScheduler jobs, one per probe, each at a stable phase inside its interval; never two runs of one probe.

Load is designed, not accidental. A probe's runs fall at ``EPOCH + offset + k * interval`` where
``offset`` comes from a hash of the probe's name (as Prometheus offsets the scrapes of its targets): the
same name gets the same phase after a restart or a reload, on any machine, and names are spread evenly
over the interval, so 1,000 probes at 60 s start about 17 runs a second instead of all at once. On top
sits a small random jitter (at most 1 % of the interval, never more than 1 s) so that probes whose hashes
happen to collide do not stay in lockstep; the jitter never accumulates (each run is placed on the grid,
not after the previous run).

So that a start or a reload shows data soon without a burst, each new or changed probe first runs once
inside a start window, in the order in which their phases come up from now: the window is long enough
for at most ``START_RATE`` first runs a second (at least ``START_MIN`` seconds, at most one interval).
From then on it runs at its phase, the first such run at least half an interval after that catch-up run.
Ordering by the phase to come (not by the bare hash) is what keeps the catch-up runs and the first phase
runs apart: ordered by the hash, whether they overlapped depended on the second of the start, and for
some starts 1,000 probes at 60 s ran 33-40 runs a second for 20 s (twice the steady rate; issue 23: at
1,000 probes that filled the session slots and queued runs for up to 30 s). In phase order every probe's
first phase run falls one interval after the start or later, at the steady rate.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobEvent,
    JobSubmissionEvent,
)
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger

from exporter.run.results import ResultStore

MAX_JITTER = 1.0  # seconds: enough to break ties between colliding hashes, too little to blur the schedule
JITTER_FRACTION = 0.01
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # phases are counted from here, so they survive restarts
START_RATE = 20.0  # first runs per second after a start or reload, at most (1,000 probes: over 50 s)
START_MIN = 2.0  # seconds: a handful of probes all run within this of a start


def jitter_for(interval: float) -> float:
    return min(interval * JITTER_FRACTION, MAX_JITTER)


def _fraction(name: str) -> float:
    """A stable number in [0, 1) for ``name`` (not ``hash()``, which is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def offset_for(name: str, interval: float) -> float:
    """Seconds into each interval at which ``name`` runs."""
    return _fraction(name) * interval


def start_window(interval: float, new_jobs: int) -> float:
    """Seconds over which ``new_jobs`` first runs are spread after a start or reload."""
    return min(interval, max(START_MIN, new_jobs / START_RATE))


def first_run(name: str, interval: float, now: datetime, new_jobs: int) -> datetime:
    """The catch-up run of a new or changed probe: inside the start window, at the share of it that the
    wait for its phase is of the interval (probes run in the order their phases come up)."""
    until_phase = (next_slot(name, interval, now) - now).total_seconds()
    return now + timedelta(seconds=until_phase / interval * start_window(interval, new_jobs))


def next_slot(name: str, interval: float, now: datetime) -> datetime:
    """The first planned run of ``name`` at or after ``now`` (jitter not included)."""
    base = EPOCH + timedelta(seconds=offset_for(name, interval))
    periods = max(0.0, (now - base).total_seconds()) // interval
    slot = base + timedelta(seconds=periods * interval)
    return slot if slot >= now else slot + timedelta(seconds=interval)


class PhaseTrigger(BaseTrigger):  # type: ignore[misc]
    """Fires on the grid ``EPOCH + offset + k * interval`` (plus jitter), at least half an interval after
    the previous run, so a catch-up run and jitter never shift the phase."""

    __slots__ = ("interval", "jitter", "name")

    def __init__(self, name: str, interval: float, jitter: float) -> None:
        self.name, self.interval, self.jitter = name, interval, jitter

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime:
        after = (
            now if previous_fire_time is None else previous_fire_time + timedelta(seconds=self.interval / 2)
        )
        slot = next_slot(self.name, self.interval, after)
        return slot + timedelta(seconds=random.uniform(0, self.jitter)) if self.jitter else slot

    def __str__(self) -> str:
        return f"phase[{self.interval:g}s @ {offset_for(self.name, self.interval):.3f}s]"


class ProbeScheduler:
    """Each job is a coroutine on the daemon's loop, so a slow probe only occupies its own job."""

    def __init__(self, store: ResultStore) -> None:
        self.store = store
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.scheduler.add_listener(
            self._on_event, EVENT_JOB_SUBMITTED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED
        )
        self._specs: dict[str, tuple[float, Any]] = {}

    def _on_event(self, event: JobEvent) -> None:
        if isinstance(event, JobSubmissionEvent) and event.code == EVENT_JOB_SUBMITTED:
            planned = max(event.scheduled_run_times) if event.scheduled_run_times else None
            if planned is not None:
                lag = (datetime.now(UTC) - planned).total_seconds()
                self.store.note_lag(event.job_id, max(lag, 0.0))
        elif event.code in (EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED):
            self.store.note_skipped(event.job_id)

    def set_jobs(self, jobs: dict[str, tuple[float, Callable[[], Awaitable[Any]], Any]]) -> None:
        """Make the job set match ``jobs`` (name -> (interval, coroutine function, spec)).

        Unchanged probes keep their schedule and any run in progress; changed ones are replaced (at the
        same phase, since the phase depends only on name and interval); removed ones are dropped. This is
        what a reload calls.
        """
        for name in list(self._specs):
            if name not in jobs:
                self.scheduler.remove_job(name)
                del self._specs[name]
        now = datetime.now(UTC)
        changed = {n: job for n, job in jobs.items() if self._specs.get(n) != (job[0], job[2])}
        for name, (interval, func, spec) in changed.items():
            first = first_run(name, interval, now, len(changed))
            self.scheduler.add_job(
                func,
                trigger=PhaseTrigger(name, interval, jitter_for(interval)),
                id=name,
                name=name,
                replace_existing=True,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(int(interval), 1),
                next_run_time=first,
            )
            self._specs[name] = (interval, spec)

    def planned(self, name: str) -> datetime | None:
        """The next planned run of ``name`` (tests and the status page read it)."""
        job = self.scheduler.get_job(name)
        return None if job is None else getattr(job, "next_run_time", None)

    def start(self) -> None:
        self.scheduler.start()

    @property
    def running(self) -> bool:
        return bool(self.scheduler.running)

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
