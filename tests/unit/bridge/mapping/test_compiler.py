"""Mapping fields compiled to functions of the render context: constants, templates, paths and modifiers."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bridge.errors import MappingError
from bridge.mapping.compiler import (
    MAX_RENDERED_CHARS,
    OMIT,
    CompiledMapping,
    CompileError,
    RenderError,
    compile_field,
    compile_transform,
    compile_when,
)
from bridge.mapping.model import MappingSpec


def ctx(payload: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A render context shaped like the one the bridge builds from an event."""
    base: dict[str, Any] = {
        "payload": {} if payload is None else payload,
        "headers": {"user-agent": "curl/8"},
        "event": {"id": "evt_1", "source": "website-contact", "channel": "form"},
        "vars": {"brand": "Acme"},
    }
    base.update(extra)
    return base


def render(raw: Any, payload: dict[str, Any] | None = None, name: str = "f", **extra: Any) -> Any:
    return compile_field(name, raw)(ctx(payload, **extra))


def compiled(fields: dict[str, Any], when: str | None = None) -> CompiledMapping:
    spec = MappingSpec(source="s", destination="d", action="create_ticket", fields=fields, when=when)
    return CompiledMapping(
        name="m", file="m.yaml", version="v1", sources=("s",), destination="d", action="create_ticket",
        options={}, spec=spec, fields=[compile_field(n, raw) for n, raw in fields.items()],
        when=compile_when(when) if when is not None else None, when_text=when,
    )


# -- constants ----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["Web", "", "braces } and { alone", "50% off", None, True, False, 0, 7, 2.5])
def test_scalars_without_template_markers_are_constants(raw: Any) -> None:
    """Strings without `{{`/`{%`, numbers, booleans and null render as themselves."""
    assert render(raw, {"x": 1}) == raw


def test_constant_list_is_a_fresh_copy_each_render() -> None:
    """A list constant is returned as a new copy, so a caller's change cannot leak into the next render."""
    fn = compile_field("tags", ["web", {"value": {"k": "v"}}])
    first = fn(ctx())
    first.append("changed")
    first[1]["k"] = "changed"
    assert fn(ctx()) == ["web", {"k": "v"}]


@pytest.mark.parametrize(
    ("raw", "payload"),
    [
        ({"from": "payload.p", "map": {"a": ["x", {"k": "v"}]}}, {"p": "a"}),
        ({"from": "payload.p", "map": {"a": ["x", {"k": "v"}]}}, {"p": "A"}),
        ({"from": "payload.p", "map": {"b": 1}, "map_default": ["x", {"k": "v"}]}, {"p": "a"}),
        ({"from": "payload.p", "default": ["x", {"k": "v"}]}, {}),
    ],
)
def test_list_map_entries_and_defaults_are_fresh_copies_each_render(raw: dict[str, Any],
                                                                    payload: dict[str, Any]) -> None:
    """A map entry, map_default or default that is a list is a new copy each render, so changes do not leak."""
    fn = compile_field("f", raw)
    first = fn(ctx(payload))
    first.append("changed")
    first[1]["k"] = "changed"
    assert fn(ctx(payload)) == ["x", {"k": "v"}]


@pytest.mark.parametrize("value", [None, "x", 3, {"nested": [1, 2]}, [1]])
def test_value_key_is_a_constant(value: Any) -> None:
    """`{value: …}` is a constant of any type, null included."""
    assert render({"value": value}, {"x": "ignored"}) == value


@pytest.mark.parametrize("modifier", [{"transform": ["strip"]}, {"map": {"a": "b"}}])
def test_value_refuses_transform_and_map(modifier: dict[str, Any]) -> None:
    """`value` is a constant, so transform and map on it are compile errors."""
    with pytest.raises(CompileError, match="`value` is a constant"):
        compile_field("f", {"value": " a ", **modifier})


def test_value_with_default_is_still_the_value() -> None:
    """A constant is never missing, so its default is never used."""
    assert render({"value": None, "default": "d"}) is None


# -- templates ----------------------------------------------------------------------------------


