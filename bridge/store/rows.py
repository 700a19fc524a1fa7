"""What the SQL backends share: the delivery columns, row conversion, the JSON codecs, and the bound of a group."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol, TypeVar, overload

import msgspec
import structlog

from bridge.conversations import EMAIL_KEY_PREFIXES, scoped, split_key, ticket_context
from bridge.errors import StoreRefused
from bridge.escaping import NUL, NUL_MARK, legacy_nul, lookup_forms, write_nul
from bridge.events import Event
from bridge.store.base import (
    STATUSES,
    UNKNOWN,
    AttemptResult,
    AttemptRow,
    AuditEntry,
    Claimed,
    ConversationRow,
    ConversationSlice,
    Cutoffs,
    DeliveryFilter,
    DeliveryRow,
    DeliveryStatus,
    NewDelivery,
    Nonce,
)
from bridge.store.loop_turns import Turns

log = structlog.get_logger("ticketbridge.store")


def split_conversation_id(d: NewDelivery) -> tuple[str, str]:
    """The (id, key) of the conversation of its own that `d` gets on a sender mismatch."""
    key = split_key(d.id)
    return scoped(d.mapping, key), key


def sender_mismatch(d: NewDelivery, named: str, sender: str, first: str | None, own: str) -> None:
    """Log that `d`'s sender is not the first sender of the conversation (`named`: "conversation") or of the
    ticket its subject names ("ticket"), so that it opens `own` instead (addresses are masked by the logs)."""
    log.warning("conversation.sender_mismatch", mapping=d.mapping, delivery_id=d.id, conversation=d.conversation,
                named=named, ticket_id=d.known_ticket, sender=sender, first_sender=first, opened=own,
                note="a message whose thread (subject token, References, In-Reply-To) names a conversation another "
                     "sender opened does not join it: it starts a conversation, and a ticket, of its own")

_encode = msgspec.json.Encoder().encode


def encode(value: Any) -> bytes:
    """`value` as JSON; StoreRefused (see `too_deep`) when it nests past what the encoder follows."""
    try:
        return _encode(value)
    except RecursionError:
        raise too_deep(value) from None


def too_deep(value: Any) -> StoreRefused:
    """The refusal of a value nested past Python's recursion limit, which msgspec's encoder follows: the data's
    fault, the same on every try (intake answers 422). Intake refuses such payloads before they reach a store
    (MAX_JSON_DEPTH); this keeps one that slips past from being a RecursionError, and a 500."""
    return StoreRefused(f"a {type(value).__name__} nests too deeply to encode as JSON (past Python's recursion "
                        "limit); nothing was stored", "nested_too_deeply")
decode_event = msgspec.json.Decoder(Event).decode
decode_dict = msgspec.json.Decoder(dict[str, Any]).decode
decode_files = msgspec.json.Decoder(dict[str, str]).decode

def before(arrival: str, a: str, b: str, op: str = "<") -> str:
    """SQL comparing the deliveries aliased `a` and `b` by arrival (`arrival`: the backend's order key, `{t}` standing
    for the alias; see `head_of_conversation`): with `op` "<", true when `a` came before `b`."""
    return f"{arrival.format(t=a)} {op} {arrival.format(t=b)}"


def in_order(arrival: str, a: str) -> str:
    """An ORDER BY list putting the deliveries aliased `a` in arrival order (see `before`), as the conversation
    indexes hold them after the conversation."""
    return arrival.format(t=a).removeprefix("(").removesuffix(")")


def row_columns(arrival: str) -> str:
    """The columns a listed delivery is selected with (`delivery_row` reads them), given the backend's order key
    (see `head_of_conversation`): `waiting` compares the conversation's deliveries by it. A pending delivery waits
    when it is not its conversation's first unfinished delivery, read as the first entry of
    deliveries_open_conversation (as the head's test reads it: an EXISTS of an earlier one was planned by PostgreSQL
    as a scan of the table, every row of a long backlog matching the conversation)."""
    return ("id, event_id, source, mapping, mapping_version, destination, action, status, attempts, tries, "  # noqa: S608 - constants
            "next_attempt_at, created_at, updated_at, last_error, ticket_id, ticket_key, conversation, role, "
            "(status = 'pending' AND conversation IS NOT NULL AND ((SELECT w.id FROM deliveries w "
            "WHERE w.conversation = deliveries.conversation AND w.status IN ('pending', 'in_flight') "
            f"ORDER BY {in_order(arrival, 'w')} LIMIT 1) <> deliveries.id OR EXISTS (SELECT 1 FROM conversations c "
            "WHERE c.id = deliveries.conversation AND c.ticket_id IS NULL AND EXISTS (SELECT 1 FROM deliveries h "
            f"WHERE h.conversation = deliveries.conversation AND {before(arrival, 'h', 'deliveries')} "
            "AND h.status = 'dead' AND h.in_doubt_since IS NOT NULL AND h.role = 'create' "
            "AND h.created_at >= c.started_at)))), in_doubt_since, unknowns, duplicates, ticket_uuid, ticket_missing")


ROW_WIDTH = 24


def head_of_conversation(arrival: str) -> str:
    """SQL true for a pending delivery `d` that may be sent, given the backend's order key (`{t}` for a delivery's
    alias): what the store gives each delivery as it is inserted, larger for each later one (SQLite: the rowid,
    which its one writer gives in the order it writes; PostgreSQL: `arrival`, from a sequence, then the id, which
    orders only the deliveries stored before migration 0022, all of arrival 0). A conversation's order is the order
    its deliveries reached the store, never their ids: an id holds the clock of the host that accepted it, so a
    reply accepted by a process whose clock is behind another's would sort before the message it answers, and,
    that message's create in doubt, be sent as a second create.

    Outside conversations always; in one, only when no earlier delivery of it waits and none is being sent (so a
    conversation is worked by one sender at a time, in arrival order), and no earlier create of it is held (dead
    while in doubt: the vendor may hold its ticket) while the conversation has no ticket: sent now, it would be a
    second create (a held create of an earlier round, before a quiet period restarted the conversation or an
    operator reset it, holds nothing: that round's ticket is not this one's). It waits until an operator settles
    the held create (`mark-succeeded` with the ticket gives the conversation its ticket; a replay makes it pending
    again, the head). The first test reads the conversation's first unfinished delivery, the first entry of the
    partial index deliveries_open_conversation (its `status IN (…)`, as in `row_columns`' `waiting`, is the index's
    condition, spelt so that both databases use it), and whether one is in flight, from the partial index
    deliveries_sending_conversation (migration 0028): neither its settled history nor the messages waiting behind its
    head are walked (an EXISTS of an earlier unfinished delivery, every row of a long backlog matching its
    conversation, was planned by PostgreSQL as a scan of the table; and the in-flight test, joined to it, read the
    backlog after the head). The claim reads only deliveries that may be heads (deliveries_due's entries with
    `queued = 0`: not those queued behind another, migration 0028), and this test settles the rest. The second
    looks the conversation up by its key and, only while it has no ticket,
    looks for an earlier held create in the partial index deliveries_held_create (migration 0024, by conversation
    and arrival), whose condition is the test's own terms: it holds the held creates alone, so that a long thread
    restarted without a ticket is not read back to its first message. A conversation with a ticket, the usual
    case for a follow-up, costs one look-up."""
    return (
        "(d.conversation IS NULL OR ((SELECT o.id FROM deliveries o WHERE o.conversation = d.conversation "  # noqa: S608
        f"AND o.status IN ('pending', 'in_flight') ORDER BY {in_order(arrival, 'o')} LIMIT 1) = d.id "
        "AND NOT EXISTS (SELECT 1 FROM deliveries f WHERE f.conversation = d.conversation AND f.status = 'in_flight') "
        "AND NOT EXISTS (SELECT 1 FROM conversations c WHERE c.id = d.conversation AND c.ticket_id IS NULL "
        f"AND EXISTS (SELECT 1 FROM deliveries h WHERE h.conversation = d.conversation AND {before(arrival, 'h', 'd')} "
        "AND h.status = 'dead' AND h.in_doubt_since IS NOT NULL AND h.role = 'create' "
        "AND h.created_at >= c.started_at))))")


def held_create_blocks(conversation_has_ticket: bool, started_at_ms: int,
                       earlier: Iterable[tuple[str, str | None, int | None, int]]) -> bool:
    """head_of_conversation's second test for the stores without SQL: whether a held create of the conversation's
    current round (earlier deliveries as status, role, in_doubt_since, created_at) keeps a later delivery waiting."""
    return not conversation_has_ticket and any(
        status == "dead" and role == "create" and doubt is not None and created >= started_at_ms
        for status, role, doubt, created in earlier)
CONVERSATION_COLUMNS = ("id, key, mapping, destination, messages, started_at, last_message_at, ticket_id, "
                        "ticket_key, ticket_at, ticket_uuid, sender")
RESET_CONVERSATION = ("UPDATE conversations SET ticket_id = NULL, ticket_key = NULL, ticket_uuid = NULL, "
                      "ticket_at = NULL, started_at = {now} ")
"""With `now`'s placeholder filled in, and followed by the conversations' condition: they lose their ticket and
start a new round (`Store.reset_conversation`: a held create of the round before holds nothing)."""
ATTEMPT_COLUMNS = "n, started_at, duration_ms, http_status, response_excerpt, classification, error, exchange"
NEW_DELIVERY_COLUMNS = ("id, event_id, source, mapping, mapping_version, destination, action, status, body, options, "
                        "next_attempt_at, created_at, updated_at, last_error, conversation")


REAPED_IN_DOUBT = "in_doubt_since = COALESCE(in_doubt_since, updated_at), unknowns = unknowns + 1"
"""What taking back a lease (its holder stopped or died) sets: its send may have gone out, at or after the
claim (`updated_at`, which a claim sets and nothing changes while the lease is held)."""


def doubt_after(r: AttemptResult) -> tuple[bool, int]:
    """How an attempt changes the delivery's doubt: (a send's outcome was unknown, possible duplicates to add)."""
    return r.classification == UNKNOWN and not r.unsent, int(r.duplicate)


S = TypeVar("S", bound=msgspec.Struct)


@overload
def storable(text: str) -> str: ...
@overload
def storable(text: None) -> None: ...
@overload
def storable(text: str | None) -> str | None: ...
def storable(text: str | None) -> str | None:
    """Text as every backend keeps it in a text column: one holding a NUL written out (`escaping.write_nul`:
    PostgreSQL's `text` refuses NUL, and the others keep what it keeps, so that a value reads back the same from
    each). Applied to what is written, and to what intake and a record look up, so that a key holding a NUL still
    finds itself; an operator's look-up takes `lookup` (the written form it was shown finds itself too)."""
    return text if text is None else write_nul(text)


