"""A Runner over the session MailStack and one round trip through it: what the end-to-end round-trip
tests (and the verdict, placement, bounce, DNSBL and path tests) share."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from exporter.run.results import RunResult
from exporter.run.runner import Runner
from tests.support.stackconfig import make_runner as stack_runner

KEY = b"e2e-test-key-0123456789abcdef"


def make_runner(tmp: Path, probes: list[dict[str, Any]], **global_: Any) -> Runner:
    return stack_runner(tmp, probes, KEY, **global_)


def run_one(runner: Runner, name: str | None = None, debug: bool = False) -> RunResult:
    probes = runner.loaded.config.roundtrip
    probe = probes[0] if name is None else next(p for p in probes if p.name == name)
    return asyncio.run(runner.run_roundtrip(probe, debug=debug))
