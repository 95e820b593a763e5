"""Durations as people write them in config files: ``30s``, ``5m``, ``1h30m``, ``250ms``, or plain seconds."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(value: object) -> float:
    """Seconds as a float; raises ValueError with a message fit for a config error line."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:  # an int beyond float range (YAML makes ints of long digit strings)
            raise ValueError("not a finite duration (far too large)") from None
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            pos, seconds = 0, 0.0
            for match in _PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(f"{value!r} is not a duration (use e.g. 30s, 5m, 1h30m, 250ms)")
    else:
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise ValueError(f"{value!r} is not a finite duration")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact spelling, for messages and the example config."""
    exact = Decimal(repr(float(seconds)))  # not :g, which rounds to 6 digits and writes 1e+06
    if seconds and seconds < 1:
        return f"{_plain(exact.scaleb(3))}ms"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{_plain(exact / size)}{unit}"
    return f"{_plain(exact)}s"


def _plain(value: Decimal) -> str:
    """Positional notation without trailing zeros: what parse_duration reads back."""
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text
