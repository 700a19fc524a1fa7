"""Jinja's own filters and tests in templates: their literal arguments checked when a mapping loads (builtins.py),
and the ones that loop or sort in one call bounded at render (templates.py)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bridge.mapping import limits, templates
from bridge.mapping.arguments import ALIASES
from bridge.mapping.builtins import FILTER_ARGUMENTS, TEST_ARGUMENTS, params_of
from bridge.mapping.compiled import compile_when
from bridge.mapping.compiler import CompileError, RenderError, compile_field
from bridge.mapping.filters import FILTERS
from bridge.mapping.templates import ENV, MAX_SORTED, URLIZE_WORD
from tests.unit.bridge.mapping.test_loop_slice import sliced


@pytest.fixture(autouse=True)
def no_time_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Renders here run on payloads of hundreds of kilobytes (tens of milliseconds each on a quiet machine): under the
    render's 250 ms of wall time, a busy machine's would fail. What these tests check are counts and outputs, never
    the budget: a minute of it."""
    monkeypatch.setattr(limits, "TIME_BUDGET_S", 60.0)


def ctx(payload: Any, **vars_: Any) -> dict[str, Any]:
    return {"payload": payload, "headers": {}, "event": {"id": "evt_1"}, "vars": vars_}


# -- checked at load ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("template", "message"), [
    ("{{ payload.x | round(2, 'sideways') }}", "bad arguments to the round filter: the method must be 'common', 'ceil' "
                                              "or 'floor', not 'sideways': write e.g. round(2, 'floor')"),
    ("{{ payload.x | round('2') }}", "the precision (digits after the point) must be a whole number from -100 to 100, "
                                    "not '2': write e.g. round(2)"),
    ("{{ payload.x | round(2.5) }}", "the precision (digits after the point) must be a whole number"),
    ("{{ payload.x | round(1000000, 'ceil') }}", "from -100 to 100, not 1000000"),
    ("{{ payload.x | round(method='up') }}", "the method must be 'common', 'ceil' or 'floor', not 'up'"),
    ("{{ payload.x | batch(0) }}", "bad arguments to the batch filter: the count (items in each batch) must be a whole "
                                  "number from 1 to 10,000, not 0: write e.g. batch(3)"),
    ("{{ payload.x | batch(-3) }}", "must be a whole number from 1 to 10,000, not -3"),
    ("{{ payload.x | batch(20000) }}", "must be a whole number from 1 to 10,000, not 20000"),
    ("{{ payload.x | batch(true) }}", "must be a whole number from 1 to 10,000, not true"),
    ("{{ payload.x | batch }}", "batch needs the count (items in each batch): write e.g. batch(3)"),
    ("{{ payload.x | slice(0) }}", "bad arguments to the slice filter: the count (of slices) must be a whole number "
                                  "from 1 to 10,000, not 0"),
    ("{{ payload.x | slice('3') }}", "the count (of slices) must be a whole number from 1 to 10,000, not '3'"),
    ("{{ payload.x is divisibleby(0) }}", "bad arguments to the divisibleby test: the number to divide by must be a "
                                         "number other than 0, not 0: write e.g. divisibleby(3)"),
    ("{{ payload.x is divisibleby 'x' }}", "the number to divide by must be a number other than 0, not 'x'"),
    ("{{ payload.x is divisibleby }}", "divisibleby needs the number to divide by: write e.g. divisibleby(3)"),
    ("{{ payload.x is in 5 }}", "bad arguments to the in test: what it looks in must be text, a list or a table, "
                               "not 5"),
    ("{{ payload.x is odd(2) }}", "odd was given 1 argument, but it takes no arguments: write odd"),
    ("{{ payload.x is eq(b=3) }}", "eq takes its b in place, not by name: write e.g. eq(3)"),
    ("{{ payload.x is sameas }}", "sameas needs the value compared with"),
    ("{{ payload.x is foo }}", "unknown test 'foo' in the template; known tests: boolean, callable, defined, "
                               "divisibleby,"),
    ("{{ payload.x is od }}", "unknown test 'od' in the template (did you mean 'odd'?)"),
    ("{{ payload.x | select('no_such_test') }}", "bad arguments to the select filter: the test must be the name of a "
                                                "known test, not 'no_such_test': write e.g. select('divisibleby', 3); "
                                                "known tests: boolean,"),
    ("{{ payload.x | reject('od') }}", "the test must be the name of a known test, not 'od' (did you mean 'odd'?)"),
    ("{{ payload.x | select(5) }}", "the test must be the name of a known test, not 5"),
    ("{{ payload.x | select('divisibleby', 0) }}", "bad arguments to the select filter: the divisibleby test it "
                                                  "applies: the number to divide by must be a number other than 0, "
                                                  "not 0"),
    ("{{ payload.x | select(count=1) }}", "select was given 'count' by name, but no test to pass it to"),
    ("{{ payload.x | selectattr('a', 'nosuch') }}", "bad arguments to the selectattr filter: the test must be the "
                                                   "name of a known test, not 'nosuch'"),
    ("{{ payload.x | rejectattr }}", "rejectattr needs the attribute to test: write e.g. "
                                     "rejectattr('status', 'equalto', 'open')"),
    ("{{ payload.x | selectattr(none) }}", "the attribute must be the name of an attribute or key"),
    ("{{ payload.x | map('nofilter') }}", "bad arguments to the map filter: the filter to apply must be the name of a "
                                         "known filter, not 'nofilter': write e.g. map('upper')"),
    ("{{ payload.x | map('uper') }}", "not 'uper' (did you mean 'upper'?)"),
    ("{{ payload.x | map }}", "map needs the filter to apply (by name) or attribute=…"),
    ("{{ payload.x | map(attribute='a', other=1) }}", "map has no argument 'other' beside attribute"),
    ("{{ payload.x | map(attribute=1.5) }}", "the attribute must be the name of an attribute or key"),
    ("{{ payload.x | map('truncate', 'x') }}", "bad arguments to the map filter: the truncate filter it applies: the "
                                              "length must be a whole number of characters, 1 or more, not 'x'"),
    ("{{ payload.x | map('round', 2, 'up') }}", "the round filter it applies: the method must be 'common', 'ceil' or "
                                               "'floor', not 'up'"),
    ("{{ payload.x | sort(by='x') }}", "bad arguments to the sort filter: sort has no argument 'by': it takes 3 "
                                      "arguments (reverse, case_sensitive, attribute)"),
    ("{{ payload.x | sort(reverse='yes') }}", "reverse must be true or false, not 'yes'"),
    ("{{ payload.x | sort(attribute='') }}", "the attribute must be the name of an attribute or key"),
    ("{{ payload.x | dictsort(by='x') }}", "bad arguments to the dictsort filter: by (what it sorts by) must be 'key' "
                                          "or 'value', not 'x': write e.g. dictsort(by='value')"),
    ("{{ payload.x | dictsort(false, 'key', true, 1) }}", "dictsort was given 4 arguments, but it takes 3 arguments"),
    ("{{ payload.x | groupby }}", "groupby needs the attribute: write e.g. groupby('status')"),
    ("{{ payload.x | groupby(attribute=none) }}", "the attribute must be the name of an attribute or key (text; dots "
                                                  "for one inside another) or an index (a whole number), not null"),
    ("{{ payload.x | unique(case_sensitive=1) }}", "case_sensitive must be true or false, not 1"),
    ("{{ payload.x | max(attribute=[1]) }}", "the attribute must be the name of an attribute or key"),
    ("{{ payload.x | attr(5) }}", "the attribute's name must be text naming an attribute, not 5"),
    ("{{ payload.x | sum(start='a') }}", "the start (what the items are added to) must be a number, or a list to add "
                                        "lists to, not 'a'"),
    ("{{ payload.x | sum(start=none) }}", "must be a number, or a list to add lists to, not null"),
    ("{{ payload.x | tojson(indent=[2]) }}", "the indent must be a whole number from 0 to 100, text of at most 100 "
                                            "characters (written once per level, e.g. '\\t'), or null, not [2]"),
    ("{{ payload.x | tojson(101) }}", "the indent must be a whole number from 0 to 100, text of at most 100 "
                                     "characters"),
    ("{{ payload.x | tojson('" + " " * 101 + "') }}",
     "the indent must be a whole number from 0 to 100, text of at most 100 characters"),
    ("{{ payload.x | urlize(0) }}", "the length links are cut at must be a whole number of characters, 1 or more, or "
                                   "null, not 0"),
    ("{{ payload.x | urlize(nofollow='yes') }}", "nofollow must be true or false, not 'yes'"),
    ("{{ payload.x | urlize(extra_schemes=['x']) }}", "the extra schemes must be a list of URI schemes such as "
                                                     "['tel:', 'ftp://'], or null, not ['x']"),
    ("{{ payload.x | xmlattr('yes') }}", "autospace must be true or false, not 'yes'"),
    ("{{ payload.x | filesizeformat(binary='yes') }}", "binary (powers of 1024) must be true or false, not 'yes'"),
    ("{{ payload.x | length(3) }}", "length was given 1 argument, but it takes no arguments: write length"),
    ("{{ payload.x | e(1) }}", "e was given 1 argument, but it takes no arguments: write e"),
    ("{{ payload.x | list(sort=true) }}", "list has no argument 'sort': it takes no arguments: write list"),
    ("{{ payload.x | indent(4) }}", "the indent filter is not available in templates: it lays out text in one call of "
                                   "any size; write replace('\\n', '\\n    ')"),
    ("{{ payload.x | center(9) }}", "the center filter is not available in templates"),
    ("{% filter batch(0) %}x{% endfilter %}", "bad arguments to the batch filter"),
    ("{% for row in payload.x | slice(0) %}{{ row }}{% endfor %}", "bad arguments to the slice filter"),
])
def test_a_builtin_given_an_argument_no_render_could_use_is_a_load_error(template: str, message: str) -> None:
    """Jinja's own filters and tests, given a literal argument no render could use (a count under 1, a method,
    a name of no test or filter, an argument they do not take), are refused when the mapping compiles, each named
    with the value and what it takes; not a failure of every delivery."""
    with pytest.raises(CompileError) as info:
        compile_field("f", template)
    assert message in str(info.value)


