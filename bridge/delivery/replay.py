"""Sending deliveries again, for the admin API's replay and `ticketbridge replay`: in chunks, optionally
re-rendered with the mappings in force, and for each one left out, why."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

import structlog

from bridge.errors import NotFound
from bridge.ids import new_id
from bridge.mapping.mappingset import MappingSet
from bridge.routing import rerender_bodies
from bridge.store.base import AttemptResult, AuditEntry, ConversationRow, DeliveryDetail, Store

log = structlog.get_logger("bridge.delivery.replay")

REPLAY_CHUNK = 500
REPLAY_RENDERED_CHARS = 8 << 20
"""The most a re-rendered part of a chunk's new bodies weighs as text (`text_weight`: a character each, about a
byte in the store) before the store is given them, the part ending with the body that takes it past this (one
heavier alone). A chunk's 500 bodies were held at once, each up to a million characters a field (a mail's text
quoted): hundreds of MiB."""


class ReplayStopped(Exception):
    """A replay an error stopped (`cause`) after it had moved some deliveries: those (`moved`) are pending again,
    each part of a chunk committed on its own, and the rest were not replayed; `refused` says why each one looked at
    before the error was left out. The caller is to say so, and audit those moved, before it reports the error."""

    def __init__(self, moved: list[str], refused: dict[str, str], cause: Exception) -> None:
        super().__init__(f"the replay stopped after moving {len(moved)} deliveries: {cause}")
        self.moved = moved
        self.refused = refused
        self.cause = cause


UNDER_WAY = "it was under way when this replay came (replayed meanwhile, or retrying) and "


def _stuck(d: DeliveryDetail, rerender_hint: str) -> str:
    """Why the store does not replay a delivery it has: it is under way, or it has no body to send. Read after the
    replay's write, so a delivery under way then (another replay moved it first, or it was retrying) may have
    settled since: with a body, that is what it says, not that it never rendered."""
    status = d.delivery.status
    if status == "pending":
        return "it is pending (waiting for its next try, or replayed already): it is sent without another replay"
    if status == "in_flight":
        return "it is in flight: it is being sent now"
    if d.body is None:
        return f"it never rendered (fix the mapping, then replay with {rerender_hint})"
    if status == "succeeded":
        return UNDER_WAY + "has succeeded since: it was sent; replay it again to send it once more"
    return UNDER_WAY + "is dead again since: see its attempts"


async def _why_not(store: Store, delivery_id: str, rerender_hint: str) -> str:
    try:
        return _stuck(await store.get_delivery(delivery_id), rerender_hint)
    except NotFound:
        return "no such delivery"


def unconfigured(destination: str) -> str:
    """Why a delivery to a destination the config no longer names is not replayed: no lane would ever send it,
    and it would wait as pending for good."""
    return (f"its destination {destination!r} is no longer configured, so nothing would send it: restore "
            f"{destination!r} under `destinations:` in the config, then replay it")


FILTER_KINDS = {"destination": "configured", "mapping": "loaded", "source": "configured"}
"""The names a replay's filter may take, each with what makes one known."""


def unknown_filter(named: dict[str, str | None], known: dict[str, Collection[str]]) -> tuple[str, str] | None:
    """For a replay whose filter matched nothing: the first of its names (`named`, by kind of FILTER_KINDS: the name
    given, or None) that the config does not have (`known`: the names it has, by the same kinds), and why, naming
    those it has; None when each name given is known (a filter of known names may match nothing: there is nothing
    to replay). A misspelt name matches nothing, which would replay "0 of 0" as if all were well; a name removed
    from the config whose deliveries are still stored matches them, and each is refused by name (`unconfigured`) or
    replayed (a renamed mapping's, re-rendered with the new one)."""
    for kind, name in named.items():
        if name is not None and name not in known[kind]:
            have = ", ".join(sorted(known[kind])) or "(none)"
            return kind, (f"no {kind} {name!r} is {FILTER_KINDS[kind]}, and no stored delivery the replay looked for "
                          f"names it; {FILTER_KINDS[kind]}: {have}")
    return None


