"""CPU per round trip: mailcanary against a process-per-check loop, side by side, interleaved.

    python -m bench.roundtrip_cpu [--rounds 100]

Starts the real Postfix + Dovecot of tests/mailstack on loopback (root). One round trip is SMTP
submission with STARTTLS + AUTH, then IMAPS with the default detection; mailcanary runs it through its
Runner (as the daemon does: ledger, log line, results), in this process, warm; the anchor is
``bench/_anchor_check.py``, one new interpreter per check with smtplib + imaplib, as check_mail_loop and
check_email_delivery work. Rounds alternate (mailcanary, anchor, mailcanary, ...), each side on its own
mailbox, twice: verifying with ``ca_file``, and with the system trust store (``SSL_CERT_FILE`` points
OpenSSL's default store at the system bundle plus the test CA, so the ~140 system CAs are loaded as
they would be). mailcanary's CPU is this process's (all threads) during its rounds; the anchor's is
its children's (``RUSAGE_CHILDREN``). Prints each figure, the anchor's, the ratio and the target
(≤ 10 ms per round trip, ≥ 12x less than the anchor).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import ROOT, load, table
from exporter import logs
from exporter.config import load_config
from exporter.results import ResultStore
from exporter.runner import Runner, make_masker
from exporter.state import Ledger
from tests.mailstack import MailStack, make_root
from tests.stackconfig import roundtrip, write_config

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
ANCHOR = ROOT / "bench" / "_anchor_check.py"


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


async def measure(stack: MailStack, tmp: Path, rounds: int, system_store: bool) -> tuple[float, float, int]:
    """(mailcanary ms per round trip, anchor ms per round trip, failures)."""
    ours, theirs = stack.test_addresses[0], stack.test_addresses[1]
    ca_file = None if system_store else str(stack.ca_file)
    probe = roundtrip(stack, tmp, "cpu", ours, protocol="imap", receive_tls="implicit", smtp_tls="starttls")
    if system_store:
        for side in ("smtp", "receive"):
            probe[side]["tls_config"].pop("ca_file")
    key_file = tmp / "canary.key"
    key_file.write_bytes(os.urandom(32))
    loaded = load_config(str(write_config(tmp, [probe], canary_key_file=str(key_file))))
    runner = Runner(
        loaded=loaded,
        key=key_file.read_bytes(),
        ledger=Ledger(tmp / "ledger.json"),
        store=ResultStore(),
        masker=make_masker(loaded),
    )
    rt = loaded.config.roundtrip[0]
    anchor = [
        sys.executable,
        str(ANCHOR),
        stack.host,
        str(stack.ports["submission"]),
        str(stack.ports["imaps"]),
        theirs,
        stack.password(theirs),
        ca_file or "-",
    ]
    await runner.run_roundtrip(rt)  # warm-up: imports, first context build, the mailbox sweep
    await asyncio.to_thread(
        subprocess.run, anchor, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    mine = 0.0
    failures = 0
    kids_before = children_cpu()
    for _ in range(rounds):
        t0 = time.process_time()
        result = await runner.run_roundtrip(rt)
        mine += time.process_time() - t0
        failures += 0 if result.success else 1
        proc = await asyncio.to_thread(
            subprocess.run, anchor, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        failures += 0 if proc.returncode == 0 else 1
    kids = children_cpu() - kids_before
    return mine / rounds * 1000, kids / rounds * 1000, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=100, help="round trips per side and trust store")
    args = parser.parse_args()
    logs.configure("json", "warning", stream=open(os.devnull, "w"))  # noqa: SIM115
    rows = []
    with MailStack(make_root()) as stack, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        bundle = tmp / "system-plus-test-ca.pem"
        bundle.write_bytes(SYSTEM_BUNDLE.read_bytes() + b"\n" + stack.ca_file.read_bytes())
        for system_store in (False, True):
            if system_store:
                os.environ["SSL_CERT_FILE"] = str(bundle)
            sub = tmp / ("system" if system_store else "cafile")
            sub.mkdir()
            mine, anchor, failures = asyncio.run(measure(stack, sub, args.rounds, system_store))
            what = "system trust store" if system_store else "ca_file"
            rows.append(
                (
                    f"CPU per round trip, {what} ({args.rounds} each, {failures} failed)",
                    f"{mine:.1f} ms",
                    f"{anchor:.1f} ms",
                    f"{anchor / mine:.1f}x less",
                    "≤ 10 ms and ≥ 12x less",
                )
            )
            print(rows[-1], flush=True)
        os.environ.pop("SSL_CERT_FILE", None)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {load()}")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
