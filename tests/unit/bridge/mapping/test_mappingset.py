"""Loading a folder of mapping files: checks, every error at once with its place, versions, look-ups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.app import load_mappings
from bridge.config import load_config
from bridge.errors import ErrorList, MappingError
from bridge.mapping.compiler import RenderError
from bridge.mapping.mappingset import MappingSet, load_mapping_folder, load_mapping_texts, mapping_files
from bridge.mapping.testing import run_tests
from bridge.registries import REGISTRIES

SOURCES = {"website-contact", "partner-api"}
DESTINATIONS = {
    "kapture-support": frozenset({"create_ticket"}),
    "lsq": frozenset({"create_ticket", "update_ticket"}),
}

CONTACT = """\
source: website-contact
destination: kapture-support
action: create_ticket
fields:
  title: "Website enquiry: {{ payload.subject }}"
  email_id: {from: payload.email, required: true, transform: [strip, lower]}
"""

PARTNER = """\
name: partner-tickets
source: [partner-api, website-contact]
destination: lsq
action: update_ticket
fields:
  Title: {from: payload.title}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def load(folder: Path) -> MappingSet:
    return load_mapping_folder(folder, sources=SOURCES, destinations=DESTINATIONS)


def errors_of(folder: Path) -> list[str]:
    with pytest.raises(ErrorList) as info:
        load(folder)
    for err in info.value.errors:
        assert isinstance(err, MappingError)
    return [e.render() for e in info.value.errors]


def ctx(payload: dict[str, Any]) -> dict[str, Any]:
    return {"payload": payload, "headers": {}, "event": {"id": "evt_1"}, "vars": {}}


def test_loads_every_mapping_file(tmp_path: Path) -> None:
    """Each YAML file becomes one compiled mapping, named by `name:` or else by the file's stem."""
    write(tmp_path, "contact.yaml", CONTACT)
    write(tmp_path, "partner.yml", PARTNER)
    mappings = load(tmp_path)
    assert sorted(mappings.mappings) == ["contact", "partner-tickets"]
    contact = mappings.mappings["contact"]
    assert contact.file == str(tmp_path / "contact.yaml")
    assert contact.sources == ("website-contact",)
    assert (contact.destination, contact.action) == ("kapture-support", "create_ticket")
    assert contact.render(ctx({"subject": "Router", "email": " A@B.io "})) == {
        "title": "Website enquiry: Router", "email_id": "a@b.io",
    }
    assert mappings.mappings["partner-tickets"].sources == ("partner-api", "website-contact")


def test_by_source_lists_each_sources_mappings_in_name_order(tmp_path: Path) -> None:
    """`by_source`/`for_source` give every mapping that takes a source, sorted by name."""
    write(tmp_path, "contact.yaml", CONTACT)
    write(tmp_path, "partner.yaml", PARTNER)
    mappings = load(tmp_path)
    assert [m.name for m in mappings.for_source("website-contact")] == ["contact", "partner-tickets"]
    assert [m.name for m in mappings.for_source("partner-api")] == ["partner-tickets"]
    assert set(mappings.by_source) == {"website-contact", "partner-api"}
    assert mappings.for_source("unknown") == []


def test_only_visible_yaml_files_are_read(tmp_path: Path) -> None:
    """Files that are not .yaml/.yml, hidden files and sub-folders are ignored."""
    write(tmp_path, "contact.yaml", CONTACT)
    write(tmp_path, "notes.txt", "not: yaml: at: all: [")
    write(tmp_path, ".hidden.yaml", "broken: [")
    write(tmp_path, "contact.yaml.bak", "broken: [")
    (tmp_path / "sub.yaml").mkdir()
    write(tmp_path / "sub.yaml", "inner.yaml", "broken: [")
    assert mapping_files(tmp_path) == [tmp_path / "contact.yaml"]
    assert list(load(tmp_path).mappings) == ["contact"]


