"""The filter registry: each filter's behaviour, its errors, and that templates and transforms share it."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from bridge.mapping.arguments import ARGUMENTS
from bridge.mapping.compiler import CompileError, RenderError, compile_field, compile_transform
from bridge.mapping.filters import FILTERS
from bridge.mapping.templates import ENV


def transform(text: str, value: Any) -> Any:
    return compile_transform(text)(value)


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("replace('-', ' ')", "a-b-c", "a b c"),
        ("split", "a, b,,c ", ["a", "b", "c"]),
        ("split(';')", "x; y", ["x", "y"]),
        ("split(None)", " x  y ", ["x", "y"]),
        ("int", "12", 12),
        ("int", " 1_000 ", 1000),
        ("int", "12.0", 12),
        ("int", 7.0, 7),
        ("int", True, 1),
        ("float", "2.5", 2.5),
        ("float", 3, 3.0),
        ("bool", "Yes", True),
        ("bool", "off", False),
        ("bool", "", False),
        ("bool", 0, False),
        ("default('x')", None, "x"),
        ("default('x')", "", ""),
        ("default('x', true)", "", "x"),
        ("default('x')", "kept", "kept"),
        ("first", [], None),
    ],
)
def test_filters_convert_as_documented(text: str, value: Any, expected: Any) -> None:
    """Each filter turns a typical value into the documented result, type included."""
    result = transform(text, value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize("text", ["int", "float", "bool", "date", "phone_e164('IN')", "strip", "upper", "split"])
def test_null_passes_through_conversions_and_string_filters(text: str) -> None:
    """A null stays null through conversions and string filters: only `required` or `default` decide about it."""
    assert transform(text, None) is None


@pytest.mark.parametrize(
    ("text", "value", "message"),
    [
        ("int", "12.5", "'12.5' is not a whole number"),
        ("int", 2.5, "2.5 is not a whole number"),
        ("int", "abc", "'abc' is not a number"),
        ("int", [1], "cannot make an integer of a list"),
        ("float", "x", "'x' is not a number"),
        ("bool", "maybe", "'maybe' is not a yes/no value"),
        ("bool", {}, "cannot make a boolean of a dict"),
        ("phone_e164('IN')", "12", "'12' is not a possible phone number for region IN"),
        ("phone_e164('IN')", "call me", "'call me' is not a phone number"),
        ("phone_e164", "98765 43210", "'98765 43210' is not a phone number"),
        ("phone_e164", True, "a phone number must be text, not bool"),
    ],
)
def test_filters_refuse_values_they_cannot_convert(text: str, value: Any, message: str) -> None:
    """A value a conversion cannot take fails the render naming the transform and the value."""
    with pytest.raises(RenderError, match=r"^f: transform .* failed on .*: ") as info:
        compile_field("f", {"from": "payload.v", "transform": [text]})(
            {"payload": {"v": value}, "headers": {}, "event": {}, "vars": {}})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("value", "region", "expected"),
    [("098765 43210", "IN", "+919876543210"), ("+44 20 7946 0958", None, "+442079460958"),
     ("(415) 555-2671", "US", "+14155552671"), (9876543210, "IN", "+919876543210"),
     ("+91-98765-43210", "GB", "+919876543210")],
)
def test_phone_e164_writes_numbers_in_e164(value: Any, region: str | None, expected: str) -> None:
    """phone_e164 reads numbers as people write them (the region for those without +) and writes E.164."""
    assert FILTERS["phone_e164"](value, region) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("phone_e164('XX')", "the region must be a two-letter country code such as IN, GB or US, or null, not 'XX': "
                             "write e.g. phone_e164('IN')"),
        ("phone_e164(5)", "the region must be a two-letter country code such as IN, GB or US, or null, not 5"),
        ("date('iso', 'Mars/Olympus')", "the time zone must be an IANA time zone name such as UTC or Asia/Kolkata, "
                                        "not 'Mars/Olympus': write e.g. date('iso', 'Asia/Kolkata')"),
        ("date('iso', 'UTC', 'ymd')", "the order must be 'dmy' (day first) or 'mdy' (month first), or null, not 'ymd'"),
        ("date('')", "the format must be iso, epoch, epoch_ms or a strftime format such as '%Y-%m-%d', not ''"),
        ("truncate('x')", "the length must be a whole number of characters, 1 or more, not 'x': write e.g. "
                          "truncate(100)"),
        ("truncate(-5)", "the length must be a whole number of characters, 1 or more, not -5"),
        ("truncate(0)", "the length must be a whole number of characters, 1 or more, not 0"),
        ("truncate(2.5)", "the length must be a whole number of characters, 1 or more, not 2.5"),
        ("truncate(true)", "the length must be a whole number of characters, 1 or more, not true"),
        ("truncate(100, 5)", "the end (written after a cut text) must be text, not 5: write e.g. truncate(100, '…')"),
        ("truncate(3, '...')", "the length (3) must be more than the end's 3 characters, or nothing of the text is "
                               "kept: write e.g. truncate(100, '...')"),
        ("replace(1, 2)", "the text to find must be text of at least one character, not 1: write e.g. "
                          "replace('-', ' '); the text put in its place must be text, not 2"),
        ("replace('', 'x')", "the text to find must be text of at least one character, not ''"),
        ("replace('a')", "replace needs the text put in its place: write e.g. replace('-', ' ')"),
        ("strip(5)", "the characters to strip must be text (each of its characters is stripped), or null for "
                     "whitespace, not 5: write e.g. strip(' -')"),
        ("split(5)", "the separator must be text of at least one character, or null for any run of whitespace, "
                     "not 5: write e.g. split(';')"),
        ("split('')", "the separator must be text of at least one character, or null for any run of whitespace, "
                      "not ''"),
        ("join(5)", "the separator must be text, not 5: write e.g. join(', ')"),
        ("default('x', 'yes')", "the second argument (whether an empty or false value is replaced too) must be true "
                                "or false, not 'yes': write e.g. default('none', true)"),
        ("strip_quoted(5)", "the subject must be text or null, not 5"),
        ("attachment_list(null)", "the heading must be text, not null: write e.g. attachment_list('Files:')"),
        ("truncate(1, '', 3)", "truncate was given 3 arguments, but it takes 2 arguments (length, end): write e.g. "
                               "truncate(100)"),
        ("lower(1)", "lower was given 1 argument, but it takes no arguments: write lower"),
    ],
)
def test_bad_filter_arguments_are_compile_errors(text: str, message: str) -> None:
    """Arguments a filter could never work with are refused when the mapping compiles, not per event, each named
    with the value given and what it takes."""
    with pytest.raises(CompileError, match=r"^bad arguments in .*: ") as info:
        compile_transform(text)
    assert message in str(info.value)


@pytest.mark.parametrize("text", ["truncate(1)", "truncate(4, '...')", "truncate(100, '')", "replace('-', '')",
                                  "strip(null)", "strip(' -')", "split(null)", "split(';')", "join('')",
                                  "default(0, false)", "default(null)", "date('epoch', 'Asia/Kolkata', 'dmy')",
                                  "date('%d %b', 'UTC', null)", "phone_e164('in')", "phone_e164(null)",
                                  "strip_quoted(null)", "attachment_list('')"])
def test_good_filter_arguments_compile(text: str) -> None:
    """Arguments within what each filter takes compile, nulls where a filter takes one included."""
    compile_transform(text)


def test_every_argument_of_every_filter_is_declared() -> None:
    """Each filter with arguments declares what each one takes (under the filter's own parameter names), so none
    reaches a render unchecked."""
    for name, fn in FILTERS.items():
        params = list(inspect.signature(fn).parameters)[1:]
        assert sorted(ARGUMENTS.get(name, {})) == sorted(params), name


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ payload.p | phone_e164('XX') }}", "bad arguments to the phone_e164 filter: the region must be a "
                                               "two-letter country code such as IN, GB or US, or null, not 'XX'"),
        ("{{ payload.d | date('iso', 'Nowhere') }}", "bad arguments to the date filter: the time zone must be an "
                                                     "IANA time zone name"),
        ("{{ payload.s | slugify }}", "unknown filter 'slugify' in the template; known filters: "
                                      "attachment_list, bool, date"),
        ("{{ payload.s | truncate('x') }}", "bad arguments to the truncate filter: the length must be a whole "
                                            "number of characters, 1 or more, not 'x': write e.g. truncate(100)"),
        ("{{ payload.s | truncate(-5) }}", "the length must be a whole number of characters, 1 or more, not -5"),
        ("{{ payload.s | truncate(length=0) }}", "the length must be a whole number of characters, 1 or more, "
                                                 "not 0"),
        ("{{ payload.s | truncate(100, true) }}", "the end (written after a cut text) must be text, not true"),
        ("{{ payload.s | truncate(end='%s') }}" % ("." * 255), "the length (255) must be more than the end's 255 "
                                                            "characters"),  # the length its default
        ("{{ payload.s | truncate(100, killwords=true) }}", "truncate has no argument 'killwords': it takes 2 "
                                                            "arguments (length, end)"),
        ("{{ payload.s | replace(1, 2) }}", "the text to find must be text of at least one character, not 1"),
        ("{{ payload.s | split(5) }}", "the separator must be text of at least one character"),
        ("{{ payload.s | trim(5) }}", "bad arguments to the trim filter: the characters to strip must be text "
                                      "(each of its characters is stripped), or null for whitespace, not 5: write "
                                      "e.g. trim(' -')"),
        ("{{ payload.s | d('x', 'yes') }}", "bad arguments to the d filter: the second argument (whether an empty "
                                            "or false value is replaced too) must be true or false, not 'yes'"),
    ],
)
def test_templates_are_checked_for_filters_and_their_arguments(template: str, message: str) -> None:
    """A template's unknown filters and bad literal filter arguments (in place or by name) are compile errors
    too."""
    with pytest.raises(CompileError) as info:
        compile_field("f", template)
    assert message in str(info.value)


@pytest.mark.parametrize("template", ["{{ payload.s | truncate(vars.n) }}", "{{ payload.s | replace(payload.a, '') }}",
                                      "{{ payload.s | truncate(length=100, end='…') }}",
                                      "{{ payload.s | default(vars.x, true) }}"])
def test_template_arguments_known_only_at_render_are_left_to_it(template: str) -> None:
    """An argument that is not a literal is not known before a render, and is not refused for it."""
    compile_field("f", template, {"n": 5, "x": "y"})


def test_every_registry_filter_is_the_one_templates_call() -> None:
    """Templates call exactly the registry's functions (under the render budget's guard), so a transform
    and a template filter agree."""
    for name, fn in FILTERS.items():
        assert ENV.filters[name].__wrapped__ is fn  # type: ignore[attr-defined]
    assert ENV.filters["d"].__wrapped__ is FILTERS["default"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["center", "indent", "wordwrap", "format", "random"])
def test_unbounded_or_random_jinja_filters_are_removed(name: str) -> None:
    """Jinja's padding filters (unbounded output) and `random` (not repeatable) are not available."""
    assert name not in ENV.filters


