"""What the admin API takes and answers: the structs its handlers decode and encode, and the OpenAPI spec
is generated from (bridge/console/openapi.py), so the two cannot drift."""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from msgspec import Meta

from bridge.console.auth import Caller
from bridge.events import Event
from bridge.store.base import (
    Arrival,
    AuditEntry,
    ConversationRow,
    ConversationSlice,
    DeliveryDetail,
    DeliveryRow,
    DeliveryStatus,
    Store,
)

NO_NUL: dict[str, Any] = {"pattern": "^[^\\u0000]*$"}
"""In the schema of every string the store keeps or is asked for: no NUL character (the API answers 400)."""
MAX_PAGE = 500
"""The most items one page holds: a client wanting more follows `next_cursor`."""
Limit = Annotated[int, Meta(ge=1, le=MAX_PAGE, description="how many items a page holds")]
Name = Annotated[str, Meta(min_length=1, max_length=200, extra_json_schema=NO_NUL)]
Cursor = Annotated[str, Meta(min_length=1, max_length=100, extra_json_schema=NO_NUL,
                             description="next_cursor of the previous page (absent: the first page)")]
"""Never empty: the stores would read an empty cursor differently (SQLite as none, PostgreSQL as before
everything), so it is refused rather than read either way."""


class ErrorBody(msgspec.Struct, kw_only=True):
    """Every refusal: what is wrong and, where it helps, what would be right."""

    error: str


# -- reads --------------------------------------------------------------------------------------------------


class DeliveryQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    status: DeliveryStatus | None = None
    destination: Name | None = None
    mapping: Name | None = None
    source: Name | None = None
    conversation: Annotated[str, Meta(min_length=1, max_length=2000, extra_json_schema=NO_NUL,
                                      description="a conversation's id (`mapping|key`, as each delivery's "
                                                  "`conversation` has it)")] | None = None
    since_ms: Annotated[int, Meta(ge=0, le=2**47, description="created at or after (ms since the epoch)")] | None \
        = None
    until_ms: Annotated[int, Meta(ge=0, le=2**47, description="created at or before (ms since the epoch)")] | None \
        = None
    q: Annotated[str, Meta(min_length=1, max_length=200, extra_json_schema=NO_NUL,
                           description="text in the id, event id, ticket id, key or uuid, or last error")] | None = None
    limit: Limit = 50
    cursor: Cursor | None = None


class DeliveryPage(msgspec.Struct, kw_only=True):
    """Deliveries, newest first; `next_cursor` (when not null) fetches the page after this one."""

    items: list[DeliveryRow]
    next_cursor: str | None
    scanned: int
    """Deliveries read to fill the page (a text or time filter may skip many)."""


class RateUse(msgspec.Struct, kw_only=True):
    requests: int
    per_seconds: float
    used: int
    """Requests sent within the last window."""


class LaneState(msgspec.Struct, kw_only=True):
    """A destination as its lane in this process sees it, and its deliveries in the store."""

    name: str
    vendor: str
    running: bool
    """Whether this process runs delivery workers (false: the state below is the store's only)."""
    breaker: Literal["closed", "open", "half_open"]
    breaker_reopens_at: datetime | None
    paused: bool
    paused_until: datetime | None
    """When an operator's pause ends; null with `paused`: until resumed."""
    counts: dict[str, int]
    backlog: int
    oldest_pending_age_s: float | None
    in_flight: int
    max_in_flight: int
    rate_limit: RateUse | None
    configured: bool = True
    """False: a destination no longer in bridge.yaml that still has deliveries in the store; nothing sends them
    (mark them dead with `POST /admin/api/destinations/{name}/mark-dead`)."""


class DestinationList(msgspec.Struct, kw_only=True):
    items: list[LaneState]


class Decision(msgspec.Struct, kw_only=True):
    """What one mapping of the event's source makes of it."""

    mapping: str
    destination: str
    action: str
    when: str | None
    decision: Literal["taken", "skipped", "failed"]
    error: str | None = None
    fields: dict[str, Any] | None = None
    vendor_body: Any = None
    explain: str = ""


class EventView(msgspec.Struct, kw_only=True):
    event: Event
    mappings_version: str
    decisions: list[Decision]
    """Each mapping of the source, as the mappings in force decide now (`mappings_version`)."""


class DeliveryView(DeliveryDetail, kw_only=True):
    destination: LaneState | None


