"""The field language beyond paths and templates: jmespath, nested objects and lists, map defaults, and
the static checks that refuse fields which could never be filled."""

from __future__ import annotations

from typing import Any

import jmespath
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.mapping import sources
from bridge.mapping.compiler import OMIT, CompileError, RenderError, compile_field, compile_when


def ctx(payload: dict[str, Any] | None = None, **vars_: Any) -> dict[str, Any]:
    return {"payload": payload or {}, "headers": {}, "event": {"id": "evt_1"}, "vars": vars_}


def render(raw: Any, payload: dict[str, Any] | None = None, name: str = "f") -> Any:
    return compile_field(name, raw)(ctx(payload))


ORDER = {"items": [{"name": "router", "qty": 1}, {"name": "cable", "qty": 0}, {"name": "ONT", "qty": 2}]}


# -- jmespath -------------------------------------------------------------------------------------


def test_jmespath_projects_and_filters() -> None:
    """`jmespath` evaluates a JMESPath expression over the context, for projections and filters."""
    assert render({"jmespath": "payload.items[?qty > `0`].name"}, ORDER) == ["router", "ONT"]
    assert render({"jmespath": "length(payload.items)"}, ORDER) == 3
    assert render({"jmespath": "payload.items[?qty > `0`].name", "transform": ["join(', ')"]}, ORDER) == \
        "router, ONT"


def test_jmespath_null_counts_as_missing() -> None:
    """JMESPath cannot tell absent from null, so a null result takes the missing-value rules."""
    assert render({"jmespath": "payload.nothing", "default": "d"}, {}) == "d"
    with pytest.raises(RenderError, match=r"^f: required \(jmespath 'payload.nothing' found nothing\)$"):
        render({"jmespath": "payload.nothing", "required": True}, {})


_FIELDS = st.sampled_from(["payload", "a", "b", "phone"])
_LITERALS = st.sampled_from(["`null`", "`\"\"`", "`0`", "`false`", "`[]`", "`{}`", "'x'", "`[1]`"])
_PLAIN = st.recursive(
    st.one_of(st.lists(_FIELDS, min_size=1, max_size=3).map(".".join), _LITERALS),
    lambda inner: st.tuples(inner, inner).map(" || ".join), max_leaves=4)
_VALUES = st.recursive(st.sampled_from([None, "", "0", 0, False, True, [], {}, [1], "x"]),
                       lambda inner: st.dictionaries(_FIELDS, inner, max_size=3), max_leaves=8)


@settings(max_examples=500, deadline=None)
@given(_PLAIN, st.dictionaries(_FIELDS, _VALUES, max_size=3))
def test_a_jmespath_of_fields_literals_and_ors_gives_what_the_interpreter_gives(
        text: str, payload: dict[str, Any]) -> None:
    """Fields, literals and `||` are looked up in Python rather than interpreted: the same value (or missing) as
    JMESPath's own interpreter gives, for any nesting and for every value JMESPath reads as false (0 is true)."""
    parsed = jmespath.compile(text).parsed
    assert sources._plain(parsed) is not None
    expected = sources._Interpreter().visit(parsed, ctx(payload))
    got = render({"jmespath": text, "default": "(missing)"}, payload)
    assert got == ("(missing)" if expected is None else expected)


def test_a_jmespath_of_fields_and_an_or_is_not_interpreted(monkeypatch: pytest.MonkeyPatch) -> None:
    r"""A blank value read as missing (`payload.phone || \`null\``, the shipped contact mapping's phone, on every
    form post) takes no interpreter; any other expression still does."""
    def refused() -> None:
        raise AssertionError("interpreted")

    monkeypatch.setattr(sources, "_Interpreter", refused)
    assert render({"jmespath": "payload.phone || `null`", "default": "none"}, {"phone": ""}) == "none"
    assert render({"jmespath": "payload.phone || `null`"}, {"phone": "+91 98765 43210"}) == "+91 98765 43210"
    with pytest.raises(AssertionError, match="interpreted"):
        render({"jmespath": "length(payload.items)"}, ORDER)