async def _to_gone(store: Store, chunk: list[str], configured: Collection[str]) -> dict[str, str]:
    """The ids in `chunk` whose destination is not among `configured`, each with its reason: one look-up of the
    chunk's destinations (an id the store has not is said below, as for any other reason)."""
    return {i: unconfigured(destination) for i, destination in (await store.destinations_of(chunk)).items()
            if destination not in configured}


async def replay_deliveries(store: Store, ids: list[str], mappings: MappingSet | None, vars_: dict[str, Any], *,
                            destinations: Collection[str], dry_run: bool, rerender_hint: str,
                            progress: Callable[[int], None] | None = None,
                            with_mapping: str | None = None) -> tuple[list[str], dict[str, str]]:
    """Move `ids` back to pending, REPLAY_CHUNK at a time, each re-rendered first when `mappings` is given: the
    ids moved, and why each other one was not (on a dry run: none moved, and why each would not be).
    A delivery to a destination not among `destinations` (the configured ones) is refused, naming it.
    `rerender_hint` names the option that re-renders, for the reason a delivery without a body gets;
    `progress` hears how many ids are done after each chunk. `with_mapping` re-renders each with that mapping of
    `mappings` rather than its own, and gives the delivery to it."""
    refused: dict[str, str] = {}
    moved: list[str] = []
    configured = set(destinations)
    try:
        for start in range(0, len(ids), REPLAY_CHUNK):
            chunk = ids[start:start + REPLAY_CHUNK]
            # Every delivery is replayable (succeeded, dead) or under way (refused below): any to a destination the
            # config no longer names is refused here, found by one look-up of the chunk's destinations.
            to_gone = await _to_gone(store, chunk, configured)
            if to_gone:
                refused.update(to_gone)
                chunk = [i for i in chunk if i not in to_gone]
            while chunk:  # re-rendered, a part at a time: its new bodies REPLAY_RENDERED_CHARS at most
                part, chunk, bodies = chunk, [], None
                if mappings is not None:
                    bodies, not_rendered, taken = await rerender_bodies(store, part, mappings, vars_, with_mapping,
                                                                        max_chars=REPLAY_RENDERED_CHARS)
                    part, chunk = part[:taken], part[taken:]
                    refused.update(not_rendered)
                    part = [i for i in part if i in bodies]
                if dry_run:
                    for i in part:
                        try:
                            d = await store.get_delivery(i)
                        except NotFound:
                            refused[i] = "no such delivery"
                            continue
                        if d.delivery.status in ("pending", "in_flight") or (d.body is None and bodies is None):
                            refused[i] = _stuck(d, rerender_hint)
                elif part:
                    moved.extend(await store.replay(part, bodies,
                                                    mapping=with_mapping if bodies is not None else None))
            if progress is not None:
                progress(min(start + REPLAY_CHUNK, len(ids)))
    except Exception as exc:  # a part committed stands: say which, whatever stopped the rest
        if not moved:
            raise
        log.error("replay.stopped", replayed=len(moved), ids=moved[:1000], error=type(exc).__name__)
        raise ReplayStopped(moved, refused, exc) from exc
    if not dry_run:
        for i in sorted(set(ids) - set(moved) - set(refused)):
            refused[i] = await _why_not(store, i, rerender_hint)
    return moved, refused


MARKED = "marked"
"""The classification of the attempt an operator's mark-succeeded records (no request is made)."""


def _marked(delivery_id: str, ticket_id: str, ticket_key: str | None, text: str) -> AttemptResult:
    """The attempt an operator's word records (no request made): succeeded with `ticket_id`, `text` saying who
    and why."""
    return AttemptResult(
        delivery_id=delivery_id, started_at_ms=time.time_ns() // 1_000_000, duration_ms=0.0, http_status=None,
        response_excerpt=None, classification=MARKED, error=text, ticket_id=ticket_id, ticket_key=ticket_key,
        next_status="succeeded")


