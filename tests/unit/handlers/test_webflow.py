"""handlers/webflow.py: x-webflow-signature over `timestamp:body`, a 5-minute window, form submissions."""

from __future__ import annotations

import pytest

from bridge.errors import Rejected
from handlers.webflow import WebflowHandler
from tests.fixtures.providers import NOW, build, compact, load, post, webflow_headers

SECRET = "wf-client-secret"
BODY = compact(load("webflow/form_submission.json"))


def test_kind_and_channel() -> None:
    """Webflow is kind `webflow` on the `form` channel."""
    assert (WebflowHandler.kind, WebflowHandler.channel) == ("webflow", "form")


async def test_signed_submission_gives_its_fields() -> None:
    """A signed form_submission gives payload.data's fields as they came, and the raw body under provider."""
    h, req = build("webflow", secret=SECRET), post(webflow_headers(SECRET, BODY))
    h.verify(req, BODY)
    assert await h.intercept(req, BODY) is None
    [inbound] = h.parse(req, BODY)
    provider = inbound.payload.pop("provider")
    assert inbound.payload == {"Name": "Asha Rao", "Email": "asha.rao@example.com",
                               "Message": "No internet since this morning.", "Phone Number": 919876543210}
    assert provider["payload"]["name"] == "Contact Us"
    assert inbound.dedup_key == "6321a84f9b6c5e3a4f0d8e21"


@pytest.mark.parametrize(("headers", "check"), [
    ({}, "signature"),
    ({**webflow_headers("other", BODY)}, "signature"),
    ({**webflow_headers(SECRET, BODY), "x-webflow-timestamp": str(NOW * 1000 + 1)}, "signature"),
    ({k: v for k, v in webflow_headers(SECRET, BODY).items() if k != "x-webflow-timestamp"}, "timestamp"),
])
def test_missing_or_wrong_signature_is_401(headers: dict[str, str], check: str) -> None:
    """No signature, another secret, a timestamp other than the signed one, or none, is refused by the check
    that failed."""
    with pytest.raises(Rejected) as info:
        build("webflow", secret=SECRET).verify(post(headers), BODY)
    assert info.value.status == 401
    assert info.value.check == check


@pytest.mark.parametrize("offset_ms", [-300_001, 300_001])
def test_stale_timestamp_is_401(offset_ms: int) -> None:
    """A correctly signed request stamped over 5 minutes away is refused by the timestamp check."""
    headers = webflow_headers(SECRET, BODY, NOW * 1000 + offset_ms)
    with pytest.raises(Rejected) as info:
        build("webflow", secret=SECRET).verify(post(headers), BODY)
    assert (info.value.status, info.value.check) == (401, "timestamp")


async def test_other_triggers_are_ignored() -> None:
    """A trigger other than form_submission is answered 200 and not stored."""
    body = compact(load("webflow/site_publish.json"))
    early = await build("webflow", secret=SECRET).intercept(post(), body)
    assert early is not None and early.outcome == "ignored" and "site_publish" in early.reason
