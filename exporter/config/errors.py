"""Config errors: each problem one line, ``file: key.path: what is wrong``; pydantic's validation errors
turned into such lines."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from exporter.config.model import sections


class ConfigError(Exception):
    """One or more problems, each a line ``file: key.path: what is wrong``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _loc(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = "global" if part == "global_" else part
            out += f".{part}" if out else part
    return out or "(top level)"


def _message(err: Any) -> str:
    kind, msg = str(err["type"]), str(err["msg"])
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind in ("model_type", "dict_type"):
        return "must be a mapping (key: value)"
    if kind == "list_type":
        return "must be a list"
    if kind == "string_pattern_mismatch":
        if "@" in str(err.get("ctx", {}).get("pattern", "")):
            return "must be a mail address like user@example.com"
        return f"must match {err.get('ctx', {}).get('pattern', 'the expected form')}"
    if kind == "literal_error":
        return msg.replace("Input should be", "must be")
    msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
    return msg


def validation_problems(path: str, exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        msg = _message(err)
        # Errors raised by a model validator carry their own key path ("roundtrip[1].name: ...").
        m = re.match(r"^((?:[A-Za-z_]+(?:\[\d+\])?\.?)+): (.*)$", msg)
        if m and m.group(1).startswith(sections()):
            lines.append(f"{path}: {m.group(1)}: {m.group(2)}")
            continue
        if err["type"] == "value_error" and ": " in msg and msg.split(": ", 1)[0].isidentifier():
            key, msg = msg.split(": ", 1)
            loc.append(key)
        lines.append(f"{path}: {_loc(loc)}: {msg}")
    return lines