@pytest.mark.parametrize(("when", "message"), [
    ("payload.n is divisibleby(0)", "bad arguments to the divisibleby test: the number to divide by must be a number "
                                    "other than 0, not 0"),
    ("payload.n is evn", "unknown test 'evn' in the expression (did you mean 'even'?)"),
    ("payload.xs | select('evn') | list", "the test must be the name of a known test, not 'evn'"),
])
def test_a_when_expression_is_checked_the_same(when: str, message: str) -> None:
    with pytest.raises(CompileError) as info:
        compile_when(when)
    assert message in str(info.value)


# Each with a payload it renders: the same text as Jinja's own sandbox makes of it.
GOOD = [
    ("{{ payload.f | round }}", {"f": 2.567}),
    ("{{ payload.f | round(2) }}", {"f": 2.567}),
    ("{{ payload.f | round(1, 'floor') }} {{ payload.f | round(precision=-1, method='ceil') }}", {"f": 2.567}),
    ("{{ payload.xs | batch(2) | list }} {{ payload.xs | batch(2, 0) | list }}", {"xs": [1, 2, 3]}),
    ("{{ payload.xs | slice(2) | list }} {{ payload.xs | slice(2, fill_with='-') | list }}", {"xs": [1, 2, 3]}),
    ("{{ payload.n is divisibleby(3) }} {{ payload.n is divisibleby 2.5 }} {{ payload.n is odd }}", {"n": 15}),
    ("{{ 'a' is in 'abc' }} {{ payload.n is in [1, 15] }} {{ 'k' is in {'k': 1} }}", {"n": 15}),
    ("{{ payload.xs | select('odd') | list }} {{ payload.xs | reject('divisibleby', 3) | list }}", {"xs": [1, 2, 3]}),
    ("{{ payload.xs | select | list }} {{ payload.xs | select('==', 2) | list }}", {"xs": [0, 1, 2]}),
    ("{{ payload.rows | selectattr('open') | list }} {{ payload.rows | rejectattr('n', 'gt', 1) | list }}",
     {"rows": [{"open": True, "n": 1}, {"open": False, "n": 2}]}),
    ("{{ payload.rows | map(attribute='n') | list }} {{ payload.rows | map(attribute='m', default=0) | list }}",
     {"rows": [{"n": 1}, {"n": 2}]}),
    ("{{ payload.xs | map('upper') | join(',') }} {{ payload.fs | map('round', 1, 'floor') | list }}",
     {"xs": ["alpha", "be"], "fs": [1.25, 2.75]}),
    ("{{ payload.xs | sort | list }} {{ payload.xs | sort(reverse=true, case_sensitive=true) | list }}",
     {"xs": ["b", "A", "c"]}),
    ("{{ payload.rows | sort(attribute='n,m') | list }}", {"rows": [{"n": 2, "m": 1}, {"n": 1, "m": 3}]}),
    ("{{ payload.t | dictsort }} {{ payload.t | dictsort(by='value', reverse=true) }}", {"t": {"b": 1, "a": 2}}),
    ("{% for g in payload.rows | groupby('s') %}{{ g.grouper }}={{ g.list | length }};{% endfor %}",
     {"rows": [{"s": "x"}, {"s": "y"}, {"s": "x"}]}),
    ("{{ payload.rows | groupby('s', default='?', case_sensitive=true) | list }}", {"rows": [{"s": "x"}, {}]}),
    ("{{ payload.xs | unique | list }} {{ payload.xs | unique(case_sensitive=true) | list }}",
     {"xs": ["a", "A", "b"]}),
    ("{{ payload.xs | max }} {{ payload.xs | min(case_sensitive=true) }} {{ payload.rows | max(attribute='n') }}",
     {"xs": ["a", "B"], "rows": [{"n": 1}, {"n": 5}]}),
    ("{{ payload.xs | sum }} {{ payload.rows | sum(attribute='n', start=10) }} {{ [[1], [2]] | sum(start=[]) }}",
     {"xs": [1, 2], "rows": [{"n": 1}, {"n": 5}]}),
    ("{{ payload | attr('keys') is callable }} {{ payload.xs | first }} {{ payload.xs | last }}", {"xs": [1, 2]}),
    ("{{ payload | tojson }} {{ payload | tojson(2) }} {{ payload | tojson(indent=none) }}",
     {"b": [1, {"c": "<&'>"}], "a": None}),
    ("{{ payload | tojson('\t') }} {{ payload | tojson(indent='--') }}", {"b": [1, {"c": "<"}], "a": None}),
    ("{{ payload.s | urlize }} {{ payload.s | urlize(10, true, target='_blank') }}",
     {"s": "see www.example.com/a/long/path and (https://x.org/p). or mail a@b.co"}),
    ("{{ payload.s | urlize(rel='noopener', extra_schemes=['tel:']) }}", {"s": "call tel:+911234 now"}),
    ("<p{{ payload.t | xmlattr }}></p><p{{ payload.t | xmlattr(false) }}></p>", {"t": {"a": 1, "b": None, "c": "<"}}),
    ("{{ payload.n | filesizeformat }} {{ payload.n | filesizeformat(true) }}", {"n": 123456789}),
    ("{{ payload.t | urlencode }} {{ payload.s | urlencode }} {{ [('a', 1), ('b', '&')] | urlencode }}",
     {"t": {"k": "v w", "x": "/"}, "s": "a b/c"}),
    ("{{ payload.s | wordcount }} {{ payload.s | capitalize }} {{ payload.s | striptags }} {{ payload.s | e }}",
     {"s": "<b>two</b> words"}),
    ("{{ payload.xs | reverse | list }} {{ payload.xs | length }} {{ payload.xs | count }} {{ -3 | abs }}",
     {"xs": [1, 2]}),
    ("{{ payload.t | items | list }} {{ payload.s | string }} {{ payload.s | safe }}", {"t": {"a": 1}, "s": "x"}),
    ("{{ payload.n is eq 3 }} {{ payload.n is sameas none }} {{ payload.n is ge(2) }} {{ payload.n is number }}",
     {"n": 3}),
]