def test_template_renders_from_the_context() -> None:
    """A string with `{{` is a Jinja template over payload, headers, event and vars."""
    raw = "{{ vars.brand }} {{ event.channel }} enquiry from {{ payload.name }} via {{ headers['user-agent'] }}"
    assert render(raw, {"name": "Asha"}) == "Acme form enquiry from Asha via curl/8"


def test_statement_tags_make_a_template() -> None:
    """A string with `{%` is a template too."""
    assert render("{% if payload.vip %}VIP{% else %}normal{% endif %}", {"vip": True}) == "VIP"


def test_templates_see_ticket_for_follow_ups() -> None:
    """Templates see `ticket` when the context carries it."""
    assert render("#{{ ticket.id }}", ticket={"id": "T-1"}) == "#T-1"


def test_template_output_is_not_html_escaped() -> None:
    """Templates do not autoescape: vendor bodies are JSON, not HTML."""
    assert render("{{ payload.msg }}", {"msg": "<b>&</b>"}) == "<b>&</b>"


def test_template_renders_the_registry_filters() -> None:
    """Templates use the same filter registry as `transform:`, with its semantics."""
    assert render("{{ payload.s | truncate(5) }}", {"s": "abcdefgh"}) == "abcde"
    assert render("{{ payload.tags | join('|') }}", {"tags": ["a", "b"]}) == "a|b"
    assert render("{{ payload.s | strip | upper }}", {"s": "  hi "}) == "HI"


def test_template_table_form_renders_like_a_string() -> None:
    """`{template: …}` renders the same as a bare template string."""
    assert render({"template": "Re: {{ payload.subject }}"}, {"subject": "Router"}) == "Re: Router"


def test_undefined_in_a_template_is_a_render_error() -> None:
    """An undefined path in a plain-path template fails the render, naming the field and the missing path."""
    with pytest.raises(RenderError, match=r"^title: template: payload.subject is missing$"):
        render("Re: {{ payload.subject }}", {}, name="title")


def test_undefined_in_a_jinja_template_is_a_render_error() -> None:
    """StrictUndefined: an undefined name in a template that needs Jinja fails the render with Jinja's reason."""
    with pytest.raises(RenderError, match=r"^title: template: 'dict object' has no attribute 'subject'$"):
        render("Re: {{ payload.subject | length }}", {}, name="title")


@pytest.mark.parametrize("text", ["{{ payload.a }}", "x {{ payload.b[1] }} y {{ payload.c.d }}", "{{ payload.n }}",
                                  "{{ payload.none }}/{{ payload.flag }}", "{{ payload.items }}"])
def test_plain_path_templates_render_as_jinja_would(text: str) -> None:
    """The direct look-up of a plain-path template gives exactly what Jinja renders."""
    from bridge.mapping.templates import ENV

    payload = {"a": "A", "b": [1, 2.5], "c": {"d": "D"}, "n": 7, "none": None, "flag": True, "items": "key"}
    assert render(text, payload) == ENV.from_string(text).render(payload=payload)


def test_unknown_top_level_name_is_a_compile_error() -> None:
    """A name that is not one of the context's roots is refused when the mapping compiles, listing the roots."""
    with pytest.raises(CompileError, match=r"unknown name 'environ' in the template: it sees event, headers, "
                                           r"payload, ticket, vars and range\(\)"):
        compile_field("f", "{{ environ }}")


@pytest.mark.parametrize("name", ["lipsum", "cycler", "joiner", "namespace", "dict", "config", "self_", "os"])
def test_templates_see_no_default_globals(name: str) -> None:
    """Jinja's default globals are removed: templates see only the context (and a bounded range)."""
    with pytest.raises(CompileError, match=f"unknown name '{name}'"):
        compile_field("f", "{{ %s }}" % name)  # noqa: UP031 - building Jinja text, whose braces clash with format()


def test_default_filter_handles_undefined() -> None:
    """Jinja's `default` filter can supply a value for an undefined name."""
    assert render("{{ payload.subject | default('(no subject)') }}", {}) == "(no subject)"


