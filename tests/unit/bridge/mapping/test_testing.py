"""bridge/mapping/testing.py: the tests written beside each mapping, and what a failure reports."""

from __future__ import annotations

import textwrap
from typing import Any

import msgspec
import pytest

from bridge.errors import MappingError
from bridge.mapping import testing as mapping_testing
from bridge.mapping.compiler import CompiledMapping
from bridge.mapping.filters import FILTERS
from bridge.mapping.mappingset import MappingSet, Target, compile_document
from bridge.mapping.model import MappingTest, TestInput
from bridge.registries import REGISTRIES
from bridge.yamlfile import load_yaml

SOURCES = {"website-contact", "partner-api"}
DESTINATIONS = {"kapture-support": frozenset({"create_ticket"}), "demo-kapture": frozenset({"create_ticket"})}

HEADER = """\
name: contact
source: website-contact
when: "payload.category is not defined or payload.category != 'spam'"
destination: kapture-support
action: create_ticket
fields:
  title: "Website enquiry: {{ payload.subject }}"
  email_id: {from: payload.email, required: true, transform: [strip, lower]}
  team: "{{ vars.team }}"
"""

GOOD_INPUT = {"payload": {"subject": "Router down", "email": " Asha@Example.com "}}
GOOD_BODY = {"title": "Website enquiry: Router down", "email_id": "asha@example.com", "team": "noc"}
VARS = {"team": "noc"}


def compile_mapping(text: str, stem: str = "contact") -> CompiledMapping:
    doc = load_yaml(textwrap.dedent(text), f"mappings/{stem}.yaml")
    mapping, errors = compile_document(doc, stem, "v1", SOURCES, DESTINATIONS)
    assert errors == []
    assert mapping is not None
    return mapping


def run(test: dict[str, Any], text: str = HEADER, vars_: dict[str, Any] | None = None) -> Any:
    mapping = compile_mapping(text)
    spec = msgspec.convert(test, MappingTest)
    return mapping_testing.run_test(mapping, 0, spec, VARS if vars_ is None else vars_)


def test_expect_passes_on_the_exact_body() -> None:
    """`expect` passes when the rendered body equals it exactly."""
    res = run({"name": "complete", "input": GOOD_INPUT, "expect": GOOD_BODY})
    assert res.passed
    assert res.message == ""
    assert (res.mapping, res.file, res.name) == ("contact", "mappings/contact.yaml", "complete")


def test_expect_fails_with_expected_and_actual() -> None:
    """A body that differs from `expect` fails, carrying both bodies."""
    wrong = {**GOOD_BODY, "team": "sales"}
    res = run({"input": GOOD_INPUT, "expect": wrong})
    assert not res.passed
    assert res.message == "the rendered body differs"
    assert res.expected == wrong
    assert res.actual == GOOD_BODY


def test_expect_is_exact_not_a_subset() -> None:
    """`expect` with fewer fields than the body fails: it is an exact match."""
    res = run({"input": GOOD_INPUT, "expect": {"title": "Website enquiry: Router down"}})
    assert not res.passed
    assert res.actual == GOOD_BODY


def test_expect_contains_passes_on_the_named_fields() -> None:
    """`expect_contains` checks only the fields it names."""
    res = run({"input": GOOD_INPUT, "expect_contains": {"email_id": "asha@example.com"}})
    assert res.passed


def test_expect_contains_fails_naming_the_fields_that_differ() -> None:
    """A wrong or missing field fails `expect_contains`; the message names them and actual holds their values."""
    res = run({"input": GOOD_INPUT,
               "expect_contains": {"title": "Website enquiry: Router down", "email_id": "ASHA", "priority": "P1"}})
    assert not res.passed
    assert res.message == "fields differ: email_id, priority"
    assert res.expected == {"title": "Website enquiry: Router down", "email_id": "ASHA", "priority": "P1"}
    assert res.actual == {"title": "Website enquiry: Router down", "email_id": "asha@example.com", "priority": None}