@pytest.mark.parametrize(("template", "payload"), GOOD)
def test_ordinary_uses_of_builtins_load_and_render_as_jinja_does(template: str, payload: dict[str, Any]) -> None:
    """Each built-in filter and test with the arguments it takes loads, and gives what Jinja's own sandbox gives."""
    expected = ImmutableSandboxedEnvironment().from_string(template).render(ctx(payload))
    assert compile_field("f", template)(ctx(payload)) == expected


@pytest.mark.parametrize("template", [
    "{{ payload.f | round(vars.digits, vars.how) }}", "{{ payload.xs | batch(vars.n) | list }}",
    "{{ payload.xs | select(vars.test) | list }}", "{{ payload.xs | map(vars.filter) | list }}",
    "{{ payload.n is divisibleby(vars.n) }}", "{{ payload.t | dictsort(by=vars.by) }}",
    "{{ payload.xs | map('round', vars.digits) | list }}", "{{ payload.n is in vars.seq }}",
])
def test_builtin_arguments_known_only_at_render_are_left_to_it(template: str) -> None:
    """An argument that is not a literal is not known before a render, and is not refused for it."""
    vars_ = {"digits": 1, "how": "floor", "n": 3, "test": "odd", "filter": "abs", "by": "value", "seq": [3]}
    field = compile_field("f", template, vars_)
    assert field(ctx({"f": 2.5, "xs": [1, -2, 3], "n": 3, "t": {"a": 1}}, **vars_)) != ""


