"""Every inbound provider through the whole app: a correctly signed request becomes normalised events and
deliveries; a forged or stale one is refused with 401 and stored nowhere; a replay is a duplicate; each
handshake is answered as the provider requires."""

from __future__ import annotations

import copy
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge.config import Config
from bridge.store.base import DeliveryFilter
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.fixtures.providers import (
    ASHA_EMAIL,
    NOW,
    RESEND_API,
    TOPIC,
    FakeResendApi,
    FakeSns,
    basic,
    compact,
    google_forms_signature,
    hub_signature,
    load,
    mailersend_signature,
    mailgun_multipart,
    mandrill_request,
    multipart,
    postal_headers,
    postal_public_key,
    sendgrid_multipart,
    ses_notification,
    slack_headers,
    standard_webhooks_headers,
    svix_headers,
    tally_signature,
    twilio_request,
    typeform_signature,
    webflow_headers,
    without_provider,
)

SECRETS = {
    "MAILGUN_KEY": "key-3ax6xnjp29jd6fds4gc373sgvjxteol0", "SENDGRID_PW": "sg-parse-pw", "POSTMARK_PW": "pm-pw",
    "CLOUDMAILIN_PW": "cm-pw", "TYPEFORM_SECRET": "tf-secret", "TALLY_SECRET": "tally-secret",
    "WEBFLOW_SECRET": "wf-client-secret", "JOTFORM_SECRET": "jf-url-secret", "GOOGLE_FORMS_SECRET": "gf-secret",
    "TWILIO_TOKEN": "12345678901234567890123456789012", "META_APP_SECRET": "meta-app-secret",
    "META_VERIFY_TOKEN": "meta-verify-token", "SLACK_SECRET": "8f742231b10e8888abcd99yyyzzz85a5",
    "TELEGRAM_TOKEN": "tg_Secret-Token_123", "INTERCOM_SECRET": "intercom-client-secret",
    "PARTNER_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "BREVO_TOKEN": "brevo-url-token",
    "MAILJET_PW": "mj-parse-pw", "MANDRILL_KEY": "zDQ9cJ7mIkIDBZ5eOFEg3A", "SPARKPOST_TOKEN": "sp-relay-token",
    "RESEND_SECRET": "whsec_cmVzZW5kLXNpZ25pbmctc2VjcmV0", "RESEND_API_KEY": "re_N9f8TbDq_resend",
    "MAILERSEND_SECRET": "ms-inbound-secret",
}
POSTAL_KEY = postal_public_key()
S = SECRETS
PUBLIC_TWILIO = "https://bridge.example.com/hooks/twilio"
PUBLIC_MANDRILL = "https://bridge.example.com/hooks/mandrill"

