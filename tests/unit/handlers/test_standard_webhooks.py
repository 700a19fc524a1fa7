"""handlers/standard_webhooks.py: webhook-id/timestamp/signature, several signatures for rotation."""

from __future__ import annotations

import msgspec
import pytest

from bridge.errors import Rejected
from handlers.standard_webhooks import StandardWebhooksHandler, StandardWebhooksOptions
from tests.fixtures.providers import NOW, build, compact, load, passes, post, standard_webhooks_headers, svix_headers

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = compact(load("standard_webhooks/invoice_paid.json"))


def test_kind_and_channel() -> None:
    """Standard Webhooks is kind `standard-webhooks` on the generic `webhook` channel."""
    assert (StandardWebhooksHandler.kind, StandardWebhooksHandler.channel) == ("standard-webhooks", "webhook")


def test_signature_matches_the_specs_example() -> None:
    """The spec's published example (secret, id, timestamp, body) verifies."""
    h = build("standard-webhooks", secret=SECRET)
    h.clock = lambda: 1614265330.0
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    assert passes(lambda: h.verify(post(headers), b'{"test": 2432232314}'))
    assert not passes(lambda: h.verify(post(headers), b'{"test": 2432232315}'))


def test_signed_event_is_kept_whole() -> None:
    """A signed event's JSON is the payload, de-duplicated by webhook-id."""
    h, req = build("standard-webhooks", secret=SECRET), post(standard_webhooks_headers(SECRET, BODY))
    h.verify(req, BODY)
    [inbound] = h.parse(req, BODY)
    assert inbound.payload == load("standard_webhooks/invoice_paid.json")
    assert inbound.dedup_key == "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"


def test_any_of_several_signatures_may_match() -> None:
    """During a secret rotation, one matching v1 signature among several is enough; other versions are skipped."""
    headers = standard_webhooks_headers(SECRET, BODY, extra=("v1a,abc", "v1,bm90IHRoZSByaWdodCBvbmU="))
    assert passes(lambda: build("standard-webhooks", secret=SECRET).verify(post(headers), BODY))
    only_others = {**headers, "webhook-signature": "v1a,abc v1,bm90IHRoZSByaWdodCBvbmU="}
    assert not passes(lambda: build("standard-webhooks", secret=SECRET).verify(post(only_others), BODY))


@pytest.mark.parametrize("headers", [
    {},
    standard_webhooks_headers("whsec_b3RoZXItc2VjcmV0", BODY),
    {**standard_webhooks_headers(SECRET, BODY), "webhook-id": "msg_other"},
    {**standard_webhooks_headers(SECRET, BODY), "webhook-signature": "v2," + "a" * 44},
])
def test_missing_or_wrong_signature_is_401(headers: dict[str, str]) -> None:
    """No headers, another secret, another id or only unknown versions is refused."""
    with pytest.raises(Rejected) as info:
        build("standard-webhooks", secret=SECRET).verify(post(headers), BODY)
    assert info.value.status == 401


@pytest.mark.parametrize("offset", [-301, 301])
def test_stale_timestamp_is_401(offset: int) -> None:
    """A correctly signed event stamped over 5 minutes away is refused."""
    with pytest.raises(Rejected) as info:
        build("standard-webhooks", secret=SECRET).verify(
            post(standard_webhooks_headers(SECRET, BODY, timestamp=NOW + offset)), BODY)
    assert (info.value.status, info.value.check) == (401, "timestamp")


@pytest.mark.parametrize(("secret", "reason"), [("", "`secret` is empty"), ("whsec_!!!", "not base64"),
                                                ("whsec_", "holds no key")])
def test_invalid_secret(secret: str, reason: str) -> None:
    """An empty secret or one that is not base64 after whsec_ is refused at config time."""
    with pytest.raises(msgspec.ValidationError, match=reason):
        msgspec.convert({"kind": "standard-webhooks", "secret": secret}, StandardWebhooksOptions)


# -- the same scheme under Svix's header names ----------------------------------------------------------


def test_svix_spelled_example_verifies() -> None:
    """Svix's published example (the same secret, id, timestamp, body and signature) verifies under svix-*."""
    h = build("standard-webhooks", secret=SECRET)
    h.clock = lambda: 1614265330.0
    headers = {"svix-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "svix-timestamp": "1614265330",
               "svix-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="}
    assert passes(lambda: h.verify(post(headers), b'{"test": 2432232314}'))
    assert not passes(lambda: h.verify(post(headers), b'{"test": 2432232315}'))


def test_svix_signed_event_is_kept_whole_and_deduplicated_by_svix_id() -> None:
    """An event signed as Svix signs it is the payload, de-duplicated by svix-id."""
    h, req = build("standard-webhooks", secret=SECRET), post(svix_headers(SECRET, BODY, msg_id="msg_svix_1"))
    h.verify(req, BODY)
    [inbound] = h.parse(req, BODY)
    assert inbound.payload == load("standard_webhooks/invoice_paid.json")
    assert inbound.dedup_key == "msg_svix_1"


def test_svix_signature_header_with_several_signatures() -> None:
    """svix-signature with several signatures (a rotation: the old secret's, an unknown version, ours) verifies
    when one v1 matches."""
    old = svix_headers("whsec_b3RoZXItc2VjcmV0", BODY)["svix-signature"]
    headers = svix_headers(SECRET, BODY, extra=(old, "v1a,abc"))
    assert len(headers["svix-signature"].split()) == 3
    build("standard-webhooks", secret=SECRET).verify(post(headers), BODY)


@pytest.mark.parametrize(("headers", "says"), [
    (svix_headers("whsec_b3RoZXItc2VjcmV0", BODY), "svix-signature"),
    ({**svix_headers(SECRET, BODY), "svix-id": "msg_other"}, "svix-signature"),
    ({**svix_headers(SECRET, BODY), "svix-signature": "v1,a v1,b"}, "svix-signature"),
    ({k: v for k, v in svix_headers(SECRET, BODY).items() if k != "svix-signature"}, "svix-signature"),
    # one spelling for all three: a webhook-id does not borrow Svix's signature
    ({**svix_headers(SECRET, BODY), "webhook-id": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"}, "webhook-signature"),
])
def test_svix_spelled_wrong_or_missing_signature_is_401(headers: dict[str, str], says: str) -> None:
    """Another secret, another id, no matching signature, no signature, or a mix of spellings is refused."""
    with pytest.raises(Rejected) as info:
        build("standard-webhooks", secret=SECRET).verify(post(headers), BODY)
    assert (info.value.status, info.value.check) == (401, "signature")
    assert says in str(info.value)


def test_svix_spelled_stale_timestamp_is_401_naming_its_header() -> None:
    """A Svix-signed event stamped over 5 minutes ago is refused, naming svix-timestamp."""
    with pytest.raises(Rejected) as info:
        build("standard-webhooks", secret=SECRET).verify(post(svix_headers(SECRET, BODY, timestamp=NOW - 301)),
                                                          BODY)
    assert (info.value.status, info.value.check) == (401, "timestamp")
    assert "svix-timestamp" in str(info.value)
