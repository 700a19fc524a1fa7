"""handlers/base.py: the handler interface's shared behaviour."""

from __future__ import annotations

import json
import random
import re
import time
from typing import ClassVar

import msgspec
import pytest
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import Request, Response

from bridge.config import ServerConfig, SourceConfig
from bridge.errors import Rejected
from handlers.base import (
    KEEP_HEADERS,
    MAX_JSON_CONTAINERS,
    MAX_JSON_DEPTH,
    TEXT_DEPTH_BYTES,
    Handler,
    Inbound,
    _deeper_than,
    _value_deeper_than,
    answered,
    count_fetched,
    decode_json,
    decode_json_object,
    fetched_bytes,
    handshake_answer,
    hold_until_answered,
    ignored,
    not_a_message,
    obj,
    optional_json_object,
    per_request,
)
from tests.complexity.scaling import assert_linear
from tests.fixtures.providers import passes


class Plain(Handler):
    """A handler with no content-type restriction and no overrides."""

    kind: ClassVar[str] = "plain"
    channel = "webhook"
    Options: ClassVar[type[SourceConfig]] = SourceConfig

    def parse(self, request: Request, body: bytes) -> list[Inbound]:
        return [Inbound(payload={"raw": body.decode()})]


class JsonOnly(Plain):
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})


class TextOnly(Plain):
    content_types: ClassVar[frozenset[str]] = frozenset({"text/plain", "text/csv"})


def make(cls: type[Plain]) -> Plain:
    return cls("src", SourceConfig(kind="plain"), ServerConfig())


def request(content_type: str | None = None, **headers: str) -> Request:
    all_headers = {k.replace("_", "-"): v for k, v in headers.items()}
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    return make_mocked_request("POST", "/hooks/src", headers=all_headers)


def rejected_415(h: Handler, req: Request) -> Rejected:
    with pytest.raises(Rejected) as info:
        h.check_content_type(req)
    assert (info.value.status, info.value.check) == (415, "content_type")
    return info.value


# -- check_content_type -----------------------------------------------------------------------------


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/json", "image/png"])
def test_no_content_types_takes_anything(ctype: str | None) -> None:
    """A handler that lists no content types takes any body."""
    assert passes(lambda: make(Plain).check_content_type(request(ctype)))


@pytest.mark.parametrize(
    "ctype",
    ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
     "application/vnd.api+json", "application/cloudevents+json; charset=utf-8", "application/problem+json"],
)
def test_json_handler_takes_json_and_plus_json(ctype: str) -> None:
    """`application/json` is matched without parameters or case, and `…+json` types count as JSON."""
    assert passes(lambda: make(JsonOnly).check_content_type(request(ctype)))


@pytest.mark.parametrize("ctype", ["text/plain", "application/xml", "application/jsonp", "text/json+xml"])
def test_json_handler_refuses_other_types(ctype: str) -> None:
    """Other types, including look-alikes of JSON, are a 415 naming the type and what is taken."""
    err = rejected_415(make(JsonOnly), request(ctype))
    assert repr(ctype) in str(err)
    assert "application/json" in str(err)


@pytest.mark.parametrize("handler", [Plain, JsonOnly])
@pytest.mark.parametrize("ctype", ["application/json; x=;+*", "text/plain; x=;+*"])
def test_a_content_type_header_that_cannot_be_read_is_a_400_naming_it(handler: type[Handler], ctype: str) -> None:
    """aiohttp reads the header with the email package's parser, which raises IndexError on some malformed
    parameters: for any source, that is the client's bad header (400, naming it), not a handler bug."""
    with pytest.raises(Rejected) as info:
        make(handler).check_content_type(request(ctype))
    assert (info.value.status, info.value.check) == (400, "content_type")
    assert repr(ctype) in str(info.value) and "cannot be read (IndexError)" in str(info.value)


def test_missing_content_type_is_reported_as_none() -> None:
    """A request with no Content-Type is a 415 that says `none` rather than aiohttp's default."""
    err = rejected_415(make(JsonOnly), request(None))
    assert "'none'" in str(err)
    assert "octet-stream" not in str(err)


def test_plus_json_only_counts_where_json_is_taken() -> None:
    """A `+json` type is not taken by a handler that does not take JSON."""
    rejected_415(make(TextOnly), request("application/vnd.api+json"))


