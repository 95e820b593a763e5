"""APScheduler jobs, one per probe, each at a stable phase inside its interval; never two runs of one probe.

Load is designed, not accidental. A probe's runs fall at ``EPOCH + offset + k * interval`` where
``offset`` comes from a hash of the probe's name (as Prometheus offsets the scrapes of its targets): the
same name gets the same phase after a restart or a reload, on any machine, and names are spread evenly
over the interval, so 1,000 probes at 60 s start about 17 runs a second instead of all at once. On top
sits a small random jitter (at most 1 % of the interval, never more than 1 s) so that probes whose hashes
happen to collide do not stay in lockstep. The first run after a start or reload is the next slot of that
phase: at most one interval later.
"""

from __future__ import annotations

import hashlib
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
from apscheduler.triggers.interval import IntervalTrigger

from .results import ResultStore

MAX_JITTER = 1.0  # seconds: enough to break ties between colliding hashes, too little to blur the schedule
JITTER_FRACTION = 0.01
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # phases are counted from here, so they survive restarts


def jitter_for(interval: float) -> float:
    return min(interval * JITTER_FRACTION, MAX_JITTER)


def offset_for(name: str, interval: float) -> float:
    """Seconds into each interval at which ``name`` runs: stable (not ``hash()``, which is salted)."""
    fraction = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64
    return fraction * interval


def next_slot(name: str, interval: float, now: datetime) -> datetime:
    """The first planned run of ``name`` at or after ``now`` (jitter not included)."""
    base = EPOCH + timedelta(seconds=offset_for(name, interval))
    periods = max(0.0, (now - base).total_seconds()) // interval
    slot = base + timedelta(seconds=periods * interval)
    return slot if slot >= now else slot + timedelta(seconds=interval)


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
        for name, (interval, func, spec) in jobs.items():
            if self._specs.get(name) == (interval, spec):
                continue
            first = next_slot(name, interval, now)
            self.scheduler.add_job(
                func,
                trigger=IntervalTrigger(
                    seconds=interval,
                    start_date=first,
                    jitter=jitter_for(interval) or None,
                    timezone=UTC,
                ),
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
