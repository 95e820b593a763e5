"""False-failure rate of probes sharing one real mailbox with a busy mail client.

Starts the project's real Postfix + Dovecot (tests/mailstack, loopback), then runs N round trips split
between an IMAP and a POP3 probe running side by side on one mailbox, while a simulated mail client (the
user's own IMAP and POP3 sessions, in a thread) keeps delivering foreign mail and flags, moves and deletes
it. On a healthy stack every run should succeed, so every failure is a false one.

    python -m bench.shared_mailbox [--runs 2000] [--json out.json]

The anchor, measured in the same run: the same probes on the same mailbox with no mail client at all
(a tenth of the runs), so a failure that is the stack's (or the machine's) shows up there too.
A benchmark, not a test: it prints figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import structlog

from tests.mailstack import MailStack, make_root
from tests.support.sharedmailbox import make_runner, run_shared


def _alone(stack: MailStack, tmp: Path, address: str, runs: int) -> tuple[int, Counter[str], float]:
    runner = make_runner(stack, tmp, address)
    imap_probe, pop3_probe = runner.loaded.config.roundtrip
    outcomes: Counter[str] = Counter()
    left = [runs]

    async def loop(probe: object) -> None:
        while left[0] > 0:
            left[0] -= 1
            outcomes[(await runner.run_entry(probe)).reason] += 1  # type: ignore[arg-type]

    started = time.monotonic()

    async def main() -> None:
        await asyncio.gather(loop(imap_probe), loop(pop3_probe))

    asyncio.run(main())
    return sum(outcomes.values()), outcomes, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    # One log line per run is noise here; failed runs still log at warning, and are listed at the end.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    load = os.getloadavg()[0]
    with MailStack(make_root()) as stack, tempfile.TemporaryDirectory() as tmp_dir:
        address = stack.test_addresses[0]
        stack.clear(address)
        tmp = Path(tmp_dir)
        (tmp / "shared").mkdir()
        (tmp / "alone").mkdir()
        shared = run_shared(stack, tmp / "shared", address, args.runs)
        stack.clear(address)
        alone_runs, alone_outcomes, alone_seconds = _alone(
            stack, tmp / "alone", address, max(args.runs // 10, 20)
        )
    alone_fail = alone_runs - alone_outcomes["success"]
    report = {
        "load_1min_at_start": load,
        "shared": {
            "runs": shared.runs,
            "false_failures": shared.false_failures,
            "rate": shared.rate,
            "outcomes": dict(shared.outcomes),
            "seconds": round(shared.seconds, 1),
            "client_actions": dict(shared.client.actions),
            "client_errors": dict(shared.client.errors),
            "failures": shared.messages[:20],
        },
        "anchor_no_client": {
            "runs": alone_runs,
            "failures": alone_fail,
            "rate": alone_fail / alone_runs if alone_runs else 0.0,
            "seconds": round(alone_seconds, 1),
        },
    }
    print(f"load (1 min) at start: {load:.2f}")
    print(
        f"shared mailbox:  {shared.false_failures} false failures in {shared.runs} runs "
        f"({shared.rate:.4%}), {shared.seconds:.0f}s; outcomes {dict(shared.outcomes)}"
    )
    print(f"  mail client: {dict(shared.client.actions)} errors {dict(shared.client.errors)}")
    print(f"anchor (no client): {alone_fail} failures in {alone_runs} runs, {alone_seconds:.0f}s")
    ratio = (shared.rate / report["anchor_no_client"]["rate"]) if alone_fail else None  # type: ignore[operator]
    print(
        f"ratio shared/anchor failure rate: {ratio if ratio is not None else 'n/a (anchor had 0 failures)'}"
    )
    for line in shared.messages[:20]:
        print("  ", line)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