CONFIG = f"""
store: {{url: "sqlite:///var/bridge.db"}}
sources:
  mailgun: {{kind: mailgun, signing_key: "${{MAILGUN_KEY}}"}}
  sendgrid: {{kind: sendgrid, auth: {{basic: {{username: sendgrid, password: "${{SENDGRID_PW}}"}}}}}}
  postmark: {{kind: postmark, auth: {{basic: {{username: postmark, password: "${{POSTMARK_PW}}"}}}}}}
  ses: {{kind: ses, topic_arns: ["{TOPIC}"]}}
  cloudmailin: {{kind: cloudmailin, auth: {{basic: {{username: cloudmailin, password: "${{CLOUDMAILIN_PW}}"}}}}}}
  brevo: {{kind: brevo, token: "${{BREVO_TOKEN}}"}}
  mailjet: {{kind: mailjet, auth: {{basic: {{username: mailjet, password: "${{MAILJET_PW}}"}}}}}}
  mandrill: {{kind: mandrill, webhook_key: "${{MANDRILL_KEY}}", public_url: "{PUBLIC_MANDRILL}"}}
  sparkpost: {{kind: sparkpost, auth_token: "${{SPARKPOST_TOKEN}}"}}
  resend: {{kind: resend, secret: "${{RESEND_SECRET}}", api_key: "${{RESEND_API_KEY}}", api_url: "{RESEND_API}"}}
  mailersend: {{kind: mailersend, secret: "${{MAILERSEND_SECRET}}"}}
  postal: {{kind: postal, public_key: "{POSTAL_KEY}"}}
  typeform: {{kind: typeform, secret: "${{TYPEFORM_SECRET}}"}}
  tally: {{kind: tally, secret: "${{TALLY_SECRET}}"}}
  webflow: {{kind: webflow, secret: "${{WEBFLOW_SECRET}}"}}
  jotform: {{kind: jotform, secret: "${{JOTFORM_SECRET}}"}}
  google-forms:
    kind: json
    dedup: payload.provider.response_id
    hmac: {{secret: "${{GOOGLE_FORMS_SECRET}}", header: X-Signature, algorithm: sha256, encoding: hex}}
  twilio: {{kind: twilio, auth_token: "${{TWILIO_TOKEN}}", public_url: "{PUBLIC_TWILIO}"}}
  whatsapp: {{kind: whatsapp, app_secret: "${{META_APP_SECRET}}", verify_token: "${{META_VERIFY_TOKEN}}"}}
  slack: {{kind: slack, signing_secret: "${{SLACK_SECRET}}"}}
  telegram: {{kind: telegram, secret_token: "${{TELEGRAM_TOKEN}}"}}
  intercom: {{kind: intercom, secret: "${{INTERCOM_SECRET}}"}}
  partner: {{kind: standard-webhooks, secret: "${{PARTNER_SECRET}}"}}
  svix: {{kind: standard-webhooks, secret: "${{PARTNER_SECRET}}"}}
destinations:
  kapture: {{vendor: kapture, sandbox: true, retry: {{schedule: [50ms]}}}}
"""

MAPPINGS = {
    "email": """
        source: [mailgun, sendgrid, postmark, ses, cloudmailin, brevo, mailjet, mandrill, sparkpost, resend,
                 mailersend, postal]
        destination: kapture
        action: create_ticket
        fields:
          title: "{{ payload.subject }}"
          email_id: {from: payload.from, required: true}
          ticket_details: {from: payload.stripped_text}
    """,
    "forms": """
        source: [typeform, tally, webflow, jotform, google-forms]
        destination: kapture
        action: create_ticket
        fields:
          title: "Form from {{ event.source }}"
    """,
    "chat": """
        source: [twilio, whatsapp, slack, telegram, intercom]
        destination: kapture
        action: create_ticket
        fields:
          title: "Chat from {{ payload.from }}"
          ticket_details: "{{ payload.text or '' }}"
    """,
    "partner": """
        source: [partner, svix]
        destination: kapture
        action: create_ticket
        fields:
          title: "{{ payload.type }}"
    """,
}

Request = tuple[str, bytes, dict[str, str]]  # path, body, headers
JSON = {"Content-Type": "application/json"}


def _json(source: str, data: Any, headers: dict[str, str]) -> Request:
    return f"/hooks/{source}", compact(data), {**JSON, **headers}


def mailgun(key: str = S["MAILGUN_KEY"], timestamp: int = NOW) -> Request:
    body, ctype = mailgun_multipart(key, timestamp=timestamp)
    return "/hooks/mailgun", body, {"Content-Type": ctype}


def sendgrid(password: str = S["SENDGRID_PW"]) -> Request:
    body, ctype = sendgrid_multipart()
    return "/hooks/sendgrid", body, {"Content-Type": ctype, "Authorization": basic("sendgrid", password)}


def postmark(password: str = S["POSTMARK_PW"]) -> Request:
    return _json("postmark", load("postmark/inbound.json"), {"Authorization": basic("postmark", password)})


def ses(timestamp: int = NOW - 60, forged: bool = False) -> Request:
    message = ses_notification(timestamp=timestamp)
    if forged:
        message["Subject"] = "Amazon SES Email Receipt Notification (changed)"
    return "/hooks/ses", compact(message), {"Content-Type": "text/plain; charset=UTF-8"}