def test_template_default_replaces_null_as_the_transform_does() -> None:
    """`default` in a template treats a JSON null like an absent value, as the transform does."""
    ctx = {"payload": {"s": None}, "headers": {}, "event": {}, "vars": {}}
    assert compile_field("f", "[{{ payload.s | default('none') }}]")(ctx) == "[none]"
    assert compile_field("f", "[{{ payload.s | d('none') }}]")(ctx) == "[none]"
    assert ENV.from_string("[{{ payload.s | default('none') }}]").render(ctx) == "[none]"


def test_attachment_list_in_a_template_names_each_file_and_its_size() -> None:
    """`{{ payload.attachments | attachment_list }}` writes the names and sizes under a heading; nothing for none."""
    files = [{"name": "router.jpg", "size": 2048, "sha256": "a" * 64}, {"name": "log.txt", "size": 10}]
    template = "{{ payload.text }}\n\n{{ payload.attachments | attachment_list }}"
    ctx = {"payload": {"text": "Down", "attachments": files}, "headers": {}, "event": {}, "vars": {}}
    assert compile_field("f", template)(ctx) == "Down\n\nAttachments:\n- router.jpg (2.0 KB)\n- log.txt (10 B)"
    ctx["payload"]["attachments"] = []
    assert compile_field("f", "[{{ payload.attachments | attachment_list }}]")(ctx) == "[]"