async def mark_succeeded(store: Store, delivery_id: str, ticket_id: str, *, ticket_key: str | None, by: str,
                         note: str | None = None) -> str | None:
    """An operator's word that `delivery_id` reached the vendor as `ticket_id` (e.g. a held delivery whose
    ticket they found): it becomes succeeded with that ticket, its doubt cleared, an attempt recorded saying
    who and why. None when done, else why not (a delivery in flight, or succeeded already). Raises NotFound."""
    text = f"marked succeeded by {by}" + (f": {note}" if note else "")
    done = await store.mark_succeeded(delivery_id, _marked(delivery_id, ticket_id, ticket_key, text))
    if done:
        return None
    status = (await store.get_delivery(delivery_id)).delivery.status
    return f"it is {status}" + (": wait for its attempt to be recorded" if status == "in_flight" else "")


async def set_ticket(store: Store, delivery_id: str, ticket_id: str, *, ticket_key: str | None, by: str,
                     note: str | None = None, audit: bool = False) -> str | None:
    """An operator's word that `delivery_id`, a succeeded create whose answer named no ticket (or whose id was
    dropped), made `ticket_id` at the vendor: the delivery takes it, an attempt recorded saying who and why, and
    its conversation takes it while it has none, so the thread's later messages follow up on it
    (`Store.set_ticket`). None when done, else why not. Logged; with `audit`, also kept in the audit log (the
    admin API audits its own changes). Raises NotFound."""
    text = f"ticket {ticket_id} set by {by}" + (f": {note}" if note else "")
    why_not = await store.set_ticket(delivery_id, _marked(delivery_id, ticket_id, ticket_key, text))
    if why_not is not None:
        return why_not
    log.warning("delivery.ticket_set", delivery_id=delivery_id, ticket_id=ticket_id, ticket_key=ticket_key, by=by,
                note=note)
    if audit:
        await store.add_audit(AuditEntry(
            id=new_id("aud"), at_ms=time.time_ns() // 1_000_000, actor=by, action="delivery.set_ticket",
            target=delivery_id, detail=ticket_detail(ticket_id, ticket_key, note)))
    return None


def ticket_detail(ticket_id: str, ticket_key: str | None, note: str | None) -> dict[str, Any]:
    """What the audit log keeps of a ticket an operator gave a delivery."""
    return {"ticket_id": ticket_id, "ticket_key": ticket_key, "note": note}


async def reset_conversation(store: Store, key: str, *, by: str, reason: str | None = None,
                             audit: bool = False) -> list[ConversationRow]:
    """An operator's word that the ticket of conversation `key` (its key or scoped id) is gone at the vendor:
    the conversation loses it (`Store.reset_conversation`), so its next message, or a dead one replayed, creates
    a ticket. The conversations as they were (empty: none has that key). Logged; with `audit`, also kept in the
    audit log (the admin API audits its own changes)."""
    found = await store.reset_conversation(key)
    for c in found:
        log.warning("conversation.reset", conversation=c.id, ticket_id=c.ticket_id, by=by, reason=reason)
    if found and audit:
        await store.add_audit(AuditEntry(
            id=new_id("aud"), at_ms=time.time_ns() // 1_000_000, actor=by, action="conversation.reset", target=key,
            detail=reset_detail(found, reason)))
    return found


def reset_detail(found: list[ConversationRow], reason: str | None) -> dict[str, Any]:
    """What the audit log keeps of a reset: each conversation and the ticket it lost, and why."""
    return {"reason": reason, "conversations": [
        {"id": c.id, "ticket_id": c.ticket_id, "ticket_key": c.ticket_key, "ticket_uuid": c.ticket_uuid}
        for c in found]}
