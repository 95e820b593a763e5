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


def shipped_configs() -> dict[str, str]:
    """Every example mailcanary config the project ships, by its path in the repository (and the sdist);
    the Kubernetes one is the ConfigMap's data."""
    out = {
        p.relative_to(REPO).as_posix(): p.read_text(encoding="utf-8")
        for p in (
            REPO / "examples" / "mailcanary.yml",
            DEPLOY / "systemd" / "mailcanary.example.yml",
            DEPLOY / "compose" / "mailcanary" / "mailcanary.yml",
        )
    }
    for name, text in by_kind("ConfigMap", "mailcanary-config")["data"].items():
        if name.endswith((".yml", ".yaml")):
            out[f"deploy/kubernetes/configmap.yaml:{name}"] = text
    return out


def with_stand_in_secrets(text: str, tmp: Path) -> tuple[str, dict[str, str]]:
    """The config with every file it reads (password, key, CA) pointed at a stand-in of the right kind,
    and the environment its ``*_env`` keys name: what a deployment supplies beside the file, so that
    ``mailcanary check-config`` judges the shipped text itself. Returns (config text, environment)."""
    import trustme

    secret = tmp / "stand-in.secret"
    secret.write_text("0123456789abcdef0123456789abcdef\n")
    secret.chmod(0o600)
    ca = tmp / "stand-in-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca))
    env: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("_file") and isinstance(value, str):
                    node[key] = str(ca if key == "ca_file" else secret)
                elif key.endswith("_env") and isinstance(value, str):
                    env[value] = "stand-in-password"
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    data = yaml.safe_load(text) or {}
    walk(data)
    return yaml.safe_dump(data, sort_keys=False), env