CONVERSATION_PAGE = 100
"""The deliveries a page of a conversation holds unless `limit` says otherwise (at most MAX_PAGE)."""
LAST = "last"
"""The `cursor` that asks for each conversation's last page (no cursor `write_cursor` makes reads so: each is the
base64 of a JSON array)."""


class ConversationQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    limit: Annotated[int, Meta(ge=1, le=MAX_PAGE, description="how many of each conversation's deliveries a page "
                                                              "holds")] = CONVERSATION_PAGE
    cursor: Annotated[str, Meta(min_length=1, max_length=400, extra_json_schema={**NO_NUL, "examples": [LAST]},
                                description="a conversation's `next_cursor` or `prev_cursor` from an earlier "
                                            "answer: the page after or before that one, of that conversation "
                                            f"alone; `{LAST}`: each conversation's last page, its newest "
                                            "messages, whose `prev_cursor` reads back from there (absent: each "
                                            "conversation's first page)")] | None = None


class BadCursor(ValueError):
    """A `cursor` that is not one this API gave for the conversations of the key asked (a 400 naming it)."""


class Place(NamedTuple):
    """What a conversation's cursor holds: which way it reads, which conversation (a digest of its id), the
    delivery it reads from (its arrival, Store.conversation_slice), and how many deliveries come before the page it
    reads (counted along the cursors from the first page, for the numbers a listing shows)."""

    way: Literal["after", "before"]
    tag: str
    at: Arrival
    offset: int


CURSOR_VERSION = 1
MAX_ARRIVAL = 2**63 - 1
_cursor_decoder = msgspec.json.Decoder(tuple[int, Literal["a", "b"], str, int, str, int])


