"""CPU per round trip: mailcanary against a process-per-check loop, side by side, interleaved.

    python -m bench.roundtrip_cpu [--rounds 100] [--ab]

Starts the real Postfix + Dovecot of tests/mailstack on loopback (root). One round trip is SMTP
submission with STARTTLS + AUTH, then IMAPS with the default detection; mailcanary runs it through the
Runner the daemon builds (``Daemon._prepare``: durable ledger, status-page history with its bounded
transcript, the pre-rendered /metrics series re-rendered per run (with the scheduler's lag note before
it), the info-level JSON log line
written to /dev/null), in this process, warm. The anchor is ``bench/_anchor_check.py``, one new
interpreter per check with smtplib + imaplib, as check_mail_loop and check_email_delivery work, run
by the python of a bare venv made for the run (``venv --without-pip``): a normal interpreter start
with ``site``, but without this checkout's editable-install hook (.pth), whose imports (~10 ms) a
deployed check would not pay. Rounds alternate (mailcanary, anchor, mailcanary, ...), each side on its
own mailbox, twice: verifying with ``ca_file``, and with the system trust store (``SSL_CERT_FILE``
points OpenSSL's default store at the system bundle plus the test CA, so the ~140 system CAs are
loaded as they would be). mailcanary's CPU is this process's (all threads: the ledger's writer too)
during its rounds; the anchor's is its children's (``RUSAGE_CHILDREN``).

Also measured, in the same rounds: the floor of any asyncio client of this round trip, i.e. its two
TLS sessions alone (connect, SMTP banner/EHLO/STARTTLS/handshake/EHLO/QUIT; IMAPS handshake, greeting,
LOGOUT) with no AUTH, no message, no mailbox. Prints each figure, the anchor's, the ratio and the
target (≤ 8 ms per round trip, ≥ 12x less than the anchor).

``--ab`` measures issue 23's cuts one by one in the same rounds: each round runs mailcanary as it is
and then with one cut undone (the code before it, patched in by this bench only), interleaved, and
prints CPU per round trip (process, and the event loop's thread alone) for each. The undone cuts:
``ledger`` (every transaction rewrites the whole file: temp file, fsync, rename, fsync of the
directory, as 0.3.0 did, instead of appending with one fdatasync), ``logout`` (close waits for the
IMAP LOGOUT reply, as 0.3.0 did), ``quit`` (the same for SMTP QUIT's 221), ``anchors`` (the trust
store's files stat'ed on every TLS connection: ~300 with the system store), ``render`` (the
probe's /metrics series rendered at every change, i.e. twice per run: the scheduler's lag note and
the result, with 0.3.0's sample lines) and ``chain`` (the served chain of a remembered TLS scan
judged again at every run); ``all`` undoes them all (0.3.0's round trip). Each run is preceded by
the scheduler's lag note and followed by the render timer's flush, as in the daemon (where a
probe's runs are an interval apart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import ssl
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
from prometheus_client.core import Metric
from prometheus_client.utils import floatToGoString

from bench._common import ROOT, load, table
from exporter import logs
from exporter.config import load_config
from exporter.daemon import Daemon
from exporter.metrics import collector
from exporter.metrics.collector import SeriesCache
from exporter.state.ledger import Ledger
from probes.clients import smtp as smtp_client
from probes.clients.imap.connection import IMAPConnection
from probes.errors import ProbeError
from probes.recorder import Recorder
from probes.tls import chain, scanning
from probes.wire.net import CLOSE_TIMEOUT, close_writer
from tests.mailstack import MailStack, make_root
from tests.support.stackconfig import roundtrip, write_config

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ANCHOR = ROOT / "bench" / "_anchor_check.py"


async def _close_awaiting_logout(self: IMAPConnection) -> None:
    """0.3.0's IMAPConnection.close: LOGOUT, and its reply read, before closing."""
    if self._closed or self._writer is None:
        self._closed = True
        return
    try:
        async with asyncio.timeout(min(self.settings.timeout, CLOSE_TIMEOUT)):
            await self._command("LOGOUT", [b"LOGOUT"])
    except (ProbeError, OSError, TimeoutError):
        pass
    finally:
        self._closed = True
        await close_writer(self._writer)


