"""The JSON Schema of the config: committed file == generator output; examples and the demo validate."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from exporter.config.schema import config_schema, config_schema_text
from tests.support.procs import run_bounded

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "docs" / "mailcanary.schema.json"
EXAMPLES = [
    ROOT / "examples" / "mailcanary.yml",
    ROOT / "deploy" / "systemd" / "mailcanary.example.yml",
    ROOT / "deploy" / "compose" / "mailcanary" / "mailcanary.yml",
]
MODELINE = (
    "# yaml-language-server: $schema="
    "https://raw.githubusercontent.com/mailcanary/mailcanary/main/docs/mailcanary.schema.json"
)


def validator() -> jsonschema.Draft202012Validator:
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_is_the_command_output() -> None:
    proc = run_bounded([sys.executable, "-m", "exporter.cli", "config-schema"], 60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == config_schema_text()
    assert COMMITTED.read_text(encoding="utf-8") == proc.stdout, (
        "docs/mailcanary.schema.json is stale; run: mailcanary config-schema > docs/mailcanary.schema.json"
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_name_the_schema_and_validate(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.splitlines()[0] == MODELINE
    doc = yaml.safe_load(text) or {}
    errors = [e.message for e in validator().iter_errors(doc)]
    assert not errors, errors


def test_schema_says_what_is_wrong() -> None:
    v = validator()
    good: dict[str, Any] = {
        "global": {"interval": "5m"},
        "tls_checks": [{"name": "mx", "host": "mx.example.com", "port": 25, "protocol": "smtp"}],
    }
    assert not list(v.iter_errors(good))
    for bad in (
        {"global": {"intervall": "5m"}},  # typo: unknown keys are errors, as in check-config
        {"global": {"interval": "5 minutes"}},
        {"tls_checks": [{"name": "mx", "host": "mx.example.com", "port": 70000, "protocol": "smtp"}]},
        {"tls_checks": [{"name": "mx", "host": "mx.example.com", "protocol": "gopher"}]},
    ):
        assert list(v.iter_errors(bad)), json.dumps(bad)
