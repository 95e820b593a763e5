"""Idle RSS of ``mailcanary run`` with one probe, beside prometheus-blackbox-exporter's.

    python -m bench.idle_rss [--settle 20]

Starts the real Postfix + Dovecot of tests/mailstack on loopback (root), then ``mailcanary run`` with one
IMAP round trip (interval 10 s) and ``prometheus-blackbox-exporter`` (``apt-get install
prometheus-blackbox-exporter``) on loopback ports. Both are asked once (mailcanary runs its probe, which
loads TLS, the protocol clients and the metrics; blackbox answers one /probe of the same IMAPS port),
then left idle for ``--settle`` seconds while VmRSS is sampled; the last sample is the figure. Also lists
what each import of ``mailcanary run`` adds (in the order it loads them), and whether the sandbox server
(pymap, aiosmtpd), aioimaplib (no longer used) or bcrypt (only for basic auth) is loaded.
Prints mailcanary's figure, blackbox's, the ratio and the target (≤ 50 MB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench._common import (
    free_port,
    get,
    load,
    mailcanary_argv,
    rss_bytes,
    start_logged,
    stop,
    table,
    wait_http,
)
from bench.tls_cpu import BLACKBOX, blackbox_config
from tests.mailstack import MailStack, make_root
from tests.support.stackconfig import roundtrip, write_config

IMPORTS = """
import importlib, json, sys
def rss():
    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) / 1024
out, prev = [], rss()
for m in ["ssl", "asyncio", "yaml", "pydantic", "structlog", "prometheus_client",
          "apscheduler.schedulers.asyncio", "aiosmtplib", "cryptography.x509", "aiohttp.web",
          "importlib.metadata", "exporter.config", "probes.roundtrip.probe", "probes.tls.audit",
          "exporter.metrics.collector", "exporter.web.server", "exporter.daemon", "exporter.cli"]:
    importlib.import_module(m)
    now = rss(); out.append((m, round(now - prev, 1))); prev = now
sandbox = sorted({n.split('.')[0] for n in sys.modules} & {"pymap", "aiosmtpd", "aioimaplib", "bcrypt"})
print(json.dumps({"python": round(rss() - sum(d for _, d in out), 1), "imports": out, "sandbox": sandbox}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds idle after the first run")
    args = parser.parse_args()
    with MailStack(make_root()) as stack, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        probe = roundtrip(
            stack, tmp, "idle", stack.test_addresses[0], protocol="imap", receive_tls="implicit"
        )
        config = write_config(tmp, [probe], interval="10s", timeout="10s")
        (tmp / "blackbox.yml").write_text(
            yaml.safe_dump(blackbox_config(str(stack.ca_file), stack.server_name))
        )
        mc_port, bb_port = free_port(), free_port()
        mc = start_logged(mailcanary_argv(config, mc_port), tmp / "mailcanary.log")
        bb = start_logged(
            [BLACKBOX, f"--config.file={tmp / 'blackbox.yml'}", f"--web.listen-address=127.0.0.1:{bb_port}"],
            tmp / "blackbox.log",
        )
        try:
            wait_http(f"http://127.0.0.1:{mc_port}/-/ready")
            wait_http(f"http://127.0.0.1:{bb_port}/-/healthy")
            get(f"http://127.0.0.1:{bb_port}/probe?module=imaps&target={stack.host}:{stack.ports['imaps']}")
            deadline = time.monotonic() + 30
            while b'outcome="success",probe="idle"} 1.0' not in get(f"http://127.0.0.1:{mc_port}/metrics"):
                if time.monotonic() > deadline:
                    print("the probe did not succeed within 30 s", file=sys.stderr)
                    return 1
                time.sleep(0.5)
            end = time.monotonic() + args.settle
            while time.monotonic() < end:
                ours, theirs = rss_bytes(mc.pid), rss_bytes(bb.pid)
                time.sleep(1)
        finally:
            stop(mc)
            stop(bb)
    imports = json.loads(
        subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True).stdout
    )
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {load()}")
    print(
        f"what `mailcanary run` imports (MB each): python {imports['python']}, "
        + ", ".join(f"{m} {d}" for m, d in imports["imports"])
        + f"; pymap/aiosmtpd/aioimaplib/bcrypt loaded: {imports['sandbox'] or 'none'}"
    )
    rows = [
        (
            "idle RSS, `mailcanary run` with one probe, after its first run",
            f"{ours / 2**20:.1f} MB",
            f"{theirs / 2**20:.1f} MB",
            f"{ours / theirs:.1f}x blackbox",
            "≤ 50 MB",
        )
    ]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
