"""`/hooks/{source}`: verify, parse, render and store durably, then answer (docs/architecture.md, "HTTP answers")."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import structlog
from aiohttp import web

from bridge import offload
from bridge.appkeys import RUNTIME, STORED_IDS
from bridge.connections import BodyTimeout, content_encoding
from bridge.errors import Rejected, StoreRefused, StoreUnavailable
from bridge.escaping import escape_text, escape_tree, escape_values
from bridge.events import Event
from bridge.logs import LEVEL
from bridge.mapping.limits import SliceOver, end_slice, start_slice
from bridge.mapping.mappingset import MappingSet
from bridge.mapping.paths import MISSING
from bridge.routing import hold_logs, plan_deliveries, release_logs
from bridge.runtime import Runtime, Source
from bridge.store.base import AcceptResult, NewDelivery, Nonce
from bridge.store.rows import now_ms
from handlers.attachments import Attachment, save_attachments
from handlers.auth import check_auth
from handlers.base import Inbound, Intercepted, SignedNonce, answered, fetched_bytes, skip_signatures
from handlers.limits import LOOP_PARAMS, too_many

log = structlog.get_logger("ticketbridge.intake")

_encode = msgspec.json.Encoder().encode
NONCE_MARGIN_S = 60.0
HASH_ON_LOOP_BYTES = 262_144
"""Bodies larger than this are hashed on a worker thread (hashlib lets go of the GIL), not on the loop."""
MAX_EVENTS = 2_000
"""Events one request may carry: twice the largest batch a provider sends (Meta's webhooks and Mandrill's
batch up to 1,000 updates, Brevo's 500). Past it, a 413 naming both: each event is stored on its own."""
EVENTS_ON_LOOP = 100
"""Past this many events in one request, they are built in the parser thread, not on the loop."""
WEIGHED_VALUES = 4096
"""How many of an event's values (its deliveries' bodies' with them) `weighed` looks at for text, breadth first: a
mail's text and html are at the top of its payload, a provider's copies of them one level down, its headers two."""
T = TypeVar("T")


def _json(data: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> web.Response:
    try:
        body = _encode(data)
    except UnicodeEncodeError:  # a reason quoting request text that is not UTF-8
        body = _encode(escape_tree(data)[0])
    # No headers as None, not {}: aiohttp copies a mapping given into a new one.
    return web.Response(body=body, status=status, content_type="application/json", headers=headers or None)


def _cors(source: Source, request: web.Request) -> dict[str, str]:
    origin = request.headers.get("origin")  # lower case: the headers' own key, no case folding per request
    if origin and origin.isascii() and source.handler.allowed_origin(origin):  # an origin is ASCII (RFC 6454)
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    return {}


def _source(request: web.Request) -> tuple[Runtime, Source] | web.Response:
    rt = request.app[RUNTIME]
    found = _named_source(rt, request.match_info["source"])
    return found if isinstance(found, web.Response) else (rt, found)


def _named_source(rt: Runtime, name: str) -> Source | web.Response:
    source = rt.sources.get(name)
    if source is None:
        rt.count("intake.unknown_source")
        return _json({"accepted": False, "error": f"unknown source {name!r}"}, 404)
    return source


def _reject(rt: Runtime, source: Source, exc: Rejected, request: web.Request) -> web.Response:
    rt.count(f"intake.rejected.{exc.status}", source=source.name)
    log.warning("intake.rejected", source=source.name, status=exc.status, check=exc.check, reason=str(exc),
                remote=request.remote)
    body: dict[str, Any] = {"accepted": False, "error": str(exc)}
    if exc.check:
        body["check"] = exc.check
    headers = _cors(source, request)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return _json(body, exc.status, headers)


def _handler_failed(rt: Runtime, source: Source, request: web.Request, exc: Exception) -> Rejected:
    """A handler raised something other than Rejected on this request: a bug in the handler, met on bytes it
    did not expect. The request is refused with 400 (its bytes would fail the same way on every retry, and a
    5xx would have the provider resend them for hours), and the traceback is logged at error level and
    counted, so that the bug is seen and fixed."""
    rt.count("handler_error", source=source.name)
    log.exception("intake.handler_failed", source=source.name, error=f"{type(exc).__name__}: {exc}",
                  remote=request.remote)
    return Rejected(400, f"the request could not be parsed ({type(exc).__name__}); the error is logged",
                    check="parse")


async def run_handler(rt: Runtime, source: Source, request: web.Request, body: bytes, *, verify: bool = True,
                      off: bool | None = None) -> tuple[list[Inbound], SignedNonce | None, bool] | Intercepted:
    """The handler's checks, `prepare` and parse (in the parser thread when `off`, the body's `offloaded`, worked
    out here when not given, or when what `intercept` fetched is large: `fetched_off`): the request's events, its
    signed nonce and whether its parse was placed in the parser thread (where its render goes too), or the answer
    to a handshake or an ignored notification. Rejected passes through; any other exception is a handler bug met
    on these bytes. `verify` false (the console's playground) skips the auth and signature checks, and the nonce,
    and nothing else: `intercept` runs as for intake. The caller calls `answered` once it has answered."""
    if off is None:
        off = offloaded(body)
    handler = source.handler
    try:
        if not verify:
            skip_signatures(request)
        elif (auth := handler.options.auth) is not None:
            check_auth(auth, request)
        handler.check_content_type(request)

        # Hooks a handler leaves as they are do nothing: not run (a web form's every request).
        if (verify and handler.defines_verify) or handler.defines_prepare:

            def checks(request: web.Request, body: bytes) -> None:
                if verify:
                    handler.verify(request, body)
                handler.prepare(request, body)  # what intercept reads, parsed here rather than on the loop

            await _run(checks, request, body, off)
        if handler.defines_intercept and (early := await handler.intercept(request, body)) is not None:
            return early
        # What `intercept` fetched (an S3 object) may place the parse: only a handler with an intercept fetches.
        off = off or (handler.defines_intercept and fetched_off(request))
        inbounds = await _run(handler.parse, request, body, off)
        if len(inbounds) > MAX_EVENTS:
            raise too_many("events in one request", len(inbounds), MAX_EVENTS)
        return inbounds, handler.nonce(request, body) if verify and handler.defines_nonce else None, off
    except (Rejected, web.HTTPException):
        raise
    except Exception as exc:  # never a 5xx for a request's bytes: see _handler_failed
        raise _handler_failed(rt, source, request, exc) from None


def _kept(rt: Runtime, source: Source, request: web.Request) -> tuple[dict[str, str], dict[str, Any]]:
    """The headers and request facts stored with the event. Header bytes that are not UTF-8 (read by aiohttp
    as surrogates, which no store takes) are kept written out as `\\xNN`, and counted: refusing them would
    refuse a provider's every request. Ordinary ASCII values cost one `isascii` each."""
    headers = source.handler.kept_headers(request)
    meta = {"remote": request.remote, "user_agent": request.headers.get("user-agent")}
    if escape_values(headers) + escape_values(meta):
        rt.count("escaped", source=source.name, where="headers")
        log.info("intake.escaped", source=source.name, where="headers")
    return headers, meta


async def _escape_event(rt: Runtime, source: Source, event: Event, mappings: MappingSet,
                        off: bool) -> list[NewDelivery]:
    """Make the event's payload and dedup key storable, and plan its deliveries again from the escaped payload.
    The store refused text that is not UTF-8: lone surrogates, such as the 8-bit bytes of a raw MIME header the
    email package could not parse (kept raw, read with surrogateescape). Parsers escape what they decode
    themselves; this is the net for what they hand over unchanged. Only run when the store refused the event,
    so ordinary requests never pay for the walk. `off`: the request was planned in the parser thread (a large one,
    or one whose render ran past its loop slice); the walk, as long as the payload (a large mail's: tens of
    milliseconds), and the plan run there too."""
    planned: list[NewDelivery] | None = None
    if off:
        changed, planned = await offload.in_parser(_escaped_planned, source, event, mappings, rt.config.vars)
    else:
        changed = _escaped(event)
    rt.count("escaped", source=source.name, where="payload")
    log.warning("intake.escaped", source=source.name, event_id=event.id, where="payload", strings=changed)
    if planned is not None:
        return planned
    [(deliveries, _errors)] = (_plan_on_loop(rt, source, [event], mappings)
                               or await _plan_off(rt, source, [event], mappings))
    return deliveries


def _escaped(event: Event) -> int:
    """Escape the event's payload and dedup key in place (`_escape_event`); how many of its strings changed."""
    event.payload, changed = escape_tree(event.payload)
    if event.dedup_key is not None:
        event.dedup_key = escape_text(event.dedup_key)
    return changed


def _escaped_planned(source: Source, event: Event, mappings: MappingSet,
                     vars_: dict[str, Any]) -> tuple[int, list[NewDelivery]]:
    """`_escaped`, then the event's deliveries planned again from it: both in the parser thread."""
    changed = _escaped(event)
    [(deliveries, _errors)] = _plan_each(source, [event], mappings, vars_)
    return changed, deliveries


def _intercepted(rt: Runtime, source: Source, early: Intercepted) -> web.StreamResponse:
    """A handshake answered, or a notification ignored: counted and logged, nothing stored."""
    if early.outcome == "handshake":
        rt.count("intake.handshake", source=source.name)
        log.info("intake.handshake", source=source.name, reason=early.reason)
    else:
        rt.count("intake.ignored", source=source.name, reason=early.code)
        log.info("intake.ignored", source=source.name, reason=early.reason, code=early.code)
    return early.response


async def _save_attachments(rt: Runtime, source: Source, files: list[Attachment]) -> web.Response | None:
    """Write the requests' attachment content before the event is stored; a 503 when the disk fails."""
    try:
        await offload.in_parser(save_attachments, files, rt.config.attachments_dir, rt.config.attachments.max_bytes,
                                 pool=offload.FILES)
    except OSError as exc:
        rt.count("intake.attachments_unavailable", source=source.name)
        log.error("intake.attachments_unavailable", source=source.name, folder=str(rt.config.attachments_dir),
                  error=str(exc))
        return _json({"accepted": False, "error": "attachments could not be written; nothing was stored, try again"},
                     503, {"Retry-After": "5"})
    return None


def _dedup_key(source: Source, inbound: Inbound, headers: dict[str, str]) -> str | None:
    value = MISSING if source.dedup_path is None else source.dedup_path.get({"payload": inbound.payload,
                                                                               "headers": headers})
    key = None if value is MISSING else dedup_value_key(value)
    if key is None:
        return None if inbound.dedup_key is None else _indexable(inbound.dedup_key)
    return _indexable(key)


JSON_KEY = "json:"
_canonical_json = msgspec.json.Encoder(order="sorted", enc_hook=str)


def dedup_value_key(value: Any) -> str | None:
    """The dedup key a configured `dedup` path's value gives, exact to its type: a string as it is (the key
    it always was), any other value as `json:` and its canonical JSON (`5` and `"5"`, `true` and `"True"`,
    `[1]` and `"[1]"` are other keys), a string that itself starts with `json:` as `json:` and its JSON
    string. None (no key: the provider's own, if any) for null, "", {} and [], which name no event."""
    if isinstance(value, str):
        if not value:
            return None
        return JSON_KEY + _canonical(value) if value.startswith(JSON_KEY) else value
    if value is None or (isinstance(value, dict | list) and not value):
        return None
    return JSON_KEY + _canonical(value)


def _canonical(value: Any) -> str:
    """`value` as JSON with sorted object keys; text read with surrogateescape (not UTF-8) written out as the
    store keeps it (bridge/escaping.py), in a copy: the payload is left as it is."""
    try:
        return _canonical_json.encode(value).decode()
    except UnicodeEncodeError:
        escaped, _changed = escape_tree(msgspec.to_builtins(value, enc_hook=str))
        return _canonical_json.encode(escaped).decode()


MAX_DEDUP_KEY_CHARS = 512
"""Past this, a dedup key is kept as its SHA-256: PostgreSQL indexes at most 2,704 bytes of a row (a key of
5,000 digits failed every insert, a store failure), and a key that long is no id a person reads."""


def _indexable(key: str) -> str:
    """The dedup key as kept: one longer than MAX_DEDUP_KEY_CHARS as `sha256:` and its digest (the same key, the
    same digest), rather than failing the insert on every retry (the store writes out a NUL in it)."""
    if len(key) > MAX_DEDUP_KEY_CHARS:
        return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return key


async def _read_body(rt: Runtime, source: Source, request: web.Request) -> bytes | None:
    """The request's body, or None when the client went away mid-upload: nothing to store and nobody to
    answer, so one line is logged, not a traceback. Raises Rejected(413) past the size limit, Rejected(408)
    when it does not arrive within the body timeout, and Rejected(415), unread, when it is sent encoded."""
    _refuse_encoded(request)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Rejected(413, f"body is over the limit of {rt.config.server.max_body_bytes} bytes",
                       check="size") from None
    except BodyTimeout as exc:
        raise Rejected(408, exc.text or "the request body did not arrive in time", check="body_timeout") from None
    except ConnectionResetError:
        rt.count("intake.client_disconnected", source=source.name)
        log.info("intake.client_disconnected", source=source.name, remote=request.remote,
                 content_length=request.content_length)
        return None


def _refuse_encoded(request: web.Request) -> None:
    """Rejected(415) for a body sent with a Content-Encoding (gzip, deflate, br, …), before it is read: the server
    never inflates a body (bridge/connections.py), and no provider compresses its webhooks, so such a body is
    refused, never unpacked."""
    encoding = content_encoding(request)
    if encoding is not None:
        shown = encoding if len(encoding) <= 100 else encoding[:100] + "…"
        raise Rejected(415, f"the body is sent with Content-Encoding {shown!r}, which ticketbridge does not "
                            "unpack: send it as it is, without a Content-Encoding header", check="content_encoding")


async def _nonce(signed: SignedNonce, source: str, body: bytes) -> Nonce:
    """The store's record of a signed nonce in its scope: this request's digest (of the source it came to and its
    body: the same bytes sent to another source of the scope are another request), kept while the request is
    within its tolerance (plus NONCE_MARGIN_S for the clocks of processes sharing a store)."""
    hashed = hashlib.sha256(source.encode("utf-8", "surrogatepass") + b"\0")
    if len(body) > HASH_ON_LOOP_BYTES:
        await offload.in_parser(hashed.update, body, pool=offload.FILES)
    else:
        hashed.update(body)
    digest = hashed.hexdigest()[:32]  # 128 bits: no other request can be made to match, and the row stays small
    return Nonce(value=_indexable(signed.value), digest=digest,  # signed, but kept in an index as a dedup key is
                 expires_at_ms=now_ms() + int((signed.valid_for_s + NONCE_MARGIN_S) * 1000), scope=signed.scope)


class _Refused(Exception):
    """The store refused one of a request's events for its data (StoreRefused): which, why, and the results of the
    events before it, stored already."""

    def __init__(self, event: Event, refusal: StoreRefused, stored: list[AcceptResult]) -> None:
        super().__init__(refusal.reason)
        self.event = event
        self.reason = refusal.reason
        self.code = refusal.code
        self.stored = stored


def _store_refused(rt: Runtime, source: Source, request: web.Request, refused: _Refused) -> web.Response:
    """422 for an event the store refused for its data: the same bytes would be refused on every retry, and the
    store is not failing (a 503 would have the provider resend them for hours, and say the store was down)."""
    rt.count("intake.store_refused", source=source.name)
    log.error("intake.store_refused", source=source.name, event_id=refused.event.id, error=refused.reason,
              stored_before=len(refused.stored),
              note="the store refused this event's data; nothing of it was stored, and a retry is refused the same way")
    body: dict[str, Any] = {
        "accepted": False, "check": "store",
        "error": f"the store refused this event's data ({refused.code}); nothing of it was stored, and sending it "
                 "again will be refused the same way"}
    if refused.stored:  # a request of several events: those before it are stored, and a retry finds them duplicates
        body["events"] = [{"event_id": r.event_id, "duplicate": r.duplicate, "deliveries": r.deliveries}
                          for r in refused.stored]
    return _json(body, 422, _cors(source, request))


async def _accept_all(rt: Runtime, source: Source, planned: list[tuple[Event, list[NewDelivery]]],
                      nonce: Nonce | None, mappings: MappingSet, *,
                      weights: list[int] | None) -> list[AcceptResult] | None:
    """Store each planned event and wake the lanes of its deliveries; None when the store refuses the nonce as
    replayed (a request's events share its nonce and digest, so that happens at the first, before any is stored).
    When the store refuses an event's text (UnicodeEncodeError, raised before anything is written), it is
    stored again escaped; when it refuses an event for its data (StoreRefused), _Refused says which. `weights`: each
    event's (`weighed`: Store.accept's `weight`), when its request was planned in the parser thread; else none."""
    store = rt.store
    if store is None:
        raise StoreUnavailable("the store is not open")
    results: list[AcceptResult] = []
    for n, (event, planned_deliveries) in enumerate(planned):
        deliveries = planned_deliveries
        weight = 0 if weights is None else weights[n]
        try:
            try:
                result = await store.accept(event, deliveries, source.dedup_window_s, nonce, weight=weight)
            except UnicodeEncodeError:
                deliveries = await _escape_event(rt, source, event, mappings, off=weights is not None)
                result = await store.accept(event, deliveries, source.dedup_window_s, nonce, weight=weight)
        except StoreRefused as exc:
            raise _Refused(event, exc, results) from exc
        if result.replayed:
            return None
        results.append(result)
        if not result.duplicate and rt.dispatcher is not None:
            rt.dispatcher.notify({d.destination for d in deliveries if d.status == "pending"})
    return results


OFFLOAD_BYTES = offload.LOOP_BYTES
OFFLOAD_MIME_LINES = offload.LOOP_MIME_LINES


def fetched_off(request: web.Request) -> bool:
    """Whether what the handler's `intercept` fetched for the request (an S3 object, a download) is large enough
    that its parse and render run in the parser thread, as a body of that size would: the body alone cannot tell."""
    return fetched_bytes(request) > OFFLOAD_BYTES


def offloaded(body: bytes) -> bool:
    """Whether to verify, parse and render in a thread, so the loop keeps answering: a large body, or one with
    many MIME delimiter lines (after a line feed or a bare carriage return, where the MIME parser ends lines too: a
    MIME part costs most of a millisecond) or more than LOOP_PARAMS semicolons (a MIME header parameter costs up to
    15 µs), raw, inside a JSON string or URL-encoded in a form (Mailgun's `body-mime`). Small ordinary requests
    stay on the loop, where they cost less than the hand-off; what a body holds only once decoded (base64, long
    address lists) or parsed (a multipart body of many lines) is met by the parse itself, which then goes on in
    the thread (`_run`).

    The body is looked at as Latin-1 text (one character per byte, so every count is the bytes' count): a test of
    `in` on text costs a tenth of one on bytes, which first tries the pattern as an integer and drops the error, and
    a count is only made where a test finds something to count (every delimiter pattern holds `--`, and every
    semicolon is `;` or `%3B`)."""
    if len(body) > OFFLOAD_BYTES:
        return True
    text = body.decode("latin-1")
    encoded = "%" in text
    if "--" in text:
        lines = text.count("\n--") + text.count("\\n--")
        if lines <= OFFLOAD_MIME_LINES:  # lines may end in a bare CR too (the MIME parser splits lines there)
            lines += text.count("\r--") + text.count("\\r--")
        if lines <= OFFLOAD_MIME_LINES and encoded:
            lines += text.count("%0A--") + text.count("%0a--") + text.count("%0D--") + text.count("%0d--")
        if lines > OFFLOAD_MIME_LINES:
            return True
    if ";" not in text and not (encoded and "%3" in text):
        return False
    semicolons = text.count(";")
    if semicolons <= LOOP_PARAMS and encoded:
        semicolons += text.count("%3B") + text.count("%3b")
    return semicolons > LOOP_PARAMS


async def _run(step: Callable[[web.Request, bytes], T], request: web.Request, body: bytes, off: bool) -> T:
    """`step(request, body)`, in the parser thread when `off` (the body's `offloaded`). On the loop it runs
    marked as a loop parse: one that meets work too costly there stops (OffLoop) and is run again, from the
    start, in the parser thread (a step is pure: what it read of the body is kept per request)."""
    if not off:
        token = offload.start_loop_parse()
        try:
            return step(request, body)
        except offload.OffLoop as exc:
            log.info("intake.parse_offloaded", step=getattr(step, "__name__", "step"), reason=str(exc))
        finally:
            offload.end_loop_parse(token)
    return await offload.in_parser(step, request, body)


def _plan_each(source: Source, events: list[Event], mappings: MappingSet,
               vars_: dict[str, Any]) -> list[tuple[list[NewDelivery], list[str]]]:
    """Each event's deliveries from `source` (its `sender_domain_aliases`), and their render errors."""
    aliases = source.handler.options.sender_domain_aliases
    return [plan_deliveries(mappings, event, vars_, aliases) for event in events]


def weighed(event: Event, deliveries: list[NewDelivery], rest: int) -> int:
    """What storing `event` with `deliveries` encodes, estimated (Store.accept's `weight`): the length of each string
    of its payload, headers and meta and of its deliveries' bodies (three bytes a character when not ASCII), found
    among their first WEIGHED_VALUES values, breadth first; past them, `rest` more (what the rest may hold). So a
    large mail weighs its own text, whatever else its request carries (a batch's other mails), and an attachment
    saved apart weighs only its entry in the payload (its name, type and digest), not the bytes it came in."""
    found: list[Any] = [event.payload, event.headers, event.meta, *(d.body for d in deliveries)]
    total = 0
    n = 0
    while n < len(found):
        value = found[n]
        n += 1
        kind = type(value)
        if kind is str:
            total += len(value) if value.isascii() else 3 * len(value)
        elif kind is dict or kind is list:
            if len(found) + len(value) > WEIGHED_VALUES:
                return total + rest
            found.extend(value.values() if kind is dict else value)
    return total


def _plan_weighed(source: Source, events: list[Event], mappings: MappingSet, vars_: dict[str, Any],
                  rest: int) -> tuple[list[tuple[list[NewDelivery], list[str]]], list[int]]:
    planned = _plan_each(source, events, mappings, vars_)
    return planned, [weighed(event, deliveries, rest) for event, (deliveries, _) in zip(events, planned, strict=True)]


def _plan_on_loop(rt: Runtime, source: Source, events: list[Event], mappings: MappingSet,
                  off: bool = False) -> list[tuple[list[NewDelivery], list[str]]] | None:
    """Each event's deliveries and render errors, rendered on the loop under offload.LOOP_SLICE_S; None
    when a render runs past it (a template looping over a payload made to be large, a filter on a long value, in a
    mapping with templates or without), or at once when the request is `off` the loop: then `_plan_off`. (A
    request of no events plans nothing, on either.)"""
    if off:
        return None
    token = start_slice(offload.LOOP_SLICE_S)
    held = hold_logs()  # a render failure is logged by the run kept: this one, or _plan_off's
    kept = False
    try:
        planned = _plan_each(source, events, mappings, rt.config.vars)
        kept = True
        return planned
    except SliceOver:
        rt.count("render.offloaded", source=source.name)
        log.info("intake.render_offloaded", source=source.name, slice_ms=offload.LOOP_SLICE_S * 1000)
        return None
    finally:
        release_logs(held, emit=kept)
        end_slice(token)


async def _plan_off(rt: Runtime, source: Source, events: list[Event],
                    mappings: MappingSet) -> list[tuple[list[NewDelivery], list[str]]]:
    """The same in the parser thread, under the whole render budget: a large request's from the start (its parse
    ran there too), any other's once it ran past its loop slice. The loop is held for at most the slice, whatever
    the mappings and the payload."""
    return await offload.in_parser(_plan_each, source, events, mappings, rt.config.vars)


async def _plan_weighed_off(rt: Runtime, source: Source, events: list[Event], mappings: MappingSet,
                            made_from: int) -> tuple[list[tuple[list[NewDelivery], list[str]]], list[int]]:
    """`_plan_off`, with each event's weight, weighed there too (`weighed`: past what it looks at, its share of the
    `made_from` bytes of its request's body and of what was fetched for it). (Planned on the loop, a request is
    small, and its events are light: they are not weighed.)"""
    return await offload.in_parser(_plan_weighed, source, events, mappings, rt.config.vars,
                                   made_from // max(len(events), 1))


def _planned(source: Source, events: list[Event], plans: list[tuple[list[NewDelivery], list[str]]],
             mappings: MappingSet) -> tuple[list[tuple[Event, list[NewDelivery]]], list[str]]:
    """Each event with its deliveries (one no mapping took marked `unmatched`, unless spam), and every render
    error."""
    planned: list[tuple[Event, list[NewDelivery]]] = []
    invalid: list[str] = []
    for event, (deliveries, errors) in zip(events, plans, strict=True):
        if not deliveries and not event.spam:
            event.meta["unmatched"] = ("every mapping's `when` skipped it" if mappings.for_source(source.name)
                                       else "no mapping takes this source")
        invalid.extend(errors)
        planned.append((event, deliveries))
    return planned, invalid


def _count_routing(rt: Runtime, source: Source, event: Event, deliveries: list[NewDelivery],
                   mappings: MappingSet) -> None:
    """Count a stored event that no mapping took (and why), or its deliveries whose render failed."""
    if "unmatched" in event.meta:
        rt.count("events.unmatched", source=source.name,
                 reason="skipped" if mappings.for_source(source.name) else "no_mapping")
        return
    for delivery in deliveries:
        if delivery.error is not None:
            rt.count("render.failed", mapping=delivery.mapping)


async def hook_post(request: web.Request) -> web.StreamResponse:
    started = time.perf_counter()
    rt = request.app[RUNTIME]
    name = request.match_info["source"]
    status = 500
    try:
        response = await _hook_post(request, rt, name)
        status = response.status
        return response
    except web.HTTPException as exc:  # a form's redirect
        status = exc.status
        raise
    finally:
        answered(request)  # what the handler held or kept for the request (an S3 read's turn, its parse) is let go
        # Known sources only, so that the series stay bounded by the config whatever path is posted to.
        if name in rt.sources:
            elapsed = time.perf_counter() - started
            rt.latencies.intake.observe(name, elapsed)
            if rt.tracing is not None:
                rt.tracing.intake(name, elapsed, status, request.get(STORED_IDS))


def _events_of(source: Source, inbounds: list[Inbound], headers: dict[str, str],
               meta: dict[str, Any]) -> list[Event]:
    handler = source.handler
    keyed = source.dedup_path is not None  # else only a key the provider gave: no call to find none
    return [Event.new(source=source.name, kind=handler.kind, channel=handler.channel, payload=inbound.payload,
                      headers=headers, meta=dict(meta),
                      dedup_key=_dedup_key(source, inbound, headers) if keyed or inbound.dedup_key is not None
                      else None, spam=inbound.spam) for inbound in inbounds]


async def _new_events(source: Source, inbounds: list[Inbound], headers: dict[str, str],
                      meta: dict[str, Any]) -> list[Event]:
    """The request's events, with their dedup keys: built in the parser thread past EVENTS_ON_LOOP of them."""
    if len(inbounds) > EVENTS_ON_LOOP:
        return await offload.in_parser(_events_of, source, inbounds, headers, meta)
    return _events_of(source, inbounds, headers, meta)


async def _hook_post(request: web.Request, rt: Runtime, name: str) -> web.StreamResponse:
    source = _named_source(rt, name)
    if isinstance(source, web.Response):
        return source
    handler = source.handler
    try:
        body = await _read_body(rt, source, request)
        if body is None:
            return web.Response(status=400)
        # One look at the body (and at what `intercept` fetched) places the checks, the parse and the render.
        handled = await run_handler(rt, source, request, body)
        if isinstance(handled, Intercepted):
            return _intercepted(rt, source, handled)
        inbounds, signed, off = handled
    except Rejected as exc:
        return _reject(rt, source, exc, request)
    files = [item for inbound in inbounds for item in inbound.attachments]
    if files and (unsaved := await _save_attachments(rt, source, files)) is not None:
        return unsaved

    headers, meta = _kept(rt, source, request)
    mappings = rt.mappings
    events = await _new_events(source, inbounds, headers, meta)
    plans = _plan_on_loop(rt, source, events, mappings, off)
    weights = None  # planned on the loop: a small request, whose events are light
    if plans is None:
        plans, weights = await _plan_weighed_off(rt, source, events, mappings, len(body) + fetched_bytes(request))
    planned, invalid = _planned(source, events, plans, mappings)
    if invalid and handler.options.reject_invalid:
        rt.count("intake.rejected.422", source=source.name)
        log.info("intake.invalid", source=source.name, errors=invalid)
        return _json({"accepted": False, "error": "the submission is missing required fields",
                      "errors": invalid}, 422, _cors(source, request))

    try:
        # What each event weighs: a store may encode and write a heavy one off the loop.
        results = await _accept_all(rt, source, planned,
                                    None if signed is None else await _nonce(signed, source.name, body), mappings,
                                    weights=weights)
    except _Refused as refused:
        return _store_refused(rt, source, request, refused)
    except StoreUnavailable as exc:
        rt.count("intake.store_unavailable", source=source.name)
        log.error("intake.store_unavailable", source=source.name, error=str(exc))
        return _json({"accepted": False, "error": "the store is unavailable; nothing was stored, try again"}, 503,
                     {"Retry-After": "5", **_cors(source, request)})
    if results is None:
        assert signed is not None
        return _reject(rt, source, Rejected(
            401, f"{signed.name} was already used by another request within the tolerance window: a signed "
                 "request cannot be sent again with a different body, nor to another source with the same signing "
                 "key; nothing was stored", check="replay"), request)

    if rt.tracing is not None:
        request[STORED_IDS] = ([r.event_id for r in results],
                               [d.id for (_e, ds), r in zip(planned, results, strict=True) if not r.duplicate
                                for d in ds])
    for (event, deliveries), result in zip(planned, results, strict=True):
        rt.add(source.outcomes[
            "intake.duplicate" if result.duplicate else "intake.spam" if event.spam else "intake.accepted"])
        if not result.duplicate:
            _count_routing(rt, source, event, deliveries, mappings)
        if LEVEL.debug:
            log.debug("intake.duplicate" if result.duplicate else "intake.accepted", source=source.name,
                      event_id=result.event_id, deliveries=result.deliveries, **({"spam": True} if event.spam else {}))

    cors = _cors(source, request)
    target = handler.redirect_to(request)
    if target is not None:
        raise web.HTTPSeeOther(location=target, headers=cors)
    if len(results) == 1:
        r = results[0]
        if r.duplicate:
            return _json({"accepted": True, "duplicate": True, "event_id": r.event_id}, 200, cors)
        return _json({"accepted": True, "event_id": r.event_id, "deliveries": r.deliveries}, 202, cors)
    fresh = [r for r in results if not r.duplicate]
    return _json({
        "accepted": True,
        "events": [{"event_id": r.event_id, "duplicate": r.duplicate, "deliveries": r.deliveries} for r in results],
        "deliveries": sum(r.deliveries for r in fresh),
    }, 202 if fresh or not results else 200, cors)


async def hook_get(request: web.Request) -> web.StreamResponse:
    found = _source(request)
    if isinstance(found, web.Response):
        return found
    rt, source = found
    try:
        answer = await source.handler.handshake(request)
    except Rejected as exc:
        return _reject(rt, source, exc, request)
    except web.HTTPException:
        raise
    except Exception as exc:  # as for POST: see _handler_failed
        return _reject(rt, source, _handler_failed(rt, source, request, exc), request)
    if answer is None:
        return _json({"accepted": False, "error": "this source takes POST requests"}, 405, {"Allow": "POST"})
    return answer


async def hook_options(request: web.Request) -> web.StreamResponse:
    found = _source(request)
    if isinstance(found, web.Response):
        return found
    _rt, source = found
    cors = _cors(source, request)
    if not cors:
        origin = request.headers.get("Origin", "")
        return _json({"error": f"origin {origin or '(none)'} may not post to this source"}, 403)
    asked = request.headers.get("Access-Control-Request-Headers", "Content-Type")
    if not asked.isascii():  # header names are ASCII tokens; the answer echoes them
        return _json({"error": "Access-Control-Request-Headers names a header that is not ASCII"}, 400)
    return web.Response(status=204, headers={
        **cors, "Access-Control-Allow-Methods": "POST, OPTIONS", "Access-Control-Allow-Headers": asked,
        "Access-Control-Max-Age": "86400",
    })
