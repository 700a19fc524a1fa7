"""The playground: a raw provider body run through its source's handler and every mapping of that source,
explained, with nothing stored and nothing sent. Mapping decisions are also what an event's page shows."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from bridge.console.models import Decision, PlaygroundBody, PlaygroundEvent, PlaygroundResult
from bridge.errors import Rejected
from bridge.events import Event
from bridge.intake import run_handler
from bridge.mapping.mappingset import MappingSet
from bridge.mapping.paths import MISSING
from bridge.mapping.trace import OMIT, format_trace
from bridge.offload import CONSOLE, render_sliced
from bridge.routing import render_context
from bridge.runtime import Runtime, Source
from handlers.base import Intercepted, answered


def _plain(value: Any) -> Any:
    """A rendered value as JSON data (a value no JSON can hold becomes its repr)."""
    if value is MISSING or value is OMIT:
        return None
    try:
        return msgspec.to_builtins(value)
    except TypeError:
        return repr(value)


def decisions(mappings: MappingSet, event: Event, vars_: dict[str, Any]) -> list[Decision]:
    """What each mapping of the event's source makes of it, explained (never raises for a mapping's fault)."""
    if event.spam:
        return []
    ctx = render_context(event, vars_)
    out: list[Decision] = []
    for mapping in mappings.for_source(event.source):
        trace = mapping.explain(ctx)
        kind: Literal["taken", "skipped", "failed"] = (
            "failed" if trace.error is not None else "taken" if trace.matched else "skipped")
        out.append(Decision(
            mapping=mapping.name, destination=mapping.destination, action=mapping.action, when=mapping.when_text,
            decision=kind, error=trace.error, fields=_plain(trace.body) if trace.body is not None else None,
            vendor_body=_plain(trace.vendor_body), explain=format_trace(trace)))
    return out


async def run_playground(rt: Runtime, given: PlaygroundBody, like: web.Request) -> PlaygroundResult:
    """Raises KeyError for an unknown source. The handler sees a real request: `like` (the request asking, or
    any other) cloned as a POST to /hooks/{source} with the given headers and query; its body is not read."""
    source = rt.sources[given.source]
    request = like.clone(method="POST", rel_url=URL.build(path=f"/hooks/{given.source}", query=given.query),
                         headers=CIMultiDictProxy(CIMultiDict(given.headers)))
    try:
        return await _played(rt, source, given, request)
    finally:
        answered(request)  # as intake does: what the handler held or kept for the request is let go


async def _played(rt: Runtime, source: Source, given: PlaygroundBody, request: web.Request) -> PlaygroundResult:
    handler = source.handler
    mappings = rt.mappings
    body = given.body.encode()
    result = PlaygroundResult(source=given.source, outcome="events", mappings_version=mappings.version)
    try:
        # Intake's own step: the same checks (auth and signature only with `verify`), intercept, and parse in the
        # parser thread when the body calls for it; a handler's bug on these bytes is a 400, as intake answers.
        handled = await run_handler(rt, source, request, body, verify=given.verify)
    except Rejected as exc:
        result.outcome, result.status, result.message = "rejected", exc.status, str(exc)
        return result
    except web.HTTPException as exc:
        result.outcome, result.status, result.message = "rejected", exc.status, exc.text
        return result
    if isinstance(handled, Intercepted):
        result.outcome, result.status, result.message = handled.outcome, handled.response.status, handled.reason
        return result
    inbounds, _nonce, _off = handled
    kept = handler.kept_headers(request)
    for inbound in inbounds:
        event = Event.new(source=given.source, kind=handler.kind, channel=handler.channel, payload=inbound.payload,
                          headers=kept, meta={"playground": True}, dedup_key=inbound.dedup_key, spam=inbound.spam)
        result.events.append(PlaygroundEvent(payload=inbound.payload, dedup_key=inbound.dedup_key, spam=inbound.spam,
                                             decisions=await render_sliced(
                                                 decisions, mappings, event, rt.config.vars, what="playground",
                                                 pool=CONSOLE)))
    return result
