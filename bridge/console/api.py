"""`/admin/api/…`: the admin API's routes, each declared once with its structs (which the OpenAPI spec is
generated from), its auth (read or change) and its errors. Every change is written to the audit log."""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from aiohttp import web

from bridge import __version__
from bridge.appkeys import RUNTIME
from bridge.config import Config
from bridge.connections import content_encoding
from bridge.console.auth import Caller, api_on, identify
from bridge.console.models import (
    LAST,
    REPLAY_MOST,
    AuditPage,
    AuditQuery,
    BadCursor,
    ConversationList,
    ConversationQuery,
    ConversationView,
    DeliveryPage,
    DeliveryQuery,
    DeliveryView,
    DestinationList,
    ErrorBody,
    EventView,
    LaneState,
    MappingInfo,
    MappingSetView,
    MarkDeadBody,
    MarkDeadResult,
    MarkSucceededBody,
    Overview,
    PauseBody,
    PlaygroundBody,
    PlaygroundResult,
    RateUse,
    Refusal,
    ReloadInfo,
    ReplayBody,
    ReplayResult,
    ResetConversationBody,
    ResetConversationResult,
    ResetTicket,
    SetTicketBody,
)
from bridge.console.playground import decisions, run_playground
from bridge.delivery.coordination import Gate
from bridge.delivery.orphans import mark_dead, unconfigured
from bridge.delivery.replay import (
    REPLAY_CHUNK,
    ReplayStopped,
    mark_succeeded,
    replay_deliveries,
    reset_conversation,
    reset_detail,
    set_ticket,
    ticket_detail,
    unknown_filter,
)
from bridge.errors import NotFound, StoreRefused, StoreUnavailable, named
from bridge.ids import id_floor, new_id
from bridge.mapping.mappingset import MappingSet
from bridge.offload import CONSOLE, render_sliced
from bridge.runtime import Runtime
from bridge.store.base import STATUSES, AuditEntry, DeliveryFilter, DeliveryRow, DeliveryStatus, Store
from handlers.base import lone_surrogate, read_content_type

log = structlog.get_logger("ticketbridge.admin")

SCAN_LIMIT = 5000  # deliveries one page may read to fill itself under a text or time filter
SCAN_BATCH = 200  # deliveries read at a time under such a filter, whatever the page's limit (one read a row, else)
COMMIT_SLACK_MS = 60_000  # how much older than its commit a delivery's id may be
_encode = msgspec.json.Encoder().encode


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ValueRefused(Exception):
    """The store refused a value the caller gave (StoreRefused within `blame`): 400 for a path or query value, 422
    for a body's, naming where it was given."""

    def __init__(self, status: int, fields: tuple[str, ...], refusal: StoreRefused) -> None:
        super().__init__(refusal.reason)
        self.status = status
        self.fields = fields
        self.refusal = refusal


@contextlib.contextmanager
def blame(status: int, *fields: str | None) -> Iterator[None]:
    """A StoreRefused within is the caller's value at `fields` (those given: None is left out), answered `status`;
    the store took nothing from it and is not failing."""
    try:
        yield
    except StoreRefused as exc:
        raise ValueRefused(status, tuple(f for f in fields if f is not None), exc) from exc


def _given(value: Any, name: str) -> str | None:
    """`name` when the caller gave it a value, for `blame`."""
    return None if value is None or value == [] else name


@dataclass
class Call:
    rt: Runtime
    request: web.Request
    caller: Caller
    query: Any = None
    body: Any = None
    unread: web.Request | None = None  # the request as it was before its body was read (the playground clones it)

    def param(self, name: str) -> str:
        return self.request.match_info[name]