def test_415_lists_every_accepted_type_sorted() -> None:
    """The 415 message lists the accepted types in a stable order."""
    err = rejected_415(make(TextOnly), request("application/json"))
    assert "send one of: text/csv, text/plain" in str(err)


# -- kept headers -----------------------------------------------------------------------------------


def test_kept_headers_are_the_listed_few_lower_cased() -> None:
    """Only the listed headers are kept, under lower-case names; credentials and cookies are dropped."""
    req = request("application/json", User_Agent="curl/8", X_Request_ID="r-1", Referer="https://x/",
                  Authorization="Bearer secret", Cookie="sid=1", X_Signature="abc")
    assert make(Plain).kept_headers(req) == {
        "content-type": "application/json", "user-agent": "curl/8", "x-request-id": "r-1", "referer": "https://x/",
    }


def test_default_kept_headers_exclude_secrets() -> None:
    """The default header list never includes credential-bearing headers."""
    assert {h.lower() for h in KEEP_HEADERS}.isdisjoint({"authorization", "cookie", "x-signature", "x-api-key"})
    assert all(h == h.lower() for h in KEEP_HEADERS)


# -- defaults of the interface ----------------------------------------------------------------------


async def test_default_hooks() -> None:
    """By default there is no handshake, no signature check, no CORS origin and no redirect."""
    h = make(Plain)
    req = request("application/json", Origin="https://example.com", Accept="text/html")
    assert await h.handshake(req) is None
    h.verify(req, b"anything")
    assert h.allowed_origin("https://example.com") is False
    assert h.redirect_to(req) is None


def test_handler_keeps_its_name_and_options() -> None:
    """A handler remembers its source name, options and server settings."""
    opts, server = SourceConfig(kind="plain"), ServerConfig(port=1234)
    h = Plain("my-source", opts, server)
    assert (h.name, h.options, h.server) == ("my-source", opts, server)


def test_inbound_defaults() -> None:
    """An Inbound has no dedup key and is not spam unless said."""
    inbound = Inbound(payload={"a": 1})
    assert (inbound.dedup_key, inbound.spam) == (None, False)


# -- decode_json_object -----------------------------------------------------------------------------


def test_decode_json_object() -> None:
    """A JSON object decodes to a dict with nested values intact."""
    assert decode_json_object(b'{"a": [1, {"b": null}], "c": "\\u00e9"}') == {"a": [1, {"b": None}], "c": "é"}


@pytest.mark.parametrize("shape", [b"[],", b"{},", b"[[]],"])
def test_a_body_of_more_arrays_and_objects_than_the_bound_is_a_413_before_it_is_parsed(
        shape: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """msgspec builds every container of a text in one call that holds the interpreter: past MAX_JSON_CONTAINERS
    `[` and `{` the body is refused, naming the count and the bound, and the parser is never called."""
    body = b'{"x":[' + shape * MAX_JSON_CONTAINERS + b"1]}"
    calls: list[int] = []
    real = msgspec.json.decode
    monkeypatch.setattr(msgspec.json, "decode", lambda data: calls.append(1) or real(data))
    with pytest.raises(Rejected) as info:
        decode_json_object(body)
    count = body.count(b"[") + body.count(b"{")
    assert (info.value.status, info.value.check) == (413, "json")
    assert str(info.value) == (f"the JSON body holds too many arrays and objects: {count} `[` and `{{`, at most "
                               f"{MAX_JSON_CONTAINERS}")
    assert calls == []
    with pytest.raises(Rejected) as field:
        decode_json(body.decode(), field="payload")
    assert str(field.value).startswith("payload holds too many arrays and objects")


def test_a_body_at_the_container_bound_is_parsed() -> None:
    """Exactly MAX_JSON_CONTAINERS `[` and `{` (the outer object and array included) is still a body."""
    body = b'{"x":[' + b"[]," * (MAX_JSON_CONTAINERS - 3) + b"[]]}"
    assert body.count(b"[") + body.count(b"{") == MAX_JSON_CONTAINERS
    assert len(decode_json_object(body)["x"]) == MAX_JSON_CONTAINERS - 2


@pytest.mark.parametrize(("body", "kind"), [(b"[]", "list"), (b"1.5", "float"), (b"true", "bool")])
def test_decode_json_non_object(body: bytes, kind: str) -> None:
    """A JSON value that is not an object is a 400 naming what it is."""
    with pytest.raises(Rejected) as info:
        decode_json_object(body)
    assert (info.value.status, info.value.check) == (400, "json")
    assert f"got a JSON {kind}" in str(info.value)


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"\xff\xfe{}", b'{"a": "\xff"}', b'{"\xc3": 1}'])
def test_decode_json_malformed(body: bytes) -> None:
    """A body that is not JSON (or not UTF-8 inside a string) is a 400 carrying the parser's reason."""
    with pytest.raises(Rejected) as info:
        decode_json_object(body)
    assert (info.value.status, info.value.check) == (400, "json")
    assert str(info.value).startswith("malformed JSON: ")
    assert len(str(info.value)) > len("malformed JSON: ")


