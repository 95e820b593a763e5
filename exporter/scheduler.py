"""APScheduler jobs, one per probe: first run at start, jittered intervals, never two runs of one probe."""

from __future__ import annotations

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
from apscheduler.triggers.interval import IntervalTrigger

from .results import ResultStore

MAX_JITTER = 10.0  # seconds; spreads probes that share an interval without blurring the schedule
START_SPREAD = 2.0  # first runs land within this many seconds of start


def jitter_for(interval: float) -> float:
    return min(interval * 0.05, MAX_JITTER)


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

        Unchanged probes keep their schedule and any run in progress; changed ones are replaced; removed
        ones are dropped. This is what a reload calls.
        """
        for name in list(self._specs):
            if name not in jobs:
                self.scheduler.remove_job(name)
                del self._specs[name]
        now = datetime.now(UTC)
        for name, (interval, func, spec) in jobs.items():
            if self._specs.get(name) == (interval, spec):
                continue
            first = now + timedelta(seconds=random.uniform(0, min(START_SPREAD, jitter_for(interval) or 0.0)))
            self.scheduler.add_job(
                func,
                trigger=IntervalTrigger(seconds=interval, jitter=jitter_for(interval) or None),
                id=name,
                name=name,
                replace_existing=True,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(int(interval), 1),
                next_run_time=first,
            )
            self._specs[name] = (interval, spec)

    def start(self) -> None:
        self.scheduler.start()

    @property
    def running(self) -> bool:
        return bool(self.scheduler.running)

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