def test_expect_contains_tells_a_null_from_a_missing_field() -> None:
    """Expecting a field to be null fails when the field is not in the body at all."""
    res = run({"input": GOOD_INPUT, "expect_contains": {"priority": None}})
    assert not res.passed
    assert res.message == "fields differ: priority"


def test_expect_error_passes_when_the_error_contains_it() -> None:
    """`expect_error` passes when rendering fails with an error containing the text."""
    res = run({"name": "no email", "input": {"payload": {"subject": "x"}},
               "expect_error": "email_id: required (payload.email is missing)"})
    assert res.passed


def test_expect_error_fails_when_it_renders() -> None:
    """An input that renders fails an `expect_error` test, with the rendered body as actual."""
    res = run({"input": GOOD_INPUT, "expect_error": "email_id: required"})
    assert not res.passed
    assert res.message == "expected an error containing 'email_id: required', but it rendered"
    assert res.expected == "email_id: required"
    assert res.actual == GOOD_BODY


def test_expect_error_fails_on_a_different_error() -> None:
    """Another error than the expected one fails, carrying the expected text and the actual error."""
    res = run({"input": {"payload": {"subject": "x"}}, "expect_error": "title: missing"})
    assert not res.passed
    assert res.message.startswith("error: ")
    assert res.expected == "title: missing"
    assert "email_id: required" in res.actual


def test_unexpected_error_fails_with_the_error() -> None:
    """A render error in a test that expects a body fails with the error as message and actual."""
    res = run({"input": {"payload": {"subject": "x"}}, "expect": GOOD_BODY})
    assert not res.passed
    assert res.message.startswith("error: email_id: required")
    assert res.expected is None
    assert "payload.email is missing" in res.actual


def test_expect_skip_passes_when_when_rejects() -> None:
    """`expect_skip` passes when `when` rejects the input."""
    res = run({"input": {"payload": {**GOOD_INPUT["payload"], "category": "spam"}}, "expect_skip": True})
    assert res.passed
    assert res.actual is None


def test_expect_skip_fails_when_it_matches() -> None:
    """`expect_skip` fails when the input matches, showing what it rendered."""
    res = run({"input": GOOD_INPUT, "expect_skip": True})
    assert not res.passed
    assert res.message == "expected `when` to skip this input, but it matched"
    assert res.actual == GOOD_BODY


def test_skipped_input_fails_a_test_expecting_a_body() -> None:
    """An input that `when` skips fails a test that did not expect the skip."""
    res = run({"input": {"payload": {"category": "spam"}}, "expect": GOOD_BODY})
    assert not res.passed
    assert res.message == "`when` skipped this input"


def test_test_without_a_name_is_numbered() -> None:
    """An unnamed test is called `test N`, counting from one."""
    mapping = compile_mapping(HEADER)
    res = mapping_testing.run_test(mapping, 2, msgspec.convert({"input": GOOD_INPUT}, MappingTest), VARS)
    assert res.name == "test 3"
    assert res.passed


def test_test_vars_override_config_vars() -> None:
    """Vars given in a test's input override the config's vars for that test only."""
    res = run({"input": {**GOOD_INPUT, "vars": {"team": "billing"}}, "expect_contains": {"team": "billing"}})
    assert res.passed


def test_test_context_defaults() -> None:
    """A test's event looks like a real one: id, the mapping's first source, a fixed time; input overrides it."""
    mapping = compile_mapping(HEADER)
    given = TestInput(payload={"a": 1}, event={"kind": "form"}, ticket={"id": "T-1"})
    ctx = mapping_testing.context_for(given, mapping, VARS)
    assert ctx["payload"] == {"a": 1}
    assert ctx["headers"] == {}
    assert ctx["vars"] == VARS
    assert ctx["ticket"] == {"id": "T-1"}
    assert ctx["event"]["id"] == "evt_TEST"
    assert ctx["event"]["source"] == "website-contact"
    assert ctx["event"]["kind"] == "form"
    assert ctx["event"]["received_at"] == "2024-01-01T00:00:00+00:00"