def test_every_argument_of_every_builtin_is_declared() -> None:
    """Each of Jinja's filters and tests that takes arguments declares what each one takes (under its own parameter
    names), so none reaches a render unchecked; those that take a filter's or test's name are checked apart."""
    apart = {"map", "select", "reject", "selectattr", "rejectattr"}
    for name, fn in ENV.filters.items():
        if name in FILTERS or name in ALIASES or name in apart:
            continue
        assert sorted(FILTER_ARGUMENTS.get(name, {})) == sorted(p.name for p in params_of(fn)), name
    for name, test in ENV.tests.items():
        assert sorted(TEST_ARGUMENTS.get(name, {})) == sorted(p.name for p in params_of(test)), name
    for name in apart:
        assert [p.kind for p in params_of(ENV.filters[name])] == [inspect.Parameter.VAR_POSITIONAL,
                                                                   inspect.Parameter.VAR_KEYWORD], name


# -- bounded at render ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("template", ["{{ payload.xs | sort | length }}", "{{ payload.t | dictsort | length }}",
                                      "{{ payload.rows | groupby('s') | length }}"])
def test_a_sort_of_more_items_than_the_limit_is_refused_before_it_runs(template: str) -> None:
    """Python's sort is one call no time budget can stop (0.2 s for half a million numbers): past MAX_SORTED items a
    sort is a render error instead."""
    n = MAX_SORTED + 1
    payload = {"xs": list(range(n)), "t": {str(i): i for i in range(n)}, "rows": [{"s": i % 3} for i in range(n)]}
    field = compile_field("f", template)
    with pytest.raises(RenderError, match=f"sorting {n:,} items is over the limit of {MAX_SORTED:,}"):
        field(ctx(payload))
    smaller = {key: value[:MAX_SORTED] if isinstance(value, list) else dict(list(value.items())[:MAX_SORTED])
               for key, value in payload.items()}
    assert field(ctx(smaller)) in (str(MAX_SORTED), "3")


