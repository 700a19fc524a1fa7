"""handlers/twilio.py: X-Twilio-Signature over the public URL and sorted parameters."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import msgspec
import pytest

from bridge.config import ServerConfig
from bridge.errors import Rejected
from handlers.twilio import TwilioHandler, TwilioOptions, signature, url_variants
from tests.fixtures.providers import NOW, build, load, passes, post, twilio_request, twilio_signature

TOKEN = "12345678901234567890123456789012"
PUBLIC = "https://bridge.example.com/hooks/twilio"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def handler(**options: Any) -> TwilioHandler:
    h: TwilioHandler = build("twilio", auth_token=TOKEN, public_url=PUBLIC, **options)
    return h


def test_kind_and_channel() -> None:
    """Twilio is kind `twilio` on the `chat` channel."""
    assert (TwilioHandler.kind, TwilioHandler.channel) == ("twilio", "chat")


def test_signature_matches_twilios_published_vector() -> None:
    """The algorithm reproduces the vector in Twilio's own SDK tests (token 12345, URL + sorted name/value pairs)."""
    params = [("To", "+18005551212"), ("Digits", "1234"), ("CallSid", "CA1234567890ABCDE"),
              ("Caller", "+14158675309"), ("From", "+14158675309")]
    url = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert signature("12345", url, params) == b"RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert twilio_signature("12345", url, dict(params)) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_signed_sms_verifies_behind_a_proxy() -> None:
    """A request signed over public_url verifies though it reached us at another host and path."""
    body, headers = twilio_request(TOKEN, PUBLIC, "twilio/sms.json")
    h, req = handler(), post({**headers, "Host": "10.0.0.5:8080"}, path="/internal/hooks/twilio")
    h.verify(req, body)
    [inbound] = h.parse(req, body)
    provider = inbound.payload.pop("provider")
    assert inbound.payload == {
        "from": "+919876543210", "from_name": None, "to": "+14155550100", "text": "My router is down again",
        "conversation_id": "+919876543210", "message_id": "SM1f0e8ae6ade43cb3c0ce4525424e404f", "media": [],
    }
    assert provider["FromCountry"] == "IN"
    assert inbound.dedup_key == "SM1f0e8ae6ade43cb3c0ce4525424e404f"


def test_whatsapp_with_media() -> None:
    """A WhatsApp message through Twilio loses the whatsapp: prefix and lists its media."""
    body, headers = twilio_request(TOKEN, PUBLIC, "twilio/whatsapp_media.json")
    h, req = handler(), post(headers)
    h.verify(req, body)
    [inbound] = h.parse(req, body)
    assert (inbound.payload["from"], inbound.payload["from_name"], inbound.payload["to"]) == (
        "+919876543210", "Asha Rao", "+14155238886")
    assert inbound.payload["conversation_id"] == "whatsapp:+919876543210"
    assert inbound.payload["media"] == [{"url": load("twilio/whatsapp_media.json")["MediaUrl0"],
                                         "content_type": "image/jpeg"}]


def test_url_with_or_without_the_default_port() -> None:
    """Twilio signs some URLs with :443 and some without; both forms verify."""
    assert url_variants("https://x.example/h") == ["https://x.example/h", "https://x.example:443/h"]
    assert url_variants("https://x.example:443/h") == ["https://x.example:443/h", "https://x.example/h"]
    body, headers = twilio_request(TOKEN, "https://bridge.example.com:443/hooks/twilio", "twilio/sms.json")
    handler().verify(post(headers), body)


def test_url_from_server_public_url_else_the_request() -> None:
    """Without public_url, server.public_url plus the request's path is signed; without both, the request URL."""
    h = TwilioHandler("twilio", msgspec.convert({"kind": "twilio", "auth_token": TOKEN}, TwilioOptions),
                      ServerConfig(public_url="https://bridge.example.com/"))
    req = post(FORM, path="/hooks/twilio?x=1")
    assert h.signed_url(req) == "https://bridge.example.com/hooks/twilio?x=1"
    bare = build("twilio", auth_token=TOKEN)
    assert bare.signed_url(post(FORM, path="/hooks/twilio")) == "http://bridge.example.com/hooks/twilio"


