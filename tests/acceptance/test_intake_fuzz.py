"""Any bytes, to every source kind, through the whole app over HTTP: the answer is a 2xx or a 4xx, never a 5xx,
and no handler fails unexpectedly (the 400 intake gives a handler's crash would hide a bug, so it counts as one).

Requests are drawn three ways, each re-signed with the source's secret wherever the provider signs what was
changed, so that the mutation reaches the parser past the signature check:
- arbitrary bytes as the body;
- the provider's valid fixture mutated: a value at any path swapped for another JSON value (wrong types, odd
  unicode, huge numbers, deep nesting), a key dropped, a form field rewritten, bytes flipped, cut or inserted;
- arbitrary header values (bytes that are not UTF-8 included) and odd charsets in the Content-Type.

The normal suite runs a few hundred examples, the same ones each run, on SQLite. FUZZ_EXAMPLES=50000 runs that
many across all sources, freshly drawn; FUZZ_STORE=postgres runs them on PostgreSQL (a schema of their own at
TICKETBRIDGE_TEST_PG, dropped after), whose text columns refuse what SQLite takes (NUL).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

import asyncpg
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.store.postgres import PostgresStore
from tests.acceptance.rawhttp import Header, RawClient
from tests.acceptance.test_providers import (
    CONFIG,
    MAPPINGS,
    PUBLIC_MANDRILL,
    PUBLIC_TWILIO,
    SECRETS,
    S,
    providers_client,
)
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.fixtures.providers import (
    THREAD,
    basic,
    compact,
    google_forms_signature,
    hub_signature,
    load,
    mailersend_signature,
    mailgun_fields,
    multipart,
    postal_headers,
    postmark_raw,
    raw,
    slack_headers,
    sns_sign,
    standard_webhooks_headers,
    tally_signature,
    typeform_signature,
    webflow_headers,
)
from tests.integration.processes import DSN

Headers = dict[str, str]
URLENCODED = "application/x-www-form-urlencoded"


# -- how each source's requests are built and signed ----------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """A source's valid request, taken apart: `data` is what mutations change (a JSON value or form fields),
    `build` turns it into a body and its Content-Type, `sign` gives the headers that authenticate a body."""

    path: str
    data: Any
    build: Callable[[Any], tuple[bytes, str]]
    sign: Callable[[bytes], Headers]
    form: bool = False  # data is a flat dict of form fields (str values)


_DEEP = re.compile(r'"@@DEEP(\d+)@@"')


def deep(depth: int) -> str:
    """A value nested `depth` levels deep, as a placeholder `expand` writes out: Python's own JSON writer stops
    near a thousand levels, and the point is to send more."""
    return f"@@DEEP{depth}@@"


def expand(text: str) -> str:
    return _DEEP.sub(lambda m: "[" * int(m.group(1)) + "1" + "]" * int(m.group(1)), text)


def _json_body(data: Any) -> tuple[bytes, str]:
    return expand(json.dumps(data, separators=(",", ":"), ensure_ascii=False)).encode(), "application/json"


def _multipart_body(fields: dict[str, str]) -> tuple[bytes, str]:
    return multipart(fields)


def _urlencoded_body(fields: dict[str, str]) -> tuple[bytes, str]:
    return urlencode(fields).encode(), URLENCODED


def _static(headers: Headers) -> Callable[[bytes], Headers]:
    return lambda _body: headers


def _twilio(body: bytes) -> Headers:
    """Twilio's signature over the URL and the parameters the body holds (repeated names sorted by value)."""
    pairs = sorted(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    data = PUBLIC_TWILIO + "".join(name + value for name, value in pairs)
    digest = hmac.new(S["TWILIO_TOKEN"].encode(), data.encode(), hashlib.sha1).digest()
    return {"X-Twilio-Signature": base64.b64encode(digest).decode()}


def _mandrill(body: bytes) -> Headers:
    """Mandrill's signature over its URL and the fields the body holds, sorted by name."""
    pairs = sorted(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    data = PUBLIC_MANDRILL + "".join(name + value for name, value in pairs)
    digest = hmac.new(S["MANDRILL_KEY"].encode(), data.encode(), hashlib.sha1).digest()
    return {"X-Mandrill-Signature": base64.b64encode(digest).decode()}


def _ses_build(notification: Any) -> tuple[bytes, str]:
    """The SES notification inside a signed SNS envelope."""
    envelope = load("ses/sns_notification.json")
    envelope["Message"] = expand(json.dumps(notification, ensure_ascii=False))
    envelope["Timestamp"] = "2024-06-03T10:02:20.000Z"
    return compact(sns_sign(envelope)), "text/plain; charset=UTF-8"


def _ses_envelope() -> dict[str, Any]:
    envelope = load("ses/sns_notification.json")
    envelope["Message"] = json.dumps(load("ses/received.json"))
    envelope["Timestamp"] = "2024-06-03T10:02:20.000Z"
    return envelope


def _sns_envelope_build(envelope: Any) -> tuple[bytes, str]:
    """The SNS envelope itself as mutated (its Type, Timestamp, TopicArn, SigningCertURL…), signed over what
    it then holds: the envelope is read before its signature is checked, and after it."""
    if not isinstance(envelope, dict):
        return _json_body(envelope)[0], "text/plain; charset=UTF-8"
    if "Type" in envelope:
        signed = sns_sign(envelope)
    else:  # the fields signed depend on the Type: signed as a notification's, then sent without one
        signed = sns_sign({"Type": "Notification", **envelope})
        del signed["Type"]
    return expand(json.dumps(signed, separators=(",", ":"), ensure_ascii=False)).encode(), "text/plain; charset=UTF-8"


def _sendgrid_raw() -> dict[str, str]:
    return {"email": raw("ses/message.eml").decode(), "to": "support@acme.test", "from": "asha@example.com"}


def specs() -> dict[str, Spec]:
    return {
        "mailgun": Spec("/hooks/mailgun", mailgun_fields(S["MAILGUN_KEY"]), _multipart_body, _static({}), form=True),
        "sendgrid": Spec("/hooks/sendgrid", load("sendgrid/parse.json"), _multipart_body,
                         _static({"Authorization": basic("sendgrid", S["SENDGRID_PW"])}), form=True),
        "sendgrid-raw": Spec("/hooks/sendgrid", _sendgrid_raw(), _multipart_body,
                             _static({"Authorization": basic("sendgrid", S["SENDGRID_PW"])}), form=True),
        "postmark": Spec("/hooks/postmark", load("postmark/inbound.json"), _json_body,
                         _static({"Authorization": basic("postmark", S["POSTMARK_PW"])})),
        # the raw-message paths: the thread's MIME is what the fuzzer mutates
        "mailgun-mime": Spec("/hooks/mailgun", {**mailgun_fields(S["MAILGUN_KEY"]), "body-mime": THREAD.decode()},
                             _multipart_body, _static({}), form=True),
        "postmark-raw": Spec("/hooks/postmark", postmark_raw(), _json_body,
                             _static({"Authorization": basic("postmark", S["POSTMARK_PW"])})),
        "cloudmailin-raw": Spec("/hooks/cloudmailin", {"envelope[to]": "support@acme.test",
                                                       "envelope[recipients][0]": "support@acme.test",
                                                       "envelope[spf][result]": "pass", "message": THREAD.decode()},
                                _multipart_body, _static({"Authorization": basic("cloudmailin", S["CLOUDMAILIN_PW"])}),
                                form=True),
        "ses": Spec("/hooks/ses", load("ses/received.json"), _ses_build, _static({})),
        "ses-envelope": Spec("/hooks/ses", _ses_envelope(), _sns_envelope_build, _static({})),
        "cloudmailin": Spec("/hooks/cloudmailin", load("cloudmailin/normalized.json"), _json_body,
                            _static({"Authorization": basic("cloudmailin", S["CLOUDMAILIN_PW"])})),
        "brevo": Spec(f"/hooks/brevo?token={S['BREVO_TOKEN']}", load("brevo/inbound.json"), _json_body, _static({})),
        "mailjet": Spec("/hooks/mailjet", load("mailjet/parse.json"), _json_body,
                        _static({"Authorization": basic("mailjet", S["MAILJET_PW"])})),
        "mandrill": Spec("/hooks/mandrill", {"mandrill_events": json.dumps(load("mandrill/inbound_events.json"))},
                         _urlencoded_body, _mandrill, form=True),
        "sparkpost": Spec("/hooks/sparkpost", load("sparkpost/relay.json"), _json_body,
                          _static({"X-MessageSystems-Webhook-Token": S["SPARKPOST_TOKEN"]})),
        "resend": Spec("/hooks/resend", load("resend/email_received.json"), _json_body,
                       lambda b: {k.replace("webhook-", "svix-"): v  # Svix's spelling, over any bytes
                                  for k, v in standard_webhooks_headers(S["RESEND_SECRET"], b).items()}),
        "mailersend": Spec("/hooks/mailersend", load("mailersend/inbound.json"), _json_body,
                           lambda b: {"Signature": mailersend_signature(S["MAILERSEND_SECRET"], b)}),
        "postal": Spec("/hooks/postal", load("postal/hash.json"), _json_body, postal_headers),
        "typeform": Spec("/hooks/typeform", load("typeform/form_response.json"), _json_body,
                         lambda b: {"Typeform-Signature": typeform_signature(S["TYPEFORM_SECRET"], b)}),
        "tally": Spec("/hooks/tally", load("tally/form_response.json"), _json_body,
                      lambda b: {"Tally-Signature": tally_signature(S["TALLY_SECRET"], b)}),
        "webflow": Spec("/hooks/webflow", load("webflow/form_submission.json"), _json_body,
                        lambda b: webflow_headers(S["WEBFLOW_SECRET"], b)),
        "jotform": Spec(f"/hooks/jotform?secret={S['JOTFORM_SECRET']}", load("jotform/submission.json"),
                        _multipart_body, _static({}), form=True),
        "google-forms": Spec("/hooks/google-forms", load("google_forms/response.json"), _json_body,
                             lambda b: {"X-Signature": google_forms_signature(S["GOOGLE_FORMS_SECRET"], b)}),
        "twilio": Spec("/hooks/twilio", load("twilio/whatsapp_media.json"), _urlencoded_body, _twilio,
                       form=True),
        "whatsapp": Spec("/hooks/whatsapp", load("whatsapp/messages.json"), _json_body,
                         lambda b: {"X-Hub-Signature-256": hub_signature(S["META_APP_SECRET"], b)}),
        "slack": Spec("/hooks/slack", load("slack/message.json"), _json_body,
                      lambda b: slack_headers(S["SLACK_SECRET"], b)),
        "telegram": Spec("/hooks/telegram", load("telegram/photo.json"), _json_body,
                         _static({"X-Telegram-Bot-Api-Secret-Token": S["TELEGRAM_TOKEN"]})),
        "intercom": Spec("/hooks/intercom", load("intercom/conversation_replied.json"), _json_body,
                         lambda b: {"X-Hub-Signature": hub_signature(S["INTERCOM_SECRET"], b, "sha1")}),
        "partner": Spec("/hooks/partner", load("standard_webhooks/invoice_paid.json"), _json_body,
                        lambda b: standard_webhooks_headers(S["PARTNER_SECRET"], b)),
        "contact": Spec("/hooks/contact", {"name": "Asha", "email": "asha@example.com", "subject": "Router"},
                        _urlencoded_body, _static({}), form=True),
        "contact-multipart": Spec("/hooks/contact", {"name": "Asha", "email": "asha@example.com"},
                                  _multipart_body, _static({}), form=True),
    }


SPECS = specs()
KINDS = sorted(SPECS)


# -- values -----------------------------------------------------------------------------------------------

ODD_TEXT = [
    "²", "٣", "\u0000", "\u202e", "\ufeff", "\u0301", "🚀", "\U0001d518\U0001d52b\U0001d526", "\r\n", "\n", "\t", " ",
    "", "'", '"', "\\",
    "=?utf-8?q?Asha=0ARao?= <asha@example.com>", "=?utf-8?b?QXNoYQ0KQmNjOiB4QGV2aWwudGVzdA==?= <a@b.c>",
    "=?bogus?q?x?=", "=?utf-8?q?Rao=2C_Asha?= <a@b.c>, x@y.z", "<a@b>", "a@b, <c@d>, \"e, f\" <g@h>", "@", "<<>>",
    "9" * 5000, "-1", "1e400", "0x10", "NaN", "null", "true", "[]", "{}", "[" * 2000, "{\"a\":" * 1500,
    "On Mon wrote:\n> quoted", "-----Original Message-----", "base64!!", "AAAA====", "/9j/4AAQ", "text/plain",
    "BASE64", "multipart/mixed; boundary=\"b1\"", "utf-7", "unicode_escape", "+2AA-", "\\ud800",
    # RFC 2231 parameters the standard library's readers fail on, spliced into raw MIME and form part headers
    "; filename*=utf-16''%61", "; name*=idna''%FF", "; charset*=a\u0000b''x", "; filename*=utf-8''a; filename*0=b",
    "\nContent-Type: multipart/mixed; boundary*=idna''%FF\n", "\nContent-Disposition: attachment; name*=punycode''x\n",
    # codecs that are no character set, where a charset is named (an invalid escape warns in unicode_escape)
    "; charset=unicode_escape", "=?unicode_escape?q?=5Cq?=", "; filename*=unicode_escape''%5Cq", "\\q",
]
text = st.one_of(st.text(max_size=40), st.sampled_from(ODD_TEXT))
numbers = st.one_of(st.integers(), st.integers(min_value=-(10**4200), max_value=10**4200),
                    st.floats(allow_nan=False, allow_infinity=False))
scalars = st.one_of(st.none(), st.booleans(), numbers, text)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(text, inner, max_size=4)), max_leaves=12)