def conversation_tag(conversation_id: str) -> str:
    """A short digest of a conversation's id: which conversation a cursor reads, without its key (a customer's
    address or number) in the cursor."""
    return hashlib.sha256(conversation_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def write_cursor(place: Place) -> str:
    """`place` as an opaque token: URL-safe base64 (unpadded) of a small JSON array, no secret in it."""
    raw = msgspec.json.encode([CURSOR_VERSION, place.way[0], place.tag, place.at[0], place.at[1], place.offset])
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def read_cursor(cursor: str) -> Place:
    """The place `cursor` holds; BadCursor, saying what is wrong, for text no `write_cursor` made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        version, way, tag, arrival, delivery, offset = _cursor_decoder.decode(raw)
    except (binascii.Error, ValueError, msgspec.DecodeError):  # not base64, not the array: not a cursor
        raise BadCursor("not a cursor this API gave") from None
    if version != CURSOR_VERSION:
        raise BadCursor(f"a cursor of version {version}; this server reads version {CURSOR_VERSION}")
    if not (0 <= arrival <= MAX_ARRIVAL and 0 <= offset <= MAX_ARRIVAL and 0 < len(delivery) <= 200
            and "\x00" not in delivery and len(tag) == 16):
        raise BadCursor("not a cursor this API gave (a value in it is out of range)")
    return Place("after" if way == "a" else "before", tag, (arrival, delivery), offset)


class ConversationView(msgspec.Struct, kw_only=True):
    """A conversation (an email thread, a chat): its ticket once its create has made one, and a page of its
    deliveries in the order the store took them, which is the order they are sent in (not their ids' order)."""

    conversation: ConversationRow
    deliveries: list[DeliveryRow]
    more: bool
    """More deliveries follow this page now (`next_cursor` reads them)."""
    offset: int = 0
    """How many of its deliveries come before this page's first one, counted along the cursors from its first
    page (a listing numbers them from offset + 1)."""
    next_cursor: str | None = None
    """The page after this one (`cursor`): given whenever the page ends somewhere, so that a client reading it once
    `more` is false gets the messages that arrived since (an empty page until one does). Null: an empty first
    page."""
    prev_cursor: str | None = None
    """The page before this one: null when none of its deliveries come before it (the first page), and on an empty
    page."""

    @classmethod
    def page(cls, conversation: ConversationRow, got: ConversationSlice, offset: int,
             after: Place | None) -> ConversationView:
        tag = conversation_tag(conversation.id)
        end = len(got.deliveries)
        next_cursor = write_cursor(Place("after", tag, got.arrivals[-1], offset + end)) if end else (
            None if after is None else write_cursor(after))
        prev_cursor = write_cursor(Place("before", tag, got.arrivals[0], offset)) if end and got.earlier else None
        return cls(conversation=conversation, deliveries=got.deliveries, more=got.later, offset=offset,
                   next_cursor=next_cursor, prev_cursor=prev_cursor)

    @classmethod
    async def read(cls, store: Store, key: str, limit: int, cursor: str | None = None) -> list[ConversationView]:
        """The conversations with that key or id, each with its first `limit` deliveries; with `cursor`, the
        conversation it was given for alone, with the `limit` after or before its place (BadCursor for a cursor not
        given for one of them). Empty when no conversation has the key, whatever the cursor: the key is what is
        wrong. With `cursor` LAST, each conversation's last `limit` deliveries, numbered from how many come before
        them. What `conversations show` and `GET /admin/api/conversations/{key}` answer."""
        found = [c.conversation for c in await store.get_conversations(key, limit=0)]
        if cursor == LAST:
            pages = [(c, await store.conversation_slice(c.id, limit, last=True)) for c in found]
            return [cls.page(c, got, got.ahead or 0, None) for c, got in pages]
        if cursor is None or not found:
            return [cls.page(c, await store.conversation_slice(c.id, limit), 0, None) for c in found]
        place = read_cursor(cursor)
        found = [c for c in found if conversation_tag(c.id) == place.tag]
        if not found:
            raise BadCursor("a cursor of another conversation than the key names")
        c = found[0]
        after, before = (place.at, None) if place.way == "after" else (None, place.at)
        got = await store.conversation_slice(c.id, limit, after=after, before=before)
        if got.stale:
            raise BadCursor("a stale cursor: the delivery it reads from is no longer stored (retention deleted it) "
                            "and its place may since be another's; start again from the first page")
        if place.way == "after":
            return [cls.page(c, got, place.offset, place)]
        if not got.deliveries:  # nothing comes before it (any more): the first page
            return [cls.page(c, await store.conversation_slice(c.id, limit), 0, None)]
        return [cls.page(c, got, 0 if not got.earlier else max(place.offset - len(got.deliveries), 0), None)]


class ConversationList(msgspec.Struct, kw_only=True):
    key: str
    items: list[ConversationView]
    """Each conversation with that key or id (one per mapping that threads the key), by id."""


class MappingInfo(msgspec.Struct, kw_only=True):
    name: str
    file: str
    version: str
    sources: list[str]
    destination: str
    action: str
    tests: int


class ReloadInfo(msgspec.Struct, kw_only=True):
    watching: bool
    reloads: int
    failures: int
    last_attempt_at: datetime | None
    last_result: Literal["ok", "failed"] | None
    last_error: str | None
    last_error_at: datetime | None


class MappingSetView(msgspec.Struct, kw_only=True):
    version: str
    loaded_at: datetime | None
    folder: str
    source: Literal["folder", "last_good"]
    degraded: bool
    folder_error: str | None
    mappings: list[MappingInfo]
    reload: ReloadInfo


class Overview(msgspec.Struct, kw_only=True):
    version: str
    mappings_version: str
    counters: dict[str, int]
    """Totals since start: intake.accepted, intake.duplicate, delivery.attempt, … (a rate is two reads apart)."""
    deliveries: dict[str, int]
    dead: int
    destinations: list[LaneState]
    reload: ReloadInfo
    store_problem: str | None
    caller: Caller
    """Who asked: the token's name and role (`admin` may change things, `read` only look), so that a client
    offers only what the token may do."""


class AuditQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    limit: Limit = 50
    cursor: Cursor | None = None


class AuditPage(msgspec.Struct, kw_only=True):
    items: list[AuditEntry]
    next_cursor: str | None


# -- changes ------------------------------------------------------------------------------------------------


class PauseBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    seconds: Annotated[float, Meta(gt=0, le=30 * 86400, description="how long; absent: until resumed")] | None = None
    reason: Annotated[str, Meta(max_length=500, extra_json_schema=NO_NUL)] = ""


REPLAY_MOST = 10000
"""The most deliveries one replay call takes (`limit`, and `ids`)."""


class ReplayBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Deliveries sent again: those in `ids`, and those the filter (status, destination, mapping, source) matches
    when it has a field, newest first, up to `limit` of them besides the ids: with a filter, the ids and `limit`
    together at most REPLAY_MOST (the replay answers 400 otherwise). Without a status the filter takes dead
    and succeeded ones. When more match, the answer's `next_cursor` continues with them. (Encoded without its
    defaults, so that a client sends `cursor` only when it continues.)"""

    ids: Annotated[list[Annotated[str, Meta(min_length=1, max_length=100, extra_json_schema=NO_NUL)]],
                   Meta(max_length=REPLAY_MOST)] = []
    status: Literal["succeeded", "dead"] | None = None
    destination: Name | None = None
    mapping: Name | None = None
    source: Name | None = None
    rerender: bool = False
    """Render each again with the mappings in force, from its stored event."""
    rerender_mapping: Name | None = None
    """Re-render (as `rerender` does) with this mapping in force instead of each delivery's own (the deliveries of
    a renamed mapping); it must take their source and feed their destination and action, and they belong to it
    from then on. (`mapping` is the filter: the deliveries of a mapping.)"""
    dry_run: bool = False
    limit: Annotated[int, Meta(ge=1, le=REPLAY_MOST)] = 1000
    cursor: Cursor | None = None
    """The `next_cursor` of a replay with the same filter: this one takes the deliveries it matches after those
    (older ones: the filter takes them newest first), and not `ids` again (the first call took them)."""


class MarkSucceededBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An operator's word that the delivery reached the vendor: the ticket it made there."""

    ticket_id: Annotated[str, Meta(min_length=1, max_length=200, extra_json_schema=NO_NUL)]
    ticket_key: Annotated[str, Meta(min_length=1, max_length=200, extra_json_schema=NO_NUL)] | None = None
    note: Annotated[str, Meta(max_length=500, extra_json_schema=NO_NUL)] | None = None
    """Why (e.g. "found in the Kapture console"), kept with the attempt and the audit entry."""