def test_repeated_parameters_are_sorted_by_value() -> None:
    """A parameter sent twice is signed with its values in sorted order."""
    params = [("To", "+1"), ("Tag", "b"), ("Tag", "a")]
    data = PUBLIC + "Taga" + "Tagb" + "To+1"
    import base64
    import hashlib
    import hmac

    expected = base64.b64encode(hmac.new(TOKEN.encode(), data.encode(), hashlib.sha1).digest())
    assert signature(TOKEN, PUBLIC, params) == expected
    handler().verify(post({**FORM, "X-Twilio-Signature": expected.decode()}), urlencode(params).encode())


@pytest.mark.parametrize("url", ["https://bridge.example.com/hooks/other", "http://bridge.example.com/hooks/twilio"])
def test_signature_over_another_url_is_401(url: str) -> None:
    """A signature over another URL (another path, or http instead of https) is refused."""
    body, headers = twilio_request(TOKEN, url, "twilio/sms.json")
    with pytest.raises(Rejected) as info:
        handler().verify(post(headers), body)
    assert (info.value.status, info.value.check) == (401, "signature")


def test_changed_parameter_or_token_is_401() -> None:
    """A changed parameter value, another auth token, or no signature is refused."""
    body, headers = twilio_request(TOKEN, PUBLIC, "twilio/sms.json")
    for bad_body, bad_headers in [
        (body.replace(b"router", b"modem"), headers),
        (body, twilio_request("0" * 32, PUBLIC, "twilio/sms.json")[1]),
        (body, FORM),
    ]:
        with pytest.raises(Rejected) as info:
            handler().verify(post(bad_headers), bad_body)
        assert info.value.status == 401


async def test_status_callbacks_are_ignored() -> None:
    """A delivery status callback is answered 200 and not stored."""
    body, headers = twilio_request(TOKEN, PUBLIC, "twilio/status_callback.json")
    h, req = handler(), post(headers)
    h.verify(req, body)
    early = await h.intercept(req, body)
    assert early is not None and early.outcome == "ignored" and "delivered" in early.reason


def test_no_timestamp_to_go_stale() -> None:
    """Twilio signs no timestamp: a request is as valid later as it was (replays are caught by MessageSid)."""
    body, headers = twilio_request(TOKEN, PUBLIC, "twilio/sms.json")
    h = handler()
    h.clock = lambda: float(NOW + 86_400)
    assert passes(lambda: h.verify(post(headers), body))
    assert not passes(lambda: h.verify(post(headers), body + b"&Extra=1"))


@pytest.mark.parametrize(("options", "reason"), [
    ({}, "missing required field `auth_token`"),
    ({"auth_token": ""}, "`auth_token` is empty"),
    ({"auth_token": "t", "public_url": "bridge.example.com/hooks/twilio"}, "must be the full URL"),
])
def test_invalid_options(options: dict[str, str], reason: str) -> None:
    """The auth token is required and public_url must be a full URL."""
    with pytest.raises(msgspec.ValidationError, match=reason):
        msgspec.convert({"kind": "twilio", **options}, TwilioOptions)


@pytest.mark.parametrize("count", ["²", "٣", "9" * 5000, "-1", ""])
def test_num_media_that_is_not_a_plain_count_lists_no_media(count: str) -> None:
    """A NumMedia that is not a plain count (a digit to isdigit but not to int, thousands of digits) lists
    no media instead of failing the message."""
    params = {**load("twilio/whatsapp_media.json"), "NumMedia": count}
    body = urlencode(params).encode()
    [inbound] = handler().parse(post(FORM), body)
    assert inbound.payload["media"] == []


@pytest.mark.parametrize("host", ["bridge.example.com:99999", "\u00fc" * 70 + ".example.com"])
def test_host_header_that_makes_no_url_is_400(host: str) -> None:
    """Without public_url the signed URL comes from the request; a Host header yarl cannot make a URL of (a
    port past 65535, a label IDNA cannot encode) is a 400 saying to set public_url, not a crash."""
    body, headers = twilio_request(TOKEN, PUBLIC, "twilio/sms.json")
    with pytest.raises(Rejected) as info:
        build("twilio", auth_token=TOKEN).verify(post({**headers, "Host": host}), body)
    assert info.value.status == 400
    assert "public_url" in str(info.value)
