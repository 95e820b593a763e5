"""What the write-ahead ledger costs the event loop when many runs write at once.

N simulated runs start together on one loop; each does what a round trip does to the ledger: ``begin``
(which canaries are awaited), record ``sending`` before DATA, ``accepted`` after, and ``finish``. Ours
is exporter.state.ledger.Ledger (one writer thread; queued operations share one locked transaction,
whose changes are appended to the journal with one fdatasync). "0.3.0" is the same Ledger with each
transaction rewriting the whole file instead (temp file, fsync, rename, fsync of the directory), as
0.3.0 saved it. The anchor is the same four durable operations done the way main did them: synchronously on
the loop, one locked read-modify-write per operation (plus the fsyncs durability needs). A 1 ms ticker on
the loop measures how long the loop was stalled.

    python -m bench.ledger [--runs 300] [--dir /var/tmp] [--one-by-one]

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


def _rewrite_whole(self: Ledger, data: bytes) -> None:
    self._compact(self._entries)  # 0.3.0's save: the whole file, atomically, every transaction


async def ours(
    directory: Path, runs: int, rewrite: bool = False, one_by_one: bool = False
) -> tuple[float, float, int, float]:
    if rewrite:
        Ledger._append = _rewrite_whole  # type: ignore[method-assign]
    ledger = await asyncio.to_thread(Ledger, directory / "ledger.json")
    start_tx = ledger.transactions
    cpu0 = time.process_time()

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
    if one_by_one:
        for i in range(runs):
            await run(i)
    else:
        await asyncio.gather(*(run(i) for i in range(runs)))
    wall = time.perf_counter() - t0
    stop.set()
    await tick
    ledger.close()
    cpu = time.process_time() - cpu0
    return wall, max(gaps, default=0.0), ledger.transactions - start_tx, cpu


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


async def anchor(directory: Path, runs: int, one_by_one: bool = False) -> tuple[float, float, int]:
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
    if one_by_one:
        for i in range(runs):
            await run(i)
    else:
        await asyncio.gather(*(run(i) for i in range(runs)))
    wall = time.perf_counter() - t0
    stop.set()
    await tick
    return wall, max(gaps, default=0.0), 4 * runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--dir", default=None, help="where to put the ledgers (default: a temp dir)")
    parser.add_argument("--one-by-one", action="store_true", help="runs one after the other, not at once")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(dir=args.dir) as a,
        tempfile.TemporaryDirectory(dir=args.dir) as b,
        tempfile.TemporaryDirectory(dir=args.dir) as c,
    ):
        o_wall, o_stall, o_tx, o_cpu = asyncio.run(ours(Path(a), args.runs, one_by_one=args.one_by_one))
        a_wall, a_stall, a_tx = asyncio.run(anchor(Path(b), args.runs, args.one_by_one))
        r_wall, r_stall, r_tx, r_cpu = asyncio.run(
            ours(Path(c), args.runs, rewrite=True, one_by_one=args.one_by_one)
        )
    how = "one after the other" if args.one_by_one else "at once"
    print(f"{args.runs} runs {how}, 4 ledger operations each (load {os.getloadavg()[0]:.2f})")
    print(f"{'':28}{'ours':>12}{'0.3.0':>12}{'anchor':>12}{'ratio':>10}")
    print(
        f"{'longest loop stall (ms)':28}{o_stall * 1000:12.1f}{r_stall * 1000:12.1f}{a_stall * 1000:12.1f}"
        f"{o_stall / a_stall:10.3f}"
    )
    print(f"{'wall time (s)':28}{o_wall:12.3f}{r_wall:12.3f}{a_wall:12.3f}{o_wall / a_wall:10.3f}")
    print(f"{'transactions':28}{o_tx:12d}{r_tx:12d}{a_tx:12d}{o_tx / a_tx:10.3f}")
    print(f"{'CPU per run (ms)':28}{o_cpu / args.runs * 1000:12.3f}{r_cpu / args.runs * 1000:12.3f}")


if __name__ == "__main__":
    main()
