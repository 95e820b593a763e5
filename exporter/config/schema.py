"""The JSON Schema of the configuration file, derived from the pydantic models (``mailcanary config-schema``).

Editors (yaml-language-server, VS Code, JetBrains) use it for completion and checks while typing. It is
generated, never written by hand, from the root model built from the registry of kinds
(:func:`exporter.config.model.config_model`: a kind registered at run time is in it too); the committed
docs/mailcanary.schema.json is checked to equal this output. Checks the models make beyond structure
(files readable, secrets resolvable, cross-field rules) are only in ``mailcanary check-config``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from exporter.config import model as config

SCHEMA_ID = "https://github.com/mailcanary/mailcanary/blob/main/docs/mailcanary.schema.json"
# What parse_duration accepts: a number of seconds, or a number with a unit, or several (1m30s).
DURATION_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*(\d+(\.\d+)?|(\d+(\.\d+)?([mM][sS]|[sSmMhHdD]))+)\s*$"},
    ],
    "description": "seconds, or a duration such as 500ms, 30s, 5m, 1h, 1m30s",
}


class _Generator(GenerateJsonSchema):
    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        """Durations are floats after validation but strings like "30s" in YAML: say so."""
        if schema["function"].get("function") is config._duration:
            return dict(DURATION_SCHEMA)
        return super().function_before_schema(schema)


def config_schema() -> dict[str, Any]:
    schema = config.config_model().model_json_schema(
        by_alias=True, mode="validation", schema_generator=_Generator
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "mailcanary configuration",
    }


def config_schema_text() -> str:
    return json.dumps(config_schema(), indent=2, sort_keys=False) + "\n"
