"""Request bytes that once made intake answer 500, each through the whole app over HTTP: now a 4xx naming
the problem, or (where refusing would lose a provider's real event) stored with the bad text escaped, and
counted either way in /metrics."""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from bridge import intake
from bridge.store.base import DeliveryFilter
from handlers.base import MAX_JSON_CONTAINERS
from tests.acceptance.rawhttp import RawClient
from tests.acceptance.test_metrics import samples
from tests.acceptance.test_providers import CASES, CONFIG, MAPPINGS, SECRETS, Request, S, providers_client
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.fixtures.providers import (
    basic,
    compact,
    google_forms_signature,
    load,
    mailgun_fields,
    multipart,
    slack_headers,
    standard_webhooks_headers,
    webflow_headers,
)

ADMIN = {"Authorization": "Bearer ops-token"}
KEPT = ("User-Agent", "Referer", "X-Forwarded-For", "Origin", "X-Request-Id")


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient) -> Any:
    config = CONFIG.replace("sources:\n", 'sources:\n  contact: {kind: form, cors_origins: ["*"]}\n') \
        + 'admin: {token: "ops-token"}\n'
    return await providers_client(bridge_client, write_config(config, MAPPINGS, SECRETS), workers=False)


@pytest.fixture
async def raw(client: Any) -> Any:
    conn = RawClient(client.host, client.port)
    yield conn
    await conn.close()


async def metrics(client: Any) -> dict[str, float]:
    resp = await client.get("/metrics", headers=ADMIN)
    assert resp.status == 200
    return samples(await resp.text())


def rejected(source: str, status: int = 400) -> str:
    return f'ticketbridge_intake_requests_total{{source="{source}",outcome="rejected.{status}"}}'


def stored_rows(tmp_path: Path) -> list[dict[str, Any]]:
    """Every event's stored JSON, read beside the app (and so checked to be valid UTF-8)."""
    with sqlite3.connect(f"file:{tmp_path / 'var' / 'bridge.db'}?mode=ro", uri=True) as db:
        return [json.loads(row[0].decode("utf-8")) for row in db.execute("SELECT data FROM events")]


# -- JSON nested past what the parser takes -------------------------------------------------------------


def deep(levels: int) -> bytes:
    return b'{"a":' + b"[" * levels + b"]" * levels + b"}"


@pytest.mark.parametrize("levels", [1_000, 49_000])
async def test_json_nested_past_the_parser_limit_is_400(client: Any, levels: int) -> None:
    """A signed JSON body nested 1,000 levels or more (and within the bound on its arrays and objects) is refused
    with 400 naming the nesting, and counted."""
    body = deep(levels)
    resp = await client.post("/hooks/google-forms", data=body, headers={
        "Content-Type": "application/json", "X-Signature": google_forms_signature(S["GOOGLE_FORMS_SECRET"], body)})
    assert resp.status == 400
    answer = await resp.json()
    assert answer["check"] == "json"
    assert "nested" in answer["error"]
    assert (await metrics(client))[rejected("google-forms")] == 1


async def test_json_of_more_arrays_and_objects_than_the_bound_is_413(client: Any) -> None:
    """A signed JSON body of more `[` and `{` than MAX_JSON_CONTAINERS (here nested 100,000 deep) is refused with
    413 naming the count and the bound before it is parsed, and counted."""
    body = deep(100_000)
    resp = await client.post("/hooks/google-forms", data=body, headers={
        "Content-Type": "application/json", "X-Signature": google_forms_signature(S["GOOGLE_FORMS_SECRET"], body)})
    assert resp.status == 413
    answer = await resp.json()
    assert answer["check"] == "json"
    assert answer["error"] == ("the JSON body holds too many arrays and objects: 100001 `[` and `{`, at most "
                               f"{MAX_JSON_CONTAINERS}")
    assert (await metrics(client))[rejected("google-forms", 413)] == 1


async def test_json_nested_inside_a_form_field_is_400(client: Any) -> None:
    """Jotform's `rawRequest` (JSON inside a form field) nested past the parser's limit is refused with 400."""
    fields = {**load("jotform/submission.json"), "rawRequest": deep(5_000).decode()}
    body, ctype = multipart(fields)
    resp = await client.post(f"/hooks/jotform?secret={S['JOTFORM_SECRET']}", data=body,
                             headers={"Content-Type": ctype})
    assert resp.status == 400
    assert "nested" in (await resp.json())["error"]


