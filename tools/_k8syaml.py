"""YAML output shared by the Kubernetes manifest generators: stable, readable, and safe to load back.

Multi-line strings (PromQL, descriptions, dashboard JSON) are written as literal blocks; sequences are
indented under their key, as kubectl and most hand-written manifests do.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


class Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


Dumper.add_representer(str, _str)


def dump_all(header: str, docs: list[dict[str, Any]]) -> str:
    body = yaml.dump_all(
        docs,
        Dumper=Dumper,
        sort_keys=False,
        width=10_000,
        allow_unicode=True,
        default_flow_style=False,
        explicit_start=True,
    )
    return header + body


def main(argv: list[str] | None, render: Callable[[], str], default_output: Path, what: str) -> int:
    """``[--check] [-o FILE]``: write the file, or (--check) exit 1 with a diff if it is out of date."""
    import argparse

    parser = argparse.ArgumentParser(description=f"Generate {what}.")
    parser.add_argument("-o", "--output", type=Path, default=default_output)
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 with a diff if the file is not current"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current == text:
            return 0
        sys.stdout.writelines(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                text.splitlines(keepends=True),
                str(args.output),
                "generated",
            )
        )
        print(f"{args.output} is out of date: run python3 {sys.argv[0]}", file=sys.stderr)
        return 1
    args.output.write_text(text, encoding="utf-8")
    return 0