def test_jmespath_syntax_error_is_a_compile_error_at_the_key() -> None:
    """A JMESPath expression that does not parse is refused at compile time, pointing at `jmespath`."""
    with pytest.raises(CompileError, match=r"^bad jmespath expression 'payload.items\[\?' at character 16: "
                                           r"the expression ends too early$") as info:
        compile_field("f", {"jmespath": "payload.items[?"})
    assert info.value.subpath == ("jmespath",)


def test_jmespath_type_error_is_a_render_error() -> None:
    """A JMESPath function given the wrong type fails the render, as the engine's own error."""
    with pytest.raises(RenderError, match=r"^f: jmespath 'length\(payload.n\)' failed: "):
        render({"jmespath": "length(payload.n)"}, {"n": 5})


# -- lists and objects ----------------------------------------------------------------------------


def test_list_items_are_fields() -> None:
    """Each item of a list is a field of its own: templates render, paths read, omitted items drop out."""
    raw = ["web", "{{ payload.channel }}", {"from": "payload.tag", "on_missing": "omit"}, 3]
    assert render(raw, {"channel": "form", "tag": "vip"}) == ["web", "form", "vip", 3]
    assert render(raw, {"channel": "form"}) == ["web", "form", 3]


def test_object_builds_a_nested_table_of_fields() -> None:
    """`object` renders a nested table whose members are fields, nested objects and lists included."""
    raw = {"object": {
        "name": {"from": "payload.name", "transform": ["strip"]},
        "email": {"from": "payload.email", "on_missing": "omit"},
        "address": {"object": {"city": "{{ payload.city }}", "country": "IN"}},
        "tags": ["web"],
    }}
    assert render(raw, {"name": " Asha ", "city": "Pune"}) == {
        "name": "Asha", "address": {"city": "Pune", "country": "IN"}, "tags": ["web"],
    }


def test_errors_inside_objects_name_the_member() -> None:
    """A member that fails names itself under its parent: `customer.email`, `tags[1]`."""
    with pytest.raises(RenderError, match=r"^customer\.email: required \(payload\.email is missing\)$"):
        render({"object": {"email": {"from": "payload.email", "required": True}}}, {}, name="customer")
    with pytest.raises(RenderError, match=r"^tags\[1\]: template: payload\.t is missing$"):
        render(["a", "{{ payload.t }}"], {}, name="tags")


def test_object_members_errors_point_into_the_object() -> None:
    """Compile errors of members carry their sub-path inside the object, each one reported."""
    with pytest.raises(CompileError) as info:
        compile_field("f", {"object": {"a": {"from": "payload..x"}, "b": {"form": "payload.y"}}})
    assert [e.subpath for e in info.value.errors] == [("object", "a", "from"), ("object", "b", "form"),
                                                      ("object", "b")]


def test_object_refuses_modifiers() -> None:
    """Modifiers belong on an object's members, not on the object."""
    with pytest.raises(CompileError, match="`object` builds a nested table: put required, transform on its members"):
        compile_field("f", {"object": {"a": "x"}, "required": True, "transform": ["strip"]})


def test_constant_objects_and_lists_are_fresh_copies() -> None:
    """A constant nested value is a new copy each render, so no render can change the next one's."""
    fn = compile_field("f", {"object": {"a": [1, 2], "b": {"value": {"c": 1}}}})
    first = fn(ctx())
    first["a"].append(3)
    first["b"]["c"] = 2
    assert fn(ctx()) == {"a": [1, 2], "b": {"c": 1}}


def test_default_lists_are_fresh_copies() -> None:
    """A list given as a default is copied per render as well."""
    fn = compile_field("f", {"from": "payload.x", "default": []})
    fn(ctx()).append(1)
    assert fn(ctx()) == []


# -- map defaults ---------------------------------------------------------------------------------


def test_map_default_is_the_maps_own_fallback() -> None:
    """`map_default` stands in for values not in the map; `default` stays the value for a missing key."""
    raw = {"from": "payload.p", "map": {"high": "High"}, "map_default": "Other", "default": "Unknown"}
    assert render(raw, {"p": "HIGH"}) == "High"
    assert render(raw, {"p": "weird"}) == "Other"
    assert render(raw, {}) == "Unknown"


