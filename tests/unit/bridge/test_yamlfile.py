"""bridge/yamlfile.py: positions, strict YAML, environment expansion, and located conversion errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest

from bridge.errors import VALUE, ConfigError, MappingError, ValueProblem
from bridge.yamlfile import (
    Document,
    KeyPath,
    KeyValueError,
    Quoted,
    env_expander,
    format_path,
    load_yaml,
    load_yaml_file,
    shown_value,
)


def expand(text: str, environ: dict[str, str], file: str = "bridge.yaml") -> Any:
    return load_yaml(text, file, env_expander(environ, file)).data


def value_of(scalar: str, environ: dict[str, str]) -> Any:
    """`scalar` as the value of key `k`, expanded against `environ`."""
    return expand(f"k: {scalar}\n", environ)["k"]


# -- positions ---------------------------------------------------------------------------------------


POSITIONS_YAML = """\
server:
  port: 8080
sources:
  web:
    cors_origins:
      - https://a.example
      - https://b.example
    hmac: {secret: s, header: X-Sig}
"fields.dotted": 1
"""


def test_load_yaml_returns_plain_data() -> None:
    """The document's data is the plain Python value of the YAML."""
    doc = load_yaml(POSITIONS_YAML, "cfg.yaml")
    assert doc.file == "cfg.yaml"
    assert doc.data == {
        "server": {"port": 8080},
        "sources": {"web": {"cors_origins": ["https://a.example", "https://b.example"],
                            "hmac": {"secret": "s", "header": "X-Sig"}}},
        "fields.dotted": 1,
    }


@pytest.mark.parametrize(
    ("path", "line", "col"),
    [
        ((), 1, 1),
        (("server",), 1, 1),
        (("server", "port"), 2, 3),
        (("sources", "web"), 4, 3),
        (("sources", "web", "cors_origins"), 5, 5),
        (("sources", "web", "cors_origins", 0), 6, 9),
        (("sources", "web", "cors_origins", 1), 7, 9),
        (("sources", "web", "hmac"), 8, 5),
        (("sources", "web", "hmac", "header"), 8, 23),
        (("fields.dotted",), 9, 1),
    ],
)
def test_positions_are_one_based_line_and_column(path: KeyPath, line: int, col: int) -> None:
    """Each key path maps to the 1-based line and column of its key (or of the item, in a list)."""
    doc = load_yaml(POSITIONS_YAML, "cfg.yaml")
    assert doc.positions[path] == (line, col)


def test_where_falls_back_to_the_nearest_known_parent() -> None:
    """`where` of a path that is not in the file answers with its closest ancestor's position."""
    doc = load_yaml(POSITIONS_YAML, "cfg.yaml")
    assert doc.where(("sources", "web", "hmac", "algorithm")) == (8, 5)
    assert doc.where(("sources", "nope", "kind")) == (3, 1)


def test_where_without_positions_is_unknown() -> None:
    """A document with no positions (e.g. an empty file) places nothing."""
    assert Document("f.yaml", None).where(("a", "b")) == (None, None)


def test_error_names_file_line_col_and_path() -> None:
    """`Document.error` builds a located error at the path's position with the path spelled out."""
    doc = load_yaml(POSITIONS_YAML, "cfg.yaml")
    err = doc.error(("sources", "web", "cors_origins", 1), "bad origin")
    assert isinstance(err, ConfigError)
    assert (err.file, err.line, err.col, err.path, err.message) == (
        "cfg.yaml", 7, 9, "sources.web.cors_origins[1]", "bad origin")
    assert str(err) == "cfg.yaml:7:9: sources.web.cors_origins[1]: bad origin"


def test_error_at_the_root_has_no_path_and_honours_the_class() -> None:
    """An error at the root path carries no key path, and is of the class asked for."""
    doc = load_yaml("a: 1\n", "m.yaml")
    err = doc.error((), "broken", MappingError)
    assert isinstance(err, MappingError)
    assert err.path is None
    assert str(err) == "m.yaml:1:1: broken"


