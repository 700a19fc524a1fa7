"""The loop slice (limits.start_slice) holds for every mapping, with Jinja or without: each step of a render that can
take long looks at it, so that a render on the event loop stops there (SliceOver) and is run again off the loop.

OVER is a slice over before it begins: a render stops at its first look at the clock, and renders to the end when it
takes none. ROOMY is a slice with time to spare: what stops a render there is a value too large for the loop, never
the clock."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bridge.mapping import limits
from bridge.mapping.base import LimitExceeded
from bridge.mapping.compiled import CompiledMapping, compile_when
from bridge.mapping.compiler import compile_field
from bridge.mapping.mappingset import compile_document
from bridge.mapping.text import html_to_text
from bridge.yamlfile import load_yaml

OVER = -1.0
ROOMY = 60.0
SHIPPED = Path(__file__).parents[4] / "mappings"
PARAGRAPH = "<p>Fibre cut near <b>MG Road</b>.</p><ul><li>Area: 5</li><li>Homes: 40</li></ul>"


def ctx(payload: Any) -> dict[str, Any]:
    return {"payload": payload, "headers": {}, "event": {"id": "evt_1"}, "vars": {}}


@contextmanager
def sliced(seconds: float) -> Iterator[None]:
    """The block runs under a loop slice of `seconds`, as a render on the event loop does."""
    token = limits.start_slice(seconds)
    try:
        yield
    finally:
        limits.end_slice(token)


def mapping(text: str, name: str = "m") -> CompiledMapping:
    compiled, errors = compile_document(load_yaml(textwrap.dedent(text), f"{name}.yaml"), name, "v1",
                                        {"s", "partner-api"}, {"d": frozenset({"create_ticket"}),
                                                               "demo-kapture": frozenset({"create_ticket"})})
    assert errors == [] and compiled is not None, errors
    return compiled


def partner() -> CompiledMapping:
    """The shipped partner-to-kapture mapping: no Jinja field, html_to_text on the partner's description."""
    return mapping((SHIPPED / "partner-to-kapture.yaml").read_text(), "partner-to-kapture")


def test_the_shipped_partner_mapping_without_jinja_stops_at_its_loop_slice() -> None:
    """partner-to-kapture has no Jinja field, and rendered a 61 KB description on the loop to the end (/healthz
    waited 174 ms). Now a description too large for the loop is not begun on it, and one smaller stops at the
    slice's end (here at once), in a render as in an explanation (the console's preview); off the loop the render
    is the same as ever."""
    m = partner()
    large = ctx({"id": "p-1", "title": "Outage", "description_html": PARAGRAPH * 750})  # 61 KB
    middling = ctx({"id": "p-1", "title": "Outage", "description_html": PARAGRAPH * 100})  # 8 KB
    for seconds, context in ((ROOMY, large), (OVER, middling)):
        with sliced(seconds), pytest.raises(limits.SliceOver):
            m.render(context)
        with sliced(seconds), pytest.raises(limits.SliceOver):
            m.explain(context)
    assert m.render(large)["ticket_details"] == html_to_text(PARAGRAPH * 750)
    with sliced(ROOMY):  # a small description renders on the loop
        assert m.render(ctx({"id": "p-2", "title": "Outage", "description_html": PARAGRAPH}))["ticket_details"] \
               == "Fibre cut near MG Road.\n\n- Area: 5\n- Homes: 40"


def test_a_filter_on_a_value_that_is_not_small_looks_at_the_slice_and_one_on_a_small_value_does_not() -> None:
    """Each filter on a value longer than SMALL_CHARS is followed by a look at the clock; filters on small values
    take none (the intake's hot path), so that a render of them ends even past its slice."""
    field = compile_field("f", {"from": "payload.x", "transform": ["strip", "lower"]})
    with sliced(OVER):
        assert field(ctx({"x": " A" * 100})) == "a " * 99 + "a"
        with pytest.raises(limits.SliceOver):
            field(ctx({"x": "A" * (limits.SMALL_CHARS + 1)}))


@pytest.mark.parametrize("spec", [
    {"from": "payload.x", "transform": ["lower"]},
    "{{ payload.x | lower }}",  # the fast path
    "{% if true %}{{ payload.x | lower }}{% endif %}",  # Jinja: a filter
    "{% if true %}{{ payload.x.lower() }}{% endif %}",  # Jinja: a string method
], ids=["transform", "fast template", "jinja filter", "jinja method"])
def test_a_value_too_large_for_the_loop_is_not_filtered_on_it(spec: Any) -> None:
    """A case mapping of non-ASCII text is one call into C of some 40 ns a character, which no look at the clock can
    stop: on a value past LOOP_BULK_CHARS it is not begun on the loop, however much of the slice is left."""
    field = compile_field("f", spec)
    at_most = "é" * limits.LOOP_BULK_CHARS
    with sliced(ROOMY):
        assert field(ctx({"x": at_most})) == at_most
        with pytest.raises(limits.SliceOver):
            field(ctx({"x": at_most + "é"}))
    assert field(ctx({"x": at_most + "É"})) == at_most + "é"  # off the loop