@pytest.mark.parametrize(
    "template",
    [
        "{{ payload.__class__ }}",
        "{{ payload.__class__.__mro__ }}",
        "{{ payload.s.__class__ }}",
        "{{ payload.update({}) }}",
        "{{ payload.pop('s') }}",
        "{{ payload.setdefault('x', 1) }}",
        "{{ payload.tags.append(1) }}",
        "{{ payload.tags.clear() }}",
        "{{ payload.tags.sort() }}",
        "{{ payload.get.__self__ }}",
        "{{ payload.s.__len__() }}",
    ],
)
def test_sandbox_refuses_unsafe_attributes_and_mutation(template: str) -> None:
    """Dunder attributes and mutating calls are refused with a RenderError, and nothing is changed."""
    payload = {"s": "x", "tags": ["a"]}
    with pytest.raises(RenderError, match=r"^f: template failed: access to attribute '\w+' of '\w+' object is unsafe"):
        render(template, payload)
    assert payload == {"s": "x", "tags": ["a"]}


@pytest.mark.parametrize(
    "template",
    [
        "{{ 1 / 0 }}",
        "{{ payload.s + 1 }}",
        "{{ range(100000) | list }}",
        "{{ '{}'.format() }}",
        "{{ '{a}'.format() }}",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    ],
)
def test_any_failure_inside_a_template_is_a_render_error(template: str) -> None:
    """Whatever goes wrong while a template runs surfaces as a RenderError naming the field, never another exception."""
    with pytest.raises(RenderError, match=r"^f: (template failed: |range of 100000 items is over the limit"
                                          r"|template nests or recurses too deeply)"):
        render(template, {"s": "x"})


def test_range_is_available_but_bounded() -> None:
    """`range` works for small loops and refuses huge ones."""
    assert render("{% for i in range(3) %}{{ i }}{% endfor %}") == "012"
    with pytest.raises(RenderError, match="over the limit"):
        render("{{ range(10001) | length }}")


def test_template_output_size_is_bounded() -> None:
    """A template whose output exceeds the limit fails instead of building a huge body."""
    assert len(render("{{ 'x' * %d }}" % MAX_RENDERED_CHARS)) == MAX_RENDERED_CHARS  # noqa: UP031
    with pytest.raises(RenderError, match=f"over the limit of {MAX_RENDERED_CHARS}"):
        render("{{ 'x' * %d }}" % (MAX_RENDERED_CHARS + 1))  # noqa: UP031
    with pytest.raises(RenderError, match=f"template output is over {MAX_RENDERED_CHARS} characters"):
        render("{% for i in range(2000) %}{{ payload.s }}{% endfor %}", {"s": "x" * 1000})


def test_template_syntax_error_is_a_compile_error() -> None:
    """A template that does not parse is refused when the mapping compiles, with the template's line."""
    with pytest.raises(CompileError, match=r"template syntax error at template line 2: ") as info:
        compile_field("f", "ok\n{{ payload.x ")
    assert info.value.subpath == ()


def test_template_table_syntax_error_points_at_the_template_key() -> None:
    """In the table form, the compile error points at the `template` key."""
    with pytest.raises(CompileError, match="template syntax error") as info:
        compile_field("f", {"template": "{% if %}"})
    assert info.value.subpath == ("template",)


def test_template_with_default_uses_it_when_undefined() -> None:
    """A template with `default` renders the default when it uses an undefined name."""
    assert render({"template": "{{ payload.x }}", "default": "d"}) == "d"


def test_required_template_names_the_undefined_part() -> None:
    """A required template that hits an undefined name fails with `required` and the Jinja reason."""
    with pytest.raises(RenderError, match=r"^f: required \(template: payload.x is missing\)$"):
        render({"template": "{{ payload.x }}", "required": True})


def test_template_with_transform() -> None:
    """A template's output goes through its transforms."""
    assert render({"template": "  {{ payload.s }}  ", "transform": ["strip", "upper"]}, {"s": "hi"}) == "HI"


def test_sandbox_failure_is_a_render_error_even_with_a_default() -> None:
    """A refused attribute access is an error, not a missing value to be defaulted."""
    with pytest.raises(RenderError, match="unsafe"):
        render({"template": "{{ payload.__class__ }}", "default": "d"})


