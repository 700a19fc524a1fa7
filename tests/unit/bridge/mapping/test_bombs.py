"""Templates that would allocate without bound or nest past what Jinja and Python can compile: refused before the
allocation (naming the field and the limit), and compile errors placed on their field, never a crash."""

from __future__ import annotations

import textwrap
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from bridge.mapping import limits, templates
from bridge.mapping.base import LimitExceeded
from bridge.mapping.compiler import CompileError, RenderError, compile_field, compile_when
from bridge.mapping.limits import MAX_RESULT_CHARS
from bridge.mapping.mappingset import compile_document
from bridge.routing import render_event
from bridge.yamlfile import load_yaml

HEAVY = "x" * 10_000
BIG = [HEAVY] * 2_000  # 20,000,000 characters as text, yet 16 KB of memory: a payload can hold no more than this
PAYLOAD: dict[str, Any] = {"big": BIG, "nested": [BIG], "table": {"k": BIG}, "pair": (BIG, BIG)}
# Far below what any of these would build as text (20 MB and more), far above what a refusal costs.
PEAK_BYTES = 4_000_000


def ctx(payload: Any) -> dict[str, Any]:
    return {"payload": payload, "headers": {}, "event": {"id": "evt_1"}, "vars": {}}


@contextmanager
def peak_memory() -> Iterator[Callable[[], int]]:
    """The most memory allocated at once inside the block, in bytes, beyond what was held before it (read after
    the block)."""
    found: list[int] = []
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        yield lambda: found[0]
    finally:
        found.append(tracemalloc.get_traced_memory()[1] - base)
        tracemalloc.stop()


def refused_without_building(field: Callable[[dict[str, Any]], Any], payload: Any) -> RenderError:
    with peak_memory() as peak, pytest.raises(RenderError) as info:
        field(ctx(payload))
    assert peak() < PEAK_BYTES, f"{peak():,} bytes allocated before the refusal"
    return info.value


# -- every way a value becomes text -----------------------------------------------------------------------

CONVERSIONS = [
    "{% if true %}{{ payload.big }}{% endif %}",  # output, through Jinja
    "{{ payload.big }}",  # output, the fast path
    "Re: {{ payload.big }}",
    "{{ payload.big }} and {{ payload.table }}",
    "{% if true %}{{ payload.table }}{% endif %}",  # a table's values
    "{{ payload.big | string | length }}",
    "{{ (payload.big ~ '') | length }}",
    "{{ payload.big | tojson | length }}",
    "{{ payload.big | pprint | length }}",
    "{{ payload.nested | join | length }}",  # join of nested lists
    "{{ payload.nested | map('string') | join | length }}",
    "{{ ''.join(payload.nested) }}",
    "{{ '{}'.format(payload.big) | length }}",
    "{{ '{0}{0}'.format(payload.big) | length }}",
    "{{ '{k}'.format_map(payload.table) | length }}",
    "{{ ('%s' % (payload.big,)) | length }}",
    "{{ ('%r%r' % payload.pair) | length }}",
    "{{ ('%(k)s' % payload.table) | length }}",
    "{{ payload.big | e | length }}",
    "{{ payload.big | trim | length }}",
    "{{ payload.table | urlencode | length }}",
    "{{ payload.table | xmlattr | length }}",
    "{{ payload.big | wordcount }}",
]


@pytest.mark.parametrize("template", CONVERSIONS)
def test_a_value_too_heavy_to_write_is_refused_before_it_is_written(template: str) -> None:
    """Output, `string`, `~`, `tojson`, `pprint`, `join`, `format`, `%`, a table's values and the other filters that
    write their input as text weigh it first (a bounded walk), and refuse it before building the text."""
    error = refused_without_building(compile_field("f", template), PAYLOAD)
    assert isinstance(error, LimitExceeded)
    assert str(error).startswith("f: ") and str(error).endswith(" in field f")
    assert f"over {MAX_RESULT_CHARS} characters" in str(error)


def test_a_transform_weighs_what_it_joins() -> None:
    """`transform: [join]` on a list of lists weighs each item before writing it."""
    field = compile_field("f", {"from": "payload.nested", "transform": ["join"]})
    error = refused_without_building(field, PAYLOAD)
    assert str(error).startswith(f"f: transform join: string result over {MAX_RESULT_CHARS} characters")


def test_a_when_weighs_what_it_writes() -> None:
    """A `when` runs the same guards."""
    when = compile_when("(payload.big | string | length) > 0")
    with peak_memory() as peak, pytest.raises(templates.BudgetExceeded, match=f"over {MAX_RESULT_CHARS} characters"):
        when(ctx(PAYLOAD))
    assert peak() < PEAK_BYTES