def test_empty_folder_gives_an_empty_set(tmp_path: Path) -> None:
    """A folder with no mapping files loads as an empty set."""
    mappings = load(tmp_path)
    assert mappings.mappings == {}
    assert mappings.by_source == {}


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    """A mappings folder that does not exist is reported, naming it."""
    assert errors_of(tmp_path / "nope") == [f"{tmp_path / 'nope'}: the mappings folder does not exist"]


def test_every_error_of_a_file_is_reported_at_once_with_its_place(tmp_path: Path) -> None:
    """One load reports every problem of a file, each as file:line:col: key path: message."""
    path = write(tmp_path, "broken.yaml", """\
name: broken
source: [website-contact, nowhere]
when: "payload.x =="
destination: kapture-support
action: delete_everything
fields:
  title: "{{ payload.subject "
  email_id: {from: payload..email, required: true}
  phone: {from: payload.phone, transform: [strip, slugify]}
  prio: {from: payload.p, requried: true}
  ok: fine
""")
    f = str(path)
    assert errors_of(tmp_path) == [
        f"{f}:2:27: broken.source[1]: unknown source 'nowhere'; configured sources: partner-api, website-contact",
        f"{f}:5:1: broken.action: destination 'kapture-support' has no action 'delete_everything'; "
        "it takes: create_ticket",
        f"{f}:3:1: broken.when: expression syntax error: unexpected 'end of template'",
        f"{f}:7:3: broken.title: template syntax error at template line 1: unexpected end of template, "
        "expected 'end of print statement'.",
        f"{f}:8:14: broken.email_id.from: bad path 'payload..email' at character 8: write parts like "
        'payload.items[0].name or payload["key.with.dots"]',
        f"{f}:9:51: broken.phone.transform[1]: unknown filter 'slugify'; known filters: attachment_list, bool, "
        "date, default, "
        "first, float, html_to_text, int, join, lower, phone_e164, replace, split, strip, strip_quoted, title, "
        "truncate, upper",
        f"{f}:10:27: broken.prio.requried: unknown key 'requried' (did you mean 'required'?): "
        "a field table takes from, jmespath, template, "
        "value, object, required, default, on_missing, map, map_default, transform",
    ]


def test_errors_of_every_file_are_reported_together(tmp_path: Path) -> None:
    """A broken file does not hide the errors of the next one, and good files do not hide either."""
    write(tmp_path, "a.yaml", CONTACT.replace("website-contact", "web"))
    write(tmp_path, "b.yaml", CONTACT)
    write(tmp_path, "c.yaml", CONTACT.replace("kapture-support", "zendesk"))
    errors = errors_of(tmp_path)
    assert len(errors) == 2
    assert errors[0].startswith(f"{tmp_path / 'a.yaml'}:1:1: a.source: unknown source 'web'; ")
    assert errors[1] == (f"{tmp_path / 'c.yaml'}:2:1: c.destination: unknown destination 'zendesk'; "
                         "configured destinations: kapture-support, lsq")


def test_unknown_source_lists_the_configured_ones(tmp_path: Path) -> None:
    """An unknown single source is reported at `source`, listing the configured sources."""
    write(tmp_path, "m.yaml", CONTACT.replace("source: website-contact", "source: web"))
    assert errors_of(tmp_path) == [
        f"{tmp_path / 'm.yaml'}:1:1: m.source: unknown source 'web'; configured sources: partner-api, website-contact"
    ]


def test_unknown_source_with_no_sources_configured(tmp_path: Path) -> None:
    """With no sources configured, the error says so."""
    write(tmp_path, "m.yaml", CONTACT)
    with pytest.raises(ErrorList, match=r"configured sources: \(none\)"):
        load_mapping_folder(tmp_path, sources=set(), destinations=DESTINATIONS)


def test_unknown_action_lists_the_destinations_actions(tmp_path: Path) -> None:
    """An action the destination's vendor does not have is reported at `action`, listing the actions."""
    write(tmp_path, "m.yaml", PARTNER.replace("update_ticket", "close_ticket"))
    assert errors_of(tmp_path) == [
        f"{tmp_path / 'm.yaml'}:4:1: partner-tickets.action: destination 'lsq' has no action 'close_ticket'; "
        "it takes: create_ticket, update_ticket"
    ]