def test_a_sort_of_an_iterator_reads_no_further_than_the_limit() -> None:
    """What is not a list (a filter's output) is read one item past the limit, no further."""
    field = compile_field("f", "{{ payload.xs | map('abs') | sort | length }}")
    with pytest.raises(RenderError, match=f"sorting more than {MAX_SORTED:,} items is over the limit"):
        field(ctx({"xs": range(-10 * MAX_SORTED, 0)}))
    assert field(ctx({"xs": range(-MAX_SORTED, 0)})) == str(MAX_SORTED)


def test_a_sort_too_long_for_a_loop_slice_ends_it_before_it_begins() -> None:
    """On the loop, a sort of more than LOOP_SORTED items (small enough for the loop by weight) is not begun: the
    render goes off the loop, where it sorts them."""
    field = compile_field("f", "{{ payload.xs | sort | first }}")
    xs = [1] * (limits.LOOP_SORTED + 1)
    assert limits.text_weight(xs) <= limits.LOOP_BULK_CHARS
    with sliced(60.0), pytest.raises(limits.SliceOver):
        field(ctx({"xs": xs}))
    with sliced(60.0):
        assert field(ctx({"xs": xs[:limits.LOOP_SORTED]})) == "1"
    assert field(ctx({"xs": xs})) == "1"