# -- strictness -------------------------------------------------------------------------------------


def test_duplicate_top_level_key_is_an_error_at_the_second_occurrence() -> None:
    """A repeated top-level key is an error at the repeat, naming the key and its first line."""
    with pytest.raises(ConfigError) as info:
        load_yaml("a: 1\nb: 2\na: 3\n", "dup.yaml")
    err = info.value
    assert (err.file, err.line, err.col) == ("dup.yaml", 3, 1)
    assert "duplicate key 'a'" in err.message
    assert "first at line 1" in err.message


def test_duplicate_nested_key_names_its_parent_path() -> None:
    """A repeated key inside a table is reported at its line with the table's key path."""
    text = "sources:\n  web:\n    kind: form\n    honeypot: x\n    kind: json\n"
    with pytest.raises(ConfigError) as info:
        load_yaml(text, "dup.yaml")
    err = info.value
    assert (err.line, err.col, err.path) == (5, 5, "sources.web")
    assert "duplicate key 'kind' (first at line 3)" in err.message


def test_keys_that_are_equal_as_text_are_duplicates() -> None:
    """`1` and `"1"` are the same key once keys are text, so they clash."""
    with pytest.raises(ConfigError, match="duplicate key '1'"):
        load_yaml('1: a\n"1": b\n', "dup.yaml")


def test_non_string_scalar_keys_become_text() -> None:
    """Integer keys are kept as their text, so key paths are always strings."""
    assert load_yaml("200: ok\n404: missing\n", "f.yaml").data == {"200": "ok", "404": "missing"}


def test_merge_keys_are_rejected() -> None:
    """YAML `<<` merge keys are refused with their position rather than silently merged."""
    text = "base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n"
    with pytest.raises(ConfigError, match="merge keys") as info:
        load_yaml(text, "f.yaml")
    assert (info.value.line, info.value.col) == (3, 3)


def test_a_collection_as_key_is_rejected() -> None:
    """A complex (sequence) key is an error at the key's position."""
    with pytest.raises(ConfigError, match="a key must be a scalar, not list") as info:
        load_yaml("? [a, b]\n: 1\n", "f.yaml")
    assert info.value.line == 1


@pytest.mark.parametrize(
    ("text", "line", "col"),
    [
        ("a: [1, 2\n", 2, 1),
        ("a: 1\n b: 2\n", 2, 3),
        ('a: "\\xZZ"\n', 1, 7),
        ("a: *nowhere\n", 1, 4),
    ],
)
def test_syntax_error_is_located(text: str, line: int, col: int) -> None:
    """A YAML syntax error becomes a ConfigError naming the file and the parser's line and column."""
    with pytest.raises(ConfigError) as info:
        load_yaml(text, "broken.yaml")
    err = info.value
    assert (err.file, err.line, err.col) == ("broken.yaml", line, col)
    assert err.message.startswith("YAML syntax error: ")
    assert str(err).startswith(f"broken.yaml:{line}:{col}: ")


def test_several_documents_are_rejected() -> None:
    """A file holding more than one YAML document is an error at the second document."""
    with pytest.raises(ConfigError, match="YAML syntax error") as info:
        load_yaml("a: 1\n---\nb: 2\n", "f.yaml")
    assert info.value.line == 2


@pytest.mark.parametrize("text", ["a: !Ref thing\n", "a: !!python/object:os.system x\n"])
def test_unknown_tag_is_a_located_error(text: str) -> None:
    """An unknown or unsafe tag is a ConfigError at the tagged value, not a raw PyYAML exception."""
    with pytest.raises(ConfigError) as info:
        load_yaml(text, "f.yaml")
    assert (info.value.file, info.value.line, info.value.col) == ("f.yaml", 1, 4)


