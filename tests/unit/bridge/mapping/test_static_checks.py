"""What loading checks before any event: every problem of a file at once, each as
`file:line:col: mapping.field: message`, including each vendor's own rules for its actions."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from bridge.app import destination_targets
from bridge.config import load_config
from bridge.errors import ErrorList
from bridge.mapping.mappingset import Target, load_mapping_folder
from bridge.registries import REGISTRIES
from bridge.yamlfile import format_mapping_path


def errors_of(folder: Path, destinations: Mapping[str, Any], vars_: dict[str, Any] | None = None) -> list[str]:
    with pytest.raises(ErrorList) as info:
        load_mapping_folder(folder, sources={"web"}, destinations=destinations, vars_=vars_)
    return [e.render() for e in info.value.errors]


def write(folder: Path, text: str, name: str = "m.yaml") -> str:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("fields", "LeadDetail.EmailAddress"), "m.LeadDetail.EmailAddress"),
        (("fields", "title", "transform", 1), "m.title.transform[1]"),
        (("fields", "customer", "object", "first name"), 'm.customer.object["first name"]'),
        (("source", 1), "m.source[1]"),
        (("tests", 0, "expect"), "m.tests[0].expect"),
        ((), "m"),
    ],
)
def test_mapping_paths_read_as_mapping_dot_field(path: tuple[str | int, ...], expected: str) -> None:
    """Error paths read `mapping.field…`, a field's name as written, dots and all."""
    assert format_mapping_path("m", path) == expected


def test_vendor_rules_are_placed_at_the_field_or_at_fields(tmp_path: Path) -> None:
    """Each problem a vendor's static check names is reported at that field, or at `fields:` when absent."""
    seen: list[tuple[str, list[str], Mapping[str, Any]]] = []

    def check(action: str, fields: list[str], options: Mapping[str, Any]) -> list[str]:
        seen.append((action, fields, options))
        return ["title: the vendor needs a `title` field", "body: must not be a list",
                "options.queue: unknown queue 'x'", "fields: needs one of email, phone"]

    f = write(tmp_path, """\
        source: web
        destination: vendor
        action: create
        options: {queue: x}
        fields:
          body: [a, b]
        """)
    assert errors_of(tmp_path, {"vendor": Target(frozenset({"create"}), check)}) == [
        f"{f}:5:1: m.title: the vendor needs a `title` field",
        f"{f}:6:3: m.body: must not be a list",
        f"{f}:4:11: m.options.queue: unknown queue 'x'",
        f"{f}:5:1: m.fields: needs one of email, phone",
    ]
    assert seen == [("create", ["body"], {"queue": "x"})]


def test_vendor_rules_are_not_asked_about_an_action_the_vendor_lacks(tmp_path: Path) -> None:
    """An unknown action is reported once; the vendor's rules for it are not consulted."""
    def check(action: str, fields: list[str], options: Mapping[str, Any]) -> list[str]:
        raise AssertionError("not to be called")

    f = write(tmp_path, "source: web\ndestination: v\naction: nope\nfields: {a: b}\n")
    assert errors_of(tmp_path, {"v": Target(frozenset({"create"}), check)}) == [
        f"{f}:3:1: m.action: destination 'v' has no action 'nope'; it takes: create"]


CONFIG = """\
sources: {web: {kind: form}}
vars: {brand: Acme}
destinations:
  kapture: {vendor: kapture, sandbox: true}
  lsq: {vendor: leadsquared, sandbox: true}
"""


@pytest.mark.parametrize(
    ("destination", "action", "fields", "expected"),
    [
        ("kapture", "create_ticket", "ticket_details: x",
         [":5:1: m.title: kapture create_ticket needs a `title` field"]),
        ("kapture", "update_ticket", "status: x", [":5:1: m.sub_status: kapture update_ticket needs a `sub_status` "
                                                   "field"]),
        ("lsq", "create_ticket", "Title: x", [":5:1: m.fields: leadsquared create_ticket needs one of "]),
    ],
)
def test_the_shipped_vendors_rules_are_checked_at_load(tmp_path: Path, destination: str, action: str, fields: str,
                                                       expected: list[str]) -> None:
    """Kapture's and LeadSquared's static rules reach the load errors through the adapters' hook."""
    (tmp_path / "bridge.yaml").write_text(CONFIG)
    config = load_config(tmp_path / "bridge.yaml", {}, registries=REGISTRIES)
    folder = tmp_path / "maps"
    folder.mkdir()
    f = write(folder, f"source: web\ndestination: {destination}\naction: {action}\noptions: {{}}\n"
                      f"fields:\n  {fields}\n")
    errors = errors_of(folder, destination_targets(config), config.vars)
    assert [e[: len(f + x)] for e, x in zip(errors, expected, strict=True)] == [f + x for x in expected]


