"""The shipped example mappings against their vendors' static checks, and against each chat provider's
message that has no text."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlencode

import pytest

from bridge.app import load_mappings
from bridge.config import load_config
from bridge.mapping.model import TestInput
from bridge.mapping.testing import context_for
from bridge.registries import REGISTRIES
from bridge.vendors.registry import adapter_class
from tests.fixtures.providers import build, compact, load, post


def test_shipped_mappings_pass_their_vendors_static_checks(tmp_path: Path) -> None:
    """Every shipped mapping has the fields and options its vendor's action needs, so loading will not refuse it."""
    config = load_config(None, environ={}, cwd=tmp_path, registries=REGISTRIES)
    mappings = load_mappings(config)
    vendors = set()
    for mapping in mappings.mappings.values():
        vendor = config.destinations[mapping.destination].vendor
        vendors.add((vendor, mapping.action))
        cls = adapter_class(vendor)
        assert cls.static_check(mapping.action, list(mapping.spec.fields), mapping.options) == [], \
            mapping.name
    assert vendors >= {("kapture", "create_ticket"), ("kapture", "update_ticket"),
                       ("leadsquared", "create_ticket"), ("netgroot", "create_ticket")}


def _media_messages() -> dict[str, tuple[str, dict[str, str], bytes]]:
    """Each chat provider's message carrying a photo or file and no text, as the provider posts it: kind, the
    handler's options, and the body."""
    twilio = {**load("twilio/whatsapp_media.json"), "Body": ""}  # Twilio sends an empty Body
    whatsapp = load("whatsapp/messages.json")
    value = whatsapp["entry"][0]["changes"][0]["value"]
    value["messages"] = [{"from": "919876543210", "id": "wamid.photo", "timestamp": "1717408965", "type": "image",
                          "image": {"mime_type": "image/jpeg", "sha256": "x", "id": "1279493672817426"}}]
    telegram = load("telegram/photo.json")
    del telegram["message"]["caption"]
    slack = load("slack/message.json")
    slack["event"].update(subtype="file_share", text="", files=[
        {"id": "F1", "name": "modem.jpg", "mimetype": "image/jpeg", "url_private": "https://files.slack.com/x"}])
    intercom = load("intercom/conversation_replied.json")
    intercom["data"]["item"]["conversation_parts"]["conversation_parts"][-1]["body"] = None
    return {
        "twilio": ("twilio", {"auth_token": "t"}, urlencode(twilio).encode()),
        "whatsapp": ("whatsapp", {"app_secret": "s", "verify_token": "v"}, compact(whatsapp)),
        "telegram": ("telegram", {"secret_token": "t"}, compact(telegram)),
        "slack": ("slack", {"signing_secret": "s"}, compact(slack)),
        "intercom": ("intercom", {"secret": "s"}, compact(intercom)),
    }


MEDIA = _media_messages()
TICKET = {"id": "101", "key": None, "destination": "demo-ispcrm", "created_at": "2026-11-26T10:00:00Z",
          "messages": 1, "last_message_at": "2026-11-26T10:00:00Z"}


@pytest.mark.parametrize("provider", sorted(MEDIA))
def test_shipped_chat_mappings_render_a_media_message_without_text(provider: str, tmp_path: Path) -> None:
    """A photo or file sent with no caption (text null, or "") from each chat provider, as its handler
    normalises it, renders through every shipped mapping that takes chat, first message and follow-up alike,
    naming its attachment rather than writing "None"."""
    kind, options, body = MEDIA[provider]
    content_type = "application/x-www-form-urlencoded" if kind == "twilio" else "application/json"
    [inbound] = build(kind, **options).parse(post({"Content-Type": content_type}), body)
    assert not inbound.payload["text"] and inbound.payload["media"]
    config = load_config(None, environ={}, cwd=tmp_path, registries=REGISTRIES)
    chat = [m for m in load_mappings(config).mappings.values() if "chat" in m.sources]
    assert chat, "no shipped mapping takes chat"
    for mapping in chat:
        for ticket in (None, TICKET):
            rendered = mapping if ticket is None or mapping.follow_up is None else mapping.follow_up
            fields = rendered.render(context_for(TestInput(payload=inbound.payload, ticket=ticket), rendered,
                                                 config.vars))
            text = json.dumps(fields)
            assert "None" not in text and "attachment" in text, (mapping.name, fields)
