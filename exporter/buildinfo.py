"""Where this build came from (version, revision, branch, build date), for ``--version`` and build_info.

A wheel carries ``_build.json``, written by setup.py's build step (git, or the ``MAILCANARY_REVISION`` /
``MAILCANARY_BRANCH`` variables a container build passes, ``SOURCE_DATE_EPOCH`` for the date). A source
checkout (an editable install, running from the tree) asks git, so the answer is never a stale file.
Anything unknown is ``unknown``; finding out never fails and never takes more than a few seconds.
"""

from __future__ import annotations

import functools
import json
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

from exporter import __version__

UNKNOWN = "unknown"
_PACKAGE = Path(__file__).resolve().parent
_BUILD_FILE = _PACKAGE / "_build.json"


@dataclass(frozen=True)
class BuildInfo:
    version: str
    revision: str
    branch: str
    build_date: str
    python_version: str


def _git(root: Path, *args: str) -> str:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=3, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    out = proc.stdout.strip()
    return out if proc.returncode == 0 and out and len(out) < 200 else UNKNOWN


def from_git(root: Path) -> dict[str, str]:
    """Revision, branch and commit date of the checkout at ``root`` (``unknown`` where git can't say)."""
    return {
        "revision": _git(root, "rev-parse", "HEAD"),
        "branch": _git(root, "rev-parse", "--abbrev-ref", "HEAD"),
        "build_date": _git(root, "log", "-1", "--format=%cd", "--date=format:%Y%m%d-%H:%M:%S"),
    }


def _from_file() -> dict[str, str]:
    try:
        data = json.loads(_BUILD_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: str(v)[:200] for k, v in data.items() if k in ("revision", "branch", "build_date")}


@functools.cache
def build_info() -> BuildInfo:
    root = _PACKAGE.parent
    found = from_git(root) if (root / ".git").exists() else _from_file()
    return BuildInfo(
        version=__version__,
        revision=found.get("revision", UNKNOWN),
        branch=found.get("branch", UNKNOWN),
        build_date=found.get("build_date", UNKNOWN),
        python_version=platform.python_version(),
    )


def version_text() -> str:
    """``--version`` in the layout of Prometheus' exporters (prometheus/common/version)."""
    b = build_info()
    return (
        f"mailcanary, version {b.version} (branch: {b.branch}, revision: {b.revision})\n"
        f"  build date:       {b.build_date}\n"
        f"  python version:   {b.python_version} ({platform.python_implementation()})"
    )