def nested(depth: int, leaf: Any) -> Any:
    for i in range(depth):
        leaf = [leaf] if i % 2 else {"a": leaf}
    return leaf


values = st.one_of(json_values, st.builds(nested, st.integers(1, 200), scalars), st.integers(1, 5000).map(deep))
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def header_value(raw: bytes) -> bytes:
    """Header bytes as far as HTTP lets them reach the app: aiohttp's parser refuses control characters itself
    (and its 400 may be lost to the reset that closing a half-read connection sends)."""
    return _CONTROL.sub(b"", raw).strip()


header_bytes = st.one_of(
    st.binary(max_size=60),
    st.text(max_size=40).map(lambda t: t.encode()),
    st.sampled_from([b"\xff\xfe", b"caf\xe9", b"\xed\xa0\x80", b"\xc3", b"9" * 5000, b"a" * 8000]),
).map(header_value)
CHARSETS = ["utf-8", "UTF-8", "utf-7", "unicode_escape", "raw_unicode_escape", "latin-1", "utf-16", "utf-32",
            "ascii", "cp1252", "bogus", "rot13", "base64", "hex", "idna", "punycode", "", '"utf-8"', "\xff"]
FUZZED_HEADERS = ["User-Agent", "Referer", "X-Forwarded-For", "Origin", "X-Request-Id", "Authorization",
                  "Accept", "X-Slack-Request-Timestamp", "X-Slack-Signature", "X-Slack-Retry-Num",
                  "webhook-id", "webhook-timestamp", "webhook-signature", "x-webflow-timestamp",
                  "x-webflow-signature", "X-Twilio-Signature", "X-Hub-Signature-256", "X-Hub-Signature",
                  "Typeform-Signature", "Tally-Signature", "X-Signature", "X-Telegram-Bot-Api-Secret-Token"]


