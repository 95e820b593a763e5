"""What a /metrics scrape at 1,000 probes costs in memory: the peak of Python allocations while the
body is made (tracemalloc) and the process's resident high-water mark (VmHWM), for gzip (what
Prometheus asks for) and plain, over the same store as ``bench.metrics_scrape``.

    python -m bench.scrape_memory [--probes 1000] [--scrapes 20] [--rounds 2] [--compare TREE]

Each scrape follows a run that re-renders one probe (a new generation, as at 17 runs a second), so the
pre-rendered part is joined and compressed again every time, as in the daemon. ``--compare TREE`` runs
the same measurement with another checkout's code (e.g. a worktree of an older commit) in the same
session, one child process per tree and kind, alternating, so both see the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

from bench._common import load, median

ROOT = Path(__file__).resolve().parent.parent


def _vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def child(probes: int, scrapes: int, gzipped: bool) -> dict[str, float]:
    """In a fresh process: build the store, then measure ``scrapes`` bodies of one kind."""
    import importlib.util

    from exporter.web.gzipbody import GzipBodies

    # This checkout's store builder (an older tree compared may not have it), over the tree's exporter.
    spec = importlib.util.spec_from_file_location(
        "metrics_scrape_here", Path(__file__).with_name("metrics_scrape.py")
    )
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)

    async def measure() -> dict[str, float]:
        store, _, cache = builder.filled_store(probes)
        names = store.names()
        gz = GzipBodies()
        first = await gz.body(await cache.parts(True)) if gzipped else await cache.body(True)
        size = len(first)
        del first
        rss_before = _vm("VmRSS")
        peaks: list[float] = []
        for n in range(scrapes):
            store.record(builder._results(names[n % probes], n))  # a run: one probe re-rendered
            tracemalloc.start()
            body = await gz.body(await cache.parts(True)) if gzipped else await cache.body(True)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            del body
        return {
            "peak_alloc_mb": median(peaks) / 2**20,
            "rss_before_mb": rss_before / 2**20,
            "hwm_mb": _vm("VmHWM") / 2**20,
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "body_mb": size / 2**20,
        }

    return asyncio.run(measure())


def run_child(tree: Path, probes: int, scrapes: int, gzipped: bool) -> dict[str, float]:
    """One child with ``tree`` first on the path (its exporter, its bench helpers) running this file's
    ``child``, loaded by path (an older tree has no bench/scrape_memory.py)."""
    here = str(Path(__file__).resolve())
    code = (
        f"import sys, json, importlib.util; sys.path.insert(0, {str(tree)!r}); "
        f"spec = importlib.util.spec_from_file_location('scrape_memory', {here!r}); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        f"print(json.dumps(m.child({probes}, {scrapes}, {gzipped})))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tree, check=True
    ).stdout
    return dict(json.loads(out.splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--scrapes", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="alternations per tree and kind")
    parser.add_argument("--compare", type=Path, help="another checkout measured alike, alternating")
    args = parser.parse_args()
    trees = [("this tree", ROOT)] + ([("compared", args.compare.resolve())] if args.compare else [])
    print(f"# /metrics scrape memory, {args.probes} probes, {args.scrapes} scrapes per child; {load()}")
    print("| tree | body | peak allocation (median) | RSS before scrapes | RSS high-water | body MB |")
    print("|---|---|---|---|---|---|")
    for gzipped in (True, False):
        for _ in range(args.rounds):
            for label, tree in trees:
                r = run_child(tree, args.probes, args.scrapes, gzipped)
                print(
                    f"| {label} | {'gzip' if gzipped else 'plain'} | {r['peak_alloc_mb']:.1f} MB | "
                    f"{r['rss_before_mb']:.0f} MB | {r['hwm_mb']:.0f} MB | {r['body_mb']:.1f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
