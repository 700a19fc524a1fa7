"""handlers/json_hook.py: generic JSON webhooks, optionally HMAC-signed."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import Request

from bridge.config import ServerConfig
from bridge.errors import Rejected
from handlers.json_hook import JsonHandler, JsonOptions
from tests.fixtures.providers import passes

BODY = b'{"id": "ord-1", "customer": {"email": "a@b.c"}, "items": [1, 2]}'
SECRET = "partner-secret"


def handler(**options: Any) -> JsonHandler:
    return JsonHandler("partner-api", msgspec.convert({"kind": "json", **options}, JsonOptions), ServerConfig())


def signed() -> JsonHandler:
    return handler(hmac={"secret": SECRET, "header": "X-Signature", "algorithm": "sha256", "encoding": "hex"})


def request(headers: dict[str, str] | None = None, content_type: str | None = "application/json") -> Request:
    all_headers = dict(headers or {})
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    return make_mocked_request("POST", "/hooks/partner-api", headers=all_headers)


def signature(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_kind_and_channel() -> None:
    """The JSON handler is kind `json` on the `webhook` channel."""
    assert (JsonHandler.kind, JsonHandler.channel) == ("json", "webhook")


# -- verify ------------------------------------------------------------------------------------------


def test_unsigned_source_verifies_anything() -> None:
    """Without `hmac`, verification passes with no signature header."""
    assert passes(lambda: handler().verify(request(), BODY))
    assert not passes(lambda: signed().verify(request(), BODY))


def test_signed_source_accepts_the_right_signature() -> None:
    """With `hmac`, an HMAC of the raw body in the configured header passes."""
    assert passes(lambda: signed().verify(request({"X-Signature": signature(BODY)}), BODY))


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Signature": signature(BODY, "other-secret")}, {"X-Signature": signature(BODY + b"\n")},
     {"X-Other": signature(BODY)}],
)
def test_signed_source_rejects_missing_or_wrong_signatures(headers: dict[str, str]) -> None:
    """A missing signature or one made with another secret or body is a 401 from the hmac check."""
    with pytest.raises(Rejected) as info:
        signed().verify(request(headers), BODY)
    assert (info.value.status, info.value.check) == (401, "hmac")


def test_signature_is_over_the_raw_bytes() -> None:
    """A signature of the same JSON serialised differently does not match: the raw bytes are what count."""
    reformatted = msgspec.json.encode(msgspec.json.decode(BODY))
    assert reformatted != BODY
    with pytest.raises(Rejected):
        signed().verify(request({"X-Signature": signature(reformatted)}), BODY)


def test_signature_with_prefix() -> None:
    """A configured prefix (GitHub-style `sha256=`) is expected before the signature."""
    h = handler(hmac={"secret": SECRET, "header": "X-Hub-Signature-256", "prefix": "sha256="})
    h.verify(request({"X-Hub-Signature-256": "sha256=" + signature(BODY)}), BODY)
    with pytest.raises(Rejected):
        h.verify(request({"X-Hub-Signature-256": signature(BODY)}), BODY)


# -- parse -------------------------------------------------------------------------------------------


def test_parse_object() -> None:
    """A JSON object becomes one event whose payload is that object."""
    events = handler().parse(request(), BODY)
    assert len(events) == 1
    assert events[0].payload == {"id": "ord-1", "customer": {"email": "a@b.c"}, "items": [1, 2]}
    assert events[0].spam is False


@pytest.mark.parametrize(("body", "kind"), [(b"[1]", "list"), (b'"x"', "str"), (b"3", "int"), (b"null", "NoneType")])
def test_non_object_json_is_400(body: bytes, kind: str) -> None:
    """Valid JSON that is not an object is a 400 saying what it got."""
    with pytest.raises(Rejected) as info:
        handler().parse(request(), body)
    assert (info.value.status, info.value.check) == (400, "json")
    assert f"got a JSON {kind}" in str(info.value)


@pytest.mark.parametrize("body", [b"", b"{", b"{'a': 1}", b'{"a": 1} trailing', b'{"a": "\xff"}'])
def test_malformed_json_is_400(body: bytes) -> None:
    """A body that is not JSON is a 400 with the parser's reason."""
    with pytest.raises(Rejected) as info:
        handler().parse(request(), body)
    assert (info.value.status, info.value.check) == (400, "json")
    assert str(info.value).startswith("malformed JSON: ")


# -- content types -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ctype", ["application/json", "application/json; charset=utf-8", "application/cloudevents+json"],
)
def test_json_content_types_are_taken(ctype: str) -> None:
    """`application/json`, with parameters or as a `+json` type, is taken."""
    assert passes(lambda: handler().check_content_type(request(content_type=ctype)))


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None])
def test_other_content_types_are_415(ctype: str | None) -> None:
    """Anything else, or no content type, is a 415."""
    with pytest.raises(Rejected) as info:
        handler().check_content_type(request(content_type=ctype))
    assert info.value.status == 415


# -- options -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"hmac": {"secret": ""}}, "`secret` is empty"),
        ({"hmac": {"secret": "s", "algorithm": "md5"}}, "Invalid enum value 'md5'"),
        ({"hmac": {"secret": "s", "encdoing": "hex"}}, "unknown field `encdoing`"),
        ({"redirect": "/x"}, "unknown field `redirect`"),
    ],
)
def test_invalid_options(options: dict[str, Any], reason: str) -> None:
    """Bad HMAC settings and options of other kinds are refused."""
    with pytest.raises(msgspec.ValidationError, match=reason):
        msgspec.convert({"kind": "json", **options}, JsonOptions)


def test_hmac_defaults() -> None:
    """An `hmac` table with only a secret uses X-Signature, sha256, hex and no prefix."""
    opts = msgspec.convert({"kind": "json", "hmac": {"secret": "s"}}, JsonOptions)
    assert opts.hmac is not None
    assert (opts.hmac.header, opts.hmac.algorithm, opts.hmac.encoding, opts.hmac.prefix) == (
        "X-Signature", "sha256", "hex", "")
