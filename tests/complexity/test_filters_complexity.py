"""Stripping a sender's text of many characters grows linearly, as a filter, a Jinja filter and a string method:
Python's strip looks each character of the text up in the characters to strip by a scan, so a payload's text and
another's characters to strip (32,000 each, on the event loop) cost their product in one call into C."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bridge.mapping.compiler import compile_field
from tests.complexity.scaling import assert_linear

STRIP = "\U0001f600"
"""Text of one character outside the Basic Multilingual Plane: Python's scan is slowest on such text."""


def repeated(n: int) -> dict[str, Any]:
    """The text to strip whole, and n characters to strip, all one but the last."""
    return {"text": STRIP * n, "chars": "\U0001f601" * n + STRIP}


def distinct(n: int) -> dict[str, Any]:
    """The text to strip whole, and n distinct characters to strip, the text's last."""
    return {"text": STRIP * n, "chars": "".join(chr(0x20000 + i) for i in range(n)) + STRIP}


TEMPLATES = {
    "strip filter": "{{ payload.text | strip(payload.chars) | length }}",
    "trim filter": "{{ payload.text | trim(payload.chars) | length }}",
    "strip method": "{{ payload.text.strip(payload.chars) | length }}",
    "rstrip method": "{{ payload.text.rstrip(payload.chars) | length }}",
}


@pytest.mark.parametrize("make", [repeated, distinct], ids=["repeated characters", "distinct characters"])
@pytest.mark.parametrize("name", list(TEMPLATES))
def test_stripping_many_characters_grows_linearly(name: str, make: Callable[[int], dict[str, Any]]) -> None:
    """8x the text and the characters to strip cost at most ~16x the time (Python's own strip: 64x)."""
    field = compile_field("f", TEMPLATES[name])
    assert field({"payload": make(10), "headers": {}, "event": {}, "vars": {}}) == "0"  # stripped whole
    assert_linear(lambda payload: field({"payload": payload, "headers": {}, "event": {}, "vars": {}}), make, 2_000)


def test_stripping_bytes_of_many_bytes_grows_linearly() -> None:
    """The same for bytes (`encode` gives them): Python's strip finds each byte in the bytes to strip with memchr,
    fast, yet their product all the same."""
    field = compile_field("f", "{{ payload.text.encode('ascii').strip(payload.chars.encode('ascii')) | length }}")

    def render(payload: dict[str, Any]) -> Any:
        return field({"payload": payload, "headers": {}, "event": {}, "vars": {}})

    def make(n: int) -> dict[str, Any]:
        return {"text": "a" * n, "chars": "b" * n + "a"}

    assert render(make(10)) == "0"
    assert_linear(render, make, 25_000)
