"""Sharding: ``--shard i/N`` runs the probes whose name hashes to share ``i`` of ``N`` (stable across
restarts and instances, so N instances together run every probe once)."""

from __future__ import annotations

import hashlib
import re


def parse_shard(text: str) -> tuple[int, int]:
    """``i/N`` with 0 <= i < N; raises ValueError with a one-line reason."""
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if m is None:
        raise ValueError(f"shard {text!r}: expected i/N, e.g. 0/2")
    index, count = int(m[1]), int(m[2])
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {text!r}: need 0 <= i < N")
    return index, count


def in_shard(name: str, shard: tuple[int, int] | None) -> bool:
    """Stable across restarts, machines and Python versions (not ``hash()``, which is salted)."""
    if shard is None:
        return True
    index, count = shard
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % count == index
