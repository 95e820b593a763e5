"""What the dashboards show, independent of how they are built: rows, panels (title, type, place, queries,
unit, thresholds, mappings, overrides, transformations), variables and links.

tests/data/dashboard_content.json was recorded from the hand-written generator's output before the move to
grafana-foundation-sdk (issue 20); the SDK build must show exactly the same. Defaults the SDK adds (panel
options such as ``frameIndex``, ``transparent: false``) are not part of it. After changing a panel on
purpose, rewrite the record: ``python3 tests/test_dashboard_content.py`` (and review its diff).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "tests" / "data" / "dashboard_content.json"
FIELD_KEYS = ("unit", "decimals", "min", "max", "thresholds", "mappings", "color")
TARGET_KEYS = ("refId", "expr", "legendFormat", "instant", "format")
PANEL_KEYS = ("interval", "repeat", "maxPerRow", "transformations")


def content(board: dict[str, Any]) -> dict[str, Any]:
    def panel(p: dict[str, Any]) -> dict[str, Any]:
        if p["type"] == "row":
            return {"row": p["title"], "gridPos": p["gridPos"]}
        field = p.get("fieldConfig", {})
        return {
            "title": p["title"],
            "type": p["type"],
            "gridPos": p["gridPos"],
            "description": p.get("description", ""),
            "targets": [{k: t[k] for k in TARGET_KEYS if k in t} for t in p.get("targets", [])],
            "defaults": {k: v for k, v in field.get("defaults", {}).items() if k in FIELD_KEYS},
            # one override per field name: their order does not matter
            "overrides": sorted(field.get("overrides", []), key=lambda o: json.dumps(o["matcher"])),
            **{k: p[k] for k in PANEL_KEYS if k in p},
        }

    return {
        "uid": board["uid"],
        "title": board["title"],
        "panels": [panel(p) for p in board["panels"]],
        "variables": [
            {k: v.get(k) for k in ("name", "label", "type", "query", "allValue", "includeAll", "multi")}
            for v in board["templating"]["list"]
        ],
        "links": board["links"],
    }


def current() -> dict[str, Any]:
    return {
        p.name: content(json.loads(p.read_text(encoding="utf-8")))
        for p in sorted((ROOT / "dashboards").glob("*.json"))
    }


def test_dashboards_show_what_they_showed() -> None:
    recorded = json.loads(RECORD.read_text(encoding="utf-8"))
    now = current()
    assert now.keys() == recorded.keys()
    for name, board in recorded.items():
        assert now[name]["panels"] == board["panels"], name
        assert now[name] == board, name


if __name__ == "__main__":
    RECORD.write_text(json.dumps(current(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    sys.exit(0)