def cloudmailin(password: str = S["CLOUDMAILIN_PW"]) -> Request:
    return _json("cloudmailin", load("cloudmailin/normalized.json"),
                 {"Authorization": basic("cloudmailin", password)})


def brevo(token: str = S["BREVO_TOKEN"], data: Any = None) -> Request:
    return (f"/hooks/brevo?token={token}", compact(data if data is not None else load("brevo/inbound.json")),
            JSON)


def mailjet(password: str = S["MAILJET_PW"]) -> Request:
    return _json("mailjet", load("mailjet/parse.json"), {"Authorization": basic("mailjet", password)})


def mandrill(key: str = S["MANDRILL_KEY"], events: list[Any] | None = None) -> Request:
    return ("/hooks/mandrill", *mandrill_request(key, PUBLIC_MANDRILL, events))


def sparkpost(token: str = S["SPARKPOST_TOKEN"], data: Any = None) -> Request:
    return _json("sparkpost", data if data is not None else load("sparkpost/relay.json"),
                 {"X-MessageSystems-Webhook-Token": token})


def resend(secret: str = S["RESEND_SECRET"], timestamp: int = NOW, data: Any = None) -> Request:
    body = compact(data if data is not None else load("resend/email_received.json"))
    return "/hooks/resend", body, svix_headers(secret, body, msg_id="msg_2mdTGFxKWUDqRCvqYfEbEX2AJSg",
                                               timestamp=timestamp)


def mailersend(secret: str = S["MAILERSEND_SECRET"], data: Any = None) -> Request:
    body = compact(data if data is not None else load("mailersend/inbound.json"))
    return "/hooks/mailersend", body, {**JSON, "Signature": mailersend_signature(secret, body)}


def postal(forged: bool = False, data: Any = None) -> Request:
    body = compact(data if data is not None else load("postal/raw.json"))
    headers = postal_headers(body)
    return "/hooks/postal", body + (b" " if forged else b""), headers


def typeform(secret: str = S["TYPEFORM_SECRET"]) -> Request:
    body = compact(load("typeform/form_response.json"))
    return "/hooks/typeform", body, {**JSON, "Typeform-Signature": typeform_signature(secret, body)}


def tally(secret: str = S["TALLY_SECRET"]) -> Request:
    body = compact(load("tally/form_response.json"))
    return "/hooks/tally", body, {**JSON, "Tally-Signature": tally_signature(secret, body)}


def webflow(secret: str = S["WEBFLOW_SECRET"], timestamp_ms: int = NOW * 1000) -> Request:
    body = compact(load("webflow/form_submission.json"))
    return "/hooks/webflow", body, webflow_headers(secret, body, timestamp_ms)


def jotform(secret: str = S["JOTFORM_SECRET"]) -> Request:
    body, ctype = multipart(load("jotform/submission.json"))
    return f"/hooks/jotform?secret={secret}", body, {"Content-Type": ctype}


def google_forms(secret: str = S["GOOGLE_FORMS_SECRET"]) -> Request:
    body = compact(load("google_forms/response.json"))
    return "/hooks/google-forms", body, {**JSON, "X-Signature": google_forms_signature(secret, body)}


def twilio(token: str = S["TWILIO_TOKEN"], url: str = PUBLIC_TWILIO) -> Request:
    body, headers = twilio_request(token, url, "twilio/sms.json")
    return "/hooks/twilio", body, headers


def whatsapp_one(secret: str = S["META_APP_SECRET"]) -> Request:
    data = load("whatsapp/messages.json")
    value = data["entry"][0]["changes"][0]["value"]
    value["messages"] = value["messages"][:1]
    body = compact(data)
    return "/hooks/whatsapp", body, {**JSON, "X-Hub-Signature-256": hub_signature(secret, body)}


