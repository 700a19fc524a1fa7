"""bridge/conversions.py: every problem of a conversion found in one pass, none made up by the defaults that stand
in for bad values."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta

from bridge.conversions import convert_each
from bridge.yamlfile import KeyValueError, Quoted, split_validation_error


class Inner(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    low: int = 1
    high: int = 10
    words: list[str] = []

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise KeyValueError(("low",), "low ({value}) is above high ({high})", self.low,
                                quotes={"high": Quoted(("high",), self.high)})


class Outer(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    count: Annotated[int, Meta(ge=1)] = 1
    inner: Inner = msgspec.field(default_factory=Inner)


def problems(data: Any) -> tuple[Outer | None, list[tuple[tuple[str | int, ...], str]]]:
    def told(exc: msgspec.ValidationError, current: Any) -> tuple[tuple[str | int, ...], str]:
        message, sub = split_validation_error(exc, Outer)
        return sub, message

    return convert_each(data, Outer, told, strict=True)


def test_every_problem_is_found_and_defaults_stand_in_for_them() -> None:
    """An unknown key, a type and a range problem in two tables are all found; the value built has the defaults."""
    value, found = problems({"name": "n", "count": 0, "colour": "red", "inner": {"low": "x", "high": 3}})
    assert found == [(("count",), "Expected `int` >= 1"), (("colour",), "unknown key 'colour'"),
                     (("inner", "low"), "Expected `int`, got `str`")]
    assert value == Outer(name="n", inner=Inner(low=1, high=3))


def test_a_check_quoting_a_key_taken_out_is_not_told() -> None:
    """`low` is not compared with the default standing in for a bad `high`; compared with a good one, it is."""
    _, found = problems({"name": "n", "inner": {"low": 20, "high": "x"}})
    assert found == [(("inner", "high"), "Expected `int`, got `str`")]
    _, found = problems({"name": "n", "inner": {"low": 20, "high": 5}})
    assert found == [(("inner", "low"), "low (20) is above high (5)")]


def test_a_bad_list_item_takes_its_list_out() -> None:
    """A bad item is told at its index, and its list is what a default stands in for."""
    value, found = problems({"name": "n", "inner": {"words": ["a", 5, 6]}, "count": "x"})
    assert sorted(found) == [(("count",), "Expected `int`, got `str`"),
                             (("inner", "words", 1), "Expected `str`, got `int`")]
    assert value is not None and value.inner.words == []


def test_nothing_stands_in_for_a_missing_required_key_or_a_whole() -> None:
    """A missing required key, or data that is no table at all, leaves no value to build, and is told."""
    assert problems({"count": 0}) == (None, [(("count",), "Expected `int` >= 1"),
                                             ((), "missing required key 'name'")])
    assert problems([1]) == (None, [((), "Expected `object`, got `array`")])
