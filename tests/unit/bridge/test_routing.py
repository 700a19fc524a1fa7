"""bridge/routing.py: from an event to its deliveries, a render failure costing one dead delivery."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import structlog

from bridge import conversations
from bridge.conversations import MAX_SENDER_CHARS, message_sender
from bridge.events import Event
from bridge.logs import mask_personal_data
from bridge.mapping.compiler import CompiledMapping
from bridge.mapping.filters import FILTERS
from bridge.mapping.mappingset import MappingSet, compile_document
from bridge.routing import Rendered, hold_logs, plan_deliveries, release_logs, render_context, render_event
from bridge.yamlfile import load_yaml

SOURCES = {"website-contact", "partner-api"}
DESTINATIONS = {"kapture-support": frozenset({"create_ticket"})}

CONTACT = """\
name: contact-to-kapture
source: website-contact
when: "payload.category is not defined or payload.category != 'spam'"
destination: kapture-support
action: create_ticket
options: {queue: support}
fields:
  title: "Website enquiry: {{ payload.subject }}"
  email_id: {from: payload.email, required: true, transform: [strip, lower]}
  team: "{{ vars.team }}"
"""


BUGGY = """\
name: buggy
source: website-contact
destination: kapture-support
action: create_ticket
fields:
  title: {from: payload.subject, transform: [explode]}
"""
"""A mapping whose transform raises (with the `exploding_filter` fixture)."""


def compile_mapping(text: str, stem: str = "m", version: str = "v1") -> CompiledMapping:
    doc = load_yaml(textwrap.dedent(text), f"{stem}.yaml")
    mapping, errors = compile_document(doc, stem, version, SOURCES, DESTINATIONS)
    assert errors == []
    assert mapping is not None
    return mapping


def mapping_set(*texts: str) -> MappingSet:
    return MappingSet.build([compile_mapping(t, f"m{i}", f"v{i}") for i, t in enumerate(texts)])


def event(payload: dict[str, Any], *, source: str = "website-contact", spam: bool = False,
          headers: dict[str, str] | None = None) -> Event:
    return Event.new(source=source, kind="form", channel="form", payload=payload, headers=headers, spam=spam)


GOOD = {"subject": "Router down", "email": " Asha@Example.com "}
VARS = {"team": "noc"}


def test_pending_delivery_with_rendered_body() -> None:
    """A matching mapping gives one pending delivery carrying the rendered body and the mapping's identity."""
    mappings = mapping_set(CONTACT)
    deliveries, errors = plan_deliveries(mappings, event(GOOD), VARS)
    assert errors == []
    [d] = deliveries
    assert d.status == "pending"
    assert d.error is None
    assert d.body == {"title": "Website enquiry: Router down", "email_id": "asha@example.com", "team": "noc"}
    assert d.mapping == "contact-to-kapture"
    assert d.mapping_version == "v0"
    assert d.destination == "kapture-support"
    assert d.action == "create_ticket"
    assert d.options == {"queue": "support"}
    assert d.id.startswith("dlv_")


def test_each_delivery_gets_its_own_id() -> None:
    """Two events through the same mapping give deliveries with different ids."""
    mappings = mapping_set(CONTACT)
    first, _ = plan_deliveries(mappings, event(GOOD), VARS)
    second, _ = plan_deliveries(mappings, event(GOOD), VARS)
    assert first[0].id != second[0].id


def test_when_false_gives_no_delivery() -> None:
    """An event the mapping's `when` rejects gives no delivery and no error."""
    mappings = mapping_set(CONTACT)
    assert plan_deliveries(mappings, event({**GOOD, "category": "spam"}), VARS) == ([], [])


def test_render_error_gives_a_dead_delivery_naming_the_field() -> None:
    """A required field that is missing gives a dead delivery whose error names the field and why."""
    mappings = mapping_set(CONTACT)
    with structlog.testing.capture_logs() as logs:
        deliveries, errors = plan_deliveries(mappings, event({"subject": "x"}), VARS)
    [d] = deliveries
    assert d.status == "dead"
    assert d.body is None
    assert d.error is not None
    assert d.error.startswith("email_id: ")
    assert "payload.email is missing" in d.error
    assert errors == [d.error]
    assert d.mapping == "contact-to-kapture"
    assert d.destination == "kapture-support"
    [entry] = [e for e in logs if e["event"] == "routing.render_failed"]
    assert entry["mapping"] == "contact-to-kapture"
    assert entry["error"] == d.error


