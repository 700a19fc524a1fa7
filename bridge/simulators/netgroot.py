"""A Netgroot ISP CRM stand-in: getSubjects and CreateTicket with their documented answers (401
Unauthorized, 404 Subscriber not found, 400 Invalid request data), the subscriber Login and Logout, and a
listing of what it received.

The API knows the subscriber from the bearer token, so `tokens` maps each token to its subscriber id;
a token mapped to None is a valid key whose subscriber no longer exists (the 404). Login (`subscribers`:
username → (password, subscriber id)) answers an HS256 JWT whose `exp` is `token_lifetime_seconds` (a knob,
`/_knobs`) after its issue; the token is refused (401 Unauthorized) from then on, and after its Logout.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from aiohttp import web

from bridge.simulators.base import VendorSimulator, keep_token
from bridge.simulators.faults import Handler, apply_faults
from bridge.vendors.netgroot import (
    CREATE_PATH,
    ID_FIELDS,
    LOGIN_PATH,
    LOGOUT_PATH,
    SANDBOX_PASSWORD,
    SANDBOX_TOKEN,
    SANDBOX_USERNAME,
    SUBJECTS_PATH,
    TICKETS_PATH,
)

NO_SUBSCRIBER_TOKEN = "sandbox-no-subscriber"  # noqa: S105 - the simulator's demo key for the 404 case
SUBJECTS = {1: "Technical Support", 2: "Billing Issue", 3: "New Connection", 4: "Relocation"}
OUTAGE = {"success": False, "message": "simulated outage"}


def _answer(status: int, message: str) -> web.Response:
    return web.json_response({"success": False, "message": message}, status=status)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class NetgrootKnobs(msgspec.Struct, forbid_unknown_fields=True):
    """How long a Login's JWT stays valid (seconds; its `exp`)."""

    token_lifetime_seconds: Annotated[float, msgspec.Meta(gt=0)] = 3600.0