def lookups(text: str) -> tuple[str, str, str]:
    """What an operator's look-up by `text` (a conversation's key or id) matches, as three values (the first
    repeated when there are fewer forms, so that one statement serves): the text as `storable` writes it, as a row
    written before NUL_MARK keeps it, and `text` itself when it is the written form the store shows or merely
    begins with NUL_MARK (`escaping.lookup_forms`)."""
    forms = lookup_forms(text)
    return forms[0], forms[1 % len(forms)], forms[2 % len(forms)]


def _storable_fields(record: S, names: tuple[str, ...]) -> S:
    """`record` with its text fields `names` storable: itself when none needs writing out (the usual case, checked
    without building anything)."""
    for name in names:
        value = getattr(record, name)
        if value is not None and (NUL in value or value.startswith(NUL_MARK)):
            return msgspec.structs.replace(record, **{n: write_nul(v) for n in names
                                                      if (v := getattr(record, n)) is not None})
    return record


# The text from outside that each record brings to a text column: keys and ids a provider's message or a vendor's
# answer holds, and a vendor's words. (The JSON kept as bytes (payloads, bodies, exchanges, audit details) keeps its
# NUL as it came; names from the config and the mappings folder are the operator's.)
_EVENT_TEXT = ("dedup_key",)
_DELIVERY_TEXT = ("error", "conversation", "conversation_key", "known_ticket")
_RESULT_TEXT = ("error", "response_excerpt", "ticket_id", "ticket_key", "ticket_uuid")
_NONCE_TEXT = ("value",)
_AUDIT_TEXT = ("actor", "target")