def test_test_context_reaches_the_template() -> None:
    """Headers and event fields given in a test's input are what the mapping renders from."""
    text = HEADER.replace('team: "{{ vars.team }}"', 'team: "{{ headers.team }}-{{ event.id }}"')
    res = run({"input": {**GOOD_INPUT, "headers": {"team": "h"}}, "expect_contains": {"team": "h-evt_TEST"}}, text)
    assert res.passed


def test_crashing_filter_fails_the_test_instead_of_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    """A filter that raises something unexpected fails that one test with the error, rather than the whole run."""

    def explode(value: Any) -> Any:
        raise RuntimeError("filter bug")

    monkeypatch.setitem(FILTERS, "explode", explode)
    text = HEADER.replace("transform: [strip, lower]", "transform: [strip, explode]")
    res = run({"input": GOOD_INPUT, "expect": GOOD_BODY}, text)
    assert not res.passed
    assert "RuntimeError: filter bug" in res.message
    assert res.expected is None
    res = run({"input": GOOD_INPUT, "expect_error": "filter bug"}, text)
    assert not res.passed


MAPPING_A = HEADER + """\
tests:
  - name: complete
    input: {payload: {subject: Router down, email: " Asha@Example.com "}}
    expect_contains: {email_id: asha@example.com}
  - name: wrong
    input: {payload: {subject: x, email: a@b.co}}
    expect: {title: nope}
"""

MAPPING_B = """\
name: another
source: partner-api
destination: kapture-support
action: create_ticket
fields:
  title: {from: payload.title, required: true}
tests:
  - input: {payload: {}}
    expect_error: "title: required"
"""


def test_run_tests_runs_every_test_of_every_mapping_in_name_order() -> None:
    """run_tests gives one result per test, mappings by name and tests in file order, failures kept."""
    mappings = MappingSet.build([compile_mapping(MAPPING_A), compile_mapping(MAPPING_B, "another")])
    results = mapping_testing.run_tests(mappings, VARS)
    assert [(r.mapping, r.name, r.passed) for r in results] == [
        ("another", "test 1", True),
        ("contact", "complete", True),
        ("contact", "wrong", False),
    ]
    assert results[2].expected == {"title": "nope"}
    assert results[2].actual == {"title": "Website enquiry: x", "email_id": "a@b.co", "team": "noc"}


def test_run_tests_with_no_tests() -> None:
    """A mapping set without tests gives no results."""
    assert mapping_testing.run_tests(MappingSet.build([compile_mapping(HEADER)]), VARS) == []


def test_shipped_example_mappings_pass_their_tests() -> None:
    """The example mappings shipped with the project pass their own tests against the shipped config."""
    from bridge.app import load_mappings
    from bridge.config import load_config

    config = load_config(None, {}, registries=REGISTRIES)
    results = mapping_testing.run_tests(load_mappings(config), config.vars)
    assert results
    assert [(r.mapping, r.name, r.message) for r in results if not r.passed] == []


# -- the vendor's body, diffs and places --------------------------------------------------------


def compile_with_envelope(text: str) -> CompiledMapping:
    """A mapping whose destination wraps the fields as {"Fields": [{SchemaName, Value}…], "TypeId": "1"}."""

    def envelope(action: str, fields: dict[str, Any], options: Any) -> Any:
        if not fields.get("title"):
            raise MappingError("the vendor needs a non-empty title", path="title")
        return {"TypeId": "1", "Fields": [{"SchemaName": k, "Value": v} for k, v in fields.items()]}

    doc = load_yaml(textwrap.dedent(text), "mappings/contact.yaml")
    mapping, errors = compile_document(doc, "contact", "v1", SOURCES, {
        "kapture-support": Target(frozenset({"create_ticket"}), vendor_body=envelope)})
    assert errors == [] and mapping is not None
    return mapping


