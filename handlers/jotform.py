"""Jotform webhooks: a multipart form whose `rawRequest` holds the answers as JSON. Jotform signs nothing,
so the webhook URL carries a secret: `/hooks/NAME?secret=…`, compared in constant time."""

from __future__ import annotations

import re
from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.base import Handler, Inbound, decode_json, per_request
from handlers.formdata import parse_multipart, parse_urlencoded
from handlers.hosted_form import flatten
from handlers.signing import require, same

URLENCODED = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
_QUESTION = re.compile(r"q\d+_(.+)")


class JotformOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    secret: str

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.secret, "secret", "JOTFORM_URL_SECRET")


class JotformHandler(Handler):
    kind: ClassVar[str] = "jotform"
    channel = "form"
    Options: ClassVar[type[SourceConfig]] = JotformOptions
    content_types: ClassVar[frozenset[str]] = frozenset({MULTIPART, URLENCODED})

    def verify(self, request: web.Request, body: bytes) -> None:
        assert isinstance(self.options, JotformOptions)
        given = request.query.get("secret")
        if not given:
            raise Rejected(401, "the URL has no `secret` query parameter", check="url_secret")
        if not same(self.options.secret, given):
            raise Rejected(401, "the URL's `secret` is wrong", check="url_secret")

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        def read() -> dict[str, Any]:
            if request.content_type == MULTIPART:
                return parse_multipart(body, request.headers.get("Content-Type", ""))
            return parse_urlencoded(body, request.charset)

        form = per_request(request, "jotform", read)
        raw = form.get("rawRequest")
        if not isinstance(raw, str):
            raise Rejected(400, "no `rawRequest` field in the form", check="form")
        answers_raw = decode_json(raw, "`rawRequest`", check="form")
        if not isinstance(answers_raw, dict):
            raise Rejected(400, "`rawRequest` is not a JSON object", check="form")
        # Questions come as q<N>_<unique name>; the rest (slug, event_id, timings) is Jotform's own.
        answers = [(m.group(1), v) for k, v in answers_raw.items() if (m := _QUESTION.fullmatch(k))]
        provider = {**form, "rawRequest": answers_raw}
        submission = form.get("submissionID")
        return [Inbound(payload=flatten(answers, provider), dedup_key=str(submission) if submission else None)]