def storable_accept(event: Event, deliveries: list[NewDelivery], nonce: Nonce | None,
                    ) -> tuple[Event, list[NewDelivery], Nonce | None]:
    """What an accept stores, storable (see `storable`): the event's dedup key (in its row and its JSON alike),
    the deliveries' errors, conversations and the tickets their messages name, the nonce."""
    return (_storable_fields(event, _EVENT_TEXT), [_storable_fields(d, _DELIVERY_TEXT) for d in deliveries],
            None if nonce is None else _storable_fields(nonce, _NONCE_TEXT))


def in_legacy_conversation(d: NewDelivery, legacy: str) -> NewDelivery:
    """`d` counted in the conversation a row written before NUL_MARK keeps as `legacy` (its id, `legacy_nul` of
    the written one): that row is the conversation, so the message joins it under its stored id, its key in the
    same form."""
    key = d.conversation_key
    return msgspec.structs.replace(d, conversation=legacy,
                                   conversation_key=None if key is None else legacy_nul(key) or key)


def storable_result(result: AttemptResult) -> AttemptResult:
    """An attempt as it is recorded: the vendor's error, answer excerpt and ticket references storable."""
    return _storable_fields(result, _RESULT_TEXT)


def storable_audit(entry: AuditEntry) -> AuditEntry:
    return _storable_fields(entry, _AUDIT_TEXT)


