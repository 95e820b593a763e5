"""How early does the probe see a canary, compared with the moment it lands in the mailbox?

Runs N round trips per detection strategy against a real Postfix + Dovecot (tests/mailstack, started
here on loopback) and compares the probe's "first seen" time with the moment a 1 ms watcher thread sees
the message file appear in ``new/`` or ``cur/`` (Dovecot moves it as soon as a session syncs, so both
are watched). "before" (the schedule before issue 23, emulated on today's code) and "after" (the shipped
defaults) run interleaved, round by round, so both meet the same load. Reports p50/p99 of that
overhead, the receiving side's commands per round, and commands per second while a canary is in flight,
measured on the stack's slow mailbox (delivery delayed by ``--slow-delay``): with immediate delivery a
round is over after one or two looks, so a per-second rate over a few ms says nothing about the load a
probe puts on a server.

    python -m bench.detection [--rounds 30] [--slow-delay 3] [--json out.json] [--silent-idle-only]
                              [--interop auto|yes|no] [--interop-only]

With the interop servers installed (scripts/install-interop.sh, root): Exim -> Cyrus and OpenSMTPD ->
Cyrus the same way (ground truth: the file in Cyrus's spool), and a canary held in Exim's queue (Cyrus
runs without idled: its IDLE never pushes). Then the same in flight against an in-process server whose
IDLE never pushes (Courier without FAM; a known landing time): before, after on its first wait, after
once it is known silent, and with ``idle: false``.

A benchmark, not a test: it prints figures and ratios; nothing is asserted. Machines are shared and
noisy, so compare strategies within one run rather than across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
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
    DEFAULT_IDLE_MAX,
    DEFAULT_POLL_FACTOR,
    DEFAULT_POLL_INITIAL,
    DEFAULT_POLL_MAX,
    IdlePush,
    PollSchedule,
    POP3Settings,
    RoundTripSettings,
    probe_roundtrip,
)
from probes.wire.net import Endpoint, TLSSettings
from tests.interop.cyrus import CyrusServer, make_users
from tests.interop.exim import LATE_LOCAL, EximServer
from tests.interop.harness import INTEROP_ROOT, make_interop_root, reap_interop_orphans
from tests.interop.opensmtpd import OpenSMTPD
from tests.interop.opensmtpd import problems as opensmtpd_problems
from tests.mailstack import MailStack, make_root
from tests.mailstack.tls import write_ca, write_leaf
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


BEFORE = "before"  # the schedule before issue 23, emulated: first look after 50 ms, x1.25, IDLE <= 250 ms
AFTER = "after"  # the shipped defaults


def before_issue23(base: RoundTripSettings, protocol: str) -> RoundTripSettings:
    """The detection of the release before issue 23, on today's code: no look before the first gap
    (50 ms), gaps x1.25 (POP3 x2) up to 250 ms (POP3 1 s), gaps of 0.2 s or more in IDLE of at most
    250 ms, then a NOOP (the polling floor), no command budget, nothing remembered about IDLE."""
    poll = PollSchedule(0.05, 1.25, 0.25) if protocol == "imap" else PollSchedule(0.05, 2.0, 1.0)
    return replace(base, poll=poll, first_look=False, idle_max=0.25, max_rate=0.0, idle_push=IdlePush())


def shipped(base: RoundTripSettings, protocol: str, memory: IdlePush) -> RoundTripSettings:
    """The shipped defaults for ``protocol``; ``memory``: what this bench has learnt of the server's IDLE
    (as the daemon's process would, across runs)."""
    poll = PollSchedule(
        DEFAULT_POLL_INITIAL[protocol], DEFAULT_POLL_FACTOR[protocol], DEFAULT_POLL_MAX[protocol]
    )
    return replace(base, poll=poll, idle_push=memory)


def settings_for(
    stack: MailStack, address: str, strategy: str, protocol: str = "imap", memory: IdlePush | None = None
) -> RoundTripSettings:
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
    return strategy_settings(base, strategy, protocol, memory)


def strategy_settings(
    base: RoundTripSettings, strategy: str, protocol: str, memory: IdlePush | None = None
) -> RoundTripSettings:
    receiver = base.receiver
    if strategy == BEFORE:
        return before_issue23(base, protocol)
    if strategy == "idle-off":  # the shipped schedule with `idle: false` (polling, paced)
        assert isinstance(receiver, IMAPSettings)
        return shipped(replace(base, receiver=replace(receiver, use_idle=False)), protocol, IdlePush())
    if strategy == "idle-only":  # wait in IDLE for the server's push, never poll
        assert isinstance(receiver, IMAPSettings)
        return replace(
            base, poll=PollSchedule(60.0, 1.0, 60.0), idle_min_gap=0.0, idle_max=60.0, search_every=3600.0
        )
    return shipped(base, protocol, memory if memory is not None else IdlePush())  # AFTER


async def one(settings: RoundTripSettings, watcher: MaildirWatcher) -> Sample:
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


def summary(samples: list[Sample], in_flight: bool = False) -> dict[str, float]:
    over = [s.overhead * 1000 for s in samples]
    row = {
        "rounds": len(samples),
        "overhead_p50_ms": statistics.median(over),
        "overhead_p99_ms": pct(over, 0.99),
        "overhead_max_ms": max(over),
        "delivery_p50_ms": statistics.median(s.delivery * 1000 for s in samples),
        "commands_per_round": statistics.mean(s.wait_commands for s in samples),
    }
    if in_flight:
        row["commands_per_s_in_flight"] = statistics.mean(s.wait_commands / s.wait_seconds for s in samples)
    return row


async def bench(
    stack: MailStack, rounds: int, slow_delay: float, slow_rounds: int = 10
) -> dict[str, dict[str, float]]:
    """Before and after, interleaved round by round (the same load for both), on instant delivery and
    with the canary ``slow_delay`` s in flight (the slow mailbox, its landing spread over 0-250 ms)."""
    report: dict[str, dict[str, float]] = {}
    address = stack.test_addresses[0]
    memory = {"imap": IdlePush(), "pop3": IdlePush()}
    cases = [(BEFORE, "imap"), (AFTER, "imap"), (BEFORE, "pop3"), (AFTER, "pop3")]
    samples: dict[str, list[Sample]] = {f"{s}/{p}": [] for s, p in cases}
    stack.clear(address)
    with MaildirWatcher(stack.maildir(address)) as watcher:
        for _ in range(rounds):
            for strategy, protocol in cases:
                settings = settings_for(stack, address, strategy, protocol, memory[protocol])
                samples[f"{strategy}/{protocol}"].append(await one(settings, watcher))
                await asyncio.sleep(0.05)
    for label, got in samples.items():
        report[label] = summary(got)
    slow = stack.slow_address
    rng = random.Random(23)
    flight = [(BEFORE, "imap"), (AFTER, "imap"), ("idle-off", "imap"), (BEFORE, "pop3"), (AFTER, "pop3")]
    slow_samples: dict[str, list[Sample]] = {f"{s}/{p}": [] for s, p in flight}
    stack.clear(slow)
    with MaildirWatcher(stack.maildir(slow)) as watcher:
        for _ in range(slow_rounds):
            for strategy, protocol in flight:
                stack.slow_delay = slow_delay + rng.uniform(0, 0.25)  # anywhere in a poll gap
                settings = settings_for(stack, slow, strategy, protocol, memory[protocol])
                slow_samples[f"{strategy}/{protocol}"].append(await one(settings, watcher))
    for label, got in slow_samples.items():
        report[f"{label} ({slow_delay:g}s in flight)"] = summary(got, in_flight=True)
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


SILENT_CASES = (
    (BEFORE, "before (IDLE <= 250 ms, then NOOP)"),
    ("first", "after, first wait on the server (IDLE up to idle_max)"),
    ("learnt", "after, server known silent (polled)"),
    ("idle-off", "after, idle: false"),
)


async def bench_silent_idle(rounds: int, delay: float) -> dict[str, dict[str, float]]:
    """A server that accepts IDLE and never pushes (Courier without FAM, Cyrus without idled; here the
    Courier-like fault server of tests/support/faultservers.py), the canary landing ``delay`` s after
    DATA (plus a draw within 250 ms, the same draws for every strategy, interleaved): its delay over the
    landing time, and the commands per second the probe sends meanwhile (all sessions). After: the
    first wait on such a server rests on the safety look after a whole IDLE (idle_max); it then
    remembers the server as silent and polls it on the gap schedule."""
    samples: dict[str, list[tuple[float, int, float, float]]] = {k: [] for k, _ in SILENT_CASES}
    rng = random.Random(19)
    for _ in range(rounds):
        landing = delay + rng.uniform(0, DEFAULT_POLL_MAX["imap"])
        for strategy, _ in SILENT_CASES:
            boxes = Mailboxes()
            inbox = LateStore(landing)
            boxes.folders["INBOX"] = inbox
            async with (
                serving(smtp_handler(inbox, NO_FAULT)) as sp,
                serving(courier_imap_handler(boxes)) as ip,
            ):
                base = fault_settings("bench-silent", sp, ip)
                assert isinstance(base.receiver, IMAPSettings)
                base = replace(
                    base,
                    receiver=replace(base.receiver, use_idle=True),
                    idle_min_gap=RoundTripSettings.idle_min_gap,
                    idle_max=DEFAULT_IDLE_MAX,
                )
                memory = IdlePush()
                if strategy == "learnt":
                    memory.note(("127.0.0.1", ip), pushed=False)
                settings = strategy_settings(
                    base, strategy if strategy in (BEFORE, "idle-off") else AFTER, "imap", memory
                )
                rec = Recorder()
                result = await asyncio.wait_for(probe_roundtrip(settings, rec), 60)
            f = rec.facts
            assert f.seen_at is not None and f.accepted_at is not None and f.wait_commands is not None
            samples[strategy].append(
                (
                    (f.seen_at - inbox.landed[0]) * 1000,
                    f.wait_commands,
                    result.delivery_seconds,
                    boxes.idles / (f.seen_at - f.accepted_at),
                )
            )
    report: dict[str, dict[str, float]] = {}
    for strategy, label in SILENT_CASES:
        got = samples[strategy]
        over = [g[0] for g in got]
        report[f"silent IDLE: {label} ({delay:g}s in flight)"] = {
            "rounds": len(got),
            "overhead_p50_ms": statistics.median(over),
            "overhead_p99_ms": pct(over, 0.99),
            "overhead_max_ms": max(over),
            "delivery_p50_ms": statistics.median(g[2] * 1000 for g in got),
            "commands_per_round": statistics.mean(g[1] for g in got),
            "commands_per_s_in_flight": statistics.mean(g[1] / g[2] for g in got),
            "idles_per_s": statistics.mean(g[3] for g in got),
        }
    return report


class SpoolWatcher(MaildirWatcher):
    """Polls a Cyrus spool directory (one ``<uid>.`` file per message) every millisecond; the arrival on
    our clock (not the files' mtime: under gVisor file times run on another clock)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.dirs = [directory]


def cyrus_spool(cyrus: CyrusServer, local: str) -> Path:
    """The spool directory of a user's INBOX: Cyrus 3.6 names them by mailbox UUID; each one's
    cyrus.header names its mailbox (``N example.test!user.<local>``)."""
    want = f" N {cyrus.address(local).split('@')[1]}!user.{local} ".encode()
    for header in (cyrus.root / "spool").rglob("cyrus.header"):
        if want in header.read_bytes().replace(b"(", b" ").replace(b"\t", b" "):
            return header.parent
    raise RuntimeError(f"no spool directory for {local} under {cyrus.root / 'spool'}")


INTEROP_USERS = ("bench", "osd", LATE_LOCAL)


def interop_settings(
    cyrus: CyrusServer, mta: EximServer | OpenSMTPD, local: str, strategy: str, memory: IdlePush
) -> RoundTripSettings:
    """Submit to Exim (587, STARTTLS + AUTH) or OpenSMTPD (port 25 without TLS: its TLS never completes,
    see tests/interop/opensmtpd.py); read the Cyrus INBOX over IMAPS."""
    address = cyrus.address(local)
    creds = Credentials(address, cyrus.users[local])
    tls = TLSSettings(ca_file=str(cyrus.ca_file), server_name=cyrus.server_name)
    if isinstance(mta, EximServer):
        smtp = SMTPSettings(Endpoint(mta.host, mta.ports["submission"], "starttls", tls), creds)
    else:
        smtp = SMTPSettings(Endpoint(mta.host, mta.ports["smtp"], "none", tls))
    receiver = IMAPSettings(Endpoint(cyrus.host, cyrus.ports["imaps"], "implicit", tls), creds)
    base = RoundTripSettings(
        name=f"bench-{strategy.replace('/', '-')}",
        smtp=smtp,
        receiver=receiver,
        sender=address,
        recipient=address,
        key=KEY,
    )
    return strategy_settings(base, strategy, "imap", memory)


async def bench_interop(rounds: int, slow_rounds: int, delay: float) -> dict[str, dict[str, float]]:
    """Exim -> Cyrus and OpenSMTPD -> Cyrus (tests/interop, root, scripts/install-interop.sh), before and
    after interleaved; ground truth: the message file appearing in Cyrus's spool. Then a canary held in
    Exim's queue and released ``delay`` s into the run (plus a draw within 250 ms): Cyrus here runs
    without idled, so its IDLE never pushes."""
    report: dict[str, dict[str, float]] = {}
    reap_interop_orphans()
    root = make_interop_root()
    servers: list[CyrusServer | EximServer | OpenSMTPD] = []
    try:
        tls = write_leaf(
            write_ca(root / "tls"),
            root / "tls",
            identities=("localhost", "mail.example.test", "127.0.0.31", "127.0.0.32", "127.0.0.33"),
        )
        cyrus = CyrusServer(root / "cyrus", tls, make_users(INTEROP_USERS))
        servers.append(cyrus)
        cyrus.setup()
        cyrus.start()
        users = {cyrus.address(local): pw for local, pw in cyrus.users.items()}
        lmtp = (cyrus.host, cyrus.ports["lmtp"])
        exim = EximServer(root / "exim", tls, users, lmtp=lmtp)
        servers.append(exim)
        exim.setup()
        exim.start()
        mtas: list[tuple[str, str, EximServer | OpenSMTPD]] = [("Exim", "bench", exim)]
        if not opensmtpd_problems():
            osd = OpenSMTPD(root / "opensmtpd", tls, f"lmtp://{cyrus.host}:{cyrus.ports['lmtp']}", users)
            servers.append(osd)
            osd.start()
            mtas.append(("OpenSMTPD", "osd", osd))
        memory = IdlePush()
        for name, local, mta in mtas:
            cyrus.clear(local)
            got: dict[str, list[Sample]] = {BEFORE: [], AFTER: []}
            with SpoolWatcher(cyrus_spool(cyrus, local)) as watcher:
                for _ in range(rounds):
                    for strategy in (BEFORE, AFTER):
                        settings = interop_settings(cyrus, mta, local, strategy, memory)
                        got[strategy].append(await one(settings, watcher))
                        await asyncio.sleep(0.05)
            for strategy, samples in got.items():
                report[f"{strategy}/imap {name} -> Cyrus"] = summary(samples)
        # In flight on Cyrus (no idled): Exim holds mail to late@ until a queue run releases it.
        rng = random.Random(23)
        memory = IdlePush()
        flight = (BEFORE, AFTER, "idle-off")
        held: dict[str, list[Sample]] = {k: [] for k in flight}
        cyrus.clear(LATE_LOCAL)
        with SpoolWatcher(cyrus_spool(cyrus, LATE_LOCAL)) as watcher:
            for _ in range(slow_rounds):
                for strategy in flight:
                    settings = interop_settings(cyrus, exim, LATE_LOCAL, strategy, memory)
                    exim.hold_late = True
                    timer = threading.Timer(delay + rng.uniform(0, 0.25), exim.deliver_queue)
                    timer.start()
                    try:
                        held[strategy].append(await one(settings, watcher))
                    finally:
                        timer.join()
        exim.hold_late = False
        for strategy, samples in held.items():
            report[f"{strategy}/imap Exim -> Cyrus ({delay:g}s held, no idled)"] = summary(samples, True)
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
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
    ap.add_argument(
        "--interop",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also Exim/OpenSMTPD -> Cyrus (root, scripts/install-interop.sh); auto: if installed",
    )
    ap.add_argument("--interop-only", action="store_true", help="only Exim/OpenSMTPD -> Cyrus")
    args = ap.parse_args()
    load = "load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    interop = args.interop == "yes" or (
        args.interop == "auto" and INTEROP_ROOT.is_dir() and os.geteuid() == 0
    )
    report: dict[str, dict[str, float]] = {}
    if args.interop_only:
        report = asyncio.run(bench_interop(args.rounds, args.slow_rounds, args.slow_delay))
    elif args.silent_idle_only:
        report = asyncio.run(bench_silent_idle(args.slow_rounds, args.slow_delay))
    else:
        with MailStack(make_root()) as stack:
            report = asyncio.run(bench(stack, args.rounds, args.slow_delay, args.slow_rounds))
        if interop:
            report.update(asyncio.run(bench_interop(args.rounds, args.slow_rounds, args.slow_delay)))
        report.update(asyncio.run(bench_silent_idle(args.slow_rounds, args.slow_delay)))
    load += "; at end: " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json:  # first: figures must not be lost to a printing slip
        args.json.write_text(json.dumps({"load": load, "report": report}, indent=2) + "\n")
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), load)
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