async def test_mailgun_message_headers_nested_too_deep_is_400(client: Any) -> None:
    """Mailgun's `message-headers` field (JSON inside a signed form) nested too deep is refused with 400."""
    fields = {**mailgun_fields(S["MAILGUN_KEY"]), "message-headers": deep(5_000).decode()}
    body, ctype = multipart(fields)
    resp = await client.post("/hooks/mailgun", data=body, headers={"Content-Type": ctype})
    assert resp.status == 400
    assert "nested" in (await resp.json())["error"]


# -- a timestamp with thousands of digits ------------------------------------------------------------------

HUGE = "9" * 5_000


def huge_timestamp(source: str) -> Request:
    data = compact(load({"slack": "slack/message.json", "webflow": "webflow/form_submission.json",
                         "partner": "standard_webhooks/invoice_paid.json"}.get(source, "slack/message.json")))
    if source == "slack":
        return "/hooks/slack", data, {**slack_headers(S["SLACK_SECRET"], data), "X-Slack-Request-Timestamp": HUGE}
    if source == "webflow":
        return "/hooks/webflow", data, {**webflow_headers(S["WEBFLOW_SECRET"], data), "x-webflow-timestamp": HUGE}
    if source == "partner":
        return "/hooks/partner", data, {**standard_webhooks_headers(S["PARTNER_SECRET"], data),
                                        "webhook-timestamp": HUGE}
    body, ctype = multipart({**mailgun_fields(S["MAILGUN_KEY"]), "timestamp": HUGE})
    return "/hooks/mailgun", body, {"Content-Type": ctype}


@pytest.mark.parametrize("source", ["slack", "webflow", "partner", "mailgun"])
async def test_timestamp_of_thousands_of_digits_is_refused_as_a_bad_timestamp(client: Any, source: str) -> None:
    """A signed timestamp of 5,000 digits is refused like any other unusable timestamp (401, check
    `timestamp`), and counted."""
    path, body, headers = huge_timestamp(source)
    resp = await client.post(path, data=body, headers=headers)
    assert resp.status == 401
    answer = await resp.json()
    assert answer["check"] == "timestamp"
    assert "5000 digits" in answer["error"]
    assert (await metrics(client))[rejected(source, 401)] == 1


# -- Cloudmailin's attachment size ------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["²", "٣", HUGE, -3, 1.5])
async def test_cloudmailin_attachment_size_that_is_not_a_byte_count_is_recorded_as_unknown(
        client: Any, size: Any) -> None:
    """A remote attachment's `size` that is not a plain count of bytes ("²", Arabic digits, 5,000 digits) is
    recorded as unknown: the email is stored, not refused."""
    data = load("cloudmailin/normalized.json")
    data["attachments"][1]["size"] = size
    resp = await client.post("/hooks/cloudmailin", data=compact(data), headers={
        "Content-Type": "application/json", "Authorization": basic("cloudmailin", S["CLOUDMAILIN_PW"])})
    assert resp.status == 202, await resp.text()
    event = await runtime(client).store.get_event((await resp.json())["event_id"])
    assert event.payload["attachments"][1]["size"] is None


# -- multipart boundaries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("boundary", ["grenze-€-1", "\u0433\u0440\u0430\u043d\u0438\u0446\u0430", "b\udcff1"])
async def test_multipart_boundary_that_is_not_ascii_is_400(client: Any, raw: RawClient, boundary: str) -> None:
    """A multipart body whose boundary is not ASCII (RFC 2046 allows only ASCII) is refused with 400 naming the
    boundary, whatever bytes the Content-Type carries, and counted."""
    fields = load("sendgrid/parse.json")
    ascii_body, ascii_ctype = multipart(fields)
    real = ascii_ctype.partition("boundary=")[2]
    wire = boundary.encode("utf-8", "surrogateescape")
    body = ascii_body.replace(real.encode(), wire)
    resp = await raw.post("/hooks/sendgrid", body, [
        ("Content-Type", b"multipart/form-data; boundary=" + wire),
        ("Authorization", basic("sendgrid", S["SENDGRID_PW"]))])
    assert resp.status == 400, resp.body
    assert "boundary" in str(resp.json()["error"])
    assert (await metrics(client))[rejected("sendgrid")] == 1


# -- header bytes that are not UTF-8 --------------------------------------------------------------------


