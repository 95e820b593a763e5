"""Every benchmark of the performance table, one after the other, in one run: one command, one day.

    python -m bench.all [--quick] [--only NAME ...] [--out DIR]

Runs each benchmark below as its own process (each starts what it needs on loopback: the real Postfix +
Dovecot of tests/mailstack, root; `scripts/install-deps.sh` first), writes its whole output to
``DIR/NAME.txt`` and prints, for each, the UTC time, the commit, the load before and after, its wall
time and the result table it printed (the lines that start with ``|``). ``--quick`` runs shorter
versions (fewer rounds, a shorter scale window) to check that all of them still work; the figures in
bench/README.md come from the full run.

A benchmark that fails is reported with its exit code and the next one runs: one broken row must not
hide the others.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from pathlib import Path

from bench._common import ROOT, load

# name -> (full argv, quick argv): the modules after ``python -m``; each row of issue 23's table.
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "metrics_scrape": (
        ["bench.metrics_scrape", "--scrapes", "20", "--slow-scrapes", "3", "--prometheus-scrapes", "10"],
        ["bench.metrics_scrape", "--scrapes", "3", "--slow-scrapes", "1", "--prometheus-scrapes", "2"],
    ),
    "roundtrip_cpu": (["bench.roundtrip_cpu", "--rounds", "40"], ["bench.roundtrip_cpu", "--rounds", "4"]),
    "tls_cpu": (["bench.tls_cpu", "--checks", "100"], ["bench.tls_cpu", "--checks", "10"]),
    "idle_rss": (["bench.idle_rss"], ["bench.idle_rss", "--settle", "3"]),
    "detection": (["bench.detection"], ["bench.detection", "--rounds", "4", "--slow-rounds", "2"]),
    "scale": (
        ["bench.scale"],
        ["bench.scale", "--probes", "100", "--duration", "60", "--anchor-duration", "20"],
    ),
}


def commit() -> str:
    git = ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]
    out = subprocess.run(git, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def run_one(name: str, argv: list[str], out_dir: Path) -> int:
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    before = load()
    t0 = time.monotonic()
    log = out_dir / f"{name}.txt"
    with log.open("wb") as fh:
        cmd = [sys.executable, "-m", *argv]
        rc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.monotonic() - t0
    print(f"\n## {name}: `python -m {' '.join(argv)}`")
    print(f"{started}, {wall:.0f} s, {before} → {load()}, exit {rc}, output in {log}\n")
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("|"):
            print(line)
    sys.stdout.flush()
    return rc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short versions, to check they all work")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these")
    parser.add_argument("--out", type=Path, default=None, help="where the outputs go (default: a new dir)")
    args = parser.parse_args()
    out_dir = args.out or Path(f"/tmp/mailcanary-bench-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"# mailcanary benchmarks, commit {commit()}, {'quick' if args.quick else 'full'} run")
    failed = []
    for name, (full, quick) in BENCHES.items():
        if args.only and name not in args.only:
            continue
        if run_one(name, quick if args.quick else full, out_dir) != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