def whatsapp_fixture(name: str, secret: str = S["META_APP_SECRET"]) -> Request:
    body = compact(load(name))
    return "/hooks/whatsapp", body, {**JSON, "X-Hub-Signature-256": hub_signature(secret, body)}


def slack(secret: str = S["SLACK_SECRET"], timestamp: int = NOW, fixture: str = "slack/message.json") -> Request:
    body = compact(load(fixture))
    return "/hooks/slack", body, slack_headers(secret, body, timestamp)


def telegram(token: str = S["TELEGRAM_TOKEN"], fixture: str = "telegram/message.json") -> Request:
    return _json("telegram", load(fixture), {"X-Telegram-Bot-Api-Secret-Token": token})


def intercom(secret: str = S["INTERCOM_SECRET"], fixture: str = "intercom/conversation_replied.json") -> Request:
    body = compact(load(fixture))
    return "/hooks/intercom", body, {**JSON, "X-Hub-Signature": hub_signature(secret, body, "sha1")}


def partner(secret: str = S["PARTNER_SECRET"], timestamp: int = NOW) -> Request:
    body = compact(load("standard_webhooks/invoice_paid.json"))
    return "/hooks/partner", body, standard_webhooks_headers(secret, body, timestamp=timestamp)


def svix(secret: str = S["PARTNER_SECRET"], timestamp: int = NOW) -> Request:
    body = compact(load("standard_webhooks/invoice_paid.json"))
    return "/hooks/svix", body, svix_headers(secret, body, timestamp=timestamp)


@dataclass(frozen=True)
class Case:
    valid: Callable[[], Request]
    forged: Callable[[], Request]
    check: str  # the failed check a forged request is refused by
    stale: Callable[[], Request] | None
    expect: dict[str, Any]  # a few normalised payload fields the event must carry


# What the message itself says; the envelope and spam verdict are whatever each provider reports.
PROVIDER_REPORTED = ("envelope_from", "envelope_to", "spam")
EMAIL = {k: v for k, v in ASHA_EMAIL.items() if k not in ("attachments", *PROVIDER_REPORTED)}
CASES: dict[str, Case] = {
    "mailgun": Case(mailgun, lambda: mailgun(key="key-other"), "signature", lambda: mailgun(timestamp=NOW - 301),
                    EMAIL),
    "sendgrid": Case(sendgrid, lambda: sendgrid("guess"), "basic_auth", None, EMAIL),
    "postmark": Case(postmark, lambda: postmark("guess"), "basic_auth", None, EMAIL),
    "ses": Case(ses, lambda: ses(forged=True), "signature", lambda: ses(timestamp=NOW - 3601), EMAIL),
    "cloudmailin": Case(cloudmailin, lambda: cloudmailin("guess"), "basic_auth", None, EMAIL),
    "brevo": Case(brevo, lambda: brevo("guess"), "token", None, EMAIL),
    "mailjet": Case(mailjet, lambda: mailjet("guess"), "basic_auth", None, EMAIL),
    "mandrill": Case(mandrill, lambda: mandrill("other-key"), "signature", None, EMAIL),
    "sparkpost": Case(sparkpost, lambda: sparkpost("guess"), "token", None, EMAIL),
    "resend": Case(resend, lambda: resend("whsec_b3RoZXItc2VjcmV0"), "signature", lambda: resend(timestamp=NOW - 301),
                   EMAIL),
    "mailersend": Case(mailersend, lambda: mailersend("other"), "signature", None, EMAIL),
    "postal": Case(postal, lambda: postal(forged=True), "signature", None, EMAIL),
    "typeform": Case(typeform, lambda: typeform("other"), "signature", None,
                     {"Your email": "asha.rao@example.com", "Which service?": "Fibre broadband"}),
    "tally": Case(tally, lambda: tally("other"), "signature", None,
                  {"Email": "asha.rao@example.com", "Devices": ["Laptop", "Phone"]}),
    "webflow": Case(webflow, lambda: webflow("other"), "signature", lambda: webflow(timestamp_ms=NOW * 1000 - 300_001),
                    {"Email": "asha.rao@example.com"}),
    "jotform": Case(jotform, lambda: jotform("guess"), "url_secret", None, {"email": "asha.rao@example.com"}),
    "google-forms": Case(google_forms, lambda: google_forms("other"), "hmac", None,
                         {"Email": "asha.rao@example.com", "What is wrong?": "No internet since this morning."}),
    "twilio": Case(twilio, lambda: twilio(url="https://bridge.example.com/hooks/other"), "signature", None,
                   {"from": "+919876543210", "text": "My router is down again"}),
    "whatsapp": Case(whatsapp_one, lambda: whatsapp_one("other"), "signature", None,
                     {"from": "919876543210", "from_name": "Asha Rao", "text": "My router is down again"}),
    "slack": Case(slack, lambda: slack("other"), "signature", lambda: slack(timestamp=NOW - 301),
                  {"from": "U061F7AUR", "text": "My router is down again"}),
    "telegram": Case(telegram, lambda: telegram("guess"), "secret_token", None,
                     {"from": "5123456789", "from_name": "Asha Rao"}),
    "intercom": Case(intercom, lambda: intercom("other"), "signature", None,
                     {"from": "asha.rao@example.com", "conversation_id": "147"}),
    "partner": Case(partner, lambda: partner("whsec_b3RoZXItc2VjcmV0"), "signature",
                    lambda: partner(timestamp=NOW - 301), {"type": "invoice.paid"}),
    "svix": Case(svix, lambda: svix("whsec_b3RoZXItc2VjcmV0"), "signature", lambda: svix(timestamp=NOW - 301),
                 {"type": "invoice.paid"}),
}
STALE = sorted(k for k, c in CASES.items() if c.stale is not None)


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient) -> Any:
    return await providers_client(bridge_client, write_config(CONFIG, MAPPINGS, SECRETS))


