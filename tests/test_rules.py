"""The shipped Prometheus rules: promtool check + unit tests, and the conventions every alert follows.

promtool comes with Debian's ``prometheus`` package (scripts/install-deps.sh installs it). Its absence is
a failure, not a skip: a skip would let CI pass without having tested a single rule.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import rules as rules_support
from tests.support.procs import run_bounded
from tests.support.rules import ROOT, RULE_FILES, RULES_DIR, alert_rules, load, promtool_test, run_promtool

TEST_FILES = sorted((RULES_DIR / "tests").glob("*.yml"))
ALERTS_DOC = ROOT / "docs" / "alerts.md"
SLO_FILE = RULES_DIR / "mailcanary-slo.yml"
RUNBOOK_BASE = "https://github.com/mailcanary/mailcanary/blob/main/docs/alerts.md#"
SEVERITIES = {"critical", "warning"}

pytestmark = pytest.mark.prometheus


def github_anchors(markdown: str) -> set[str]:
    """Anchors GitHub derives from headings: lower case, punctuation dropped, spaces to dashes."""
    anchors = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            text = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


# ---- promtool ---------------------------------------------------------------------------------------


def test_rule_files_exist() -> None:
    names = {p.name for p in RULE_FILES}
    assert {"mailcanary-rules.yml", "mailcanary-slo.yml"} <= names
    assert TEST_FILES, "no promtool unit tests in deploy/prometheus/tests/"


def test_promtool_check_rules() -> None:
    proc = run_promtool("check", "rules", *(str(p) for p in RULE_FILES))
    assert proc.returncode == 0, f"promtool check rules failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests(test_file: Path) -> None:
    """One promtool process per file, each under its own hang guard: a failure or a hang names the file."""
    problem = promtool_test(test_file)
    assert problem is None, problem


def _unit_test_file(path: Path, eval_time: str, firing: bool) -> Path:
    """A unit test of the shipped rules: MailcanaryExporterAbsent (absent(up), for: 10m) at eval_time."""
    exp = [{"exp_labels": {"job": "mailcanary", "severity": "critical"}}] if firing else []
    case = {"eval_time": eval_time, "alertname": "MailcanaryExporterAbsent", "exp_alerts": exp}
    doc = {
        "rule_files": [str(RULES_DIR / "mailcanary-rules.yml")],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": [], "alert_rule_test": [case]}],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def test_a_failing_unit_test_file_is_named(tmp_path: Path) -> None:
    path = _unit_test_file(tmp_path / "quiet-but-absent_test.yml", "20m", firing=False)
    problem = promtool_test(path, cwd=tmp_path)
    assert problem is not None and "quiet-but-absent_test.yml" in problem, problem


def test_a_unit_test_file_over_its_bound_fails_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hang guard: 30 days of evaluations every minute (43,200 steps, minutes of CPU) against a 1 s
    bound. Only a faster machine than any could pass it in time: load makes it slower, never faster."""
    monkeypatch.setattr(rules_support, "DEFAULT_TEST_BOUND", 1.0)
    path = _unit_test_file(tmp_path / "thirty-days_test.yml", "30d", firing=True)
    with pytest.raises(pytest.fail.Exception, match=r"thirty-days_test\.yml.*still running after 1 s"):
        promtool_test(path, cwd=tmp_path)


# ---- conventions -----------------------------------------------------------------------------------


def test_unit_tests_load_the_shipped_rule_files() -> None:
    loaded = set()
    for path in TEST_FILES:
        loaded |= {(path.parent / f).resolve() for f in load(path)["rule_files"]}
    assert loaded == {p.resolve() for p in RULE_FILES}


def test_every_alert_rule_fires_and_stays_quiet_in_a_unit_test() -> None:
    """Per alert name: a case where it fires and one where it stays quiet; per rule (several rules may
    share a name, like the burn-rate pairs): a firing case whose labels carry that rule's labels."""
    cases: dict[str, list[list[dict[str, Any]]]] = {}
    for path in TEST_FILES:
        for test in load(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(case.get("exp_alerts") or [])
    problems = []
    for rule in alert_rules():
        name = rule["alert"]
        found = cases.get(name, [])
        if not any(found):
            problems.append(f"{name}: no unit test where it fires")
        if not any(not exp for exp in found):
            problems.append(f"{name}: no unit test where it stays quiet")
        labels = {k: str(v) for k, v in rule.get("labels", {}).items()}
        fired = [a.get("exp_labels", {}) for exp in found for a in exp]
        if not any(labels.items() <= {k: str(v) for k, v in f.items()}.items() for f in fired):
            problems.append(f"{name} {labels}: no unit test where this rule fires")
    assert not problems, "\n".join(problems)


def test_every_alert_has_summary_description_severity_and_runbook() -> None:
    anchors = github_anchors(ALERTS_DOC.read_text(encoding="utf-8"))
    problems = []
    for rule in alert_rules():
        name = rule["alert"]
        ann = rule.get("annotations", {})
        for key in ("summary", "description"):
            if not str(ann.get(key, "")).strip():
                problems.append(f"{name}: no {key}")
        severity = rule.get("labels", {}).get("severity")
        if severity not in SEVERITIES:
            problems.append(f"{name}: severity {severity!r} is not one of {sorted(SEVERITIES)}")
        url = ann.get("runbook_url", "")
        if url != RUNBOOK_BASE + name.lower():
            problems.append(f"{name}: runbook_url {url!r} is not {RUNBOOK_BASE}{name.lower()}")
        if name.lower() not in anchors:
            problems.append(f"{name}: docs/alerts.md has no section '## {name}'")
    assert not problems, "\n".join(problems)


def test_alert_names_are_unique_per_labels() -> None:
    seen = set()
    for rule in alert_rules():
        key = (rule["alert"], tuple(sorted(rule.get("labels", {}).items())))
        assert key not in seen, f"two rules {key}"
        seen.add(key)


# ---- SLO generator -----------------------------------------------------------------------------------


def gen_slo(*args: str) -> subprocess.CompletedProcess[str]:
    return run_bounded([sys.executable, str(ROOT / "tools" / "gen_slo_rules.py"), *args], 60)


def test_committed_slo_file_is_the_generator_output() -> None:
    proc = gen_slo()
    assert proc.returncode == 0, proc.stderr
    assert SLO_FILE.read_text(encoding="utf-8") == proc.stdout, (
        "deploy/prometheus/mailcanary-slo.yml differs from tools/gen_slo_rules.py's output; "
        "run: python3 tools/gen_slo_rules.py -o deploy/prometheus/mailcanary-slo.yml"
    )


def test_slo_file_records_every_window() -> None:
    records = {r["record"] for g in load(SLO_FILE)["groups"] for r in g["rules"] if "record" in r}
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d"):
        assert f"mailcanary:delivery_slo_errors:ratio_rate{window}" in records


def test_generator_refuses_a_threshold_that_is_not_a_bucket_edge() -> None:
    proc = gen_slo("--threshold", "45")
    assert proc.returncode != 0
    assert "not a histogram bucket edge" in proc.stderr


def test_generator_output_for_other_numbers_passes_promtool(tmp_path: Path) -> None:
    out = tmp_path / "slo.yml"
    proc = gen_slo("--threshold", "0.5", "--target", "0.995", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text(encoding="utf-8")
    assert 'le="0.5"' in text and "vector(0.995)" in text and "(14.4 * 0.005)" in text
    check = run_promtool("check", "rules", str(out))
    assert check.returncode == 0, check.stdout + check.stderr
