"""Every dashboard type-checks against Grafana's own schema: ``@grafana/schema`` (npm) with ``tsc``.

Each dashboard becomes a TypeScript file ``const d: Dashboard = <the JSON>;`` and tsc --strict must report
nothing: unknown keys (excess properties), missing required fields (a variable's current text/value, a
link's tooltip) and wrong types are all findings. Grafana's enums (``"absolute"``, ``"value"``, …) are
TypeScript string enums, which a JSON literal can never be; ``Loose<T>`` turns each into the union of
its string values, which is exactly what Grafana reads from JSON. ``__inputs`` / ``__requires`` are
grafana.com import metadata, not part of the dashboard model, and are checked by tests/test_dashboards.py.

The dashboards are checked against two versions of @grafana/schema: 11.6, the Grafana version of the
grafana-foundation-sdk pinned in pyproject.toml (extra `dashboards`) that builds them, and 13.2, the
newest Grafana they are imported into. The npm packages (exact versions, below) are installed once per
version into a cache directory of its own (``$MAILCANARY_NPM_CACHE``, default
``~/.cache/mailcanary/npm``, then ``schema-<version>``; under a lock, so parallel suites don't race) with
npm from the package registry;
node and npm come from scripts/install-deps.sh. Their absence is a failure, not a skip.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.dashboards import DASHBOARDS

SCHEMA_VERSIONS = ("11.6.9", "13.2.3")
TYPESCRIPT = "typescript@7.0.2"
LOOSE = (
    "type Loose<T> = T extends string ? `${T}` : T extends number | boolean | null | undefined ? T"
    " : T extends readonly (infer U)[] ? Loose<U>[] : T extends object ? { [K in keyof T]: Loose<T[K]> } : T;"
)
TSCONFIG = {
    "compilerOptions": {
        "strict": True,
        "noEmit": True,
        "target": "es2020",
        "module": "esnext",
        "moduleResolution": "bundler",
        "skipLibCheck": True,
        "types": [],
    },
    "include": ["*.ts"],
}


def npm_cache() -> Path:
    default = Path.home() / ".cache" / "mailcanary" / "npm"
    return Path(os.environ.get("MAILCANARY_NPM_CACHE", str(default)))


@pytest.fixture(scope="session", params=SCHEMA_VERSIONS, ids=lambda v: f"grafana-schema-{v}")
def tsc(request: pytest.FixtureRequest) -> tuple[Path, Path]:
    """(tsc binary, node_modules) of one @grafana/schema version — installed into the cache on first use."""
    packages = (f"@grafana/schema@{request.param}", TYPESCRIPT)
    cache = npm_cache() / f"schema-{request.param}"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker or suite installing the same: wait for it
        return _install(cache, packages)


def _install(cache: Path, packages: tuple[str, ...]) -> tuple[Path, Path]:
    stamp = cache / ".installed"
    binary = cache / "node_modules" / ".bin" / "tsc"
    if not (binary.exists() and stamp.exists() and stamp.read_text() == " ".join(packages)):
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            pytest.fail(
                "node/npm not found: install them with sudo scripts/install-deps.sh (Debian: nodejs npm)",
                pytrace=False,
            )
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache), *packages],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, f"npm install failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        stamp.write_text(" ".join(packages))
    return binary, cache / "node_modules"


def typescript_for(name: str, board: dict[str, Any]) -> str:
    model = {k: v for k, v in board.items() if not k.startswith("__")}
    ident = name.removesuffix(".json").replace("-", "_")
    return (
        "import type { Dashboard } from '@grafana/schema';\n"
        f"{LOOSE}\n"
        f"export const {ident}: Loose<Dashboard> = {json.dumps(model, indent=1)};\n"
    )


def run_tsc(tsc: tuple[Path, Path], workdir: Path, boards: dict[str, dict[str, Any]]) -> tuple[int, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "node_modules").symlink_to(tsc[1], target_is_directory=True)
    (workdir / "tsconfig.json").write_text(json.dumps(TSCONFIG))
    for name, board in boards.items():
        (workdir / (name.removesuffix(".json") + ".ts")).write_text(typescript_for(name, board))
    proc = subprocess.run(
        [str(tsc[0]), "-p", str(workdir)], capture_output=True, text=True, timeout=300, check=False
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def test_every_dashboard_matches_grafana_schema(tsc: tuple[Path, Path], tmp_path: Path) -> None:
    boards = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in DASHBOARDS}
    code, out = run_tsc(tsc, tmp_path / "check", boards)
    assert (code, out) == (0, ""), f"tsc found problems:\n{out}"


def test_the_check_finds_what_grafana_rejects(tsc: tuple[Path, Path], tmp_path: Path) -> None:
    """Guard for the guard: the faults found on the old dashboards are findings here."""
    board = json.loads(DASHBOARDS[0].read_text(encoding="utf-8"))
    board["templating"]["list"][1]["current"] = {}
    del board["links"][0]["tooltip"]
    board["panels"][0]["no_such_key"] = 1
    code, out = run_tsc(tsc, tmp_path / "bad", {"bad.json": board})
    assert code != 0
    assert "text, value" in out and "tooltip" in out and "no_such_key" in out, out


def test_import_metadata_for_grafana_com() -> None:
    for path in DASHBOARDS:
        board = json.loads(path.read_text(encoding="utf-8"))
        (ds_input,) = board["__inputs"]
        assert (ds_input["type"], ds_input["pluginId"]) == ("datasource", "prometheus")
        required = {(r["type"], r["id"]) for r in board["__requires"]}
        assert {("grafana", "grafana"), ("datasource", "prometheus")} <= required
        panel_types = {p["type"] for p in board["panels"] if p["type"] != "row"}
        assert {i for t, i in required if t == "panel"} == panel_types, path.name
        ds_var = next(v for v in board["templating"]["list"] if v["type"] == "datasource")
        assert ds_var["current"]["value"] == "${" + ds_input["name"] + "}"
