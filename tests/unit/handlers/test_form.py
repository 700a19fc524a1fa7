"""handlers/form.py: browser and script form posts, honeypots, redirects and CORS origins."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import Request

from bridge.config import ServerConfig
from bridge.errors import Rejected
from handlers.base import Inbound
from handlers.form import FormHandler, FormOptions
from tests.fixtures.providers import passes

URLENCODED = "application/x-www-form-urlencoded"
BOUNDARY = "b0undary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def handler(**options: Any) -> FormHandler:
    opts = msgspec.convert({"kind": "form", **options}, FormOptions)
    return FormHandler("website-contact", opts, ServerConfig())


def request(content_type: str | None = URLENCODED, **headers: str) -> Request:
    all_headers = {k.replace("_", "-"): v for k, v in headers.items()}
    if content_type is not None:
        all_headers["Content-Type"] = content_type
    return make_mocked_request("POST", "/hooks/website-contact", headers=all_headers)


def parse_one(h: FormHandler, body: bytes, content_type: str = URLENCODED) -> Inbound:
    events = h.parse(request(content_type), body)
    assert len(events) == 1
    return events[0]


def multipart_body(fields: dict[str, str]) -> bytes:
    out = b""
    for name, value in fields.items():
        out += (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").encode()
    return out + f"--{BOUNDARY}--\r\n".encode()


def test_kind_and_channel() -> None:
    """The form handler is kind `form` on the `form` channel."""
    assert (FormHandler.kind, FormHandler.channel) == ("form", "form")


# -- parsing -----------------------------------------------------------------------------------------


def test_urlencoded_post() -> None:
    """An urlencoded post becomes one event with the fields as they came, repeated keys as lists."""
    inbound = parse_one(handler(), b"email=a%40b.c&topic=x&topic=y&note=")
    assert inbound.payload == {"email": "a@b.c", "topic": ["x", "y"], "note": ""}
    assert inbound.spam is False
    assert inbound.dedup_key is None


def test_urlencoded_charset_from_content_type() -> None:
    """The charset in the Content-Type is used to decode the form."""
    inbound = parse_one(handler(), b"name=Jos%E9", f"{URLENCODED}; charset=iso-8859-1")
    assert inbound.payload == {"name": "José"}


def test_multipart_post() -> None:
    """A multipart post becomes one event with its text fields."""
    inbound = parse_one(handler(), multipart_body({"email": "a@b.c", "message": "hi"}), MULTIPART)
    assert inbound.payload == {"email": "a@b.c", "message": "hi"}


@pytest.mark.parametrize("ctype", ["application/json", "application/json; charset=utf-8"])
def test_json_post(ctype: str) -> None:
    """A JSON object posted by a script becomes the payload as is, nested values included."""
    inbound = parse_one(handler(), b'{"email": "a@b.c", "tags": ["x"], "n": 2}', ctype)
    assert inbound.payload == {"email": "a@b.c", "tags": ["x"], "n": 2}


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"{bad json"])
def test_json_post_that_is_not_an_object_is_rejected(body: bytes) -> None:
    """A JSON body that is not an object, or not JSON, is a 400."""
    with pytest.raises(Rejected) as info:
        handler().parse(request("application/json"), body)
    assert info.value.status == 400


def test_malformed_urlencoded_is_rejected() -> None:
    """A malformed urlencoded body is a 400 from the form parser."""
    with pytest.raises(Rejected) as info:
        handler().parse(request(), b"name=%FF")
    assert (info.value.status, info.value.check) == (400, "form")


def test_multipart_without_boundary_is_rejected() -> None:
    """A multipart post whose Content-Type lacks a boundary is a 400."""
    with pytest.raises(Rejected) as info:
        handler().parse(request("multipart/form-data"), multipart_body({"a": "1"}))
    assert info.value.status == 400


# -- honeypot ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"email=a%40b.c&website=http%3A%2F%2Fspam.example", URLENCODED),
        (b'{"email": "a@b.c", "website": "http://spam.example"}', "application/json"),
        (b'{"email": "a@b.c", "website": 1}', "application/json"),
        (multipart_body({"email": "a@b.c", "website": "x"}), MULTIPART),
    ],
)
def test_filled_honeypot_marks_spam(body: bytes, ctype: str) -> None:
    """A filled honeypot field marks the event as spam, whatever the body format; the payload is kept."""
    inbound = parse_one(handler(honeypot="website"), body, ctype)
    assert inbound.spam is True
    assert inbound.payload["email"] == "a@b.c"


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b"email=a%40b.c&website=", URLENCODED),
        (b"email=a%40b.c", URLENCODED),
        (b'{"email": "a@b.c", "website": null}', "application/json"),
        (b'{"email": "a@b.c", "website": ""}', "application/json"),
        (b'{"email": "a@b.c", "website": []}', "application/json"),
    ],
)
def test_empty_or_absent_honeypot_is_not_spam(body: bytes, ctype: str) -> None:
    """An empty, null or absent honeypot field is not spam."""
    assert parse_one(handler(honeypot="website"), body, ctype).spam is False


def test_without_a_honeypot_nothing_is_spam() -> None:
    """With no honeypot configured, a field of any name is just a field."""
    assert parse_one(handler(), b"website=http%3A%2F%2Fx").spam is False


# -- redirect ----------------------------------------------------------------------------------------

THANKS = "https://example.com/thanks"


@pytest.mark.parametrize(
    "accept",
    [None, "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "*/*", "text/html"],
)
@pytest.mark.parametrize("ctype", [URLENCODED, MULTIPART, f"{URLENCODED}; charset=utf-8"])
def test_browser_form_post_is_redirected(accept: str | None, ctype: str) -> None:
    """A browser-style form post (urlencoded or multipart, accepting HTML or anything) gets the redirect."""
    headers = {} if accept is None else {"Accept": accept}
    assert handler(redirect=THANKS).redirect_to(request(ctype, **headers)) == THANKS


@pytest.mark.parametrize("accept", ["application/json", "application/json, text/plain"])
def test_form_post_asking_for_json_is_not_redirected(accept: str) -> None:
    """A form post whose Accept names neither HTML nor `*/*` gets no redirect."""
    assert handler(redirect=THANKS).redirect_to(request(URLENCODED, Accept=accept)) is None


@pytest.mark.parametrize("accept", [None, "text/html", "*/*"])
def test_json_post_is_never_redirected(accept: str | None) -> None:
    """A JSON post (a script, not a browser form) gets no redirect even when it accepts HTML."""
    headers = {} if accept is None else {"Accept": accept}
    assert handler(redirect=THANKS).redirect_to(request("application/json", **headers)) is None


@pytest.mark.parametrize("mode", ["cors", "same-origin", "no-cors", "websocket", ""])
@pytest.mark.parametrize("accept", [None, "*/*", "text/html"])
def test_a_page_scripts_fetch_is_answered_json_not_redirected(mode: str, accept: str | None) -> None:
    """A page's fetch() of a FormData (multipart, `Accept: */*`) says it is no navigation with Fetch Metadata:
    it gets JSON, which its script can read, not a 303 elsewhere that it would see as a CORS failure."""
    headers = {"Sec_Fetch_Mode": mode, **({} if accept is None else {"Accept": accept})}
    assert handler(redirect=THANKS).redirect_to(request(MULTIPART, **headers)) is None
    assert handler(redirect=THANKS).redirect_to(request(URLENCODED, **headers)) is None


@pytest.mark.parametrize("mode", ["navigate", "Navigate", " navigate "])
def test_a_browser_navigation_is_redirected_whatever_it_accepts(mode: str) -> None:
    """`Sec-Fetch-Mode: navigate` is the browser submitting the form itself: redirected."""
    assert handler(redirect=THANKS).redirect_to(request(URLENCODED, Sec_Fetch_Mode=mode)) == THANKS
    assert handler(redirect=THANKS).redirect_to(request(MULTIPART, Sec_Fetch_Mode=mode, Accept="*/*")) == THANKS


def test_no_redirect_configured() -> None:
    """Without `redirect`, even a browser form post gets no redirect."""
    assert handler().redirect_to(request(URLENCODED, Accept="text/html")) is None


def test_redirect_to_a_path() -> None:
    """A redirect may be a path on the same site."""
    assert handler(redirect="/thanks").redirect_to(request(URLENCODED)) == "/thanks"


# -- CORS --------------------------------------------------------------------------------------------


def test_allowed_origin_exact_match() -> None:
    """Only the listed origins are allowed, compared exactly."""
    h = handler(cors_origins=["https://example.com", "http://localhost:3000"])
    assert h.allowed_origin("https://example.com")
    assert h.allowed_origin("http://localhost:3000")
    for other in ("https://evil.example", "https://example.com.evil.example", "http://example.com",
                  "https://example.com:8443", "https://sub.example.com", ""):
        assert not h.allowed_origin(other), other


def test_wildcard_origin_allows_any() -> None:
    """`*` allows every origin."""
    h = handler(cors_origins=["*"])
    assert h.allowed_origin("https://anything.example")


def test_no_origins_allows_none() -> None:
    """With no `cors_origins`, no browser origin is allowed."""
    assert not handler().allowed_origin("https://example.com")


# -- content types -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ctype", [URLENCODED, MULTIPART, "application/json", f"{URLENCODED}; charset=utf-8"])
def test_takes_form_and_json_content_types(ctype: str) -> None:
    """Urlencoded, multipart and JSON bodies are taken."""
    assert passes(lambda: handler().check_content_type(request(ctype)))


@pytest.mark.parametrize("ctype", ["text/plain", "application/xml", None])
def test_other_content_types_are_415(ctype: str | None) -> None:
    """Other content types (or none) are refused with 415."""
    with pytest.raises(Rejected) as info:
        handler().check_content_type(request(ctype))
    assert (info.value.status, info.value.check) == (415, "content_type")


# -- options -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"redirect": "https://example.com/thanks"},
        {"redirect": "http://localhost/ok"},
        {"redirect": "/thanks"},
        {"cors_origins": ["https://example.com", "http://localhost:8080", "*"]},
        {"honeypot": "website", "dedup": "payload.email", "reject_invalid": True, "dedup_window": "1h"},
        {"auth": {"bearer": "t"}},
    ],
)
def test_valid_options(options: dict[str, Any]) -> None:
    """The documented form options are accepted and kept as given."""
    kept = msgspec.to_builtins(handler(**options).options)

    def given(value: Any) -> Any:  # nested tables as written: without the keys left unset
        return {k: given(v) for k, v in value.items() if v is not None} if isinstance(value, dict) else value

    assert {key: given(kept[key]) for key in options} == options


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"redirect": "thanks.html"}, "must be an absolute URL or a path"),
        ({"redirect": "ftp://example.com"}, "must be an absolute URL or a path"),
        ({"cors_origins": ["example.com"]}, "must look like https://example.com"),
        ({"cors_origins": ["https://example.com/"]}, "must look like https://example.com"),
        ({"cors_origins": "https://example.com"}, "Expected `array`"),
        ({"dedup_window": "soon"}, "is not a duration"),
        ({"hmac": {"secret": "s"}}, "unknown field `hmac`"),
        ({"colour": "red"}, "unknown field `colour`"),
    ],
)
def test_invalid_options(options: dict[str, Any], reason: str) -> None:
    """Bad redirects and origins, bad common options and unknown keys are refused."""
    with pytest.raises(msgspec.ValidationError, match=reason):
        msgspec.convert({"kind": "form", **options}, FormOptions)
