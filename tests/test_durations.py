"""exporter.config.durations: the duration syntax of the config file."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.config import format_duration, parse_duration

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        ("1h30m", 5400.0),
        ("5m30s", 330.0),
        ("1d2h3m4s5ms", 86400 + 7200 + 180 + 4 + 0.005),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("0.5m", 30.0),
        ("90", 90.0),
        ("1.25", 1.25),
        ("0", 0.0),
        ("0s", 0.0),
        (" 30s ", 30.0),  # surrounding whitespace is stripped
        ("1H30M", 5400.0),  # units are case-insensitive
        ("30s5m", 330.0),  # order of the parts is not enforced; they just add up
    ],
)
def test_parses_strings(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(("value", "seconds"), [(90, 90.0), (0, 0.0), (1.5, 1.5), (0.25, 0.25)])
def test_parses_numbers_as_seconds(value: float, seconds: float) -> None:
    result = parse_duration(value)
    assert result == seconds
    assert type(result) is float


@pytest.mark.parametrize(
    "text",
    [
        "5x",
        "-1s",
        "",
        "   ",
        "s",
        "ms",
        "1h 30m",  # no spaces between parts
        "1 h",
        "1.s",
        ".5s",
        "1e3",
        "1e3s",
        "+5s",
        "5s5",  # a unit-less tail after a part
        "1ms5",
        "5 minutes",
        "nan",
        "inf",
        "0x10",
        "30s,",
    ],
)
def test_rejects_bad_strings(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(text)


@pytest.mark.parametrize("value", [True, False, None, [], ["5m"], {"s": 1}, b"5s", object()])
def test_rejects_other_types(value: object) -> None:
    with pytest.raises(ValueError, match=r"^expected a duration such as 30s, 5m or 1h$"):
        parse_duration(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "9" * 400, "9" * 400 + "s"])
def test_rejects_non_finite(value: object) -> None:
    with pytest.raises(ValueError, match="is not a finite duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [10**400, -(10**400)])
def test_rejects_integers_too_large_for_a_float(value: int) -> None:
    # YAML turns a long digit string into a Python int; float() of it overflows.
    with pytest.raises(ValueError, match="not a finite duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [-1, -0.5])
def test_rejects_negative_numbers(value: float) -> None:
    with pytest.raises(ValueError, match=r"^a duration cannot be negative$"):
        parse_duration(value)


def test_error_message_quotes_the_value() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("5x")
    assert str(info.value) == "'5x' is not a duration (use e.g. 30s, 5m, 1h30m, 250ms)"


_number = st.one_of(
    st.integers(min_value=0, max_value=10_000).map(str),
    st.tuples(st.integers(0, 999), st.integers(0, 999)).map(lambda t: f"{t[0]}.{t[1]:03d}"),
)
_part = st.tuples(_number, st.sampled_from(sorted(UNITS)))


@given(st.lists(_part, min_size=1, max_size=6))
def test_composed_durations_parse_to_their_sum(parts: list[tuple[str, str]]) -> None:
    text = "".join(number + unit for number, unit in parts)
    expected = sum(float(number) * UNITS[unit] for number, unit in parts)
    assert parse_duration(text) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@given(st.lists(_part, min_size=1, max_size=6))
def test_composed_durations_are_case_and_whitespace_insensitive(parts: list[tuple[str, str]]) -> None:
    text = "".join(number + unit for number, unit in parts)
    assert parse_duration(f"  {text.upper()}\t") == parse_duration(text)


@given(st.text())
def test_arbitrary_text_parses_or_raises_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert math.isfinite(seconds)
    assert seconds >= 0


@given(st.text(alphabet="0123456789.smhd -+ eE", max_size=30))
def test_duration_like_text_parses_or_raises_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert math.isfinite(seconds)
    assert seconds >= 0


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_arbitrary_floats(value: float) -> None:
    if math.isfinite(value) and value >= 0:
        assert parse_duration(value) == value
    else:
        with pytest.raises(ValueError):
            parse_duration(value)


@given(st.integers(min_value=-(10**320), max_value=10**320))
def test_arbitrary_integers(value: int) -> None:
    if 0 <= value < 2**1024:
        assert parse_duration(value) == float(value)
    else:
        with pytest.raises(ValueError):
            parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (0.001, "1ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (59, "59s"),
        (60, "1m"),
        (90, "90s"),
        (300, "5m"),
        (3600, "1h"),
        (5400, "90m"),
        (86400, "24h"),
        (1234567, "1234567s"),  # no rounding to six digits, no exponent
        (3600 * 10**7, "10000000h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_format_duration_round_trips(seconds: float) -> None:
    text = format_duration(seconds)
    assert "e" not in text.lower().rstrip("smhd")
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-300)


@given(st.integers(min_value=0, max_value=10**9))
def test_format_duration_round_trips_whole_seconds_exactly(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds
