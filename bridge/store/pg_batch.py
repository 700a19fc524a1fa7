"""Group commit for the PostgreSQL store: concurrent accepts share one transaction.

Accepts are queued. A flusher takes everything queued (up to `group_max`) and stores it on one pooled
connection in one transaction: accepts without a nonce with one statement per table for the whole
group (arrays unnested: one round trip each, whatever the group's size), then each accept with a
nonce in a savepoint of its own, since a replay must leave nothing behind. When a statement of the
group fails (a delivery id stored twice, a deadlock with another process, a statement cancelled by
`statement_timeout`), the transaction is rolled back and the group is run again on the same connection with a
savepoint around every accept, so that the failure costs that accept alone; only a lost connection fails the
group as a whole. A group closes at `group_max` accepts or GROUP_BYTES of what they send (PendingAccept.size),
whichever comes first. Every caller is answered only once its group's COMMIT has returned.

Dedup and nonces keep the semantics of one transaction per accept, in queue order: within a group a
dedup key's later uses are duplicates of its first, and across processes the upserts lock the rows a
concurrent transaction inserts, waiting for it to end. Keys are upserted in sorted order, so that two
processes' groups lock them in the same order. So are conversations: the group's statement upserts them in the
order of their ids, and a group whose accepts are stored one at a time (a nonce, a sender-checked delivery: every
email thread's), which write their conversations in arrival order, first locks every existing conversation they
may write in that same order (`_lock_conversations`). Both take the dedup keys of accepts without a nonce or a
checked delivery before any conversation, so that such an accept and a provider's retry of it, in two processes'
groups of either kind, take the key and the conversation in one order. A row not yet made cannot be locked
before it is inserted: two groups opening the same new threads in opposite orders can still deadlock, and the
server then fails one statement (40P01). The whole group is then rolled back and run again from its start,
in queue order, in a new transaction (none of its callers was answered yet), up to DEADLOCK_RUNS runs in all: its
accepts keep their arrival order, so a thread's first message stays first. A deadlock in the last run fails the
accepts it hits (503).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import structlog

from bridge.errors import StoreRefused, StoreUnavailable
from bridge.escaping import NUL_MARK, legacy_nul
from bridge.events import Event
from bridge.store.base import AcceptResult, NewDelivery, Nonce
from bridge.store.pg_pieces import SEND_AT_ONCE_BYTES, STAGED, joined_pieces
from bridge.store.pieces import json_in_pieces
from bridge.store.rows import (
    GROUP_BYTES,
    NEW_DELIVERY_COLUMNS,
    encode,
    in_legacy_conversation,
    new_delivery_rows,
    now_ms,
    sender_mismatch,
    split_conversation_id,
    storable_accept,
    take_group,
)

try:
    import asyncpg
except ImportError:  # pragma: no cover - reported when a postgresql:// store is opened
    asyncpg = None

log = structlog.get_logger("ticketbridge.store")

SMALL_GROUP = 8
NONCE_SWEEP = 32
NONCE_SWEEP_EVERY = 16
"""Every NONCE_SWEEP_EVERY-th nonce a process records deletes up to NONCE_SWEEP expired ones: two per nonce on
average, so the table shrinks back after a burst, in one statement rather than sixteen."""

DB_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError) if asyncpg is None else (
    OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
"""Whatever the driver raises when the server, the network or a connection fails: the store boundary turns
each into StoreUnavailable (intake answers 503), never an error of the request."""

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError) if asyncpg is None else (
    OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError)
_STATEMENT_ERRORS: tuple[type[BaseException], ...] = () if asyncpg is None else (
    asyncpg.exceptions._base.DataError, asyncpg.exceptions._base.OutdatedSchemaCacheError,
    asyncpg.exceptions.QueryCanceledError)
"""Errors of CONNECTION_ERRORS' classes that end a statement, not its connection: a value the driver cannot send,
a cached statement the schema outdated, and 57014 (query_canceled, a class 57 "operator intervention" as a
server shutting down is): a statement cut off by `statement_timeout` or by an operator's pg_cancel_backend, which
PostgreSQL ends without committing it (and a transaction it is part of aborted, to be rolled back), leaving the
connection ready for the next statement."""


REFUSED_CLASSES = ("22", "23", "54")
"""The SQLSTATE classes of a statement refused for the data it was given, which the same data meets on every try:
22, data exception (a number out of range for its column, a character the database's encoding has no equivalent
for, text its type cannot read; asyncpg raises 22000 itself for a value it cannot send, such as an int past 64
bits); 23, integrity constraint violation (the code expects none: a duplicate dedup key, nonce or conversation is
handled in its statement, ON CONFLICT, so one raised is the row's own); 54, program limit exceeded (an index row
past 2,704 bytes, a statement too complex). Every other class is the store's: 08 and 57 (the connection, a
server shutting down), 53 (a full disk, out of memory), 40 (serialization failures and deadlocks, which a retry
gets past), 42 and the rest (a schema the code does not match)."""


def refused(exc: BaseException) -> bool:
    """Whether the database refused a statement for its data (REFUSED_CLASSES), not because the store failed."""
    if asyncpg is None or not isinstance(exc, asyncpg.PostgresError):
        return False
    return str(getattr(exc, "sqlstate", None) or "")[:2] in REFUSED_CLASSES


def refusal(exc: BaseException) -> StoreRefused:
    """The StoreRefused that says what the database refused: its message and SQLSTATE."""
    code = f"SQLSTATE {getattr(exc, 'sqlstate', None)}"
    return StoreRefused(f"{str(exc) or type(exc).__name__} ({code})", code)


CUT_OFF_ALONE_MAX = 2
"""When a group whose statement failed is written again item by item (`each_alone`), how many of its items may be
cut off by a statement timeout (in all) before the rest are failed untried: one item slow by itself (its row locked
by another transaction) costs only itself, and a server too slow for every item (a table locked, a stalled disk)
fails the group within three timeouts rather than one per item, its callers waiting hours."""
DEADLOCK_RUNS = 3
"""Runs of a group, in all, while its statements deadlock with other transactions (40P01: the server fails one of
them). Two processes opening the same new email threads in opposite orders deadlock; one of them runs again, and
meets the other's committed rows. Under bursts of replies across several processes that run can meet a third
process's group, so it gets one more: a deadlock in the last run fails the accepts it hits (503, retried by the
provider)."""


def cut_off(exc: BaseException | None) -> bool:
    """Whether `exc` is a statement cancelled (57014: a statement_timeout, an operator's pg_cancel_backend)."""
    return asyncpg is not None and isinstance(exc, asyncpg.exceptions.QueryCanceledError)


ItemT = TypeVar("ItemT")
OutcomeT = TypeVar("OutcomeT")


async def each_alone(items: Sequence[ItemT], write: Callable[[ItemT], Awaitable[OutcomeT]],
                     ) -> list[OutcomeT | StoreUnavailable]:
    """Each of `items` written by `write` (which returns its outcome, a failure as StoreUnavailable caused by the
    driver's error), in turn; once CUT_OFF_ALONE_MAX of them (in all, not only in a row) were cut off by a timeout
    (`cut_off`), the rest fail with StoreUnavailable without being tried (nothing of them written)."""
    out: list[OutcomeT | StoreUnavailable] = []
    cut = 0
    for item in items:
        if cut >= CUT_OFF_ALONE_MAX:
            break
        outcome = await write(item)
        if isinstance(outcome, StoreUnavailable) and cut_off(outcome.__cause__):
            cut += 1
        out.append(outcome)
    if len(out) < len(items):
        log.warning("store.group_cut_off", tried=len(out), untried=len(items) - len(out), cut_off=cut,
                    note="items of a group written item by item were cut off by a statement timeout: the rest fail "
                         "untried, as a store failure (an accept answered 503, a record retried)")
        reason = f"postgresql: not written: {cut} other items of its group were cut off by a statement timeout"
        out.extend(StoreUnavailable(reason) for _ in range(len(items) - len(out)))
    return out


def lost_connection(exc: BaseException) -> bool:
    """Whether `exc` says the connection itself is gone (running the group again on it cannot help), rather
    than that a statement failed (_STATEMENT_ERRORS: a value the driver cannot send, a statement cancelled by a
    timeout). A group whose statement failed is run again item by item on the same connection, so that one slow or
    large item does not fail the others."""
    return isinstance(exc, CONNECTION_ERRORS) and not isinstance(exc, _STATEMENT_ERRORS)

_DEDUP = ("INSERT INTO dedup_keys AS d SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) "
          "ON CONFLICT (source, key) DO UPDATE SET event_id = EXCLUDED.event_id, expires_at = EXCLUDED.expires_at "
          "WHERE d.expires_at <= $5 RETURNING source, key")
_DEDUP_SEEN = ("SELECT d.source, d.key, d.event_id FROM dedup_keys d "
               "JOIN unnest($1::text[], $2::text[]) AS u (source, key) ON d.source = u.source AND d.key = u.key")
_EVENT_COLUMNS = ("u.id, u.source, u.kind, u.channel, u.received_at, u.dedup_key, u.spam, "
                  f"{joined_pieces('u.data', 'u.id')}, u.routed")
"""What the statements insert into events from the unnested arrays (aliased `u`, _EVENT_ALIASES): the data as
sent, or joined from its staged pieces (pg_pieces)."""
_EVENT_ALIASES = "AS u (id, source, kind, channel, received_at, dedup_key, spam, data, routed)"
_DELIVERY_COLUMNS = ("u.id, u.event_id, u.source, u.mapping, u.mapping_version, u.destination, u.action, u.status, "
                     f"{joined_pieces('u.body', 'u.id')}, u.options, u.next_attempt_at, u.created_at, u.updated_at, "
                     "u.last_error, u.conversation")
"""What the statements insert into deliveries (NEW_DELIVERY_COLUMNS) from the unnested arrays (aliased `u`,
_DELIVERY_ALIASES): the body as sent, or joined from its staged pieces (pg_pieces)."""
_DELIVERY_ALIASES = ("AS u (id, event_id, source, mapping, mapping_version, destination, action, status, body, "
                     "options, next_attempt_at, created_at, updated_at, last_error, conversation)")
_EVENTS = (f"INSERT INTO events SELECT {_EVENT_COLUMNS} FROM unnest($1::text[], $2::text[], $3::text[], "  # noqa: S608 - constants
           f"$4::text[], $5::bigint[], $6::text[], $7::boolean[], $8::bytea[], $9::int[]) {_EVENT_ALIASES}")
_DELIVERIES = (f"INSERT INTO deliveries ({NEW_DELIVERY_COLUMNS}) SELECT {_DELIVERY_COLUMNS} FROM unnest("  # noqa: S608 - constants
               "$1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], "
               "$9::bytea[], $10::bytea[], $11::bigint[], $12::bigint[], $13::bigint[], $14::text[], $15::text[]) "
               f"{_DELIVERY_ALIASES}")


def _conversations(first: int, where: str = "") -> str:
    """Count a group's messages in their conversations, as one upsert whose arrays (from `$first`: event id,
    conversation id, key, mapping, destination, arrival, known ticket, sender, one element per delivery in a
    conversation, in arrival order; then each conversation id once with its reopen_after in ms: see
    _thread_args) are grouped per conversation first, since one statement may change a row only once. As the
    per-accept upsert does message by message: the first message opens the conversation (with the ticket it
    names, if any), and a message after the quiet period (`reopen_after`) starts it anew, without a ticket, so
    that it becomes a create; each delivery is one more the conversation holds (`stored`, migration 0025). `where`
    filters the rows (u.event_id)."""
    a = [f"${first + i}" for i in range(10)]
    reopen = (f"(EXCLUDED.started_at - c.last_message_at > (SELECT r.ms FROM unnest({a[8]}::text[], "  # noqa: S608
              f"{a[9]}::bigint[]) AS r (id, ms) WHERE r.id = EXCLUDED.id))")
    return (
        "INSERT INTO conversations AS c (id, key, mapping, destination, messages, stored, started_at, "  # noqa: S608
        "last_message_at, ticket_id, ticket_at, sender) SELECT g.id, g.key, g.mapping, g.destination, g.n, g.n, "
        "g.first_at, g.last_at, "
        "g.ticket, CASE WHEN g.ticket IS NULL THEN NULL ELSE g.first_at END, g.sender FROM (SELECT u.id, "
        "(array_agg(u.key ORDER BY u.o))[1] AS key, (array_agg(u.mapping ORDER BY u.o))[1] AS mapping, "
        "(array_agg(u.destination ORDER BY u.o))[1] AS destination, count(*)::int AS n, min(u.at) AS first_at, "
        "max(u.at) AS last_at, (array_agg(u.ticket ORDER BY u.o))[1] AS ticket, "
        "(array_agg(u.sender ORDER BY u.o))[1] AS sender "
        f"FROM unnest({a[0]}::text[], {a[1]}::text[], {a[2]}::text[], {a[3]}::text[], {a[4]}::text[], "
        f"{a[5]}::bigint[], {a[6]}::text[], {a[7]}::text[]) WITH ORDINALITY AS u (event_id, id, key, mapping, "
        f"destination, at, ticket, sender, o) {where} GROUP BY u.id) g ORDER BY g.id "
        f"ON CONFLICT (id) DO UPDATE SET "
        f"messages = CASE WHEN {reopen} THEN EXCLUDED.messages ELSE c.messages + EXCLUDED.messages END, "
        "stored = c.stored + EXCLUDED.stored, "
        f"started_at = CASE WHEN {reopen} THEN EXCLUDED.started_at ELSE c.started_at END, "
        f"ticket_id = CASE WHEN {reopen} THEN EXCLUDED.ticket_id ELSE c.ticket_id END, "
        f"ticket_key = CASE WHEN {reopen} THEN NULL ELSE c.ticket_key END, "
        f"ticket_uuid = CASE WHEN {reopen} THEN NULL ELSE c.ticket_uuid END, "
        f"ticket_at = CASE WHEN {reopen} THEN EXCLUDED.ticket_at ELSE c.ticket_at END, "
        "last_message_at = GREATEST(c.last_message_at, EXCLUDED.last_message_at)")


_CONVERSATIONS = _conversations(1)


def _thread_args(threads: list[tuple[Any, ...]]) -> list[list[Any]]:
    """The arrays of _conversations for PendingAccept.threads."""
    reopen: dict[str, int] = {}
    for t in threads:
        reopen.setdefault(t[1], t[8])
    return [*_columns([t[:8] for t in threads], 8), list(reopen), list(reopen.values())]
_NOTIFY = "SELECT pg_notify($1, d) FROM unnest($2::text[]) AS d"
_GROUP = (
    "WITH k AS (INSERT INTO dedup_keys AS d "  # noqa: S608 - constants only; every value is bound
    "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) "
    "ON CONFLICT (source, key) DO UPDATE SET event_id = EXCLUDED.event_id, expires_at = EXCLUDED.expires_at "
    "WHERE d.expires_at <= $5 RETURNING event_id), "
    f"e AS (INSERT INTO events SELECT {_EVENT_COLUMNS} FROM unnest($6::text[], $7::text[], $8::text[], $9::text[], "
    f"$10::bigint[], $11::text[], $12::boolean[], $13::bytea[], $14::int[]) {_EVENT_ALIASES} "
    "WHERE u.dedup_key IS NULL OR u.id IN (SELECT event_id FROM k) RETURNING id), "
    f"c AS ({_conversations(31, 'WHERE u.event_id IN (SELECT id FROM e)')} RETURNING 1), "
    f"n AS (INSERT INTO deliveries ({NEW_DELIVERY_COLUMNS}) SELECT {_DELIVERY_COLUMNS} FROM unnest($15::text[], "
    "$16::text[], $17::text[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[], $23::bytea[], "
    "$24::bytea[], $25::bigint[], $26::bigint[], $27::bigint[], $28::text[], $29::text[]) "
    f"{_DELIVERY_ALIASES} WHERE u.event_id IN (SELECT id FROM e) AND (SELECT count(*) FROM c) >= 0 "
    "RETURNING destination, status) "
    "SELECT ARRAY(SELECT id FROM e) FROM (SELECT count(pg_notify($30, w.destination)) "
    "FROM (SELECT DISTINCT destination FROM n WHERE status = 'pending') AS w) AS notified")
"""A group of accepts without a nonce as one statement: PostgreSQL runs it as one transaction (the conversations'
upsert included). The conversations are upserted before the deliveries are inserted (`n` waits for all of `c`:
a condition always true, evaluated once, before its first row), as the accepts stored one at a time do: each
delivery takes its arrival (the column's default) while its transaction holds its conversation's row, so a
conversation's deliveries are numbered in the order their transactions commit, and a reader paging a conversation
after the last delivery it read (Store.conversation_slice) skips none. (A data-modifying CTE the main query does
not read runs after it: before, the deliveries took their arrival first, then the group waited for a conversation
another transaction held, and committed a delivery numbered before that transaction's.)"""


class PendingAccept:
    """One accept waiting for its group: everything its statements need, encoded before it queues."""

    __slots__ = ("alone", "checked", "created", "data", "event", "expires", "future", "legacy", "nonce", "received",
                 "rows", "size", "threads", "wake")

    def __init__(self, event: Event, deliveries: list[NewDelivery], dedup_window_s: float,  # noqa: PLR0917
                 nonce: Nonce | None, blob: Callable[[Any], bytes] = encode,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        """`blob` encodes the event and its deliveries' bodies (a heavy accept's, `heavy_accept`, a piece at a time);
        `loop`: the event loop its caller waits on, when it is made on another thread (by default, the running one).
        Both are positional: a keyword-only default is looked up in a dict on every call, some 240 instructions
        more on each light accept, which takes the defaults."""
        event, deliveries, nonce = storable_accept(event, deliveries, nonce)
        self.event = event
        self.nonce = nonce
        self.data = blob(event)
        self.received = int(event.received_at.timestamp() * 1000)
        self.created = now_ms()
        self.expires = self.created + int(dedup_window_s * 1000)
        self.rows = new_delivery_rows(event, deliveries, self.created, blob)
        size = len(self.data)
        for row in self.rows:
            if (body := row[8]) is not None:
                size += len(body)
        self.size = size
        """What GROUP_BYTES bounds per group: the bytes of what the request sent that the accept's statement
        carries, already encoded for it: the event (payload, headers) and its deliveries' bodies. Ids, keys and
        times are short, and a delivery's options come from its mapping, not from the request."""
        self.threads = [(event.id, d.conversation, d.conversation_key or d.conversation, d.mapping, d.destination,
                         self.created, d.known_ticket, d.sender, d.reopen_after_ms)
                        for d in deliveries if d.conversation is not None and not d.sender_checked]
        """What counts the message in its conversations: the _conversations columns, one tuple per delivery."""
        self.checked = [d for d in deliveries if d.conversation is not None and d.sender_checked]
        """The deliveries whose conversation depends on its first sender (_join_checked): stored by accept_one, one
        conversation at a time, never by the group's statements."""
        self.legacy = ((event.dedup_key is not None and event.dedup_key.startswith(NUL_MARK))
                       or (nonce is not None and nonce.value.startswith(NUL_MARK))
                       or any(d.conversation.startswith(NUL_MARK) for d in deliveries if d.conversation is not None))
        """Whether a key of the accept holds a NUL (is written out: escaping.write_nul), so that a row written before
        NUL_MARK may hold it in its earlier form: the accept is then stored by accept_one, which looks that form up
        too (`_legacy_duplicate`, `_in_legacy_conversations`), never by the group's statements."""
        self.alone = nonce is not None or bool(self.checked) or self.legacy
        """Whether the accept is stored by accept_one, one at a time in a savepoint (a nonce, a sender-checked
        delivery, a key written out), not by the group's statements."""
        self.wake = sorted({d.destination for d in deliveries if d.status == "pending"})
        self.future: asyncio.Future[AcceptResult] = (asyncio.get_running_loop() if loop is None
                                                      else loop).create_future()

    @property
    def key(self) -> tuple[str, str] | None:
        return None if self.event.dedup_key is None else (self.event.source, self.event.dedup_key)

    def stored(self) -> AcceptResult:
        return AcceptResult(event_id=self.event.id, duplicate=False, deliveries=len(self.rows))

    def take_large(self) -> list[tuple[str, bytes]]:
        """This accept's values longer than SEND_AT_ONCE_BYTES (its event's data, its deliveries' bodies), taken out
        of it, STAGED left in their place: (the event's or delivery's id, the value), for pg_pieces.stage to send a
        piece at a time before the accept's statement, which joins them back. `size` is left as it was: the group
        still closes on what the accept writes."""
        taken = []
        if len(self.data) > SEND_AT_ONCE_BYTES:
            taken.append((self.event.id, self.data))
            self.data = STAGED
        for n, row in enumerate(self.rows):
            if (body := row[8]) is not None and len(body) > SEND_AT_ONCE_BYTES:
                taken.append((row[0], body))
                self.rows[n] = (*row[:8], STAGED, *row[9:])
        return taken


def heavy_accept(event: Event, deliveries: list[NewDelivery], dedup_window_s: float, nonce: Nonce | None,
                 loop: asyncio.AbstractEventLoop) -> PendingAccept:
    """The PendingAccept of a heavy accept (one that weighs more than the store's `large_accept_bytes`), made on a
    worker thread: its event's JSON and its deliveries' bodies encoded with their long strings a piece at a time and
    joined without the GIL (pieces.json_in_pieces), so that neither the loop nor the GIL is held for the whole of a
    large mail's text. `loop`: the event loop its caller waits on."""
    return PendingAccept(event, deliveries, dedup_window_s, nonce, _in_pieces, loop)


def _in_pieces(value: Any) -> bytes:
    return json_in_pieces(value, encode)


Outcome = AcceptResult | BaseException
"""What one accept of a group came to: its result, or the error it alone failed with."""


class _Replayed(Exception):
    """A nonce held by another request: ends the accept's transaction or savepoint, which rolls back."""


REPLAYED = AcceptResult(event_id="", duplicate=False, deliveries=0, replayed=True)


class _Queued(Protocol):
    future: asyncio.Future[Any]
    size: int


Q = TypeVar("Q", bound=_Queued)
R = TypeVar("R")


class GroupBatcher(Generic[Q, R]):
    """Queues items and stores them a group at a time with `run_group(group)`, which returns one outcome per
    item (or raises, failing the whole group). Up to `concurrent` groups are stored at once, each on its own
    connection: while one waits for its COMMIT (the server's disk), the next is already being written. A group
    holds what was queued in the turn of the loop that queued its first item; one smaller than `linger_below`
    waits one more turn for the items being parsed now. A group closes at `group_max` items or at `group_bytes`
    of their sizes (`item.size`), whichever comes first; an item larger than `group_bytes` by itself makes a group
    of one. The groups of one burst so split are stored one after another, in arrival order."""

    def __init__(self, run_group: Callable[[list[Q]], Awaitable[list[R | BaseException]]], group_max: int,
                 concurrent: int = 1, linger_below: int = SMALL_GROUP, group_bytes: int = GROUP_BYTES) -> None:
        self.run_group = run_group
        self.group_max = group_max
        self.group_bytes = group_bytes
        self.concurrent = concurrent
        self.linger_below = linger_below
        self._pending: list[Q] = []
        self._pending_size = 0
        """The sum of the queued items' sizes."""
        self._flusher: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(concurrent)
        self._running: set[asyncio.Task[None]] = set()
        self._last: asyncio.Task[None] | None = None
        """The group taken last, while it may be followed by the rest of its burst (see _flush)."""
        self.groups = 0
        self.grouped = 0

    async def submit(self, item: Q) -> R:
        self._pending.append(item)
        self._pending_size += item.size
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="postgres group commit")
        out: R = await item.future
        return out

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the items of this turn of the loop join the group
        while self._pending:
            if len(self._pending) < self.linger_below:
                await asyncio.sleep(0)  # a small group: one more turn lets requests parsed now join it
            await self._slots.acquire()  # items arriving meanwhile join the group taken once a slot is free
            after, self._last = self._last, None
            group = self._take()
            self.groups += 1
            self.grouped += len(group)
            task = asyncio.get_running_loop().create_task(self._store(group, after), name="postgres group")
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            if self._pending:
                # A burst split by the bounds: the rest of it is stored once this group is, not beside it. Beside
                # it, the rest's smaller statement could reach the server first, and a dedup key or conversation
                # both hold would go to the later request.
                self._last = task

    def _take(self) -> list[Q]:
        """The next group, taken off the queue (which holds one item at least): its first items, up to `group_max`
        of them and `group_bytes` of their sizes, the first item whatever its size."""
        group, self._pending, self._pending_size = take_group(self._pending, self._pending_size, self.group_max,
                                                              self.group_bytes)
        return group

    async def _store(self, group: list[Q], after: asyncio.Task[None] | None = None) -> None:
        """Store `group` (once `after`, the group before it in its burst, is stored) and answer its items."""
        try:
            try:
                if after is not None:
                    await asyncio.wait([after])  # its outcome is its own items'
                outcomes = await self.run_group(group)
            except Exception as exc:
                outcomes = [exc] * len(group)
            except BaseException:  # cancelled (the loop is closing): nobody is left without an answer
                for item in group:
                    item.future.cancel()
                raise
        finally:
            self._slots.release()
        for item, outcome in zip(group, outcomes, strict=True):
            if item.future.done():
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)

    async def close(self) -> None:
        """Wait for the groups queued so far to be stored."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)


class AcceptBatcher(GroupBatcher[PendingAccept, AcceptResult]):
    """Queues accepts and stores them a group at a time (GroupBatcher): up to `group_max` accepts or `group_bytes`
    of what they send (PendingAccept.size), whichever comes first."""


async def store_group(conn: Any, group: list[PendingAccept], channel: str, sweep_due: Callable[[], bool]) -> \
        list[Outcome]:
    """Store `group` on `conn`: straight through (in one statement when no accept has a nonce), or, when a
    statement fails, again with each accept in a savepoint of its own: an accept the database refused for its data
    (`refused`) comes to StoreRefused, another failed statement (one cancelled by a timeout, say) to StoreUnavailable.
    Connection failures propagate (the group fails as a whole), and so does the failure of a group of one. A
    statement that deadlocked with another transaction (`deadlocked`) rolls the whole group back, and the group is
    run again from its start, in queue order, in a new transaction, up to DEADLOCK_RUNS runs in all: its accepts
    keep the order they arrived in (a conversation's first message stays first), and none was answered yet, so none
    is lost or stored twice. In the last run a deadlock fails the accepts it hits alone (503), as any other failed
    statement does."""
    for run in range(1, DEADLOCK_RUNS):
        try:
            return await _store_group(conn, group, channel, sweep_due, last_run=False)
        except DB_ERRORS as exc:
            if not deadlocked(exc):
                raise
        _retrying(len(group), run)
    return await _store_group(conn, group, channel, sweep_due, last_run=True)


def deadlocked(exc: BaseException | None) -> bool:
    """Whether `exc` is a deadlock the server broke by failing this statement (40P01, deadlock_detected)."""
    return asyncpg is not None and isinstance(exc, asyncpg.exceptions.DeadlockDetectedError)


def _retrying(count: int, run: int) -> None:
    log.warning("store.deadlock_retried", accepts=count, run=run,
                note="a statement of a group deadlocked with another transaction: the group was rolled back and is "
                     f"stored again from its start, in arrival order; a deadlock in its run {DEADLOCK_RUNS} fails the "
                     "accepts it hits (503)")


async def _store_group(conn: Any, group: list[PendingAccept], channel: str, sweep_due: Callable[[], bool], *,
                       last_run: bool) -> list[Outcome]:
    """One run of `store_group`. Unless `last_run`, a deadlock, wherever it is met, propagates (rolling back
    everything of the group) for `store_group` to run the group again; in the last run it fails the accept it
    hits."""
    def in_savepoint(item: PendingAccept) -> Awaitable[Outcome]:
        return _in_savepoint(conn, item, channel, sweep_due, deadlock_raises=not last_run)

    try:
        if not any(item.alone for item in group):
            return list(await _one_statement(conn, group, channel))
        if len(group) == 1:
            return [await _alone(conn, group[0], channel, sweep_due)]
        out: dict[int, Outcome] = {}
        async with conn.transaction():
            plain = [(i, item) for i, item in enumerate(group) if not item.alone]
            # The plain accepts' dedup keys before the conversations, as the group statement (_GROUP) takes them:
            # a provider's retry of one of them may be in another process's group statement.
            keys = await _claim_keys(conn, [item for _, item in plain])
            await _lock_conversations(conn, group)
            for run in _runs(group):
                if run[0][1].alone:
                    ((i, item),) = run
                    out[i] = await in_savepoint(item)
                else:
                    out.update(zip((i for i, _ in run), await _batched(conn, [item for _, item in run], channel,
                                                                       keys), strict=True))
        return [out[i] for i in range(len(group))]
    except DB_ERRORS as exc:
        if lost_connection(exc) or len(group) == 1 or (not last_run and deadlocked(exc)):
            raise  # the connection's failure, the only accept's own, or a deadlock: the group is run again
        # Cut off by a timeout, most likely waiting for a row another transaction holds: locking the group's rows
        # first would wait for it once more, and the accept that writes it meets that wait anyway.
        lock_first = not cut_off(exc)
    async with conn.transaction():  # one statement of the group failed: find out which accept it was
        if lock_first:
            await _lock_conversations(conn, group, alone=True)
        return await each_alone(group, in_savepoint)


def _conversation_ids(item: PendingAccept) -> set[str]:
    """The ids of the conversations `item` counts a message in."""
    ids = {t[1] for t in item.threads}
    ids.update(d.conversation for d in item.checked if d.conversation is not None)
    return ids


def _runs(group: list[PendingAccept]) -> list[list[tuple[int, PendingAccept]]]:
    """The order a mixed group (accepts stored alone beside plain ones) is stored in, as runs of (place, accept):
    a run of plain accepts in one statement each, an accept stored alone in a run of its own. All the plain ones
    first, then those stored alone, in one statement fewer; but when an accept stored alone comes before a plain one
    of the same conversation, in arrival order (consecutive plain accepts still together), so that a conversation's
    first message stays its first, the one that opens its ticket."""
    plain = [(i, item) for i, item in enumerate(group) if not item.alone]
    alone = [(i, item) for i, item in enumerate(group) if item.alone]
    later: set[str] = set()  # the conversations of the plain accepts after the place being read
    crossed = False
    for item in reversed(group):
        if item.alone:
            if not later.isdisjoint(_conversation_ids(item)):
                crossed = True
                break
        else:
            later |= _conversation_ids(item)
    if not crossed:
        return ([plain] if plain else []) + [[pair] for pair in alone]
    runs: list[list[tuple[int, PendingAccept]]] = []
    for i, item in enumerate(group):
        if item.alone or not runs or runs[-1][0][1].alone:
            runs.append([(i, item)])
        else:
            runs[-1].append((i, item))
    return runs


_LOCK_CONVERSATIONS = "SELECT 1 FROM conversations WHERE id = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE"
"""Lock the conversations named that exist, in the order of their ids (the order the group's statement upserts
them in, _conversations), as an upsert of one does (the lock that changes no key)."""


async def _lock_conversations(conn: Any, group: list[PendingAccept], *, alone: bool = False) -> None:
    """Lock, in the open transaction, every existing conversation the accepts of `group` may write, in the order of
    their ids, before any of them writes: those stored one at a time (a nonce, a sender-checked delivery: every
    email thread's) write theirs in arrival order, and two groups holding the same threads in opposite orders
    would each hold what the other waits for. Nothing to do for fewer than two. `alone`: in a savepoint of its
    own, its failure (other than the connection's) left for the accepts' own statements to meet."""
    ids = {t[1] for item in group for t in item.threads}
    ids.update(d.conversation for item in group for d in item.checked if d.conversation is not None)
    if len(ids) < 2:
        return
    if not alone:
        await conn.execute(_LOCK_CONVERSATIONS, sorted(ids))
        return
    try:
        async with conn.transaction():
            await conn.execute(_LOCK_CONVERSATIONS, sorted(ids))
    except DB_ERRORS as exc:
        if lost_connection(exc):
            raise


NOT_YET_MIGRATED: tuple[type[BaseException], ...] = () if asyncpg is None else (
    asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError, asyncpg.UndefinedFunctionError)
"""What preparing a statement raises on a database the migrations have not brought up to date yet. (Nothing
without asyncpg: the module is then imported only for PostgresStore.open to say the package is missing.)"""


async def warm_connection(conn: Any) -> None:
    """Prepare a group's statement on a new connection: its first preparation, when the server process reads the
    tables' catalogue, takes tens of milliseconds. Before the migrations have made the tables, or the columns the
    statements name (a database of an earlier version, opened to be migrated), nothing to do: the pool is warmed
    again once they have run."""
    with contextlib.suppress(*NOT_YET_MIGRATED):
        await conn.prepare(_GROUP)
        await conn.prepare(_DEDUP_SEEN)


async def _alone(conn: Any, item: PendingAccept, channel: str, sweep_due: Callable[[], bool]) -> Outcome:
    try:
        async with conn.transaction():
            await _lock_conversations(conn, [item])
            return await accept_one(conn, item, channel, sweep_due)
    except _Replayed:  # raised inside the transaction, so that its dedup key is rolled back with it
        return REPLAYED


async def _in_savepoint(conn: Any, item: PendingAccept, channel: str, sweep_due: Callable[[], bool], *,
                       deadlock_raises: bool = False) -> Outcome:
    """One accept in a savepoint of the open transaction: its failure rolls back its own statements only (but a
    lost connection, or a deadlock when `deadlock_raises`, propagates)."""
    try:
        async with conn.transaction():
            return await accept_one(conn, item, channel, sweep_due)
    except _Replayed:
        return REPLAYED
    except DB_ERRORS as exc:
        if lost_connection(exc) or (deadlock_raises and deadlocked(exc)):
            raise
        if refused(exc):
            return refusal(exc)
        failed = StoreUnavailable(f"postgresql: {exc}")
        failed.__cause__ = exc
        return failed


_EVENT = ("INSERT INTO events VALUES ($1, $2, $3, $4, $5, $6, $7, "  # noqa: S608 - constants only
          f"{joined_pieces('$8::bytea', '$1::text')}, $9)")
_DELIVERY = (f"INSERT INTO deliveries ({NEW_DELIVERY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "  # noqa: S608 - constants
             f"{joined_pieces('$9::bytea', '$1::text')}, $10, $11, $12, $13, $14, $15)")
"""One accept's event and deliveries (accept_one), a staged value joined from its pieces as the group's statements
join it."""


async def accept_one(conn: Any, item: PendingAccept, channel: str, sweep_due: Callable[[], bool]) -> AcceptResult:
    """The statements of one accept, in the open transaction; raises _Replayed when its nonce is taken."""
    event = item.event
    if item.legacy and (first := await _legacy_duplicate(conn, item)) is not None:
        return AcceptResult(event_id=first, duplicate=True, deliveries=0)
    if event.dedup_key is not None:
        # A concurrent insert of the same key waits for this row's transaction, then sees it.
        fresh = await conn.fetchval(
            "INSERT INTO dedup_keys AS d VALUES ($1, $2, $3, $4) ON CONFLICT (source, key) DO UPDATE "
            "SET event_id = EXCLUDED.event_id, expires_at = EXCLUDED.expires_at WHERE d.expires_at <= $5 "
            "RETURNING event_id", event.source, event.dedup_key, event.id, item.expires, item.created)
        if fresh is None:
            first = await conn.fetchval("SELECT event_id FROM dedup_keys WHERE source = $1 AND key = $2",
                                        event.source, event.dedup_key)
            return AcceptResult(event_id=first, duplicate=True, deliveries=0)
    if item.nonce is not None:
        await _claim_nonce(conn, event.source, item.nonce, item.created)
        if sweep_due():
            await _sweep_nonces(conn, item.created)
    await conn.execute(_EVENT, event.id, event.source, event.kind, event.channel, item.received, event.dedup_key,
                       event.spam, item.data, len(item.rows))
    threads, checked, rows = item.threads, item.checked, item.rows
    if item.legacy:
        threads, checked, rows = await _in_legacy_conversations(conn, item)
    if threads:
        await conn.execute(_CONVERSATIONS, *_thread_args(threads))
    if checked:
        moved = {}
        for d in checked:
            if (own := await _join_checked(conn, d, item.created)) is not None:
                moved[d.id] = own
        if moved:
            rows = [(*row[:-1], moved[row[0]]) if row[0] in moved else row for row in rows]
    if rows:
        await conn.executemany(_DELIVERY, rows)
    if item.wake:
        await conn.execute(_NOTIFY, channel, item.wake)
    return item.stored()


async def _legacy_duplicate(conn: Any, item: PendingAccept) -> str | None:
    """The event whose dedup key, kept as a row written before NUL_MARK keeps it (a NUL written `\\x00`), `item`'s
    repeats within its window; raises _Replayed when such a row of another request holds its nonce. A dedup key's
    row in the earlier form does not conflict with an insert of the written one, so it is looked up first."""
    event, nonce = item.event, item.nonce
    if event.dedup_key is not None and (key := legacy_nul(event.dedup_key)) is not None:
        first: str | None = await conn.fetchval(
            "SELECT event_id FROM dedup_keys WHERE source = $1 AND key = $2 AND expires_at > $3",
            event.source, key, item.created)
        if first is not None:
            return first
    if nonce is not None and (value := legacy_nul(nonce.value)) is not None and await conn.fetchval(
            "SELECT 1 FROM nonces WHERE (source = $1 OR source = $2) AND nonce = $3 AND expires_at > $4 "
            "AND digest <> $5", nonce.scope_for(event.source), nonce.unscoped_for(event.source), value,
            item.created, nonce.digest) is not None:
        raise _Replayed
    return None


async def _in_legacy_conversations(conn: Any, item: PendingAccept) -> tuple[list[tuple[Any, ...]], list[NewDelivery],
                                                                           list[tuple[Any, ...]]]:
    """`item`'s threads, sender-checked deliveries and delivery rows, each message whose conversation is kept as a
    row written before NUL_MARK (its key held a NUL, kept `\\x00` then) moved to that row, which is the
    conversation: its stored id, its key in the same form."""
    legacy = {c: old for t in item.threads if (old := legacy_nul(c := t[1])) is not None}
    legacy.update((c, old) for d in item.checked if d.conversation is not None
                  and (old := legacy_nul(c := d.conversation)) is not None)
    if not legacy:
        return item.threads, item.checked, item.rows
    kept = set(await conn.fetchval("SELECT array_agg(id) FROM conversations WHERE id = ANY($1::text[])",
                                   list(legacy.values())) or ())
    moved = {c: old for c, old in legacy.items() if old in kept}
    if not moved:
        return item.threads, item.checked, item.rows
    threads = [(t[0], moved[t[1]], legacy_nul(t[2]) or t[2], *t[3:]) if t[1] in moved else t for t in item.threads]
    checked = [in_legacy_conversation(d, moved[d.conversation]) if d.conversation in moved else d
               for d in item.checked]
    rows = [(*row[:-1], moved[row[-1]]) if row[-1] in moved else row for row in item.rows]
    return threads, checked, rows


_JOIN_CHECKED = (
    "INSERT INTO conversations AS c (id, key, mapping, destination, messages, stored, started_at, last_message_at, "
    "ticket_id, ticket_at, sender) VALUES ($1, $2, $3, $4, 1, 1, $5, $5, $6, "
    "CASE WHEN $6::text IS NULL THEN NULL ELSE $5::bigint END, $8) "
    "ON CONFLICT (id) DO UPDATE SET "
    "messages = CASE WHEN $5 - c.last_message_at > $7 THEN 1 ELSE c.messages + 1 END, stored = c.stored + 1, "
    "started_at = CASE WHEN $5 - c.last_message_at > $7 THEN $5 ELSE c.started_at END, "
    "ticket_id = CASE WHEN $5 - c.last_message_at > $7 THEN EXCLUDED.ticket_id ELSE c.ticket_id END, "
    "ticket_key = CASE WHEN $5 - c.last_message_at > $7 THEN NULL ELSE c.ticket_key END, "
    "ticket_uuid = CASE WHEN $5 - c.last_message_at > $7 THEN NULL ELSE c.ticket_uuid END, "
    "ticket_at = CASE WHEN $5 - c.last_message_at > $7 THEN EXCLUDED.ticket_at ELSE c.ticket_at END, "
    "last_message_at = GREATEST(c.last_message_at, $5) "
    "WHERE c.sender IS NULL OR c.sender = $8 OR c.sender = ANY($9::text[]) RETURNING 1")
"""One message counted in a conversation whose key any sender may write, as _conversations counts one, but only
when the conversation's first sender is the message's (or it has none, being older than the column): the row a
conflict locks is left as it was, and nothing is returned, otherwise."""


async def _join_checked(conn: Any, d: NewDelivery, now: int) -> str | None:
    """Count `d` in its conversation when its sender may join it (see sqlite.py's _join_conversation, which this
    follows); else open the conversation of its own it gets, and return that one's id."""
    sender = d.sender or ""
    named = "conversation"
    if d.known_ticket is not None and not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM conversations WHERE id = $1 AND (sender IS NULL OR sender = $2 "
            "OR sender = ANY($7::text[])) AND $3 - last_message_at <= $4) OR EXISTS (SELECT 1 FROM conversations "
            "WHERE destination = $5 AND ticket_id = $6 AND (sender IS NULL OR sender = $2 "
            "OR sender = ANY($7::text[])))",
            d.conversation, sender, now, d.reopen_after_ms, d.destination, d.known_ticket, list(d.sender_also)):
        named = "ticket"
    elif await conn.fetchval(_JOIN_CHECKED, d.conversation, d.conversation_key or d.conversation, d.mapping,
                             d.destination, now, d.known_ticket, d.reopen_after_ms, sender,
                             list(d.sender_also)) is not None:
        return None
    first = await conn.fetchval("SELECT sender FROM conversations WHERE id = $1", d.conversation)
    own, key = split_conversation_id(d)
    sender_mismatch(d, named, sender, first, own)
    await conn.execute("INSERT INTO conversations (id, key, mapping, destination, messages, stored, started_at, "
                       "last_message_at, sender) VALUES ($1, $2, $3, $4, 1, 1, $5, $5, $6)",
                       own, key, d.mapping, d.destination, now, sender)
    return own


def _firsts(group: list[PendingAccept]) -> tuple[list[PendingAccept], dict[tuple[str, str], PendingAccept]]:
    """The accepts of `group` that may store their event (no dedup key, or the key's first use in the group), and
    each key's first accept."""
    first: dict[tuple[str, str], PendingAccept] = {}
    candidates = []
    for item in group:
        key = item.key
        if key is None or first.setdefault(key, item) is item:
            candidates.append(item)
    return candidates, first


async def _one_statement(conn: Any, group: list[PendingAccept], channel: str) -> list[AcceptResult]:
    """Accepts without a nonce in one statement, so in one round trip and one commit: the dedup keys' upsert, the
    events whose key was free, their deliveries and the wake-ups, as data-modifying CTEs."""
    candidates, first = _firsts(group)
    keyed = sorted((k, item) for k, item in first.items())
    events = [(i.event.id, i.event.source, i.event.kind, i.event.channel, i.received, i.event.dedup_key,
               i.event.spam, i.data, len(i.rows)) for i in candidates]
    rows = [row for i in candidates for row in i.rows]
    threads = [t for i in candidates for t in i.threads]
    stored = set(await conn.fetchval(
        _GROUP, [k[0] for k, _ in keyed], [k[1] for k, _ in keyed], [i.event.id for _, i in keyed],
        [i.expires for _, i in keyed], now_ms(), *_columns(events, 9), *_columns(rows, 15), channel,
        *_thread_args(threads)))
    seen: dict[tuple[str, str], str] = {}
    if stale := sorted(k for k, item in keyed if item.event.id not in stored):
        seen = {(r[0], r[1]): r[2] for r in await conn.fetch(
            _DEDUP_SEEN, [k[0] for k in stale], [k[1] for k in stale])}
    results = []
    for item in group:
        if item.event.id in stored:
            results.append(item.stored())
        else:
            key = item.key
            assert key is not None
            owner = first[key].event.id if first[key].event.id in stored else seen.get(key, "")
            results.append(AcceptResult(event_id=owner, duplicate=True, deliveries=0))
    return results


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows as one list per column (for unnest), `width` lists when there are no rows."""
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


Keys = tuple[dict[tuple[str, str], PendingAccept], dict[tuple[str, str], str]]
"""What _claim_keys returns: each dedup key's first accept, and the keys already in the window (→ their event)."""


async def _claim_keys(conn: Any, group: list[PendingAccept]) -> Keys:
    """Upsert the dedup keys of `group` (accepts without a nonce), in sorted order, in the open transaction."""
    first: dict[tuple[str, str], PendingAccept] = {}
    for item in group:
        if (key := item.key) is not None:
            first.setdefault(key, item)
    seen: dict[tuple[str, str], str] = {}  # key → the event it belongs to, when it was in the window already
    if first:
        keys = sorted(first)
        owners = [first[k] for k in keys]
        fresh = {(r[0], r[1]) for r in await conn.fetch(
            _DEDUP, [k[0] for k in keys], [k[1] for k in keys], [o.event.id for o in owners],
            [o.expires for o in owners], now_ms())}
        if stale := [k for k in keys if k not in fresh]:
            seen = {(r[0], r[1]): r[2] for r in await conn.fetch(
                _DEDUP_SEEN, [k[0] for k in stale], [k[1] for k in stale])}
    return first, seen


async def _batched(conn: Any, group: list[PendingAccept], channel: str, keys: Keys) -> list[AcceptResult]:
    """Accepts without a nonce, one statement per table for them all, in the open transaction, once their dedup
    keys are upserted (`keys`, from _claim_keys)."""
    first, seen = keys
    results: list[AcceptResult] = []
    stored: list[PendingAccept] = []
    for item in group:
        key = item.key
        if key is None or (key not in seen and first[key] is item):
            stored.append(item)
            results.append(item.stored())
        else:
            owner = seen.get(key) or first[key].event.id
            results.append(AcceptResult(event_id=owner, duplicate=True, deliveries=0))
    if stored:
        events = [(i.event.id, i.event.source, i.event.kind, i.event.channel, i.received, i.event.dedup_key,
                   i.event.spam, i.data, len(i.rows)) for i in stored]
        await conn.execute(_EVENTS, *map(list, zip(*events, strict=True)))
        threads = [t for i in stored for t in i.threads]
        if threads:
            await conn.execute(_CONVERSATIONS, *_thread_args(threads))
        rows = [row for i in stored for row in i.rows]
        if rows:
            await conn.execute(_DELIVERIES, *map(list, zip(*rows, strict=True)))
        wake = sorted({d for i in stored for d in i.wake})
        if wake:
            await conn.execute(_NOTIFY, channel, wake)
    return results


async def _claim_nonce(conn: Any, source: str, nonce: Nonce, now: int) -> None:
    """Record `nonce` in its scope for an event of `source`, or raise _Replayed when another request holds it
    there, or (a scoped nonce) under `source` alone (Nonce.unscoped_for: a row only a version before scopes
    wrote, so no concurrent claim of this version's). One statement: an insert of nothing when the unscoped row
    holds it (NULL, for an unscoped nonce, matches no row), else an upsert. A concurrent claim of the same nonce
    waits for this transaction, then sees its row."""
    claimed = await conn.fetchval(
        "INSERT INTO nonces AS n SELECT $1, $2, $3, $4::bigint WHERE NOT EXISTS (SELECT 1 FROM nonces "
        "WHERE source = $6 AND nonce = $2 AND expires_at > $5 AND digest <> $3) ON CONFLICT (source, nonce) DO UPDATE "
        "SET digest = EXCLUDED.digest, expires_at = GREATEST(n.expires_at, EXCLUDED.expires_at) "
        "WHERE n.expires_at <= $5 OR n.digest = EXCLUDED.digest RETURNING 1",
        nonce.scope_for(source), nonce.value, nonce.digest, nonce.expires_at_ms, now, nonce.unscoped_for(source))
    if claimed is None:
        raise _Replayed


async def _sweep_nonces(conn: Any, now: int) -> None:
    """Delete up to NONCE_SWEEP expired nonces, oldest first, skipping rows another transaction holds."""
    await conn.execute("DELETE FROM nonces WHERE ctid = ANY(ARRAY(SELECT ctid FROM nonces WHERE expires_at <= $1 "
                       "ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED))", now, NONCE_SWEEP)
