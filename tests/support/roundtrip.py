"""A Runner over the session MailStack and one round trip through it: what the end-to-end round-trip
tests (and the verdict, placement, bounce, DNSBL and path tests) share; and waiting until the ledger's
canaries are past ``lost_after``."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from exporter.run.results import RunResult
from exporter.run.runner import Runner
from tests.support.stackconfig import make_runner as stack_runner
from tests.support.wait import eventually

KEY = b"e2e-test-key-0123456789abcdef"


def make_runner(tmp: Path, probes: list[dict[str, Any]], **global_: Any) -> Runner:
    return stack_runner(tmp, probes, KEY, **global_)


def run_one(runner: Runner, name: str | None = None, debug: bool = False) -> RunResult:
    probes = runner.loaded.config.roundtrip
    probe = probes[0] if name is None else next(p for p in probes if p.name == name)
    return asyncio.run(runner.run_entry(probe, debug=debug))


def wait_past_lost_after(runner: Runner, probe: str, lost_after: float, timeout: float = 30) -> None:
    """Until every canary the ledger awaits for ``probe`` is older than ``lost_after`` by the ledger's
    own send time: the next run gives them up. Wall time is the event here; this waits for exactly it
    (no guessed fixed sleep)."""

    def oldest_age() -> float:
        sent = runner.ledger.call(lambda entries: [e.sent for e in entries.get(probe, {}).values()])
        assert sent, f"the ledger awaits no canary of {probe}"
        return time.time() - max(sent)

    eventually(
        oldest_age,
        until=lambda age: age > lost_after,
        timeout=timeout,
        interval=0.1,
        message=f"the canaries of {probe} older than lost_after ({lost_after:g} s)",
    )
