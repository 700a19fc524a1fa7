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
    message = [*load("twilio/sms.json").items(), ("Tag", "b"), ("Tag", "a")]
    signed = signature(TOKEN, PUBLIC, message).decode()
    handler().verify(post({**FORM, "X-Twilio-Signature": signed}), urlencode(message).encode())


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


# -- parameters cut again at other places ----------------------------------------------------------------------
#
# Twilio signs the URL and each name+value with no separator, so a captured request whose parameters are cut at
# other places signs the same text: each re-cut below is checked to carry the captured signature.

SMS: dict[str, str] = load("twilio/sms.json")
SID = SMS["MessageSid"]
OTHER_SID = "SM" + "0" * 32


def signed_text(pairs: list[tuple[str, str]]) -> str:
    return "".join(name + value for name, value in sorted(pairs))


def recut_post(original: list[tuple[str, str]], pairs: list[tuple[str, str]]) -> tuple[Any, bytes]:
    """`pairs`, a re-cut of `original`, sent with `original`'s signature."""
    assert signed_text(pairs) == signed_text(original) and sorted(pairs) != sorted(original)
    headers = {**FORM, "X-Twilio-Signature": signature(TOKEN, PUBLIC, original).decode()}
    return post(headers), urlencode(pairs).encode()


def without(params: dict[str, str], *names: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in params.items() if k not in names]


def merged_into_message_sid() -> list[tuple[str, str]]:
    """MessagingServiceSid's name and value moved into MessageSid's value (a new MessageSid, the old dedup key)."""
    return [*without(SMS, "MessageSid", "MessagingServiceSid"),
            ("MessageSid", SID + "MessagingServiceSid" + SMS["MessagingServiceSid"])]


def message_sid_renamed_and_sms_sid_merged() -> list[tuple[str, str]]:
    """MessageSid's name cut short (`MessageSi` = `d` + the SID), and SmsSid moved into SmsMessageSid's value."""
    return [*without(SMS, "MessageSid", "SmsMessageSid", "SmsSid"), ("MessageSi", "d" + SID),
            ("SmsMessageSid", SID + "SmsSid" + SID)]


def every_sid_swallowed() -> list[tuple[str, str]]:
    """Each SID moved into the value before it: no SID is left, so no dedup key."""
    return [*without(SMS, "FromZip", "MessageSid", "NumSegments", "SmsMessageSid", "SmsSid"),
            ("FromZip", "MessageSid" + SID), ("NumSegments", "1SmsMessageSid" + SID + "SmsSid" + SID)]


