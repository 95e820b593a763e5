"""exporter.run.scheduler: each probe at a stable phase inside its interval, spread evenly, kept on reload."""

from __future__ import annotations

import asyncio
import collections
import itertools
import statistics
from datetime import UTC, datetime, timedelta

from exporter.run.results import ResultStore
from exporter.run.scheduler import (
    EPOCH,
    START_MIN,
    START_RATE,
    PhaseTrigger,
    ProbeScheduler,
    first_run,
    jitter_for,
    next_slot,
    offset_for,
    start_window,
)


async def _noop() -> None:
    return None


def test_offset_is_stable_and_inside_the_interval() -> None:
    for name in ("a", "mx-1", "probe.with-dots", "x" * 63):
        first = offset_for(name, 60.0)
        assert 0 <= first < 60.0
        assert offset_for(name, 60.0) == first  # not hash(): the same in every process
    # Known value: the same on every machine and Python version (sha256 of the name).
    assert round(offset_for("alpha", 60.0), 6) == 33.475308
    assert offset_for("alpha", 60.0) != offset_for("beta", 60.0)


def test_offsets_spread_evenly_over_the_interval() -> None:
    """1,000 names in 10 buckets of 6 s: none empty, none holding more than twice its share."""
    buckets = [0] * 10
    for i in range(1000):
        buckets[int(offset_for(f"user{i}", 60.0) // 6)] += 1
    assert min(buckets) > 50 and max(buckets) < 200, buckets
    starts = sorted(offset_for(f"user{i}", 60.0) for i in range(1000))
    assert statistics.median(b - a for a, b in itertools.pairwise(starts)) < 1.0


def test_next_slot_is_the_phase_at_or_after_now() -> None:
    now = datetime(2026, 12, 1, 12, 0, 0, 123000, tzinfo=UTC)
    for name in ("a", "b", "c"):
        slot = next_slot(name, 60.0, now)
        assert now <= slot < now + timedelta(seconds=60)
        since_epoch = (slot - EPOCH).total_seconds()
        assert abs((since_epoch - offset_for(name, 60.0)) % 60.0) < 1e-3 or (
            60.0 - (since_epoch - offset_for(name, 60.0)) % 60.0 < 1e-3
        )
        # A restart a little later (same slot not yet passed) plans the same slot.
        assert next_slot(name, 60.0, now + (slot - now) / 2) == slot


def test_jitter_is_small() -> None:
    assert jitter_for(60.0) == 0.6
    assert jitter_for(3600.0) == 1.0
    assert jitter_for(2.0) == 0.02


def test_start_window_caps_first_runs_per_second() -> None:
    assert start_window(60.0, 1000) == 50.0  # 20 first runs a second
    assert start_window(60.0, 5) == START_MIN  # a handful: all at once, data within moments
    assert start_window(300.0, 300) == 15.0
    assert start_window(10.0, 1000) == 10.0  # never longer than the interval


def test_trigger_stays_on_the_grid_and_jitter_never_accumulates() -> None:
    trigger = PhaseTrigger("alpha", 60.0, jitter_for(60.0))
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    fire = now + timedelta(seconds=0.3)  # a catch-up run right after a start
    first = trigger.get_next_fire_time(fire, fire)
    assert first - fire >= timedelta(seconds=30)  # never twice in quick succession
    previous = first
    for _ in range(1000):  # 1,000 runs later the phase is still where the name puts it
        nxt = trigger.get_next_fire_time(previous, previous)
        since = (nxt - EPOCH).total_seconds() - offset_for("alpha", 60.0)
        assert -1e-3 <= since % 60.0 <= 0.6 + 1e-3
        assert timedelta(seconds=59.3) <= nxt - previous <= timedelta(seconds=60.7)
        previous = nxt
    assert trigger.get_next_fire_time(None, now) >= next_slot("alpha", 60.0, now)


def test_jobs_start_soon_spread_then_keep_their_phase_on_reload() -> None:
    async def main() -> None:
        sched = ProbeScheduler(ResultStore())
        sched.start()
        try:
            jobs = {f"p{i}": (60.0, _noop, ("spec", i)) for i in range(50)}
            before = datetime.now(UTC)
            sched.set_jobs(jobs)
            window = timedelta(seconds=start_window(60.0, 50))
            planned = {name: sched.planned(name) for name in jobs}
            for name, when in planned.items():
                assert when is not None
                assert before <= when <= before + window + timedelta(seconds=1), name
            # Ordered by the hash inside the window, not all at the same moment.
            assert len({when for when in planned.values()}) == 50
            # A reload that changes one probe's spec replaces that job; the others keep their plan.
            jobs["p3"] = (60.0, _noop, ("changed", 3))
            sched.set_jobs(jobs)
            assert sched.planned("p4") == planned["p4"]
            assert sched.planned("p3") is not None
            # Removing drops the job.
            del jobs["p5"]
            sched.set_jobs(jobs)
            assert sched.planned("p5") is None
        finally:
            sched.shutdown()

    asyncio.run(main())


def test_start_never_doubles_the_run_rate_whatever_the_second_of_the_start() -> None:
    """1,000 probes at 60 s started at any second: the catch-up runs and the first runs at their phase
    never overlap (issue 23: ordered by the bare hash, some starts ran 33-40 runs a second for 20 s, which
    filled the session slots and queued runs for up to 30 s). In any 5 s no more runs start than the
    catch-up rate allows (20 a second, plus what the hash's unevenness adds), and each probe's first
    phase run is at least half an interval after its catch-up run, on its grid."""
    names = [f"p-user{i:04d}" for i in range(1000)]
    interval = 60.0
    for second in range(0, 60, 5):
        now = datetime(2026, 12, 7, 8, 12, second, 123000, tzinfo=UTC)
        starts: list[datetime] = []
        for name in names:
            trigger = PhaseTrigger(name, interval, 0.0)
            first = first_run(name, interval, now, len(names))
            assert now <= first < now + timedelta(seconds=start_window(interval, len(names)))
            nxt = trigger.get_next_fire_time(first, first)
            assert nxt - first >= timedelta(seconds=interval / 2)
            assert nxt == next_slot(name, interval, nxt)  # on its grid
            starts += [first, nxt, nxt + timedelta(seconds=interval)]
        bins = collections.Counter(int((s - now).total_seconds() // 5) for s in starts)
        assert max(bins.values()) <= 5 * START_RATE * 1.4, (second, sorted(bins.items()))
