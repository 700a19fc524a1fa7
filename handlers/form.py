"""Web forms posted by browsers (urlencoded or multipart) or by scripts (JSON)."""

from __future__ import annotations

from typing import ClassVar

import msgspec
from aiohttp import web

from bridge.config import ServerConfig, SourceConfig
from bridge.errors import VALUE
from bridge.yamlfile import KeyValueError
from handlers.base import Handler, Inbound, decode_json_object
from handlers.formdata import parse_multipart, parse_urlencoded

URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"


class FormOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    redirect: str | None = None
    cors_origins: list[str] = msgspec.field(default_factory=list)
    honeypot: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.redirect is not None and (not self.redirect.startswith(("http://", "https://", "/"))
                                          or self.redirect.startswith("//")):
            raise KeyValueError(("redirect",), f"`redirect` {VALUE} must be an absolute URL or a path starting with /",
                                self.redirect)
        for i, origin in enumerate(self.cors_origins):
            if origin != "*" and (not origin.startswith(("http://", "https://")) or origin.endswith("/")):
                raise KeyValueError(("cors_origins", i), f"cors origin {VALUE} must look like https://example.com (no "
                                    "path), or be *", origin)


class FormHandler(Handler):
    kind: ClassVar[str] = "form"
    channel = "form"
    Options: ClassVar[type[SourceConfig]] = FormOptions
    content_types: ClassVar[frozenset[str]] = frozenset({URLENCODED, MULTIPART, "application/json"})

    def __init__(self, name: str, options: SourceConfig, server: ServerConfig) -> None:
        super().__init__(name, options, server)
        assert isinstance(options, FormOptions)
        self.form = options  # typed once, not looked at again on each of a request's reads

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        ctype = request.content_type
        if ctype == URLENCODED:
            payload = parse_urlencoded(body, request.charset)
        elif ctype == MULTIPART:
            payload = parse_multipart(body, request.headers.get("Content-Type", ""))
        else:
            payload = decode_json_object(body)
        spam = False
        if self.form.honeypot is not None:
            trap = payload.get(self.form.honeypot)
            spam = trap not in (None, "", [])
        return [Inbound(payload=payload, spam=spam)]

    def allowed_origin(self, origin: str) -> bool:
        return "*" in self.form.cors_origins or origin in self.form.cors_origins

    def redirect_to(self, request: web.Request) -> str | None:
        """The `redirect` for a browser's own form submission; None (a JSON answer) for a script's post. A
        browser says which with Fetch Metadata: `Sec-Fetch-Mode: navigate` is the page going to the form's
        action; `cors`, `same-origin` or `no-cors` is a page script's fetch(), whose answer that script reads
        (a redirect elsewhere would be a CORS failure to it, after the event was stored). Without the header
        (older browsers, other clients) the Accept header decides."""
        if self.form.redirect is None or request.content_type not in (URLENCODED, MULTIPART):
            return None
        mode = request.headers.get("Sec-Fetch-Mode")
        if mode is not None:
            return self.form.redirect if mode.strip().lower() == "navigate" else None
        accept = request.headers.get("Accept", "")
        if "text/html" not in accept and "*/*" not in accept and accept:
            return None
        return self.form.redirect