def test_a_large_list_is_not_written_as_text_on_the_loop() -> None:
    """`str()` of a list is one call into C too: a template writing one past LOOP_BULK_CHARS does not on the loop."""
    lines = [{"name": f"item {i}", "qty": i} for i in range(3000)]
    for spec in ("{{ payload.lines }}", "Lines: {{ payload.lines }}", "{% if true %}{{ payload.lines }}{% endif %}"):
        field = compile_field("f", spec)
        with sliced(ROOMY), pytest.raises(limits.SliceOver):
            field(ctx({"lines": lines}))
        with sliced(ROOMY):
            assert field(ctx({"lines": lines[:3]})).endswith(str(lines[:3]))


@pytest.mark.parametrize("spec", [
    {"from": "payload.x", "transform": ["replace('a', 'aaaaaaaaaa')", "strip"]},
    "{{ payload.x | replace('a', 'aaaaaaaaaa') | strip }}",
    {"from": "payload.x", "transform": ["split", "join('----------')", "strip"]},
], ids=["transform", "fast template", "join"])
def test_a_chain_that_may_grow_a_small_value_looks_after_each_step(spec: Any) -> None:
    """A small value stays small through case mappings, strips and cuts, but not through `replace` or `join`, which
    build as much as the payload's matches or items ask: a chain with one looks after each step on a large value."""
    field = compile_field("f", spec)
    value = "a," * 200
    with sliced(OVER), pytest.raises(limits.SliceOver):
        field(ctx({"x": value}))
    assert len(field(ctx({"x": value}))) > limits.SMALL_CHARS


def test_a_long_chain_looks_after_each_step() -> None:
    """Steps on small values take microseconds, but a chain of more than UNCHECKED_STEPS of them looks after each."""
    steps = limits.UNCHECKED_STEPS
    short = compile_field("f", {"from": "payload.x", "transform": ["strip"] * steps})
    long = compile_field("f", {"from": "payload.x", "transform": ["strip"] * (steps + 1)})
    with sliced(OVER):
        assert short(ctx({"x": " a "})) == "a"
        with pytest.raises(limits.SliceOver):
            long(ctx({"x": " a "}))


@pytest.mark.parametrize("shape", ["fields", "list", "object"])
def test_a_mapping_list_or_table_of_many_small_steps_looks_after_each_part(shape: str) -> None:
    """A mapping (or a list or table field) whose parts take more than UNCHECKED_STEPS steps on small values in all
    looks at the slice after each part; one of fewer renders without a look."""

    def document(n: int) -> str:
        parts = ["{from: payload.x, transform: [strip]}" for _ in range(n)]
        if shape == "fields":
            fields = "".join(f"\n  f{i}: {part}" for i, part in enumerate(parts))
        elif shape == "list":
            fields = f"\n  f: [{', '.join(parts)}]"
        else:
            fields = "\n  f: {object: {" + ", ".join(f"k{i}: {part}" for i, part in enumerate(parts)) + "}}"
        return f"source: s\ndestination: d\naction: create_ticket\nfields:{fields}\n"

    few, many = mapping(document(10)), mapping(document(limits.UNCHECKED_STEPS))  # 2 steps each: a read, a strip
    with sliced(OVER):
        assert few.render(ctx({"x": " a "}))
        with pytest.raises(limits.SliceOver):
            many.render(ctx({"x": " a "}))
        with pytest.raises(limits.SliceOver):
            many.explain(ctx({"x": " a "}))


def test_a_fast_template_or_when_of_many_filters_is_left_to_jinja() -> None:
    """The fast path takes no look at the clock on small values; a template or `when` of more filters than
    UNCHECKED_STEPS runs in Jinja, which looks before each."""
    piece = "{{ payload.x | strip | strip | strip | strip }}"  # 4 filters
    pieces = limits.UNCHECKED_STEPS // 4
    assert compile_field("f", piece * pieces).jinja is False
    assert compile_field("f", piece * (pieces + 1)).jinja is True
    test = "payload.x | strip | strip | strip | strip == 'a'"
    fast, slow = compile_when(" and ".join([test] * pieces)), compile_when(" and ".join([test] * (pieces + 1)))
    with sliced(OVER):
        assert fast(ctx({"x": " a "})) is True
        with pytest.raises(limits.SliceOver):
            slow(ctx({"x": " a "}))
    assert slow(ctx({"x": " a "})) is True


def test_a_fast_when_looks_at_the_slice_on_a_value_that_is_not_small() -> None:
    """A `when` the fast path runs (no budget of its own) filters a large value under the slice as a field does."""
    m = mapping("""
        source: s
        when: "payload.x | lower != 'spam'"
        destination: d
        action: create_ticket
        fields: {title: {value: t}}
    """)
    with sliced(OVER):
        assert m.matches(ctx({"x": "SPAM"})) is False
        with pytest.raises(limits.SliceOver):
            m.matches(ctx({"x": "x" * (limits.SMALL_CHARS + 1)}))