def test_duplicate_names_are_errors(tmp_path: Path) -> None:
    """Two files with the same mapping name are refused, naming the file that had it first."""
    write(tmp_path, "a.yaml", PARTNER)
    write(tmp_path, "b.yaml", PARTNER)
    assert errors_of(tmp_path) == [
        f"{tmp_path / 'b.yaml'}:1:1: partner-tickets.name: mapping name 'partner-tickets' is already used by "
        f"{tmp_path / 'a.yaml'}"
    ]


def test_two_mapping_names_that_differ_only_in_a_no_break_space_are_an_error(tmp_path: Path) -> None:
    """A mapping name is kept on every delivery it makes: two that read alike (a no-break space where the other has
    a space) are refused, naming both and the file that had the first."""
    write(tmp_path, "a.yaml", PARTNER.replace("partner-tickets", "partner tickets"))
    write(tmp_path, "b.yaml", PARTNER.replace("partner-tickets", "partner\u00a0tickets"))
    assert errors_of(tmp_path) == [
        f"{tmp_path / 'b.yaml'}:1:1: partner\xa0tickets.name: mapping name 'partner\\xa0tickets' reads as the mapping "
        f"name 'partner tickets' of {tmp_path / 'a.yaml'}: they differ only in a no-break space; give them names "
        "that read apart"
    ]


def test_duplicate_default_names_from_yaml_and_yml(tmp_path: Path) -> None:
    """`x.yaml` and `x.yml` both default to the name `x`, which is a duplicate."""
    write(tmp_path, "x.yaml", CONTACT)
    write(tmp_path, "x.yml", CONTACT)
    with pytest.raises(ErrorList, match="mapping name 'x' is already used by"):
        load(tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("source: [website-contact\n", ":2:1: YAML syntax error: "),
        ("- a\n- b\n", ":1:1: m: a mapping file must be a table with source, destination, action and fields"),
        ("", ": m: a mapping file must be a table with source, destination, action and fields"),
        (CONTACT.replace("action: create_ticket\n", ""), ":1:1: m: missing required key 'action'"),
        (CONTACT + "colour: blue\n", ":7:1: m.colour: unknown key 'colour'; a mapping takes name, description, "),
        (CONTACT.replace(CONTACT[CONTACT.index("fields:"):], "fields: {}\n"),
         ":4:1: m.fields: a mapping needs at least one field"),
        (CONTACT.replace("source: website-contact", "source: 5"), ":1:1: m.source: got 5, expected text or a list"),
        (CONTACT + "options: [1]\n", ":7:1: m.options: got a list, expected a table of keys"),
        (CONTACT + "follow_up: {skip: 'yes please'}\n", ":7:13: m.follow_up.skip: got 'yes please', expected true "
                                                         "or false"),
        (CONTACT + "tests: [{input: {payload: [1]}, expect: {}}]\n",
         ":7:18: m.tests[0].input.payload: got a list, expected a table of keys"),
    ],
)
def test_malformed_files_are_reported_with_their_place(tmp_path: Path, text: str, expected: str) -> None:
    """YAML syntax errors, non-tables, missing or unknown keys, values of the wrong type (quoted, with what the key
    takes) and empty fields are reported with their place."""
    path = write(tmp_path, "m.yaml", text)
    errors = errors_of(tmp_path)
    assert len(errors) == 1
    assert errors[0].startswith(str(path) + expected)


def test_non_utf8_file_is_reported(tmp_path: Path) -> None:
    """A file that is not UTF-8 is reported instead of crashing the load."""
    (tmp_path / "m.yaml").write_bytes(b"source: caf\xe9\n")
    assert errors_of(tmp_path) == [
        f"{tmp_path / 'm.yaml'}: not UTF-8 text (invalid continuation byte at byte 11)"
    ]


