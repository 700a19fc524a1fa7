"""The `follow_up:` block: checked like a mapping against its destination, and exercised by tests with a ticket."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bridge.app import destination_targets
from bridge.config import load_config
from bridge.errors import ErrorList
from bridge.mapping.mappingset import MappingSet, load_mapping_folder
from bridge.mapping.testing import run_tests
from bridge.registries import REGISTRIES

CONFIG = """
sources: {mail: {kind: json}}
destinations: {kapture: {vendor: kapture, sandbox: true}}
"""

HEAD = """
name: m
source: mail
destination: kapture
action: create_ticket
fields: {title: "{{ payload.subject }}"}
"""


def load(tmp_path: Path, text: str) -> MappingSet:
    (tmp_path / "bridge.yaml").write_text(CONFIG)
    config = load_config(tmp_path / "bridge.yaml", {}, registries=REGISTRIES)
    folder = tmp_path / "mappings"
    folder.mkdir(exist_ok=True)
    (folder / "m.yaml").write_text(HEAD + textwrap.dedent(text))
    return load_mapping_folder(folder, sources={"mail"}, destinations=destination_targets(config))


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ErrorList) as info:
        load(tmp_path, text)
    return [e.render().split(": ", 1)[1] for e in info.value.errors]


def test_a_follow_up_action_the_destination_lacks_is_an_error(tmp_path: Path) -> None:
    """The follow-up's action is checked against the destination's actions."""
    assert errors(tmp_path, "follow_up: {action: comment, fields: {x: 1}}") == [
        "m.follow_up.action: destination 'kapture' has no action 'comment'; it takes: create_ticket, update_ticket"]


def test_the_vendors_static_checks_apply_to_the_follow_up(tmp_path: Path) -> None:
    """Kapture's update_ticket needs sub_status in a follow-up as anywhere (its ticket id may come from the
    conversation's ticket)."""
    found = errors(tmp_path, "follow_up: {action: update_ticket, fields: {comment: x}}")
    assert any("sub_status" in e and e.startswith("m.follow_up.fields") for e in found), found


def test_the_follow_ups_when_and_fields_errors_are_placed_under_follow_up(tmp_path: Path) -> None:
    """A `when` or a field of the follow-up that does not compile is reported at `follow_up.when` and
    `follow_up.fields.<name>`, not at the mapping's own keys."""
    found = errors(tmp_path, """\
        follow_up:
          action: update_ticket
          when: "payload.x =="
          fields: {sub_status: {from: payload.s, transform: [shout]}}
        """)
    assert [e.split(":", 1)[0] for e in found] == ["m.follow_up.when",
                                                   "m.follow_up.fields.sub_status.transform[0]"], found


def test_skip_takes_nothing_else_and_reopen_after_must_be_a_duration(tmp_path: Path) -> None:
    """`skip: true` with an action is an error, as is a reopen_after that is not a duration."""
    assert errors(tmp_path, "reopen_after: soon\nfollow_up: {skip: true, action: update_ticket}") == [
        "m.reopen_after: 'soon' is not a duration: write 250ms, 5s, 5m, 2h, 1d, 2w or a number of seconds",
        "m.follow_up: `skip: true` sends nothing: it takes no action, fields or when"]


def test_reopen_after_takes_the_config_durations_and_must_be_longer_than_zero(tmp_path: Path) -> None:
    """reopen_after is read like every other duration (`2w`, `1d12h`), and zero is an error saying what is right."""
    assert load(tmp_path, "reopen_after: 1d12h\n").mappings["m"].reopen_after_s == 36 * 3600
    assert load(tmp_path, "reopen_after: 2w\n").mappings["m"].reopen_after_s == 14 * 86400
    assert errors(tmp_path, "reopen_after: 0s\n") == [
        "m.reopen_after: '0s' must be longer than zero: write e.g. 12h or 7d"]


def test_a_test_with_a_ticket_exercises_the_follow_up(tmp_path: Path) -> None:
    """A test without `ticket` renders the create; with `ticket`, the follow-up (and `skip` is a skip)."""
    mappings = load(tmp_path, """
        follow_up:
          action: update_ticket
          fields: {ticket_id: "{{ ticket.id }}", sub_status: P, comment: "{{ payload.text }}"}
        tests:
          - input: {payload: {subject: Down, text: x}}
            expect: {title: Down}
          - input: {payload: {text: still}, ticket: {id: "T1"}}
            expect: {ticket_id: "T1", sub_status: P, comment: still}
        """)
    assert mappings.mappings["m"].threaded
    assert [r.passed for r in run_tests(mappings, {})] == [True, True]
    skipping = load(tmp_path, """
        follow_up: {skip: true}
        tests:
          - input: {payload: {text: still}, ticket: {id: "T1"}}
            expect_skip: true
        """)
    assert [r.passed for r in run_tests(skipping, {})] == [True]


def test_an_unknown_key_in_follow_up_names_the_keys_it_takes(tmp_path: Path) -> None:
    """A misspelt key in `follow_up:` is placed at that key, with the nearest known key and the allowed ones."""
    assert errors(tmp_path, "follow_up: {acton: update_ticket, fields: {comment: x}}") == [
        "m.follow_up.acton: unknown key 'acton' (did you mean 'action'?); it takes action, when, options, fields, "
        "skip"]
