"""The direct renderers for simple templates and `when` expressions agree with Jinja, and decline the rest."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2 import UndefinedError

from bridge.mapping.fastpath import compile_fast, compile_fast_expression
from bridge.mapping.paths import MISSING
from bridge.mapping.templates import ENV

PAYLOAD = {"a": "A", "b": [1, 2.5], "c": {"d": "D"}, "n": 7, "none": None, "flag": True, "s": "  Mixed Case  ",
           "empty": "", "items": "key", "tags": ["x", "y"]}

FAST = [
    "{{ payload.a }}",
    "x {{ payload.b[1] }} y {{ payload.c.d }}",
    "{{ payload.n }}/{{ payload.none }}/{{ payload.flag }}",
    "{{ payload.s | strip | lower }}",
    "{{ payload.s | truncate(5) }}",
    "{{ payload.tags | join('-') }}",
    "{{ payload.tags | first }}",
    "{{ payload.missing | default('fallback') }}",
    "{{ payload.empty | default('fallback', true) }}",
    "{{ payload.empty | d('fallback') }}",
    "{{ payload['c']['d'] }}",
    "{{ payload.s | replace('Mixed', 'One') | split(' ') | join('+') }}",
    "{{ payload.n | float }}/{{ payload.flag | int }}",
    "{{ payload.none | default('was null') }}",
]
SLOW = [
    "{{ payload.items }}",
    "{{ payload.s.upper() }}",
    "{% if payload.flag %}yes{% endif %}",
    "{{ payload.n + 1 }}",
    "{{ payload.tags | length }}",
    "{{ range(3) | list }}",
    "plain text",
    "{{ environ }}",
]


def jinja(text: str, payload: dict[str, Any]) -> str:
    return ENV.from_string(text).render(payload=payload, event={"id": "E"})


@pytest.mark.parametrize("text", FAST)
def test_fast_templates_render_as_jinja_does(text: str) -> None:
    """Each template the fast path takes renders to Jinja's exact output."""
    fast = compile_fast(text)
    assert fast is not None
    assert fast({"payload": PAYLOAD, "event": {"id": "E"}}) == (jinja(text, PAYLOAD), "")


@pytest.mark.parametrize("text", SLOW)
def test_templates_needing_jinja_are_declined(text: str) -> None:
    """Methods, statements, arithmetic, unknown filters and constant text are left to Jinja."""
    assert compile_fast(text) is None


def test_missing_path_is_reported_as_missing_where_jinja_raises() -> None:
    """A missing path without a default is MISSING, naming the absent part, where Jinja raises UndefinedError."""
    fast = compile_fast("Re: {{ payload.c.zz | upper }}")
    assert fast is not None
    assert fast({"payload": PAYLOAD}) == (MISSING, "template: payload.c.zz is missing")
    with pytest.raises(UndefinedError):
        jinja("Re: {{ payload.c.zz | upper }}", PAYLOAD)


def test_the_first_missing_path_of_several_is_named() -> None:
    """In a template of several paths, the first missing one is named, whatever text surrounds it."""
    fast = compile_fast("{{ payload.a }} and {{ payload.c.zz }}, {{ payload.nope }}!")
    assert fast is not None
    assert fast({"payload": PAYLOAD}) == (MISSING, "template: payload.c.zz is missing")
    assert fast({"payload": {**PAYLOAD, "c": {"zz": 1}, "nope": None}}) == ("A and 1, None!", "")


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                    st.floats(allow_nan=False, allow_infinity=False))


@given(value=st.one_of(scalars, st.lists(scalars, max_size=3)),
       template=st.sampled_from(["{{ payload.v }}", "<{{ payload.v | default('-') }}>", "{{ payload.v | first }}",
                                 "{{ payload.v | strip | upper }}", "{{ payload.v | join(',') }}",
                                 "{{ payload.v | default('x', true) | strip | title }}",
                                 "{{ payload.v | default(5, true) | strip | lower }}",
                                 "{{ payload.v | lower | truncate(3) | upper }}", "{{ payload.v | strip('a') }}"]))
def test_fast_path_agrees_with_jinja_on_any_value(value: Any, template: str) -> None:
    """For any payload value, the fast path and Jinja render the same text."""
    fast = compile_fast(template)
    assert fast is not None
    assert fast({"payload": {"v": value}}) == (jinja(template, {"v": value}), "")


EXPRESSIONS = [
    "payload.n > 3",
    "payload.n > 3 and payload.a == 'A'",
    "payload.missing is not defined or payload.missing != 'spam'",
    "payload.missing is undefined",
    "payload.a is not defined",
    "payload.a is not undefined",
    "payload.missing is not undefined",
    "not payload.missing is defined",
    "not (payload.a is undefined)",
    "payload.none is none",
    "payload.none is not none",
    "payload.a is not none",
    "not payload.flag",
    "payload.a in ['A', 'B']",
    "payload.a not in ('X',)",
    "'x' in payload.tags",
    "1 < payload.n <= 7",
    "payload.s | strip | lower == 'mixed case'",
    "payload.missing | default('d') == 'd'",
    "payload.empty or payload.a",
]
FAILING = ["payload.missing == 'x'", "payload.missing", "not payload.missing", "payload.missing in ['a']",
           "payload.n > 3 and payload.missing"]
JINJA_ONLY = ["payload.n + 1 > 3", "payload.tags | length > 1", "payload.a.startswith('A')", "range(3)",
              "payload.a ~ 'x'"]


def jinja_expr(text: str) -> Any:
    return ENV.compile_expression(text, undefined_to_none=False)(payload=PAYLOAD)


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_fast_expressions_evaluate_as_jinja_does(text: str) -> None:
    """Each expression the fast path takes gives the value Jinja gives."""
    fast = compile_fast_expression(text)
    assert fast is not None
    assert fast({"payload": PAYLOAD}) == jinja_expr(text)


@pytest.mark.parametrize("text", FAILING)
def test_fast_expressions_fail_where_strict_jinja_fails(text: str) -> None:
    """Using a missing path other than testing or defaulting it fails, as StrictUndefined does in a `when`."""
    fast = compile_fast_expression(text)
    assert fast is not None
    with pytest.raises(UndefinedError, match=r"payload\.missing is undefined"):
        fast({"payload": PAYLOAD})
    with pytest.raises(UndefinedError):
        bool(jinja_expr(text))  # as CompiledMapping.matches takes it


@pytest.mark.parametrize("text", JINJA_ONLY)
def test_expressions_needing_jinja_are_declined(text: str) -> None:
    """Arithmetic, unknown filters, method calls and globals are left to Jinja."""
    assert compile_fast_expression(text) is None


@pytest.mark.parametrize("value", ["abc", "12.5", [1], {"a": 1}])
def test_a_failing_filter_fails_the_same_way_on_both_paths(value: Any) -> None:
    """A filter that refuses its value gives the same render error whether the fast path or Jinja runs it."""
    from bridge.mapping.compiler import RenderError, compile_field

    context = {"payload": {"v": value}, "headers": {}, "event": {}, "vars": {}}
    assert compile_fast("{{ payload.v | int }}") is not None
    assert compile_fast("{{ payload.v | int }}{{ '' }}") is None
    with pytest.raises(RenderError) as fast:
        compile_field("f", "{{ payload.v | int }}")(context)
    with pytest.raises(RenderError) as slow:
        compile_field("f", "{{ payload.v | int }}{{ '' }}")(context)
    assert str(fast.value) == str(slow.value)
    assert str(fast.value).startswith("f: template failed: ")
