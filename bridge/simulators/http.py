"""A stand-in for the generic `http` vendor: any JSON (or multipart/form-data) POST, PUT or PATCH under any
path is stored and answered `201 {"success": true, "data": {"id": "T-<n>"}}`, so `sandbox: true` http
destinations (with `ticket_id_path: data.id`) can be tried before the customer's API is reachable.

A multipart body's JSON part (the one that is not a file) is its body; its file parts are kept as
`files` (name, content_type, size, sha256). A request whose path names a ticket it made (e.g.
`/tickets/T-1/comments`) is also added to that ticket's `updates`, so follow-ups show on their ticket.

`POST /oauth/token` is an OAuth2 client-credentials token endpoint (client `sandbox-client`, secret
`sandbox-secret`, as HTTP Basic or in the form). With the knob `oauth2: true` every other call needs
`Authorization: Bearer` with a token it issued, refused with 401 `invalid_token` once
`token_lifetime_seconds` have passed. A GET of any path but `/tickets` (the listing every simulator serves)
answers `200 {"success": true, "count": n, "items": [{"id": …}, …]}`: n tickets in all, and those whose JSON
body has each query parameter's value (`/search?ref=evt_1`: body field `ref` is "evt_1"): the look-up a
reconciliation (`lookup:`) and `ticketbridge doctor` can be pointed at."""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from aiohttp import web

from bridge.simulators.base import VendorSimulator, keep_token, read_json_or_parts, received_file
from bridge.simulators.faults import Handler, apply_faults
from bridge.vendors.http_auth import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET

OUTAGE = {"success": False, "error": "simulated outage"}
TOKEN_PATH = "/oauth/token"  # noqa: S105 - a path, not a secret


class HttpKnobs(msgspec.Struct, forbid_unknown_fields=True):
    """`oauth2`: calls need a token from the token endpoint; `token_lifetime_seconds`: its `expires_in`."""

    oauth2: bool = False
    token_lifetime_seconds: Annotated[float, msgspec.Meta(gt=0)] = 3600.0


def _client(request: web.Request, form: Any) -> tuple[str, str]:
    """The client id and secret, from HTTP Basic or the form."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme == "Basic":
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return "", ""
        return user, password
    return str(form.get("client_id", "")), str(form.get("client_secret", ""))


class HttpSimulator(VendorSimulator):
    Knobs = HttpKnobs
    vendor = "http"
    key = "id"
    histories = ("updates",)

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.clock = clock
        self._ids = itertools.count(1)
        self.issued: OrderedDict[str, float] = OrderedDict()  # a live access token → expiry (epoch seconds)
        self.token_requests = 0
        self.refused = 0  # calls refused for a missing, unknown or expired token

    async def token(self, request: web.Request) -> web.StreamResponse:
        """The client-credentials grant: `{access_token, token_type, expires_in}` or RFC 6749's errors."""
        self.token_requests += 1
        faulted = await apply_faults(self.faults, request, OUTAGE)
        if faulted is not None:
            return faulted
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if _client(request, form) != (SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = secrets.token_urlsafe(16)
        keep_token(self.issued, token, self.clock() + self.knobs.token_lifetime_seconds, self.max_tokens)
        return web.json_response({"access_token": token, "token_type": "Bearer",
                                  "expires_in": self.knobs.token_lifetime_seconds,
                                  **({"scope": form["scope"]} if "scope" in form else {})})

    def _refusal(self, request: web.Request) -> web.Response | None:
        if not self.knobs.oauth2:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme == "Bearer" and self.clock() < self.issued.get(token, 0.0):
            return None
        self.issued.pop(token, None)  # an expired one is never honoured again
        self.refused += 1
        return web.json_response({"error": "invalid_token"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    async def look_up(self, request: web.Request) -> web.StreamResponse:
        faulted = await apply_faults(self.faults, request, OUTAGE)
        if faulted is not None:
            return faulted
        refused = self._refusal(request)
        if refused is not None:
            return refused
        wanted = dict(request.query)
        items = [{"id": t["id"]} for t in self.tickets
                 if isinstance(t["body"], dict) and all(str(t["body"].get(k)) == v for k, v in wanted.items())]
        return web.json_response({"success": True, "count": len(self._held), "items": items})

    @staticmethod
    async def _read(request: web.Request) -> tuple[Any, list[dict[str, Any]]] | str:
        read = await read_json_or_parts(request, "the body is not JSON")
        if isinstance(read, str):
            return read
        body, parts = read
        if parts is None:
            return body, []
        data = [p for p in parts if p.filename is None]
        files = [{"part": p.name, **received_file(p)} for p in parts if p.filename is not None]
        if len(data) != 1:
            return "the multipart body needs exactly one part that is not a file (the JSON fields)"
        try:
            return json.loads(data[0].content), files
        except ValueError:
            return f"the {data[0].name!r} part is not JSON"

    async def accept(self, request: web.Request) -> web.StreamResponse:
        faulted = await apply_faults(self.faults, request, OUTAGE)
        if faulted is not None:
            return faulted
        refused = self._refusal(request)
        if refused is not None:
            return refused
        read = await self._read(request)
        if isinstance(read, str):
            return web.json_response({"success": False, "error": read}, status=400)
        body, files = read
        self.received.note(request, files=files)
        for segment in dict.fromkeys(request.path.split("/")):  # each ticket the path names, once
            ticket = self.ticket(segment)
            if ticket is not None:
                self.add_history(ticket, "updates", [{"method": request.method, "path": request.path, "body": body,
                                                      "files": files}])
        ticket_id = f"T-{next(self._ids)}"
        self.hold({"id": ticket_id, "method": request.method, "path": request.path, "body": body,
                    "files": files, "updates": []})
        return web.json_response({"success": True, "data": {"id": ticket_id}}, status=201)

    def vendor_routes(self) -> list[tuple[str, str, Handler]]:
        return [("POST", TOKEN_PATH, self.token), ("GET", "/{tail:.*}", self.look_up),
                *((method, "/{tail:.*}", self.accept) for method in ("POST", "PUT", "PATCH"))]
