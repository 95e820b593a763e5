"""Only build hooks: write exporter/_build.json (revision, branch, build date) into sdist and wheel, and
copy the shipped rules and dashboards into the wheel's exporter/shipped/ for ``mailcanary generate``.

Everything else about the package is in pyproject.toml. Revision and branch come from the
MAILCANARY_REVISION / MAILCANARY_BRANCH variables (a container build passes them, having no .git),
else from git if this directory is the top of a git checkout, else from the _build.json an sdist
already carries (a wheel built from the sdist); the date from SOURCE_DATE_EPOCH (reproducible
builds), else now. A build that can't tell says "unknown".
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
SHIPPED = HERE / "exporter" / "_build.json"


def _git(*args: str) -> str:
    try:
        proc = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=5, check=False, cwd=HERE
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    out = proc.stdout.strip()
    return out if proc.returncode == 0 and out else "unknown"


def _in_our_checkout() -> bool:
    """True only if HERE is the top of a git work tree: an unpacked sdist inside some other repository
    must not take that repository's commit for its own."""
    top = _git("rev-parse", "--show-toplevel")
    return top != "unknown" and Path(top).resolve() == HERE


def build_facts() -> dict[str, str]:
    ours = _in_our_checkout()
    facts = {
        "revision": os.environ.get("MAILCANARY_REVISION")
        or (_git("rev-parse", "HEAD") if ours else "unknown"),
        "branch": os.environ.get("MAILCANARY_BRANCH")
        or (_git("rev-parse", "--abbrev-ref", "HEAD") if ours else "unknown"),
    }
    if facts["revision"] == "unknown" and SHIPPED.exists():  # building a wheel from our sdist
        shipped = json.loads(SHIPPED.read_text(encoding="utf-8"))
        facts = {k: str(shipped.get(k, "unknown")) for k in ("revision", "branch")}
    epoch = float(os.environ.get("SOURCE_DATE_EPOCH") or time.time())
    facts["build_date"] = time.strftime("%Y%m%d-%H:%M:%S", time.gmtime(epoch))
    return facts


def _write(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(build_facts(), indent=1) + "\n", encoding="utf-8")


# deploy/prometheus/*.yml and dashboards/*.json stay the only source (an sdist carries both); the wheel
# gets a copy for `mailcanary generate` (exporter/generate.py reads exporter/shipped/ when installed).
SHIPPED_DATA = {"prometheus": ("deploy/prometheus", "*.yml"), "dashboards": ("dashboards", "*.json")}


def _copy_shipped(package: Path) -> None:
    for kind, (source, pattern) in SHIPPED_DATA.items():
        files = sorted((HERE / source).glob(pattern))
        if not files:
            raise SystemExit(f"setup.py: no {pattern} in {source}: `mailcanary generate` would lack them")
        target = package / "shipped" / kind
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            (target / path.name).write_bytes(path.read_bytes())


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        _write(Path(self.build_lib) / "exporter" / "_build.json")
        _copy_shipped(Path(self.build_lib) / "exporter")


class SDist(sdist):
    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        _write(Path(base_dir) / "exporter" / "_build.json")


setup(cmdclass={"build_py": BuildPy, "sdist": SDist})