def conversation_forms(flt: DeliveryFilter) -> tuple[str, ...] | None:
    """The values a listing's conversation filter matches (`escaping.lookup_forms`): the conversation as it came
    (a key holding a NUL as a write keeps it, and as a row kept before the mark holds it) or as the store shows it;
    one for an ordinary id. None without the filter."""
    return None if flt.conversation is None else lookup_forms(flt.conversation)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def delivery_row(r: Sequence[Any]) -> DeliveryRow:
    """A row selected with `row_columns`."""
    return DeliveryRow(
        id=r[0], event_id=r[1], source=r[2], mapping=r[3], mapping_version=r[4], destination=r[5],
        action=r[6], status=r[7], attempts=r[8], tries=r[9], next_attempt_at_ms=r[10], created_at_ms=r[11],
        updated_at_ms=r[12], last_error=r[13], ticket_id=r[14], ticket_key=r[15], conversation=r[16],
        role=r[17], waiting=bool(r[18]), in_doubt_since_ms=r[19], unknowns=r[20], duplicates=r[21],
        ticket_uuid=r[22], ticket_missing=bool(r[23]) and r[7] == "succeeded",
    )


def gives_ticket(r: AttemptResult) -> bool:
    """Whether this attempt (recorded under its lease) gives its conversation a ticket: a create that succeeded."""
    return r.role == "create" and r.next_status == "succeeded" and r.ticket_id is not None


class TicketTarget(NamedTuple):
    """What `Store.set_ticket` reads of the delivery it is asked to give a ticket, under its write."""

    status: str
    role: str | None
    ticket_id: str | None
    ticket_missing: bool
    created_at_ms: int
    conversation: str | None
    destination: str
    """Whose lanes are woken once its conversation has the ticket."""


TICKET_TARGET_COLUMNS = "status, role, ticket_id, ticket_missing, created_at, conversation, destination"
"""What `Store.set_ticket` selects of its delivery: a TicketTarget (`ticket_target`)."""


def ticket_target(r: Sequence[Any]) -> TicketTarget:
    """A row selected with TICKET_TARGET_COLUMNS."""
    return TicketTarget(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6])


def ticket_refusal(d: TicketTarget, conversation: ConversationRow | None,
                   busy: tuple[str, bool] | None) -> str | None:
    """Why `Store.set_ticket` gives `d` no ticket (None: it may): `d` is not a succeeded create that names no
    ticket, or its conversation (`conversation`, read under the same write) has a ticket already, or started again
    after `d` (a quiet period of `reopen_after`, an operator's reset: `d`'s ticket is an earlier round's), or has a
    delivery being sent or claimed now, or one to be sent again whose earlier send's outcome is unknown (`busy`: its
    id, and whether it is that one, in doubt), which, the conversation having no ticket, went or goes as a create:
    its success would replace the ticket given here, and a create in doubt may have made the conversation's ticket,
    which it would not look up (under `reconcile`) once given this one. Each reason says what would be right."""
    if d.status != "succeeded":
        hint = {"in_flight": "it is being sent now: wait for its attempt to be recorded",
                "pending": "one not yet succeeded takes its ticket with `mark-succeeded`",
                "dead": "one not succeeded takes its ticket with `mark-succeeded`"}.get(d.status, "")
        return f"it is {d.status}, not succeeded" + (f": {hint}" if hint else "")
    if d.role == "follow_up":
        return "it is a follow-up on its conversation's ticket, not a create: it made no ticket of its own"
    if d.ticket_id is not None:
        return f"it has ticket {d.ticket_id!r} already"
    if not d.ticket_missing and d.role != "create":
        return ("its vendor's answer was not one to name a ticket (it shows no missing ticket id, and it is no "
                "conversation's create)")
    if conversation is None:
        return None
    if conversation.ticket_id is not None:
        return (f"its conversation {conversation.id} has ticket {conversation.ticket_id!r} already (a later message "
                "made it, or an operator gave it), which its messages follow up on: nothing was changed; to join "
                "the two tickets, merge them at the vendor")
    if d.created_at_ms < conversation.started_at_ms:
        return (f"its conversation {conversation.id} started again after it (at "
                f"{datetime.fromtimestamp(conversation.started_at_ms / 1000, UTC).isoformat(timespec='seconds')}: "
                "a message after its quiet period `reopen_after`, or an operator's reset), so its ticket is not the "
                "conversation's now: nothing was changed")
    if busy is not None:
        other, in_doubt = busy
        if in_doubt:
            return (f"delivery {other} of its conversation {conversation.id} was sent as a new ticket (the "
                    "conversation has none) and its outcome is not known: it is to be looked up or sent again, and "
                    "may have made the conversation's ticket; wait for it to settle (or settle it: `deliveries "
                    f"mark-succeeded {other}` with the ticket it made), then run this again if the conversation "
                    "still has no ticket")
        return (f"delivery {other} of its conversation {conversation.id} is being sent now, as a new ticket (the "
                "conversation has none): wait for its attempt to be recorded, then run this again")
    return None