def looks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the looks templates.py takes at the clock."""
    seen: list[int] = []
    check = templates.check_time

    def counted() -> None:
        seen.append(1)
        check()

    monkeypatch.setattr(templates, "check_time", counted)
    return seen


@pytest.mark.parametrize(("template", "payload", "pieces"), [
    ("{{ payload.s | urlize | length }}", {"s": "see www.example.com/p " * 10_000}, 220_000 // 16_384),
    ("{{ payload.t | xmlattr | length }}", {"t": {f"k{i}": i for i in range(5_000)}}, 5_000 // 256),
    ("{{ payload.t | urlencode | length }}", {"t": {f"k{i}": i for i in range(5_000)}}, 5_000 // 256),
    ("{{ payload.t | tojson(1) | length }}", {"t": {f"k{i}": i for i in range(5_000)}}, 10_000 // 256),
])
def test_builtins_that_loop_in_python_look_at_the_clock_as_they_go(
        monkeypatch: pytest.MonkeyPatch, template: str, payload: dict[str, Any], pieces: int) -> None:
    """urlize, xmlattr, urlencode and tojson with an indent loop over their input in Python without a look at the
    clock (0.3 to 0.5 s on a 1 MiB payload): they run on pieces of it, with a look between each, and give what Jinja
    gives on the whole."""
    field = compile_field("f", template)
    seen = looks(monkeypatch)
    out = field(ctx(payload))
    assert len(seen) >= pieces
    assert out == ImmutableSandboxedEnvironment().from_string(template).render(ctx(payload))


def test_urlize_leaves_a_word_longer_than_any_address_as_text() -> None:
    """Jinja's urlize takes time in the square of a word's length on some words (`a(a(…)))`: half a second for
    480,000 characters, in one call): a word over URLIZE_WORD characters is written as it is, escaped, even one that
    reads as an address."""
    word = "https://example.com/?q=<" + "a(" * URLIZE_WORD + ")" * URLIZE_WORD
    text = f"see www.example.com and {word} then a@b.co"
    out = compile_field("f", "{{ payload.s | urlize }}")(ctx({"s": text}))
    assert out == ('see <a href="https://www.example.com" rel="noopener">www.example.com</a> and '
                   f'{word.replace("<", "&lt;")} then <a href="mailto:a@b.co">a@b.co</a>')
    linked = "https://example.com/" + "a" * (URLIZE_WORD - 20)
    assert compile_field("f", "{{ payload.s | urlize }}")(ctx({"s": linked})).startswith(f'<a href="{linked}"')


def test_pprint_of_many_items_is_refused_before_it_is_laid_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """Python's pprint is one call no look at the clock stops, some 15 µs an item of a table (87,000 keys: 1.8 s): a
    value of more than PPRINT_ITEMS items, in all its lists and tables, is refused unwritten, and on the loop one of
    more than LOOP_PPRINT_ITEMS is not begun."""
    laid_out: list[Any] = []
    monkeypatch.setattr(templates, "do_pprint", lambda value: laid_out.append(value) or "laid out")
    field = compile_field("f", "{{ payload.v | pprint }}")
    many = {"rows": [{"k": i} for i in range(templates.PPRINT_ITEMS // 2)]}  # 1 + 1,000 + 1,000 items
    with pytest.raises(RenderError, match=f"pprint: a value of more than {templates.PPRINT_ITEMS:,} items would take "
                                          "too long to lay out"):
        field(ctx({"v": many}))
    assert laid_out == []
    assert field(ctx({"v": {"rows": many["rows"][:-1]}})) == "laid out"
    few = list(range(templates.LOOP_PPRINT_ITEMS))
    with sliced(60.0), pytest.raises(limits.SliceOver):
        field(ctx({"v": [*few, 1]}))
    with sliced(60.0):
        assert field(ctx({"v": few})) == "laid out"