def body_holding_a_sid() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A texter's Body that reads `MessageSid` and a SID of their choosing, then a name sorting after every other
    one (`Zz`): cut there, the fake SID is the only one, and `Zz` holds the rest of the message."""
    body = "hi" + "MessageSid" + OTHER_SID + "Zz"
    original = [*without(SMS, "Body"), ("Body", body)]
    rest = signed_text(original).split("Zz", 1)[1]
    head = [(k, v) for k, v in original if k < "Body"]
    return original, [*head, ("Body", "hi"), ("MessageSid", OTHER_SID), ("Zz", rest)]


@pytest.mark.parametrize("pairs", [merged_into_message_sid(), message_sid_renamed_and_sms_sid_merged(),
                                   every_sid_swallowed()], ids=["merged", "renamed", "swallowed"])
def test_a_recut_of_a_captured_message_is_401(pairs: list[tuple[str, str]]) -> None:
    """A captured message with its parameters cut at other places matches its signature but would be a new
    event (another MessageSid, or none): it is refused as a signature failure, naming why."""
    req, body = recut_post(list(SMS.items()), pairs)
    h = handler()
    assert h.parse(req, body)[0].dedup_key != SID  # what a re-cut would have been stored as
    with pytest.raises(Rejected) as info:
        h.verify(req, body)
    assert (info.value.status, info.value.check) == (401, "signature")
    assert "do not read as one Twilio message" in str(info.value)
    assert SID not in str(info.value)


def test_a_body_that_reads_as_a_sid_cannot_be_cut_into_another_message() -> None:
    """Signed text reading `MessageSid` and a SID inside another value (here a texter's Body) is refused: cut at
    it, the fake SID would name a new message; the message as sent is refused too, since it signs the same text."""
    original, pairs = body_holding_a_sid()
    req, body = recut_post(original, pairs)
    h = handler()
    assert h.parse(req, body)[0].dedup_key == OTHER_SID
    assert not passes(lambda: h.verify(req, body))
    sent = urlencode(original).encode()
    assert not passes(lambda: h.verify(req, sent))


def test_a_status_callback_cut_into_a_message_is_401() -> None:
    """A delivery callback whose MessageStatus name is cut short (`MessageStatu` = `s` + the status) would no
    longer be ignored but stored as a message (from our own number): it is refused."""
    callback: dict[str, str] = load("twilio/status_callback.json")
    pairs = [*without(callback, "MessageStatus"), ("MessageStatu", "s" + callback["MessageStatus"])]
    req, body = recut_post(list(callback.items()), pairs)
    assert not passes(lambda: handler().verify(req, body))


@pytest.mark.parametrize(("change", "why"), [
    ({"SmsSid": "SM" + "1" * 32}, "differ"),
    ({"MessageSid": SID.upper()}, "MessageSid is not one Twilio SID"),
    ({"SmsMessageSid": SID + "0"}, "SmsMessageSid is not one Twilio SID"),
    ({"AccountSid": "AC" + "0" * 31}, "AccountSid is missing or not"),
])
def test_sids_that_are_not_one_twilio_sid_are_401(change: dict[str, str], why: str) -> None:
    """Signed as they are, SIDs that differ or are not shaped as Twilio's are refused, saying which."""
    params = {**SMS, **change}
    headers = {**FORM, "X-Twilio-Signature": twilio_signature(TOKEN, PUBLIC, params)}
    with pytest.raises(Rejected, match=why) as info:
        handler().verify(post(headers), urlencode(params).encode())
    assert (info.value.status, info.value.check) == (401, "signature")


def test_account_sid_when_configured_must_be_the_posts() -> None:
    """With `account_sid` set, a message of another account is refused; of that account, accepted."""
    body, headers = twilio_request(TOKEN, PUBLIC, "twilio/sms.json")
    assert passes(lambda: handler(account_sid=SMS["AccountSid"]).verify(post(headers), body))
    with pytest.raises(Rejected, match="not the source's account_sid"):
        handler(account_sid="AC" + "f" * 32).verify(post(headers), body)
    with pytest.raises(msgspec.ValidationError, match="not a Twilio account SID"):
        handler(account_sid="ac123")


def test_sids_in_their_own_places_and_in_plain_text_verify() -> None:
    """A WhatsApp reply names the message it replies to (OriginalRepliedMessageSid, a SID); a message whose text
    mentions a SID with a space between is a message like any other; only SmsSid or only MessageSid is enough."""
    for params in [
        {**load("twilio/whatsapp_media.json"), "OriginalRepliedMessageSid": OTHER_SID},
        {**SMS, "Body": "MessageSid " + OTHER_SID + " failed, MessageStatus: sent"},
        dict(without(SMS, "MessageSid", "SmsMessageSid")),
        dict(without(SMS, "SmsMessageSid", "SmsSid")),
    ]:
        headers = {**FORM, "X-Twilio-Signature": twilio_signature(TOKEN, PUBLIC, params)}
        h, req, body = handler(), post(headers), urlencode(params).encode()
        h.verify(req, body)
        assert h.parse(req, body)[0].dedup_key == params.get("MessageSid", params.get("SmsSid"))


def test_a_request_url_cannot_take_in_the_first_parameters() -> None:
    """Without public_url the URL signed is the request's own: a query ending in `AccountSid` and its value, with
    that parameter left out of the body, signs the same text; AccountSid being required, it is refused."""
    url = "http://bridge.example.com/hooks/src?src=twilio"
    headers = {**FORM, "X-Twilio-Signature": twilio_signature(TOKEN, url, SMS)}
    moved = "AccountSid" + SMS["AccountSid"]
    h = build("twilio", auth_token=TOKEN)
    req = post(headers, path="/hooks/src?src=twilio" + moved)
    assert h.signed_url(req) + signed_text(without(SMS, "AccountSid")) == url + signed_text(list(SMS.items()))
    with pytest.raises(Rejected, match="AccountSid is missing"):
        h.verify(req, urlencode(without(SMS, "AccountSid")).encode())
