"""The shipped deploy/ files (Kubernetes manifests and the like) as the deploy tests read them, and a
mailcanary command line parsed as the daemon would parse it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
PORT = 9925  # the port every shipped file agrees on


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def cli_args(argv: list[str]) -> Any:
    """Parse a command line as mailcanary would (argparse exits on an unknown flag: make that a failure)."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"mailcanary does not accept the command line {argv}", pytrace=False)


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in k8s_files() for doc in load_all(path)]


def by_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    docs = [d for _, d in k8s_docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(docs) == 1, f"expected one {kind} {name or ''}, found {len(docs)}"
    return docs[0]