# -- from ---------------------------------------------------------------------------------------


def test_from_reads_a_path() -> None:
    """`from` reads the value at a path, keeping its type."""
    assert render({"from": "payload.items[0].qty"}, {"items": [{"qty": 3}]}) == 3
    assert render({"from": "payload.items"}, {"items": [1, 2]}) == [1, 2]


def test_from_missing_without_modifiers_is_null() -> None:
    """A missing optional value renders as null."""
    assert render({"from": "payload.x"}, {}) is None


def test_required_missing_names_the_field_and_path() -> None:
    """A required field whose path is missing fails with `<field>: required (<path> is missing)`."""
    with pytest.raises(RenderError) as info:
        render({"from": "payload.email", "required": True}, {"subject": "x"}, name="email_id")
    assert str(info.value) == "email_id: required (payload.email is missing)"
    assert info.value.path == "email_id"


def test_required_missing_names_the_first_absent_part() -> None:
    """When an intermediate table is absent, the error names that table rather than the full path."""
    with pytest.raises(RenderError) as info:
        render({"from": "payload.customer.email", "required": True}, {}, name="email_id")
    assert str(info.value) == "email_id: required (payload.customer is missing)"


def test_render_error_is_a_mapping_error() -> None:
    """RenderError is a MappingError (and so a ValueError), so callers can catch either."""
    assert issubclass(RenderError, MappingError)
    assert issubclass(RenderError, ValueError)


def test_default_applies_when_missing() -> None:
    """`default` is used when the path is missing."""
    assert render({"from": "payload.message", "default": ""}, {}) == ""
    assert render({"from": "payload.message", "default": None}, {}) is None


def test_null_is_not_missing() -> None:
    """A key present with null is a value: the default does not replace it."""
    assert render({"from": "payload.message", "default": "d"}, {"message": None}) is None


@pytest.mark.parametrize("value", ["", 0, False, []])
def test_falsy_values_are_not_missing(value: Any) -> None:
    """Empty strings, zero, false and empty lists are values, not missing."""
    assert render({"from": "payload.v", "default": "d"}, {"v": value}) == value


def test_on_missing_omit_leaves_the_field_out() -> None:
    """`on_missing: omit` returns OMIT, and the rendered body has no such key."""
    raw = {"from": "payload.phone", "on_missing": "omit"}
    assert render(raw, {}) is OMIT
    mapping = compiled({"title": "t", "phone": raw})
    assert mapping.render(ctx({})) == {"title": "t"}
    assert mapping.render(ctx({"phone": "+1"})) == {"title": "t", "phone": "+1"}


def test_on_missing_omit_keeps_a_null() -> None:
    """`on_missing: omit` omits only missing keys; a null is sent as null."""
    assert compiled({"p": {"from": "payload.p", "on_missing": "omit"}}).render(ctx({"p": None})) == {"p": None}


def test_on_missing_null_overrides_required() -> None:
    """An explicit `on_missing: null` renders null even for a required field."""
    assert render({"from": "payload.x", "required": True, "on_missing": "null"}, {}) is None


def test_on_missing_null_overrides_default() -> None:
    """An explicit `on_missing: null` renders null even when a default is given."""
    assert render({"from": "payload.x", "default": "d", "on_missing": "null"}, {}) is None


def test_on_missing_error_fails_without_required() -> None:
    """`on_missing: error` fails on a missing value, worded as missing rather than required."""
    with pytest.raises(RenderError) as info:
        render({"from": "payload.x", "on_missing": "error"}, {})
    assert str(info.value) == "f: missing (payload.x is missing)"


def test_on_missing_default_uses_the_default() -> None:
    """`on_missing: default` uses the default."""
    assert render({"from": "payload.x", "on_missing": "default", "default": 5}, {}) == 5


def test_on_missing_default_without_default_is_a_compile_error() -> None:
    """`on_missing: default` without `default:` is refused at compile time."""
    with pytest.raises(CompileError, match="on_missing: default needs a `default:` value"):
        compile_field("f", {"from": "payload.x", "on_missing": "default"})