async def providers_client(bridge_client: AppClient, config: Config, **options: Any) -> Any:
    """The app on `config` with every source's clock at NOW and SNS certificates served by FakeSns, so the
    signed fixtures verify."""
    c = await bridge_client(config, **options)
    for source in runtime(c).sources.values():
        source.handler.clock = lambda: float(NOW)
    runtime(c).sources["ses"].handler.fetch = FakeSns()  # type: ignore[attr-defined]
    runtime(c).sources["resend"].handler.get = FakeResendApi()  # type: ignore[attr-defined]
    return c


async def send(client: Any, request: Request) -> Any:
    path, body, headers = request
    return await client.post(path, data=body, headers=headers)


def stored_events(tmp_path: Path) -> int:
    """Events in the SQLite store, read beside the app (nothing about a refused request may be there)."""
    with sqlite3.connect(f"file:{tmp_path / 'var' / 'bridge.db'}?mode=ro", uri=True) as db:
        count: int = db.execute("SELECT count(*) FROM events").fetchone()[0]
    return count


async def deliveries(client: Any) -> list[Any]:
    return await runtime(client).store.list_deliveries(DeliveryFilter(limit=1000))


@pytest.mark.parametrize("source", sorted(CASES))
async def test_signed_request_becomes_one_normalised_event_and_a_delivery(client: Any, source: str) -> None:
    """A correctly signed request is stored as one normalised event with one delivery, which reaches the vendor."""
    resp = await send(client, CASES[source].valid())
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert body["deliveries"] == 1
    event = await runtime(client).store.get_event(body["event_id"])
    assert event.source == source
    assert {k: event.payload.get(k) for k in CASES[source].expect} == CASES[source].expect
    sim = runtime(client).simulators["kapture"]
    await eventually(lambda: len(sim.tickets) == 1)


