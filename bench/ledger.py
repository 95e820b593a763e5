"""What the write-ahead ledger costs the event loop when many runs write at once.

N simulated runs start together on one loop; each does what a round trip does to the ledger: ``begin``
(which canaries are awaited), record ``sending`` before DATA, ``accepted`` after, and ``finish``. Ours
is exporter.state.ledger.Ledger (one writer thread, batched locked read-modify-write, fsync of file and
directory). The anchor is the same four durable operations done the way main did them: synchronously on
the loop, one locked read-modify-write per operation (plus the fsyncs durability needs). A 1 ms ticker on
the loop measures how long the loop was stalled.

    python -m bench.ledger [--runs 300] [--dir /var/tmp]

A benchmark, not a test: figures and ratios, nothing asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import tempfile
import time
from pathlib import Path

from exporter.state.ledger import Ledger
from probes.canary import new_token


async def _ticker(stop: asyncio.Event, gaps: list[float]) -> None:
    last = time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now


async def ours(directory: Path, runs: int) -> tuple[float, float, int]:
    ledger = await asyncio.to_thread(Ledger, directory / "ledger.json")
    start_tx = ledger.transactions

    async def run(i: int) -> None:
        name = f"p{i}"
        token = new_token(name)
        await ledger.begin(name)
        await ledger.record(name, token, "sending")
        await ledger.record(name, token, "accepted")
        await ledger.finish(name, token, accepted=True, seen=True, swept=[], lost_after=3600)

    stop, gaps = asyncio.Event(), []  # type: ignore[var-annotated]
    tick = asyncio.create_task(_ticker(stop, gaps))
    t0 = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(runs)))
    wall = time.perf_counter() - t0
    stop.set()
    await tick
    ledger.close()
    return wall, max(gaps, default=0.0), ledger.transactions - start_tx


def _sync_op(path: Path, change: dict[str, object]) -> None:
    """main's way: lock, read, change, write a temp file, fsync, rename, fsync the directory."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data.update(change)
        tfd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ledger-")
        with os.fdopen(tfd, "w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        os.fsync(dfd)
        os.close(dfd)
    finally:
        os.close(fd)


async def anchor(directory: Path, runs: int) -> tuple[float, float, int]:
    path = directory / "ledger.json"

    async def run(i: int) -> None:
        name = f"p{i}"
        token = new_token(name)
        _sync_op(path, {})  # begin (main re-read the file for nonces)
        await asyncio.sleep(0)
        _sync_op(path, {name: {token.nonce: "sending"}})
        await asyncio.sleep(0)
        _sync_op(path, {name: {token.nonce: "accepted"}})
        await asyncio.sleep(0)
        _sync_op(path, {name: {}})

    stop, gaps = asyncio.Event(), []  # type: ignore[var-annotated]
    tick = asyncio.create_task(_ticker(stop, gaps))
    t0 = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(runs)))
    wall = time.perf_counter() - t0
    stop.set()
    await tick
    return wall, max(gaps, default=0.0), 4 * runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--dir", default=None, help="where to put the ledgers (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as a, tempfile.TemporaryDirectory(dir=args.dir) as b:
        o_wall, o_stall, o_tx = asyncio.run(ours(Path(a), args.runs))
        a_wall, a_stall, a_tx = asyncio.run(anchor(Path(b), args.runs))
    print(f"{args.runs} runs at once, 4 ledger operations each (load {os.getloadavg()[0]:.2f})")
    print(f"{'':28}{'ours':>12}{'anchor':>12}{'ratio':>10}")
    print(
        f"{'longest loop stall (ms)':28}{o_stall * 1000:12.1f}{a_stall * 1000:12.1f}{o_stall / a_stall:10.3f}"
    )
    print(f"{'wall time (s)':28}{o_wall:12.3f}{a_wall:12.3f}{o_wall / a_wall:10.3f}")
    print(f"{'transactions (fsyncs)':28}{o_tx:12d}{a_tx:12d}{o_tx / a_tx:10.3f}")


if __name__ == "__main__":
    main()