@pytest.mark.parametrize(("body", "at"), [
    (b'{"a": "\\ud800"}', 7), (b'{"a": "x\\uDBFFy"}', 8), (b'{"a": "\\\\\\ud800\\n"}', 9),
    (b'{"a": "\\ud83d\\ude00", "b": "\\ud83d"}', 28),
])
def test_a_lone_high_surrogate_is_named_with_its_position(body: bytes, at: int) -> None:
    """A high surrogate escape with no low one after it (which msgspec reports as "Input data was truncated") is
    a 400 saying so and naming the escape and its byte, not a truncated body; nor is it for a text field."""
    for data in (body, body.decode()):
        with pytest.raises(Rejected) as info:
            decode_json(data)
        said = str(info.value)
        unit = "byte" if isinstance(data, bytes) else "character"
        assert "truncated" not in said and "lone UTF-16 surrogate" in said and f"{unit} {at}" in said, said
        assert body[at:at + 6].decode().lower() in said.lower()


@pytest.mark.parametrize("body", [b'{"a": "\\\\ud800"}', b'{"a": "\\ud83d\\ude00"}'])
def test_an_escaped_backslash_or_a_pair_is_no_lone_surrogate(body: bytes) -> None:
    """`\\\\ud800` is a backslash and text, and a high surrogate with its low one is a character: both decode."""
    assert isinstance(decode_json_object(body)["a"], str)


def test_a_truncated_body_is_still_said_to_be_truncated() -> None:
    with pytest.raises(Rejected, match="truncated"):
        decode_json_object(b'{"a": "\\ud83d\\ude00')


def test_finding_a_lone_surrogate_grows_linearly() -> None:
    """Looking for the escape after a truncated-input error reads each byte once: runs of backslashes and of
    high surrogate escapes in pairs cost no more than they are long."""
    assert_linear(_refused, lambda n: b'{"a": "' + b"\\\\" * n + b"\\ud83d\\ude00" * n + b"\\ud800" + b'"}', 4_000)


def _refused(body: bytes) -> None:
    with pytest.raises(Rejected):
        decode_json_object(body)


@pytest.mark.parametrize("data", [b"", b"{", "[1, 2]", '"text"', b"null", "[" * (MAX_JSON_DEPTH + 1)])
def test_optional_json_object_reads_anything_else_as_absent(data: bytes | str) -> None:
    """An optional field that is not a JSON object (malformed, another type, too deep) reads as None."""
    assert optional_json_object(data) is None


def test_optional_json_object_gives_an_object() -> None:
    """An optional field holding a JSON object gives it, from bytes or text."""
    assert optional_json_object(b'{"a": 1}') == optional_json_object('{"a": 1}') == {"a": 1}


# -- the interception hook and its helpers ----------------------------------------------------------


async def test_intercept_lets_requests_through_by_default() -> None:
    """A handler that does not override `intercept` sends every request on to `parse`."""
    assert await make(Plain).intercept(request("application/json"), b"{}") is None


def test_ignored_answers_200_and_names_the_reason() -> None:
    """An ignored notification is answered 200 with the reason, so the provider stops retrying."""
    early = ignored("a bot's message")
    assert (early.outcome, early.reason, early.response.status) == ("ignored", "a bot's message", 200)
    assert isinstance(early.response, Response)
    assert early.response.body == b'{"accepted":true,"ignored":"a bot\'s message"}'


def test_handshake_answer_keeps_the_providers_response() -> None:
    """A handshake made by POST is answered with the provider's own response, counted as a handshake."""
    answer = Response(text="challenge")
    early = handshake_answer(answer, "Slack url_verification")
    assert (early.outcome, early.response) == ("handshake", answer)