def last_slice(found: Sequence[Sequence[Any]], limit: int) -> ConversationSlice:
    """The slice of a conversation's last `limit` deliveries from `found`, the rows of a store's SLICE_LAST (newest
    first, at most `limit + 1`: each a delivery row, then its arrival, then the conversation's `stored` count, None
    where there is no conversation row): in arrival order, with how many come before them."""
    rows = found[:limit][::-1]
    stored = rows[0][ROW_WIDTH + 1] if rows else 0  # None: no conversation row (nothing counted it)
    ahead = None if stored is None else max(stored - len(rows), 0)
    return ConversationSlice(deliveries=[delivery_row(r) for r in rows], arrivals=[(r[ROW_WIDTH], r[0]) for r in rows],
                             earlier=len(found) > limit, later=False, ahead=ahead)


def conversation_row(r: Sequence[Any]) -> ConversationRow:
    """A row selected with CONVERSATION_COLUMNS."""
    return ConversationRow(id=r[0], key=r[1], mapping=r[2], destination=r[3], messages=r[4], started_at_ms=r[5],
                           last_message_at_ms=r[6], ticket_id=r[7], ticket_key=r[8], ticket_at_ms=r[9],
                           ticket_uuid=r[10], sender=r[11])


def with_tickets(items: list[Claimed], found: Sequence[Sequence[Any]]) -> list[Claimed]:
    """Claimed deliveries with their conversation's ticket (rows: conversation id, ticket id, ticket key,
    destination, ticket_at, last_message_at, messages up to the delivery, delivery id, ticket uuid, first sender)."""
    tickets = {r[7]: r for r in found if r[1] is not None}
    out = []
    for item in items:
        r = tickets.get(item.id)
        out.append(item if r is None else msgspec.structs.replace(item, ticket=ticket_context(
            r[1], r[2], r[3], created_at_ms=r[4], messages=r[6], last_message_at_ms=r[5], ticket_uuid=r[8],
            first_sender=r[9])))
    return out


def attempt_row(a: Sequence[Any]) -> AttemptRow:
    """A row selected with ATTEMPT_COLUMNS."""
    return AttemptRow(n=a[0], started_at_ms=a[1], duration_ms=a[2], http_status=a[3], response_excerpt=a[4],
                      classification=a[5], error=a[6], exchange=decode_dict(bytes(a[7])) if a[7] is not None else None)


def new_delivery_rows(event: Event, deliveries: list[NewDelivery], created_ms: int,
                      blob: Callable[[Any], bytes] = encode) -> list[tuple[Any, ...]]:
    """The NEW_DELIVERY_COLUMNS values of `event`'s deliveries, created (and due) at `created_ms`, their bodies
    encoded by `blob`. (A loop, not a comprehension: one would hold `blob` in a cell made on every call.)"""
    rows = []
    for d in deliveries:
        rows.append((d.id, event.id, event.source, d.mapping, d.mapping_version, d.destination, d.action, d.status,
                     None if d.body is None else blob(d.body), encode(d.options), created_ms, created_ms,
                     created_ms, d.error, d.conversation))
    return rows


