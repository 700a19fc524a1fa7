"""handlers/tally.py: Tally-Signature and fields flattened by label or key."""

from __future__ import annotations

import pytest

from bridge.errors import Rejected
from handlers.tally import TallyHandler
from tests.fixtures.providers import build, compact, load, post, tally_signature

SECRET = "tally-secret"
BODY = compact(load("tally/form_response.json"))


def test_kind_and_channel() -> None:
    """Tally is kind `tally` on the `form` channel."""
    assert (TallyHandler.kind, TallyHandler.channel) == ("tally", "form")


def test_signed_response_is_flattened_by_label() -> None:
    """Fields become label -> value, choices by their text, the per-option checkbox echoes dropped."""
    h, req = build("tally", secret=SECRET), post({"Tally-Signature": tally_signature(SECRET, BODY)})
    h.verify(req, BODY)
    [inbound] = h.parse(req, BODY)
    provider = inbound.payload.pop("provider")
    assert inbound.payload == {
        "Name": "Asha Rao", "Email": "asha.rao@example.com", "Message": "No internet since this morning.",
        "Service": ["Fibre broadband"], "Devices": ["Laptop", "Phone"],
        "Screenshot": [{"id": "5mDPWe", "name": "modem.png", "url": "https://storage.tally.so/private/modem.png?id=5mDPWe",
                        "mimeType": "image/png", "size": 21345}],
        "utm_source": "newsletter",
    }
    assert provider["data"]["formName"] == "Contact support"
    assert inbound.dedup_key == "a4cb511e-d513-4fa5-baee-b815d718dfd1"


def test_fields_by_key() -> None:
    """With `field_names: ref`, fields are keyed by Tally's question keys."""
    [inbound] = build("tally", secret=SECRET, field_names="ref").parse(post(), BODY)
    assert inbound.payload["question_nPRo0X"] == "asha.rao@example.com"


def test_dedup_falls_back_to_the_response_id() -> None:
    """Without an eventId, the response id names the event."""
    data = load("tally/form_response.json")
    del data["eventId"]
    [inbound] = build("tally", secret=SECRET).parse(post(), compact(data))
    assert inbound.dedup_key == "2wgx4n"


@pytest.mark.parametrize("headers", [{}, {"Tally-Signature": tally_signature("other", BODY)},
                                     {"Tally-Signature": tally_signature(SECRET, BODY[:-1])}])
def test_missing_or_wrong_signature_is_401(headers: dict[str, str]) -> None:
    """No signature, another secret or another body is refused."""
    with pytest.raises(Rejected) as info:
        build("tally", secret=SECRET).verify(post(headers), BODY)
    assert (info.value.status, info.value.check) == (401, "signature")


async def test_other_event_types_are_ignored() -> None:
    """An event other than FORM_RESPONSE is answered 200 and not stored."""
    body = compact({**load("tally/form_response.json"), "eventType": "FORM_DELETED"})
    early = await build("tally", secret=SECRET).intercept(post(), body)
    assert early is not None and early.outcome == "ignored"
