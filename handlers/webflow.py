"""Webflow form submissions: `x-webflow-signature`, hex HMAC-SHA256 of `timestamp:body`, the timestamp in
milliseconds within the tolerance. Other trigger types are answered 200 and ignored."""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web

from bridge.config import SourceConfig
from bridge.errors import Rejected
from handlers.auth import hmac_digest, signature_matches
from handlers.base import Handler, Inbound, Intercepted, ignored, json_body, named
from handlers.hosted_form import flatten
from handlers.signing import TimedOptions, check_timestamp, require


class WebflowOptions(TimedOptions, kw_only=True, forbid_unknown_fields=True):
    secret: str

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.secret, "secret", "WEBFLOW_CLIENT_SECRET")


class WebflowHandler(Handler):
    kind: ClassVar[str] = "webflow"
    channel = "form"
    Options: ClassVar[type[SourceConfig]] = WebflowOptions
    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    @property
    def webflow(self) -> WebflowOptions:
        assert isinstance(self.options, WebflowOptions)
        return self.options

    def verify(self, request: web.Request, body: bytes) -> None:
        signature = request.headers.get("x-webflow-signature", "")
        if not signature:
            raise Rejected(401, "signature header x-webflow-signature is missing", check="signature")
        raw_ts = request.headers.get("x-webflow-timestamp")
        check_timestamp(raw_ts, self.clock(), self.webflow.tolerance_s, header="x-webflow-timestamp", unit="ms")
        assert raw_ts is not None
        expected = hmac_digest(self.webflow.secret.encode(), raw_ts.strip().encode() + b":" + body, "sha256")
        if not signature_matches(expected, signature, "hex"):
            raise Rejected(401, "signature in x-webflow-signature does not match timestamp and body",
                           check="signature")

    def prepare(self, request: web.Request, body: bytes) -> None:
        json_body(request, body)

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        data = json_body(request, body)
        if data.get("triggerType") != "form_submission":
            return ignored(f"Webflow trigger {named(data.get('triggerType'))}")
        return None

    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        data = json_body(request, body)
        inner = data.get("payload")
        if not isinstance(inner, dict) or not isinstance(inner.get("data"), dict):
            raise Rejected(400, "no `payload.data` object in the body", check="json")
        fields: dict[str, Any] = inner["data"]
        answers = [(str(k), v) for k, v in fields.items()]
        submission = inner.get("id")
        return [Inbound(payload=flatten(answers, data), dedup_key=str(submission) if submission else None)]
