"""Generic JSON webhooks, optionally signed with an HMAC of the raw body."""

from __future__ import annotations

from typing import ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from handlers.auth import HmacConfig, check_hmac
from handlers.base import Handler, Inbound, decode_json_object


class JsonOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    hmac: HmacConfig | None = None


class JsonHandler(Handler):
    kind: ClassVar[str] = "json"
    channel = "webhook"
    Options: ClassVar[type[SourceConfig]] = JsonOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def verify(self, request: web.Request, body: bytes) -> None:
        assert isinstance(self.options, JsonOptions)
        if self.options.hmac is not None:
            check_hmac(self.options.hmac, request, body)

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        return [Inbound(payload=decode_json_object(body))]