@pytest.mark.parametrize("text", ["a:\n  b: !!int abc\n", "a:\n  b: 2001-13-45\n"])
def test_unconstructible_value_is_a_located_error(text: str) -> None:
    """A value YAML cannot build (a bad `!!int`, an impossible date) is a ConfigError at its line."""
    with pytest.raises(ConfigError) as info:
        load_yaml(text, "f.yaml")
    assert (info.value.line, info.value.col) == (2, 6)


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_empty_document_has_no_data(text: str) -> None:
    """An empty file parses to a document whose data is None."""
    doc = load_yaml(text, "empty.yaml")
    assert doc.data is None
    assert doc.positions == {}


def test_load_yaml_file_reads_utf8_and_names_the_path(tmp_path: Path) -> None:
    """A file is read as UTF-8 and its path becomes the document's file name."""
    path = tmp_path / "b.yaml"
    path.write_text("brand: Café\n", encoding="utf-8")
    doc = load_yaml_file(path)
    assert doc.data == {"brand": "Café"}
    assert doc.file == str(path)


def test_load_yaml_file_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A file that cannot be read is a ConfigError naming it."""
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_yaml_file(path)
    assert info.value.file == str(path)


def test_load_yaml_file_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not UTF-8 is a ConfigError naming it and the bad byte's offset."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"brand: Caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8 text") as info:
        load_yaml_file(path)
    assert info.value.file == str(path)
    assert "byte 10" in info.value.message


def test_load_yaml_file_applies_the_scalar_hook(tmp_path: Path) -> None:
    """`load_yaml_file` passes its scalar hook through to the loader."""
    path = tmp_path / "b.yaml"
    path.write_text("token: ${TOKEN}\n", encoding="utf-8")
    assert load_yaml_file(path, env_expander({"TOKEN": "t0k"}, str(path))).data == {"token": "t0k"}


# -- environment expansion --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scalar", "expected"),
    [
        ('"${A}"', "alpha"),
        ("${A}", "alpha"),
        ('"x-${A}-${A}-y"', "x-alpha-alpha-y"),
        ('"${UNSET:-fallback}"', "fallback"),
        ('"${UNSET:-}"', ""),
        ('"${UNSET:-two words}"', "two words"),
        ('"${EMPTY:-fallback}"', "fallback"),
        ('"${A:-fallback}"', "alpha"),
        ('"${UNSET-fallback}"', "fallback"),
        ('"${UNSET-}"', ""),
        ('"${EMPTY-fallback}"', ""),
        ('"${A-fallback}"', "alpha"),
        ('"${EMPTY}"', ""),
        ('"$$"', "$"),
        ('"$${A}"', "${A}"),
        ('"price: $$5"', "price: $5"),
        ('"$$$${A}"', "$${A}"),
        ('"$A and a$b"', "$A and a$b"),
        ('"trailing $"', "trailing $"),
    ],
)
def test_expansion(scalar: str, expected: str) -> None:
    """`${VAR}`, `${VAR:-d}` (unset or empty), `${VAR-d}` (unset only) and `$$` expand as documented."""
    assert value_of(scalar, {"A": "alpha", "EMPTY": ""}) == expected


def test_expansion_is_not_recursive() -> None:
    """A variable's value is inserted verbatim: references inside it are not expanded again."""
    assert value_of('"${A}"', {"A": "${B} and $$"}) == "${B} and $$"


def test_expansion_leaves_non_strings_alone() -> None:
    """Numbers, booleans and nulls are not touched by the expander."""
    assert expand("n: 5\nb: true\nz: null\n", {}) == {"n": 5, "b": True, "z": None}


def test_expansion_reaches_nested_lists_and_tables() -> None:
    """Scalars inside lists and nested tables are expanded too."""
    text = "a:\n  list: [x, '${A}']\n  table: {k: '${B:-b}'}\n"
    assert expand(text, {"A": "1"}) == {"a": {"list": ["x", "1"], "table": {"k": "b"}}}


def test_an_expanded_value_stays_text() -> None:
    """`${PORT}` gives the text of the variable; typing it is the schema's job."""
    assert value_of("${PORT}", {"PORT": "8080"}) == "8080"


