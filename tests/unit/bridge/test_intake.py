"""bridge/intake.py: which requests are verified and parsed off the loop."""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar, cast
from urllib.parse import urlencode

import msgspec
import pytest
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import Request
from structlog.testing import capture_logs

from bridge import offload
from bridge.config import ServerConfig, SourceConfig
from bridge.events import Event
from bridge.intake import (
    EVENTS_ON_LOOP,
    HASH_ON_LOOP_BYTES,
    OFFLOAD_BYTES,
    OFFLOAD_MIME_LINES,
    WEIGHED_VALUES,
    _new_events,
    _nonce,
    _save_attachments,
    offloaded,
    run_handler,
    weighed,
)
from bridge.runtime import Runtime, Source
from bridge.store.base import NewDelivery
from handlers.attachments import Attachment
from handlers.base import Handler, Inbound, Intercepted, SignedNonce, count_fetched
from handlers.limits import LOOP_PARAMS
from tests.faults import default_executor_held


def test_small_ordinary_bodies_stay_on_the_loop() -> None:
    """A form post, a JSON webhook or a short mail costs less to parse than a thread hand-off."""
    assert not offloaded(b"name=Asha&email=asha%40example.com")
    assert not offloaded(b'{"text": "' + b"x" * (OFFLOAD_BYTES - 20) + b'"}')
    assert not offloaded(b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n")


def test_large_bodies_and_many_mime_parts_go_to_the_parser_thread() -> None:
    """Over 64 KiB, or with many MIME delimiter lines (raw, or escaped in a JSON string), is parsed in a thread."""
    assert offloaded(b"x" * (OFFLOAD_BYTES + 1))
    assert offloaded(b"\r\n--b\r\nv" * (OFFLOAD_MIME_LINES + 1))
    assert offloaded(b'{"content": "' + b"\\r\\n--b\\r\\nv" * (OFFLOAD_MIME_LINES + 1) + b'"}')


@pytest.mark.parametrize("newline", [b"\r", b"\\r"], ids=["raw", "json"])
def test_many_mime_parts_on_lines_ended_by_a_bare_carriage_return_go_to_the_parser_thread(newline: bytes) -> None:
    """The MIME parser ends a line at a lone CR too: a form of many parts delimited so (each read by the email
    package's readers, up to 80 µs) is placed by its delimiter lines as one on LF lines is."""
    assert offloaded((newline + b"--b" + newline + b"v") * (OFFLOAD_MIME_LINES + 1))
    assert not offloaded((newline + b"--b" + newline + b"v") * OFFLOAD_MIME_LINES)


@pytest.mark.parametrize("newline", [b"%0D%0A", b"%0d%0a", b"%0A", b"%0D", b"%0d"])
def test_many_mime_parts_url_encoded_in_a_form_go_to_the_parser_thread(newline: bytes) -> None:
    """Mailgun's urlencoded `body-mime` sends the message's line breaks as %0D%0A: its delimiter lines count."""
    assert offloaded(b"body-mime=" + (newline + b"--b" + newline + b"v") * (OFFLOAD_MIME_LINES + 1))
    assert not offloaded(b"body-mime=" + (newline + b"--b" + newline + b"v") * OFFLOAD_MIME_LINES)


def _offloaded_by_counts(body: bytes) -> bool:
    """`offloaded` as first written, every pattern counted in the bytes: the reference its tests of `in` keep to."""
    if len(body) > OFFLOAD_BYTES:
        return True
    encoded = b"%" in body
    lines = body.count(b"\n--") + body.count(b"\\n--")
    if lines <= OFFLOAD_MIME_LINES:
        lines += body.count(b"\r--") + body.count(b"\\r--")
    if lines <= OFFLOAD_MIME_LINES and encoded:
        lines += body.count(b"%0A--") + body.count(b"%0a--") + body.count(b"%0D--") + body.count(b"%0d--")
    if lines > OFFLOAD_MIME_LINES:
        return True
    semicolons = body.count(b";")
    if semicolons <= LOOP_PARAMS and encoded:
        semicolons += body.count(b"%3B") + body.count(b"%3b")
    return semicolons > LOOP_PARAMS


_PIECES = [b"\n--", b"\\n--", b"\r--", b"\\r--", b"%0A--", b"%0a--", b"%0D--", b"%0d--", b";", b"%3B", b"%3b",
           b"%3D", b"%", b"-", b"--",
           b"\n-", b"\xff\xfe", b"\xe6\x97", b"x"]


@pytest.mark.parametrize("seed", range(40))
def test_offloaded_gives_what_counting_every_pattern_gives(seed: int) -> None:
    """`offloaded` looks at the body as Latin-1 text and counts a pattern only where a test finds it: for bodies
    made of every piece a pattern is built from (8-bit bytes too), around both thresholds, the same answer as
    counting every pattern in the bytes."""
    rng = random.Random(seed)
    for _ in range(25):
        pieces = rng.sample(_PIECES, rng.randint(1, 4))
        around = rng.choice([OFFLOAD_MIME_LINES, LOOP_PARAMS // 2, LOOP_PARAMS])
        body = b"".join(rng.choice(pieces) * rng.randint(0, around + 2) for _ in range(rng.randint(1, 6)))
        assert offloaded(body) is _offloaded_by_counts(body), body
    assert offloaded(b"") is _offloaded_by_counts(b"") is False


class Recording(Handler):
    """A handler that notes the thread each step runs on."""

    kind: ClassVar[str] = "recording"
    channel = "webhook"
    Options: ClassVar[type[SourceConfig]] = SourceConfig

    def __init__(self) -> None:
        super().__init__("src", SourceConfig(kind="recording"), ServerConfig())
        self.threads: list[str] = []

    def verify(self, request: Request, body: bytes) -> None:
        self.threads.append(threading.current_thread().name)

    def parse(self, request: Request, body: bytes) -> list[Inbound]:
        self.threads.append(threading.current_thread().name)
        return [Inbound(payload={"size": len(body)})]


@pytest.mark.parametrize("off", [False, True], ids=["on_loop", "off_loop"])
async def test_verify_and_parse_run_where_the_request_is_placed(off: bool) -> None:
    """Verify and parse both run in the parser thread when the request is `off` the loop (the body's
    `offloaded`, looked at once per request by the caller), both on the loop otherwise."""
    handler = Recording()
    request = make_mocked_request("POST", "/hooks/src")
    handled = await run_handler(cast(Runtime, None), Source("src", handler, None, 0.0), request, b"name=Asha",
                                off=off)
    assert not isinstance(handled, Intercepted)
    assert handled[0][0].payload == {"size": 9}
    assert [name.startswith("ticketbridge-parse") for name in handler.threads] == [off] * 2


class Intercepting(Recording):
    """A subclass that adds `intercept` to what Recording defines."""

    async def intercept(self, request: Request, body: bytes) -> Intercepted | None:
        self.threads.append("intercept")
        return None


def test_the_hooks_a_handler_class_defines_are_known_once_per_class() -> None:
    """Which optional hooks a class defines (its own or inherited from a subclass of Handler) is set when the class
    is made, not worked out per request: a web form defines none, Recording only `verify`, its subclass
    `verify` and `intercept`."""
    from handlers.form import FormHandler

    assert (FormHandler.defines_verify, FormHandler.defines_prepare, FormHandler.defines_intercept) == (
        False, False, False)
    assert (Recording.defines_verify, Recording.defines_prepare, Recording.defines_intercept) == (True, False, False)
    assert (Intercepting.defines_verify, Intercepting.defines_prepare, Intercepting.defines_intercept) == (
        True, False, True)


class Noncing(Recording):
    """A subclass that gives the nonce its signature signs."""

    def nonce(self, request: Request, body: bytes) -> SignedNonce | None:
        return SignedNonce(name="the token", value="tok-1", valid_for_s=300.0)


async def test_a_large_bodys_nonce_digest_needs_no_default_executor_thread() -> None:
    """A body too large to hash on the loop is hashed in intake's own file thread: with the event loop's default
    executor held (hung host name look-ups once held it), the request's nonce is still made."""
    body = b"x" * (HASH_ON_LOOP_BYTES + 1)
    async with default_executor_held():
        made = await asyncio.wait_for(_nonce(SignedNonce(name="the token", value="tok-1", valid_for_s=300.0), "src",
                                             body), 5)
    assert made.digest == hashlib.sha256(b"src\0" + body).hexdigest()[:32]


async def test_attachments_are_saved_without_a_default_executor_thread(tmp_path: Path) -> None:
    """A request's attachments are written in intake's own file thread: with the event loop's default executor held,
    they are still saved."""
    content = b"report"
    item = Attachment(meta={"sha256": hashlib.sha256(content).hexdigest()}, content=content)
    rt = cast(Runtime, SimpleNamespace(config=SimpleNamespace(attachments_dir=tmp_path,
                                                              attachments=SimpleNamespace(max_bytes=1024))))
    async with default_executor_held():
        assert await asyncio.wait_for(_save_attachments(rt, Source("src", Noncing(), None, 0.0), [item]), 5) is None
    assert item.meta["stored"] is True


async def test_the_nonce_is_asked_of_the_handlers_that_give_one() -> None:
    """A handler that gives no nonce of its own (a web form) is not asked for one; one that does (Mailgun) is,
    when the request is verified, and its nonce goes with the events."""
    from handlers.form import FormHandler
    from handlers.mailgun import MailgunHandler

    assert (FormHandler.defines_nonce, Recording.defines_nonce) == (False, False)
    assert (MailgunHandler.defines_nonce, Noncing.defines_nonce) == (True, True)
    request = make_mocked_request("POST", "/hooks/src")
    handled = await run_handler(cast(Runtime, None), Source("src", Noncing(), None, 0.0), request, b"x", off=False)
    assert not isinstance(handled, Intercepted) and handled[1] is not None and handled[1].value == "tok-1"
    handled = await run_handler(cast(Runtime, None), Source("src", Noncing(), None, 0.0), request, b"x", off=False,
                                verify=False)
    assert not isinstance(handled, Intercepted) and handled[1] is None


async def test_only_the_hooks_a_handler_defines_are_run() -> None:
    """`intercept` runs for the class that defines it, before `parse`; `verify` only when asked for."""
    handler = Intercepting()
    request = make_mocked_request("POST", "/hooks/src")
    await run_handler(cast(Runtime, None), Source("src", handler, None, 0.0), request, b"x", off=False)
    assert handler.threads == ["MainThread", "intercept", "MainThread"]
    handler.threads.clear()
    await run_handler(cast(Runtime, None), Source("src", handler, None, 0.0), request, b"x", off=False, verify=False)
    assert handler.threads == ["intercept", "MainThread"]


def test_a_long_dedup_key_is_kept_as_its_digest() -> None:
    """Past MAX_DEDUP_KEY_CHARS the SHA-256 of the key, the same for the same key, different for another
    (PostgreSQL indexes at most 2,704 bytes of a row)."""
    from bridge.intake import MAX_DEDUP_KEY_CHARS, _indexable

    assert _indexable("msg-\x00-1") == "msg-\x00-1"  # the store writes a NUL out
    assert _indexable("k" * MAX_DEDUP_KEY_CHARS) == "k" * MAX_DEDUP_KEY_CHARS
    long = "k" * (MAX_DEDUP_KEY_CHARS + 1)
    assert _indexable(long) == "sha256:" + hashlib.sha256(long.encode()).hexdigest() == _indexable(long)
    assert _indexable(long + "\udcff") != _indexable(long)  # a lone surrogate is hashed, not refused


def test_a_configured_dedup_value_is_a_key_exact_to_its_type() -> None:
    """A string is its own key, as it always was (keys already stored still match); any other value is `json:`
    and its canonical JSON, so no value of one type shares a key with another's text; a string that starts
    with `json:` is written as JSON too. Null, "", {} and [] are no key."""
    from bridge.intake import dedup_value_key

    assert dedup_value_key("p-1") == "p-1"
    assert dedup_value_key("5") == "5"
    keys = [dedup_value_key(v) for v in
            [5, "5", 5.0, True, "True", "true", [1], "[1]", "json:[1]", "json:5", {"a": 1}, '{"a": 1}', [None]]]
    assert None not in keys and len(set(keys)) == len(keys)
    assert dedup_value_key({"b": [1, 2], "a": "x"}) == dedup_value_key({"a": "x", "b": [1, 2]})
    assert [dedup_value_key(v) for v in (None, "", {}, [])] == [None] * 4
    text = ["a\udcff"]  # a header byte that was not UTF-8: written out, and the payload left as it is
    assert dedup_value_key(text) == 'json:["a\\\\xff"]'
    assert text == ["a\udcff"]


JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _intercepting_kinds() -> list[tuple[str, dict[str, Any], bytes, dict[str, str]]]:
    """Each kind whose `intercept` reads the body, with options and a body its provider sends."""
    from tests.fixtures.providers import compact, load, mandrill_request, postal_public_key

    def fixture(name: str) -> bytes:
        return compact(load(name))

    mandrill_body, mandrill_headers = mandrill_request("k", "https://bridge.example.com/hooks/mandrill")
    return [
        ("slack", {"signing_secret": "s"}, fixture("slack/message.json"), JSON),
        ("whatsapp", {"app_secret": "s", "verify_token": "v"}, fixture("whatsapp/messages.json"), JSON),
        ("telegram", {"secret_token": "s"}, fixture("telegram/message.json"), JSON),
        ("typeform", {"secret": "s"}, fixture("typeform/form_response.json"), JSON),
        ("tally", {"secret": "s"}, fixture("tally/form_response.json"), JSON),
        ("webflow", {"secret": "s"}, fixture("webflow/form_submission.json"), JSON),
        ("intercom", {"secret": "s"}, fixture("intercom/conversation_replied.json"), JSON),
        ("postmark", {}, fixture("postmark/inbound.json"), JSON),
        ("postal", {"public_key": postal_public_key()}, fixture("postal/hash.json"), JSON),
        ("mailersend", {"secret": "s"}, fixture("mailersend/inbound.json"), JSON),
        ("resend", {"secret": "whsec_c2VjcmV0", "api_key": "re_1"}, fixture("resend/email_received.json"), JSON),
        ("brevo", {}, fixture("brevo/inbound.json"), JSON),
        ("ses", {"topic_arns": ["arn:aws:sns:us-east-1:1:t"]}, fixture("ses/sns_notification.json"), JSON),
        ("sparkpost", {}, fixture("sparkpost/relay.json"), JSON),
        ("sendgrid", {}, b'[{"event": "delivered", "email": "a@example.com"}]', JSON),
        ("mandrill", {"webhook_key": "k", "public_url": "https://bridge.example.com/hooks/mandrill"}, mandrill_body,
         mandrill_headers),
        ("twilio", {"auth_token": "t" * 32, "public_url": "https://bridge.example.com/hooks/twilio"},
         urlencode(load("twilio/sms.json")).encode(), FORM),
    ]


@pytest.mark.parametrize(("kind", "options", "body", "headers"), _intercepting_kinds(),
                         ids=[k[0] for k in _intercepting_kinds()])
async def test_what_intercept_reads_is_parsed_once_in_the_parser_thread_for_a_large_body(
        monkeypatch: pytest.MonkeyPatch, kind: str, options: dict[str, Any], body: bytes,
        headers: dict[str, str]) -> None:
    """`intercept` runs on the loop; the body it reads is parsed by `prepare`, where the main parse runs (the
    parser thread for a request `off` the loop), once: a signed 1 MB Telegram update of `[[],[],…]` held the
    loop for a quarter of a second in intercept's parse."""
    import handlers.base
    import handlers.mandrill
    import handlers.sendgrid
    import handlers.sparkpost
    import handlers.twilio
    from tests.fixtures.providers import build

    reads: list[str] = []

    def recorded(module: Any, name: str) -> None:
        real = getattr(module, name)

        def read(data: Any, *args: Any, **kwargs: Any) -> Any:
            if data is body:
                reads.append(threading.current_thread().name)
            return real(data, *args, **kwargs)

        monkeypatch.setattr(module, name, read)

    for module in (handlers.base, handlers.sendgrid, handlers.sparkpost):
        recorded(module, "decode_json")
    for module in (handlers.mandrill, handlers.twilio):
        recorded(module, "parse_urlencoded")
    handler = build(kind, **options)
    request = make_mocked_request("POST", f"/hooks/{kind}", headers={"Host": "bridge.example.com", **headers})
    await run_handler(cast(Runtime, None), Source(kind, handler, None, 0.0), request, body, verify=False, off=True)
    assert len(reads) == 1 and reads[0].startswith("ticketbridge-parse"), reads


class Batch(Recording):
    """A handler whose request carries `count` events."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count

    def parse(self, request: Request, body: bytes) -> list[Inbound]:
        return [Inbound(payload={"i": i}) for i in range(self.count)]


async def test_a_request_of_more_events_than_the_cap_is_a_413_naming_both() -> None:
    """A signed WhatsApp post of 10,000 messages was stored as 10,000 events, taking 20 s to answer."""
    from bridge.errors import Rejected
    from bridge.intake import MAX_EVENTS

    request = make_mocked_request("POST", "/hooks/src")
    handled = await run_handler(cast(Runtime, None), Source("src", Batch(MAX_EVENTS), None, 0.0), request, b"{}")
    assert not isinstance(handled, Intercepted) and len(handled[0]) == MAX_EVENTS
    with pytest.raises(Rejected) as info:
        await run_handler(cast(Runtime, None), Source("src", Batch(10_000), None, 0.0), request, b"{}")
    assert (info.value.status, str(info.value)) == (413, f"too many events in one request: 10000, at most {MAX_EVENTS}")


@pytest.mark.parametrize(("count", "off"), [(1, False), (EVENTS_ON_LOOP, False), (EVENTS_ON_LOOP + 1, True)])
async def test_the_events_of_a_large_batch_are_built_in_the_parser_thread(
        monkeypatch: pytest.MonkeyPatch, count: int, off: bool) -> None:
    """Building each event (its id, time and dedup key) runs on the loop for a few, in the thread for many."""
    import bridge.intake
    from bridge.events import Event

    threads: list[str] = []

    class Recorded(Event):
        @classmethod
        def new(cls, **fields: Any) -> Event:
            threads.append(threading.current_thread().name)
            return Event.new(**fields)

    monkeypatch.setattr(bridge.intake, "Event", Recorded)
    inbounds = [Inbound(payload={"i": i}, dedup_key=str(i)) for i in range(count)]
    events = await _new_events(Source("src", Recording(), None, 0.0), inbounds, {}, {"remote": None})
    assert [e.dedup_key for e in events] == [str(i) for i in range(count)]
    assert {name.startswith("ticketbridge-parse") for name in threads} == {off}


class Fetching(Recording):
    """A handler whose intercept fetches `size` bytes for the request (as SES reads its message from S3)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    async def intercept(self, request: Request, body: bytes) -> Intercepted | None:
        count_fetched(request, self.size)
        return None


@pytest.mark.parametrize(("size", "off"), [(0, False), (OFFLOAD_BYTES, False), (OFFLOAD_BYTES + 1, True)])
async def test_what_intercept_fetched_places_the_parse(size: int, off: bool) -> None:
    """A small body whose handler fetched more than OFFLOAD_BYTES for it (an S3 object, a download) is parsed in
    the parser thread, as a body that large is; its checks, run before anything was fetched, stay on the loop. The
    placement is handed back with the events, for the render to follow the parse without asking again."""
    handler = Fetching(size)
    request = make_mocked_request("POST", "/hooks/src")
    handled = await run_handler(cast(Runtime, None), Source("src", handler, None, 0.0), request, b"{}")
    assert not isinstance(handled, Intercepted)
    assert [name.startswith("ticketbridge-parse") for name in handler.threads] == [False, off]
    assert handled[2] is off


class Costly(Recording):
    """A handler whose parse meets work too costly for the loop (as a long address list the fast path cannot
    read does), charged before any of it is done."""

    def parse(self, request: Request, body: bytes) -> list[Inbound]:
        self.threads.append(threading.current_thread().name)
        offload.spend_on_loop(offload.LOOP_ADDRESS_CHARS + 1, "the From field is read by the full address parser")
        return [Inbound(payload={"size": len(body)})]


async def test_a_parse_that_meets_costly_work_on_the_loop_is_run_again_in_the_parser_thread() -> None:
    """A request its body placed on the loop whose parse finds work too costly there (OffLoop) is parsed
    again, from the start, in the parser thread, and handled as any other; one line says so."""
    handler = Costly()
    request = make_mocked_request("POST", "/hooks/src")
    with capture_logs() as logs:
        handled = await run_handler(cast(Runtime, None), Source("src", handler, None, 0.0), request, b"name=Asha",
                                    off=False)
    assert not isinstance(handled, Intercepted)
    assert handled[0][0].payload == {"size": 9}
    assert [name.startswith("ticketbridge-parse") for name in handler.threads] == [False, False, True]
    assert [(e["event"], e["reason"]) for e in logs] == [
        ("intake.parse_offloaded", "the From field is read by the full address parser")]


def _disposition(semicolons: bytes) -> bytes:
    """A multipart form under 64 KiB, its parts' Content-Disposition holding `semicolons` in all."""
    return b'--B\r\nContent-Disposition: form-data; name="a"' + semicolons + b"\r\n\r\nx\r\n--B--\r\n"


@pytest.mark.parametrize(("body", "off"), [
    (_disposition(b"; filename*0*=%E6%97" * (LOOP_PARAMS - 1)), False),
    (_disposition(b"; filename*0*=%E6%97" * LOOP_PARAMS), True),
    (b"body-mime=" + b"%3B+filename*0*%3D%25E6" * (LOOP_PARAMS + 1), True),
], ids=["few_parameters", "many_parameters", "many_url_encoded"])
async def test_a_small_body_of_many_header_parameters_is_parsed_in_the_parser_thread(body: bytes, off: bool) -> None:
    """MIME header parameters cost up to 15 µs each to read (RFC 2231 continuations): 19 parts of 99 in 63 KB
    held the loop for 30 ms. A body with more than LOOP_PARAMS semicolons (raw, or URL-encoded as in Mailgun's
    `body-mime`) is verified, parsed and rendered in the parser thread (`offloaded`), though its size would place it
    on the loop."""
    assert len(body) < OFFLOAD_BYTES and offloaded(body) is off
    handler = Recording()
    handled = await run_handler(cast(Runtime, None), Source("src", handler, None, 0.0),
                                make_mocked_request("POST", "/hooks/src"), body)
    assert not isinstance(handled, Intercepted)
    assert [name.startswith("ticketbridge-parse") for name in handler.threads] == [off] * 2


def weighed_event(payload: dict[str, Any]) -> Event:
    return Event.new(source="mail", kind="email", channel="email", payload=payload, headers={"user-agent": "x"},
                     meta={"remote": "10.0.0.1"})


def test_an_event_weighs_the_text_it_and_its_deliveries_hold() -> None:
    """An event weighs what storing it encodes, about: the length of each string of its payload, headers and meta,
    however deep, and of its deliveries' bodies, a character three bytes when not ASCII; a number, a null or a
    key weighs nothing. An attachment saved apart weighs its entry alone."""
    event = weighed_event({"text": "t" * 1000, "html": None, "n": 12345, "provider": {"TextBody": "é" * 100},
                           "to": ["a" * 10, "b" * 10], "attachments": [{"name": "scan.pdf", "sha256": "f" * 64}]})
    delivery = NewDelivery(id="dlv_1", mapping="m", mapping_version="v1", destination="d", action="create_ticket",
                           body={"comment": "c" * 500})
    own = 1000 + 300 + 20 + len("scan.pdf") + 64 + len("x") + len("10.0.0.1")
    assert weighed(event, [], rest=10**9) == own
    assert weighed(event, [delivery, msgspec.structs.replace(delivery, body=None)], rest=10**9) == own + 500


def test_past_the_values_it_looks_at_an_event_weighs_its_share_of_the_request_too() -> None:
    """An event of more values than WEIGHED_VALUES (a long list) is weighed by what it found before them, and the
    rest it is given (its share of what its request was made from), as what the rest may hold is not looked at."""
    many = weighed_event({"text": "t" * 100, "ids": ["1"] * WEIGHED_VALUES})
    assert weighed(many, [], rest=7777) == 100 + 7777  # the text, found first (breadth first), and the rest
