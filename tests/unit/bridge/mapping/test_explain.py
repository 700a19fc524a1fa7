"""`explain`: per field the source, raw value, each transform step, and whether a default, omit, null or map
entry was used and why; and it always agrees with `render`."""

from __future__ import annotations

import textwrap
from typing import Any

from hypothesis import HealthCheck, given, settings

from bridge.errors import MappingError
from bridge.mapping.compiler import CompiledMapping
from bridge.mapping.mappingset import compile_document
from bridge.mapping.paths import MISSING
from bridge.mapping.trace import OMIT, format_trace
from bridge.yamlfile import load_yaml
from tests.unit.bridge.mapping.test_safety import EVERYTHING, payloads

LSQ = """\
name: contact-to-lsq
source: s
when: "payload.category is not defined or payload.category != 'spam'"
destination: d
action: create_ticket
fields:
  LeadDetail.EmailAddress: {from: payload.email, required: true, transform: [strip, lower]}
  Title: "Website enquiry: {{ payload.subject }}"
  Description: {from: payload.message, default: ""}
  Priority: {from: payload.priority, map: {high: High, low: Low}, default: Medium}
  Phone: {from: payload.phone, on_missing: omit}
  Channel: Web
"""


def compiled(text: str) -> CompiledMapping:
    doc = load_yaml(textwrap.dedent(text), "m.yaml")
    mapping, errors = compile_document(doc, "m", "v1", {"s"}, {"d": frozenset({"create_ticket"})})
    assert errors == [] and mapping is not None
    return mapping


def ctx(payload: dict[str, Any]) -> dict[str, Any]:
    return {"payload": payload, "headers": {}, "event": {"id": "evt_1"}, "vars": {"brand": "Acme"}}


def test_each_transform_step_is_recorded() -> None:
    """A field's trace names its source path, its raw value and the value after each transform."""
    trace = compiled(LSQ).explain(ctx({"email": " A@B.io ", "subject": "x"}))
    email = trace.fields[0]
    assert (email.name, email.source, email.raw) == ("LeadDetail.EmailAddress", "from payload.email", " A@B.io ")
    assert email.steps == [("strip", "A@B.io"), ("lower", "a@b.io")]
    assert email.value == "a@b.io"
    assert email.fallback == ""


def test_a_default_used_for_a_missing_value_says_so_and_why() -> None:
    """A missing value replaced by the default is marked as a default, with the missing path as the reason."""
    trace = compiled(LSQ).explain(ctx({"email": "a@b.io", "subject": "x"}))
    description = trace.fields[2]
    assert description.raw is MISSING
    assert (description.fallback, description.value) == ("default", "")
    assert description.reason == "payload.message is missing (on_missing: default, implied by `default:`)"
    text = format_trace(trace)
    assert "      default:  '' used, because payload.message is missing" in text


def test_a_value_not_in_the_map_says_the_default_stood_in() -> None:
    """A value the map does not know is shown with the map look-up and the default that stood in."""
    priority = compiled(LSQ).explain(ctx({"email": "a@b.io", "subject": "x", "priority": "urgent"})).fields[3]
    assert priority.mapped == "'urgent' is not in the map"
    assert (priority.fallback, priority.reason, priority.value) == ("default", "'urgent' is not in the map", "Medium")
    known = compiled(LSQ).explain(ctx({"email": "a@b.io", "subject": "x", "priority": "HIGH"})).fields[3]
    assert (known.mapped, known.fallback, known.value) == ("'HIGH' -> 'High'", "", "High")


def test_an_omitted_field_is_shown_and_left_out_of_the_body() -> None:
    """An omitted field is traced as omitted, and the traced body has no such key."""
    trace = compiled(LSQ).explain(ctx({"email": "a@b.io", "subject": "x"}))
    phone = trace.fields[4]
    assert (phone.fallback, phone.value) == ("omit", OMIT)
    assert trace.body is not None and "Phone" not in trace.body
    assert "      omit:     used, because payload.phone is missing (on_missing: omit)" in format_trace(trace)


def test_a_failing_field_is_the_traces_error() -> None:
    """A field that fails carries its error, and so does the whole trace, with no body."""
    trace = compiled(LSQ).explain(ctx({"subject": "x"}))
    assert trace.fields[0].error == "LeadDetail.EmailAddress: required (payload.email is missing)"
    assert trace.error == trace.fields[0].error
    assert trace.body is None
    assert "ERROR:    LeadDetail.EmailAddress: required (payload.email is missing)" in format_trace(trace)


def test_a_skipped_event_is_traced_as_skipped() -> None:
    """When `when` rejects the event, the trace says so and renders no field."""
    trace = compiled(LSQ).explain(ctx({"email": "a@b.io", "category": "spam"}))
    assert trace.matched is False
    assert trace.fields == []
    assert "-> skipped" in format_trace(trace)


def test_nested_fields_are_traced_member_by_member() -> None:
    """Objects and lists show each member's own trace."""
    mapping = compiled(LSQ + '  customer: {object: {name: "{{ payload.name }}", tags: [web]}}\n')
    customer = mapping.explain(ctx({"email": "a@b.io", "subject": "x", "name": "Asha"})).fields[-1]
    assert [c.name for c in customer.children] == ["customer.name", "customer.tags"]
    assert customer.value == {"name": "Asha", "tags": ["web"]}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=payloads)
def test_explain_agrees_with_render_on_any_payload(payload: dict[str, Any]) -> None:
    """For any payload, explain's body equals render's, or both fail with the same error."""
    mapping = compiled(EVERYTHING)
    trace = mapping.explain(ctx(payload))
    error: str | None = None
    body: Any = None
    try:
        if mapping.matches(ctx(payload)):
            body = mapping.render(ctx(payload))
        else:
            assert trace.matched is False
    except MappingError as exc:
        error = str(exc)
    assert trace.error == error
    assert trace.body == body
