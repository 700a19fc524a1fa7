"""Tally webhooks: `Tally-Signature`, base64 HMAC-SHA256 of the body; fields by label or key."""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.auth import HmacConfig, check_hmac
from handlers.base import Handler, Inbound, Intercepted, ignored, json_body, named
from handlers.hosted_form import SignedFormOptions, flatten

HEADER = "Tally-Signature"
# A tuple, not a set: a body may put any value, even an unhashable one, in `type`.
CHOICE_TYPES = ("MULTIPLE_CHOICE", "DROPDOWN", "CHECKBOXES", "MULTI_SELECT", "RANKING")


class TallyOptions(SignedFormOptions, kw_only=True, forbid_unknown_fields=True):
    pass


def field_value(field: dict[str, Any]) -> Any:
    """A field's value; choice fields give their options' text instead of option ids."""
    value = field.get("value")
    options = field.get("options")
    if field.get("type") in CHOICE_TYPES and isinstance(options, list):
        text = {o["id"]: o.get("text") for o in options if isinstance(o, dict) and isinstance(o.get("id"), str)}

        def option(v: Any) -> Any:
            return text.get(v, v) if isinstance(v, str) else v

        return [option(v) for v in value] if isinstance(value, list) else option(value)
    return value


class TallyHandler(Handler):
    kind: ClassVar[str] = "tally"
    channel = "form"
    Options: ClassVar[type[SourceConfig]] = TallyOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    @property
    def tally(self) -> TallyOptions:
        assert isinstance(self.options, TallyOptions)
        return self.options

    @cached_property
    def signature(self) -> HmacConfig:
        return HmacConfig(secret=self.tally.secret, header=HEADER, encoding="base64")

    def verify(self, request: web.Request, body: bytes) -> None:
        check_hmac(self.signature, request, body, check="signature")

    def prepare(self, request: web.Request, body: bytes) -> None:
        json_body(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        data = json_body(request, body)
        if data.get("eventType", "FORM_RESPONSE") != "FORM_RESPONSE":
            return ignored(f"Tally event {named(data.get('eventType'))}")
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        data = json_body(request, body)
        inner = data.get("data")
        if not isinstance(inner, dict) or not isinstance(inner.get("fields"), list):
            raise Rejected(400, "no `data.fields` list in the body", check="json")
        answers: list[tuple[str, Any]] = []
        for field in inner["fields"]:
            if not isinstance(field, dict):
                continue
            if field.get("type") == "CHECKBOXES" and isinstance(field.get("value"), bool):
                continue  # Tally repeats each checkbox option as its own true/false field; the list says it all
            label, key = field.get("label"), field.get("key")
            name = label if self.tally.field_names == "label" and label else key
            answers.append((str(name), field_value(field)))
        event_id = data.get("eventId") or inner.get("responseId")
        return [Inbound(payload=flatten(answers, data), dedup_key=str(event_id) if event_id else None)]
