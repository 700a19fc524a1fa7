"""bridge/durations.py: human durations in config."""

from __future__ import annotations

import math

import pytest

from bridge.durations import MAX_DURATION_S, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("0s", 0.0),
        ("1.5h", 5400.0),
        ("0.5s", 0.5),
        ("1h30m", 5400.0),
        ("1d2h3m4s5ms", 86400 + 7200 + 180 + 4 + 0.005),
        ("1m 30s", 90.0),
        (" 10s ", 10.0),
        ("10", 10.0),
        ("2.5", 2.5),
        ("0", 0.0),
        ("2w", 1_209_600.0),
        ("7d", 604_800.0),
    ],
)
def test_parses_text(text: str, seconds: float) -> None:
    """Unit suffixes ms/s/m/h/d, combinations, spaces and bare numbers all give seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


def test_ms_is_milliseconds_not_minutes() -> None:
    """`5ms` is five milliseconds, not five minutes and some seconds."""
    assert parse_duration("5ms") == pytest.approx(0.005)


@pytest.mark.parametrize(("value", "seconds"), [(0, 0.0), (5, 5.0), (2.5, 2.5), (3600, 3600.0)])
def test_parses_numbers_as_seconds(value: float, seconds: float) -> None:
    """A YAML number is a number of seconds."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["5s", 5, "10"])
def test_returns_a_float(value: str | float) -> None:
    """The result is always a float, whatever the input type."""
    assert type(parse_duration(value)) is float


@pytest.mark.parametrize(
    "text",
    ["", "   ", "s", "5x", "5S", "five seconds", "5mm", "h5", "5s5", "1.h", "-5s", "5s-", "1h-30m", "5 parsecs"],
)
def test_rejects_bad_text(text: str) -> None:
    """Text that is not a sequence of number-unit parts or one number is a ValueError naming it."""
    with pytest.raises(ValueError, match="is not a duration") as info:
        parse_duration(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("value", [-1, -0.5, "-5", "-0.1"])
def test_rejects_negative(value: str | float) -> None:
    """A negative number of seconds is not a duration."""
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "inf", "infinity", "NaN"])
def test_rejects_non_finite(value: str | float) -> None:
    """NaN and infinity are not durations, as text or as numbers."""
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", [True, False])
def test_rejects_booleans(value: bool) -> None:
    """A YAML boolean is not taken as 1 or 0 seconds."""
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)


@pytest.mark.parametrize("value", ["36501d", "5300w", "1e30", 1e300, "9" * 400 + "d", 3.2e9])
def test_rejects_longer_than_a_century(value: str | float) -> None:
    """Past a century (whose milliseconds still fit the store's 64-bit columns), and past a float's range written
    in digits: an error naming the value, cut to 40 characters."""
    with pytest.raises(ValueError, match="is longer than a century") as info:
        parse_duration(value)
    assert len(str(info.value)) < 120


def test_a_century_is_still_a_duration() -> None:
    assert parse_duration("36500d") == MAX_DURATION_S