def test_map_default_without_map_is_a_compile_error() -> None:
    """`map_default` without a `map` is refused, pointing at it."""
    with pytest.raises(CompileError, match="map_default is the value for entries not in `map`") as info:
        compile_field("f", {"from": "payload.p", "map_default": "x"})
    assert info.value.subpath == ("map_default",)


# -- fields that can never be filled --------------------------------------------------------------


@pytest.mark.parametrize("value", [None, ""])
def test_required_constant_that_is_empty_is_refused(value: Any) -> None:
    """A required field whose `value` is always null or empty can never be filled: a compile error."""
    with pytest.raises(CompileError, match="required, but its `value` is always empty: it can never be filled"):
        compile_field("f", {"value": value, "required": True})


def test_required_field_from_an_unset_var_is_refused() -> None:
    """A required field read from a var the config does not set can never be filled."""
    with pytest.raises(CompileError, match=r"required, but vars\.team is not set in the config, so it can never "
                                           r"be filled \(the config's vars: brand\)") as info:
        compile_field("f", {"from": "vars.team", "required": True}, {"brand": "Acme"})
    assert info.value.subpath == ("from",)
    assert compile_field("f", {"from": "vars.brand", "required": True}, {"brand": "Acme"})(ctx(brand="Acme")) == \
        "Acme"


def test_required_map_of_empty_entries_is_refused() -> None:
    """A required field whose map only gives empty values, with no default, can never be filled."""
    with pytest.raises(CompileError, match="every entry of its map is empty"):
        compile_field("f", {"from": "payload.p", "required": True, "map": {"a": None, "b": ""}})


def test_template_with_an_unset_var_is_refused_unless_guarded() -> None:
    """A template reading an unset var always fails, so it is refused; a default or `is defined` guards it."""
    with pytest.raises(CompileError, match=r"vars\.team is not set in the config, so the template would always fail"):
        compile_field("f", "Team {{ vars.team }}", {"brand": "Acme"})
    for ok in ["{{ vars.team | default('none') }}", "{% if vars.team is defined %}{{ vars.team }}{% endif %}",
               "{{ vars['brand'] }}"]:
        compile_field("f", ok, {"brand": "Acme"})
    compile_field("f", {"template": "{{ vars.team }}", "default": "x"}, {"brand": "Acme"})


def test_when_with_an_unset_var_is_refused() -> None:
    """A `when` that reads an unset var can never be decided, so it is refused at compile time."""
    with pytest.raises(CompileError, match=r"vars\.region is not set in the config"):
        compile_when("vars.region == 'south'", {"brand": "Acme"})
    assert compile_when("vars.brand == 'Acme'", {"brand": "Acme"})(ctx(brand="Acme")) is True


@pytest.mark.parametrize("text", ["{{ paylod.x }}", "{{ payload.x ~ evnt.id }}"])
def test_unknown_root_names_are_compile_errors(text: str) -> None:
    """A misspelt root (`paylod`) could never be defined, so it is refused when the mapping compiles."""
    with pytest.raises(CompileError, match=r"unknown name '(paylod|evnt)'"):
        compile_field("f", text)


def test_loop_and_set_names_are_not_unknown() -> None:
    """Names a template defines itself (loop variables, set, loop) are not taken for unknown roots."""
    text = "{% set sep = ', ' %}{% for t in payload.tags %}{{ loop.index }}:{{ t }}{{ sep }}{% endfor %}"
    assert render(text, {"tags": ["a", "b"]}) == "1:a, 2:b, "


def test_every_problem_of_a_field_is_collected() -> None:
    """A field with several problems reports each of them, not only the first."""
    with pytest.raises(CompileError) as info:
        compile_field("f", {"from": "payload.x", "requried": True, "colour": 1, "transform": ["nope", "strip", "x("]})
    assert [(str(e).split(":")[0], e.subpath) for e in info.value.errors] == [
        ("unknown key 'requried' (did you mean 'required'?)", ("requried",)),
        ("unknown key 'colour'", ("colour",)),
        ("unknown filter 'nope'; known filters", ("transform", 0)),
        ("bad transform 'x('", ("transform", 2)),
    ]


def test_omit_in_a_nested_list_drops_the_item() -> None:
    """An omitted list item is dropped, not rendered as a marker."""
    assert OMIT not in render([{"from": "payload.x", "on_missing": "omit"}], {})
