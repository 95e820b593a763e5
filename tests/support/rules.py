"""The shipped Prometheus rules (deploy/prometheus) and promtool, as the rule tests use them. promtool
comes with Debian's ``prometheus`` package; its absence is a failure, never a skip."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.procs import Hung, run_bounded

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


# `promtool check rules`: a hang guard. Measured worst case under load: under 1 s (2026-12-07, load 12).
CHECK_BOUND = 60.0


def run_promtool(*args: str, timeout: float = CHECK_BOUND) -> subprocess.CompletedProcess[str]:
    return run_bounded([promtool(), *args], timeout, cwd=RULES_DIR)


# `promtool test rules FILE`, one file per process: hang guards, not speed limits, counted in seconds
# promtool was not waiting for a CPU (tests/support/procs.py: a 60 s wall-clock bound killed the 2.7 s
# tlsscan file in a busy run at load 32). Each is at least 10x the worst wall time measured for that file
# under load (2026-12-07, 2 cores shared with other suites, load 4-23; bench/README.md, "promtool unit
# tests"), which is in the comment. The generator's two variants of a file (tests/test_generate.py) cost
# what the file costs: same series, same eval times.
TEST_BOUNDS: dict[str, float] = {
    "mailcanary-domain_test.yml": 120.0,  # worst 7.4 s (load 9)
    "mailcanary-heartbeats_test.yml": 60.0,  # worst 1.8 s (load 9)
    # before its 10m evaluation_interval: 37 s (load 9)
    "mailcanary-reports_test.yml": 120.0,  # worst 11.9 s (load 20, in pytest)
    "mailcanary-rules_test.yml": 120.0,  # worst 9.2 s (load 20, in pytest)
    # before its low-traffic test was cut from 3 days to 1 day + 20 minutes: 117 s (load 13)
    "mailcanary-slo_test.yml": 240.0,  # worst 23.9 s (load 23, in pytest)
    # before its stale-scan test was cut from 50 hours to 3: 27 s (load 13)
    "mailcanary-tlsscan_test.yml": 60.0,  # worst 2.7 s (load 20, in pytest)
}
# A file not listed (tests/test_rules_probe.py's coexistence files): each under 2 s (load 23).
DEFAULT_TEST_BOUND = 60.0


def run_promtool_test(path: Path, *, cwd: Path = RULES_DIR) -> subprocess.CompletedProcess[str]:
    """``promtool test rules`` on one file, under that file's own bound (``TEST_BOUNDS``): a hang fails
    the test naming the file, with what promtool printed until then."""
    bound = TEST_BOUNDS.get(path.name, DEFAULT_TEST_BOUND)
    arg = str(path.relative_to(cwd)) if path.is_relative_to(cwd) else str(path)
    try:
        return run_bounded([promtool(), "test", "rules", arg], bound, cwd=cwd)
    except Hung as exc:
        pytest.fail(
            f"promtool test rules {arg} (in {cwd}): still running after {bound:g} s not waiting for a CPU, "
            f"far above its measured worst case under load (tests/support/rules.py TEST_BOUNDS); killed.\n"
            f"{exc}",
            pytrace=False,
        )


def promtool_test(path: Path, *, cwd: Path = RULES_DIR) -> str | None:
    """One unit-test file passed: None; else what failed, naming the file."""
    proc = run_promtool_test(path, cwd=cwd)
    if proc.returncode == 0 and proc.stdout.count("SUCCESS") == 1:
        return None
    return f"promtool test rules {path.name} (in {cwd}) failed:\n{proc.stdout[-6000:]}{proc.stderr[-6000:]}"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for path in RULE_FILES:
        for group in load(path)["groups"]:
            rules.extend(r for r in group["rules"] if "alert" in r)
    return rules