def test_map_error_names_the_field_and_value() -> None:
    """A value missing from a field's map is a dead delivery naming the field and the value."""
    mappings = mapping_set("""\
        source: website-contact
        destination: kapture-support
        action: create_ticket
        fields:
          title: x
          priority: {from: payload.priority, map: {high: P1, low: P3}}
        """)
    [d], errors = plan_deliveries(mappings, event({"priority": "urgent"}), {})
    assert d.status == "dead"
    assert d.error is not None
    assert d.error.startswith("priority: ")
    assert "'urgent'" in d.error
    assert errors == [d.error]


@pytest.mark.parametrize(("value", "shown"), [
    ('"asha rao"@example.com', """'"a***"@example.com'"""),
    ("asha@[127.0.0.1]", "'a***@[127.0.0.1]'"),
    ("+9198765\x0043210", "'+**********10'"),
    ("+91 98765\u200b43210", "'+**********10'"),
])
def test_a_render_failure_is_logged_with_the_value_it_quotes_masked(value: str, shown: str) -> None:
    """`routing.render_failed` quotes the value that failed (here one missing from a map): an address with a quoted
    local part or an address literal, or a phone number with a control or invisible character inside (quoted as an
    escape), is masked in the line the log writes."""
    mappings = mapping_set("""\
        source: website-contact
        destination: kapture-support
        action: create_ticket
        fields:
          title: x
          priority: {from: payload.priority, map: {high: P1}}
        """)
    with structlog.testing.capture_logs() as logs:
        plan_deliveries(mappings, event({"priority": value}), {})
    [entry] = [e for e in logs if e["event"] == "routing.render_failed"]
    written = mask_personal_data(None, "warning", dict(entry))["error"]
    assert written.startswith(f"priority: {shown} is not in the map"), written


def test_when_error_gives_a_dead_delivery_naming_the_mapping() -> None:
    """A `when` that fails on this event gives a dead delivery whose error names the mapping."""
    mappings = mapping_set("""\
        name: counted
        source: website-contact
        when: "payload.count > 3"
        destination: kapture-support
        action: create_ticket
        fields:
          title: x
        """)
    [d], errors = plan_deliveries(mappings, event({"count": "many"}), {})
    assert d.status == "dead"
    assert d.error is not None
    assert d.error.startswith("counted: when: ")
    assert errors == [d.error]


@pytest.fixture
def exploding_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A filter with a bug in it: it raises something no render step expects."""

    def explode(value: Any) -> Any:
        raise RuntimeError("filter bug")

    monkeypatch.setitem(FILTERS, "explode", explode)


@pytest.mark.usefixtures("exploding_filter")
def test_unexpected_exception_in_a_filter_gives_a_dead_delivery() -> None:
    """A filter that crashes costs its delivery, which is dead with the error, instead of raising."""
    mappings = mapping_set(BUGGY)
    with structlog.testing.capture_logs() as logs:
        [d], errors = plan_deliveries(mappings, event(GOOD), {})
    assert d.status == "dead"
    assert d.body is None
    assert d.error == "buggy: internal error while rendering: RuntimeError: filter bug"
    assert errors == [d.error]
    [crash] = [e for e in logs if e["event"] == "routing.render_crashed"]
    assert crash["log_level"] == "error"
    assert crash["mapping"] == "buggy"


@pytest.mark.usefixtures("exploding_filter")
def test_held_render_failures_are_logged_when_kept_and_dropped_when_begun_again() -> None:
    """Held (hold_logs), a plan's render failures are logged at `release_logs(emit=True)` (a crash with its exception,
    whose traceback the line's formatter writes though it is logged after its `except`), and not at all at
    `release_logs(emit=False)` (the plan is begun again elsewhere); with nothing held they are logged at once."""
    for emit in (False, True):
        with structlog.testing.capture_logs() as logs:
            held = hold_logs()
            plan_deliveries(mapping_set(BUGGY), event(GOOD), {})
            assert logs == []
            release_logs(held, emit=emit)
        assert [(e["event"], e["log_level"]) for e in logs] == (
            [] if not emit else [("routing.render_crashed", "error"), ("routing.render_failed", "warning")])
    crash = logs[0]
    assert crash["log_level"] == "error" and isinstance(crash["exc_info"], RuntimeError)
    formatted = structlog.processors.format_exc_info(None, "error", dict(crash))
    assert "RuntimeError: filter bug" in formatted["exception"] and "Traceback" in formatted["exception"]
    with structlog.testing.capture_logs() as logs:
        plan_deliveries(mapping_set(BUGGY), event(GOOD), {})
    assert [(e["event"], e["log_level"]) for e in logs] == [("routing.render_crashed", "error"),
                                                            ("routing.render_failed", "warning")]


@pytest.mark.usefixtures("exploding_filter")
def test_crash_in_one_mapping_does_not_cost_the_others() -> None:
    """When one mapping of a source crashes, the source's other mappings still give pending deliveries."""
    mappings = mapping_set(CONTACT, BUGGY)
    deliveries, errors = plan_deliveries(mappings, event(GOOD), VARS)
    assert [(d.mapping, d.status) for d in deliveries] == [("buggy", "dead"), ("contact-to-kapture", "pending")]
    assert len(errors) == 1