@pytest.mark.parametrize("source", sorted(CASES))
async def test_kept_headers_that_are_not_utf8_are_stored_escaped(client: Any, raw: RawClient, source: str,
                                                                 tmp_path: Path) -> None:
    """A correctly signed request whose User-Agent, Referer, X-Forwarded-For, Origin and X-Request-Id carry
    bytes that are not UTF-8 is stored (202), those headers kept with each bad byte written `\\xNN`, and the
    escaping counted; the stored event is valid UTF-8."""
    path, body, headers = CASES[source].valid()
    bad = [(name, b"caf\xe9 " + name.encode() + b" \xff\xfe") for name in KEPT]
    resp = await raw.post(path, body, [*headers.items(), *bad])
    assert resp.status == 202, resp.body
    [row] = stored_rows(tmp_path)
    for name in KEPT:
        assert row["headers"][name.lower()] == f"caf\\xe9 {name} \\xff\\xfe"
    assert row["meta"]["user_agent"] == "caf\\xe9 User-Agent \\xff\\xfe"
    counted = await metrics(client)
    assert counted[f'ticketbridge_intake_escaped_total{{source="{source}",where="headers"}}'] == 1
    assert counted[f'ticketbridge_intake_requests_total{{source="{source}",outcome="accepted"}}'] == 1


@pytest.mark.parametrize("source", ["postmark", "telegram", "partner"])
async def test_content_type_parameter_that_is_not_utf8_is_stored_escaped(client: Any, raw: RawClient, source: str,
                                                                         tmp_path: Path) -> None:
    """A JSON request whose Content-Type carries a parameter with bytes that are not UTF-8 is stored, the
    Content-Type kept escaped."""
    path, body, headers = CASES[source].valid()
    headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    resp = await raw.post(path, body, [*headers.items(), ("Content-Type", b"application/json; note=\xff")])
    assert resp.status == 202, resp.body
    [row] = stored_rows(tmp_path)
    assert row["headers"]["content-type"] == "application/json; note=\\xff"


async def test_origin_that_is_not_ascii_is_not_echoed_to_a_browser(client: Any, raw: RawClient,
                                                                   tmp_path: Path) -> None:
    """A form open to every origin (`cors_origins: ["*"]`) posted with an Origin that is not ASCII is stored,
    without an Access-Control-Allow-Origin echoing it (no origin is anything but ASCII); the preflight is
    refused with 403."""
    origin = b"https://caf\xc3\xa9-\xff.example"
    resp = await raw.post("/hooks/contact", b"subject=hi", [
        ("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/json"), ("Origin", origin)])
    assert resp.status == 202, resp.body
    assert "access-control-allow-origin" not in resp.headers
    [row] = stored_rows(tmp_path)
    assert row["headers"]["origin"] == "https://café-\\xff.example"
    preflight = await raw.request("OPTIONS", "/hooks/contact", b"", [("Origin", origin)])
    assert preflight.status == 403


# -- RFC 2047 encoded words that decode to line breaks ------------------------------------------------


LF_FROM = "=?utf-8?q?Asha=0ARao?= <asha.rao@example.com>"
CRLF_FROM = "=?utf-8?b?" + base64.b64encode(b"Asha\r\nBcc: x@evil.test").decode() + "?= <asha.rao@example.com>"


@pytest.mark.parametrize("sender", [LF_FROM, CRLF_FROM])
async def test_sendgrid_from_whose_encoded_word_decodes_to_a_line_break_is_stored(client: Any,
                                                                                  sender: str) -> None:
    """A SendGrid post whose `headers` block has a From encoded word that decodes to a line break is stored
    with the sender's address read, not refused."""
    fields = load("sendgrid/parse.json")
    fields["headers"] = fields["headers"].replace("From: Asha Rao <Asha.Rao@Example.com>", f"From: {sender}")
    del fields["from"]
    body, ctype = multipart(fields)
    resp = await client.post("/hooks/sendgrid", data=body, headers={
        "Content-Type": ctype, "Authorization": basic("sendgrid", S["SENDGRID_PW"])})
    assert resp.status == 202, await resp.text()
    event = await runtime(client).store.get_event((await resp.json())["event_id"])
    assert event.payload["from"] == "asha.rao@example.com"


async def test_sendgrid_raw_email_whose_from_decodes_to_a_line_break_is_stored(client: Any) -> None:
    """SendGrid's raw mode (the whole MIME message in `email`) with such a From is stored too."""
    message = (f"From: {LF_FROM}\r\nTo: support@acme.test\r\nSubject: =?utf-8?q?Router=0Adown?=\r\n"
               "Message-ID: <lf.1@example.com>\r\n\r\nMy router is down.\r\n")
    body, ctype = multipart({"email": message, "to": "support@acme.test"})
    resp = await client.post("/hooks/sendgrid", data=body, headers={
        "Content-Type": ctype, "Authorization": basic("sendgrid", S["SENDGRID_PW"])})
    assert resp.status == 202, await resp.text()
    event = await runtime(client).store.get_event((await resp.json())["event_id"])
    assert (event.payload["from"], event.payload["message_id"]) == ("asha.rao@example.com", "<lf.1@example.com>")