def test_default_wins_over_required_when_missing() -> None:
    """A required field with a default renders the default when missing."""
    assert render({"from": "payload.x", "required": True, "default": "d"}, {}) == "d"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [({"x": None}, "is null"), ({"x": ""}, "is empty"), ({"x": "   "}, "is empty")],
)
def test_required_refuses_null_and_empty_after_transforms(payload: dict[str, Any], reason: str) -> None:
    """A required field that is null, or empty after its transforms, fails naming why."""
    with pytest.raises(RenderError) as info:
        render({"from": "payload.x", "required": True, "transform": ["strip"]}, payload)
    assert str(info.value) == f"f: required ({reason} after transforms)"


def test_from_with_a_bad_path_is_a_compile_error() -> None:
    """A `from` path that does not parse is a compile error pointing at `from`."""
    with pytest.raises(CompileError, match="bad path") as info:
        compile_field("f", {"from": "payload..x"})
    assert info.value.subpath == ("from",)


def test_from_outside_the_roots_is_a_compile_error() -> None:
    """A `from` path outside the five roots is refused."""
    with pytest.raises(CompileError, match="must start with one of"):
        compile_field("f", {"from": "environ.HOME"})


def test_rendering_does_not_change_the_payload() -> None:
    """Rendering is a pure function of the context: the payload is left as it was."""
    payload = {"email": " A@B.io ", "tags": ["x"]}
    mapping = compiled({"email": {"from": "payload.email", "transform": ["strip", "lower"]},
                        "tags": {"from": "payload.tags", "transform": ["join"]}})
    assert mapping.render(ctx(payload)) == {"email": "a@b.io", "tags": "x"}
    assert payload == {"email": " A@B.io ", "tags": ["x"]}


# -- transform ----------------------------------------------------------------------------------


def test_transforms_run_in_order() -> None:
    """Transforms apply left to right."""
    assert render({"from": "payload.e", "transform": ["strip", "lower"]}, {"e": " Asha@Example.COM "}) == \
        "asha@example.com"
    assert render({"from": "payload.e", "transform": ["upper", "truncate(3)"]}, {"e": "abcdef"}) == "ABC"


@pytest.mark.parametrize(
    ("text", "value", "expected"),
    [
        ("truncate(5)", "abcdefgh", "abcde"),
        ("truncate( 5 )", "abcdefgh", "abcde"),
        ("truncate(5, '…')", "abcdefgh", "abcd…"),
        ("truncate", "x" * 300, "x" * 255),
        ("truncate()", "abc", "abc"),
        ('join(", ")', ["a", None, 3], "a, , 3"),
        ("join('|')", ["a", "b"], "a|b"),
        ("strip('-')", "--a--", "a"),
        ("first", ["a", "b"], "a"),
        ("title", "router down", "Router Down"),
    ],
)
def test_transform_parsing(text: str, value: Any, expected: Any) -> None:
    """A transform is a filter name with optional literal arguments."""
    assert compile_transform(text)(value) == expected


@pytest.mark.parametrize("text", ["truncate(5", "truncate 5", "5", "", "trun-cate", "truncate(5))x"])
def test_malformed_transform_is_a_compile_error(text: str) -> None:
    """A transform that is not `name` or `name(args)` is refused with an example."""
    with pytest.raises(CompileError, match=r"bad transform .*truncate\(100\)"):
        compile_transform(text)


@pytest.mark.parametrize("text", ["truncate(n)", "join(sep=',')", "truncate(__import__('os'))", "truncate(5,,)"])
def test_non_literal_transform_arguments_are_compile_errors(text: str) -> None:
    """Transform arguments must be literals; names, keywords and calls are refused."""
    with pytest.raises(CompileError, match="arguments must be literals"):
        compile_transform(text)


def test_unknown_filter_is_a_compile_error_listing_the_known_ones() -> None:
    """An unknown filter name is refused, listing the filters that exist."""
    with pytest.raises(CompileError, match=r"unknown filter 'slugify'; known filters: .*strip.*truncate"):
        compile_transform("slugify")


def test_a_misspelt_filter_is_answered_with_the_nearest_one() -> None:
    """A filter name one typo away from a known one gets "did you mean", in transforms and templates alike."""
    with pytest.raises(CompileError, match=re.escape("unknown filter 'uppper' (did you mean 'upper'?); known")):
        compile_transform("uppper")
    with pytest.raises(CompileError, match=re.escape("unknown filter 'lowr' in the template (did you mean 'lower'?)")):
        compile_field("f", "{{ payload.x | lowr }}")


def test_unknown_filter_in_a_field_is_a_compile_error() -> None:
    """A field's transform list is checked when the field compiles, not when it renders."""
    with pytest.raises(CompileError, match="unknown filter 'nope'"):
        compile_field("f", {"from": "payload.x", "transform": ["strip", "nope"]})


@pytest.mark.parametrize("text", ["lower(1)", "truncate(1, '', 3)", "strip(1, 2)"])
def test_transform_arguments_the_filter_does_not_take_are_compile_errors(text: str) -> None:
    """A filter given more arguments than it takes is refused when the mapping compiles."""
    with pytest.raises(CompileError, match="arguments"):
        compile_transform(text)


def test_transform_failure_is_a_render_error() -> None:
    """A transform that raises on the value fails the render, naming the field and value."""
    with pytest.raises(RenderError, match=r"^f: transform int failed on 'abcdef': "):
        render({"from": "payload.s", "transform": ["int"]}, {"s": "abcdef"})


def test_transforms_pass_other_types_through() -> None:
    """String filters leave non-strings untouched."""
    assert render({"from": "payload.n", "transform": ["strip", "lower", "truncate(1)"]}, {"n": 12345}) == 12345


# -- map ----------------------------------------------------------------------------------------

PRIORITY = {"from": "payload.priority", "map": {"high": "High", "low": "Low"}, "default": "Medium"}


@pytest.mark.parametrize(
    ("priority", "expected"),
    [("high", "High"), ("low", "Low"), ("HIGH", "High"), ("Low", "Low"), ("urgent", "Medium")],
)
def test_map_looks_up_case_insensitively_with_default(priority: str, expected: str) -> None:
    """`map` translates values, falls back to a case-insensitive match, then to the default."""
    assert render(PRIORITY, {"priority": priority}) == expected


def test_map_default_applies_when_missing() -> None:
    """A mapped field's default is also used when the path is missing."""
    assert render(PRIORITY, {}) == "Medium"


def test_map_exact_match_wins_over_case_folded() -> None:
    """An exact key is preferred over a key that only matches case-insensitively."""
    raw = {"from": "payload.v", "map": {"a": 1, "A": 2}}
    assert render(raw, {"v": "a"}) == 1
    assert render(raw, {"v": "A"}) == 2


def test_map_without_default_fails_on_unknown_value() -> None:
    """A value not in the map, with no default, fails naming the value and the known keys."""
    with pytest.raises(RenderError) as info:
        render({"from": "payload.v", "map": {"a": 1, "b": 2}}, {"v": "c"})
    assert str(info.value) == "f: 'c' is not in the map (known: a, b) and the field has no default"


def test_map_keys_match_non_string_values_by_text() -> None:
    """Numbers and booleans are looked up by their text."""
    raw = {"from": "payload.v", "map": {"1": "one", "true": "yes"}}
    assert render(raw, {"v": 1}) == "one"
    assert render(raw, {"v": True}) == "yes"


class Folding(str):
    """A string that counts its case folds."""

    folds = 0

    def casefold(self) -> str:
        Folding.folds += 1
        return super().casefold()


class Written(list[Any]):
    """A list that counts how often it is written as text."""

    times = 0

    def __str__(self) -> str:
        Written.times += 1
        return super().__str__()


