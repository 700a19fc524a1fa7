"""What an attempt's record keeps of its request and response: everything but the credentials."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.delivery import exchange as exchange_module
from bridge.delivery.exchange import (
    BODY_CHARS,
    REDACTED,
    SECRET_NAME_KEPT_CHARS,
    SECRET_NAMES_KEPT,
    exchange,
    kept_response_headers,
    redact_headers,
)


def test_credentials_in_headers_query_and_json_keys_are_redacted() -> None:
    """Authorization and key/token/secret-named headers, query parameters and JSON keys are redacted; the
    rest is kept as sent."""
    kept = exchange("POST", "https://api.test/v2/Lead.Create?accessKey=u$r1&secretKey=s3&host=eu",
                    {"Authorization": "Basic Zm9vOmJhcg==", "X-Api-Key": "k", "Content-Type": "application/json"},
                    b'{"title": "Router down", "auth": {"token": "t"}, "items": [{"apiKey": "k2", "n": 1}]}',
                    {"Set-Cookie": "sid=1", "X-Request-Id": "r-1"})
    req = kept["request"]
    assert req["url"] == f"https://api.test/v2/Lead.Create?accessKey={REDACTED}&secretKey={REDACTED}&host=eu".replace(
        "[", "%5B").replace("]", "%5D")
    assert req["headers"] == {"Authorization": REDACTED, "X-Api-Key": REDACTED, "Content-Type": "application/json"}
    assert '"title":"Router down"' in req["body"] and '"auth":"[redacted]"' in req["body"]
    assert '"apiKey":"[redacted]"' in req["body"] and "k2" not in req["body"]
    assert kept["response_headers"] == {"Set-Cookie": REDACTED, "X-Request-Id": "r-1"}


def test_a_body_that_is_not_json_is_kept_as_text_up_to_its_limit() -> None:
    """A form or binary body is kept as text (bad bytes replaced), cut at BODY_CHARS."""
    kept = exchange("POST", "https://api.test/x", {}, b"a=1&b=\xff" + b"x" * 5000, None)
    assert kept["request"]["body"].startswith("a=1&b=\ufffd") and len(kept["request"]["body"]) == BODY_CHARS
    assert kept["response_headers"] is None


def test_names_are_judged_the_same_when_asked_again_and_after_the_kept_answers_turn_over() -> None:
    """A credential-named header is redacted every time, also after more distinct names than the kept answers
    have passed through (the answers kept are dropped, not mixed up), which never number more than
    SECRET_NAMES_KEPT."""
    headers = {"X-Api-Token": "t", "X-Trace": "r"}
    assert redact_headers(headers) == {"X-Api-Token": REDACTED, "X-Trace": "r"}
    for n in range(SECRET_NAMES_KEPT + 10):
        assert redact_headers({f"X-Name-{n}": "v", f"X-Session-{n}": "s"}) == {f"X-Name-{n}": "v",
                                                                                f"X-Session-{n}": REDACTED}
        assert len(exchange_module._SECRET) <= SECRET_NAMES_KEPT
    assert redact_headers(headers) == {"X-Api-Token": REDACTED, "X-Trace": "r"}
    assert exchange_module.secret_name("X-Api-Token") and not exchange_module.secret_name("X-Trace")


def test_user_info_in_the_url_keeps_its_user_name_only() -> None:
    """A destination URL with credentials in it (`https://user:password@host/`, or a token as the user) keeps
    the user name of a user:password pair and nothing of a lone token; the host and path stay."""
    assert exchange("POST", "https://svc:pa55@crm.test/hook?x=1", {}, b"", None)["request"]["url"] == \
        f"https://svc:{REDACTED}@crm.test/hook?x=1"
    assert exchange("GET", "https://ghp_abc123@crm.test:8443/t", {}, b"", None)["request"]["url"] == \
        f"https://{REDACTED}@crm.test:8443/t"
    assert exchange("GET", "https://crm.test/a?b=c#frag", {}, b"", None)["request"]["url"] == "https://crm.test/a?b=c"


def test_response_header_bytes_that_are_not_utf8_are_kept_written_out() -> None:
    """A response header's name or value holding a byte that is not UTF-8 (a lone surrogate, as aiohttp reads it)
    is kept with that byte written `\\xNN`, so that the attempt can be stored."""
    kept = kept_response_headers({"X-Note": "caf\udce9", "X-\udcffName": "ok"})
    assert kept == {"X-Note": "caf\\xe9", "X-\\xffName": "ok"}


def test_long_json_keys_of_a_senders_object_are_judged_but_never_kept() -> None:
    """A field carrying a sender's object (a form's answers) brings keys the sender named, as long as the request
    allowed: each is still judged, but only short names are kept, so the kept answers never hold the senders'
    text (SECRET_NAMES_KEPT keys of a megabyte each would be gigabytes)."""
    kept = exchange_module._SECRET
    kept.clear()
    long_key = "q" * 300
    for n in range(200):
        body = msgspec.json.encode({f"{n}{long_key}": "answer", f"{n}{long_key}_token": "t", "title": "Router down"})
        text = exchange("POST", "https://api.test/x", {}, body, None)["request"]["body"]
        assert REDACTED in text and "Router down" in text
    assert list(kept) == ["title"]  # every long key was searched, not kept
    assert exchange_module.secret_name("x" * (SECRET_NAME_KEPT_CHARS + 1) + "password") is True


def test_credential_named_keys_are_redacted_at_any_depth() -> None:
    """Inside objects and arrays, arrays of arrays too, each credential-named key's value is redacted, whatever it
    holds, and every other value is kept as sent (scalars, null, empty containers)."""
    body = {"a": {"b": [[{"password": 1, "n": None}], 2, "x", [], {}], "token": {"x": [1]}},
            "list": [{"Session_Id": "s", "ok": [True, 1.5]}], "title": "t"}
    kept = msgspec.json.decode(exchange("POST", "https://api.test/x", {}, msgspec.json.encode(body),
                                        None)["request"]["body"])
    assert kept == {"a": {"b": [[{"password": REDACTED, "n": None}], 2, "x", [], {}], "token": REDACTED},
                    "list": [{"Session_Id": REDACTED, "ok": [True, 1.5]}], "title": "t"}


def _redacted_by_walk(value: Any) -> Any:
    """The redaction as first written: every key judged, every value walked."""
    if isinstance(value, dict):
        return {k: REDACTED if exchange_module.SECRET_NAME.search(str(k)) else _redacted_by_walk(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted_by_walk(v) for v in value]
    return value


_KEYS = st.sampled_from(["title", "n", "apiKey", "X-Token", "passwd", "sessionId", "naïve", "K\u212aEY", "\u017fecret",
                         "", "a" * 70 + "auth"])
_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
                     max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_the_redaction_is_the_walk_of_every_key_and_value(value: Any) -> None:
    """What is kept of a JSON body is what judging every key and walking every value gives, however it skips the
    objects with nothing to redact: keys whose case folds onto a credential's name (the Kelvin sign, the long s)
    and long keys too."""
    body = msgspec.json.encode(value)
    assert exchange("POST", "https://api.test/x", {}, body, None)["request"]["body"] == \
        msgspec.json.encode(_redacted_by_walk(value)).decode()[:BODY_CHARS]
