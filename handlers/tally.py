"""Tally webhooks: `Tally-Signature`, base64 HMAC-SHA256 of the body; fields by label or key."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.base import Handler, Inbound, Intercepted, decode_json_object, ignored, per_request
from handlers.hosted_form import SignedFormOptions, flatten
from handlers.signing import same

HEADER = "Tally-Signature"
CHOICE_TYPES = frozenset({"MULTIPLE_CHOICE", "DROPDOWN", "CHECKBOXES", "MULTI_SELECT", "RANKING"})


class TallyOptions(SignedFormOptions, kw_only=True, forbid_unknown_fields=True):
    pass


def field_value(field: dict[str, Any]) -> Any:
    """A field's value; choice fields give their options' text instead of option ids."""
    value = field.get("value")
    options = field.get("options")
    if field.get("type") in CHOICE_TYPES and isinstance(options, list):
        text = {o.get("id"): o.get("text") for o in options if isinstance(o, dict)}
        if isinstance(value, list):
            return [text.get(v, v) for v in value]
        return text.get(value, value)
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

    def verify(self, request: web.Request, body: bytes) -> None:
        given = request.headers.get(HEADER, "")
        if not given:
            raise Rejected(401, f"signature header {HEADER} is missing", check="signature")
        digest = hmac.new(self.tally.secret.encode(), body, hashlib.sha256).digest()
        if not same(base64.b64encode(digest), given):
            raise Rejected(401, f"signature in {HEADER} does not match the body", check="signature")

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        data = per_request(request, "json", lambda: decode_json_object(body))
        if data.get("eventType", "FORM_RESPONSE") != "FORM_RESPONSE":
            return ignored(f"Tally event {data.get('eventType')!r}")
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        data = per_request(request, "json", lambda: decode_json_object(body))
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