Handler = Callable[[Call], Awaitable[msgspec.Struct]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    response: type[msgspec.Struct]
    change: bool = False
    query: type[msgspec.Struct] | None = None
    body: type[msgspec.Struct] | None = None
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def path_params(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]


API_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
"""On every admin API answer: read as JSON only, never as a page, and kept in no cache (it holds customers' data)."""


def _json(status: int, value: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encode(value), status=status, content_type="application/json",
                        headers={**API_HEADERS, **(headers or {})})


def error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="ticketbridge admin"'} if status == 401 else None
    return _json(status, ErrorBody(error=message), headers)


def authorize(request: web.Request, change: bool) -> Caller | web.Response:
    """The caller, or the refusal: 404 while the API is off, 401 without a known token, 403 for a read-only
    token on a change."""
    admin = request.app[RUNTIME].config.admin
    if not api_on(admin):
        return error(404, "the admin API is off: set admin.token (and admin.read_tokens) in the config")
    caller = identify(request.headers.get("Authorization", ""), admin)
    if caller is None:
        return error(401, "this needs an admin token: Authorization: Bearer <admin.token or a read token>")
    if change and caller.role != "admin":
        return error(403, f"the token {caller.name!r} is read-only; changes need admin.token")
    return caller


def nul_at(value: Any, where: str) -> str | None:
    """Where in `value` (a decoded query or body: structs, lists, dicts, str) a NUL character is, as a path
    from `where` (`body.ids[2]`), or None. No id, name or text the store keeps holds one, and PostgreSQL refuses
    it in any text parameter (an error of the store's, not the caller's, were it sent there)."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        node, at = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return at
        elif isinstance(node, msgspec.Struct):
            stack.extend((getattr(node, f.name), f"{at}.{f.name}") for f in msgspec.structs.fields(node))
        elif isinstance(node, list):
            stack.extend((v, f"{at}[{i}]") for i, v in enumerate(node))
        elif isinstance(node, dict):
            for k, v in node.items():
                stack.extend(((k, f"{at} key {k!r}"), (v, f"{at}.{k}")))
    return None


def _refuse_nul(route: Route, call: Call) -> web.Response | None:
    """A 400 for a NUL character in a path parameter, the query, or a change's body (a change is stored and
    audited; the playground's body is a provider's raw text, never stored, and may hold one)."""
    at = (nul_at(dict(call.request.match_info), "path") or nul_at(call.query, "query")
          or (nul_at(call.body, "body") if route.change else None))
    if at is None:
        return None
    return error(400, f"{at} holds a NUL character (\\x00); no id, name or text kept in the store has one: "
                      "send it without")


JSON_TYPE = "application/json"
UTF8 = frozenset({"utf-8", "utf8"})


def refuse_media_type(route: Route, request: web.Request) -> web.Response | None:
    """A 415 for a route that takes a body sent without `Content-Type: application/json` (UTF-8), or for a body
    sent to a route that takes none in any other type, or for a body sent with a Content-Encoding (the server never
    unpacks one: bridge/connections.py). As a browser may post plain text or a form to another site
    without asking it first, this also keeps such a post from ever being read as a change."""
    if route.method == "GET":
        return None
    sent = request.headers.get("Content-Type")
    if route.body is None and not request.body_exists:
        return None  # nothing to read: whatever type it names
    if (encoding := content_encoding(request)) is not None:  # the server never inflates a body: refused unread
        return error(415, f"{route.method} {route.path} takes a body as it is sent; this one came with "
                          f"Content-Encoding {encoding[:100]!r}, which is not unpacked: send it without a "
                          "Content-Encoding header")
    ctype = read_content_type(request)  # a header aiohttp cannot read is not JSON either
    charset = None if isinstance(ctype, Exception) else request.charset
    if sent is not None and ctype == JSON_TYPE and (charset is None or charset.lower() in UTF8):
        return None
    got = "no Content-Type" if sent is None else f"Content-Type {sent[:100]!r}"
    if route.body is None:
        return error(415, f"{route.method} {route.path} takes no body, and this one came with {got}: send none, "
                          f"or JSON as {JSON_TYPE}")
    return error(415, f"{route.method} {route.path} takes a JSON body: send it with Content-Type: {JSON_TYPE} "
                      f"(UTF-8); this request came with {got}")


SHOWN_CHARS = 100
"""How much of a refused value an error quotes."""
_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")


def _shown(value: Any) -> str:
    """`value` as JSON, cut to SHOWN_CHARS."""
    try:
        text = _encode(value).decode()
    except (TypeError, UnicodeEncodeError):
        text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}… ({len(text)} characters in all)"


def _range(what: str, low: Any, high: Any, strict_low: bool = False, strict_high: bool = False) -> str:
    if low is not None and high is not None and not strict_low and not strict_high:
        return f"{what} from {low} to {high}"
    said = ([f"{'over' if strict_low else 'at least'} {low}"] if low is not None else []) + (
        [f"{'under' if strict_high else 'at most'} {high}"] if high is not None else [])
    return " ".join([what, " and ".join(said)]) if said else what


def _allowed(kind: Any) -> str | None:
    """In words, what a field of this msgspec type takes (None when there is nothing worth saying)."""
    inspect = msgspec.inspect
    while isinstance(kind, inspect.Metadata):
        kind = kind.type
    if isinstance(kind, inspect.UnionType):
        kinds = [k for k in kind.types if not isinstance(k, inspect.NoneType)]
        return _allowed(kinds[0]) if len(kinds) == 1 else None
    if isinstance(kind, inspect.IntType):
        return _range("a whole number", kind.ge if kind.gt is None else kind.gt + 1,
                      kind.le if kind.lt is None else kind.lt - 1)
    if isinstance(kind, inspect.FloatType):
        return _range("a number", kind.ge if kind.gt is None else kind.gt, kind.le if kind.lt is None else kind.lt,
                      kind.gt is not None, kind.lt is not None)
    if isinstance(kind, inspect.StrType):
        if kind.max_length is None:
            return None
        return f"text of {kind.min_length or 0} to {kind.max_length} characters"
    if isinstance(kind, inspect.LiteralType):
        return "one of " + ", ".join(_shown(v) for v in kind.values)
    if isinstance(kind, inspect.BoolType):
        return "true or false"
    if isinstance(kind, inspect.ListType):
        item = _allowed(kind.item_type)
        return (f"a list of {'' if kind.max_length is None else f'up to {kind.max_length} '}items"
                + ("" if item is None else f", each {item}"))
    if isinstance(kind, inspect.DictType):
        value = _allowed(kind.value_type) or ("text" if isinstance(kind.value_type, inspect.StrType) else None)
        return "an object" + ("" if value is None else f" whose values are {value}")
    return None


def _value_at(given: Any, steps: list[str | int]) -> tuple[bool, Any]:
    """Whether `given` has a value at `steps` (keys and indexes), and that value."""
    for step in steps:
        there = (isinstance(given, dict) and isinstance(step, str) and step in given) or (
            isinstance(given, list) and isinstance(step, int) and 0 <= step < len(given))
        if not there:
            return False, None
        given = given[step]
    return True, given


def _field_type(struct: type[msgspec.Struct], steps: list[str | int]) -> Any:
    """The msgspec type of a top-level field (`[name]`) or of an item of a top-level list (`[name, i]`)."""
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    kind: Any = next((f.type for f in info.fields if f.name == steps[0]), None)
    if len(steps) == 1:
        return kind
    while isinstance(kind, msgspec.inspect.Metadata):
        kind = kind.type
    return kind.item_type if len(steps) == 2 and isinstance(kind, msgspec.inspect.ListType) else None


def invalid(exc: msgspec.ValidationError, struct: type[msgspec.Struct], given: Any) -> str:
    """msgspec's message for a query or body that does not fit `struct`, with the value given at the place it
    names (cut to SHOWN_CHARS) and what that field takes: "Expected `int` >= 1 - at `$.limit`" says neither."""
    text = str(exc)
    at = _AT.search(text)
    steps: list[str | int] = [name or int(index) for name, index in _STEP.findall(at["path"])] if at else []
    if not steps or not isinstance(steps[0], str):  # a missing or unknown field: msgspec's words name it
        return text
    found, value = _value_at(given, steps)
    allowed = _allowed(_field_type(struct, steps))
    field = f"`{steps[0]}`" if len(steps) == 1 else f"each item of `{steps[0]}`"
    return (text + (f"; given {_shown(value)}" if found else "")
            + (f"; {field} takes {allowed}" if allowed is not None else ""))


BODY_DEPTH = 8
"""How deep a refused body is read to quote the value it gave: deeper than any body the API takes (two levels),
and shallow enough that reading it never nears a recursion limit (its decoder, built at import, costs 2^levels:
a few milliseconds for 8)."""


def _json_to(depth: int) -> Any:
    """The type of any JSON value nesting at most `depth` levels: decoding a deeper one stops at that level."""
    kind: Any = str | int | float | bool | None
    for _ in range(depth):
        kind = str | int | float | bool | None | list[kind] | dict[str, kind]
    return kind


_decode_shallow = msgspec.json.Decoder(_json_to(BODY_DEPTH)).decode


def not_json(exc: msgspec.DecodeError | UnicodeError, raw: bytes) -> str:
    """What a 400 says of a body the JSON parser refuses: its reason, with the byte it stopped at."""
    said = str(exc)
    if isinstance(exc, UnicodeError):  # msgspec's, for a string that is not UTF-8, counts within that string
        try:
            raw.decode()
        except UnicodeDecodeError as bad:
            said = f"byte {bad.start} (0x{raw[bad.start]:02x}) is not UTF-8 ({bad.reason})"
    elif said == "Input data was truncated":  # the one reason msgspec gives without its byte; a lone surrogate too
        said = lone_surrogate(raw) or f"{said}: it ends at byte {len(raw)} with a value or bracket still open"
    return f"the body is not JSON: {said}"


def body_refused(exc: msgspec.ValidationError, struct: type[msgspec.Struct], raw: bytes) -> str:
    """What a 400 says of a body that does not fit `struct` (`exc`, found maybe before its end): that it is not
    JSON at all, when it is not; else msgspec's words, the value given and what the field takes (`invalid`). The
    body is read again only BODY_DEPTH levels deep (any deeper nesting is refused as such) and never raises."""
    try:
        given = _decode_shallow(raw)
    except msgspec.ValidationError as deeper:  # a DecodeError too: checked first
        said = str(deeper)
        if "got `array`" in said or "got `object`" in said:  # only the last level takes neither
            return (f"invalid body: it nests deeper than {BODY_DEPTH} levels (no body this API takes nests more than "
                    f"two); {invalid(exc, struct, None)}")
        return "invalid body: " + invalid(exc, struct, None)  # a number out of range: msgspec's words name it
    except (msgspec.DecodeError, UnicodeError) as bad:
        return not_json(bad, raw)
    return "invalid body: " + invalid(exc, struct, given)


def _wrap(route: Route) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(request: web.Request) -> web.Response:
        caller = authorize(request, route.change)
        if isinstance(caller, web.Response):
            return caller
        if (refused := refuse_media_type(route, request)) is not None:
            return refused
        call = Call(request.app[RUNTIME], request, caller)
        query = dict(request.query)
        raw = b""
        try:
            if route.query is not None:
                call.query = msgspec.convert(query, route.query, strict=False)
            if route.body is not None:
                call.unread = request.clone()  # a request cannot be cloned once read
                raw = await request.read()
                call.body = msgspec.json.decode(raw or b"{}", type=route.body, strict=False)
        except web.HTTPRequestEntityTooLarge:
            limit = call.rt.config.server.max_body_bytes
            return error(413, f"the body is over the limit of {limit} bytes (server.max_body_bytes): send a smaller "
                              "one")
        except msgspec.ValidationError as exc:
            if call.query is None and route.query is not None:
                return error(400, "invalid query: " + invalid(exc, route.query, query))
            assert route.body is not None
            return error(400, body_refused(exc, route.body, raw))
        except (msgspec.DecodeError, UnicodeError) as exc:
            return error(400, not_json(exc, raw))
        if (refused := _refuse_nul(route, call)) is not None:
            return refused
        try:
            return _json(200, await route.handler(call))
        except ApiError as exc:
            return error(exc.status, str(exc))
        except NotFound as exc:
            return error(404, str(exc))
        except ValueRefused as exc:
            return _value_refused(route, exc)
        except StoreRefused as exc:
            return _own_value_refused(route, exc)
        except StoreUnavailable as exc:
            return error(503, f"the store is unavailable: {exc}")

    return serve


def _value_refused(route: Route, refused: ValueRefused) -> web.Response:
    """The answer to a value of the caller's that the database refuses (too large a number, a character its encoding
    lacks): the same value is refused on every try, so it is the caller's to change, not a store to wait for. It names
    where the value was given and the SQLSTATE; the database's own words, which name its tables and indexes, are
    logged."""
    code = refused.refusal.code
    where = " or ".join(refused.fields) or "a value of this request"
    log.warning("admin.store_refused", route=f"{route.method} {route.path}", fields=list(refused.fields), code=code,
                error=refused.refusal.reason)
    return error(refused.status, f"{where}: the store refused this value ({code}): it can be neither kept nor looked "
                                 "up as given, and is refused the same way on every try; nothing was changed")


def _own_value_refused(route: Route, refused: StoreRefused) -> web.Response:
    """A refusal of no value the caller gave (a name from the config the database cannot keep): not the caller's to
    fix, nor a store that is down."""
    log.error("admin.store_refused", route=f"{route.method} {route.path}", fields=[], code=refused.code,
              error=refused.reason, note="a value from the config, not the request: fix the config")
    return error(500, f"the store refused a value of the server's own ({refused.code}), not one this request gave "
                      "(see the log, admin.store_refused)")


# -- helpers ------------------------------------------------------------------------------------------------


def _store(rt: Runtime) -> Store:
    if rt.store is None:
        raise StoreUnavailable("the store is not open yet")
    return rt.store


def _at(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, UTC)


async def _audit(call: Call, action: str, target: str, detail: dict[str, Any]) -> None:
    entry = AuditEntry(id=new_id("aud"), at_ms=time.time_ns() // 1_000_000, actor=call.caller.name, action=action,
                       target=target, detail=detail)
    await _store(call.rt).add_audit(entry)
    log.info("admin.change", actor=call.caller.name, action=action, target=target)


def _gate(rt: Runtime, name: str) -> Gate | None:
    """The destination's gate: its lane's in this process, else the store's shared one (PostgreSQL), else
    none (a process without delivery workers on a store one process serves)."""
    dispatcher = rt.dispatcher
    if dispatcher is not None and name in dispatcher.lanes:
        return dispatcher.lanes[name].gate
    coordination = rt.store.coordination() if rt.store is not None else None
    if coordination is None:
        return None
    cfg = rt.config.destinations[name]
    return coordination.gate(name, cfg.rate_limit)


async def lane_states(rt: Runtime, counts: dict[str, dict[str, int]], oldest: dict[str, int]) -> list[LaneState]:
    """Each destination: its deliveries in the store, its lane in this process, and its gate (rate limit use,
    breaker, an operator's hold) as every process on the store sees it."""
    now = time.time()
    out = []
    dispatcher = rt.dispatcher
    for name, cfg in sorted(rt.config.destinations.items()):
        lane = dispatcher.lanes.get(name) if dispatcher is not None else None
        by_status = counts.get(name, {})
        state = LaneState(
            name=name, vendor=cfg.vendor, running=lane is not None, breaker="closed", breaker_reopens_at=None,
            paused=False, paused_until=None, counts={s: by_status.get(s, 0) for s in STATUSES},
            backlog=by_status.get("pending", 0) + by_status.get("in_flight", 0),
            oldest_pending_age_s=max(0.0, now - oldest[name] / 1000) if name in oldest else None,
            in_flight=len(lane.inflight) if lane is not None else 0, max_in_flight=cfg.max_in_flight,
            rate_limit=None)
        gate = _gate(rt, name)
        if gate is not None:
            view = await gate.view()
            state.breaker = view.breaker
            state.breaker_reopens_at = None if view.breaker_reopens_at_s is None else _at(view.breaker_reopens_at_s)
            state.paused = view.held_until_s is not None
            state.paused_until = (_at(view.held_until_s) if view.held_until_s is not None
                                  and math.isfinite(view.held_until_s) else None)
            if cfg.rate_limit is not None and view.rate_used is not None:
                state.rate_limit = RateUse(requests=cfg.rate_limit.requests, per_seconds=cfg.rate_limit.per_seconds,
                                           used=view.rate_used)
        out.append(state)
    return out


async def _lanes(rt: Runtime) -> list[LaneState]:
    store = _store(rt)
    return await lane_states(rt, await store.counts(), await store.oldest_pending())


def _reload_info(rt: Runtime) -> ReloadInfo:
    s = rt.mapping_status
    return ReloadInfo(watching=rt.reloader is not None, reloads=s.reloads, failures=s.failures,
                      last_attempt_at=s.last_attempt_at, last_result=s.last_result, last_error=s.last_error,
                      last_error_at=s.last_error_at)


# -- reads --------------------------------------------------------------------------------------------------


async def get_overview(call: Call) -> Overview:
    rt = call.rt
    store = _store(rt)
    counts = await store.counts()
    lanes = await lane_states(rt, counts, await store.oldest_pending())
    totals: dict[str, int] = {s: sum(c.get(s, 0) for c in counts.values()) for s in STATUSES}
    problem = store.problem()
    return Overview(version=__version__, mappings_version=rt.mappings.version, counters=dict(rt.counters),
                    deliveries=totals, dead=totals["dead"], destinations=lanes, reload=_reload_info(rt),
                    store_problem=None if problem is None else f"{problem.kind}: {problem.reason}",
                    caller=call.caller)


def _matches_text(row: DeliveryRow, text: str) -> bool:
    text = text.lower()
    return any(text in (v or "").lower() for v in (row.id, row.event_id, row.ticket_id, row.ticket_key,
                                                      row.ticket_uuid, row.last_error))


async def list_deliveries(call: Call) -> DeliveryPage:
    q: DeliveryQuery = call.query
    store = _store(call.rt)
    before = q.cursor
    if q.until_ms is not None:
        bound = id_floor("dlv", q.until_ms + 1)
        before = bound if before is None else min(before, bound)
    # An id is made before its delivery is committed (created_at), so it may be a little older: scan a
    # minute past `since` by id, and keep exactly those created within the range.
    floor = id_floor("dlv", q.since_ms - COMMIT_SLACK_MS) if q.since_ms is not None else None
    items: list[DeliveryRow] = []
    scanned = 0
    filtered = q.q is not None or q.since_ms is not None or q.until_ms is not None  # rows may be skipped
    step = max(q.limit, SCAN_BATCH) if filtered else q.limit
    given = (_given(q.destination, "query.destination"), _given(q.source, "query.source"),
             _given(q.mapping, "query.mapping"), _given(q.conversation, "query.conversation"),
             _given(q.cursor, "query.cursor"))
    while True:
        with blame(400, *given):
            rows = await store.list_deliveries(DeliveryFilter(status=q.status, destination=q.destination,
                                                              source=q.source, mapping=q.mapping,
                                                              conversation=q.conversation, limit=step,
                                                              before_id=before))
        for row in rows:
            scanned += 1
            before = row.id
            if floor is not None and row.id < floor:
                return DeliveryPage(items=items, next_cursor=None, scanned=scanned)
            in_range = (q.since_ms is None or row.created_at_ms >= q.since_ms) and (
                q.until_ms is None or row.created_at_ms <= q.until_ms)
            if in_range and (q.q is None or _matches_text(row, q.q)):
                items.append(row)
                if len(items) == q.limit:
                    return DeliveryPage(items=items, next_cursor=row.id, scanned=scanned)
            if scanned >= SCAN_LIMIT:
                return DeliveryPage(items=items, next_cursor=row.id, scanned=scanned)
        if len(rows) < step:
            return DeliveryPage(items=items, next_cursor=None, scanned=scanned)


async def get_delivery(call: Call) -> DeliveryView:
    with blame(400, "path.delivery_id"):
        detail = await _store(call.rt).get_delivery(call.param("delivery_id"))
    lanes = [s for s in await _lanes(call.rt) if s.name == detail.delivery.destination]
    return DeliveryView(**msgspec.structs.asdict(detail), destination=lanes[0] if lanes else None)


CONVERSATION_KEYS = ("keys look like mail:<root message id>, chat:<id>, ticket:<id>, key:<value>, or mapping|key (as "
                     "each delivery's `conversation` has it)")


async def get_conversation(call: Call) -> ConversationList:
    """The conversations with that key or id: each with its ticket and the first `limit` of its deliveries, in the
    order they are sent in; with `cursor`, the conversation it was given for alone, with the page after or before
    the one that gave it; with `cursor=last`, each one's last page."""
    q: ConversationQuery = call.query
    key = call.param("key")
    try:
        with blame(400, "path.key", _given(q.cursor, "query.cursor")):
            found = await ConversationView.read(_store(call.rt), key, q.limit, q.cursor)
    except BadCursor as exc:  # `read` answers an unknown key with none, whatever the cursor: below
        raise ApiError(400, f"query.cursor: {exc}: {_shown(q.cursor)}; give the next_cursor or prev_cursor of "
                            f"a conversation in an answer for path.key {_shown(key)}, {LAST!r} for the last "
                            "page, or none for the first") from None
    if not found:
        raise ApiError(404, f"path.key: no conversation {_shown(key)}; {CONVERSATION_KEYS}")
    return ConversationList(key=key, items=found)


async def get_event(call: Call) -> EventView:
    with blame(400, "path.event_id"):
        event = await _store(call.rt).get_event(call.param("event_id"))
    mappings = call.rt.mappings
    return EventView(event=event, mappings_version=mappings.version,
                     decisions=await render_sliced(decisions, mappings, event, call.rt.config.vars,
                                                   what="event_view", pool=CONSOLE, event_id=event.id))


async def list_destinations(call: Call) -> DestinationList:
    """The configured destinations, then those no longer configured whose deliveries the store still has."""
    rt = call.rt
    store = _store(rt)
    counts, oldest = await store.counts(), await store.oldest_pending()
    now = time.time()
    orphans = [LaneState(
        name=name, vendor="", running=False, breaker="closed", breaker_reopens_at=None, paused=False,
        paused_until=None, counts={s: by_status.get(s, 0) for s in STATUSES},
        backlog=by_status.get("pending", 0) + by_status.get("in_flight", 0),
        oldest_pending_age_s=max(0.0, now - oldest[name] / 1000) if name in oldest else None, in_flight=0,
        max_in_flight=0, rate_limit=None, configured=False)
        for name, by_status in unconfigured(rt.config.destinations, counts).items()]
    return DestinationList(items=[*await lane_states(rt, counts, oldest), *orphans])


def mapping_infos(mappings: MappingSet, config: Config) -> list[MappingInfo]:
    """Each mapping in the set, by name: where it comes from (its file as `config` may name it: see
    Config.shown_mapping_file), where it goes and how many tests it has."""
    return [MappingInfo(name=m.name, file=config.shown_mapping_file(m.file), version=m.version,
                        sources=list(m.sources), destination=m.destination, action=m.action, tests=len(m.spec.tests))
            for m in sorted(mappings.mappings.values(), key=lambda m: m.name)]


async def get_mappings(call: Call) -> MappingSetView:
    rt = call.rt
    current = rt.mappings
    status = rt.mapping_status
    return MappingSetView(
        version=current.version, loaded_at=current.loaded_at, folder=rt.config.shown_mappings_folder,
        source=status.source, degraded=status.source == "last_good", folder_error=status.folder_error,
        mappings=mapping_infos(current, rt.config), reload=_reload_info(rt))


async def list_audit(call: Call) -> AuditPage:
    q: AuditQuery = call.query
    with blame(400, _given(q.cursor, "query.cursor")):
        items = await _store(call.rt).list_audit(q.limit, q.cursor)
    return AuditPage(items=items, next_cursor=items[-1].id if len(items) == q.limit else None)


async def playground(call: Call) -> PlaygroundResult:
    given: PlaygroundBody = call.body
    if given.source not in call.rt.sources:
        raise ApiError(404, f"no source {named(given.source)}; configured: "
                            f"{', '.join(sorted(call.rt.sources)) or 'none'}")
    assert call.unread is not None  # the playground route takes a body
    return await run_playground(call.rt, given, call.unread)


# -- changes ------------------------------------------------------------------------------------------------


def _held_gate(call: Call) -> tuple[str, Gate]:
    name = call.param("destination")
    if name not in call.rt.config.destinations:
        raise ApiError(404, f"no destination {named(name)}; configured: "
                            f"{', '.join(sorted(call.rt.config.destinations))}")
    gate = _gate(call.rt, name)
    if gate is None:
        raise ApiError(409, "this process runs no delivery workers; pause the destination where they run")
    return name, gate


async def _state(call: Call, name: str) -> LaneState:
    return next(s for s in await _lanes(call.rt) if s.name == name)


async def pause_destination(call: Call) -> LaneState:
    """Held in the destination's gate: every process on a shared store (PostgreSQL) stops claiming for it."""
    given: PauseBody = call.body
    name, gate = _held_gate(call)
    await gate.hold(given.seconds)
    await _audit(call, "destination.pause", name, {"seconds": given.seconds, "reason": given.reason})
    return await _state(call, name)


async def resume_destination(call: Call) -> LaneState:
    name, gate = _held_gate(call)
    dispatcher = call.rt.dispatcher
    lane = dispatcher.lanes.get(name) if dispatcher is not None else None
    if lane is not None:
        await lane.resume()  # wakes this process's lane at once; the others see it when they next ask
    else:
        await gate.unhold()
    await _audit(call, "destination.resume", name, {})
    return await _state(call, name)


async def mark_destination_dead(call: Call) -> MarkDeadResult:
    """Every pending delivery of a destination no longer configured made dead with the reason given; audited."""
    given: MarkDeadBody = call.body
    name = call.param("destination")
    if name in call.rt.config.destinations:
        raise ApiError(409, f"destination {name!r} is configured: its lane sends its deliveries; pause it, or remove "
                            "it from bridge.yaml and restart, before marking its deliveries dead")
    with blame(422, "path.destination", "body.reason"):
        marked = await mark_dead(_store(call.rt), name, by=call.caller.name, reason=given.reason)
    await _audit(call, "destination.mark_dead", name, {"status": given.status, "reason": given.reason,
                                                       "marked": marked})
    return MarkDeadResult(destination=name, marked=marked)


async def _replay_ids(store: Store, given: ReplayBody) -> tuple[list[str], str | None, bool]:
    """`ids` (not when `cursor` continues an earlier call's matches), then up to `limit` more that the filter
    matches (when it has a field), newest first; neither: none. With the cursor to the rest when more matched than
    `limit` took (None: no more did): the last id taken; and whether the filter matched any delivery. The statuses'
    matches are taken as one list by id, so that a delivery replayed from dead and succeeded since is not matched
    again after it."""
    ids: list[str] = [] if given.cursor is not None else list(dict.fromkeys(given.ids))
    if not any((given.status, given.destination, given.mapping, given.source)):
        if given.cursor is not None:
            raise ApiError(409, "body.cursor continues a filter's matches, and this body has no filter: send it "
                                "with the filter (status, destination, mapping, source) of the replay whose "
                                "next_cursor it is")
        return ids, None, False
    named = set(ids)
    statuses: list[DeliveryStatus] = [given.status] if given.status else ["dead", "succeeded"]
    before = given.cursor

    async def matching(limit: int) -> list[str]:
        """The newest `limit` ids the filter matches before `before`, whatever their status."""
        found = [r.id for status in statuses for r in await store.list_deliveries(DeliveryFilter(
            status=status, destination=given.destination, mapping=given.mapping, source=given.source, limit=limit,
            before_id=before))]
        return sorted(found, reverse=True)[:limit]

    taken = 0
    while taken < given.limit:
        wanted = min(REPLAY_CHUNK, given.limit - taken)
        found = await matching(wanted)
        fresh = [i for i in found if i not in named]
        ids.extend(fresh)
        taken += len(fresh)
        if len(found) < wanted:
            return ids, None, bool(taken or found)
        before = found[-1]
    return ids, (before if await matching(1) else None), True


async def replay(call: Call) -> ReplayResult:
    given: ReplayBody = call.body
    rt = call.rt
    store = _store(rt)
    rerender = given.rerender or given.rerender_mapping is not None
    filtered = any((given.status, given.destination, given.mapping, given.source))
    if filtered and given.cursor is None and len(given.ids) + given.limit > REPLAY_MOST:
        room = REPLAY_MOST - len(given.ids)
        raise ApiError(400, f"body.ids ({len(given.ids)} ids) and body.limit ({given.limit}) ask for more than "
                            f"one call replays: at most {REPLAY_MOST} deliveries, the ids and the filter's matches "
                            "together; " + (f"set body.limit to at most {room}, or " if room > 0 else "")
                            + "send some of the ids in another call")
    if given.rerender_mapping is not None and given.rerender_mapping not in rt.mappings.mappings:
        raise ApiError(409, f"body.rerender_mapping: no mapping {given.rerender_mapping!r} is in force; loaded: "
                            f"{', '.join(sorted(rt.mappings.mappings)) or '(none)'}")
    with blame(422, _given(given.ids, "body.ids"), _given(given.destination, "body.destination"),
               _given(given.mapping, "body.mapping"), _given(given.source, "body.source"),
               _given(given.cursor, "body.cursor")):
        ids, more, matched = await _replay_ids(store, given)
        if filtered and given.cursor is None and not matched and (unknown := unknown_filter(
                {"destination": given.destination, "mapping": given.mapping, "source": given.source},
                {"destination": rt.config.destinations, "mapping": rt.mappings.mappings,
                 "source": rt.config.sources})) is not None:
            raise ApiError(409, f"body.{unknown[0]}: {unknown[1]}")
        mappings = rt.mappings if rerender else None
        try:
            moved, refused = await replay_deliveries(store, ids, mappings, rt.config.vars,
                                                     destinations=rt.config.destinations, dry_run=given.dry_run,
                                                     rerender_hint="rerender", with_mapping=given.rerender_mapping)
        except ReplayStopped as stopped:  # those moved before the error stand: audited, then the error answered
            try:
                await _replayed(call, rerender, stopped.moved, stopped.refused, stopped=type(stopped.cause).__name__)
            except Exception:  # the store that stopped the replay may refuse the audit too: the log names them
                log.exception("admin.replay_audit_failed", replayed=len(stopped.moved))
            if stopped.moved and isinstance(stopped.cause, StoreUnavailable):
                # Not the answer the error alone gets ("nothing was changed", "the store is unavailable"): what was
                # moved before it stays moved, and is named.
                stayed = (f"{len(stopped.moved)} of its deliveries were replayed, which stay replayed (audited, "
                          f"stopped_by {type(stopped.cause).__name__}): {', '.join(stopped.moved[:20])}"
                          f"{' …' if len(stopped.moved) > 20 else ''}; the rest were not replayed")
                if isinstance(stopped.cause, StoreRefused):
                    log.warning("admin.store_refused", route="POST /admin/api/replay", fields=[],
                                code=stopped.cause.code, error=stopped.cause.reason)
                    raise ApiError(422, f"the store refused a value of the replay ({stopped.cause.code}) after "
                                        f"{stayed}, and are refused the same way on every try (see the log, "
                                        "admin.store_refused)") from None
                raise ApiError(503, f"the store became unavailable during the replay, after {stayed}: "
                                    f"{stopped.cause}; replay the rest once it is back") from None
            raise stopped.cause from None
    if moved:  # none on a dry run
        await _replayed(call, rerender, moved, refused)
    return ReplayResult(dry_run=given.dry_run, matched=ids, replayed=moved,
                        refused=[Refusal(id=i, reason=r) for i, r in refused.items()],
                        mappings_version=mappings.version if mappings is not None else None, next_cursor=more)


async def _replayed(call: Call, rerender: bool, moved: list[str], refused: dict[str, str], *,
                    stopped: str | None = None) -> None:
    """Audit a replay's moved deliveries (`stopped`: the error that ended it before the rest, when one did) and
    tell the lanes."""
    given: ReplayBody = call.body
    await _audit(call, "deliveries.rerender" if rerender else "deliveries.replay",
                 moved[0] if len(moved) == 1 else f"{len(moved)} deliveries",
                 {"ids": moved[:1000], "count": len(moved), "refused": len(refused),
                  **({"mapping": given.rerender_mapping} if given.rerender_mapping else {}),
                  **({"stopped_by": stopped} if stopped else {})})
    if call.rt.dispatcher is not None:
        call.rt.dispatcher.notify(set(call.rt.dispatcher.lanes))


async def _give_ticket(call: Call, write: Callable[..., Awaitable[str | None]]) -> str | None:
    """An operator's ticket for the path's delivery (`mark_succeeded`, `set_ticket`): None when given, else why
    not. A delivery the path names that is not stored is the path's error (400), a write's refusal the body's."""
    given: MarkSucceededBody = call.body
    delivery_id = call.param("delivery_id")
    store = _store(call.rt)
    with blame(400, "path.delivery_id"):  # looked up alone first, so that a refusal of the write is the body's
        await store.get_delivery(delivery_id)
    with blame(422, "body.ticket_id", _given(given.ticket_key, "body.ticket_key"), _given(given.note, "body.note")):
        why_not: str | None = await write(store, delivery_id, given.ticket_id, ticket_key=given.ticket_key,
                                          by=call.caller.name, note=given.note)
    return why_not


async def mark_delivery_succeeded(call: Call) -> DeliveryView:
    given: MarkSucceededBody = call.body
    delivery_id = call.param("delivery_id")
    why_not = await _give_ticket(call, mark_succeeded)
    if why_not is not None:
        raise ApiError(409, f"delivery {delivery_id} cannot be marked succeeded: {why_not}")
    await _audit(call, "delivery.mark_succeeded", delivery_id,
                 ticket_detail(given.ticket_id, given.ticket_key, given.note))
    # A conversation's follow-ups may now go: the store announces the create's destination to the lanes.
    return await get_delivery(call)


async def set_delivery_ticket(call: Call) -> DeliveryView:
    """A succeeded create whose answer named no ticket takes the ticket found at the vendor, and so does its
    conversation while it has none: the thread's next message follows up on it; audited."""
    given: SetTicketBody = call.body
    delivery_id = call.param("delivery_id")
    why_not = await _give_ticket(call, set_ticket)
    if why_not is not None:
        raise ApiError(409, f"delivery {delivery_id} cannot take ticket {given.ticket_id!r}: {why_not}")
    await _audit(call, "delivery.set_ticket", delivery_id, ticket_detail(given.ticket_id, given.ticket_key, given.note))
    return await get_delivery(call)


async def reset_conversation_ticket(call: Call) -> ResetConversationResult:
    """The conversation's ticket is gone at the vendor: it loses it, so its next message is a create; audited."""
    given: ResetConversationBody = call.body
    key = call.param("key")
    with blame(422, "path.key", _given(given.reason, "body.reason")):
        found = await reset_conversation(_store(call.rt), key, by=call.caller.name, reason=given.reason)
    if not found:
        raise ApiError(404, f"path.key: no conversation {_shown(key)}; {CONVERSATION_KEYS}")
    await _audit(call, "conversation.reset", key, reset_detail(found, given.reason))
    return ResetConversationResult(key=key, conversations=[
        ResetTicket(id=c.id, mapping=c.mapping, destination=c.destination, ticket_id=c.ticket_id,
                    ticket_key=c.ticket_key, ticket_uuid=c.ticket_uuid) for c in found])


NOT_FOUND = {404: "no such record"}
ROUTES: list[Route] = [
    Route("GET", "/admin/api/overview", get_overview, "Intake counters, deliveries by status, destinations' health, "
          "the last reload", Overview),
    Route("GET", "/admin/api/deliveries", list_deliveries, "Deliveries, newest first, filtered and paged",
          DeliveryPage, query=DeliveryQuery),
    Route("GET", "/admin/api/deliveries/{delivery_id}", get_delivery, "A delivery with its event, body and attempts",
          DeliveryView, errors=NOT_FOUND),
    Route("GET", "/admin/api/events/{event_id}", get_event, "An event and what each mapping of its source makes of it",
          EventView, errors=NOT_FOUND),
    Route("GET", "/admin/api/destinations", list_destinations, "Each destination's lane state", DestinationList),
    Route("POST", "/admin/api/destinations/{destination}/pause", pause_destination,
          "Stop sending to a destination, for a while or until resumed", LaneState, change=True, body=PauseBody,
          errors={**NOT_FOUND, 409: "no delivery workers run in this process"}),
    Route("POST", "/admin/api/destinations/{destination}/resume", resume_destination, "Send to a destination again",
          LaneState, change=True, errors={**NOT_FOUND, 409: "no delivery workers run in this process"}),
    Route("POST", "/admin/api/destinations/{destination}/mark-dead", mark_destination_dead,
          "Mark the pending deliveries of a destination no longer configured dead, with a reason", MarkDeadResult,
          change=True, body=MarkDeadBody, errors={409: "the destination is configured"}),
    Route("POST", "/admin/api/replay", replay, "Send deliveries again (by id or filter), optionally re-rendered; "
          "dry_run lists what would be", ReplayResult, change=True, body=ReplayBody,
          errors={409: "`rerender_mapping` names no mapping in force, `cursor` comes without a filter, or the filter "
                       "matched nothing and names a destination, mapping or source the config lacks (a misspelt name: "
                       "`error` names those there are)"}),
    Route("POST", "/admin/api/deliveries/{delivery_id}/mark-succeeded", mark_delivery_succeeded,
          "Record that a delivery (e.g. one held after an unknown outcome) reached the vendor as the given ticket",
          DeliveryView, change=True, body=MarkSucceededBody,
          errors={**NOT_FOUND, 409: "the delivery is in flight or succeeded already"}),
    Route("POST", "/admin/api/deliveries/{delivery_id}/set-ticket", set_delivery_ticket,
          "Give a succeeded create whose answer named no ticket (`ticket_missing`) the ticket found at the vendor; its "
          "conversation takes it too while it has none, so the thread's next message follows up on it",
          DeliveryView, change=True, body=SetTicketBody,
          errors={**NOT_FOUND, 409: "the delivery is no succeeded create without a ticket, its conversation has a "
                                    "ticket already (named) or started again since, or a message of it is being "
                                    "sent"}),
    Route("GET", "/admin/api/conversations/{key}", get_conversation, "The conversations with a key (or id "
          "`mapping|key`): each one's ticket, once known, and a page of its deliveries in the order they are sent in "
          "(`cursor`: the next or previous page of one; `cursor=last`: each one's last page, its newest messages)",
          ConversationList, query=ConversationQuery, errors={404: "no conversation has that key"}),
    Route("POST", "/admin/api/conversations/{key}/reset", reset_conversation_ticket,
          "Detach a conversation from its ticket (gone at the vendor: deleted, merged): its next message, or a dead "
          "one replayed, creates a ticket", ResetConversationResult, change=True, body=ResetConversationBody,
          errors={404: "no conversation has that key"}),
    Route("GET", "/admin/api/mappings", get_mappings, "The mapping set in force and how reload is going",
          MappingSetView),
    Route("POST", "/admin/api/playground", playground, "Run a raw provider body through its handler and every "
          "mapping; stores and sends nothing", PlaygroundResult, body=PlaygroundBody, errors=NOT_FOUND),
    Route("GET", "/admin/api/audit", list_audit, "Changes made through the admin API, newest first", AuditPage,
          query=AuditQuery),
]


def add_api_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _wrap(route))