async def claimed_items(rows: Sequence[Sequence[Any]], token: int) -> list[Claimed]:
    """Rows a claim returned (id, event_id, mapping, destination, action, body, options, tries, attempts,
    next_attempt_at, conversation, in_doubt_since, role), in due order: RETURNING promises no order. `token`: the
    claim's. Their bodies (each at most DECODE_AT_ONCE_BYTES) are decoded on the loop with a turn of it between
    them once they pass TURN_BYTES (`loop_turns.Turns`): decoded one after another, 40 bodies of 0.7 MiB held it
    37-53 ms on PostgreSQL."""
    turns = Turns()
    items = []
    for r in sorted(rows, key=lambda r: (r[9], r[0])):
        if turns.due(len(r[6]) + (0 if r[5] is None else len(r[5]))):
            await asyncio.sleep(0)
        items.append(Claimed(id=r[0], event_id=r[1], mapping=r[2], destination=r[3], action=r[4],
                             body=decode_dict(r[5]) if r[5] is not None else {}, options=decode_dict(r[6]),
                             tries=r[7], attempts=r[8], conversation=r[10], in_doubt_since_ms=r[11], role=r[12],
                             token=token))
    return items


def lease_lost(delivery_id: str, owner: str | None, token: int | None) -> str:
    """What LeaseLost says of a record refused for a lease its caller no longer holds."""
    held = "" if token is None else f" by its claim {token}"
    return f"delivery {delivery_id}: the lease of {owner!r} is no longer held{held}"


def leases(delivery_ids: Sequence[str], tokens: Sequence[int] | None) -> list[tuple[str, int | None]]:
    """Each of `delivery_ids` with the token of the claim it is to be held by (`Store.release`, `extend_leases`),
    None for every one without `tokens`. Raises ValueError unless `tokens` holds one per id."""
    if tokens is None:
        return [(i, None) for i in delivery_ids]
    if len(tokens) != len(delivery_ids):
        raise ValueError(f"{len(tokens)} tokens for {len(delivery_ids)} deliveries: one per delivery")
    return [(i, token) for i, token in zip(delivery_ids, tokens, strict=True)]


def status_condition(status: DeliveryStatus) -> str:
    """`status = '<status>'`, checked: a literal rather than a parameter, so that the database can see the
    query's condition implies a partial index's (deliveries_dead)."""
    if status not in STATUSES:
        raise ValueError(f"unknown delivery status {status!r}; known: {', '.join(STATUSES)}")
    return f"status = '{status}'"


def tickets_of_claimed(arrival: str) -> str:
    """Followed by the claimed ids (a list of placeholders): each claimed delivery's conversation and its ticket, with
    the conversation's messages up to the delivery in arrival order (see `head_of_conversation`); only those whose
    conversation holds a ticket (`with_tickets` takes no other), so that a create's claim counts nothing.

    The messages up to the delivery are those the conversation holds (`conversations.stored`, migration 0025: one
    more for each delivery an accept makes in it, one fewer for each a purge deletes) less those that came after it.
    A claimed delivery was its conversation's head: every unfinished delivery of the conversation but itself comes
    after it, counted by `conversations.unsettled` (migration 0028, kept by triggers), and the finished ones after it
    (none, unless an operator replayed it after later ones were sent) are counted from
    deliveries_settled_conversation. Counting those before it read the whole thread at each follow-up's claim, and
    counting all those after it the whole backlog waiting behind it (a chat flood of thousands of messages). All are
    read by one statement, so from one snapshot."""
    return ("SELECT c.id, c.ticket_id, c.ticket_key, c.destination, c.ticket_at, c.last_message_at, "  # noqa: S608
            "c.stored - (c.unsettled - 1) - (SELECT COUNT(*) FROM deliveries o WHERE o.conversation = d.conversation "
            f"AND o.status IN ('succeeded', 'dead') AND {before(arrival, 'd', 'o')}), d.id, c.ticket_uuid, c.sender "
            "FROM deliveries d JOIN conversations c ON c.id = d.conversation AND c.ticket_id IS NOT NULL "
            "WHERE d.id IN ")


OLDEST_UNSETTLED = (
    "SELECT destination, MIN(created_at) FROM (SELECT destination, created_at FROM deliveries "
    "WHERE status = 'pending' UNION ALL SELECT destination, created_at FROM deliveries WHERE status = 'in_flight') "
    "AS unsettled GROUP BY destination")