# -- text the store refuses, found inside the payload ----------------------------------------------------


@pytest.mark.parametrize(("ctype", "body"), [
    ("multipart/form-data; boundary=b1",
     b"--b1\r\nContent-Disposition: form-data; name=\"note\"\r\nContent-Type: text/plain; charset=utf-7\r\n\r\n"
     b"caf+2AA-\r\n--b1\r\nContent-Disposition: form-data; name=\"subject\"\r\n\r\nhi\r\n--b1--\r\n"),
    ("application/x-www-form-urlencoded; charset=utf-7", b"note=caf%2B2AA-&subject=hi"),
])
async def test_form_text_that_decodes_to_a_lone_surrogate_is_stored_escaped(client: Any, raw: RawClient,
                                                                             tmp_path: Path, ctype: str,
                                                                             body: bytes) -> None:
    """A form field in a charset that decodes to a lone surrogate (malformed UTF-7), which no store takes, is
    stored with it written `\\ud800`."""
    resp = await raw.post("/hooks/contact", body, [("Content-Type", ctype), ("Accept", "application/json")])
    assert resp.status == 202, resp.body
    [row] = stored_rows(tmp_path)
    assert row["payload"] == {"note": "caf\\ud800", "subject": "hi"}


@pytest.mark.parametrize("charset", ["unicode_escape", "Raw-Unicode-Escape", "idna", "base64", "x-\u00e9t\u00e9",
                                     "utf-8" * 20])
async def test_form_in_a_charset_that_is_no_character_set_is_a_400_naming_it(client: Any, raw: RawClient,
                                                                             tmp_path: Path, charset: str) -> None:
    """A form whose charset is no character set (a Python codec for escapes, host names or bytes, an unknown or
    overlong name) is a 400 that names it, and nothing is stored."""
    ctype = f"application/x-www-form-urlencoded; charset={charset}"
    resp = await raw.post("/hooks/contact", b"note=caf\\q&subject=hi", [("Content-Type", ctype.encode()),
                                                                        ("Accept", "application/json")])
    assert resp.status == 400, resp.body
    assert "which is not a character set" in resp.body.decode()
    assert stored_rows(tmp_path) == []


