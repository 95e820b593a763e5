"""Idle RSS of ``mailcanary run`` with one probe, beside prometheus-blackbox-exporter's.

    python -m bench.idle_rss [--settle 20] [--compare TREE] [--imports-only]

Starts the real Postfix + Dovecot of tests/mailstack on loopback (root), then ``mailcanary run`` with one
IMAP round trip (interval 10 s) and ``prometheus-blackbox-exporter`` (``apt-get install
prometheus-blackbox-exporter``) on loopback ports. Both are asked once (mailcanary runs its probe, which
loads TLS, the protocol clients and the metrics; blackbox answers one /probe of the same IMAPS port),
then left idle for ``--settle`` seconds while VmRSS is sampled; the last sample is the figure.

``--compare TREE`` runs a second ``mailcanary run`` from another source tree (e.g. ``git archive`` of the
commit before a change, unpacked) at the same time, on the stack's second mailbox, so before and after
are measured side by side under the same load. Each daemon writes the modules it has loaded when it
stops (a two-line wrapper around ``exporter.cli.main``: ``atexit``, nothing else), and the optional ones
it should not need for one round trip are listed (:data:`OPTIONAL`).

The import table is what each top-level package costs when ``import exporter.cli`` loads it: VmRSS
before and after each module's own code runs (an import hook), its submodules' share subtracted, summed
per package, in a fresh interpreter per tree. A shared library counts where it is first loaded (libcrypto
under ``_hashlib`` or ``ssl``, whichever comes first).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench._common import (
    ROOT,
    free_port,
    get,
    load,
    rss_bytes,
    start_logged,
    stop,
    table,
    wait_http,
)
from bench.tls_cpu import BLACKBOX, blackbox_config
from tests.mailstack import MailStack, make_root
from tests.support.stackconfig import roundtrip, write_config

TARGET_MB = 40.0
# Loaded by `run` only when a feature needs them; one IMAP round trip needs none of them.
OPTIONAL = (
    "dns",  # dnspython: domain checks, DNSBL, MTA-STS, DANE
    "defusedxml",  # DMARC reports
    "probes.reports.mailbox",  # the reports kind (parsers, unpacking)
    "probes.heartbeats.mailbox",  # the heartbeats kind
    "probes.domain.probe",  # the domain checks
    "probes.tls.hello",  # the TLS scan's ClientHello tables
    "probes.receipt.dsn",  # bounce (DSN) parsing: only when a bounce is seen
    "probes.auth.oauth",  # OAuth logins
    "exporter.web.status",  # the status page: on its first request
    "exporter.demo",
    "exporter.generate",
    "exporter.config.schema",
    "bcrypt",  # basic auth of --web.config.file
    "pymap",
    "aiosmtpd",
    "aioimaplib",
)

# `mailcanary run`, writing the modules it loaded to $MAILCANARY_BENCH_MODULES when it stops (not those
# registered by importlib.util.LazyLoader and never read: probes.lazy.module).
WRAPPER = (
    "import atexit, json, os, sys\n"
    "atexit.register(lambda: open(os.environ['MAILCANARY_BENCH_MODULES'], 'w').write(json.dumps("
    "sorted(n for n, m in list(sys.modules.items()) if type(m).__name__ != '_LazyModule'))))\n"
    "from exporter.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)

# Self cost of each module (its own code, submodules excluded) while `import exporter.cli` runs.
IMPORTS = r"""
import collections, importlib, importlib.abc, json, sys
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096 / 2**20
cost, stack = collections.Counter(), []
class Loader(importlib.abc.Loader):
    def __init__(self, inner): self.inner = inner
    def create_module(self, spec): return self.inner.create_module(spec)
    def exec_module(self, module):
        stack.append([rss(), 0.0])
        try:
            self.inner.exec_module(module)
        finally:
            start, children = stack.pop()
            total = rss() - start
            cost[module.__name__.split('.')[0]] += total - children
            if stack:
                stack[-1][1] += total
class Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        for finder in sys.meta_path:
            find = None if finder is self else getattr(finder, 'find_spec', None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
                    spec.loader = Loader(spec.loader)
                return spec
        return None
sys.meta_path.insert(0, Finder())
base = rss()
import exporter.cli
print(json.dumps({"python": round(base, 1), "total": round(rss(), 1), "modules": len(sys.modules),
                  "packages": {k: round(v, 2) for k, v in cost.most_common()}}))
"""


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


def import_costs(tree: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", IMPORTS], capture_output=True, text=True, env=_env(tree), cwd=tree, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def import_cpu(trees: list[tuple[str, Path]], rounds: int = 7) -> dict[str, float]:
    """Median CPU seconds (user + system) of ``python -c 'import exporter.cli'`` per tree, the trees
    alternating round by round (the machine is shared: CPU time, not wall time)."""
    spent: dict[str, list[float]] = {label: [] for label, _ in trees}
    for _ in range(rounds):
        for label, tree in trees:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            subprocess.run(
                [sys.executable, "-c", "import exporter.cli"], env=_env(tree), cwd=tree, check=True
            )
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            spent[label].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {label: statistics.median(values) for label, values in spent.items()}


def _start(
    tree: Path, config: Path, port: int, log: Path, modules: Path, extra: dict[str, str]
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", WRAPPER, "run", "--config", str(config), "--listen", f"127.0.0.1:{port}"]
    env = {**_env(tree), "MAILCANARY_BENCH_MODULES": str(modules), **extra}
    # cwd: `python -c` puts the working directory first on sys.path, before PYTHONPATH
    with log.open("wb") as out:
        return subprocess.Popen(
            [*argv, "--log-format", "json"], stdout=out, stderr=subprocess.STDOUT, cwd=tree, env=env
        )


def _wait_success(port: int, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    want = f'outcome="success",probe="{name}"}} 1.0'.encode()
    while want not in get(f"http://127.0.0.1:{port}/metrics"):
        if time.monotonic() > deadline:
            raise SystemExit(f"probe {name} did not succeed within {timeout:.0f} s")
        time.sleep(0.5)


def _imports_line(label: str, costs: dict[str, Any], top: int = 14) -> str:
    packages = list(costs["packages"].items())[:top]
    return (
        f"{label}: interpreter {costs['python']} MB, after `import exporter.cli` {costs['total']} MB "
        f"({costs['modules']} modules); by package (MB): " + ", ".join(f"{k} {v}" for k, v in packages)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds idle after the first run")
    parser.add_argument("--compare", type=Path, default=None, help="another source tree, run side by side")
    parser.add_argument(
        "--arena-max", type=int, default=None, help="also this tree with MALLOC_ARENA_MAX=N (glibc)"
    )
    parser.add_argument("--imports-only", action="store_true", help="only the import table (no stack)")
    args = parser.parse_args()
    trees = [("this tree", ROOT)] + ([("compare", args.compare.resolve())] if args.compare else [])
    variants: list[tuple[str, Path, dict[str, str]]] = [(label, tree, {}) for label, tree in trees]
    if args.arena_max is not None:
        variants.append(
            (f"this tree, MALLOC_ARENA_MAX={args.arena_max}", ROOT, {"MALLOC_ARENA_MAX": str(args.arena_max)})
        )
    if args.imports_only:
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {load()}")
        for label, tree in trees:
            print(_imports_line(label, import_costs(tree)))
        cpu = import_cpu(trees)
        print(
            "CPU of `import exporter.cli` (median of 7, alternating): "
            + ", ".join(f"{label} {seconds * 1000:.0f} ms" for label, seconds in cpu.items())
        )
        return 0
    figures: dict[str, float] = {}
    loaded: dict[str, list[str]] = {}
    with MailStack(make_root()) as stack, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        (tmp / "blackbox.yml").write_text(
            yaml.safe_dump(blackbox_config(str(stack.ca_file), stack.server_name))
        )
        bb_port = free_port()
        procs: dict[str, tuple[subprocess.Popen[bytes], int, Path]] = {}
        bb = start_logged(
            [BLACKBOX, f"--config.file={tmp / 'blackbox.yml'}", f"--web.listen-address=127.0.0.1:{bb_port}"],
            tmp / "blackbox.log",
        )
        try:
            for i, (label, tree, extra) in enumerate(variants):
                home = tmp / f"mc{i}"
                home.mkdir()
                probe = roundtrip(
                    stack, home, "idle", stack.test_addresses[i], protocol="imap", receive_tls="implicit"
                )
                config = write_config(home, [probe], interval="10s", timeout="10s")
                port = free_port()
                procs[label] = (
                    _start(tree, config, port, home / "mailcanary.log", home / "modules.json", extra),
                    port,
                    home / "modules.json",
                )
            wait_http(f"http://127.0.0.1:{bb_port}/-/healthy")
            get(f"http://127.0.0.1:{bb_port}/probe?module=imaps&target={stack.host}:{stack.ports['imaps']}")
            for _, port, _ in procs.values():
                wait_http(f"http://127.0.0.1:{port}/-/ready", timeout=120)
                _wait_success(port, "idle")
            end = time.monotonic() + args.settle
            while time.monotonic() < end:
                figures = {label: rss_bytes(p.pid) / 2**20 for label, (p, _, _) in procs.items()}
                figures["blackbox"] = rss_bytes(bb.pid) / 2**20
                time.sleep(1)
            when = f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {load()}"
        finally:
            for p, _, _ in procs.values():
                stop(p)
            stop(bb)
        for label, (_, _, modules) in procs.items():
            loaded[label] = json.loads(modules.read_text()) if modules.exists() else []
    print(when)
    for label, tree in trees:
        print(_imports_line(label, import_costs(tree)))
    for label, _, _ in variants:
        names = set(loaded[label])
        have = [m for m in OPTIONAL if m in names or any(n.startswith(m + ".") for n in names)]
        print(f"{label}: optional modules loaded after the first run: {', '.join(have) or 'none'}")
    bb_mb = figures["blackbox"]
    rows = [
        (
            f"idle RSS, `mailcanary run` with one probe, after its first run ({label})",
            f"{figures[label]:.1f} MB",
            f"{bb_mb:.1f} MB",
            f"{figures[label] / bb_mb:.1f}x blackbox",
            f"≤ {TARGET_MB:.0f} MB",
        )
        for label, _, _ in variants
    ]
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