"""Each destination's oldest pending or in-flight delivery's creation time. One branch per status, each the
condition of a partial index (deliveries_due, deliveries_leased), so that both databases read the backlog
alone: `status IN (…)` scans every settled delivery kept for the retention window (with a million settled and
20,000 pending, every /metrics reading: SQLite 110 ms against 7 ms, PostgreSQL 430 ms against 18 ms)."""

DELIVERY_COUNTS = " UNION ALL ".join(
    f"SELECT destination, '{status}', COUNT(*) FROM deliveries WHERE status = '{status}' GROUP BY destination"  # noqa: S608 - constants
    for status in ("pending", "in_flight", "succeeded", "dead"))
"""Deliveries by destination and status (every status the table's CHECK allows), one branch per status so that
each counts its partial index (deliveries_due, _leased, _succeeded, _dead) rather than the rows: a million
succeeded deliveries on SQLite, 830 ms as one GROUP BY over the table, 100 ms this way."""

GROUP_BYTES = 2 * 1024 * 1024
"""The most a group commit carries of its items' sizes (the texts and encoded values its statements write:
pg_batch.PendingAccept.size, pg_record.PendingRecord.size, the SQLite store's _Op.size), an item larger than this by
itself making a group of one: 2 MiB. Grouping shares a round trip and a commit, a fixed cost per group that a few
hundred kilobytes already outweigh: writing follow-ups of 16 to 256 KiB of incompressible text to PostgreSQL cost the
same per MiB with groups bounded at 256 KiB, 1 MiB or 2 MiB, 10-35 % more at 4 MiB and twice as much at 16 MiB.
Ordinary items (a form or an email of a few kilobytes, a record's excerpt of at most 2,000 characters) stay far below
it, so the count (`group_commit_max`) still closes their groups. On PostgreSQL the bound keeps what one statement holds
in memory (the client's arrays and message, the server's message and unnested rows, per concurrent group) to a few
times 2 MiB, where 512 accepts or follow-ups of 1 MiB each (`server.max_body_bytes`) would make a statement of half a
gigabyte, and of 2 MiB each would pass the most PostgreSQL takes in one message (1 GiB). On SQLite, whose statements
run on the event loop's thread, it keeps a group's statements to a few milliseconds: 256 accepts of about 1 MiB each
in one group held the loop 666-925 ms, groups of about 2 MiB 5-6 ms."""


class Weighed(Protocol):
    """An item of a group commit: `size`, what it carries (see GROUP_BYTES)."""

    size: int


W = TypeVar("W", bound=Weighed)


def take_group(pending: list[W], pending_size: int, max_items: int, max_bytes: int) -> tuple[list[W], list[W], int]:
    """The next group of a group commit's queue `pending` (one item at least, whose sizes sum to `pending_size`):
    its first items, up to `max_items` of them and `max_bytes` of their sizes, the first whatever its size; with
    the items left queued and their size. The common case, everything queued in one group, walks nothing and copies
    nothing."""
    if len(pending) <= max_items and pending_size <= max_bytes:
        return pending, [], 0
    end = min(len(pending), max_items)
    total = pending[0].size
    n = 1
    while n < end and (more := total + pending[n].size) <= max_bytes:
        total = more
        n += 1
    group = pending[:n]
    del pending[:n]
    return group, pending, pending_size - total


NEVER = -1
"""A cutoff nothing is older than: a kind kept forever."""
REFS_PAGE = 2000
"""The most events in a page of retention's attachment scan (`attachment_refs`)."""
REFS_PAGE_BYTES = 8 << 20
"""The most bytes of events' data a page of retention's attachment scan reads before its last event: the page ends
with the event that takes it to this (one larger comes all the same, and ends it), as well as at REFS_PAGE events.
Its rows are held at once (asyncpg's fetch reads them all), and REFS_PAGE events just under DECODE_AT_ONCE_BYTES were
2 GiB of them, on a server whose budget is about 100 MiB (README, "Memory and scale"). 8 MiB keeps a page to a tenth
of that, with the rows of a page of ordinary events (a form's or a short mail's, a few KiB each) whole: only pages of
large mails are cut, each 8 MiB of them one more statement (about a millisecond, against the 4 ms their scan takes).
SQLite's page lets each row go once looked through: its bound keeps the read transaction, and the read thread, to
8 MiB of looking through at a time."""
SHA256_MARK = b'"sha256":"'
"""What precedes an attachment's sha256 in a stored event's JSON (`attachment_hashes`)."""
SHA256_SPAN = len(SHA256_MARK) + 64 + 1
"""How long the whole of one is, from SHA256_MARK to its closing quote: a store reading an event a piece at a time
looks for them in each piece with this many bytes more (less one), so that one cut between two pieces is whole."""
_SHA256 = re.compile(re.escape(SHA256_MARK) + rb'([0-9a-f]{64})"')


