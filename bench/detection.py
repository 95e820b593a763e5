"""How early does the probe see a canary, compared with the moment it lands in the Maildir?

Runs N round trips per detection strategy against a real Postfix + Dovecot (tests/mailstack, started
here on loopback) and compares the probe's "first seen" time with the moment a 1 ms watcher thread sees
the message file appear in ``new/`` or ``cur/`` (Dovecot moves it as soon as a session syncs, so both
are watched). Reports p50/p99 of that overhead, the receiving side's commands per round, and commands
per second while a canary is in flight, measured on the stack's slow mailbox (delivery delayed by
``--slow-delay``): with immediate delivery a round is over after one or two looks, so a per-second
rate over a 50 ms wait says nothing about the load a probe puts on a server.

    python -m bench.detection [--rounds 30] [--slow-delay 3] [--json out.json] [--silent-idle-only]

Then the same in flight against a server whose IDLE never pushes (Courier without FAM, Cyrus without
idled; an in-process fake with a known landing time), with IDLE and without.

A benchmark, not a test: it prints figures and ratios; nothing is asserted. Machines are shared and
noisy, so compare strategies within one run rather than across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from probes.auth.credentials import Credentials
from probes.clients.imap import IMAPSettings
from probes.clients.smtp import SMTPSettings
from probes.recorder import Recorder
from probes.roundtrip import (
    DEFAULT_POLL_FACTOR,
    DEFAULT_POLL_MAX,
    PollSchedule,
    POP3Settings,
    RoundTripSettings,
    probe_roundtrip,
)
from probes.wire.net import Endpoint, TLSSettings
from tests.mailstack import MailStack, make_root
from tests.support.faultservers import (
    NO_FAULT,
    Mailboxes,
    Store,
    courier_imap_handler,
    fault_settings,
    serving,
    smtp_handler,
)

KEY = b"bench-detection-key-0123456789ab"


class MaildirWatcher:
    """Polls new/ and cur/ every millisecond; records the monotonic time each file name first shows up."""

    def __init__(self, maildir: Path) -> None:
        self.dirs = [maildir / "new", maildir / "cur"]
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for d in self.dirs:
                try:
                    for name in os.listdir(d):
                        self.seen.setdefault(name.split(":", 1)[0], now)
                except FileNotFoundError:
                    pass
            time.sleep(0.001)

    def __enter__(self) -> MaildirWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def landed_after(self, t: float) -> float | None:
        times = [v for v in self.seen.values() if v >= t]
        return min(times) if times else None


@dataclass
class Sample:
    overhead: float  # detected - landed (seconds)
    delivery: float  # as the probe reports it: detected - DATA accepted
    wait_commands: int
    wait_seconds: float


def settings_for(stack: MailStack, address: str, strategy: str, protocol: str = "imap") -> RoundTripSettings:
    tls = TLSSettings(ca_file=str(stack.ca_file), server_name=stack.server_name)
    creds = Credentials(address, stack.password(address))
    smtp = SMTPSettings(Endpoint(stack.host, stack.ports["submission"], "starttls", tls), creds)
    if protocol == "pop3":
        receiver: IMAPSettings | POP3Settings = POP3Settings(
            Endpoint(stack.host, stack.ports["pop3s"], "implicit", tls), creds
        )
    else:
        receiver = IMAPSettings(Endpoint(stack.host, stack.ports["imaps"], "implicit", tls), creds)
    base = RoundTripSettings(
        name=f"bench-{strategy}", smtp=smtp, receiver=receiver, sender=address, recipient=address, key=KEY
    )
    if strategy == "idle-only":  # wait in IDLE for the server's push, never poll
        assert isinstance(receiver, IMAPSettings)
        return replace(base, poll=PollSchedule(60.0, 1.0, 60.0), idle_min_gap=0.0, search_every=3600.0)
    if strategy == "noop-25ms":  # NOOP every 25 ms, never IDLE
        assert isinstance(receiver, IMAPSettings)
        return replace(base, receiver=replace(receiver, use_idle=False), poll=PollSchedule(0.025, 1.0, 0.025))
    shipped = PollSchedule(factor=DEFAULT_POLL_FACTOR[protocol], maximum=DEFAULT_POLL_MAX[protocol])
    return replace(base, poll=shipped)  # "default": the schedule the config gives this protocol


async def one(stack: MailStack, settings: RoundTripSettings, watcher: MaildirWatcher) -> Sample:
    rec = Recorder()
    t0 = time.monotonic()
    result = await asyncio.wait_for(probe_roundtrip(settings, rec), 60)
    landed = watcher.landed_after(t0)
    if landed is None:
        raise RuntimeError("the watcher never saw the message file")
    seen_at, commands = rec.facts.seen_at, rec.facts.wait_commands
    assert seen_at is not None and commands is not None  # set by every delivered run
    return Sample(
        overhead=seen_at - landed,
        delivery=result.delivery_seconds,
        wait_commands=commands,
        wait_seconds=result.delivery_seconds,
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def bench(
    stack: MailStack, rounds: int, slow_delay: float, slow_rounds: int = 10
) -> dict[str, dict[str, float]]:
    report: dict[str, dict[str, float]] = {}
    address = stack.test_addresses[0]
    cases = [("idle-only", "imap"), ("noop-25ms", "imap"), ("default", "imap"), ("default", "pop3")]
    for strategy, protocol in cases:
        label = f"{strategy}/{protocol}"
        stack.clear(address)
        samples: list[Sample] = []
        with MaildirWatcher(stack.maildir(address)) as watcher:
            for _ in range(rounds):
                samples.append(await one(stack, settings_for(stack, address, strategy, protocol), watcher))
                await asyncio.sleep(0.05)
        over = [s.overhead * 1000 for s in samples]
        report[label] = {
            "rounds": len(samples),
            "overhead_p50_ms": statistics.median(over),
            "overhead_p99_ms": pct(over, 0.99),
            "overhead_max_ms": max(over),
            "delivery_p50_ms": statistics.median(s.delivery * 1000 for s in samples),
            "commands_per_round": statistics.mean(s.wait_commands for s in samples),
        }
    # Steady state: a canary in flight for `slow_delay` seconds (the slow mailbox), default strategies.
    stack.slow_delay = slow_delay
    slow = stack.slow_address
    for protocol in ("imap", "pop3"):
        stack.clear(slow)
        samples = []
        with MaildirWatcher(stack.maildir(slow)) as watcher:
            for _ in range(slow_rounds):
                samples.append(await one(stack, settings_for(stack, slow, "default", protocol), watcher))
        over = [s.overhead * 1000 for s in samples]
        report[f"default/{protocol} ({slow_delay:g}s in flight)"] = {
            "rounds": len(samples),
            "overhead_p50_ms": statistics.median(over),
            "overhead_p99_ms": pct(over, 0.99),
            "overhead_max_ms": max(over),
            "delivery_p50_ms": statistics.median(s.delivery * 1000 for s in samples),
            "commands_per_round": statistics.mean(s.wait_commands for s in samples),
            "commands_per_s_in_flight": statistics.mean(s.wait_commands / s.wait_seconds for s in samples),
        }
    stack.slow_delay = 0
    return report


class LateStore(Store):
    """The fake server's folder, delivering each accepted message ``delay`` seconds later (the loop's
    clock): the landing time is ground truth, not a watcher's estimate."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.landed: list[float] = []

    def add(self, raw: bytes) -> int:
        loop = asyncio.get_running_loop()
        loop.call_later(self.delay, self._land, raw)
        return 0

    def _land(self, raw: bytes) -> None:
        self.landed.append(time.monotonic())
        super().add(raw)