async def test_payload_the_store_refuses_is_stored_escaped(client: Any, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    """When a handler still hands over text no store takes (a lone surrogate, in a value, a key or the dedup
    key), the event is stored with it written out, its delivery rendered from the escaped text, and the
    escape counted where="payload"."""
    from handlers.base import Inbound

    handler = runtime(client).sources["partner"].handler
    payload = {"type": "invoice.\udcff", "lines": [{"note\ud800": "x"}]}
    monkeypatch.setattr(handler, "parse", lambda *_args: [Inbound(payload=payload, dedup_key="msg_\udcff")])
    path, body, headers = CASES["partner"].valid()
    resp = await client.post(path, data=body, headers=headers)
    assert resp.status == 202, await resp.text()
    [row] = stored_rows(tmp_path)
    assert row["payload"] == {"type": "invoice.\\xff", "lines": [{"note\\ud800": "x"}]}
    assert row["dedup_key"] == "msg_\\xff"
    [delivery] = await runtime(client).store.list_deliveries(DeliveryFilter(limit=10))
    assert (delivery.status, delivery.last_error) == ("pending", None)
    counted = await metrics(client)
    assert counted['ticketbridge_intake_escaped_total{source="partner",where="payload"}'] == 1


async def test_a_refused_payload_of_a_request_planned_off_the_loop_is_escaped_off_it(
        client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A request planned in the parser thread (a large one, or one whose render ran past its loop slice) whose
    payload the store refuses has it escaped, and its deliveries planned again, in that thread too: the walk is as
    long as the payload (a large mail's), and ran on the loop before. Stored as on the loop."""
    from handlers.base import Inbound

    handler = runtime(client).sources["partner"].handler
    payload = {"type": "invoice.\udcff", "lines": [{"note\ud800": "x"}]}
    monkeypatch.setattr(handler, "parse", lambda *_args: [Inbound(payload=payload, dedup_key="msg_\udcff")])
    monkeypatch.setattr(intake, "_plan_on_loop", lambda *_args, **_kw: None)  # as for a request planned off it
    walked: list[int] = []
    escape_tree = intake.escape_tree

    def noted(value: Any) -> tuple[Any, int]:
        walked.append(threading.get_ident())
        return escape_tree(value)

    monkeypatch.setattr(intake, "escape_tree", noted)
    path, body, headers = CASES["partner"].valid()
    resp = await client.post(path, data=body, headers=headers)
    assert resp.status == 202, await resp.text()
    assert walked and threading.get_ident() not in walked
    [row] = stored_rows(tmp_path)
    assert row["payload"] == {"type": "invoice.\\xff", "lines": [{"note\\ud800": "x"}]}
    assert row["dedup_key"] == "msg_\\xff"
    [delivery] = await runtime(client).store.list_deliveries(DeliveryFilter(limit=10))
    assert (delivery.status, delivery.last_error) == ("pending", None)


async def test_raw_email_with_8bit_header_bytes_is_stored(client: Any, tmp_path: Path) -> None:
    """SendGrid's raw MIME with a Subject and a From name in raw Latin-1 (not encoded words, as some mailers
    still send) is stored, the bytes read as replacement characters, its sender's address read."""
    message = (b"From: Jos\xe9 <jose@example.com>\r\nTo: support@acme.test\r\nSubject: Caf\xe9 cr\xe8me\r\n"
               b"Message-ID: <8bit.1@example.com>\r\n\r\nBonjour\r\n")
    body = (b"--b1\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\n" + message + b"\r\n"
            b"--b1\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nsupport@acme.test\r\n--b1--\r\n")
    resp = await client.post("/hooks/sendgrid", data=body, headers={
        "Content-Type": "multipart/form-data; boundary=b1", "Authorization": basic("sendgrid", S["SENDGRID_PW"])})
    assert resp.status == 202, await resp.text()
    [row] = stored_rows(tmp_path)
    assert row["payload"]["from"] == "jose@example.com"
    assert row["payload"]["subject"] == "Caf\ufffd cr\ufffdme"


# -- a handler that fails unexpectedly ------------------------------------------------------------------


async def test_handler_that_fails_unexpectedly_is_a_logged_400(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception other than Rejected from a handler's parse is answered 400 ("could not be parsed"), never
    5xx; it is logged at error level with its traceback and counted as a handler error and a rejection."""
    from structlog.testing import capture_logs

    handler = runtime(client).sources["telegram"].handler

    def broken(*_args: Any) -> Any:
        raise KeyError("chat")

    monkeypatch.setattr(handler, "parse", broken)
    path, body, headers = CASES["telegram"].valid()
    with capture_logs() as logs:
        resp = await client.post(path, data=body, headers=headers)
    assert resp.status == 400
    answer = await resp.json()
    assert (answer["check"], answer["accepted"]) == ("parse", False)
    assert "could not be parsed (KeyError)" in answer["error"]
    [failed] = [e for e in logs if e["event"] == "intake.handler_failed"]
    assert failed["log_level"] == "error"
    assert failed["exc_info"] is True
    assert failed["source"] == "telegram"
    counted = await metrics(client)
    assert counted['ticketbridge_intake_handler_errors_total{source="telegram"}'] == 1
    assert counted[rejected("telegram")] == 1


async def test_handshake_that_fails_unexpectedly_is_a_logged_400(client: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A GET handshake whose handler fails unexpectedly is answered 400 and counted as a handler error too."""
    handler = runtime(client).sources["whatsapp"].handler

    async def broken(*_args: Any) -> Any:
        raise AttributeError("hub")

    monkeypatch.setattr(handler, "handshake", broken)
    resp = await client.get("/hooks/whatsapp", params={"hub.mode": "subscribe"})
    assert resp.status == 400
    assert (await resp.json())["check"] == "parse"
    assert (await metrics(client))['ticketbridge_intake_handler_errors_total{source="whatsapp"}'] == 1


async def test_raw_header_with_8bit_bytes_the_email_parser_refuses_is_stored(client: Any, tmp_path: Path) -> None:
    """A raw MIME From that the email package cannot parse (an encoded word decoding to a line feed) and whose
    address holds an 8-bit byte is read from its raw text: the event is stored, the byte read as UTF-8 would
    (a replacement character), and the encoded name decoded on one line."""
    message = (b"From: =?utf-8?q?Asha=0ARao?= <jos\xe9@example.com>\r\nTo: support@acme.test\r\n"
               b"Subject: Hi\r\nMessage-ID: <raw.8bit@example.com>\r\n\r\nBonjour\r\n")
    body = (b"--b1\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\n" + message + b"\r\n--b1--\r\n")
    resp = await client.post("/hooks/sendgrid", data=body, headers={
        "Content-Type": "multipart/form-data; boundary=b1", "Authorization": basic("sendgrid", S["SENDGRID_PW"])})
    assert resp.status == 202, await resp.text()
    [row] = stored_rows(tmp_path)
    assert (row["payload"]["from"], row["payload"]["from_name"]) == ("jos\ufffd@example.com", "Asha Rao")