def test_join_stops_reading_once_its_text_passes_the_size_cap() -> None:
    """`join` counts the text of each item as it reads it (tables too, not only strings) and refuses at the
    first item that takes it past the cap, without turning the rest into text."""
    read = 0

    def items() -> Any:
        nonlocal read
        for _ in range(1_000):
            read += 1
            yield {"text": "a" * 400_000}

    with pytest.raises(ValueError, match="string result over 1000000 characters"):
        FILTERS["join"](items())
    assert read == 3


_CHAINS = [["strip"], ["strip", "lower"], ["strip", "title"], ["upper", "strip"],
           ["lower", "truncate(3, '…')", "upper"], ["strip", "split", "first"], ["title", "replace('A', 'b')", "strip"],
           ["int"], ["strip", "int"]]
_VALUES = ["  asha RAO ", "Straße ǆemal", "ﬁnance İstanbul", "", " 12 ", "\t\n", "x" * 1030, 5, None, ["a"]]


@pytest.mark.parametrize("chain", _CHAINS, ids="|".join)
def test_a_transform_chain_of_str_methods_gives_what_its_filters_give(chain: list[str]) -> None:
    """A chain's first steps that are str methods (strip, lower, upper, title) run on a small str as those methods
    (modifiers.str_methods): every value gives what the filters give one after another, or the same error, whether
    small, large (looked at the clock after each step) or no str at all."""
    field = compile_field("f", {"from": "payload.v", "transform": chain})
    for value in _VALUES:
        expected: Any = value
        try:
            for text in chain:
                expected = transform(text, expected)
        except (TypeError, ValueError):
            with pytest.raises(RenderError, match="failed on"):
                field.render({"payload": {"v": value}})
            continue
        got = field.render({"payload": {"v": value}})
        assert got == expected and type(got) is type(expected)


def test_only_a_chains_leading_str_methods_are_called_as_methods() -> None:
    """From the first step that is no str method without arguments on, the value may be anything: those steps stay
    the filters, which pass what is not a str through."""
    from bridge.mapping.modifiers import str_methods

    steps = [(name, compile_transform(name)) for name in ("strip", "lower", "truncate(3)", "int", "upper")]
    assert [fn for _, fn in str_methods(steps)][:2] == [str.strip, str.lower]
    assert [fn for _, fn in str_methods(steps)][2:] == [fn for _, fn in steps[2:]]
    assert [label for label, _ in str_methods(steps)] == [label for label, _ in steps]
