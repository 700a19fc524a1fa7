"""Dotted paths: parsing, look-ups that tell a missing key from a null, and the missing part's name."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.mapping.paths import MISSING, ROOTS, Absent, Path, PathSyntaxError, compile_lookup, compile_path

DOC: dict[str, Any] = {
    "payload": {
        "email": "asha@example.com",
        "nothing": None,
        "empty": "",
        "zero": 0,
        "customer": {"name": "Asha", "tags": ["a", "b", "c"]},
        "items": [{"name": "router"}, {"name": "modem"}],
        "odd.key": "dotted",
        "with space": "spaced",
        "first-name": "hyphen",
        "$ref": "dollar",
        "0": "string zero",
        "text": "abc",
    },
    "headers": {"x-request-id": "r-1"},
    "event": {"id": "evt_1"},
    "vars": {"brand": "Acme"},
    "ticket": {"id": "T-9"},
}


def get(text: str, root: Any = DOC) -> Any:
    return compile_path(text).get(root)


def test_dotted_path_reads_nested_keys() -> None:
    """A dotted path walks nested tables key by key."""
    assert get("payload.customer.name") == "Asha"
    assert get("payload.email") == "asha@example.com"


def test_root_alone_returns_the_whole_root() -> None:
    """A path of just a root returns that root's value."""
    assert get("vars") == {"brand": "Acme"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("payload.items[0].name", "router"),
        ("payload.items[1].name", "modem"),
        ("payload.items[-1].name", "modem"),
        ("payload.items[-2].name", "router"),
        ("payload.customer.tags[2]", "c"),
        ("payload.customer.tags[-3]", "a"),
    ],
)
def test_indexes_read_list_items_including_negative(text: str, expected: str) -> None:
    """`[n]` indexes a list, and a negative index counts from its end."""
    assert get(text) == expected


@pytest.mark.parametrize("text", ["payload.items[2]", "payload.items[-3]", "payload.customer.tags[99]"])
def test_index_out_of_range_is_missing(text: str) -> None:
    """An index past either end of a list is MISSING rather than an IndexError."""
    assert get(text) is MISSING


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('payload["odd.key"]', "dotted"),
        ("payload['odd.key']", "dotted"),
        ('payload[ "odd.key" ]', "dotted"),
        ('payload["with space"]', "spaced"),
        ('payload["customer"].name', "Asha"),
        ('payload["items"][0]["name"]', "router"),
        ('payload["0"]', "string zero"),
    ],
)
def test_quoted_keys_hold_dots_and_spaces(text: str, expected: str) -> None:
    """A quoted key in brackets is one key, dots and spaces included."""
    assert get(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("payload.first-name", "hyphen"), ("payload.$ref", "dollar"), ('headers.x-request-id', "r-1")],
)
def test_bare_keys_may_hold_hyphens_and_dollars(text: str, expected: str) -> None:
    """Bare keys may contain hyphens and `$`, as form fields and headers often do."""
    assert get(text) == expected


def test_null_is_not_missing() -> None:
    """A key that holds null returns None, not MISSING."""
    assert get("payload.nothing") is None
    assert get("payload.absent") is MISSING


@pytest.mark.parametrize(("text", "expected"), [("payload.empty", ""), ("payload.zero", 0)])
def test_falsy_values_are_returned_as_they_are(text: str, expected: Any) -> None:
    """Empty strings and zero are values, not MISSING."""
    assert get(text) == expected
    assert get(text) is not MISSING


@pytest.mark.parametrize(
    "text",
    [
        "payload.nothing.deeper",  # through a null
        "payload.email.domain",  # through a string
        "payload.text[0]",  # strings are not indexable lists here
        "payload.zero.x",  # through a number
        "payload.items.name",  # a key on a list
        "payload.customer[0]",  # an index on a table
        "payload[0]",  # an index is not the string key "0"
        "ticket.id.x",
    ],
)
def test_walking_through_a_non_container_is_missing(text: str) -> None:
    """A key on a non-table or an index on a non-list is MISSING, never an exception."""
    assert get(text) is MISSING


def test_missing_root_is_missing() -> None:
    """A root absent from the context is MISSING."""
    assert get("ticket.id", {"payload": {}}) is MISSING


def test_get_reads_any_mapping_and_sequence() -> None:
    """Look-ups work on any Mapping and Sequence, e.g. tuples."""
    assert get("payload.pair[1]", {"payload": {"pair": ("x", "y")}}) == "y"


