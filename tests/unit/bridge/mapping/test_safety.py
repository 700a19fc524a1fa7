"""Templates are bounded (size, time, arithmetic), and any payload either renders or raises the engine's
own mapping error, never anything else."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import MappingError
from bridge.mapping import limits, templates
from bridge.mapping.base import LimitExceeded
from bridge.mapping.compiler import CompileError, RenderError, compile_field
from bridge.mapping.filters import FILTERS
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
    monkeypatch.setattr(limits, "TIME_BUDGET_S", 0.0)
    loop = "{% for a in range(100) %}{% for b in range(100) %}{% endfor %}{% endfor %}x"
    with pytest.raises(RenderError, match=r"^f: render budget of 0 ms exceeded in field f$"):
        compile_field("f", loop)(ctx({}))


def test_the_time_budget_applies_per_render(monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget is reset for each render: one render's time does not count against the next."""
    field = compile_field("f", "{% for i in range(3) %}{{ payload.s }}{% endfor %}")
    assert field(ctx({"s": "a"})) == "aaa"
    assert field(ctx({"s": "b"})) == "bbb"
    assert limits._deadline.get()[0] == float("inf")


def test_when_expressions_run_under_the_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """`when` expressions that need Jinja are bounded by the same time budget."""
    from bridge.mapping.compiler import compile_when

    monkeypatch.setattr(limits, "TIME_BUDGET_S", 0.0)
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



def test_a_render_past_its_loop_slice_signals_the_caller_and_is_no_render_error() -> None:
    """Under a loop slice, a template still running past it raises SliceOver, which no render error handler takes
    (render_event would make it a dead delivery): the caller renders again elsewhere. Without one, it renders."""
    from bridge.routing import render_event

    text = textwrap.dedent("""\
        name: loops
        source: s
        destination: d
        action: create_ticket
        fields:
          title: "{% for a in payload.list %}{{ a }}{% endfor %}"
        """)
    mapping, errors = compile_document(load_yaml(text, "loops.yaml"), "loops", "v1", {"s"},
                                       {"d": frozenset({"create_ticket"})})
    assert errors == [] and mapping is not None
    token = limits.start_slice(-1.0)
    try:
        with pytest.raises(limits.SliceOver):
            render_event(mapping, ctx({"list": [1, 2]}), "evt_1")
    finally:
        limits.end_slice(token)
    assert limits._deadline.get()[0] == float("inf")  # the slice ends with end_slice
    assert render_event(mapping, ctx({"list": [1, 2]}), "evt_1").body == {"title": "12"}


def test_a_loop_slice_holds_in_its_own_context_only() -> None:
    """A render handed to a thread from inside a loop slice runs without it (under its time budget alone)."""
    from concurrent.futures import ThreadPoolExecutor

    field = compile_field("f", "{% for a in range(3) %}{{ a }}{% endfor %}")
    token = limits.start_slice(-1.0)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            assert pool.submit(field, ctx({})).result() == "012"
        with pytest.raises(limits.SliceOver):
            field(ctx({}))
    finally:
        limits.end_slice(token)


# -- the budgets hold for every loop, string operation and integer ---------------------------------

def small_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "TIME_BUDGET_S", 0.02)