def test_errors_render_as_an_error_list_message(tmp_path: Path) -> None:
    """The ErrorList's message is every error on its own line."""
    write(tmp_path, "a.yaml", CONTACT.replace("website-contact", "web"))
    write(tmp_path, "b.yaml", CONTACT.replace("kapture-support", "zendesk"))
    with pytest.raises(ErrorList) as info:
        load(tmp_path)
    assert str(info.value).splitlines() == [e.render() for e in info.value.errors]
    assert len(info.value.errors) == 2


def test_version_is_stable_and_follows_content(tmp_path: Path) -> None:
    """Loading unchanged files gives the same versions; changing one file changes its and the set's version."""
    write(tmp_path, "contact.yaml", CONTACT)
    write(tmp_path, "partner.yaml", PARTNER)
    first, again = load(tmp_path), load(tmp_path)
    assert first.version == again.version
    assert len(first.version) == 12
    assert int(first.version, 16) >= 0
    assert first.mappings["contact"].version == again.mappings["contact"].version

    write(tmp_path, "contact.yaml", CONTACT.replace("Website enquiry", "Web enquiry"))
    changed = load(tmp_path)
    assert changed.version != first.version
    assert changed.mappings["contact"].version != first.mappings["contact"].version
    assert changed.mappings["partner-tickets"].version == first.mappings["partner-tickets"].version


def test_a_whitespace_change_is_a_new_version(tmp_path: Path) -> None:
    """The version hashes the file's bytes, so even a comment makes a new version."""
    write(tmp_path, "contact.yaml", CONTACT)
    before = load(tmp_path).version
    write(tmp_path, "contact.yaml", "# edited\n" + CONTACT)
    assert load(tmp_path).version != before


def test_adding_a_mapping_changes_the_set_version(tmp_path: Path) -> None:
    """Adding a file changes the set's version."""
    write(tmp_path, "contact.yaml", CONTACT)
    before = load(tmp_path).version
    write(tmp_path, "partner.yaml", PARTNER)
    assert load(tmp_path).version != before


def test_the_set_records_when_it_was_loaded(tmp_path: Path) -> None:
    """A loaded set carries an aware UTC load time."""
    write(tmp_path, "contact.yaml", CONTACT)
    loaded_at = load(tmp_path).loaded_at
    assert loaded_at.utcoffset() is not None
    assert loaded_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def test_when_is_compiled_into_the_mapping(tmp_path: Path) -> None:
    """A mapping's `when` is kept as text and compiled into `matches`."""
    write(tmp_path, "m.yaml", "when: \"payload.category != 'spam'\"\n" + CONTACT)
    mapping = load(tmp_path).mappings["m"]
    assert mapping.when_text == "payload.category != 'spam'"
    assert mapping.matches(ctx({"category": "sales"})) is True
    assert mapping.matches(ctx({"category": "spam"})) is False


def test_options_are_kept(tmp_path: Path) -> None:
    """A mapping's vendor options are passed through as written."""
    write(tmp_path, "m.yaml", CONTACT + "options: {queue: billing}\n")
    assert load(tmp_path).mappings["m"].options == {"queue": "billing"}


# -- the shipped mappings -----------------------------------------------------------------------


def _shipped() -> tuple[MappingSet, dict[str, Any]]:
    config = load_config(None, {}, registries=REGISTRIES)
    return load_mappings(config), config.vars


def test_shipped_mappings_load_against_the_shipped_config() -> None:
    """The example mappings load, check and compile against the shipped default config."""
    mappings, _ = _shipped()
    assert {"contact-to-kapture", "partner-to-kapture"} <= set(mappings.mappings)
    assert "contact-to-kapture" in [m.name for m in mappings.for_source("website-contact")]
    assert "partner-to-kapture" in [m.name for m in mappings.for_source("partner-api")]


def test_shipped_mappings_pass_their_own_tests() -> None:
    """Each shipped mapping's `tests:` pass when run as `ticketbridge test` runs them."""
    mappings, config_vars = _shipped()
    results = run_tests(mappings, config_vars)
    assert [(r.mapping, r.name, r.message) for r in results if not r.passed] == []
    assert len(results) == sum(len(m.spec.tests) for m in mappings.mappings.values())


