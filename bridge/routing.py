"""From an event to its deliveries: match each mapping of the source, render it, and turn a render
failure into a dead delivery that names its reason, so a bad mapping never fails intake."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar, Token
from typing import Any, cast

import msgspec
import structlog

from bridge.conversations import (
    ConversationKey,
    channel_key,
    given_key,
    message_sender,
    scoped,
    sender_aliases,
)
from bridge.errors import MappingError, NotFound
from bridge.events import Event
from bridge.ids import new_id
from bridge.mapping.compiled import CompiledMapping
from bridge.mapping.limits import text_weight
from bridge.mapping.mappingset import MappingSet
from bridge.offload import render_sliced
from bridge.store.base import Claimed, NewDelivery, Store
from bridge.vendors.base import Outcome

log = structlog.get_logger("ticketbridge.routing")

_held: ContextVar[list[tuple[int, str, dict[str, Any]]] | None] = ContextVar("routing_held_logs", default=None)


def hold_logs() -> Token[list[tuple[int, str, dict[str, Any]]] | None]:
    """Keep back the render failures logged in this context from now until `release_logs`: a plan begun on the
    loop may run past its slice (SliceOver) and be begun again in the parser thread, where each failure happens
    again, so only the run that is kept may log them (once, as they are counted and stored once). Two calls
    rather than an object: the intake makes one per request."""
    return _held.set([])


def release_logs(token: Token[list[tuple[int, str, dict[str, Any]]] | None], *, emit: bool) -> None:
    """Stop holding; log what was held when `emit` (the run is kept), else drop it (it is begun again)."""
    lines = _held.get()
    _held.reset(token)
    if emit and lines:
        for level, event, fields in lines:
            log.log(level, event, **fields)


def _failed(level: int, event: str, **fields: Any) -> None:
    """Log a render failure at `level` (logging's), or hold it back while `hold_logs` holds this context's."""
    held = _held.get()
    if held is None:
        log.log(level, event, **fields)
    else:
        held.append((level, event, fields))


def render_context(event: Event, vars_: dict[str, Any]) -> dict[str, Any]:
    return {"payload": event.payload, "headers": event.headers, "event": event.context(), "vars": vars_}


class Rendered(msgspec.Struct, frozen=True):
    """One mapping applied to one event: skipped (its `when` is false), a body, or the error saying why not."""

    skipped: bool = False
    body: dict[str, Any] | None = None
    error: str | None = None


def render_event(mapping: CompiledMapping, ctx: dict[str, Any], event_id: str) -> Rendered:
    """The one way a mapping renders an event, at intake and when a delivery is replayed with --rerender.
    Never raises: a render failure, or a bug in a filter, becomes the error a dead delivery keeps."""
    error: str
    try:
        if not mapping.matches(ctx):
            return Rendered(skipped=True)
        return Rendered(body=mapping.render(ctx))
    except MappingError as exc:
        error = str(exc) if exc.path else f"{mapping.name}: {exc}"
    except Exception as exc:  # a bug in a filter must cost one delivery, not the request
        # `exc_info`: the exception, whose traceback the line carries
        _failed(logging.ERROR, "routing.render_crashed", mapping=mapping.name, event_id=event_id, exc_info=exc)
        error = f"{mapping.name}: internal error while rendering: {type(exc).__name__}: {exc}"
    _failed(logging.WARNING, "routing.render_failed", mapping=mapping.name, event_id=event_id, error=error)
    return Rendered(error=error)


_UNREAD = object()


def plan_deliveries(mappings: MappingSet, event: Event, vars_: dict[str, Any],
                    aliases: Mapping[str, str] | None = None) -> tuple[list[NewDelivery], list[str]]:
    """The deliveries for `event`, and the render errors among them (each also a dead delivery). `aliases`: its
    source's `sender_domain_aliases`, for the sender a thread is checked by."""
    if event.spam:
        return [], []
    candidates = mappings.for_source(event.source)
    if not candidates:
        return [], []
    ctx = render_context(event, vars_)
    deliveries: list[NewDelivery] = []
    errors: list[str] = []
    event_sender: object = _UNREAD  # str | None once read
    for mapping in candidates:
        rendered = render_event(mapping, ctx, event.id)
        if rendered.skipped:
            continue
        if rendered.error is not None:
            errors.append(rendered.error)
        found = conversation_of(mapping, ctx, event) if mapping.threaded else None
        sender = None
        if found is not None:
            if event_sender is _UNREAD:  # read once per event, for its first threaded mapping
                event_sender = message_sender(event.payload, aliases)
            sender = cast(str | None, event_sender)
            if found.by_sender and not sender:
                found = sender = None  # a key any sender may write, from a message naming none: it joins no thread
        deliveries.append(NewDelivery(
            id=new_id("dlv"), mapping=mapping.name, mapping_version=mapping.version,
            destination=mapping.destination, action=mapping.action, body=rendered.body, options=mapping.options,
            status="dead" if rendered.error is not None else "pending", error=rendered.error,
            conversation=None if found is None else scoped(mapping.name, found.key),
            conversation_key=None if found is None else found.key,
            known_ticket=None if found is None else found.ticket_id,
            reopen_after_ms=int(mapping.reopen_after_s * 1000),
            # "" for a conversation opened by a message naming no sender (a chat, an expression's key): NULL is kept
            # for conversations older than the sender column, which any sender may join.
            sender=sender,
            sender_checked=found is not None and found.by_sender,
            sender_also=sender_aliases(sender, aliases) if found is not None and found.by_sender and sender else (),
        ))
    return deliveries, errors


async def rerender_bodies(store: Store, ids: list[str], mappings: MappingSet, vars_: dict[str, Any],
                          with_mapping: str | None = None, *, max_chars: int | None = None,
                          ) -> tuple[dict[str, tuple[dict[str, Any], str]], dict[str, str], int]:
    """New bodies (and the mapping version they came from) for `ids`, why the others cannot have one, and how many
    of `ids` were taken: all of them, or with `max_chars`, those up to the one whose body takes the bodies' weight as
    text (`text_weight`) past it (the first whatever its weight). Each is rendered with its own mapping, or with
    `with_mapping` when given (a renamed mapping's stranded deliveries: that mapping must take the event's source
    and feed the delivery's destination and action)."""
    bodies: dict[str, tuple[dict[str, Any], str]] = {}
    refused: dict[str, str] = {}
    weight = 0
    for taken, i in enumerate(ids, 1):
        if max_chars is not None and weight > max_chars:
            return bodies, refused, taken - 1
        try:
            detail = await store.get_delivery(i)
        except NotFound:
            refused[i] = "no such delivery"
            continue
        d = detail.delivery
        name = with_mapping or d.mapping
        mapping = mappings.mappings.get(name)
        if mapping is None:
            refused[i] = f"mapping {name!r} is not among the current mappings" + (
                "" if with_mapping else "; if it was renamed, re-render with the new one (--mapping NEW)")
            continue
        if (mapping.destination, mapping.action) != (d.destination, d.action):
            refused[i] = (f"mapping {name!r} {'now ' if name == d.mapping else ''}feeds {mapping.destination} "
                          f"{mapping.action}, but this delivery goes to {d.destination} {d.action}; "
                          + ("replay it without re-rendering" if name == d.mapping
                             else "name a mapping of the same destination and action"))
            continue
        if with_mapping and d.source not in mapping.sources:
            refused[i] = (f"mapping {name!r} takes {', '.join(mapping.sources)}, not this delivery's source "
                          f"{d.source}; name a mapping of its source")
            continue
        rendered = await render_sliced(render_event, mapping, render_context(detail.event, vars_), detail.event.id,
                                       what="rerender", delivery_id=i)
        if rendered.skipped:
            refused[i] = f"the current {name!r} skips its event (when: {mapping.when_text})"
        elif rendered.body is None:
            refused[i] = f"it does not render with the current mapping: {rendered.error}"
        else:
            bodies[i] = (rendered.body, mapping.version)
            if max_chars is not None:
                weight += text_weight(rendered.body, max_chars - weight)
    return bodies, refused, len(ids)


def render_create_again(mappings: MappingSet, vars_: dict[str, Any], event: Event,
                        item: Claimed) -> Claimed | Outcome:
    """A delivery last sent as a follow-up, sent now as its conversation's create (an operator reset the
    conversation's ticket): the mapping's own action, body and options rendered from its event again, or the
    Outcome that settles it unsent (`permanent`: the mapping is gone or no longer feeds the delivery's destination,
    or it does not render; `skipped`: its `when` is false)."""
    mapping = mappings.mappings.get(item.mapping)
    if mapping is None:
        return Outcome(classification="permanent", error=f"not sent: mapping {item.mapping!r} is no longer loaded")
    if mapping.destination != item.destination:
        return Outcome(classification="permanent", error=f"not sent: mapping {item.mapping!r} now feeds "
                                                         f"{mapping.destination}, not {item.destination}")
    rendered = render_event(mapping, render_context(event, vars_), event.id)
    if rendered.skipped:
        return Outcome(classification="skipped", error=f"create skipped: its `when` is false ({mapping.when_text})")
    if rendered.error is not None or rendered.body is None:
        return Outcome(classification="permanent", error=f"not sent: {rendered.error}")
    return msgspec.structs.replace(item, action=mapping.action, body=rendered.body, options=mapping.options)


def conversation_of(mapping: CompiledMapping, ctx: dict[str, Any], event: Event) -> ConversationKey | None:
    """The event's conversation for a threaded mapping: the mapping's `conversation:` expression when it renders
    a value, else the channel's own key (email thread, chat id). None: the message stands alone."""
    if mapping.conversation is not None:
        try:
            found = given_key(mapping.conversation_key(ctx))
        except MappingError:
            found = None
        if found is not None:
            return found
    return channel_key(event.channel, event.payload)


def render_follow_up(mappings: MappingSet, vars_: dict[str, Any], event: Event, item: Claimed) -> Claimed | Outcome:
    """A conversation's later message, rendered at send time with its ticket known: the delivery with the
    follow-up's action and body, or the Outcome that settles it unsent (`skipped`: `skip: true` or its `when`
    is false; `permanent`: the mapping is gone or the follow-up does not render)."""
    mapping = mappings.mappings.get(item.mapping)
    if mapping is None:
        return Outcome(classification="permanent", error=f"not sent: mapping {item.mapping!r} is no longer loaded")
    if mapping.follow_up_skip:
        return Outcome(classification="skipped", error="follow-up skipped: the mapping's follow_up says skip")
    if mapping.follow_up is None:
        return item  # threaded by `conversation:` alone: every message is sent as written
    ctx = {**render_context(event, vars_), "ticket": item.ticket}
    rendered = render_event(mapping.follow_up, ctx, event.id)
    if rendered.skipped:
        return Outcome(classification="skipped", error="follow-up skipped: its `when` is false")
    if rendered.error is not None or rendered.body is None:
        return Outcome(classification="permanent", error=f"not sent: {rendered.error}")
    return msgspec.structs.replace(item, action=mapping.follow_up.action, body=rendered.body,
                                   options=mapping.follow_up.options)
