"""The CLI as a client of a running server's admin API (`--url`): deliveries read and replayed with only
the admin token in the environment, no config, store or secrets on this machine."""

from __future__ import annotations

import os
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec

from bridge.bodies import read_capped
from bridge.console.models import (
    MAX_PAGE,
    ConversationList,
    ConversationView,
    DeliveryPage,
    DeliveryView,
    ErrorBody,
    MarkDeadBody,
    MarkDeadResult,
    MarkSucceededBody,
    ReplayBody,
    ReplayResult,
    ResetConversationBody,
    ResetConversationResult,
    SetTicketBody,
)
from bridge.errors import NotFound, named
from bridge.store.base import DeliveryDetail, DeliveryFilter, DeliveryRow

TOKEN_ENV = "BRIDGE_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a secret
MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""The most of one admin API answer the CLI reads (decompressed): far above the largest a server gives (a delivery
with its event, body and attempts; a page of 500 deliveries), so that a wrong --url (a server that streams without
end, or a compressed answer that inflates to gigabytes) cannot fill this machine's memory."""

RECORD_ROUTES = ("/admin/api/deliveries/", "/admin/api/conversations/")
"""The routes under which a path names one record (a delivery's id, a conversation's key): their 404 says that no
record has it (NotFound), as the store says; any other 404 is a RemoteError (a --url that is not this bridge's)."""


class DeliveryReader(Protocol):
    """What `deliveries list|show` read: the store, or a server's admin API."""

    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRow]: ...

    async def get_delivery(self, delivery_id: str) -> DeliveryDetail: ...


class RemoteError(Exception):
    """The server refused or could not be reached; the message says which and why. `status`: the server's
    answer (None when none came)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def segment(value: str, what: str = "delivery") -> str:
    """`value` as one path segment: `/`, `..`, `?`, `#` and the rest escaped, so that an id never names another
    route. A whole segment of `.` or `..` cannot be escaped (URLs read `%2E` as a dot and drop such a segment):
    no id (key, name) is one, so it names no `what` (NotFound), without a request."""
    if value in (".", ".."):
        raise NotFound(f"no {what} {named(value)}")
    return quote(value, safe="")


def check_url(url: str) -> None:
    """RemoteError unless `url` is an http:// or https:// address with a host (`localhost:8080` is not: it reads as
    the scheme `localhost`)."""
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a bracketed host that is not an IPv6 address, a port that is not a number
        usable = False
    if not usable:
        example = f"http://{url}" if "://" not in url and url.isprintable() else "http://localhost:8080"
        raise RemoteError(f"--url {url!r}: not an http:// or https:// URL; give the server's address with its "
                          f"scheme, e.g. {example}")


def token_from_env() -> str:
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise RemoteError(f"set {TOKEN_ENV} to the server's admin.token (or a read token, to read only)")
    return token


class AdminClient:
    def __init__(self, url: str, token: str, session: aiohttp.ClientSession,
                 max_answer_bytes: int = MAX_ANSWER_BYTES) -> None:
        self.url = url.rstrip("/")
        self.session = session
        self.headers = {"Authorization": f"Bearer {token}"}
        self.max_answer_bytes = max_answer_bytes

    async def _call(self, method: str, path: str, answer: type[Any], *, params: dict[str, str] | None = None,
                    body: Any = None) -> Any:
        headers = self.headers if body is None else {**self.headers, "Content-Type": "application/json"}
        try:
            async with self.session.request(method, f"{self.url}{path}", params=params, headers=headers,
                                            data=None if body is None else msgspec.json.encode(body),
                                            timeout=aiohttp.ClientTimeout(total=60)) as resp:
                raw, cut = await read_capped(resp, self.max_answer_bytes)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RemoteError(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from None
        if cut:
            raise RemoteError(f"{method} {self.url}{path} answered {status} with more than {self.max_answer_bytes:,} "
                              "bytes, the most the CLI reads of an admin API answer: is --url this bridge's server?",
                              status)
        if status == 200:
            return msgspec.json.decode(raw, type=answer)
        try:
            message = msgspec.json.decode(raw, type=ErrorBody).error
        except msgspec.DecodeError:  # not JSON, or not an ErrorBody (ValidationError is a DecodeError)
            message = raw[:200].decode("utf-8", "replace")
        if status == 404 and path.startswith(RECORD_ROUTES):
            raise NotFound(message)
        raise RemoteError(f"{self.url} answered {status}: {message}", status)

    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRow]:
        """Up to `flt.limit` deliveries, newest first, as the store lists them: pages of at most MAX_PAGE, each
        after the last one's `next_cursor`, until the limit or the last page."""
        params = {k: v for k, v in (("status", flt.status), ("destination", flt.destination),
                                    ("source", flt.source), ("mapping", flt.mapping),
                                    ("conversation", flt.conversation)) if v is not None}
        items: list[DeliveryRow] = []
        cursor = flt.before_id
        while True:
            page: DeliveryPage = await self._call(
                "GET", "/admin/api/deliveries", DeliveryPage,
                params={**params, "limit": str(min(flt.limit - len(items), MAX_PAGE)),
                        **({} if cursor is None else {"cursor": cursor})})
            items.extend(page.items)
            cursor = page.next_cursor
            if cursor is None or len(items) >= flt.limit:
                return items[:flt.limit]

    async def get_delivery(self, delivery_id: str) -> DeliveryDetail:
        view: DeliveryView = await self._call("GET", f"/admin/api/deliveries/{segment(delivery_id)}", DeliveryView)
        return view

    async def mark_succeeded(self, delivery_id: str, body: MarkSucceededBody) -> DeliveryView:
        view: DeliveryView = await self._call("POST", f"/admin/api/deliveries/{segment(delivery_id)}/mark-succeeded",
                                              DeliveryView, body=body)
        return view

    async def set_ticket(self, delivery_id: str, body: SetTicketBody) -> DeliveryView:
        view: DeliveryView = await self._call("POST", f"/admin/api/deliveries/{segment(delivery_id)}/set-ticket",
                                              DeliveryView, body=body)
        return view

    async def replay(self, body: ReplayBody) -> ReplayResult:
        result: ReplayResult = await self._call("POST", "/admin/api/replay", ReplayResult, body=body)
        return result

    async def get_conversations(self, key: str, limit: int, cursor: str | None = None) -> list[ConversationView]:
        """The conversations with that key (or id), each with its first `limit` deliveries (at most MAX_PAGE) in the
        order they are sent in; with `cursor`, the page it reads of the conversation it was given for (LAST: each
        one's last page). NotFound when none has the key."""
        found: ConversationList = await self._call(
            "GET", f"/admin/api/conversations/{segment(key, 'conversation')}", ConversationList,
            params={"limit": str(limit), **({} if cursor is None else {"cursor": cursor})})
        return found.items

    async def reset_conversation(self, key: str, body: ResetConversationBody) -> ResetConversationResult:
        result: ResetConversationResult = await self._call(
            "POST", f"/admin/api/conversations/{segment(key, 'conversation')}/reset", ResetConversationResult,
            body=body)
        return result

    async def mark_dead(self, destination: str, body: MarkDeadBody) -> MarkDeadResult:
        result: MarkDeadResult = await self._call(
            "POST", f"/admin/api/destinations/{segment(destination, 'destination')}/mark-dead", MarkDeadResult,
            body=body)
        return result