def test_per_request_makes_once_per_request() -> None:
    """A value computed for a request is reused by later calls on it, and not shared with another request."""
    calls: list[int] = []

    def make_value() -> int:
        calls.append(1)
        return len(calls)

    first, second = request(), request()
    assert per_request(first, "n", make_value) == 1
    assert per_request(first, "n", make_value) == 1
    assert per_request(second, "n", make_value) == 2


def test_answered_gives_back_what_was_held_and_drops_what_was_kept() -> None:
    """Once a request is answered, each turn held for it is given back once, and what `per_request` kept (a
    fetched message's parse) is dropped; what was fetched for it is counted until then."""
    req = request()
    released: list[str] = []
    count_fetched(req, 10)
    count_fetched(req, 5)
    assert fetched_bytes(req) == 15
    per_request(req, "parse", lambda: "a large parse")
    hold_until_answered(req, lambda: released.append("s3"))
    answered(req)
    answered(req)
    assert released == ["s3"]
    assert per_request(req, "parse", lambda: None) is None


def test_obj_reads_optional_objects() -> None:
    """`obj` gives a JSON object back and an empty one for anything else."""
    assert obj({"a": 1}) == {"a": 1}
    assert obj(None) == {} and obj([1]) == {} and obj("x") == {}


def test_handlers_read_time_through_a_settable_clock() -> None:
    """Each handler has its own clock, the wall clock by default, which a test can replace."""
    h = make(Plain)
    assert abs(h.clock() - time.time()) < 5
    h.clock = lambda: 42.0
    assert h.clock() == 42.0
    assert make(Plain).clock() != 42.0


@pytest.mark.parametrize("depth", [1_000, 50_000])
def test_json_nested_past_the_parser_limit_is_400(depth: int) -> None:
    """A body nested deeper than the JSON parser takes is a 400 saying so, not a RecursionError."""
    with pytest.raises(Rejected) as info:
        decode_json_object(b'{"a":' + b"[" * depth + b"]" * depth + b"}")
    assert (info.value.status, info.value.check) == (400, "json")
    assert "nested too deeply" in str(info.value)


def test_json_in_a_field_names_the_field() -> None:
    """JSON carried in a field of the request is refused naming that field, with the check given."""
    with pytest.raises(Rejected) as info:
        decode_json("[" * 5000, "field `message-headers`", check="form")
    assert (info.value.status, info.value.check) == (400, "form")
    assert str(info.value).startswith("field `message-headers` is nested too deeply")
    with pytest.raises(Rejected, match=r"^field `x` is not JSON: "):
        decode_json("{", "field `x`")


@pytest.mark.parametrize("depth", [129, 900, 990])
def test_json_nested_past_the_depth_limit_is_400_even_when_the_parser_reads_it(depth: int) -> None:
    """Nesting past MAX_JSON_DEPTH is refused even where the parser itself would read it: a value nested just
    under the parser's own limit would fail the next recursive step (encoding the event) instead."""
    with pytest.raises(Rejected, match="nested too deeply: more than 128 levels"):
        decode_json(b"[" * depth + b"]" * depth)


def test_json_nested_up_to_the_limit_or_holding_brackets_in_text_is_read() -> None:
    """128 levels are read, and so are many brackets inside strings, or many shallow objects side by side."""
    assert decode_json(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH) is not None
    assert decode_json(b'{"a": "' + b"[{" * 500 + b'"}') == {"a": "[{" * 500}
    assert decode_json(b'"' + b"[" * 500 + b'"') == "[" * 500
    assert len(decode_json(b"[" + b",".join([b'{"a":[1]}'] * 500) + b"]")) == 500


def test_not_a_message_is_an_ignored_200_counted_under_its_code() -> None:
    """`not_a_message` answers 200 accepted-and-ignored and carries a stable code for the metric's label."""
    early = not_a_message("delivery", "a Postmark 'Delivery' record")
    assert (early.outcome, early.code, early.response.status) == ("ignored", "not_a_message:delivery", 200)
    assert early.reason == "not a message: a Postmark 'Delivery' record"
    assert ignored("anything").code == "other"


def _walked_depth(value: object) -> int:
    """The nesting of a parsed value, walked: what the depth checks must agree with."""
    if isinstance(value, dict):
        return 1 + max(map(_walked_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_walked_depth, value), default=0)
    return 0


_ATOMS = ['"', "\\", "\\\\", '\\"', "[", "]", "{", "}", "\\u005b", "\\u0022", "a", "é", "\U0001F600", "\\/", "\n",
          ",", ":"]


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(_ATOMS) for _ in range(rng.randint(0, 6)))