class SetTicketBody(MarkSucceededBody, kw_only=True, forbid_unknown_fields=True):
    """An operator's word that a succeeded create whose answer named no ticket made this ticket at the vendor (its
    conversation takes it while it has none)."""


class MarkDeadBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An operator's word that a destination's deliveries are not to be sent (it is no longer configured)."""

    reason: Annotated[str, Meta(min_length=1, max_length=500, extra_json_schema=NO_NUL)]
    """Why, kept as each delivery's last error and in the audit log."""
    status: Literal["pending"] = "pending"
    """Which deliveries: the pending ones (one in flight is pending again once its lease runs out)."""


class MarkDeadResult(msgspec.Struct, kw_only=True):
    destination: str
    marked: int


class ResetConversationBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An operator's word that a conversation's ticket is gone at the vendor (deleted, merged)."""

    reason: Annotated[str, Meta(max_length=500, extra_json_schema=NO_NUL)] | None = None
    """Why, kept in the audit log."""


class ResetTicket(msgspec.Struct, kw_only=True):
    """A conversation reset, and the ticket it no longer has (null: it had none)."""

    id: str
    mapping: str
    destination: str
    ticket_id: str | None
    ticket_key: str | None
    ticket_uuid: str | None


class ResetConversationResult(msgspec.Struct, kw_only=True):
    key: str
    conversations: list[ResetTicket]
    """Each conversation with that key (one per mapping that threads it): its next message is a create."""


class Refusal(msgspec.Struct, kw_only=True):
    id: str
    reason: str


class ReplayResult(msgspec.Struct, kw_only=True):
    dry_run: bool
    matched: list[str]
    replayed: list[str]
    """Empty on a dry run."""
    refused: list[Refusal]
    mappings_version: str | None
    next_cursor: str | None = None
    """More deliveries match the filter than `limit` took: send the same body with this as `cursor` to replay the
    next ones (null: none are left). Deliveries this call replayed are not matched again."""


class PlaygroundBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    source: Name
    body: Annotated[str, Meta(max_length=1_000_000, description="the provider's raw request body")]
    headers: dict[str, str] = {}
    query: dict[str, str] = {}
    verify: bool = False
    """Check the source's auth and signature too (off: a pasted body rarely carries a valid one)."""


class PlaygroundEvent(msgspec.Struct, kw_only=True):
    payload: dict[str, Any]
    dedup_key: str | None
    spam: bool
    decisions: list[Decision]


class PlaygroundResult(msgspec.Struct, kw_only=True):
    """What intake would make of the body; nothing is stored or sent."""

    source: str
    outcome: Literal["events", "rejected", "ignored", "handshake"]
    status: int | None = None
    message: str | None = None
    events: list[PlaygroundEvent] = []
    mappings_version: str