def test_unset_variable_is_an_error_naming_file_line_and_path() -> None:
    """An unset variable without a default is an error naming the file, line, column and key path."""
    text = "server:\n  port: 8080\nadmin:\n  token: ${ADMIN_TOKEN}\n"
    with pytest.raises(ConfigError) as info:
        expand(text, {}, file="conf/bridge.yaml")
    err = info.value
    assert (err.file, err.line, err.col, err.path) == ("conf/bridge.yaml", 4, 10, "admin.token")
    assert "ADMIN_TOKEN is not set" in err.message
    assert str(err).startswith("conf/bridge.yaml:4:10: admin.token: ")


def test_unset_variable_in_a_list_names_the_item() -> None:
    """An unset variable inside a list is reported at that item's index."""
    with pytest.raises(ConfigError) as info:
        expand("origins:\n  - https://a\n  - ${ORIGIN}\n", {})
    assert (info.value.line, info.value.path) == (3, "origins[1]")


def test_empty_variable_without_default_is_not_an_error() -> None:
    """A variable that is set but empty expands to the empty string."""
    assert value_of('"${TOKEN}"', {"TOKEN": ""}) == ""


@pytest.mark.parametrize("scalar", ['"${}"', '"${A"', '"${1A}"', '"${A B}"', '"${A:=x}"'])
def test_bad_reference_is_an_error(scalar: str) -> None:
    """A malformed `${…}` reference is a located error rather than being left in place."""
    with pytest.raises(ConfigError, match="bad variable reference") as info:
        value_of(scalar, {"A": "alpha"})
    assert (info.value.line, info.value.path) == (1, "k")


# -- format_path -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ((), ""),
        (("server",), "server"),
        (("sources", "website-contact", "hmac"), "sources.website-contact.hmac"),
        (("tests", 0, "input"), "tests[0].input"),
        (("fields", "LeadDetail.Email"), 'fields["LeadDetail.Email"]'),
        (("fields", "two words", 3), 'fields["two words"][3]'),
        ((0, "a"), "[0].a"),
        (("_private", "x_1"), "_private.x_1"),
        (("1abc",), '["1abc"]'),
        (("fields", "it's"), '''fields["it's"]'''),
        (("fields", 'say "hi"'), 'fields["say \\"hi\\""]'),
    ],
)
def test_format_path(path: KeyPath, text: str) -> None:
    """Simple keys join with dots, indexes and other keys use brackets with double-quoted strings."""
    assert format_path(path) == text


# -- Document.convert --------------------------------------------------------------------------------