# -- mutations ------------------------------------------------------------------------------------------


def paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield (*path, key)
        yield from paths(child, (*path, key))


def set_at(data: Any, path: tuple[Any, ...], value: Any, *, delete: bool = False) -> Any:
    out = copy.deepcopy(data)
    target = out
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


def get_at(data: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        data = data[key]
    return data


def splice(draw: Any, value: str) -> str:
    """Text with odd text put in, or some cut out, somewhere inside (a raw MIME message, an address list...)."""
    at = draw(st.integers(0, len(value)))
    return value[:at] + draw(text) + value[at + draw(st.integers(0, 40)):]


def mutate_json(draw: Any, data: Any) -> Any:
    """`data` with one or a few values replaced, edited inside or dropped, or all of it wrapped deep."""
    for _ in range(draw(st.integers(1, 3))):
        where = list(paths(data))
        choice = draw(st.integers(0, 9))
        if choice == 0 or not where:
            return nested(draw(st.integers(1, 200)), data)
        path = draw(st.sampled_from(where))
        current = get_at(data, path)
        if choice == 1:
            data = set_at(data, path, None, delete=True)
        elif choice <= 4 and isinstance(current, str):
            data = set_at(data, path, splice(draw, current))
        else:
            data = set_at(data, path, draw(values))
    return data


def mutate_form(draw: Any, fields: dict[str, str]) -> dict[str, str]:
    """Form fields with values rewritten (as text, or as JSON text where a field carries JSON), added or dropped."""
    fields = dict(fields)
    for _ in range(draw(st.integers(1, 3))):
        choice = draw(st.integers(0, 5))
        name = draw(st.sampled_from(sorted(fields))) if fields else "x"
        if choice == 0:
            fields.pop(name, None)
        elif choice == 1:
            fields[draw(text)] = draw(text)
        elif choice == 2:
            fields[name] = expand(json.dumps(draw(values), ensure_ascii=False))
        elif choice == 3 and name in fields:
            fields[name] = splice(draw, fields[name])
        else:
            fields[name] = draw(text)
    return fields


def mutate_bytes(draw: Any, body: bytes) -> bytes:
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        choice = draw(st.integers(0, 3))
        if choice == 0 and body:
            at = min(at, len(body) - 1)
            body = body[:at] + bytes([body[at] ^ (1 << draw(st.integers(0, 7)))]) + body[at + 1:]
        elif choice == 1:
            body = body[:at]
        elif choice == 2:
            body = body[:at] + draw(st.binary(max_size=8) | st.sampled_from(
                [b"\xff", b"\xed\xa0\x80", "\u202e".encode(), b"\x00", b"[" * 1500, b"9" * 5000, b"\\q",
                 b"%5Cq"])) + body[at:]
        else:
            body = body[:at] + body[at + draw(st.integers(1, 50)):]
    return body


def content_type(draw: Any, base: str) -> bytes:
    """The Content-Type as built, or with an odd charset, a parameter that is not UTF-8, or another type."""
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return base.encode()
    if choice == 1:
        return f"{base}; charset={draw(st.sampled_from(CHARSETS))}".encode("utf-8", "surrogateescape")
    if choice == 2:
        return base.encode() + b"; x=" + draw(header_bytes)
    if choice == 3:
        return draw(st.sampled_from([b"application/json", b"text/plain", URLENCODED.encode(),
                                     b"multipart/form-data", b"multipart/form-data; boundary=", b"", b"*/*"]))
    return draw(header_bytes)


@st.composite
def requests(draw: Any, kind: str) -> tuple[str, bytes, list[Header]]:
    spec = SPECS[kind]
    mode = draw(st.sampled_from(["bytes", "structure", "flip", "headers"]))
    data = spec.data
    if mode == "structure":
        data = mutate_form(draw, data) if spec.form else mutate_json(draw, data)
    try:
        body, ctype = spec.build(data)
    except (ValueError, TypeError, UnicodeError):  # a value JSON cannot write (e.g. an int past 4300 digits)
        body, ctype = spec.build(spec.data)
    if mode == "bytes":
        body = draw(st.binary(max_size=400) | st.sampled_from([b"[" * 5000, b'{"a":' * 5000, b"\xff" * 10]))
    elif mode == "flip":
        body = mutate_bytes(draw, body)
    headers: dict[str, bytes] = {k: v.encode() for k, v in spec.sign(body).items()}
    headers.setdefault("Content-Type", ctype.encode())
    if mode == "headers":
        headers["Content-Type"] = content_type(draw, ctype)
        for name in draw(st.lists(st.sampled_from(FUZZED_HEADERS), max_size=4)):
            for existing in [k for k in headers if k.lower() == name.lower()]:
                del headers[existing]
            headers[name] = draw(header_bytes)
    return spec.path, body, list(headers.items())


# -- the test ----------------------------------------------------------------------------------------------

TOTAL = int(os.environ.get("FUZZ_EXAMPLES", "0"))
PER_KIND = -(-TOTAL // len(KINDS)) if TOTAL else 16
FIXED = not TOTAL  # the normal suite draws the same examples each run
ANSWERS: dict[str, dict[int, int]] = {}


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    """With FUZZ_EXAMPLES set: logs below error level are dropped (writing them costs more than the requests), a
    handler's traceback is printed plain (the console renderer's default would show its locals: the sources'
    secrets among them), and at the end, how many requests each source was sent and how it answered."""
    started = time.monotonic()
    if TOTAL:
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR),
            processors=[*structlog.get_config()["processors"][:-1],
                        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)])
    try:
        yield
    finally:
        if TOTAL:
            structlog.reset_defaults()
            total = sum(n for by in ANSWERS.values() for n in by.values())
            print(f"\nfuzz: {total} requests over {len(ANSWERS)} source kinds in {time.monotonic() - started:.0f}s")
            for kind, by in sorted(ANSWERS.items()):
                print(f"  {kind}: {sum(by.values())} requests, answers {dict(sorted(by.items()))}")