# -- building a heavy list --------------------------------------------------------------------------------

A = "{% set a = 'a' * 10000 %}"
B = "{% set a = 'a' * 600000 %}"


@pytest.mark.parametrize("template", [
    A + "{{ ([a] * 2000) | length }}",  # `*` counts what its items weigh, not how many there are
    A + "{{ (2000 * [a]) | length }}",
    A + "{{ ([[a]] * 2000) | length }}",  # nested lists counted through
    A + "{{ ((a,) * 2000) | length }}",
    B + "{{ ([a] + [a]) | length }}",  # `+`
    B + "{{ ((a,) + (a,)) | length }}",
    B + "{{ [a, a] | length }}",  # a list, tuple or table written out
    B + "{{ (a, a) | length }}",
    B + "{{ {'x': a, 'y': a} | length }}",
    A + "{% set b = [a, a, a, a, a, a, a, a, a, a] %}{% set c = [b, b, b, b, b, b, b, b, b, b] %}{{ c | length }}",
    B + "{{ [1] | batch(3, a) | list | length }}",  # a filter's result
    B + "{{ {'x': a}.items() | list | length }}" + "{{ [a, 1][0:1] | length }}{{ {'x': a, 'y': a}.values() }}",
])
def test_a_list_too_heavy_is_refused_when_it_is_built(template: str) -> None:
    """A list, tuple or table whose items would write more than the cap is refused where it is built (`*`, `+`, a
    literal, a filter's or a method's result), though it holds few items; the error names the field and the limit."""
    field = compile_field("f", template)
    with pytest.raises(LimitExceeded, match=rf"^f: (list|table) result over {MAX_RESULT_CHARS} characters "
                                            r"\(it would be at least \d+ as text\) in field f$"):
        field(ctx({}))


def test_the_probes_bomb_is_refused_at_once() -> None:
    """The template that froze the server for seconds (10^12 characters when written) stops at its `*`."""
    field = compile_field("f", "{% set a='a'*999999 %}{% set b=[a]*999999 %}{{ b }}")
    started = time.monotonic()
    error = refused_without_building(field, {})
    assert time.monotonic() - started < 0.5
    assert str(error).startswith(f"f: list result over {MAX_RESULT_CHARS} characters (it would be at least")


def test_light_lists_and_text_still_work() -> None:
    """Lists, tables and text within the cap render as before."""
    template = ("{% set a = 'a' * 1000 %}{{ ([a] * 900) | length }} {{ ([1, 2] * 3) | join(',') }} "
                "{{ {'k': [1, 2]} }} {{ [a] | string | length }} {{ (payload.l ~ '') }} {{ payload.l | tojson }} "
                "{{ '{}-{}'.format(payload.l, 1) }} {{ '%s' % (payload.l,) }} {{ payload.t | pprint }}")
    assert compile_field("f", template)(ctx({"l": [1, "b"], "t": {"k": None}})) == (
        "900 1,2,1,2,1,2 {'k': [1, 2]} 1004 [1, 'b'] [1, \"b\"] [1, 'b']-1 [1, 'b'] {'k': None}")
    assert compile_field("f", "{{ payload.l }}")(ctx({"l": [HEAVY] * 90})) == str([HEAVY] * 90)


@pytest.mark.parametrize("value", [
    "abc", 12345, -7, None, True, False, 1.5, float("inf"), [], {}, (), [1, "a", None], ("x", [2.5, {"k": "v"}]),
    {"a": [1, 2, {"b": (None, True)}], 3: "c"}, [[[[]]]], {1, 2}, frozenset({"z"}), {"k": 1}.items(), b"by",
    10 ** 300, [-(10 ** 50), 10 ** 20], [""] * 5,
])
def test_the_weight_never_exceeds_the_text(value: Any) -> None:
    """The weight is a lower bound of what str() and repr() write, so nothing within the cap is refused."""
    assert limits.text_weight(value) <= len(str(value))


def test_the_weight_stops_counting_past_its_limit() -> None:
    """The walk is bounded: it reads no more items than the limit, whatever the value holds."""
    read = 0

    class Counted(list[Any]):
        def __iter__(self) -> Iterator[Any]:
            nonlocal read
            for item in super().__iter__():
                read += 1
                yield item

    inner = Counted([HEAVY] * 1_000)
    assert limits.text_weight(Counted([inner] * 1_000_000), limit=50_000) > 50_000
    assert read <= 50_001
    read = 0
    assert limits.text_weight(Counted([Counted([1, 2])] * 1_000_000), limit=50_000) > 50_000
    assert read <= 50_001


# -- memory and recursion inside a render -----------------------------------------------------------------