def test_missing_is_a_falsy_singleton() -> None:
    """MISSING is one falsy object that shows as MISSING."""
    assert not MISSING
    assert repr(MISSING) == "MISSING"
    assert type(MISSING)() is MISSING


@pytest.mark.parametrize(
    ("text", "root", "expected"),
    [
        ("payload.email", {"payload": {}}, "payload.email"),
        ("payload.customer.email", {"payload": {}}, "payload.customer"),
        ("payload.customer.email", {"payload": {"customer": {}}}, "payload.customer.email"),
        ("payload.items[3].name", {"payload": {"items": [{}]}}, "payload.items[3]"),
        ("payload.items[-2].name", {"payload": {"items": [{}]}}, "payload.items[-2]"),
        ("payload.items[0].name", {"payload": {"items": [{}]}}, "payload.items[0].name"),
        ("payload.x", {}, "payload"),
        ('payload["odd.key"].name', {"payload": {}}, 'payload["odd.key"]'),
        ('payload["odd.key"].name', {"payload": {"odd.key": {}}}, 'payload["odd.key"].name'),
        ('payload["with space"]', {"payload": {}}, 'payload["with space"]'),
    ],
)
def test_missing_at_names_the_first_absent_part(text: str, root: Any, expected: str) -> None:
    """`missing_at` names the shortest prefix that is absent, written the way the path can be written."""
    assert compile_path(text).missing_at(root) == expected


def test_missing_at_names_the_part_after_a_null() -> None:
    """Through a null, the part that cannot be reached is the one named."""
    assert compile_path("payload.nothing.deeper").missing_at(DOC) == "payload.nothing.deeper"


def test_missing_at_names_the_part_beyond_a_string() -> None:
    """Through a string, the part that cannot be reached is the one named."""
    assert compile_path("payload.email.domain").missing_at(DOC) == "payload.email.domain"


@pytest.mark.parametrize("root", sorted(ROOTS))
def test_every_root_is_accepted(root: str) -> None:
    """Paths may start at payload, headers, event, vars or ticket."""
    assert compile_path(f"{root}.x").keys == (root, "x")


def test_the_roots_are_exactly_the_five_documented() -> None:
    """The roots are the five the mapping format documents, and nothing that reaches further."""
    assert frozenset({"payload", "headers", "event", "vars", "ticket"}) == ROOTS


@pytest.mark.parametrize("text", ["env.HOME", "os.environ", "Payload.x", "payloads.x", "self.x", "x", "__class__"])
def test_other_roots_are_refused(text: str) -> None:
    """A path that starts anywhere but the five roots is a syntax error naming the roots."""
    with pytest.raises(PathSyntaxError, match="must start with one of event, headers, payload, ticket, vars"):
        compile_path(text)


@pytest.mark.parametrize("text", ["[0].x", '["payload"]x'])
def test_a_path_starting_with_an_index_is_refused(text: str) -> None:
    """A path must start with a bare root name."""
    with pytest.raises(PathSyntaxError):
        compile_path(text)


def test_custom_roots_can_be_given() -> None:
    """`compile_path` checks the first part against the roots it is given."""
    assert compile_path("row.x", roots=frozenset({"row"})).get({"row": {"x": 1}}) == 1
    with pytest.raises(PathSyntaxError, match="must start with one of row"):
        compile_path("payload.x", roots=frozenset({"row"}))


@pytest.mark.parametrize(
    "text",
    [
        ".payload.x",
        "payload..x",
        "payload.x.",
        "payload.",
        "payload[",
        "payload[x]",
        "payload[0",
        "payload[1.5]",
        'payload["x]',
        "payload[\"x']",
        "payload.0",
        "payload.[0]",
        "payload.a b",
        "payload.a/b",
        "payload.items[0]name",
        'payload["a"]b',
        "payload.a..b",
    ],
)
def test_malformed_paths_are_syntax_errors(text: str) -> None:
    """A malformed path raises PathSyntaxError with an example of the right form."""
    with pytest.raises(PathSyntaxError, match=r"bad path .* at character \d+: write parts like payload\.items"):
        compile_path(text)


def test_syntax_error_names_the_character() -> None:
    """The syntax error points at the first character that cannot be parsed (1-based)."""
    with pytest.raises(PathSyntaxError, match="at character 10"):
        compile_path("payload.a/b")
    with pytest.raises(PathSyntaxError, match="at character 17"):
        compile_path("payload.items[0]name")


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_path_is_a_syntax_error(text: str) -> None:
    """An empty path is refused with an example."""
    with pytest.raises(PathSyntaxError, match="empty path"):
        compile_path(text)