@pytest.mark.parametrize("source", sorted(CASES))
async def test_forged_request_is_401_and_stored_nowhere(client: Any, source: str, tmp_path: Path) -> None:
    """A request with a wrong signature or credentials is refused with 401 naming the check; nothing is stored,
    the rejection is counted and logged with its reason, and no secret is in the answer or the log."""
    with capture_logs() as logs:
        resp = await send(client, CASES[source].forged())
    assert resp.status == 401
    answer = await resp.json()
    assert answer["check"] == CASES[source].check
    assert stored_events(tmp_path) == 0
    assert await deliveries(client) == []
    assert runtime(client).counters["intake.rejected.401"] == 1
    [entry] = [e for e in logs if e["event"] == "intake.rejected"]
    assert (entry["source"], entry["check"], entry["status"]) == (source, CASES[source].check, 401)
    said = json.dumps(answer) + json.dumps(logs, default=str)
    assert not any(secret in said for secret in SECRETS.values())


@pytest.mark.parametrize("source", STALE)
async def test_stale_request_is_401_and_stored_nowhere(client: Any, source: str, tmp_path: Path) -> None:
    """A correctly signed request whose signed timestamp is outside the window is refused as a replay."""
    stale = CASES[source].stale
    assert stale is not None
    resp = await send(client, stale())
    assert resp.status == 401
    assert (await resp.json())["check"] == "timestamp"
    assert stored_events(tmp_path) == 0


@pytest.mark.parametrize("source", sorted(CASES))
async def test_replayed_request_is_a_duplicate(client: Any, source: str) -> None:
    """The same request again is answered 200 with the first event's id, and delivered once."""
    request = CASES[source].valid()
    first = await send(client, request)
    again = await send(client, request)
    assert (first.status, again.status) == (202, 200)
    first_id = (await first.json())["event_id"]
    assert await again.json() == {"accepted": True, "duplicate": True, "event_id": first_id}
    assert len(await deliveries(client)) == 1


# -- handshakes and ignored notifications --------------------------------------------------------------


async def test_whatsapp_get_handshake(client: Any) -> None:
    """Meta's GET verification gets the challenge back as text; a wrong verify token gets 403."""
    ok = await client.get("/hooks/whatsapp", params={"hub.mode": "subscribe", "hub.challenge": "1158201444",
                                                     "hub.verify_token": S["META_VERIFY_TOKEN"]})
    assert (ok.status, await ok.text()) == (200, "1158201444")
    bad = await client.get("/hooks/whatsapp", params={"hub.mode": "subscribe", "hub.challenge": "1158201444",
                                                      "hub.verify_token": "guess"})
    assert bad.status == 403
    assert "1158201444" not in await bad.text()


async def test_whatsapp_post_with_two_messages_gives_two_events(client: Any) -> None:
    """One POST carrying two messages is stored as two events with a delivery each."""
    resp = await send(client, whatsapp_fixture("whatsapp/messages.json"))
    assert resp.status == 202
    body = await resp.json()
    assert [e["duplicate"] for e in body["events"]] == [False, False]
    assert body["deliveries"] == 2
    sim = runtime(client).simulators["kapture"]
    await eventually(lambda: len(sim.tickets) == 2)


def _second(raw: str) -> str:
    return raw.replace("CAF=asha.1@", "CAF=asha.2@")


def brevo_batch() -> Request:
    data = load("brevo/inbound.json")
    second = copy.deepcopy(data["items"][0])
    second["MessageId"] = second["Headers"]["Message-ID"] = _second(second["MessageId"])
    return brevo(data={"items": [data["items"][0], second]})


def mandrill_batch() -> Request:
    [event] = load("mandrill/inbound_events.json")
    second = copy.deepcopy(event)
    second["msg"]["raw_msg"] = _second(second["msg"]["raw_msg"])
    return mandrill(events=[event, second])


def sparkpost_batch() -> Request:
    [relay] = load("sparkpost/relay.json")
    second = copy.deepcopy(relay)
    content = second["msys"]["relay_message"]["content"]
    content["email_rfc822"] = _second(content["email_rfc822"])
    return sparkpost(data=[relay, second])


