"""tools/check_imports.py: the project has no import circle, no private cross-package import, no
``probes`` -> ``exporter`` import and no import of a test module; and the checker finds each of those in
a tiny fake tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.procs import run_bounded

ROOT = Path(__file__).resolve().parent.parent
CHECKER = ROOT / "tools" / "check_imports.py"


def _run(root: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(CHECKER)] + ([str(root)] if root else [])
    return run_bounded(args, 120)


def test_project_is_clean() -> None:
    proc = _run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == ""


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_fake_tree_reports_circle_private_import_and_library_to_daemon(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "probes/__init__.py": "",
            "probes/a.py": "from probes.b import B\nA = 1\n",
            "probes/b.py": "def f():\n    from probes import a\n    return a\nB = 2\n",  # function-local
            "probes/wire/__init__.py": "",
            "probes/wire/_secret.py": "S = 1\n",
            "probes/wire/ok.py": "from probes.wire._secret import S\n",  # inside its package: allowed
            "probes/c.py": "from exporter.d import D\n",
            "exporter/__init__.py": "",
            "exporter/d.py": "from probes.wire import _secret\nD = 1\n",
            "exporter/e.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from exporter.f import F\n"
            ),
            "exporter/f.py": "from exporter.e import TYPE_CHECKING as F\n",  # circle only via TYPE_CHECKING
        },
    )
    proc = _run(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "probes/a.py:1: import circle: probes.a -> probes.b -> probes.a" in lines
    assert (
        "exporter/d.py:1: private import: exporter.d imports probes.wire._secret (private to probes.wire)"
        in lines
    )
    assert "probes/c.py:1: library imports daemon: probes.c imports exporter.d" in lines
    assert len(lines) == 3, lines  # the allowed private import and the TYPE_CHECKING circle are not problems


def test_fake_tree_circle_through_a_package_init(tmp_path: Path) -> None:
    """A package that re-exports its modules closes a circle when one of them imports back into it."""
    _write(
        tmp_path,
        {
            "probes/__init__.py": "",
            "probes/low/__init__.py": "from probes.low.x import X\n",
            "probes/low/x.py": "from probes.high.y import Y\nX = 1\n",
            "probes/high/__init__.py": "from probes.high.y import Y\n",
            "probes/high/y.py": "from probes.low.z import Z\nY = 1\n",
            "probes/low/z.py": "Z = 1\n",
        },
    )
    proc = _run(tmp_path)
    assert proc.returncode == 1
    [line] = proc.stdout.splitlines()
    assert "import circle:" in line and "probes.high" in line and "probes.low.x" in line, line


def test_fake_tree_reports_a_test_module_imported(tmp_path: Path) -> None:
    """A test module imported by another test (as module or package member, relative or absolute) or by a
    benchmark is reported; tests/support and conftest are where shared code goes, and are not."""
    _write(
        tmp_path,
        {
            "tests/__init__.py": "",
            "tests/conftest.py": "from tests.support.helpers import H\n",
            "tests/support/__init__.py": "",
            "tests/support/helpers.py": "H = 1\n",
            "tests/test_a.py": "from tests.support.helpers import H\ndef helper():\n    return H\n",
            "tests/test_b.py": "from tests.test_a import helper\n",
            "tests/test_c.py": "from . import test_a\n",
            "tests/test_d.py": "def test_x():\n    from .test_a import helper\n",
            "bench/__init__.py": "",
            "bench/run.py": "import tests.test_a\n",
        },
    )
    proc = _run(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    hint = "(shared helpers go to tests/support, shared fixtures to a conftest.py)"
    assert lines == [
        f"bench/run.py:1: test module imported: bench.run imports tests.test_a {hint}",
        f"tests/test_b.py:1: test module imported: tests.test_b imports tests.test_a {hint}",
        f"tests/test_c.py:1: test module imported: tests.test_c imports tests.test_a {hint}",
        f"tests/test_d.py:2: test module imported: tests.test_d imports tests.test_a {hint}",
    ], lines