class NetgrootSimulator(VendorSimulator):
    Knobs = NetgrootKnobs
    vendor = "netgroot"
    key = "ticket_id"

    def __init__(self, *, tokens: dict[str, int | None] | None = None,
                 subjects: dict[int, str] | None = None,
                 subscribers: dict[str, tuple[str, int]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.tokens = tokens if tokens is not None else {SANDBOX_TOKEN: 1, NO_SUBSCRIBER_TOKEN: None}
        self.subjects = dict(SUBJECTS if subjects is None else subjects)
        self.subscribers = subscribers if subscribers is not None else {SANDBOX_USERNAME: (SANDBOX_PASSWORD, 1)}
        self.clock = clock
        self.subject_requests = 0
        self.logins = 0
        self.logouts = 0
        self.expired_refusals = 0  # requests refused because their JWT had expired
        # A live JWT → (subscriber id, expiry, epoch seconds); an expired one is kept to count its refusals.
        self.jwts: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._signing_key = secrets.token_bytes(32)
        self._ids = itertools.count(101)

    def _jwt(self, subscriber: int, username: str) -> tuple[str, float]:
        now = self.clock()
        expires = now + self.knobs.token_lifetime_seconds
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = _b64(json.dumps({"sub": subscriber, "username": username, "iat": now, "exp": expires,
                                  "jti": secrets.token_hex(8)}).encode())
        signature = hmac.new(self._signing_key, f"{header}.{claims}".encode(), hashlib.sha256).digest()
        return f"{header}.{claims}.{_b64(signature)}", expires

    def _token(self, request: web.Request) -> str | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer":
            return None
        if token in self.jwts:
            if self.clock() >= self.jwts[token][1]:
                self.expired_refusals += 1
                return None
            return token
        return token if token in self.tokens and token.count(".") != 2 else None

    def _subscriber_of(self, token: str) -> int | None:
        return self.jwts[token][0] if token in self.jwts else self.tokens[token]

    async def _caller(self, request: web.Request) -> int | web.StreamResponse:
        """The subscriber a request authenticates as, or the answer that refuses it: an injected fault, 401
        Unauthorized (no live token), or 404 Subscriber not found."""
        faulted = await apply_faults(self.faults, request, OUTAGE)
        if faulted is not None:
            return faulted
        token = self._token(request)
        if token is None:
            return _answer(401, "Unauthorized")
        subscriber = self._subscriber_of(token)
        if subscriber is None:
            return _answer(404, "Subscriber not found")
        return subscriber

    async def login(self, request: web.Request) -> web.StreamResponse:
        faulted = await apply_faults(self.faults, request, OUTAGE)
        if faulted is not None:
            return faulted
        try:
            body = await request.json()
        except ValueError:
            return _answer(400, "Invalid request data")
        username = body.get("username") if isinstance(body, dict) else None
        known = self.subscribers.get(username) if isinstance(username, str) else None
        if known is None or not isinstance(body.get("password"), str) \
                or not hmac.compare_digest(known[0].encode(), body["password"].encode()):
            return web.json_response({"message": "Invalid credentials"}, status=401)
        subscriber = known[1]
        token, expires = self._jwt(subscriber, str(username))
        keep_token(self.jwts, token, (subscriber, expires), self.max_tokens)
        self.logins += 1
        return web.json_response({"message": "Login successful", "token": token,
                                  "subscriber": {"id": subscriber, "customer_id": f"C{subscriber:05d}",
                                                 "username": username, "firstname": "Sandbox",
                                                 "lastname": "Subscriber"}})

    async def logout(self, request: web.Request) -> web.StreamResponse:
        token = self._token(request)
        if token is None or token not in self.jwts:
            return _answer(401, "Unauthorized")
        del self.jwts[token]
        self.logouts += 1
        return web.json_response({"success": True, "message": "Logout successful"})

    async def customer_tickets(self, request: web.Request) -> web.StreamResponse:
        """`getCustomerTickets`: the authenticated subscriber's tickets (no filters, no paging)."""
        subscriber = await self._caller(request)
        if not isinstance(subscriber, int):
            return subscriber
        return web.json_response({"success": True, "data": [
            {k: t[k] for k in ("ticket_id", "subject", "status", "priority_id")}
            for t in self.tickets if t["subscriber_id"] == subscriber]})

    async def get_subjects(self, request: web.Request) -> web.StreamResponse:
        self.subject_requests += 1
        faulted = await apply_faults(self.faults, request, OUTAGE)
        if faulted is not None:
            return faulted
        if self._token(request) is None:
            return _answer(401, "Unauthorized")
        return web.json_response({"success": True, "data": [{"subject_id": k, "name": v}
                                                             for k, v in sorted(self.subjects.items())]})

    def _valid(self, body: Any) -> bool:
        if not isinstance(body, dict):
            return False
        ids = [body.get(k) for k in ("subject_id", *ID_FIELDS)]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in ids):
            return False
        message = body.get("message")
        return isinstance(message, str) and bool(message.strip()) and body["subject_id"] in self.subjects

    async def create(self, request: web.Request) -> web.StreamResponse:
        subscriber = await self._caller(request)
        if not isinstance(subscriber, int):
            return subscriber
        try:
            body = await request.json()
        except ValueError:
            return _answer(400, "Invalid request data")
        if not self._valid(body):
            return _answer(400, "Invalid request data")
        ticket_id = next(self._ids)
        self.hold({"ticket_id": ticket_id, "subscriber_id": subscriber, "status": "Open",
                    "subject": self.subjects[body["subject_id"]], **body})
        return web.json_response({"success": True, "message": "Ticket created successfully",
                                  "data": {"ticket_id": ticket_id, "status": "Open"}})

    def vendor_routes(self) -> list[tuple[str, str, Handler]]:
        return [("GET", SUBJECTS_PATH, self.get_subjects), ("POST", CREATE_PATH, self.create),
                ("POST", LOGIN_PATH, self.login), ("POST", LOGOUT_PATH, self.logout),
                ("GET", TICKETS_PATH, self.customer_tickets)]