def test_map_looks_up_no_value_longer_than_its_keys() -> None:
    """A value longer than every key of the map (as text, or folded: folding never shortens a text) matches none,
    and is neither folded nor written as text: a payload's megabyte of non-ASCII text took 30 ms to fold, and a
    large list longer to write, before the map's default stood in."""
    raw = {"from": "payload.v", "map": {"high": "P2", "STRASSE": "S"}, "default": "P3"}
    assert [render(raw, {"v": v}) for v in ("HIGH", "Straße", "strasse", "low")] == ["P2", "S", "S", "P3"]
    assert render(raw, {"v": Folding("HIGH")}) == "P2" and Folding.folds == 1
    assert render(raw, {"v": Folding("é" * 100_000)}) == "P3"
    assert render(raw, {"v": Written(["high"] * 100_000)}) == "P3"
    assert (Folding.folds, Written.times) == (1, 0)


def test_map_runs_after_transforms() -> None:
    """Transforms run before the map look-up."""
    raw = {"from": "payload.v", "map": {"high": "High"}, "transform": ["strip"]}
    assert render(raw, {"v": "  high "}) == "High"


def test_map_may_return_null_without_failing_optional_fields() -> None:
    """A map entry may translate a value to null."""
    assert render({"from": "payload.v", "map": {"none": None}}, {"v": "none"}) is None


# -- the shape of a field -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "has"),
    [
        ({"from": "payload.x", "template": "{{ x }}"}, "from, template"),
        ({"from": "payload.x", "value": 1}, "from, value"),
        ({"template": "t", "value": None}, "template, value"),
        ({"from": "payload.x", "template": "t", "value": 1}, "from, template, value"),
    ],
)
def test_two_sources_are_a_compile_error(raw: dict[str, Any], has: str) -> None:
    """A field table takes exactly one of from, template and value, and says which it got."""
    with pytest.raises(CompileError,
                       match=rf"needs exactly one of `from`, `jmespath`, `template`, `value`, `object` "
                             rf"\(it has {has}\)"):
        compile_field("f", raw)


def test_no_source_is_a_compile_error() -> None:
    """A field table with modifiers only is refused."""
    with pytest.raises(CompileError, match=r"needs exactly one of `from`, `jmespath`, `template`, `value`, `object`$"):
        compile_field("f", {"required": True})


def test_unknown_key_is_a_compile_error_pointing_at_it() -> None:
    """A misspelt key is refused, naming it and the keys that exist, with its sub-path."""
    with pytest.raises(CompileError, match=re.escape(
            "unknown key 'requried' (did you mean 'required'?): a field table takes from, jmespath, template")) \
            as info:
        compile_field("f", {"from": "payload.x", "requried": True})
    assert info.value.subpath == ("requried",)


@pytest.mark.parametrize(
    ("raw", "key", "message"),
    [
        ({"from": "payload.x", "on_missing": "skip"}, "on_missing", "'skip' is not one of: default, error, null, omit"),
        ({"from": "payload.x", "required": "maybe"}, "required", "got 'maybe', expected true or false"),
        ({"from": "payload.x", "transform": "strip"}, "transform", "got 'strip', expected a list or null"),
        ({"from": "payload.x", "map": ["a"]}, "map", "got a list, expected a table of keys or null"),
        ({"from": 5}, "from", "got 5, expected text or null"),
    ],
)
def test_badly_typed_modifiers_are_compile_errors(raw: dict[str, Any], key: str, message: str) -> None:
    """Modifiers of the wrong type or value are refused at compile time, pointing at the key, quoting the value
    and saying what the key takes (not in msgspec's words: `Expected `bool`, got `str``)."""
    with pytest.raises(CompileError) as info:
        compile_field("f", raw)
    assert (str(info.value), info.value.subpath) == (message, (key,))


def test_every_badly_typed_modifier_of_a_field_is_reported() -> None:
    """Each of a field table's badly typed keys is its own error, not only the first."""
    with pytest.raises(CompileError) as info:
        compile_field("f", {"from": "payload.x", "required": "maybe", "map": ["a"], "transform": "strip"})
    assert [(str(e), e.subpath) for e in info.value.errors] == [
        ("got 'maybe', expected true or false", ("required",)),
        ("got a list, expected a table of keys or null", ("map",)),
        ("got 'strip', expected a list or null", ("transform",))]