def test_spam_events_get_no_deliveries() -> None:
    """An event flagged as spam is stored but routed nowhere, with no errors."""
    mappings = mapping_set(CONTACT)
    assert plan_deliveries(mappings, event(GOOD, spam=True), VARS) == ([], [])


def test_spam_events_are_not_even_rendered() -> None:
    """A spam event that would fail to render gives no dead delivery either."""
    mappings = mapping_set(CONTACT)
    assert plan_deliveries(mappings, event({}, spam=True), VARS) == ([], [])


def test_source_without_mappings_gets_no_deliveries() -> None:
    """An event from a source no mapping takes gives no deliveries."""
    mappings = mapping_set(CONTACT)
    assert plan_deliveries(mappings, event(GOOD, source="partner-api"), VARS) == ([], [])


def test_every_mapping_of_the_source_gets_a_delivery() -> None:
    """Each mapping that takes the event's source and matches gives its own delivery."""
    mappings = mapping_set(CONTACT, """\
        name: also
        source: [partner-api, website-contact]
        destination: kapture-support
        action: create_ticket
        fields:
          title: "{{ payload.subject }}"
        """)
    deliveries, errors = plan_deliveries(mappings, event(GOOD), VARS)
    assert errors == []
    assert sorted(d.mapping for d in deliveries) == ["also", "contact-to-kapture"]
    assert all(d.status == "pending" for d in deliveries)
    [also] = [d for d in deliveries if d.mapping == "also"]
    assert also.body == {"title": "Router down"}


def test_render_context_exposes_payload_headers_event_and_vars() -> None:
    """Mappings see the payload, the kept headers, the event's own fields and the config vars."""
    mappings = mapping_set("""\
        source: website-contact
        destination: kapture-support
        action: create_ticket
        fields:
          title: "{{ event.source }}/{{ event.channel }}/{{ headers['x-form'] }}/{{ vars.team }}/{{ payload.a }}"
          ref: "{{ event.id }}"
        """)
    ev = event({"a": 1}, headers={"x-form": "contact"})
    [d], _ = plan_deliveries(mappings, ev, VARS)
    assert d.body == {"title": "website-contact/form/contact/noc/1", "ref": ev.id}
    ctx = render_context(ev, VARS)
    assert set(ctx) == {"payload", "headers", "event", "vars"}
    assert ctx["event"]["received_at"] == ev.received_at.isoformat()


@pytest.mark.usefixtures("exploding_filter")
def test_render_event_is_skipped_a_body_or_an_error_never_a_raise() -> None:
    """render_event, the one render path of intake and replay --rerender, skips, renders, or names the failure."""
    contact = compile_mapping(CONTACT)
    buggy = compile_mapping(BUGGY)
    good = event(GOOD)
    assert render_event(contact, render_context(event({**GOOD, "category": "spam"}), VARS), "evt_1") \
        == Rendered(skipped=True)
    assert render_event(contact, render_context(good, VARS), good.id) == Rendered(body={
        "title": "Website enquiry: Router down", "email_id": "asha@example.com", "team": "noc"})
    missing = render_event(contact, render_context(event({"subject": "x"}), VARS), "evt_2")
    assert (missing.skipped, missing.body) == (False, None)
    assert missing.error is not None and missing.error.startswith("email_id: required")
    assert render_event(buggy, render_context(good, VARS), good.id) == Rendered(
        error="buggy: internal error while rendering: RuntimeError: filter bug")