def test_recursion_inside_a_render_is_a_limit_error_naming_the_field() -> None:
    """A macro calling itself without end stops with a limit error, not a crash."""
    field = compile_field("f", "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(0) }}")
    with pytest.raises(LimitExceeded, match=r"^f: template nests or recurses too deeply .* in field f$"):
        field(ctx({}))


def test_running_out_of_memory_inside_a_render_is_a_limit_error_naming_the_field(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A MemoryError inside a render is the field's limit error, and the delivery's error says so rather than
    "internal error"."""

    def hungry(value: Any) -> Any:
        raise MemoryError

    monkeypatch.setitem(templates.ENV.filters, "upper", hungry)
    text = textwrap.dedent("""\
        name: hungry
        source: s
        destination: d
        action: create_ticket
        fields:
          title: "{% if true %}{{ payload.s | upper }}{% endif %}"
        """)
    mapping, errors = compile_document(load_yaml(text, "hungry.yaml"), "hungry", "v1", {"s"},
                                       {"d": frozenset({"create_ticket"})})
    assert errors == [] and mapping is not None
    rendered = render_event(mapping, ctx({"s": "x"}), "evt_1")
    assert rendered.error == ("hungry.title: template needs more memory than a render may use in field title")


# -- templates that nest too deeply to compile --------------------------------------------------------------

DEEP = [
    "{% if true %}" * 400 + "x" + "{% endif %}" * 400,
    "{% if true %}" * 101 + "x" + "{% endif %}" * 101,  # Python: too many levels of indentation
    "{% for a in [1] %}" * 21 + "x" + "{% endfor %}" * 21,  # Python: too many statically nested blocks
    "{{ " + " + ".join(["1"] * 3000) + " }}",
    "{{ " + " + ".join(["payload.a"] * 250) + " }}",  # Python: too many nested parentheses
    "{{ " + "(" * 300 + "1" + ")" * 300 + " }}",
    "{{ " + "[" * 300 + "]" * 300 + " }}",
    "{{ " + "not " * 300 + "payload.a }}",
    "{{ payload.a" + " | lower" * 2000 + " }}",
    "{{ " + " if payload.a else ".join(["1"] * 300) + " }}",
]


@pytest.mark.parametrize("template", DEEP, ids=range(len(DEEP)))
def test_a_template_nesting_too_deeply_is_a_compile_error(template: str) -> None:
    """Deep nesting of blocks or expressions is a compile error on the field, never a RecursionError or a Python
    SyntaxError escaping the loader."""
    with pytest.raises(CompileError, match=r"^template nests too deeply"):
        compile_field("f", template)


def test_a_when_nesting_too_deeply_is_a_compile_error() -> None:
    with pytest.raises(CompileError, match=r"^expression nests too deeply"):
        compile_when(" + ".join(["1"] * 3000) + " > 1")


def test_a_template_too_long_is_a_compile_error() -> None:
    text = "{{ payload.a }}" + "x" * templates.MAX_TEMPLATE_CHARS
    with pytest.raises(CompileError, match=rf"^template is {len(text):,} characters, over the limit of "
                                           rf"{templates.MAX_TEMPLATE_CHARS:,}"):
        compile_field("f", text)


def test_templates_within_the_nesting_limits_compile() -> None:
    """The limits sit well above any real mapping: 16 nested blocks, long chains of operators and filters."""
    blocks = templates.MAX_TEMPLATE_BLOCKS
    nested = "{% for a in [1] %}{% if true %}" * (blocks // 2) + "x" + "{% endif %}{% endfor %}" * (blocks // 2)
    assert compile_field("f", nested)(ctx({})) == "x"
    chain = "{{ " + " + ".join(["1"] * 40) + " }}{{ payload.a" + " | lower" * 40 + " }}"
    assert compile_field("f", chain)(ctx({"a": "B"})) == "40b"


def test_a_deep_template_in_a_mapping_file_is_placed_at_its_field_and_line() -> None:
    deep = "{% if true %}" * 400 + "x" + "{% endif %}" * 400
    text = textwrap.dedent(f"""\
        name: deep
        source: s
        destination: d
        action: create_ticket
        when: "{' + '.join(['1'] * 3000)} > 1"
        fields:
          ok: "{{{{ payload.a }}}}"
          title: "{deep}"
          body: {{template: "{deep}", default: ""}}
        """)
    mapping, errors = compile_document(load_yaml(text, "deep.yaml"), "deep", "v1", {"s"},
                                       {"d": frozenset({"create_ticket"})})
    assert mapping is None
    assert [(e.line, e.path, str(e.message).split(":")[0]) for e in errors] == [
        (5, "deep.when", "expression nests too deeply"),
        (8, "deep.title", "template nests too deeply"),
        (9, "deep.body.template", "template nests too deeply"),
    ]
