"""Templates are bounded (size, time, arithmetic), and any payload either renders or raises the engine's
own mapping error, never anything else."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import MappingError
from bridge.mapping import templates
from bridge.mapping.compiler import CompileError, RenderError, compile_field
from bridge.mapping.mappingset import compile_document
from bridge.yamlfile import load_yaml


def ctx(payload: Any) -> dict[str, Any]:
    return {"payload": payload, "headers": {}, "event": {"id": "evt_1"}, "vars": {"brand": "Acme"}}


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ 'ab' * 600000 }}", "repeating 2 items 600000 times is over the limit"),
        ("{{ 600000 * [1, 2] }}", "repeating 2 items 600000 times is over the limit"),
        ("{{ 2 ** 100000 }}", "an exponent of 100000 is over the limit of 1000"),
        ("{{ payload.s * 10000000 }}", "is over the limit of 1000000"),
    ],
)
def test_arithmetic_that_would_allocate_without_bound_is_refused(template: str, message: str) -> None:
    """`*` on text or lists and `**` are checked before they run, so a template cannot allocate without bound."""
    with pytest.raises(RenderError, match=message):
        compile_field("f", template)(ctx({"s": "x"}))


def test_a_render_past_the_time_budget_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """A template still running after the time budget stops with a render error, however its loops are built."""
    monkeypatch.setattr(templates, "TIME_BUDGET_S", 0.0)
    loop = "{% for a in range(100) %}{% for b in range(100) %}{% endfor %}{% endfor %}x"
    with pytest.raises(RenderError, match=r"^f: template failed: the template ran for over 0 ms$"):
        compile_field("f", loop)(ctx({}))


def test_the_time_budget_applies_per_render(monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget is reset for each render: one render's time does not count against the next."""
    field = compile_field("f", "{% for i in range(3) %}{{ payload.s }}{% endfor %}")
    assert field(ctx({"s": "a"})) == "aaa"
    assert field(ctx({"s": "b"})) == "bbb"
    assert templates._deadline.get() == float("inf")


def test_when_expressions_run_under_the_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """`when` expressions that need Jinja are bounded by the same time budget."""
    from bridge.mapping.compiler import compile_when

    monkeypatch.setattr(templates, "TIME_BUDGET_S", 0.0)
    when = compile_when("range(5) | list | length > 2")
    with pytest.raises(templates.BudgetExceeded):
        when(ctx({}))


def test_templates_cannot_reach_the_environment_or_files() -> None:
    """Nothing that reaches the process (os, open, imports, config) is visible, at compile time already."""
    for text in ["{{ os.environ }}", "{{ open('/etc/passwd').read() }}", "{{ config }}", "{{ self }}",
                 "{{ cycler.__init__.__globals__ }}"]:
        with pytest.raises((CompileError, MappingError)):
            compile_field("f", text)(ctx({}))


# -- the property: any payload renders or raises MappingError -------------------------------------

EVERYTHING = textwrap.dedent("""\
    name: everything
    source: s
    when: "payload.skip is not defined or not payload.skip"
    destination: d
    action: create_ticket
    fields:
      email: {from: payload.email, required: true, transform: [strip, lower]}
      title: "Re: {{ payload.subject | default('(none)') | truncate(20) }}"
      count: {from: payload.n, transform: [int], default: 0}
      ratio: {from: payload.n, transform: [float], on_missing: omit}
      flag: {from: payload.flag, transform: [bool], on_missing: null}
      when: {from: payload.date, transform: ["date('%Y-%m-%d', 'Asia/Kolkata', 'dmy')"], on_missing: omit}
      phone: {from: payload.phone, transform: ["phone_e164('IN')"], on_missing: omit}
      text: {from: payload.html, transform: [html_to_text, strip_quoted, "truncate(50)"], default: ""}
      tags: {from: payload.tags, transform: ["split(',')", "join('|')", upper], on_missing: omit}
      first: {from: "payload.items[0].name", on_missing: omit, transform: [title, "replace('a', 'b')"]}
      picked: {jmespath: "payload.items[?qty > `0`].name", on_missing: omit}
      prio: {from: payload.p, map: {high: High, low: Low}, map_default: Medium, default: Unknown}
      loop: "{% for t in payload.tags or [] %}{{ t }};{% endfor %}{{ payload.n | default(1) }}"
      sum: "{{ (payload.n | int) * 2 }}"
      nested: {object: {a: "{{ payload.subject }}", b: [x, {from: payload.n, on_missing: omit}]}}
    """)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**20, max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
KEYS = ["email", "subject", "n", "flag", "date", "phone", "html", "tags", "items", "p", "skip"]
interesting = st.one_of(
    json_values,
    st.sampled_from([" A@B.io ", "05/03/2024", "2024-03-05T10:00:00Z", "+91 98765 43210", "<p>hi</p><br>x",
                     "a,b,,c", "high", "HIGH", "12", "12.5", "yes", 1709632800000, [{"name": "alpha", "qty": 2}],
                     "{{ 7 * 7 }}", "%s%s%s", "\x00", "\ud7ff" * 3]),
)
payloads = st.dictionaries(st.sampled_from(KEYS), interesting, max_size=len(KEYS))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads)
def test_any_payload_renders_or_raises_a_mapping_error(payload: dict[str, Any]) -> None:
    """Whatever the payload, a mapping using every kind of field and filter renders, or fails with MappingError."""
    doc = load_yaml(EVERYTHING, "everything.yaml")
    mapping, errors = compile_document(doc, "everything", "v1", {"s"}, {"d": frozenset({"create_ticket"})})
    assert errors == [] and mapping is not None
    try:
        if mapping.matches(ctx(payload)):
            body = mapping.render(ctx(payload))
            assert list(body)[:2] == ["email", "title"]
    except MappingError:
        pass
