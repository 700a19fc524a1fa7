"""handlers/intercom.py: X-Hub-Signature (sha1), conversation topics as chat events, ping ignored."""

from __future__ import annotations

import re
from html import unescape

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import Rejected
from handlers import intercom
from handlers.intercom import IntercomHandler, html_text
from tests.fixtures.providers import build, compact, hub_signature, load, post

SECRET = "intercom-client-secret"
BODY = compact(load("intercom/conversation_replied.json"))


def test_kind_and_channel() -> None:
    """Intercom is kind `intercom` on the `chat` channel."""
    assert (IntercomHandler.kind, IntercomHandler.channel) == ("intercom", "chat")


async def test_reply_becomes_a_chat_event() -> None:
    """A signed conversation.user.replied gives the newest part as the chat shape, by notification id."""
    h, req = build("intercom", secret=SECRET), post({"X-Hub-Signature": hub_signature(SECRET, BODY, "sha1")})
    h.verify(req, BODY)
    assert await h.intercept(req, BODY) is None
    [inbound] = h.parse(req, BODY)
    assert {k: v for k, v in inbound.payload.items() if k != "provider"} == {
        "from": "asha.rao@example.com", "from_name": "Asha Rao", "to": "ecahpwf5",
        "text": "It is still down since this morning.\nThe light blinks red.", "conversation_id": "147",
        "message_id": "7288",
        "media": [{"name": "modem.jpg", "url": "https://downloads.intercomcdn.com/i/o/modem.jpg",
                   "content_type": "image/jpeg", "filesize": 60211}],
    }
    assert inbound.payload["provider"]["topic"] == "conversation.user.replied"
    assert inbound.dedup_key == "notif_ccd8a4d2-3a69-4a6e-9f1e-8f0e3c2b1a90"


def test_new_conversation_uses_its_opening_message() -> None:
    """Without conversation parts, the conversation's source message is the text."""
    data = load("intercom/conversation_replied.json")
    data["data"]["item"]["conversation_parts"]["conversation_parts"] = []
    [inbound] = build("intercom", secret=SECRET).parse(post(), compact(data))
    assert (inbound.payload["text"], inbound.payload["message_id"]) == ("Hi, my router is down", "403918316")


async def test_ping_is_ignored() -> None:
    """Intercom's ping is answered 200 and not stored."""
    early = await build("intercom", secret=SECRET).intercept(post(), compact(load("intercom/ping.json")))
    assert early is not None and early.outcome == "ignored"


@pytest.mark.parametrize("headers", [{}, {"X-Hub-Signature": hub_signature("other", BODY, "sha1")},
                                     {"X-Hub-Signature": hub_signature(SECRET, BODY, "sha256")}])
def test_missing_or_wrong_signature_is_401(headers: dict[str, str]) -> None:
    """No signature, another secret or another algorithm is refused."""
    with pytest.raises(Rejected) as info:
        build("intercom", secret=SECRET).verify(post(headers), BODY)
    assert (info.value.status, info.value.check) == (401, "signature")


def test_html_text() -> None:
    """Tags go, breaks and paragraphs become lines, entities are decoded."""
    assert html_text("<p>a &amp; b</p><p>c<br>d</p>") == "a & b\nc\nd"
    assert html_text(None) is None


@pytest.mark.parametrize("html", ["<" * 1_000_000, "<b>x</b>" * 125_000, "<br>" * 250_000, "&" * 1_000_000,
                                  "&amp;" * 200_000], ids=["lt", "tags", "breaks", "amp", "references"])
def test_a_long_body_is_read_a_step_at_a_time(html: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each substitution is one call into C that holds the GIL, and so the event loop, to its end even from the
    parser thread (1 MB of `<` or of `<b>x</b>` held it 47-107 ms): no call reads much more than HTML_STEP."""
    read: list[tuple[str, str]] = []  # the text each call read, and the character every match starts with

    class Recorded:
        def __init__(self, pattern: re.Pattern[str]) -> None:
            self.pattern = pattern

        def sub(self, replace: str, text: str) -> str:
            read.append((text, "<"))
            return self.pattern.sub(replace, text)

    def recorded_unescape(text: str) -> str:
        read.append((text, "&"))
        return unescape(text)

    expected = html_text(html)
    monkeypatch.setattr(intercom, "_TAG", Recorded(intercom._TAG))
    monkeypatch.setattr(intercom, "_BREAK", Recorded(intercom._BREAK))
    monkeypatch.setattr(intercom, "unescape", recorded_unescape)
    assert html_text(html) == expected
    # Past about HTML_STEP characters a call reads no more places a match could start: the rest (the tags'
    # text once they are gone) is passed over at the speed of a search for one character.
    step = intercom.HTML_STEP + len("<b>x</b>")
    assert len(read) > 3 and all(first not in text[step:] for text, first in read), [len(t) for t, _ in read]


def whole(html: str) -> str:
    """What html_text gave with each substitution made over the whole text at once."""
    text = unescape(intercom._TAG.sub("", intercom._BREAK.sub("\n", html)))
    return "\n".join(line.strip() for line in text.strip().splitlines())


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["<", ">", "<br>", "< BR />", "</p>", "</div", "li>", "/", " ", "\n", "x", "&", "amp",
                                 ";", "&#", "x41", "65", "&lt", "&amp;", "<b>"]), max_size=30),
       st.integers(min_value=1, max_value=6))
def test_read_in_steps_the_text_is_what_one_read_gives(pieces: list[str], step: int) -> None:
    """Steps end before a `<` (a `&` for the references): no tag, break or reference spans two."""
    html = "".join(pieces)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(intercom, "HTML_STEP", step)
        assert html_text(html) == whole(html)