ENVELOPE = {"Fields": [{"SchemaName": "title", "Value": "Website enquiry: Router down"},
                       {"SchemaName": "email_id", "Value": "asha@example.com"},
                       {"SchemaName": "team", "Value": "noc"}], "TypeId": "1"}


def test_expect_matches_the_vendors_exact_body_in_any_key_order() -> None:
    """`expect` may be the exact body the vendor is sent (its envelope), key order ignored."""
    mapping = compile_with_envelope(HEADER)
    reordered = {"TypeId": "1", "Fields": [dict(reversed(list(f.items()))) for f in ENVELOPE["Fields"]]}
    assert mapping_testing.run_test(mapping, 0, msgspec.convert({"input": GOOD_INPUT, "expect": reordered},
                                                                MappingTest), VARS).passed


def test_expect_may_also_be_the_bare_fields() -> None:
    """For brevity `expect` may give the fields before the vendor's envelope."""
    mapping = compile_with_envelope(HEADER)
    test = msgspec.convert({"input": GOOD_INPUT, "expect": GOOD_BODY}, MappingTest)
    assert mapping_testing.run_test(mapping, 0, test, VARS).passed


def test_a_wrong_envelope_fails_against_the_vendor_body() -> None:
    """An expected envelope that differs fails, showing the vendor body it was compared with."""
    mapping = compile_with_envelope(HEADER)
    wrong = {**ENVELOPE, "TypeId": "2"}
    res = mapping_testing.run_test(mapping, 0, msgspec.convert({"input": GOOD_INPUT, "expect": wrong}, MappingTest),
                                   VARS)
    assert not res.passed
    assert res.actual == ENVELOPE


def test_expect_error_sees_the_vendors_refusal() -> None:
    """An error the vendor's adapter raises for the fields counts for `expect_error`."""
    mapping = compile_with_envelope(HEADER.replace('title: "Website enquiry: {{ payload.subject }}"',
                                                   'title: {from: payload.subject, default: ""}'))
    test = msgspec.convert({"input": {"payload": {"email": "a@b.io"}}, "expect_error": "needs a non-empty title"},
                           MappingTest)
    assert mapping_testing.run_test(mapping, 0, test, VARS).passed


def test_json_equality_tells_true_from_one() -> None:
    """A body is compared as JSON: true is not 1 and "1" is not 1, but 1 equals 1.0."""
    assert not mapping_testing.same({"a": True}, {"a": 1})
    assert not mapping_testing.same(["1"], [1])
    assert mapping_testing.same({"a": 1, "b": [1.0]}, {"b": [1], "a": 1})


def test_a_failure_is_described_with_its_line_and_a_diff() -> None:
    """A failed test names its file and line, the mapping and the test, and shows a unified diff."""
    mapping = compile_mapping(MAPPING_A)
    results = mapping_testing.run_tests(MappingSet.build([mapping]), VARS)
    assert [r.line for r in results] == [11, 14]
    text = mapping_testing.describe_failure(results[1])
    assert text.splitlines() == [
        "FAIL mappings/contact.yaml:14: contact: wrong",
        "  the rendered body differs",
        "  --- expected",
        "  +++ actual",
        "  @@ -1,3 +1,5 @@",
        "   {",
        '  -  "title": "nope"',
        '  +  "email_id": "a@b.co",',
        '  +  "team": "noc",',
        '  +  "title": "Website enquiry: x"',
        "   }",
    ]


def test_an_error_failure_is_described_with_the_error() -> None:
    """A test failing on an error shows what was expected and the error that came instead."""
    res = run({"name": "oops", "input": {"payload": {"subject": "x"}}, "expect_error": "title: missing"})
    assert mapping_testing.describe_failure(res).splitlines() == [
        "FAIL mappings/contact.yaml: contact: oops",
        "  error: email_id: required (payload.email is missing)",
        "  expected: 'title: missing'",
        "  actual:   'email_id: required (payload.email is missing)'",
    ]