def settled(status: str, updated_at: int, cutoffs: Cutoffs) -> bool:
    """Whether a delivery in this state lets its event go (see Cutoffs)."""
    if status == "succeeded":
        return updated_at < (cutoffs.events_ms if cutoffs.events_ms is not None else NEVER)
    if status == "dead":
        return updated_at < (cutoffs.dead_ms if cutoffs.dead_ms is not None else NEVER)
    return False


HOLDING_CREATE = ("(d.status = 'dead' AND d.role = 'create' AND d.in_doubt_since IS NOT NULL "
                  "AND EXISTS (SELECT 1 FROM conversations c WHERE c.id = d.conversation AND c.ticket_id IS NULL "
                  "AND d.created_at >= c.started_at AND EXISTS (SELECT 1 FROM deliveries o "
                  "WHERE o.conversation = d.conversation AND o.status IN ('pending', 'in_flight'))))")
"""SQL true for a delivery `d` that is a held create (dead while in doubt: the vendor may hold its ticket) of its
conversation's current round, the conversation without a ticket, while a delivery of the conversation is not
finished (pending, held behind it, or in flight): head_of_conversation keeps such a delivery waiting on it. A purge
keeps its event: deleted, it would let the waiting delivery go as a second create (a duplicate ticket). Any open
delivery of the conversation keeps it, not only a later one (the open ones are looked up in the partial index
deliveries_open_conversation); once they are finished, or an operator settles the create (mark-succeeded gives the
conversation its ticket), it goes as any dead delivery does."""


def kept_condition(events: str, dead: str) -> str:
    """SQL true for an event `e` some delivery of which keeps it, given the placeholders of the two cutoffs: one not
    settled long enough, or a held create something waits on (HOLDING_CREATE)."""
    return (f"EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND (NOT ((d.status = 'succeeded' "  # noqa: S608
            f"AND d.updated_at < {events}) OR (d.status = 'dead' AND d.updated_at < {dead})) OR {HOLDING_CREATE}))")


MAPPING_CONVERSATIONS = "SELECT COUNT(*) FROM conversations WHERE mapping = {0} AND last_message_at >= {1}"
"""With its placeholders filled in: a mapping's conversations whose last message came at or after a time (those a
reload that drops the mapping cuts off), counted from the index conversations_mapping (migration 0018)."""
EMAIL_KEYED = "(" + " OR ".join(f"substr(c.key, 1, {len(p)}) = '{p}'" for p in EMAIL_KEY_PREFIXES) + ")"
"""SQL true for a conversation `c` keyed by an email thread (conversations.email_keyed), alike in SQLite and
PostgreSQL (substr, not LIKE: SQLite's LIKE ignores case)."""
CONVERSATION_GONE = ("c.last_message_at < {0} AND (c.ticket_id IS NULL OR c.sender IS NULL OR c.sender = '' "  # noqa: S608 - constants
                     f"OR NOT {EMAIL_KEYED} OR c.last_message_at < {{1}}) "
                     "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.conversation = c.id)")
"""SQL true for a conversation `c` a purge deletes, given the placeholders of its cutoffs (Cutoffs.conversations_ms,
Cutoffs.tickets_ms: NULL keeps): its last message is older, and also older than the tickets' cutoff when it is an
email thread holding a ticket its first sender may name by token, and none of its deliveries is kept (looked up
by deliveries_conversation). A NULL `sender` (older than the column) is not kept longer: any sender's token joins
it; nor is a chat's or an expression's conversation, whose sender (a chat's: the customer's phone number or id)
no token needs."""


def attachment_hashes(data: bytes) -> Iterator[str]:
    """The sha256 of each attachment a stored event's JSON names."""
    for m in _SHA256.finditer(data):
        yield m.group(1).decode()


def audit_entry(r: Sequence[Any]) -> AuditEntry:
    """A row selected as (id, at, actor, action, target, detail)."""
    return AuditEntry(id=r[0], at_ms=r[1], actor=r[2], action=r[3], target=r[4], detail=decode_dict(bytes(r[5])))