def _sample_lines_before(fam: Metric) -> str:
    """0.3.0's sample_lines: labels sorted and escaped, values through floatToGoString, per sample."""

    def esc(value: str) -> str:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")

    out = []
    for sample in fam.samples:
        number = floatToGoString(sample.value)  # type: ignore[no-untyped-call]
        if sample.labels:
            labels = ",".join(f'{k}="{esc(v)}"' for k, v in sorted(sample.labels.items()))
            out.append(f"{sample.name}{{{labels}}} {number}\n")
        else:
            out.append(f"{sample.name} {number}\n")
    return "".join(out)


async def _quit_awaiting_reply(smtp: aiosmtplib.SMTP, recorder: Recorder) -> None:
    """0.3.0's goodbye: QUIT, and its 221 read, before closing."""
    recorder.debug("C: smtp", "QUIT")
    with contextlib.suppress(aiosmtplib.SMTPException, OSError):
        await smtp.quit()


def _rewrite_whole(self: Ledger, data: bytes) -> None:
    """0.3.0's save: the whole ledger written to a temp file, fsynced, renamed, directory fsynced."""
    self._compact(self._entries)


UNDO: dict[str, list[tuple[object, str, object]]] = {
    "ledger": [(Ledger, "_append", _rewrite_whole)],
    "logout": [(IMAPConnection, "close", _close_awaiting_logout)],
    "quit": [(smtp_client, "send_quit", _quit_awaiting_reply)],
    "anchors": [(chain, "ANCHOR_RECHECK", 0.0)],
    "chain": [(scanning, "chain_facts", chain._judge)],
    "render": [
        (collector, "sample_lines", _sample_lines_before),
        (SeriesCache, "_changed", SeriesCache._render),
    ],
}
UNDO["all"] = [patch for patches in list(UNDO.values()) for patch in patches]  # as 0.3.0 was


@contextlib.contextmanager
def undone(cut: str | None) -> Iterator[None]:
    """Run with one of issue 23's cuts undone (None: as it is)."""
    if cut is None:
        yield
        return
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in UNDO[cut]]
    for owner, name, old in UNDO[cut]:
        setattr(owner, name, old)
    try:
        yield
    finally:
        for owner, name, current in saved:
            setattr(owner, name, current)


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


async def floor_sessions(stack: MailStack, ctx: ssl.SSLContext) -> None:
    """The two TLS sessions of a round trip and nothing else, with asyncio streams."""
    r, w = await asyncio.open_connection(stack.host, stack.ports["submission"])
    await r.readline()
    for line in (b"EHLO bench.example.test\r\n", b"STARTTLS\r\n"):
        w.write(line)
        while (reply := await r.readline())[3:4] == b"-":
            pass
    await w.start_tls(ctx, server_hostname=stack.server_name)
    w.write(b"EHLO bench.example.test\r\n")
    while (reply := await r.readline())[3:4] == b"-":
        pass
    w.write(b"QUIT\r\n")
    await r.readline()
    w.close()
    await w.wait_closed()
    r, w = await asyncio.open_connection(
        stack.host, stack.ports["imaps"], ssl=ctx, server_hostname=stack.server_name
    )
    await r.readline()
    w.write(b"a LOGOUT\r\n")
    while not (await r.readline()).startswith(b"a "):
        pass
    w.close()
    await w.wait_closed()
    del reply