def test_every_shipped_mapping_has_tests() -> None:
    """Every mapping shipped in mappings/ carries at least one test of its own."""
    mappings, _ = _shipped()
    assert [name for name, m in mappings.mappings.items() if not m.spec.tests] == []


def test_shipped_contact_mapping_names_the_missing_email() -> None:
    """The shipped contact mapping refuses a form without email with the documented message."""
    mappings, config_vars = _shipped()
    contact = mappings.mappings["contact-to-kapture"]
    context = {"payload": {"subject": "x"}, "headers": {}, "event": {"id": "evt_1"}, "vars": config_vars}
    with pytest.raises(RenderError) as info:
        contact.render(context)
    assert str(info.value) == "email_id: required (payload.email is missing)"


def test_shipped_contact_mapping_skips_spam() -> None:
    """The shipped contact mapping's `when` skips spam and takes forms without a category."""
    mappings, _ = _shipped()
    contact = mappings.mappings["contact-to-kapture"]
    assert contact.matches(ctx({"category": "spam"})) is False
    assert contact.matches(ctx({})) is True


def test_stored_files_compile_exactly_as_the_folder_did(tmp_path: Path) -> None:
    """A set loaded from stored texts has the folder's version, mappings, files and error places."""
    write(tmp_path, "contact.yaml", CONTACT)
    write(tmp_path, "partner.yml", PARTNER)
    from_folder = load(tmp_path)
    assert from_folder.files == {"contact.yaml": CONTACT, "partner.yml": PARTNER}
    from_texts = load_mapping_texts(tmp_path, from_folder.files, sources=SOURCES, destinations=DESTINATIONS)
    assert (from_texts.version, sorted(from_texts.mappings), from_texts.files) == (
        from_folder.version, sorted(from_folder.mappings), from_folder.files)
    assert from_texts.mappings["contact"].file == str(tmp_path / "contact.yaml")
    with pytest.raises(ErrorList) as info:
        load_mapping_texts(tmp_path, {"contact.yaml": CONTACT.replace("subject }}", "subject }")},
                           sources=SOURCES, destinations=DESTINATIONS)
    assert info.value.errors[0].render().startswith(f"{tmp_path / 'contact.yaml'}:5:")


def test_a_mapping_name_or_field_key_no_store_can_keep_is_an_error_naming_its_line(tmp_path: Path) -> None:
    """A mapping name (its `name:`, or its file's name) or a field key holding a NUL or another character that is
    not printable is refused at load: file, line, the value escaped and what is allowed; the error's own place
    shows the name escaped too."""
    write(tmp_path, "contact.yaml", 'name: "contact\\0"\n' + CONTACT.replace("  email_id:", '  "email\\tid":'))
    write(tmp_path, "partner.yaml", PARTNER.replace("  Title:", '  "Ti\\0tle":'))
    allowed = ("printable characters (letters, digits, punctuation, symbols and spaces, a no-break space among them; a "
               "zero-width joiner or non-joiner only where it joins letters: after a virama, or between two letters of "
               "a joining script such as Arabic; no NUL, tab, newline or other control or format character)")
    named = allowed.replace("among them;", "among them, though no space at either end;")
    assert errors_of(tmp_path) == [
        f"{tmp_path / 'contact.yaml'}:1:1: 'contact\\x00'.name: mapping name 'contact\\x00' holds \\x00 (U+0000): a "
        f"mapping name is 1 to 200 {named}",
        f"{tmp_path / 'contact.yaml'}:7:3: 'contact\\x00'.fields: field key 'email\\tid' holds \\t (U+0009): a field "
        f"key is {allowed}",
        f"{tmp_path / 'partner.yaml'}:6:3: partner-tickets.fields: field key 'Ti\\x00tle' holds \\x00 (U+0000): a "
        f"field key is {allowed}",
    ]
