"""What every vendor simulator serves beside the vendor's own API: the tickets it holds (`GET /tickets`,
`GET /`, `DELETE /tickets`), what it received (`/_received`), its fault knobs (`/_faults`) and what it is
(`GET /_sandbox`)."""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import msgspec
from aiohttp import web

from bridge.sandbox_identity import IDENTITY_PATH, identity
from bridge.simulators.faults import Faults, Handler, fault_routes, knob_routes
from bridge.simulators.received import RequestLog
from bridge.simulators.weights import TicketWeight, weigh
from bridge.vendors.files import ReceivedPart, parse_multipart
from handlers.base import read_content_type


def _readable_type(handler: Handler) -> Handler:
    """`handler`, behind a 400 for a Content-Type header aiohttp cannot read: it reads the header with the email
    package's parser, which raises on some malformed parameters (`application/json; x=;+*`) wherever the body is
    read as text, JSON or a form. Read here once, first, as intake reads it."""

    async def run(request: web.Request) -> web.StreamResponse:
        if isinstance(read_content_type(request), Exception):
            return web.json_response({"error": "the Content-Type header cannot be read"}, status=400)
        return await handler(request)

    return run


async def read_json_or_parts(request: web.Request, not_json: str) -> tuple[Any, list[ReceivedPart] | None] | str:
    """A JSON body as (its value, None), a multipart/form-data one as (None, its parts), or why it cannot be
    read (`not_json` for a body that is not JSON, in the vendor's words)."""
    raw = await request.read()
    ctype = read_content_type(request)
    if isinstance(ctype, Exception):
        return "the Content-Type header cannot be read"
    if ctype != "multipart/form-data":
        try:
            return json.loads(raw), None
        except ValueError:
            return not_json
    try:
        return None, parse_multipart(raw, request.headers.get("Content-Type", ""))
    except ValueError as exc:
        return f"the multipart body could not be read: {exc}"


def received_file(part: ReceivedPart) -> dict[str, Any]:
    """What a simulator keeps of a file it received: its name, content type, size and sha256."""
    return {"name": part.filename, "content_type": part.content_type, "size": len(part.content),
            "sha256": hashlib.sha256(part.content).hexdigest()}


MAX_TICKETS = 10_000
"""Tickets a simulator holds, the oldest dropped first. A sandbox destination's sources may take posts from
anyone, and each delivery makes or updates a ticket: without a cap, memory grows with every post for as long
as the server runs."""
MAX_HISTORY = 1_000
"""Entries each history of a ticket keeps (Kapture's comments; LeadSquared's Files, Updates, Activities and
Notes; http's updates), the oldest dropped first: whoever sends a ticket's follow-ups may send them without end."""
MAX_HISTORY_TOTAL = 50_000
"""History entries the tickets held keep in all: past it the oldest tickets are dropped, as past MAX_TICKETS."""
MAX_TICKET_BYTES = 64 * 1024 * 1024
"""Bytes the tickets held weigh in all, their fields and histories together (each value weighs its JSON
encoding's length), the oldest tickets dropped first. The entry bounds alone let each ticket, comment or note be
as large as intake's 1 MiB body: 10,000 such tickets are ~10 GiB. 64 MiB is 6.5 KiB for each of 10,000 tickets,
several times a demo's or a test's ticket, or 64 tickets of a full 1 MiB. Python holds about the weight (1.2x for
Kapture tickets with 1 KB texts, 0.5x with 100 KB ones, whose text two fields share; tickets of a title only take
6x, and MAX_TICKETS bounds them first), so the four simulators a server runs hold some 300 MiB of tickets at most.
A ticket heavier than the whole budget is still held (the newest is never dropped on arrival), alone; past the
budget it then keeps the newest entry of each history, its heaviest history's oldest dropped first. A ticket held
alone that a follow-up leaves heavier than the budget with its histories so trimmed (fields grown by updates, or a
ticket that arrived heavy) is dropped, as the oldest are: its next follow-up finds no ticket."""
MAX_TOKENS = 10_000
"""Tokens a simulator's log-in or token endpoint keeps live, the oldest forgotten first (refused from then on, as
revoked): the sandbox's demo credentials are public, so anyone who reaches it may ask for tokens without end."""
V = TypeVar("V")


def keep_token(tokens: OrderedDict[str, V], token: str, value: V, limit: int) -> None:
    """Add a live token, forgetting the oldest past `limit`."""
    tokens[token] = value
    while len(tokens) > limit:
        tokens.popitem(last=False)


class NoKnobs(msgspec.Struct, forbid_unknown_fields=True):
    """A simulator with no knobs of its own beside the shared faults."""