async def measure(
    stack: MailStack, tmp: Path, rounds: int, system_store: bool, python: str, variants: list[str | None]
) -> tuple[dict[str | None, tuple[float, float]], float, float, int]:
    """({variant: (mailcanary ms per round trip, of which the loop's thread)}, anchor ms, floor ms,
    failures)."""
    ours, theirs = stack.test_addresses[0], stack.test_addresses[1]
    ca_file = None if system_store else str(stack.ca_file)
    probe = roundtrip(stack, tmp, "cpu", ours, protocol="imap", receive_tls="implicit", smtp_tls="starttls")
    if system_store:
        for side in ("smtp", "receive"):
            probe[side]["tls_config"].pop("ca_file")
    key_file = tmp / "canary.key"
    key_file.write_bytes(os.urandom(32))
    config = write_config(tmp, [probe], canary_key_file=str(key_file))
    daemon = Daemon(str(config), "127.0.0.1:0")  # never started: its Runner, store and series
    loaded = load_config(str(config))
    runner = daemon._prepare(loaded)  # the daemon's own Runner: history, ledger, series re-render
    runner.limit_sessions()
    daemon.runner = runner
    daemon.state.probes = {p.name: "roundtrip" for p in loaded.config.roundtrip}
    daemon.store.ensure(list(daemon.state.probes))
    rt = loaded.config.roundtrip[0]
    floor_ctx = ssl.create_default_context(cafile=ca_file)
    anchor = [
        python,
        str(ANCHOR),
        stack.host,
        str(stack.ports["submission"]),
        str(stack.ports["imaps"]),
        theirs,
        stack.password(theirs),
        ca_file or "-",
    ]
    await runner.run_entry(rt)  # warm-up: imports, first context build, the mailbox sweep
    await asyncio.to_thread(
        subprocess.run, anchor, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    await floor_sessions(stack, floor_ctx)
    mine = {v: [0.0, 0.0] for v in variants}
    floor = 0.0
    failures = 0
    kids_before = children_cpu()
    for _ in range(rounds):
        for variant in variants:
            with undone(variant):
                t0, m0 = time.process_time(), time.thread_time()
                daemon.store.note_lag(rt.name, 0.0)  # what the scheduler does as it starts a run
                result = await runner.run_entry(rt)
                daemon.series.flush()  # what the render timer does before the probe's next run
                mine[variant][0] += time.process_time() - t0
                mine[variant][1] += time.thread_time() - m0
            failures += 0 if result.success else 1
        proc = await asyncio.to_thread(
            subprocess.run, anchor, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        failures += 0 if proc.returncode == 0 else 1
        t0 = time.process_time()
        await floor_sessions(stack, floor_ctx)
        floor += time.process_time() - t0
    kids = children_cpu() - kids_before
    assert daemon.series.renders > rounds  # the /metrics series were re-rendered after every run
    runner.ledger.close()
    per = {v: (cpu / rounds * 1000, loop / rounds * 1000) for v, (cpu, loop) in mine.items()}
    return per, kids / rounds * 1000, floor / rounds * 1000, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=100, help="round trips per side and trust store")
    parser.add_argument("--ab", action="store_true", help="also run with each cut undone, interleaved")
    args = parser.parse_args()
    variants: list[str | None] = [None, *(UNDO if args.ab else ())]
    logs.configure("json", "info", stream=open(os.devnull, "w"))  # noqa: SIM115  (the daemon's default)
    rows = []
    with MailStack(make_root()) as stack, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        venv.create(tmp / "anchor-venv", with_pip=False)  # a plain interpreter for the anchor
        python = str(tmp / "anchor-venv" / "bin" / "python")
        bundle = tmp / "system-plus-test-ca.pem"
        bundle.write_bytes(SYSTEM_BUNDLE.read_bytes() + b"\n" + stack.ca_file.read_bytes())
        for system_store in (False, True):
            if system_store:
                os.environ["SSL_CERT_FILE"] = str(bundle)
            sub = tmp / ("system" if system_store else "cafile")
            sub.mkdir()
            per, anchor, floor, failures = asyncio.run(
                measure(stack, sub, args.rounds, system_store, python, variants)
            )
            what = "system trust store" if system_store else "ca_file"
            mine, loop = per[None]
            rows.append(
                (
                    f"CPU per round trip, {what} ({args.rounds} each, {failures} failed; "
                    f"loop thread {loop:.1f} ms)",
                    f"{mine:.1f} ms",
                    f"{anchor:.1f} ms",
                    f"{anchor / mine:.1f}x less",
                    "≤ 8 ms and ≥ 12x less",
                )
            )
            for variant in variants[1:]:
                cpu, loop = per[variant]
                rows.append(
                    (
                        f"… with the `{variant}` cut undone, {what} (loop thread {loop:.1f} ms)",
                        f"{cpu:.1f} ms",
                        f"{anchor:.1f} ms",
                        f"{anchor / cpu:.1f}x less",
                        f"the cut saves {cpu - mine:.1f} ms",
                    )
                )
            rows.append(
                (
                    f"… floor: its two TLS sessions alone, asyncio, {what}",
                    f"{floor:.1f} ms",
                    f"{anchor:.1f} ms",
                    f"{anchor / floor:.1f}x less",
                    f"12x less would be ≤ {anchor / 12:.1f} ms",
                )
            )
            print(*rows[-len(variants) - 1 :], sep="\n", flush=True)
        os.environ.pop("SSL_CERT_FILE", None)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {load()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