@pytest.mark.parametrize("make", [brevo_batch, mandrill_batch, sparkpost_batch], ids=lambda f: f.__name__)
async def test_email_batch_gives_one_event_per_message(client: Any, make: Callable[[], Request]) -> None:
    """A provider's batch of two messages is stored as two events with a delivery each; sent again, both are
    duplicates."""
    request = make()
    resp = await send(client, request)
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    assert [e["duplicate"] for e in body["events"]] == [False, False]
    assert body["deliveries"] == 2
    again = await (await send(client, request)).json()
    assert [e["duplicate"] for e in again["events"]] == [True, True]
    sim = runtime(client).simulators["kapture"]
    await eventually(lambda: len(sim.tickets) == 2)


async def test_mandrill_url_check_by_head_is_answered_200(client: Any, tmp_path: Path) -> None:
    """Mandrill checks a new webhook URL with HEAD: answered 200, nothing stored; GET is still refused."""
    head = await client.head("/hooks/mandrill")
    assert head.status == 200
    assert (await client.get("/hooks/mandrill")).status == 405
    assert stored_events(tmp_path) == 0


async def test_slack_url_verification(client: Any, tmp_path: Path) -> None:
    """Slack's signed url_verification is answered with its challenge, and counted as a handshake."""
    resp = await send(client, slack(fixture="slack/url_verification.json"))
    assert resp.status == 200
    assert await resp.json() == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    assert runtime(client).counters["intake.handshake"] == 1
    assert stored_events(tmp_path) == 0


async def test_slack_url_verification_must_be_signed(client: Any) -> None:
    """An unsigned url_verification is refused: the challenge is only echoed to Slack."""
    resp = await send(client, slack(secret="other", fixture="slack/url_verification.json"))
    assert resp.status == 401


async def test_ses_subscription_is_confirmed(client: Any, tmp_path: Path) -> None:
    """A signed SNS SubscriptionConfirmation is confirmed at its SNS SubscribeURL and answered 200."""
    from tests.fixtures.providers import iso, sns_sign

    fake = FakeSns()
    runtime(client).sources["ses"].handler.fetch = fake  # type: ignore[attr-defined]
    message = sns_sign({**load("ses/sns_subscription.json"), "Timestamp": iso(NOW - 5)}, "2")
    resp = await client.post("/hooks/ses", data=compact(message), headers={"Content-Type": "text/plain"})
    assert resp.status == 200
    assert (await resp.json())["subscribed"] == TOPIC
    assert fake.fetched[-1] == message["SubscribeURL"]
    assert stored_events(tmp_path) == 0


IGNORED: dict[str, Callable[[], Request]] = {
    "whatsapp statuses": lambda: whatsapp_fixture("whatsapp/statuses.json"),
    "slack bot message": lambda: slack(fixture="slack/bot_message.json"),
    "telegram edit": lambda: telegram(fixture="telegram/edited_message.json"),
    "intercom ping": lambda: intercom(fixture="intercom/ping.json"),
    "twilio status callback": lambda: ("/hooks/twilio", *twilio_request(S["TWILIO_TOKEN"], PUBLIC_TWILIO,
                                                                        "twilio/status_callback.json")),
    "webflow site publish": lambda: (
        "/hooks/webflow", compact(load("webflow/site_publish.json")),
        webflow_headers(S["WEBFLOW_SECRET"], compact(load("webflow/site_publish.json")))),
    "brevo empty batch": lambda: brevo(data={"items": []}),
    "mandrill test post": lambda: mandrill(events=[]),
    "sparkpost webhook test": lambda: sparkpost(data=[{"msys": {}}]),
    "resend sending event": lambda: resend(data={"type": "email.delivered", "data": {"email_id": "4ef9a417"}}),
    "mailersend webhook test": lambda: mailersend(data={"type": "webhook.test", "data": {}}),
    "postal message event": lambda: postal(data={"event": "MessageDelivered", "payload": {"status": "Sent"},
                                                 "uuid": "9e8d2a3c"}),
    "ses bounce": lambda: ("/hooks/ses", compact(ses_notification(Message='{"notificationType": "Bounce"}')),
                           {"Content-Type": "text/plain"}),
}