class VendorSimulator(ABC):
    """A simulator's shared state and routes; a vendor's module adds its API through `vendor_routes`, and
    the behaviours of a real account it can be switched to (`Knobs`, served at `/_knobs`).

    Tickets are held by the id the vendor's follow-ups name them with (`key`, a field of each ticket), oldest
    first, so a follow-up finds its ticket in one look-up whatever the number held. The lists named in
    `histories` are what follow-ups add to a ticket (`add_history`), each kept to its newest `max_history`
    entries, and all of them together to `max_history_total`; the tickets held weigh at most `max_ticket_bytes`
    (see MAX_TICKET_BYTES). A held ticket changes through `change` and `add_history`, which keep its weight (a
    `TicketWeight`) right without weighing it whole again."""

    Knobs: ClassVar[type[msgspec.Struct]] = NoKnobs
    vendor: ClassVar[str]
    """The vendor simulated, as `identity` says it (bridge/sandbox_identity.py)."""
    key: ClassVar[str]
    histories: ClassVar[tuple[str, ...]] = ()

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._held: OrderedDict[Any, dict[str, Any]] = OrderedDict()
        self._weights: dict[Any, TicketWeight] = {}  # each held ticket's, by its key
        self._history = 0  # entries in the histories of the tickets held
        self._bytes = 0  # what the tickets held weigh
        self.max_tickets = MAX_TICKETS
        self.max_history = MAX_HISTORY
        self.max_history_total = MAX_HISTORY_TOTAL
        self.max_ticket_bytes = MAX_TICKET_BYTES
        self.max_tokens = MAX_TOKENS
        self.faults = Faults()
        self.received = RequestLog(clock)
        self.knobs: Any = self.Knobs()

    @abstractmethod
    def vendor_routes(self) -> list[tuple[str, str, Handler]]:
        """The vendor's API as (method, path, handler); each call is noted in `received`."""

    @property
    def tickets(self) -> list[dict[str, Any]]:
        """The tickets held, oldest first (a copy: `hold`, `drop` and `clear` change them)."""
        return list(self._held.values())

    def ticket(self, key: Any) -> dict[str, Any] | None:
        """The held ticket whose `key` field is `key`, or None (never made, dropped or deleted)."""
        return self._held.get(key)

    @property
    def held_bytes(self) -> int:
        """What the tickets held weigh (MAX_TICKET_BYTES), kept as they change."""
        return self._bytes

    @property
    def held_entries(self) -> int:
        """The entries in the histories of the tickets held (MAX_HISTORY_TOTAL), kept as they change."""
        return self._history

    def hold(self, ticket: dict[str, Any]) -> None:
        """Add a ticket (its histories cut to their newest `max_history`), weighed once, dropping the oldest
        tickets past `max_tickets`, `max_history_total` or `max_ticket_bytes` (a later call on a dropped one
        finds no ticket). The ticket added is never dropped for its bytes, however heavy: alone over the budget,
        it keeps the newest entry of each history (see MAX_TICKET_BYTES)."""
        for name in self.histories:
            if len(ticket.get(name, ())) > self.max_history:
                del ticket[name][:-self.max_history]
        self.drop(ticket[self.key])
        self._held[ticket[self.key]] = ticket
        weight = self._weights[ticket[self.key]] = TicketWeight(ticket, self.histories)
        self._history += self._entries(ticket)
        self._bytes += weight.total
        self._shrink(arriving=True)

    def _weight(self, ticket: dict[str, Any]) -> TicketWeight | None:
        """The weight of `ticket` if it is held (not a copy made or kept elsewhere), else None."""
        key = ticket.get(self.key)
        return self._weights.get(key) if self._held.get(key) is ticket else None

    def change(self, ticket: dict[str, Any], **fields: Any) -> None:
        """Set fields of a ticket (never one of its histories: `add_history` adds to those), keeping the
        weight of a held one: each value is weighed as it is set, and the one it replaces as it goes."""
        weight = self._weight(ticket)
        for name, value in fields.items():
            if weight is not None:
                self._bytes += weight.set(ticket, name, value)
            ticket[name] = value
        if weight is not None:
            self._shrink()

    def change_by(self, ticket: dict[str, Any], name: str, value: Any, grown: int) -> None:
        """Replace field `name` with `value`, which the caller knows weighs `grown` bytes more than what it
        replaces: a vendor that merges a follow-up into a field weighs what the merge adds and removes, not the
        field whole."""
        if name in self.histories or name not in ticket:
            raise ValueError(f"{name!r} is not a field the ticket holds (nor a history): change sets it")
        held = self._weight(ticket)
        ticket[name] = value
        if held is not None:
            self._bytes += held.grow(grown)
            self._shrink()

    def add_history(self, ticket: dict[str, Any], name: str, entries: list[Any]) -> None:
        """Add `entries` to a held ticket's history `name`, keeping its newest `max_history`, and drop the
        oldest tickets while those held keep more than `max_history_total` entries or `max_ticket_bytes`.
        Each entry is weighed once, as it is added; its weight is kept for when it is dropped."""
        kept: list[Any] = ticket[name]
        kept.extend(entries)
        over = len(kept) - self.max_history
        if over > 0:
            del kept[:over]
        weight = self._weight(ticket)
        if weight is not None:
            self._bytes += weight.add(name, [weigh(entry) for entry in entries])
            if over > 0:
                self._bytes += weight.drop_oldest(name, over)
            self._history += len(entries) - max(over, 0)
            self._shrink()

    def drop(self, key: Any) -> dict[str, Any] | None:
        """Forget one ticket, as the vendor does one deleted in the account; the ticket, or None if not held."""
        ticket = self._held.pop(key, None)
        if ticket is not None:
            self._forget(ticket, self._weights.pop(key))
        return ticket

    def _forget(self, ticket: dict[str, Any], weight: TicketWeight) -> None:
        self._history -= self._entries(ticket)
        self._bytes -= weight.total

    def _entries(self, ticket: dict[str, Any]) -> int:
        return sum(len(ticket.get(name, ())) for name in self.histories)

    def _shrink(self, arriving: bool = False) -> None:
        """Drop the oldest tickets past the bounds; a ticket held alone past the byte budget is trimmed
        (`_trim_alone`), and dropped if that is not enough, unless it is `arriving` (just held)."""
        while self._held and (len(self._held) > self.max_tickets or self._history > self.max_history_total
                              or (len(self._held) > 1 and self._bytes > self.max_ticket_bytes)):
            key, oldest = self._held.popitem(last=False)
            self._forget(oldest, self._weights.pop(key))
        if self._held and self._bytes > self.max_ticket_bytes:
            self._trim_alone()
            if self._bytes > self.max_ticket_bytes and not arriving:
                key, alone = self._held.popitem()
                self._forget(alone, self._weights.pop(key))

    def _trim_alone(self) -> None:
        """The one ticket held weighs more than the budget: drop its histories' oldest entries, the heaviest
        history's first, down to the newest of each."""
        key, ticket = next(iter(self._held.items()))
        weight = self._weights[key]
        while self._bytes > self.max_ticket_bytes:
            heaviest = max((name for name, kept in weight.entries.items() if len(kept) > 1),
                           key=weight.sums.__getitem__, default=None)
            if heaviest is None:
                return
            kept = weight.entries[heaviest]
            count = 0
            over = self._bytes - self.max_ticket_bytes
            while count < len(kept) - 1 and over > 0:
                over -= kept[count] + 1  # the entry and its comma
                count += 1
            del ticket[heaviest][:count]
            self._bytes += weight.drop_oldest(heaviest, count)
            self._history -= count

    def listed(self) -> dict[str, Any]:
        """What `GET /tickets` answers."""
        return {"count": len(self._held), "tickets": self.tickets}

    def clear(self) -> None:
        """Forget the tickets (and whatever else a simulator counts), for `DELETE /tickets`."""
        self._held.clear()
        self._weights.clear()
        self._history = 0
        self._bytes = 0

    async def listing(self, request: web.Request) -> web.Response:
        return web.json_response(self.listed())

    async def reset(self, request: web.Request) -> web.Response:
        self.clear()
        return web.json_response({"count": 0})

    def _set_faults(self, faults: Faults) -> None:
        self.faults = faults

    def _set_knobs(self, knobs: msgspec.Struct) -> None:
        self.knobs = knobs

    async def identity(self, request: web.Request) -> web.Response:
        """What this server is: a ticketbridge sandbox's simulator of `vendor` (what a shared sandbox's
        destinations ask before they send: bridge/sandbox_identity.py)."""
        return web.json_response(identity(self.vendor))

    def app(self, guard: Callable[[Handler], Handler] | None = None) -> web.Application:
        """A new aiohttp application: the shared routes first, so a catch-all vendor path cannot shadow them;
        `guard` wraps each route's handler (who may use it), and answers every other path and method under the
        mount (404, 405) behind it too."""
        routes = [
            web.get(IDENTITY_PATH, self.identity),
            web.get("/tickets", self.listing),
            web.get("/", self.listing),
            web.delete("/tickets", self.reset),
            *self.received.routes(),
            *fault_routes(lambda: self.faults, self._set_faults),
            *knob_routes("/_knobs", self.Knobs, lambda: self.knobs, self._set_knobs),
            *(web.route(method, path, self.received.recorded(_readable_type(handler)))
              for method, path, handler in self.vendor_routes()),
        ]
        app = web.Application()
        if guard is None:
            app.add_routes(routes)
            return app
        app.add_routes([web.route(r.method, r.path, guard(r.handler), **r.kwargs) for r in routes])
        routed = list(app.router.resources())

        async def unrouted(request: web.Request) -> web.StreamResponse:
            """What aiohttp answers a path or a method no route takes: 405 naming the methods the path takes, else
            404. Answered behind the guard, so that a client it refuses learns nothing of the routes."""
            allowed: set[str] = set()
            for resource in routed:
                allowed |= (await resource.resolve(request))[1]
            if allowed:
                raise web.HTTPMethodNotAllowed(request.method, allowed)
            raise web.HTTPNotFound()

        # Last, so that they take only what no route does: the mount's own path, and any path under it.
        app.router.add_route("*", "", guard(unrouted))
        app.router.add_route("*", "/{tail:.*}", guard(unrouted))
        return app
