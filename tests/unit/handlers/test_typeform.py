"""handlers/typeform.py: Typeform-Signature and answers flattened by label or ref."""

from __future__ import annotations

import pytest

from bridge.errors import Rejected
from handlers.typeform import TypeformHandler
from tests.fixtures.providers import build, compact, load, post, typeform_signature

SECRET = "tf-secret"
BODY = compact(load("typeform/form_response.json"))


def signed(body: bytes = BODY, secret: str = SECRET) -> dict[str, str]:
    return {"Typeform-Signature": typeform_signature(secret, body), "Content-Type": "application/json"}


def test_kind_and_channel() -> None:
    """Typeform is kind `typeform` on the `form` channel."""
    assert (TypeformHandler.kind, TypeformHandler.channel) == ("typeform", "form")


def test_signed_response_is_flattened_by_label() -> None:
    """By default each answer is keyed by its question's title, with hidden fields and the raw body kept."""
    h, req = build("typeform", secret=SECRET), post(signed())
    h.verify(req, BODY)
    [inbound] = h.parse(req, BODY)
    provider = inbound.payload.pop("provider")
    assert inbound.payload == {
        "What is your name?": "Asha Rao", "Your email": "asha.rao@example.com",
        "What is wrong?": "No internet since this morning.", "Which service?": "Fibre broadband",
        "Which devices are affected?": ["Laptop", "Phone", "Smart TV"], "Can we call you?": True,
        "Phone": "+919876543210", "utm_source": "newsletter",
    }
    assert provider == load("typeform/form_response.json")
    assert inbound.dedup_key == "01HZX3T9Q0N7T8J8QW6E5R4D3C"


def test_answers_by_ref() -> None:
    """With `field_names: ref`, answers are keyed by the refs set in the form builder."""
    [inbound] = build("typeform", secret=SECRET, field_names="ref").parse(post(signed()), BODY)
    assert {k: inbound.payload[k] for k in ("name", "email", "service")} == {
        "name": "Asha Rao", "email": "asha.rao@example.com", "service": "Fibre broadband"}


@pytest.mark.parametrize("headers", [
    {}, {"Typeform-Signature": typeform_signature("other", BODY)},
    {"Typeform-Signature": typeform_signature(SECRET, BODY + b" ")},
    {"Typeform-Signature": typeform_signature(SECRET, BODY).removeprefix("sha256=")},
])
def test_missing_or_wrong_signature_is_401(headers: dict[str, str]) -> None:
    """No signature, another secret, another body or no `sha256=` prefix is refused."""
    with pytest.raises(Rejected) as info:
        build("typeform", secret=SECRET).verify(post(headers), BODY)
    assert (info.value.status, info.value.check) == (401, "signature")


async def test_partial_responses_are_ignored() -> None:
    """A `form_response_partial` is answered 200 and not stored: the whole response follows."""
    body = compact({**load("typeform/form_response.json"), "event_type": "form_response_partial"})
    early = await build("typeform", secret=SECRET).intercept(post(signed(body)), body)
    assert early is not None and early.outcome == "ignored"
    assert await build("typeform", secret=SECRET).intercept(post(signed()), BODY) is None


def test_body_without_form_response_is_400() -> None:
    """A body with no `form_response` object is a 400."""
    with pytest.raises(Rejected) as info:
        build("typeform", secret=SECRET).parse(post(), b'{"event_id": "x"}')
    assert info.value.status == 400