class Hmac(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    secret: str
    algorithm: str = "sha256"


class Source(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    kind: str
    retries: int = 3
    hmac: Hmac | None = None

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries must not be negative")


class Root(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str = "x"
    sources: list[Source] = []
    by_name: dict[str, Source] = {}


CONVERT_YAML = """\
name: demo
sources:
  - kind: form
  - kind: json
    retries: lots
"""


def convert_error(text: str, typ: type[Any] = Root) -> ConfigError:
    doc = load_yaml(text, "c.yaml")
    with pytest.raises(ConfigError) as info:
        doc.convert(doc.data, typ)
    return info.value


def test_convert_returns_the_struct() -> None:
    """Valid data converts to the requested type, with lax typing of text numbers."""
    doc = load_yaml("sources:\n  - kind: json\n    retries: '5'\n", "c.yaml")
    root = doc.convert(doc.data, Root)
    assert root.sources == [Source(kind="json", retries=5)]


def test_convert_type_error_names_line_col_and_path() -> None:
    """A wrongly typed value is reported at its key with the full key path and msgspec's reason."""
    err = convert_error(CONVERT_YAML)
    assert (err.file, err.line, err.col, err.path) == ("c.yaml", 5, 5, "sources[1].retries")
    assert err.message == "Expected `int`, got `str`"


def test_convert_unknown_key_is_named_with_its_position() -> None:
    """An unknown key is reported at that key's own line, with the key at the end of the path."""
    err = convert_error("sources:\n  - kind: form\n    colour: red\n")
    assert (err.line, err.col, err.path) == (3, 5, "sources[0].colour")
    assert err.message == "unknown key 'colour'"


def test_convert_unknown_top_level_key() -> None:
    """An unknown key at the top is reported with its own name as the path."""
    err = convert_error("name: a\nnmae: b\n")
    assert (err.line, err.path, err.message) == (2, "nmae", "unknown key 'nmae'")


def test_convert_missing_key_is_reported_on_its_table() -> None:
    """A missing required key is reported at the table that lacks it."""
    err = convert_error("sources:\n  - kind: form\n  - retries: 1\n")
    assert (err.line, err.col, err.path) == (3, 5, "sources[1]")
    assert err.message == "missing required key 'kind'"


def test_convert_post_init_error_is_located() -> None:
    """A ValueError from a struct's own check is reported at that struct with its message."""
    err = convert_error("sources:\n  - kind: form\n    retries: -1\n")
    assert (err.line, err.path, err.message) == (2, "sources[0]", "retries must not be negative")


class Window(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    every: list[str] = []

    def __post_init__(self) -> None:
        for i, item in enumerate(self.every):
            if not item.endswith("s"):
                raise KeyValueError(("every", i), f"{item!r} is not a number of seconds")


class Windows(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    windows: list[Window]


def test_convert_post_init_error_about_one_key_is_placed_at_that_key() -> None:
    """A struct's own check raising KeyValueError is reported at the key it names, not at the struct."""
    err = convert_error("windows:\n  - every: [5s,\n      soon]\n", Windows)
    assert (err.line, err.col, err.path) == (3, 7, "windows[0].every[1]")
    assert err.message == "'soon' is not a number of seconds"


class Limits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    every: list[str] = []
    low: int = 0
    high: int = 10
    token: str = ""

    def __post_init__(self) -> None:
        for i, item in enumerate(self.every):
            if not item.endswith("s"):
                raise KeyValueError(("every", i), f"{VALUE} is not a number of seconds", item)
        if self.low > self.high:
            raise KeyValueError(("low",), f"low {VALUE} is above high {{high}}, by {{by}}", self.low, quotes={
                "high": Quoted(("high",), self.high),
                "by": Quoted(("low",), self.low, quote=str(self.low - self.high), hidden="some")})
        if ":" in self.token:
            raise KeyValueError(("token",), f"`token` {VALUE} holds a colon", self.token)
        if self.token == "x":
            raise ValueProblem(f"{VALUE} is not a token", self.token)


class AllLimits(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    limits: list[Limits]


def limits_error(text: str, environ: dict[str, str] | None = None) -> ConfigError:
    doc = load_yaml(text, "c.yaml", env_expander(environ or {}, "c.yaml"))
    with pytest.raises(ConfigError) as info:
        doc.convert(doc.data, AllLimits)
    return info.value


def test_a_value_a_struct_check_quotes_is_shown_as_it_was_written() -> None:
    """A KeyValueError's values are placed by their keys inside the struct: one written in the file is quoted, one
    from an environment variable described (kind, length, variable), whatever the variable's name; a number worked
    out from it is said in words instead (`hidden`)."""
    def text(every: str, low: str) -> str:
        return f"limits:\n  - {{}}\n  - every: [5s, {every}]\n    low: {low}\n    high: 3\n"

    written = limits_error(text("hunter2", "9"))
    assert (written.line, written.path, written.message) == (3, "limits[1].every[1]", "'hunter2' is not a number of "
                                                                                        "seconds")
    from_env = limits_error(text("'${PLAIN}'", "9"), {"PLAIN": "hunter2"})
    assert (from_env.line, from_env.path) == (3, "limits[1].every[1]")
    assert from_env.message == "text of 7 characters from ${PLAIN} is not a number of seconds"
    assert limits_error(text("5s", "9")).message == "low 9 is above high 3, by 6"
    from_env = limits_error(text("5s", "'${LOW}'"), {"LOW": "9"})
    assert from_env.message == "low a number from ${LOW} is above high 3, by some"


def test_a_value_a_struct_check_quotes_is_never_shown_under_a_credentials_key() -> None:
    """Under a key named like a credential, the value is described by its kind, from the file as from a variable;
    told without a loader (`str`), the error does the same by the key it names."""
    err = limits_error("limits:\n  - token: 'admin:hunter2'\n")
    assert err.message == "`token` text (not shown: a secret) holds a colon"
    assert str(KeyValueError(("token",), f"`token` {VALUE} holds a colon", "a:b")) == (
        "`token` text (not shown: a secret) holds a colon")
    assert str(KeyValueError(("every", 0), f"{VALUE} is not a number of seconds", "soon")) == (
        "'soon' is not a number of seconds")


def test_a_value_problem_not_placed_at_a_key_is_never_quoted() -> None:
    """A struct's check that raises a ValueProblem without saying its key: where the value came from is not known,
    so it is described by its kind alone; given as it is (`str`), the value is quoted."""
    err = limits_error("limits:\n  - token: x\n")
    assert (err.path, err.message) == ("limits[0]", "text (not shown) is not a token")
    assert str(ValueProblem(f"{VALUE} is not a token", "x" * 70)) == f"{'x' * 60!r}… is not a token"


def test_convert_nested_unknown_key() -> None:
    """An unknown key in a nested table names the whole path down to it."""
    err = convert_error("sources:\n  - kind: json\n    hmac:\n      secret: s\n      algo: md5\n")
    assert (err.line, err.path, err.message) == (5, "sources[0].hmac.algo", "unknown key 'algo'")


def test_convert_inside_a_table_of_unnamed_keys_stops_at_the_known_parent() -> None:
    """Inside a dict msgspec does not say which key failed, so the error sits on the dict, not a made-up key."""
    err = convert_error("by_name:\n  web:\n    kind: form\n    retries: lots\n")
    assert (err.line, err.path) == (1, "by_name")
    assert err.message == "Expected `int`, got `str`"


def test_convert_with_a_base_path_prefixes_it() -> None:
    """Converting a sub-table with its base path gives paths and positions within the whole file."""
    text = "sources:\n  web:\n    kind: json\n    hmac: {secret: s, colour: red}\n"
    doc = load_yaml(text, "c.yaml")
    with pytest.raises(ConfigError) as info:
        doc.convert(doc.data["sources"]["web"], Source, ("sources", "web"))
    err = info.value
    assert (err.line, err.col, err.path) == (4, 23, "sources.web.hmac.colour")


def test_convert_raises_the_requested_error_class() -> None:
    """`cls` chooses the located error class, e.g. MappingError for mapping files."""
    doc = load_yaml("kind: form\nretries: x\n", "m.yaml")
    with pytest.raises(MappingError) as info:
        doc.convert(doc.data, Source, cls=MappingError)
    assert (info.value.file, info.value.line, info.value.path) == ("m.yaml", 2, "retries")


def test_convert_error_is_a_value_error() -> None:
    """Conversion errors are ValueErrors, so callers catching ValueError still see them."""
    assert isinstance(convert_error("name: [1]\n"), ValueError)


@pytest.mark.parametrize(("text", "hint"), [
    ("a:\n\tb: 1\n", "likely a tab: indent YAML with spaces only"),
    ("title: Printer: on fire\n", "likely an unquoted `:` inside a value"),
    ("a:\n  b: 1\n c: 2\n", "likely a wrong indentation"),
])
def test_syntax_errors_say_what_is_likely_wrong(text: str, hint: str) -> None:
    """A tab, an unquoted colon or a misaligned key gets a hint after the parser's message."""
    with pytest.raises(ConfigError) as info:
        load_yaml(text, "broken.yaml")
    assert hint in info.value.message


def test_an_enum_error_lists_the_allowed_values_and_the_nearest() -> None:
    """A value outside a closed set names the allowed ones and suggests the nearest."""
    class Spec(msgspec.Struct):
        on_missing: Literal["omit", "null", "error", "default"] = "error"

    doc = load_yaml("on_missing: omitt\n", "f.yaml")
    with pytest.raises(ConfigError) as info:
        doc.convert(doc.data, Spec)
    assert info.value.message == "'omitt' is not one of: default, error, null, omit (did you mean 'omit'?)"
    assert info.value.line == 1


def _laughs(levels: int) -> str:
    """Each anchor a list of ten aliases of the one before: 10**levels values in a few hundred bytes."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_aliases_that_multiply_a_block_are_an_error_at_the_alias_that_passes_the_limit() -> None:
    """Aliases of aliases (10**levels values in a few hundred bytes) are refused where their count passes
    MAX_ALIASED_VALUES, before anything is built; aliases that repeat a block are fine."""
    with pytest.raises(ConfigError) as caught:
        load_yaml(_laughs(6), "bomb.yaml")  # a million values: seconds and hundreds of MB to build
    assert caught.value.file == "bomb.yaml" and caught.value.line == 5
    assert "more than 100,000 values" in str(caught.value) and "*a3" in str(caught.value)
    assert len(load_yaml(_laughs(4), "fine.yaml").data["a3"]) == 10  # 1,110 values through aliases
    repeated = load_yaml("base: &b {x: 1, y: [1, 2]}\none: *b\ntwo: *b\n", "f.yaml").data
    assert repeated["one"] == repeated["two"] == {"x": 1, "y": [1, 2]}


def test_a_block_that_contains_an_alias_of_itself_is_an_error_at_the_alias() -> None:
    for text, col in (("a: &x [1, *x]\n", 11), ("a: &x {b: [*x]}\n", 12)):
        with pytest.raises(ConfigError) as caught:
            load_yaml(text, "f.yaml")
        assert (caught.value.line, caught.value.col) == (1, col)
        assert "cannot contain itself" in str(caught.value)


def test_nesting_past_the_limit_is_an_error_at_the_block_that_passes_it() -> None:
    from bridge.yamlfile import MAX_DEPTH

    assert load_yaml("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n", "f.yaml").data is not None
    for depth in (MAX_DEPTH, 5000):
        with pytest.raises(ConfigError) as caught:
            load_yaml("a: " + "[" * depth + "]" * depth + "\n", "f.yaml")
        assert (caught.value.line, caught.value.col) == (1, 3 + MAX_DEPTH)
        assert f"nested more than {MAX_DEPTH} levels deep" in str(caught.value)


@pytest.mark.parametrize(("value", "written", "shown"), [
    ("a$b", "a$$b", "'a$b' (written a$$b)"),
    ("a$b", "a$$b\t", "'a$b' (written 'a$$b\\t')"),
    ("80x", "80${SUFFIX}", "text of 3 characters from ${SUFFIX} (written 80${SUFFIX})"),
    ("80\tx", "80\t${SUFFIX}", "text of 4 characters from ${SUFFIX} (written '80\\t${SUFFIX}')"),
    ("x", "${SUFFIX}", "text of 1 character from ${SUFFIX}"),
])
def test_a_value_is_shown_with_the_text_it_was_written_as(value: str, written: str, shown: str) -> None:
    """A value written otherwise than it reads (`$$`, a variable inside other text) shows that text too, as it is
    when it prints, quoted when it holds what does not (a tab); a variable alone is named, not repeated."""
    assert shown_value(value, ("server", "port"), written) == shown


def test_a_null_of_the_wrong_type_is_shown_as_null_and_no_data_as_nothing() -> None:
    """With `show_value`, a null where a number goes is `got null` (None is a value); a translation given no
    data at all keeps msgspec's own words rather than reading a null nobody gave."""
    doc = Document("f.yaml", None)
    with pytest.raises(ConfigError) as info:
        doc.convert(None, int, ("port",), show_value=True)
    assert info.value.message == "got null, expected a whole number"
    with pytest.raises(msgspec.ValidationError) as caught:
        msgspec.convert(None, int)
    translated = doc.translate(caught.value, ("port",), ConfigError, typ=int)
    assert (translated.message, translated.path) == ("Expected `int`, got `null`", "port")
