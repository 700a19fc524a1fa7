"""Typeform webhooks: `Typeform-Signature: sha256=` base64 HMAC-SHA256 of the body; answers by label or ref."""

from __future__ import annotations

from functools import cached_property
from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.auth import HmacConfig, check_hmac
from handlers.base import (
    Handler,
    Inbound,
    Intercepted,
    ignored,
    items,
    json_body,
    named,
    obj,
)
from handlers.hosted_form import SignedFormOptions, flatten

HEADER = "Typeform-Signature"


class TypeformOptions(SignedFormOptions, kw_only=True, forbid_unknown_fields=True):
    pass


def answer_value(answer: dict[str, Any]) -> Any:
    """The value of one answer, by its `type`: a choice gives its label, choices the list of labels."""
    kind = answer.get("type")
    value = answer.get(kind) if isinstance(kind, str) else None
    if kind == "choice" and isinstance(value, dict):
        return value.get("label", value.get("other"))
    if kind == "choices" and isinstance(value, dict):
        labels = list(items(value.get("labels")))
        if value.get("other"):
            labels.append(value["other"])
        return labels
    if kind == "payment" and isinstance(value, dict):
        return value
    return value


class TypeformHandler(Handler):
    kind: ClassVar[str] = "typeform"
    channel = "form"
    Options: ClassVar[type[SourceConfig]] = TypeformOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    @property
    def typeform(self) -> TypeformOptions:
        assert isinstance(self.options, TypeformOptions)
        return self.options

    @cached_property
    def signature(self) -> HmacConfig:
        return HmacConfig(secret=self.typeform.secret, header=HEADER, encoding="base64", prefix="sha256=")

    def verify(self, request: web.Request, body: bytes) -> None:
        check_hmac(self.signature, request, body, check="signature")

    def prepare(self, request: web.Request, body: bytes) -> None:
        json_body(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        data = json_body(request, body)
        if data.get("event_type", "form_response") != "form_response":
            return ignored(f"Typeform event {named(data.get('event_type'))}")  # partial responses come again, whole
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        data = json_body(request, body)
        response = data.get("form_response")
        if not isinstance(response, dict):
            raise Rejected(400, "no `form_response` object in the body", check="json")
        definition = obj(response.get("definition"))
        titles = {str(f.get("id")): f.get("title") for f in items(definition.get("fields")) if isinstance(f, dict)}
        answers: list[tuple[str, Any]] = []
        for answer in items(response.get("answers")):
            if not isinstance(answer, dict):
                continue
            field = obj(answer.get("field"))
            ref, title = field.get("ref"), titles.get(str(field.get("id")))
            key = title if self.typeform.field_names == "label" and title else ref or field.get("id")
            answers.append((str(key), answer_value(answer)))
        hidden = response.get("hidden")
        if isinstance(hidden, dict):
            answers.extend((str(k), v) for k, v in hidden.items())
        event_id = data.get("event_id") or response.get("token")
        return [Inbound(payload=flatten(answers, data), dedup_key=str(event_id) if event_id else None)]