async def bench_silent_idle(rounds: int, delay: float) -> dict[str, dict[str, float]]:
    """A server that accepts IDLE and never pushes (Courier without FAM, Cyrus without idled; here the
    Courier-like fault server of tests/support/faultservers.py), the canary landing ``delay`` s after
    DATA: what detection then rests on (each IDLE ends at the poll gap, a NOOP and SEARCH follow), its
    delay over the landing time, and the commands per second the probe sends meanwhile (all sessions)."""
    report: dict[str, dict[str, float]] = {}
    for label, idle in (("silent IDLE, default", True), ("no IDLE (idle: false), default", False)):
        over: list[float] = []
        rates: list[float] = []
        idles_per_s: list[float] = []
        commands: list[int] = []
        deliveries: list[float] = []
        rng = random.Random(19)  # the landing falls anywhere in a poll gap, the same draws for both
        for _ in range(rounds):
            boxes = Mailboxes()
            inbox = LateStore(delay + rng.uniform(0, DEFAULT_POLL_MAX["imap"]))
            boxes.folders["INBOX"] = inbox
            async with (
                serving(smtp_handler(inbox, NO_FAULT)) as sp,
                serving(courier_imap_handler(boxes)) as ip,
            ):
                settings = fault_settings("bench-silent", sp, ip)
                assert isinstance(settings.receiver, IMAPSettings)
                shipped = PollSchedule(factor=DEFAULT_POLL_FACTOR["imap"], maximum=DEFAULT_POLL_MAX["imap"])
                settings = replace(settings, receiver=replace(settings.receiver, use_idle=idle), poll=shipped)
                rec = Recorder()
                result = await asyncio.wait_for(probe_roundtrip(settings, rec), 60)
            f = rec.facts
            assert f.seen_at is not None and f.accepted_at is not None and f.wait_commands is not None
            seen_at, accepted = f.seen_at, f.accepted_at
            over.append((seen_at - inbox.landed[0]) * 1000)
            commands.append(f.wait_commands)
            deliveries.append(result.delivery_seconds * 1000)
            rates.append(commands[-1] / result.delivery_seconds)
            idles_per_s.append(boxes.idles / (seen_at - accepted))
        report[f"{label} ({delay:g}s in flight)"] = {
            "rounds": len(over),
            "overhead_p50_ms": statistics.median(over),
            "overhead_p99_ms": pct(over, 0.99),
            "overhead_max_ms": max(over),
            "delivery_p50_ms": statistics.median(deliveries),
            "commands_per_round": statistics.mean(commands),
            "commands_per_s_in_flight": statistics.mean(rates),
            "idles_per_s": statistics.mean(idles_per_s),
        }
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--slow-delay", type=float, default=3.0)
    ap.add_argument("--slow-rounds", type=int, default=10, help="rounds with the canary in flight")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument(
        "--silent-idle-only",
        action="store_true",
        help="only the fake server whose IDLE never pushes (no mail stack, no root needed)",
    )
    args = ap.parse_args()
    if args.silent_idle_only:
        report = asyncio.run(bench_silent_idle(args.slow_rounds, args.slow_delay))
    else:
        with MailStack(make_root()) as stack:
            report = asyncio.run(bench(stack, args.rounds, args.slow_delay, args.slow_rounds))
        report.update(asyncio.run(bench_silent_idle(args.slow_rounds, args.slow_delay)))
    if args.json:  # first: figures must not be lost to a printing slip
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    width = max(len(k) for k in report)
    print(f"{'strategy'.ljust(width)}  p50 ms  p99 ms  max ms  delivery p50 ms  cmds/round  cmds/s")
    for label, r in report.items():
        rate = f"{r['commands_per_s_in_flight']:6.1f}" if "commands_per_s_in_flight" in r else "     -"
        print(
            f"{label.ljust(width)}  {r['overhead_p50_ms']:6.1f}  {r['overhead_p99_ms']:6.1f}  "
            f"{r['overhead_max_ms']:6.1f}  {r['delivery_p50_ms']:15.1f}  {r['commands_per_round']:10.1f}  "
            f"{rate}"
        )


if __name__ == "__main__":
    main()