@pytest.mark.parametrize("name", sorted(IGNORED))
async def test_ignored_notifications_are_answered_200_and_counted(client: Any, name: str, tmp_path: Path) -> None:
    """A signed notification that is not a new message is answered 200 (so the provider stops), counted,
    and stores nothing."""
    with capture_logs() as logs:
        resp = await send(client, IGNORED[name]())
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["ignored"]
    assert runtime(client).counters["intake.ignored"] == 1
    assert [e["event"] for e in logs if e["event"].startswith("intake.")] == ["intake.ignored"]
    assert stored_events(tmp_path) == 0


async def test_ignored_notification_still_needs_its_signature(client: Any) -> None:
    """A forged status update is refused, not ignored: verification comes first."""
    resp = await send(client, whatsapp_fixture("whatsapp/statuses.json", secret="other"))
    assert resp.status == 401


async def test_slack_retry_is_a_duplicate(client: Any) -> None:
    """Slack's retry of an event (X-Slack-Retry-Num, freshly signed) is a duplicate."""
    path, body, headers = slack()
    first = await client.post(path, data=body, headers=headers)
    runtime(client).sources["slack"].handler.clock = lambda: float(NOW + 60)
    retry_headers = {**slack_headers(S["SLACK_SECRET"], body, NOW + 60), "X-Slack-Retry-Num": "1",
                     "X-Slack-Retry-Reason": "http_timeout"}
    retry = await client.post(path, data=body, headers=retry_headers)
    assert (first.status, retry.status) == (202, 200)
    assert (await retry.json())["duplicate"] is True


async def test_slack_message_and_its_app_mention_are_one_event(client: Any, tmp_path: Path) -> None:
    """One message that mentions the app comes as a `message` and an `app_mention` event_callback, each signed,
    each with its own event_id: the second is a 200 duplicate of the first, and one event is stored."""
    data = load("slack/message.json")
    first = await client.post("/hooks/slack", data=(body := compact(data)), headers=slack_headers(
        S["SLACK_SECRET"], body))
    data["event_id"], data["event"]["type"] = "Ev0PV52K22", "app_mention"
    second = await client.post("/hooks/slack", data=(body := compact(data)), headers=slack_headers(
        S["SLACK_SECRET"], body))
    assert (first.status, second.status) == (202, 200), await second.text()
    assert (await second.json())["event_id"] == (await first.json())["event_id"]
    assert stored_events(tmp_path) == 1


async def test_email_payload_is_the_same_shape_from_every_provider(client: Any) -> None:
    """Copies of one message through every email provider give one email shape (Brevo's attachment, whose
    content Brevo holds, is compared apart)."""
    shapes = []
    for make in (mailgun, sendgrid, postmark, ses, cloudmailin, mailjet, mandrill, sparkpost, resend, mailersend,
                 postal):
        resp = await send(client, make())
        event = await runtime(client).store.get_event((await resp.json())["event_id"])
        shape = {k: v for k, v in without_provider(copy.deepcopy(event.payload)).items() if k not in PROVIDER_REPORTED}
        shape["attachments"] = shape["attachments"][:1]
        shapes.append(shape)
    expected = {**EMAIL, "attachments": [{**ASHA_EMAIL["attachments"][0], "stored": True}]}
    assert shapes == [expected] * 11
    event = await runtime(client).store.get_event((await (await send(client, brevo())).json())["event_id"])
    [brevo_file] = event.payload["attachments"]
    brevo_shape = {k: v for k, v in without_provider({**event.payload, "attachments": []}).items()
                   if k not in PROVIDER_REPORTED}
    assert brevo_shape == {**expected, "attachments": []}
    assert (brevo_file["name"], brevo_file["size"], brevo_file["stored"]) == ("router.jpg", 35, False)
