"""The shipped Grafana dashboards (dashboards/*.json) and their queries as Grafana would send them: what
the dashboard tests and the live Prometheus test share."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))

# Grafana's variables, replaced by values that make a query valid PromQL (and match everything).
GRAFANA_VARS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
}


def substitute(expr: str, **values: str) -> str:
    """The query Grafana would send: built-in interval variables, then $name / ${name} variables."""
    for name, value in GRAFANA_VARS.items():
        expr = expr.replace(name, value)

    def var(m: re.Match[str]) -> str:
        return values.get(m.group(1) or m.group(2), ".*")

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", var, expr)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included; rows themselves are not data panels."""
    for panel in board.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def queries(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in panels(board):
        for target in panel.get("targets", []):
            yield panel, target
