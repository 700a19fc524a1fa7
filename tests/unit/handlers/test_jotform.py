"""handlers/jotform.py: a secret in the webhook URL, answers from rawRequest by their unique names."""

from __future__ import annotations

import pytest

from bridge.errors import Rejected
from handlers.jotform import JotformHandler
from tests.fixtures.providers import build, load, multipart, post

SECRET = "jf-url-secret"


def submission() -> tuple[bytes, dict[str, str]]:
    body, ctype = multipart(load("jotform/submission.json"))
    return body, {"Content-Type": ctype}


def test_kind_and_channel() -> None:
    """Jotform is kind `jotform` on the `form` channel."""
    assert (JotformHandler.kind, JotformHandler.channel) == ("jotform", "form")


def test_submission_with_the_url_secret_is_flattened() -> None:
    """The URL's secret passes; rawRequest's q<N>_<name> answers become name -> value as they came."""
    body, headers = submission()
    h, req = build("jotform", secret=SECRET), post(headers, path=f"/hooks/jotform?secret={SECRET}")
    h.verify(req, body)
    [inbound] = h.parse(req, body)
    provider = inbound.payload.pop("provider")
    assert inbound.payload == {
        "fullName": {"first": "Asha", "last": "Rao"}, "email": "asha.rao@example.com",
        "message": "No internet since this morning.", "services": ["Fibre broadband", "Mobile"],
        "phoneNumber": {"full": "+91 98765 43210"},
    }
    assert provider["formTitle"] == "Contact support"
    assert provider["rawRequest"]["slug"] == "submit/241546789012345"
    assert inbound.dedup_key == "5912345678901234567"


@pytest.mark.parametrize("path", ["/hooks/jotform", "/hooks/jotform?secret=", "/hooks/jotform?secret=guess",
                                  f"/hooks/jotform?token={SECRET}"])
def test_missing_or_wrong_url_secret_is_401(path: str) -> None:
    """A URL without the secret, or with another one, is refused."""
    body, headers = submission()
    with pytest.raises(Rejected) as info:
        build("jotform", secret=SECRET).verify(post(headers, path=path), body)
    assert (info.value.status, info.value.check) == (401, "url_secret")


@pytest.mark.parametrize(("raw", "reason"), [(None, "no `rawRequest`"), ("{", "not JSON"),
                                            ("[1]", "not a JSON object")])
def test_unreadable_raw_request_is_400(raw: str | None, reason: str) -> None:
    """A submission whose rawRequest is missing or not a JSON object is a 400."""
    fields = {k: v for k, v in load("jotform/submission.json").items() if k != "rawRequest"}
    if raw is not None:
        fields["rawRequest"] = raw
    body, ctype = multipart(fields)
    with pytest.raises(Rejected, match=reason):
        build("jotform", secret=SECRET).parse(post({"Content-Type": ctype}), body)
