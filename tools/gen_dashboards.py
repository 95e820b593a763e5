#!/usr/bin/env python3
"""Write the Grafana dashboards in dashboards/ from tools/dashboards/ (grafana-foundation-sdk builders).

    python3 tools/gen_dashboards.py            # rewrite dashboards/*.json
    python3 tools/gen_dashboards.py --check    # exit 1 (with a diff) if a committed file is stale

Needs the `dashboards` extra (pip install -e '.[dashboards]'; the `test` extra includes it): the SDK
pinned there. One module per dashboard in tools/dashboards/, shared builders in tools/dashboards/common.py;
see docs/dashboards.md. tests/test_dashboards.py fails when the JSON and the modules differ.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.metadata
import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "dashboards"
sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    from dashboards import DASHBOARDS
except ModuleNotFoundError as exc:  # the SDK is a build-time tool, not a dependency of the daemon
    if exc.name != "grafana_foundation_sdk":
        raise
    sys.exit("gen_dashboards: grafana-foundation-sdk is not installed: pip install -e '.[dashboards]'")


def sdk_pin() -> str:
    """The exact version pyproject.toml pins: another build of the SDK may write other JSON."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (req,) = project["optional-dependencies"]["dashboards"]
    return str(req.split("==", 1)[1])


def render() -> dict[str, str]:
    return {
        name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n" for name, build in DASHBOARDS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with dashboards/ instead of writing")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory to write (default dashboards/)")
    args = parser.parse_args(argv)
    installed, pinned = importlib.metadata.version("grafana-foundation-sdk"), sdk_pin()
    if installed != pinned:
        print(
            f"gen_dashboards: grafana-foundation-sdk {installed} is installed, pyproject.toml pins {pinned}: "
            "pip install -e '.[dashboards]'",
            file=sys.stderr,
        )
        return 2
    stale = 0
    for name, text in render().items():
        path = args.out / name
        if args.check:
            old = path.read_text(encoding="utf-8") if path.exists() else ""
            if old != text:
                stale += 1
                sys.stdout.writelines(
                    difflib.unified_diff(old.splitlines(True), text.splitlines(True), str(path), "generated")
                )
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(
            f"{stale} dashboard(s) differ from tools/dashboards/; run tools/gen_dashboards.py to regenerate",
            file=sys.stderr,
        )
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
