"""The shipped Prometheus rules (deploy/prometheus) and promtool, as the rule tests use them. promtool
comes with Debian's ``prometheus`` package; its absence is a failure, never a skip."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package (sudo scripts/install-deps.sh, "
            "or apt-get install prometheus)",
            pytrace=False,
        )
    return path


def run_promtool(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=timeout, check=False, cwd=RULES_DIR
    )


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for path in RULE_FILES:
        for group in load(path)["groups"]:
            rules.extend(r for r in group["rules"] if "alert" in r)
    return rules
