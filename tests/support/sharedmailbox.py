"""Two probes and a simulated mail client sharing one real mailbox (tests/mailstack), for the test and bench.

The mail client is another user's IMAP and POP3 sessions on the same mailbox, in a thread with the standard
library clients: it keeps delivering foreign mail and flags, moves (COPY + delete) and deletes it, and
reads and deletes foreign mail over POP3 — exactly what makes messages vanish between a probe's UIDL and
TOP, and what sends other sessions' ``* n FETCH (FLAGS …)`` into a probe's IMAP replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import poplib
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exporter.config import load_config
from exporter.run.results import ResultStore
from exporter.run.runner import Runner, make_masker
from exporter.state.ledger import Ledger
from tests.mailstack import MailStack
from tests.support.stackconfig import roundtrip, write_config

KEY = b"shared-mailbox-key-0123456789abc"


@dataclass
class ClientStats:
    actions: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


class MailClient:
    """A user's mail client hammering the mailbox, touching foreign mail only (never a canary)."""

    def __init__(self, stack: MailStack, address: str, seed: int = 1) -> None:
        self.stack = stack
        self.address = address
        self.stats = ClientStats()
        self._stop = threading.Event()
        self._rng = random.Random(seed)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._n = 0

    def __enter__(self) -> MailClient:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _foreign(self) -> bytes:
        self._n += 1
        return (
            f"From: friend{self._n}@example.org\r\nTo: {self.address}\r\nSubject: note {self._n}\r\n"
            f"Message-ID: <note{self._n}.{time.time()}@example.org>\r\n\r\nHello {self._n}\r\n"
        ).encode()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.stack.inject(self.address, self._foreign())
                self.stats.actions["deliver"] += 1
                if self._rng.random() < 0.7:
                    self._imap_round()
                else:
                    self._pop3_round()
            except Exception as exc:  # the client's own trouble is counted, never fails the probes
                self.stats.errors[type(exc).__name__] += 1
                time.sleep(0.05)

    def _imap_round(self) -> None:
        with imaplib.IMAP4_SSL(
            self.stack.host, self.stack.imaps_port, ssl_context=self.stack.ssl_context(), timeout=10
        ) as imap:
            imap._host = self.stack.server_name  # type: ignore[attr-defined]
            imap.login(self.address, self.stack.password(self.address))
            with contextlib.suppress(imaplib.IMAP4.error):
                imap.create("Archive")
            imap.select("INBOX")
            for _ in range(3):
                _, data = imap.uid("SEARCH", "NOT", "HEADER", "X-Mailcanary-Token", '""')
                uids = data[0].split() if data and data[0] else []
                if not uids:
                    break
                uid = self._rng.choice(uids).decode()
                action = self._rng.choice(["seen", "flag", "unflag", "move", "delete"])
                if action == "seen":
                    imap.uid("STORE", uid, "+FLAGS", r"(\Seen)")
                elif action == "flag":
                    imap.uid("STORE", uid, "+FLAGS", r"(\Flagged)")
                elif action == "unflag":
                    imap.uid("STORE", uid, "-FLAGS", r"(\Seen \Flagged)")
                elif action == "move":
                    imap.uid("COPY", uid, "Archive")
                    imap.uid("STORE", uid, "+FLAGS", r"(\Deleted)")
                    imap.uid("EXPUNGE", uid)
                else:
                    imap.uid("STORE", uid, "+FLAGS", r"(\Deleted)")
                    imap.uid("EXPUNGE", uid)
                self.stats.actions[f"imap_{action}"] += 1
                time.sleep(0.005)
            imap.logout()

    def _pop3_round(self) -> None:
        pop = poplib.POP3_SSL(
            self.stack.host, self.stack.pop3s_port, context=self.stack.ssl_context(), timeout=10
        )
        try:
            pop.user(self.address)
            pop.pass_(self.stack.password(self.address))
            _, listing, _ = pop.uidl()
            numbers = [int(line.split()[0]) for line in listing]
            self._rng.shuffle(numbers)
            for number in numbers[:3]:
                try:
                    _, head, _ = pop.top(number, 0)
                except poplib.error_proto:
                    continue  # gone already (a probe or the IMAP side deleted it)
                if any(line.lower().startswith(b"x-mailcanary-token") for line in head):
                    continue
                pop.dele(number)
                self.stats.actions["pop3_delete"] += 1
            pop.quit()
        finally:
            with contextlib.suppress(Exception):
                pop.close()


@dataclass
class SharedResult:
    runs: int
    outcomes: Counter[str]
    messages: list[str]
    client: ClientStats
    seconds: float

    @property
    def false_failures(self) -> int:
        return self.runs - self.outcomes["success"]

    @property
    def rate(self) -> float:
        return self.false_failures / self.runs if self.runs else 0.0


def make_runner(stack: MailStack, tmp: Path, address: str, **extra: Any) -> Runner:
    key_file = tmp / "canary.key"
    key_file.write_bytes(KEY)
    probes: list[dict[str, Any]] = [
        roundtrip(stack, tmp, "shared-imap", address, protocol="imap", timeout="20s", **extra),
        roundtrip(stack, tmp, "shared-pop3", address, protocol="pop3", timeout="20s", **extra),
    ]
    loaded = load_config(str(write_config(tmp, probes, canary_key_file=str(key_file))))
    return Runner(
        loaded=loaded,
        key=KEY,
        ledger=Ledger(tmp / "ledger.json"),
        store=ResultStore(),
        masker=make_masker(loaded),
    )


def run_shared(stack: MailStack, tmp: Path, address: str, runs: int, seed: int = 1) -> SharedResult:
    """``runs`` round trips in all, split between an IMAP and a POP3 probe running side by side, while
    the simulated mail client works on the same mailbox. Every run on a healthy stack should succeed."""
    runner = make_runner(stack, tmp, address)
    outcomes: Counter[str] = Counter()
    messages: list[str] = []
    imap_probe, pop3_probe = runner.loaded.config.roundtrip
    left = [runs]

    async def loop(probe: Any) -> None:
        while left[0] > 0:
            left[0] -= 1
            result = await runner.run_entry(probe)
            outcomes[result.reason] += 1
            if not result.success:
                messages.append(f"{probe.name}: {result.reason}: {result.message}")

    async def main() -> None:
        await asyncio.gather(loop(imap_probe), loop(pop3_probe))

    started = time.monotonic()
    with MailClient(stack, address, seed) as client:
        asyncio.run(main())
    return SharedResult(
        runs=sum(outcomes.values()),
        outcomes=outcomes,
        messages=messages,
        client=client.stats,
        seconds=time.monotonic() - started,
    )