def test_a_spent_budget_stops_jmespath_with_a_limit_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A JMESPath projection over a large list visits nodes for each item: it looks at the clock every few visits,
    and a spent budget (a Jinja mapping's) is a limit error naming the field. Before, it ran to the end."""
    monkeypatch.setattr(limits, "TIME_BUDGET_S", 0.0)
    field = compile_field("f", {"jmespath": "payload.items[*].name"})
    with limits.Budget(), pytest.raises(LimitExceeded, match=r"^f: jmespath 'payload.items\[\*\].name': render "
                                                               r"budget of 0 ms exceeded in field f$"):
        field(ctx({"items": [{"name": "x"}] * 200}))
    monkeypatch.undo()
    assert field(ctx({"items": [{"name": "x"}] * 200})) == ["x"] * 200


@pytest.mark.parametrize(("name", "value"), [
    ("split", "a," * 5000),
    ("attachment_list", [{"name": "a.pdf", "size": 10}] * 200),
])
def test_the_filters_that_loop_in_python_check_the_time_budget(name: str, value: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`split` strips each part and `attachment_list` writes each item in Python: they look at the clock as they go,
    so a spent budget (or a loop slice) stops them part-way."""
    monkeypatch.setattr(limits, "TIME_BUDGET_S", 0.0)
    with limits.Budget(), pytest.raises(limits.BudgetExceeded):
        FILTERS[name](value)
    monkeypatch.undo()
    assert FILTERS[name](value)  # without a budget, to the end


@pytest.mark.parametrize("template", [
    "{% set r = range(10000) %}{% for a in r %}{% for b in r %}{% for c in r %}{% endfor %}{% endfor %}{% endfor %}x",
    "{% set items = payload.list %}{% for a in items %}{% for b in items %}{% endfor %}{% endfor %}x",
    "{% set items = payload.list %}{% set out %}{% for a in items %}{% for b in items %}{{ b }}{% endfor %}"
    "{% endfor %}{% endset %}x",
    "{% macro inner(items) %}{% for b in items %}{% endfor %}{% endmacro %}"
    "{% for a in payload.list %}{% for b in payload.list %}{% endfor %}{% endfor %}",
    "{% set r = range(10000) %}{% for a in r if a >= 0 %}{% for b in r if b >= 0 %}{% endfor %}{% endfor %}x",
])
def test_every_loop_runs_under_the_time_budget(template: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loops over `set` variables, ranges, payload lists, inside block sets and macros all stop at the budget."""
    small_budget(monkeypatch)
    with pytest.raises(RenderError, match=r"^f: render budget of 20 ms exceeded in field f$"):
        compile_field("f", template)(ctx({"list": list(range(10_000))}))


@pytest.mark.parametrize("template", [
    "{{ range(10000) | map('string') | map('string') | map('string') | list | length }}",
    "{% set r = range(10000) | list %}{% for x in r %}{{ (r | sort | unique | list)[0] }}{% endfor %}",
    "{% set r = range(10000) | list %}{% for x in r %}{{ r | select('odd') | list | length }}{% endfor %}",
])
def test_iterating_filters_check_the_time_budget(template: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Filters that read a whole sequence (map, select, sort, unique, list, …) check the budget as they read."""
    monkeypatch.setattr(limits, "TIME_BUDGET_S", 0.0)
    with pytest.raises(RenderError, match=r"render budget of 0 ms exceeded in field f$"):
        compile_field("f", template)(ctx({}))


def test_a_mapping_has_one_budget_for_all_its_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget covers the whole render of a mapping, and its error names the mapping, the field and the limit."""
    small_budget(monkeypatch)
    text = textwrap.dedent("""\
        name: slow
        source: s
        destination: d
        action: create_ticket
        fields:
          fast: "{{ payload.a }}"
          spin: "{% for a in payload.list %}{% for b in payload.list %}{% endfor %}{% endfor %}x"
        """)
    mapping, errors = compile_document(load_yaml(text, "slow.yaml"), "slow", "v1", {"s"},
                                       {"d": frozenset({"create_ticket"})})
    assert errors == [] and mapping is not None
    with pytest.raises(MappingError) as info:
        mapping.render(ctx({"a": 1, "list": list(range(10_000))}))
    assert str(info.value) == "slow.spin: render budget of 20 ms exceeded in field spin"


class Ticks:
    """A clock for the budget that moves 1 ms each time it is read: a render's cost counted in clock reads."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0

    def monotonic(self) -> float:
        self.reads += 1
        self.now += 0.001
        return self.now


def test_explain_has_the_one_budget_render_has_and_blames_the_same_field(monkeypatch: pytest.MonkeyPatch) -> None:
    """Explaining a mapping costs what rendering it costs (one budget for all its fields, each plain template
    rendered once), and it fails on the field the render fails on: each field alone is within the budget, the
    third is past it, counted from the first."""
    clock = Ticks()
    monkeypatch.setattr(limits, "time", clock)
    loop = "\"{% for x in payload.list %}{% endfor %}x\""
    text = "name: slow\nsource: s\ndestination: d\naction: create_ticket\nfields:\n" + "".join(
        f"  {name}: {loop}\n" for name in "abcd")
    mapping, errors = compile_document(load_yaml(text, "slow.yaml"), "slow", "v1", {"s"},
                                       {"d": frozenset({"create_ticket"})})
    assert errors == [] and mapping is not None
    context = ctx({"list": list(range(100))})  # ~100 reads a field; the budget is 250
    with pytest.raises(MappingError) as info:
        mapping.render(context)
    assert str(info.value) == "slow.c: render budget of 250 ms exceeded in field c"
    rendered = clock.reads
    trace = mapping.explain(context)
    assert trace.error == "c: render budget of 250 ms exceeded in field c"
    assert [f.name for f in trace.fields if f.error is None] == ["a", "b"]
    assert clock.reads - rendered <= rendered + 2


@pytest.mark.parametrize(("template", "message"), [
    ("{{ (((10**999)**999)**999) }}", "integer result over 4300 digits"),
    ("{% set x = 2 ** 1000 %}{{ x * x * x * x * x * x * x * x * x * x * x * x * x * x * x }}",
     "integer result over 4300 digits"),
    ("{{ 99999 ** 999 }}", "integer result over 4300 digits"),
])
def test_huge_integers_are_refused_before_they_are_built(template: str, message: str) -> None:
    """`**` and `*` on integers stop before building an integer too long to print."""
    with pytest.raises(RenderError, match=f"{message} in field f$"):
        compile_field("f", template)(ctx({}))


BIG = "{% set s = 'a' * 1000000 %}"


@pytest.mark.parametrize("template", [
    BIG + "{{ s ~ s }}",
    BIG + "{% set t = s ~ 'b' %}{{ t }}",
    BIG + "{{ s + s }}",
    "{{ (([1] * 600000) + ([1] * 600000)) | length }}",
    BIG + "{{ [s, s] | join }}",
    BIG + "{{ ([s] * 300) | join('') }}",
    BIG + "{{ ','.join([s] * 300) }}",
    BIG + "{{ ''.join(range(300) | map('string') | list) ~ s }}",
    "{{ payload.t.replace('', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb') }}",
    "{{ payload.t | replace('a', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb') }}",
    "{{ 'x'.ljust(1000000000) }}",
    "{{ 'x'.center(1000000000) }}",
    "{{ 'x'.zfill(1000000000) }}",
    "{{ 'a\tb'.expandtabs(1000000000) }}",
    "{{ '{:>1000000000}'.format('x') }}",
    "{{ '{x:>1000000000}'.format_map({'x': 1}) }}",
    "{{ '%1000000000s' % 'x' }}",
    BIG + "{{ '%s%s' % (s, s) }}",
    BIG + "{% set t %}{% for i in range(5000) %}{{ s }}{% endfor %}{% endset %}{{ t | length }}",
    BIG + "{% macro m() %}{{ s }}{{ s }}{% endmacro %}{{ m() | length }}",
    "{{ ([[1] * 100000] * 100) | sum(start=[]) | length }}",
    BIG + "{{ [s, s] | map('upper') | join }}",
])
def test_no_string_operation_builds_past_the_size_cap(template: str) -> None:
    """`~`, `+`, `join`, `replace`, `%`, `format`, padding, block sets, macros and `sum` stop at the size cap."""
    with pytest.raises(RenderError, match=r"(string|list) result over 1000000 characters .*in field f$"):
        compile_field("f", template)(ctx({"t": "a" * 100_000}))


@pytest.mark.parametrize(("template", "message"), [
    # From the payload: a literal past these bounds is a load error (builtins.py).
    ("{{ [1] | batch(payload.n, 'x') | list }}", "batch: linecount of 1000000000 is over the limit"),
    ("{{ [1] | slice(payload.n, 'x') | list }}", "slice: slices of 1000000000 is over the limit"),
    ("{{ payload | tojson(payload.n) }}", "tojson: indent of 1000000000 is over the limit"),
    ("{{ payload | tojson(payload.wide) }}", "tojson: indent of 200 characters is over the limit of 100"),
    ("{{ 1.5 | round(payload.p, 'ceil') }}", "round: precision of 10000 is over the limit of 100"),
    ("{{ 1.5 | round(-payload.n) }}", "round: precision of -1000000000 is over the limit of 100"),
    ("{{ 'abc'.translate({97: 'x' * 1000}) }}", "str.translate is not available"),
    ("{{ '{:{w}}'.format('x', w=5) }}", "a width or precision taken from an argument is not allowed"),
    ("{{ '%*s' % (5, 'x') }}", "a width taken from an argument"),
    ("{{ range(20000) | list | length }}", "range of 20000 items is over the limit of 10000"),
    ("{{ range(0, 10 ** 30, 1) | list | length }}", "over the limit of 10000"),
])
def test_arguments_that_set_how_much_is_built_are_bounded(template: str, message: str) -> None:
    """Counts, indents, translation tables and computed widths cannot make an operation build without bound."""
    with pytest.raises(RenderError, match=message):
        compile_field("f", template)(ctx({"a": 1, "n": 10**9, "p": 10_000, "wide": " " * 200}))


def test_transforms_are_bounded_too() -> None:
    """A `transform:` list runs the same size-checked filters, and its error names the field and the limit."""
    field = compile_field("f", {"from": "payload.t", "transform": ["replace('a', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb')"]})
    with pytest.raises(RenderError, match=r"^f: transform replace.*: string result over 1000000 characters"):
        field(ctx({"t": "a" * 100_000}))


def test_bounded_operations_still_work_within_the_limits() -> None:
    """The guards change nothing for templates within the limits."""
    template = ("{% set t %}{% for x in payload.l | sort | unique %}{{ x ~ '-' }}{% endfor %}{% endset %}"
                "{{ t }}{{ 'ab' * 2 }}{{ [1] + [2] }}{{ 2 ** 10 }}{{ '%s=%d' % ('n', 3) }}{{ '{}!'.format('hi') }}"
                "{{ ','.join(['a', 'b']) }}{{ 'x'.ljust(3, '.') }}{{ payload.l | map('string') | join('+') }}"
                "{{ payload.l | sum }}{{ [1, 2, 3] | batch(2) | list | length }}")
    assert compile_field("f", template)(ctx({"l": [3, 1, 3]})) == "1-3-abab[1, 2]1024n=3hi!a,bx..3+1+372"


def test_budgeted_loops_keep_jinjas_loop_variables_else_and_recursion() -> None:
    """A loop read through the budget still has loop.length/last/revindex, `else` and recursive `loop()`."""
    template = ("{% for x in [1, 2, 3] %}{{ loop.length }}{{ loop.last }}{{ loop.revindex }};{% endfor %}"
                "{% for x in [] %}{% else %}empty;{% endfor %}"
                "{% for x in payload.tree recursive %}{{ x.n }}({{ loop(x.c) }}){% endfor %}")
    tree = [{"n": "a", "c": [{"n": "b", "c": []}]}]
    assert compile_field("f", template)(ctx({"tree": tree})) == "3False3;3False2;3True1;empty;a(b())"


def test_a_when_past_the_budget_names_the_mapping_and_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A `when` that runs past the budget fails the mapping's match with the limit named."""
    monkeypatch.setattr(limits, "TIME_BUDGET_S", 0.0)
    text = textwrap.dedent("""\
        name: picky
        source: s
        when: "range(5000) | map('string') | list | length > 2"
        destination: d
        action: create_ticket
        fields: {t: x}
        """)
    mapping, errors = compile_document(load_yaml(text, "picky.yaml"), "picky", "v1", {"s"},
                                       {"d": frozenset({"create_ticket"})})
    assert errors == [] and mapping is not None
    with pytest.raises(MappingError, match=r"^picky: when: render budget of 0 ms exceeded$"):
        mapping.matches(ctx({}))
