"""The ledger file as its format says, read without the ledger's own code (tests check the format)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def ledger_on_disk(path: Path) -> dict[str, Any]:
    """Version 3: a snapshot line ``{"version": 3, "probes": {...}}``, then one change per line
    (``["set", probe, nonce, {sent, state, session}]`` or ``["del", probe, nonce]``); a last line
    without its newline (a torn append) is not part of it."""
    raw = path.read_bytes()
    head, *lines = raw[: raw.rfind(b"\n") + 1].split(b"\n") if b"\n" in raw else [raw]
    data: dict[str, Any] = json.loads(head)
    probes = data["probes"]
    for line in lines:
        if line:
            op, probe, nonce, *item = json.loads(line)
            if op == "set":
                probes.setdefault(probe, {})[nonce] = item[0]
            else:
                probes.get(probe, {}).pop(nonce, None)
    data["probes"] = {p: v for p, v in probes.items() if v}
    return data