@pytest.mark.parametrize("raw", [{1, 2}, (1, 2), b"bytes", object()])
def test_other_field_types_are_compile_errors(raw: Any) -> None:
    """A field must be a string, number, boolean, null, list or table."""
    with pytest.raises(CompileError, match="a field must be a string, number, boolean, null, a list or a table"):
        compile_field("f", raw)


def test_compile_error_is_a_value_error() -> None:
    """CompileError is a ValueError whose sub-path defaults to empty."""
    err = CompileError("x")
    assert isinstance(err, ValueError)
    assert err.subpath == ()


# -- compiled mappings and `when` ---------------------------------------------------------------


def test_render_keeps_field_order() -> None:
    """The rendered body keeps the fields in the order the mapping lists them."""
    mapping = compiled({"z": "1", "a": "2", "m": {"from": "payload.x"}})
    assert list(mapping.render(ctx({"x": 3}))) == ["z", "a", "m"]


def test_render_stops_at_the_first_failing_field() -> None:
    """A field that fails makes the whole render fail with that field's error."""
    mapping = compiled({"title": "t", "email_id": {"from": "payload.email", "required": True}})
    with pytest.raises(RenderError, match=r"^email_id: required \(payload.email is missing\)$"):
        mapping.render(ctx({}))


def test_mapping_without_when_matches_everything() -> None:
    """A mapping without `when` takes every event of its sources."""
    assert compiled({"t": "x"}).matches(ctx({})) is True


@pytest.mark.parametrize(
    ("category", "expected"), [("sales", True), ("spam", False)],
)
def test_when_expression_selects_events(category: str, expected: bool) -> None:
    """`when` is a Jinja expression over the context; its truth decides whether the mapping applies."""
    mapping = compiled({"t": "x"}, when="payload.category != 'spam'")
    assert mapping.matches(ctx({"category": category})) is expected


def test_when_can_test_definedness() -> None:
    """`is defined` lets a `when` expression cope with absent keys."""
    mapping = compiled({"t": "x"}, when="payload.category is not defined or payload.category != 'spam'")
    assert mapping.matches(ctx({})) is True
    assert mapping.matches(ctx({"category": "spam"})) is False


@pytest.mark.parametrize("when", ["payload.category != 'spam'", "payload.urgent", "not payload.urgent"])
def test_when_with_an_undefined_name_is_a_render_error(when: str) -> None:
    """An undefined name in `when` fails with a hint to use `is defined`, rather than silently deciding."""
    mapping = compiled({"t": "x"}, when=when)
    expected = r"^m: when: payload\.\w+ is undefined \(test with `is defined`\)$"
    with pytest.raises(RenderError, match=expected):
        mapping.matches(ctx({}))


@pytest.mark.parametrize(
    "when", ["payload.update({})", "payload.__class__", "1 / 0", "'{}'.format()", "range(100000) | list"],
)
def test_when_failures_are_render_errors(when: str) -> None:
    """Whatever fails inside `when` (sandbox refusals included) surfaces as a RenderError."""
    mapping = compiled({"t": "x"}, when=when)
    with pytest.raises(RenderError, match=r"^m: when: "):
        mapping.matches(ctx({"s": "x"}))


def test_when_sees_vars_and_headers() -> None:
    """`when` sees vars and headers as well as the payload."""
    when = compile_when("vars.brand == 'Acme' and headers['user-agent'].startswith('curl')")
    assert when(ctx({})) is True


@pytest.mark.parametrize("text", ["payload.x ==", "payload.x }}", "{{ payload.x }}", "payload.x !=! 1"])
def test_when_syntax_error_is_a_compile_error(text: str) -> None:
    """A `when` that does not parse is refused at compile time."""
    with pytest.raises(CompileError, match="expression syntax error"):
        compile_when(text)


def test_when_with_an_unknown_filter_lists_the_known_filters() -> None:
    """A `when` using a filter that does not exist names it, the nearest known one and the list, as a template
    field would, rather than Jinja's bare syntax error."""
    with pytest.raises(CompileError) as info:
        compile_when("payload.subject | lowr == 'x'")
    message = str(info.value)
    assert "unknown filter 'lowr' in the expression (did you mean 'lower'?); known filters: " in message
    assert "phone_e164" in message and "syntax error" not in message