def _random_json(rng: random.Random, level: int) -> object:
    pick = rng.random()
    if level <= 0 or pick < 0.3:
        return _random_text(rng) if rng.random() < 0.5 else rng.choice([1, -2.5, True, None, 0])
    if pick < 0.65:
        return [_random_json(rng, level - 1) for _ in range(rng.randint(0, 3))]
    return {_random_text(rng): _random_json(rng, level - 1) for _ in range(rng.randint(0, 3))}


def _deep_json(rng: random.Random, levels: int, kind: str) -> object:
    """Arrays, objects or both in turn, `levels` deep, with text beside each level."""
    value: object = 1
    for i in range(levels):
        if kind == "arrays" or (kind == "mixed" and i % 2):
            value = [value, _random_text(rng)]
        else:
            value = {_random_text(rng): value, "k" + _random_text(rng): _random_text(rng)}
    return value


@pytest.mark.parametrize("text_up_to", [TEXT_DEPTH_BYTES, 0], ids=["read_from_the_text", "walked"])
def test_the_depth_checks_agree_with_the_depth_of_the_value(monkeypatch: pytest.MonkeyPatch, text_up_to: int) -> None:
    """Differential: random values, and values nested just under and over MAX_JSON_DEPTH, each written four ways
    (ASCII or not, indented or not), as bytes and as text; brackets, quotes and escapes inside strings. Both
    checks (the text's brackets; the walk of the value) and decode_json, which picks one by size, must refuse
    exactly the values nested deeper than the limit."""
    import handlers.base

    monkeypatch.setattr(handlers.base, "TEXT_DEPTH_BYTES", text_up_to)
    rng = random.Random(1)
    for trial in range(500):
        value = _deep_json(rng, rng.randint(120, 140), rng.choice(["arrays", "objects", "mixed"])) if trial % 2 \
            else _random_json(rng, rng.randint(1, 8))
        depth = _walked_depth(value)
        assert _value_deeper_than(value, depth - 1) and not _value_deeper_than(value, depth)
        for ensure_ascii in (True, False):
            for indent in (None, 1):
                text = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)
                for data in (text.encode("utf-8", "surrogatepass"), text):
                    if trial % 2 == 0:
                        for limit in (depth - 1, depth):
                            assert _deeper_than(data, limit) is (depth > limit), (text, limit)
                    refused = False
                    try:
                        decode_json(data)
                    except Rejected:
                        refused = True
                    assert refused is (depth > MAX_JSON_DEPTH), text[:200]


class _Spy:
    """A compiled pattern that notes the length of each text it is run over."""

    def __init__(self, pattern: re.Pattern[bytes]) -> None:
        self.pattern = pattern
        self.lengths: list[int] = []

    def sub(self, replacement: bytes, text: bytes) -> bytes:
        self.lengths.append(len(text))
        return self.pattern.sub(replacement, text)


def test_a_large_bodys_depth_is_walked_not_read_from_its_text_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 MB: an array nested 130 deep beside 340,000 empty strings, or 520,000 escaped quotes. Reading the
    brackets outside strings takes one regular expression over the whole text, 60-160 ms in C holding the
    interpreter lock, so the event loop, even when the parse runs in the parser thread; such a body is
    walked instead (Python: the loop gets the lock every few milliseconds). A small one is still read from
    its text, in at most a few milliseconds."""
    import handlers.base

    spy = _Spy(handlers.base._JSON_STRING)
    monkeypatch.setattr(handlers.base, "_JSON_STRING", spy)
    deep = b"[" + b",".join([b"[]"] * 130) + b"]"
    nested = b"[" * 130 + b"]" * 130
    for body in (b'{"email":"a@b.c","a":' + nested + b',"x":[' + b",".join([b'""'] * 340_000) + b"]}",
                 b'{"a":' + nested + b',"x":"' + b'\\"' * 520_000 + b'"}'):
        with pytest.raises(Rejected, match="nested too deeply"):
            decode_json(body)
    assert decode_json(b'{"a":' + deep + b',"x":[' + b",".join([b'""'] * 340_000) + b"]}")["a"] == [[]] * 130
    assert spy.lengths == []
    with pytest.raises(Rejected, match="nested too deeply"):
        decode_json(b'{"a":' + nested + b',"x":[' + b",".join([b'""'] * 20_000) + b"]}")
    assert spy.lengths and max(spy.lengths) <= TEXT_DEPTH_BYTES
