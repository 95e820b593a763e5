"""How long until a second IMAP session (the "other device") sees what the first one did?

Runs N round trips with the sync check (``receive.sync``) against a real Postfix + Dovecot
(tests/mailstack, started here on loopback). Reports, per run, when the second session first saw the
canary (against the first session's own delivery latency: the anchor for arrival) and how long after
the first session set the keyword the second one saw it (against its floor: the first poll gap plus
one NOOP + UID SEARCH on the second session, timed directly in the same run).

    python -m bench.sync [--rounds 20] [--json out.json]

A benchmark, not a test: it prints figures and ratios; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from probes import canary
from probes.clients.imap import IMAPSession, IMAPSettings
from probes.recorder import Recorder
from probes.roundtrip import PollSchedule, SyncSettings, probe_roundtrip
from tests.mailstack import MailStack, make_root

from .detection import pct, settings_for


async def look_cost(settings: IMAPSettings, rounds: int) -> list[float]:
    """Seconds for one NOOP + UID SEARCH HEADER … KEYWORD …, the second session's look."""
    session = IMAPSession(settings, Recorder(), prefix="sync")
    await session.open()
    try:
        out = []
        for _ in range(rounds):
            t0 = time.monotonic()
            await session.noop()
            await session.search_header(canary.HEADER, "no-such-nonce", flag="$MailcanarySynced")
            out.append(time.monotonic() - t0)
        return out
    finally:
        await session.close()


async def bench(stack: MailStack, rounds: int) -> dict[str, float]:
    address = stack.test_addresses[0]
    stack.clear(address)
    base = settings_for(stack, address, "default", "imap")
    settings = replace(base, name="bench-sync", sync=SyncSettings(timeout=10.0))
    assert isinstance(settings.receiver, IMAPSettings)
    delivery, arrival, sync = [], [], []
    for _ in range(rounds):
        rec = Recorder()
        result = await asyncio.wait_for(probe_roundtrip(settings, rec), 60)
        delivery.append(result.delivery_seconds * 1000)
        assert rec.facts.sync_arrival_seconds is not None and rec.facts.sync_seconds is not None
        arrival.append(rec.facts.sync_arrival_seconds * 1000)
        sync.append(rec.facts.sync_seconds * 1000)
        await asyncio.sleep(0.05)
    looks = [s * 1000 for s in await look_cost(settings.receiver, rounds * 5)]
    first_gap = PollSchedule().initial * 1000
    floor = first_gap + statistics.median(looks)
    return {
        "rounds": rounds,
        "delivery_first_session_p50_ms": statistics.median(delivery),
        "arrival_second_session_p50_ms": statistics.median(arrival),
        "arrival_ratio_second_to_first": statistics.median(arrival) / statistics.median(delivery),
        "flag_seen_p50_ms": statistics.median(sync),
        "flag_seen_p99_ms": pct(sync, 0.99),
        "flag_seen_floor_ms": floor,
        "flag_seen_ratio_to_floor": statistics.median(sync) / floor,
        "look_p50_ms": statistics.median(looks),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    with MailStack(make_root()) as stack:
        report = asyncio.run(bench(stack, args.rounds))
    if args.json:  # first: figures must not be lost to a printing slip
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    for key, value in report.items():
        print(f"{key:34} {value:10.3f}" if isinstance(value, float) else f"{key:34} {value:10}")


if __name__ == "__main__":
    main()