def test_jmespath_looks_at_the_clock_as_it_visits() -> None:
    """A JMESPath projection over a large list visits nodes for each item: it looks at the slice as it goes."""
    field = compile_field("f", {"jmespath": "payload.items[?qty > `0`].name"})
    items = [{"name": f"item {i}", "qty": i % 3} for i in range(200)]
    assert len(field(ctx({"items": items}))) == 133
    with sliced(OVER), pytest.raises(limits.SliceOver):
        field(ctx({"items": items}))


@pytest.mark.parametrize("expression", ["sort(payload.names)", "join(', ', payload.names)", "max(payload.names)",
                                        "to_string(payload.names)", "sort_by(payload.items, &name)[0].name"])
def test_a_jmespath_function_is_not_begun_on_the_loop_on_an_argument_too_large_for_it(expression: str) -> None:
    """A JMESPath function (a sort, a join) is one call that runs whole: on an argument weighing more than
    LOOP_BULK_CHARS it is not begun on the loop, however much of the slice is left, and runs to its end off it."""
    field = compile_field("f", {"jmespath": expression})
    names = [f"customer {i:06}" for i in range(limits.LOOP_BULK_CHARS // 10)]
    payload = {"names": names, "items": [{"name": name} for name in names]}
    with sliced(ROOMY):
        assert field(ctx({"names": names[:3], "items": payload["items"][:3]}))
        with pytest.raises(limits.SliceOver):
            field(ctx(payload))
    assert field(ctx(payload))


def test_a_slice_holds_outside_a_render_and_a_shorter_budget_inside_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a slice every check raises SliceOver once it is over, in a render or not; a render's budget that ends
    before the slice (here at once) still says it is the budget; after the slice, no check stops anything."""
    with sliced(OVER), pytest.raises(limits.SliceOver):
        limits.check_time()
    monkeypatch.setattr(limits, "TIME_BUDGET_S", 0.0)
    with sliced(ROOMY), limits.Budget(), pytest.raises(limits.BudgetExceeded):
        limits.check_time()
    with sliced(ROOMY):
        limits.check_time()
        limits.check_slice()
    limits.check_time()
    assert limits._deadline.get()[0] == float("inf")


def test_off_the_loop_a_mapping_without_jinja_renders_under_the_whole_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the server's worker threads (the parser's, the console's), where no slice runs, a mapping without Jinja
    takes the budget a template takes: its render, its explanation, its fast-path `when` and its conversation key
    stop with the limit error naming the field (here a budget over once it begins, at the first look at the clock).
    Before, they had no budget there, and a filter costly on a large value held the parser thread for as long as it
    took. On the loop they take none: the slice bounds them, and ends first. Nor in the CLI's own thread, where an
    operator's `render` of a large fixture goes to its end."""
    m = mapping("""
        source: s
        destination: d
        action: create_ticket
        fields: {title: {value: t}, details: {from: payload.html, transform: [html_to_text]}}
    """)
    w = mapping("""
        source: s
        when: "payload.html | html_to_text != ''"
        conversation: "{{ payload.html | html_to_text }}"
        destination: d
        action: create_ticket
        fields: {title: {value: t}}
    """, "w")
    context = ctx({"html": PARAGRAPH * 100})  # 8 KB: a filter on it looks at the clock
    assert m.render(context)["details"].startswith("Fibre cut near MG Road.")
    monkeypatch.setattr(limits, "TIME_BUDGET_S", 0.0)
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ticketbridge-parse")

    def there(fn: Callable[..., Any], *args: Any) -> Any:
        return worker.submit(fn, *args).result()

    try:
        with pytest.raises(LimitExceeded, match=r"^m.details: transform html_to_text: render budget of 0 ms "
                                                r"exceeded in field details$"):
            there(m.render, context)
        assert there(m.explain, context).error == ("details: transform html_to_text: render budget of 0 ms exceeded "
                                                   "in field details")
        with pytest.raises(LimitExceeded, match=r"^w: when: render budget of 0 ms exceeded$"):
            there(w.matches, context)
        with pytest.raises(LimitExceeded, match=r"^conversation: render budget of 0 ms exceeded in field "
                                                r"conversation$"):
            there(w.conversation_key, context)
    finally:
        worker.shutdown()
    # The CLI's thread: no slice, no budget (a render of a large fixture is an operator's to wait for).
    assert m.render(context)["details"].startswith("Fibre cut near MG Road.")
    assert m.explain(context).error is None
    assert w.matches(context) is True
    with sliced(ROOMY):  # on the loop, the slice alone bounds them
        assert m.render(context)["details"].startswith("Fibre cut near MG Road.")
        assert w.matches(context) is True
        assert w.conversation_key(context).startswith("Fibre cut near MG Road.")
