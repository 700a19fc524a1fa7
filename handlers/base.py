"""The handler interface: verify the raw request, parse it, normalise it, name its dedup key."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import msgspec
from aiohttp import web

from bridge.config import ServerConfig, SourceConfig
from bridge.errors import Rejected
from bridge.events import Channel

KEEP_HEADERS = ("content-type", "user-agent", "referer", "origin", "x-request-id", "x-forwarded-for")


class Inbound(msgspec.Struct, kw_only=True):
    """One event a request carries (most carry one)."""

    payload: dict[str, Any]
    dedup_key: str | None = None
    spam: bool = False


class Handler(ABC):
    """One source's handling of its provider's requests."""

    kind: ClassVar[str]
    channel: ClassVar[Channel]
    Options: ClassVar[type[SourceConfig]]
    content_types: ClassVar[frozenset[str]] = frozenset()
    keep_headers: ClassVar[tuple[str, ...]] = KEEP_HEADERS

    def __init__(self, name: str, options: SourceConfig, server: ServerConfig) -> None:
        self.name = name
        self.options = options
        self.server = server

    async def handshake(self, request: web.Request) -> web.StreamResponse | None:
        """Answer a provider's GET verification handshake; None when the provider has none."""
        return None

    def verify(self, request: web.Request, body: bytes) -> None:  # noqa: B027 - optional hook
        """Check the signature on the raw bytes; raise Rejected(401) naming the failed check."""

    @abstractmethod
    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        """The events in the request; raise Rejected(400/415) with the parser's reason."""

    def allowed_origin(self, origin: str) -> bool:
        """Whether browsers on `origin` may post here (CORS)."""
        return False

    def redirect_to(self, request: web.Request) -> str | None:
        """Where to send a browser after a successful post, if anywhere."""
        return None

    def check_content_type(self, request: web.Request) -> None:
        if not self.content_types:
            return
        if request.content_type not in self.content_types and not (
            "application/json" in self.content_types and request.content_type.endswith("+json")
        ):
            got = request.content_type if request.headers.get("Content-Type") else "none"
            raise Rejected(415, f"content type {got!r} is not taken by this source; send one of: "
                                f"{', '.join(sorted(self.content_types))}", check="content_type")

    def kept_headers(self, request: web.Request) -> dict[str, str]:
        out = {}
        for name in self.keep_headers:
            value = request.headers.get(name)
            if value is not None:
                out[name] = value
        return out


def decode_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or Rejected(400) with the parser's reason."""
    try:
        value = msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # msgspec raises the latter for bad UTF-8 in strings
        raise Rejected(400, f"malformed JSON: {exc}", check="json") from None
    if not isinstance(value, dict):
        raise Rejected(400, f"expected a JSON object, got a JSON {type(value).__name__}", check="json")
    return value