def test_every_problem_of_a_file_is_reported_at_once(tmp_path: Path) -> None:
    """Unknown keys, missing keys, bad fields, bad tests: one load reports all of them, in file order."""
    f = write(tmp_path, """\
        name: broken
        colour: blue
        source: web
        action: create
        fields:
          a: {from: payload.a, requried: true, transform: [strip, shout]}
          b: "{{ paylod.b }}"
          c: {from: vars.team, required: true}
        tests:
          - input: {payload: {}}
          - input: {payload: {}, extra: 1}
            expect: {}
          - input: {payload: {}}
            expect: {}
            expect_error: boom
        size: 3
        """)
    assert errors_of(tmp_path, {"v": frozenset({"create"})}, {"brand": "Acme"}) == [
        f"{f}:2:1: broken.colour: unknown key 'colour'; a mapping takes name, description, source, when, "
        "destination, action, options, fields, conversation, reopen_after, follow_up, tests",
        f"{f}:16:1: broken.size: unknown key 'size'; a mapping takes name, description, source, when, destination, "
        "action, options, fields, conversation, reopen_after, follow_up, tests",
        f"{f}:1:1: broken: missing required key 'destination'",
    ]
    # Once the file's shape is right, the fields and tests are checked, all of them.
    text = (tmp_path / "m.yaml").read_text().replace("colour: blue\n", "destination: v\n").replace("size: 3\n", "")
    f = write(tmp_path, text)
    assert errors_of(tmp_path, {"v": frozenset({"create"})}, {"brand": "Acme"}) == [
        f"{f}:6:24: broken.a.requried: unknown key 'requried' (did you mean 'required'?): "
        "a field table takes from, jmespath, template, value, "
        "object, required, default, on_missing, map, map_default, transform",
        f"{f}:6:59: broken.a.transform[1]: unknown filter 'shout'; known filters: attachment_list, bool, date, "
        "default, first, float, "
        "html_to_text, int, join, lower, phone_e164, replace, split, strip, strip_quoted, title, truncate, upper",
        f"{f}:7:3: broken.b: unknown name 'paylod' in the template: it sees event, headers, payload, ticket, vars "
        "and range()",
        f"{f}:8:7: broken.c.from: required, but vars.team is not set in the config, so it can never be filled "
        "(the config's vars: brand)",
        f"{f}:10:5: broken.tests[0]: a test needs exactly one of expect, expect_contains, expect_error, expect_skip",
        f"{f}:11:26: broken.tests[1].input.extra: unknown key 'extra'; it takes payload, headers, event, vars, "
        "ticket",
        f"{f}:13:5: broken.tests[2]: a test needs exactly one of expect, expect_contains, expect_error, expect_skip "
        "(it has expect, expect_error)",
    ]


def test_an_adapter_class_can_be_given_as_the_destination(tmp_path: Path) -> None:
    """The loader takes a vendor's adapter class as it is: its actions and its static check."""
    from bridge.vendors.kapture import KaptureAdapter

    f = write(tmp_path, "source: web\ndestination: k\naction: create_ticket\nfields: {ticket_details: x}\n")
    assert errors_of(tmp_path, {"k": KaptureAdapter}) == [
        f"{f}:4:1: m.title: kapture create_ticket needs a `title` field"]


def test_a_multipart_vendor_body_is_shown_part_by_part(tmp_path: Path) -> None:
    """Mapping tests and render see a multipart request (LeadSquared's update) as its JSON part and its file parts."""
    (tmp_path / "bridge.yaml").write_text("destinations:\n  lsq: {vendor: leadsquared, sandbox: true}\n")
    config = load_config(tmp_path / "bridge.yaml", {}, registries=REGISTRIES)
    body = destination_targets(config)["lsq"].vendor_body
    assert body is not None
    assert body("update_ticket", {"Status": "Open"}, {}, {"id": "143"}) == {"ticketDTO": {
        "TypeId": "1", "Id": "143", "LeadId": None, "Fields": [{"SchemaName": "Status", "Value": "Open"}],
        "RelatedTicketTypeId": 1}}
