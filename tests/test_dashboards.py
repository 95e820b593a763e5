"""The Grafana dashboards in dashboards/: generated, well-formed, on the datasource variable, and asking
only for metrics that exist. tests/test_prometheus_live.py runs every query against a real Prometheus.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.dashboards import (
    DASHBOARD_DIR,
    DASHBOARDS,
    load,
    panels,
    queries,
    substitute,
)
from tests.support.procs import run_bounded

ROOT = Path(__file__).resolve().parent.parent
METRICS_DOC = ROOT / "docs" / "metrics.md"
RULES_DIR = ROOT / "deploy" / "prometheus"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
# Series that are not mailcanary's own but that the dashboards may use.
FOREIGN_METRICS = {"up"}


def all_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard file, panel title, refId, expr) of every query of every dashboard."""
    return [
        (path.name, p["title"], t["refId"], t["expr"]) for path in DASHBOARDS for p, t in queries(load(path))
    ]


def documented_metrics() -> set[str]:
    """Metric names in docs/metrics.md tables, with the series names a histogram or counter exposes."""
    names: set[str] = set()
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\|\s*`((?:mailcanary|probe)_\w+)`\s*\|\s*(\w+)", line)
        if not m:
            continue
        name, kind = m.groups()
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def recorded_series() -> set[str]:
    names = set()
    for path in RULES_DIR.glob("*.yml"):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            names |= {r["record"] for r in group["rules"] if "record" in r}
    return names


# ---- structure -------------------------------------------------------------------------------------


def test_both_dashboards_exist() -> None:
    assert {p.name for p in DASHBOARDS} == {
        "mailcanary-overview.json",
        "mailcanary-tls.json",
        "mailcanary-probe.json",
        "mailcanary-domains.json",
        "mailcanary-reports.json",
    }


def test_committed_json_is_the_generator_output() -> None:
    proc = run_bounded([sys.executable, str(ROOT / "tools" / "gen_dashboards.py"), "--check"], 60)
    assert proc.returncode == 0, (
        "dashboards/*.json differ from tools/gen_dashboards.py; run python3 tools/gen_dashboards.py\n"
        + proc.stdout[-3000:]
        + proc.stderr
    )


def test_uids_unique_and_ids_unique_per_dashboard() -> None:
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids), uids
    for uid in uids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", uid), f"uid {uid!r} is not a valid Grafana uid"
    for path in DASHBOARDS:
        board = load(path)
        ids = [p["id"] for p in board["panels"]] + [
            p["id"] for r in board["panels"] for p in r.get("panels", [])
        ]
        assert len(set(ids)) == len(ids), f"{path.name}: duplicate panel ids"
        assert board.get("id") is None, f"{path.name}: id must be null or absent so that Grafana assigns one"


def test_variables() -> None:
    expected = {
        "mailcanary-overview.json": {"datasource", "job", "vantage", "instance", "probe"},
        "mailcanary-tls.json": {"datasource", "job", "vantage", "instance", "probe", "endpoint"},
        "mailcanary-probe.json": {"datasource", "job", "instance"},
        "mailcanary-domains.json": {"datasource", "job", "vantage", "instance", "probe", "domain"},
        "mailcanary-reports.json": {"datasource", "job", "vantage", "instance", "probe", "domain"},
    }
    for path in DASHBOARDS:
        variables = {v["name"]: v for v in load(path)["templating"]["list"]}
        assert set(variables) == expected[path.name], path.name
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        for name, v in variables.items():
            if name != "datasource":
                assert v["datasource"] == DS_REF, f"{path.name}: ${name} does not use $datasource"
                assert v["includeAll"] and v["allValue"] == ".*", f"{path.name}: ${name}"


def test_every_panel_and_query_uses_the_datasource_variable() -> None:
    problems = []
    for path in DASHBOARDS:
        for panel in panels(load(path)):
            if panel.get("datasource") != DS_REF:
                problems.append(
                    f"{path.name}: panel {panel['title']!r}: datasource {panel.get('datasource')}"
                )
            if not panel.get("targets"):
                problems.append(f"{path.name}: panel {panel['title']!r} has no query")
            refs = [t["refId"] for t in panel.get("targets", [])]
            if len(set(refs)) != len(refs):
                problems.append(f"{path.name}: panel {panel['title']!r}: duplicate refIds {refs}")
            for t in panel.get("targets", []):
                if t.get("datasource") != DS_REF:
                    problems.append(
                        f"{path.name}: {panel['title']!r} {t['refId']}: datasource {t.get('datasource')}"
                    )
                if not str(t.get("expr", "")).strip():
                    problems.append(f"{path.name}: {panel['title']!r} {t['refId']}: empty expr")
    assert not problems, "\n".join(problems)


def test_every_referenced_metric_exists() -> None:
    known = documented_metrics() | recorded_series() | FOREIGN_METRICS
    assert "mailcanary_roundtrip_delivery_seconds_bucket" in known, "docs/metrics.md could not be parsed"
    problems = []
    for name, title, ref, expr in all_queries():
        # metric selectors (name{...}) and any mailcanary series, bare or recorded (with colons)
        used = set(re.findall(r"([a-zA-Z_:][\w:]*)\{", expr)) | set(re.findall(r"\bmailcanary[\w:]*", expr))
        for metric in sorted(used - known):
            problems.append(f"{name}: {title!r} {ref}: {metric} is neither in docs/metrics.md nor recorded")
    assert not problems, "\n".join(problems)


def test_tls_table_thresholds_are_21_7_0_days() -> None:
    board = load(DASHBOARD_DIR / "mailcanary-tls.json")
    table = next(p for p in panels(board) if p["type"] == "table" and p["title"] == "Endpoints")
    override = next(
        o for o in table["fieldConfig"]["overrides"] if o["matcher"]["options"] == "Days left (chain)"
    )
    steps = next(p["value"]["steps"] for p in override["properties"] if p["id"] == "thresholds")
    assert [s["value"] for s in steps] == [None, 0, 7, 21]
    assert [s["color"] for s in steps] == ["dark-red", "red", "orange", "green"]


def test_every_query_parses(tmp_path: Path) -> None:
    """promtool parses PromQL without a server when the queries are recording rules."""
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).exists():
        pytest.fail("promtool not found: install Debian's prometheus package (scripts/install-deps.sh)")
    rules = [
        {"record": f"dashboard_query_{i}", "expr": substitute(expr, job="mailcanary")}
        for i, (_, _, _, expr) in enumerate(all_queries())
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_substitute() -> None:
    expr = 'rate(x{job=~"$job", probe=~"${probe}"}[$__rate_interval]) + increase(y[$__range])'
    assert (
        substitute(expr, job="mailcanary") == 'rate(x{job=~"mailcanary", probe=~".*"}[1m]) + increase(y[1h])'
    )


# ---- provisioning ----------------------------------------------------------------------------------


def test_provisioning_loads_the_dashboards_directory() -> None:
    data = yaml.safe_load((PROVISIONING / "dashboards" / "mailcanary.yml").read_text())
    assert data["apiVersion"] == 1
    (provider,) = data["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")


def test_datasource_example_is_prometheus() -> None:
    files = sorted((PROVISIONING / "datasources").glob("*.yml"))
    assert files
    sources = [d for f in files for d in yaml.safe_load(f.read_text())["datasources"]]
    assert any(d["type"] == "prometheus" and d["access"] == "proxy" for d in sources)