STORE = os.environ.get("FUZZ_STORE", "sqlite")


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient) -> AsyncIterator[Any]:
    config = CONFIG.replace("sources:\n", "sources:\n  contact: {kind: form, cors_origins: ['*']}\n")
    if STORE == "sqlite":
        yield await providers_client(bridge_client, write_config(config, MAPPINGS, SECRETS), workers=False)
        return
    assert STORE == "postgres", f"FUZZ_STORE is sqlite or postgres, not {STORE!r}"
    schema = f"tb_fuzz_{uuid.uuid4().hex[:12]}"
    yield await providers_client(bridge_client, write_config(config, MAPPINGS, SECRETS), workers=False,
                                 store=PostgresStore(DSN, schema=schema))
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def conn(client: Any) -> Any:
    raw_client = RawClient(client.host, client.port)
    yield raw_client
    await raw_client.close()


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=PER_KIND, deadline=None, database=None, derandomize=FIXED,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
async def test_any_request_is_answered_2xx_or_4xx(client: Any, conn: RawClient, kind: str, data: Any) -> None:
    """Whatever a request's bytes, body and headers, the answer is 2xx or 4xx and no handler fails."""
    path, body, headers = data.draw(requests(kind), label="request")
    # the app lives for all of a kind's examples: what counts is this request's handler errors, not the count
    # so far (which, once one request failed, would fail every later one, and Hypothesis would shrink to those)
    errors = runtime(client).counters.get("handler_error", 0)
    answer = await conn.post(path, body, headers)
    by = ANSWERS.setdefault(kind, {})
    by[answer.status] = by.get(answer.status, 0) + 1
    assert answer.status < 500, answer.body[:500]
    assert runtime(client).counters.get("handler_error", 0) == errors, answer.body[:500]
