"""Requests under the offload threshold whose parse would hold the event loop for tens to hundreds of
milliseconds, each through the whole app over HTTP: a Postmark From of 8 KiB or To of 62 KB of "[." (which the
standard library's address parser reads at microseconds a character), a Mailgun urlencoded `body-mime` whose line breaks
arrive as %0D%0A, an SES notification whose raw message is base64. Each is parsed in the parser thread, as
the thread the costly work ran in shows, and answered as any other."""

from __future__ import annotations

import base64
import threading
from email.utils import getaddresses
from typing import Any
from urllib.parse import urlencode

import pytest
from structlog.testing import capture_logs

from bridge import intake
from handlers import email as email_module
from handlers import formdata
from handlers.limits import MAX_FROM_CHARS
from tests.acceptance.test_providers import CONFIG, MAPPINGS, SECRETS, S, providers_client
from tests.conftest import AppClient, ConfigFactory
from tests.fixtures.many_line_forms import MANY_LINE_FORMS
from tests.fixtures.providers import basic, compact, load, mailgun_fields, ses_raw

HOSTILE = "[." * 31_000  # 62 KB: the body stays under OFFLOAD_BYTES


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient) -> Any:
    return await providers_client(bridge_client, write_config(CONFIG, MAPPINGS, SECRETS))


@pytest.fixture
def threads(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """The threads the standard library's address parser and the MIME parse's part check ran in."""
    seen: dict[str, list[str]] = {"addresses": [], "mime": []}
    check_parts = email_module.check_parts

    def addresses(texts: list[str]) -> list[tuple[str, str]]:
        seen["addresses"].append(threading.current_thread().name)
        return getaddresses(texts)

    def parts(*args: Any) -> None:
        seen["mime"].append(threading.current_thread().name)
        check_parts(*args)

    monkeypatch.setattr(email_module, "getaddresses", addresses)
    monkeypatch.setattr(email_module, "check_parts", parts)
    return seen


def in_parser(names: list[str]) -> bool:
    return bool(names) and all(name.startswith("ticketbridge-parse") for name in names)


@pytest.mark.parametrize(("field", "value"), [("From", HOSTILE[:MAX_FROM_CHARS]), ("To", HOSTILE)])
async def test_a_postmark_address_field_of_many_kb_is_parsed_in_the_parser_thread(
        client: Any, threads: dict[str, list[str]], field: str, value: str) -> None:
    mail = load("postmark/inbound.json")
    mail[field] = value
    mail.pop(f"{field}Full", None)
    body = compact(mail)
    assert not intake.offloaded(body)
    with capture_logs() as logs:
        resp = await post_postmark(client, body)
    assert resp.status in (202, 422), await resp.text()
    assert in_parser(threads["addresses"]), threads
    assert [e["reason"] for e in logs if e["event"] == "intake.parse_offloaded"] == [
        f"the {field} field is read by the full address parser"]


async def test_a_from_longer_than_any_mailbox_is_a_413_naming_the_field_and_the_cap(
        client: Any, threads: dict[str, list[str]]) -> None:
    """A From is one mailbox: 62 KB of one is refused before it is parsed, the answer naming the cap."""
    mail = load("postmark/inbound.json")
    mail["From"] = HOSTILE
    mail.pop("FromFull")
    resp = await post_postmark(client, compact(mail))
    assert resp.status == 413
    assert (f"the From field is {len(HOSTILE)} characters, at most {MAX_FROM_CHARS}"
            in (await resp.json())["error"])
    assert threads["addresses"] == []


async def post_postmark(client: Any, body: bytes) -> Any:
    return await client.post("/hooks/postmark", data=body, headers={
        "Content-Type": "application/json", "Authorization": basic("postmark", S["POSTMARK_PW"])})


def multipart_message(parts: int, from_: str = "Asha <asha@example.com>") -> bytes:
    body = "".join("--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(parts))
    return (f'From: {from_}\r\nTo: support@acme.test\r\nSubject: parts\r\nMessage-ID: <parts@example.com>\r\n'
            f'Content-Type: multipart/mixed; boundary="b"\r\n\r\n{body}--b--\r\n').encode()


@pytest.mark.parametrize(("parts", "from_", "costly"), [(40, "Asha <asha@example.com>", "mime"),
                                                        (1, HOSTILE[:MAX_FROM_CHARS], "addresses")],
                         ids=["many_parts", "hostile_from"])
async def test_a_mailgun_urlencoded_body_mime_is_parsed_in_the_parser_thread(
        client: Any, threads: dict[str, list[str]], parts: int, from_: str, costly: str) -> None:
    """The urlencoded form carries the message's line breaks as %0D%0A: its delimiter lines are counted as
    such (the whole parse is placed in the thread); a From the fast path cannot read sends the parse there
    once met (the message's cheap MIME parse was begun on the loop, and is done again)."""
    fields = {**mailgun_fields(S["MAILGUN_KEY"]), "body-mime": multipart_message(parts, from_).decode()}
    body = urlencode(fields).encode()
    assert len(body) < intake.OFFLOAD_BYTES
    resp = await client.post("/hooks/mailgun", data=body,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status in (202, 422), await resp.text()
    assert in_parser(threads[costly]), threads


async def test_an_ses_base64_message_of_many_parts_is_parsed_in_the_parser_thread(
        client: Any, threads: dict[str, list[str]]) -> None:
    """A look at the body sees no delimiter line in base64: the decoded message's own count sends it off."""
    raw = multipart_message(40)
    assert b"\n--" in raw and b"\n--" not in base64.b64encode(raw)
    body = compact(ses_raw(raw))
    assert not intake.offloaded(body)
    resp = await client.post("/hooks/ses", data=body, headers={"Content-Type": "text/plain; charset=UTF-8"})
    assert resp.status == 202, await resp.text()
    assert in_parser(threads["mime"]), threads


FORM_CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
sources:
  contact: {kind: form}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""
FORM_MAPPINGS = {"contact": """
    source: contact
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.a }}"
"""}


@pytest.fixture
def form_parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The thread of each multipart parse of a form body (handlers/formdata.py's `multipart_parts`)."""
    seen: list[str] = []
    real = formdata.multipart_parts

    def recorded(*args: Any) -> Any:
        seen.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(formdata, "multipart_parts", recorded)
    return seen


@pytest.mark.parametrize(("body", "status"), MANY_LINE_FORMS.values(), ids=MANY_LINE_FORMS)
async def test_a_public_forms_multipart_body_of_many_lines_is_parsed_in_the_parser_thread(
        write_config: ConfigFactory, bridge_client: AppClient, form_parses: list[str], body: bytes,
        status: int) -> None:
    """Each is under the size that places a parse, with one delimiter line: its parse is begun on the loop, stops
    before the email package's parser reads its lines (`intake.parse_offloaded`, with the reason), and is done in
    the parser thread, which answers as ever."""
    assert not intake.offloaded(body)
    client = await bridge_client(write_config(FORM_CONFIG, FORM_MAPPINGS))
    with capture_logs() as logs:
        resp = await client.post("/hooks/contact", data=body,
                                 headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert resp.status == status, await resp.text()
    assert form_parses[0] == "MainThread" and in_parser(form_parses[1:]), form_parses
    [offloaded] = [e for e in logs if e["event"] == "intake.parse_offloaded"]
    assert "multipart body" in offloaded["reason"], offloaded