THREADED_MAIL = """
name: mail
source: website-contact
destination: kapture-support
action: create_ticket
fields:
  title: "{{ payload.subject }}"
follow_up:
  action: create_ticket
  fields: {title: "{{ payload.subject }}"}
"""


def test_a_key_any_sender_may_write_joins_nothing_without_a_sender() -> None:
    """An email-shaped message naming no sender (no `from`) stands alone: its References or `[#id]` token, which
    anyone may write, joins no thread (a conversation opened without a sender keeps "", never matched)."""
    mappings = mapping_set(THREADED_MAIL)
    mail = {"subject": "re [#713]", "message_id": "<m2@x.io>", "references": ["<m1@x.io>"]}
    webhook = Event.new(source="website-contact", kind="json", channel="webhook", payload=mail)
    [alone], _ = plan_deliveries(mappings, webhook, VARS)
    assert (alone.conversation, alone.known_ticket, alone.sender) == (None, None, None)
    [joined], _ = plan_deliveries(mappings, Event.new(source="website-contact", kind="json", channel="webhook",
                                                      payload={**mail, "from": " Asha@Example.com "}), VARS)
    assert (joined.conversation_key, joined.sender, joined.sender_checked) == ("ticket:713", "asha@example.com", True)


def test_a_json_senders_display_name_is_not_part_of_the_sender() -> None:
    """A JSON source's `from` is compared as the email handlers give it: the bare address, lower-cased, so
    `Bob <Bob@X.io>` and `bob@x.io` are one sender (one conversation), and a value naming no address is kept as
    written (trimmed, lower-cased)."""
    mappings = mapping_set(THREADED_MAIL)

    def sender_of(from_: str) -> str | None:
        payload = {"subject": "re", "message_id": "<m2@x.io>", "references": ["<m1@x.io>"], "from": from_}
        [d], _ = plan_deliveries(mappings, Event.new(source="website-contact", kind="json", channel="webhook",
                                                     payload=payload), VARS)
        return d.sender

    assert {sender_of(f) for f in ("Bob <Bob@X.io>", "bob@x.io", ' "Bob, B." <BOB@x.IO> ', "<bob@x.io>")} == {
        "bob@x.io"}
    assert sender_of(" Helpdesk Bot ") == "helpdesk bot"
    assert sender_of("John Doe, Support <John@X.example>") == "john@x.example"  # a name's unquoted comma
    assert sender_of("'John@X.example' <John@X.example>") == "john@x.example"  # an address as the name


@pytest.mark.parametrize("from_", [
    "x@evil.example, <CEO@corp.example>",  # several mailboxes, one in angle brackets
    "ceo@corp.example <x@evil.example>, <ceo@corp.example>",  # several mailboxes of two addresses
    "=?utf-8?q?=3Cceo=40corp.example=3E?= (via a@evil.example)",  # an address only inside an encoded word
])
def test_a_json_from_naming_no_one_mailbox_is_not_read_as_an_address(from_: str) -> None:
    """A JSON source's `from` is read as the email handlers read a From: one of several mailboxes, or an address
    only an encoded word holds, is not the sender; the value is kept as written, which is no one's address."""
    assert message_sender({"from": from_}) == from_.strip().lower()


def test_a_json_from_longer_than_a_header_line_is_not_parsed_as_an_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """A `from` longer than MAX_SENDER_CHARS (RFC 5322's 998-character line) is no one sender's address: it is not
    parsed (which costs time in proportion to its length, up to the 256 KiB of an address field) and is kept as
    its trimmed, lower-cased text; one at the limit is still read as an address."""
    parsed: list[int] = []
    real = conversations.email_sender

    def counting(value: str) -> tuple[str | None, str | None]:
        parsed.append(len(value))
        return real(value)

    monkeypatch.setattr(conversations, "email_sender", counting)
    at_limit = "B" * (MAX_SENDER_CHARS - len(" <Bob@X.io>")) + " <Bob@X.io>"
    assert message_sender({"from": at_limit}) == "bob@x.io"
    longer = ";" * 200_000 + " <Bob@X.io> "
    assert message_sender({"from": "B" + at_limit}) == "b" + at_limit.lower()
    assert message_sender({"from": longer}) == longer.strip().lower()
    assert parsed == [MAX_SENDER_CHARS]