def test_path_syntax_error_is_a_value_error() -> None:
    """PathSyntaxError is a ValueError, so callers may catch either."""
    assert issubclass(PathSyntaxError, ValueError)


def test_surrounding_whitespace_is_ignored() -> None:
    """Whitespace around a path is stripped before parsing."""
    path = compile_path("  payload.email \n")
    assert path.text == "payload.email"
    assert path.get(DOC) == "asha@example.com"


def test_compiled_path_keeps_keys_and_text() -> None:
    """A compiled path holds its parsed keys (strings and ints) and its text."""
    path = compile_path('payload.items[-1]["odd.key"]')
    assert isinstance(path, Path)
    assert path.keys == ("payload", "items", -1, "odd.key")
    assert repr(path) == "Path('payload.items[-1][\"odd.key\"]')"


_KEYS = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\"'"), max_size=12)


@given(key=_KEYS, value=st.one_of(st.none(), st.integers(), st.text(max_size=5)))
def test_any_quoted_key_round_trips(key: str, value: Any) -> None:
    """Any key without quote characters can be reached with `payload["…"]`."""
    path = compile_path(f'payload["{key}"]')
    assert path.keys == ("payload", key)
    assert path.get({"payload": {key: value}}) == value
    assert path.get({"payload": {}}) is MISSING


@given(items=st.lists(st.integers(), max_size=6), index=st.integers(min_value=-8, max_value=8))
def test_indexes_agree_with_python_indexing(items: list[int], index: int) -> None:
    """`[n]` returns what Python indexing returns, and MISSING where Python raises IndexError."""
    got = compile_path(f"payload.items[{index}]").get({"payload": {"items": items}})
    if -len(items) <= index < len(items):
        assert got == items[index]
    else:
        assert got is MISSING


_LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=4))
_TREES = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.sampled_from(["a", "b", "0"]), inner, max_size=3),
    st.dictionaries(st.sampled_from(["a", "b"]), inner, max_size=2).map(OrderedDict)), max_leaves=8)
_PATHS = st.sampled_from(["payload", "payload.a", "payload.b", "payload.a.b", "payload.a.a", "payload.a.b.a",
                          "payload.a[0]", "payload.a[0].b", 'payload["0"]', "payload.a.b.a.b"])


@given(root=st.one_of(_TREES, st.dictionaries(st.just("payload"), _TREES, max_size=1)), text=_PATHS)
def test_compiled_lookup_agrees_with_get(root: Any, text: str) -> None:
    """The one-call look-up gives what `get` gives on any tree: missing keys, nulls, lists, strings and other
    mappings on the way, with the given stand-in where `get` says MISSING."""
    path = compile_path(text)
    stand_in = Absent("", path)
    expected = path.get(root)
    assert compile_lookup(path)(root) is expected
    got = compile_lookup(path, stand_in)(root)
    assert got is stand_in if expected is MISSING else got is expected


@pytest.mark.parametrize(("text", "root", "expected"), [
    ("payload.nothing", DOC, None),
    ("payload.nothing.x", DOC, MISSING),
    ("payload.text.x", DOC, MISSING),
    ("payload.customer.name", DOC, "Asha"),
    ("payload.customer.tags", {"payload": OrderedDict(customer={"tags": 1})}, 1),
    ("payload.customer.name", {"payload": {"customer": None}}, MISSING),
    ("payload.absent.name", DOC, MISSING),
    ("payload.customer.tags.x", DOC, MISSING),
    ("payload", [], MISSING),
])
def test_compiled_lookup_edge_cases(text: str, root: Any, expected: Any) -> None:
    """A null, a string or a list on the way, a mapping that is not a dict, and a root that is not one."""
    assert compile_lookup(compile_path(text))(root) == expected


def test_absent_says_which_part_is_missing_only_when_asked() -> None:
    """An Absent names the first missing part of its path in the context it is asked about."""
    path = compile_path("payload.customer.phone.home")
    absent = compile_lookup(path, Absent("template: ", path))(DOC)
    assert isinstance(absent, Absent)
    assert absent.why(DOC) == "template: payload.customer.phone is missing"
    assert Absent("jmespath 'x' found nothing").why(DOC) == "jmespath 'x' found nothing"
