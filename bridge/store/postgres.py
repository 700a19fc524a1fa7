"""The PostgreSQL store, for several ticketbridge processes sharing one queue.

Concurrent accepts share one transaction and one commit (bridge/store/pg_batch.py), each answered once its
group is committed; so do the records of attempts that finish together (bridge/store/pg_record.py: one statement
per group, each delivery's row under its own lease check). A statement the database refuses for its data
(pg_batch.REFUSED_CLASSES: a value out of range, a character the database's encoding lacks, an index row too long, a
constraint broken) becomes StoreRefused (intake answers 422) and leaves the store's health alone; every other
driver, connection or server error becomes StoreUnavailable (intake answers 503) and marks the store failing until
a commit succeeds; the pool replaces connections the server dropped, and `check()` (for /readyz) tries the server
while the store is seen failing.
Claims take due rows with `FOR UPDATE SKIP LOCKED`, so processes never take the same delivery, and
lease them: a process that dies leaves leases that run out, and `release_expired` (run by every
process's dispatcher) gives that work to the others. New work is announced with NOTIFY inside the
accepting transaction, on a channel named for the schema (two deployments sharing a database do not wake
each other), so every process's idle lane wakes once it is committed; polling remains the fallback, and the
listening connection reconnects by itself as soon as it is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from importlib import resources
from typing import Any, TypeVar

import msgspec
import structlog

from bridge import offload
from bridge.delivery.coordination import Coordination
from bridge.errors import NotFound, StoreRefused, StoreUnavailable, named
from bridge.events import Event
from bridge.pg_schema import split_schema
from bridge.store.base import (
    AcceptResult,
    Arrival,
    AttemptResult,
    AttemptRow,
    AuditEntry,
    ClaimBatch,
    Claimed,
    ConversationDetail,
    ConversationRow,
    ConversationSlice,
    Cutoffs,
    DeliveryDetail,
    DeliveryFilter,
    DeliveryRow,
    NewDelivery,
    Nonce,
    PurgeCounts,
    PurgeMark,
    Store,
    StoredMappingSet,
    StoreProblem,
)
from bridge.store.loop_turns import Turns
from bridge.store.pg_batch import (
    DB_ERRORS,
    DEADLOCK_RUNS,
    NONCE_SWEEP,
    NONCE_SWEEP_EVERY,
    AcceptBatcher,
    Outcome,
    PendingAccept,
    cut_off,
    deadlocked,
    heavy_accept,
    lost_connection,
    refusal,
    refused,
    store_group,
    warm_connection,
)
from bridge.store.pg_coordination import PgCoordination
from bridge.store.pg_pieces import (
    BODY,
    READ_HEAD,
    SEND_AT_ONCE_BYTES,
    STAGED,
    at_most,
    hash_pieces,
    joined_pieces,
    read_pieces,
    stage,
    unstage,
)
from bridge.store.pg_record import Outcome as RecordOutcome
from bridge.store.pg_record import PendingRecord, RecordBatcher, record_group, warm_records
from bridge.store.pieces import DECODE_AT_ONCE_BYTES, decode_in_pieces, joined, json_in_pieces
from bridge.store.rows import (
    ATTEMPT_COLUMNS,
    CONVERSATION_COLUMNS,
    CONVERSATION_GONE,
    DELIVERY_COUNTS,
    HOLDING_CREATE,
    MAPPING_CONVERSATIONS,
    NEVER,
    OLDEST_UNSETTLED,
    REAPED_IN_DOUBT,
    REFS_PAGE,
    REFS_PAGE_BYTES,
    RESET_CONVERSATION,
    ROW_WIDTH,
    TICKET_TARGET_COLUMNS,
    attachment_hashes,
    attempt_row,
    audit_entry,
    claimed_items,
    conversation_forms,
    conversation_row,
    decode_dict,
    decode_event,
    decode_files,
    delivery_row,
    encode,
    head_of_conversation,
    kept_condition,
    last_slice,
    leases,
    lookups,
    now_ms,
    row_columns,
    settled,
    status_condition,
    storable,
    storable_audit,
    storable_result,
    ticket_refusal,
    ticket_target,
    tickets_of_claimed,
    with_tickets,
)

try:
    import asyncpg
except ImportError:  # pragma: no cover - reported when a postgresql:// store is opened
    asyncpg = None

log = structlog.get_logger("ticketbridge.store")
ARRIVAL = "({t}.arrival, {t}.id)"
"""What orders a conversation's deliveries (rows.head_of_conversation): `deliveries.arrival`, the next value of the
sequence deliveries_arrival, which the insert takes itself (the column's default, migration 0022; no statement or
round trip of its own). A delivery accepted after another's accept has committed takes a larger value, whichever
process, on whichever host, accepted each: their clocks, which make the ids, do not enter. The deliveries stored
before the migration have arrival 0 (the column was added with that default, without rewriting the table), so they
come before every later one and, among themselves, in id order, the order that decided when they were stored."""
HEAD_OF_CONVERSATION = head_of_conversation(ARRIVAL)
ROW_COLUMNS = row_columns(ARRIVAL)
TICKETS_OF_CLAIMED = tickets_of_claimed(ARRIVAL)
_SLICE = f"SELECT {ROW_COLUMNS}, arrival FROM deliveries WHERE conversation = $1 "  # noqa: S608 - constants
SLICE_FIRST = _SLICE + "ORDER BY arrival, id LIMIT $2"
SLICE_AFTER = _SLICE + "AND (arrival, id) > ($3, $4) ORDER BY arrival, id LIMIT $2"
SLICE_BEFORE = _SLICE + "AND (arrival, id) < ($3, $4) ORDER BY arrival DESC, id DESC LIMIT $2"
"""A conversation's deliveries in arrival order (Store.conversation_slice): a range of the index
deliveries_conversation (conversation, arrival, id), read from where the slice starts (the row comparison is the
index's own order), never counted from the conversation's first message."""
SLICE_LAST = (f"SELECT {ROW_COLUMNS}, arrival, (SELECT stored FROM conversations WHERE id = $1) "  # noqa: S608
              "FROM deliveries WHERE conversation = $1 ORDER BY arrival DESC, id DESC LIMIT $2")
"""A conversation's last deliveries: the same index read from its end, each row with the count the conversation
keeps of its deliveries (`conversations.stored`, migration 0025), read by its primary key in the same statement, so
from the same snapshot: how many come before the slice, without counting them."""
_KEY_OR_ID = "(key = ANY($1::text[]) OR id = ANY($1::text[]))"
"""A conversation looked up by any form of an operator's key or id (rows.lookups)."""
SLICE_PROBE = {op: "SELECT 1 FROM deliveries WHERE conversation = $1 "  # noqa: S608 - constants
                   f"AND (arrival, id) {op} ($2, $3) ORDER BY arrival {way}, id {way} LIMIT 1"
               for op, way in (("<", "DESC"), ("<=", "DESC"), (">", "ASC"), (">=", "ASC"))}
"""Whether the conversation has a delivery before (or after) a place (a row, or none): the one next to it in the
same index. Not an EXISTS, whose order the planner drops: for a place with many rows on that side it would read
the table from its start instead."""
CHANNEL = "ticketbridge_work"
LISTEN_CHECK_SECONDS = 5.0
ACQUIRE_TIMEOUT = 10.0
"""Seconds a request waits for a pooled connection (all in use, or the server slow to accept a new one)."""
CHECK_TIMEOUT = 5.0
MAX_GROUPS = 2
LARGE_ACCEPT_BYTES = 1 << 20
"""An accept that weighs more than this (Store.accept's `weight`: about what its event and deliveries encode to) is
heavy: encoded in the parser thread, its long strings a piece at a time (PostgresStore.accept). Below it, the loop
encodes it at once (about 1 ms per MiB), with no hand-off to pay."""
UNICODE_ENCODINGS = ("UTF8", "SQL_ASCII")
"""Server encodings that keep any text sent (SQL_ASCII keeps the bytes as they come, converting nothing)."""
DB_NOW_MS = "(extract(epoch from clock_timestamp()) * 1000)::bigint"
"""The database's clock, in ms: what leases are set and reaped by (`lease_until`), one clock for every process
whatever their hosts' clocks say, as the gates' (pg_coordination)."""
CLAIM = (f"UPDATE deliveries x SET status = 'in_flight', lease_owner = $1, lease_until = {DB_NOW_MS} + $2, "  # noqa: S608
         "updated_at = $3, lease_token = $6 "
         "FROM (SELECT id FROM deliveries d WHERE status = 'pending' AND queued = 0 AND destination = $4 "
         f"AND next_attempt_at <= $3 AND {HEAD_OF_CONVERSATION} ORDER BY next_attempt_at, id LIMIT $5 "
         "FOR UPDATE SKIP LOCKED) due "
         f"WHERE x.id = due.id RETURNING x.id, x.event_id, x.mapping, x.destination, x.action, "
         f"{at_most('x.body', '$7')}, x.options, x.tries, x.attempts, x.next_attempt_at, x.conversation, "
         "x.in_doubt_since, x.role, octet_length(x.body)")
NEXT_DUE = ("SELECT next_attempt_at FROM deliveries d WHERE status = 'pending' AND queued = 0 "  # noqa: S608
            f"AND destination = $1 AND {HEAD_OF_CONVERSATION} ORDER BY next_attempt_at LIMIT 1")
"""A claim: a destination's due heads of conversations (and deliveries outside any), read from deliveries_due's entries
with `queued = 0` (migration 0028), so that the deliveries queued behind an earlier one of their conversation, a
conversation's backlog, are not walked; then, when none is due, when the first will be."""
TOKEN_BLOCK = 1024
"""How many claim tokens (`Claimed.token`) a process takes at a time: each value v of the sequence lease_tokens
(migration 0023) stands for the tokens v * TOKEN_BLOCK to v * TOKEN_BLOCK + TOKEN_BLOCK - 1, which the process
gives its claims in turn. So no two claims, of any process, are given one token, and a claim asks the sequence
(within its own transaction) once in TOKEN_BLOCK claims, not in a round trip of its own each time. Never to be
changed: processes of different versions share the sequence, and a block of one size could overlap another's."""
__all__ = ["NONCE_SWEEP", "NONCE_SWEEP_EVERY", "PostgresStore", "channel_for", "split_schema"]
T = TypeVar("T")


def group_slots(pool_max: int) -> int:
    """How many accept groups, and as many record groups, a process writes at once: up to MAX_GROUPS each, half
    the pool. With both busy and a pool of 2-3 they can hold every connection, and claims wait for one."""
    return max(1, min(MAX_GROUPS, pool_max // 2))


def channel_for(schema: str | None) -> str:
    """The NOTIFY channel of the deployment whose tables are in `schema` (an identifier: at most 63 bytes)."""
    if schema is None:
        return CHANNEL
    name = f"{CHANNEL}.{schema}"
    return name if len(name) <= 63 else f"{CHANNEL}.{hashlib.sha256(schema.encode()).hexdigest()[:24]}"


class PostgresStore(Store):
    def __init__(self, dsn: str, *, schema: str | None = None, min_size: int = 2, max_size: int = 10,
                 group_commit_max: int = 512) -> None:
        self.dsn = dsn
        self.schema = schema
        self.channel = channel_for(schema)
        self.min_size = min_size
        self.max_size = max_size
        self.batcher = AcceptBatcher(self._store_group, group_commit_max, concurrent=group_slots(max_size))
        self.records = RecordBatcher(self._record_group, group_commit_max, concurrent=group_slots(max_size))
        self._lost_listener = asyncio.Event()
        self._pool: Any = None
        self._listener: Any = None
        self._listen_task: asyncio.Task[None] | None = None
        self._callbacks: list[Callable[[str], None]] = []
        self._nonces_recorded = 0
        self._failing: str | None = None
        self._coordination: PgCoordination | None = None
        self.commit_failures = 0
        self._tokens = range(0)
        """The claim tokens this process has taken (TOKEN_BLOCK) and not yet given, in order."""
        self.large_accept_bytes = LARGE_ACCEPT_BYTES

    # -- life cycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        if asyncpg is None:
            raise StoreUnavailable(
                "a postgresql:// store needs the asyncpg package: pip install 'ticketbridge[postgres]'")
        settings = {"application_name": "ticketbridge"}
        try:
            if self.schema is not None:
                conn = await asyncpg.connect(self.dsn)
                try:
                    # IF NOT EXISTS is not safe against a concurrent create (processes starting together
                    # both see no schema, one fails on the catalogue's unique index): take turns.
                    async with conn.transaction():
                        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('ticketbridge.schema'))")
                        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                finally:
                    await conn.close()
                settings["search_path"] = self.schema
            self._pool = await asyncpg.create_pool(self.dsn, min_size=self.min_size, max_size=self.max_size,
                                                   server_settings=settings, init=_warm,
                                                   reset=_nothing_to_reset)
            self.encoding = str(await self._pool.fetchval("SHOW server_encoding"))
            await self._migrate()
            await self._warm_pool()
        except DB_ERRORS as exc:
            await self.close()
            raise StoreUnavailable(f"postgresql: {exc}") from exc

    async def unheld(self, texts: Iterable[str]) -> list[str]:
        """Those of `texts` the database's encoding has no equivalent for (a character outside LATIN1 in a LATIN1
        database), each asked of the server as a value it would keep: none in a UTF-8 database, nor in a SQL_ASCII
        one (which keeps the bytes as sent); every server encoding holds ASCII, so only other texts are asked."""
        if self.encoding in UNICODE_ENCODINGS:
            return []
        out = []
        for text in sorted({t for t in texts if not t.isascii()}):
            async def ask(conn: Any, text: str = text) -> None:
                await conn.fetchval("SELECT $1::text", text)

            try:
                await self._run(ask, transaction=False)
            except StoreRefused:
                out.append(text)
        return out

    async def _migrate(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            # Processes starting together migrate one at a time.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('ticketbridge.migrate'))")
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                               "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)")
            done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            folder = resources.files("bridge.store.sql.postgres")
            for name in sorted(f.name for f in folder.iterdir() if f.name.endswith(".sql")):
                version = int(name.split("_", 1)[0])
                if version in done:
                    continue
                await conn.execute(folder.joinpath(name).read_text(encoding="utf-8"))
                await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2, $3)", version, name, now_ms())
                if done:  # an earlier version's schema, upgraded (a new one is made, not migrated)
                    self.migrated = (*self.migrated, name)
                log.info("store.migrated", version=version, name=name)

    async def _warm_pool(self) -> None:
        """Prepare the intake statements on the connections opened before the tables existed (later ones are
        warmed as they open), so that no request pays for a new server process's first look at the tables."""
        async def warm(conn: Any) -> None:
            await _warm(conn)

        await asyncio.gather(*(self._run(warm, transaction=False) for _ in range(self.min_size)))

    async def close(self) -> None:
        await self.batcher.close()
        await self.records.close()
        if self._listen_task is not None:
            self._listen_task.cancel()
            await asyncio.gather(self._listen_task, return_exceptions=True)
            self._listen_task = None
        await self._drop_listener()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 10)

    async def _run(self, fn: Callable[[Any], Awaitable[T]], *, transaction: bool = True,
                   autocommit: bool = False, again: str | None = None) -> T:
        """Run `fn(connection)`, in a transaction; driver and connection errors become StoreUnavailable.
        `autocommit`: `fn` writes with statements that each commit by themselves (one statement, which needs no
        BEGIN and COMMIT of its own, or transactions it opens), its failures the store's as a transaction's are.
        `again` (what `fn` does, for the log): a transaction that one of its statements deadlocked in (40P01: the
        server rolled it back whole) is run again from its start (`store.deadlock_retried`), up to DEADLOCK_RUNS runs
        in all, which only a transaction that answers nobody until it commits, and whose next run finds what the
        first would have (a replay, a purge's batch), may be; a deadlock in its last run fails it as any other error
        does."""
        if self._pool is None:
            raise StoreUnavailable("the store is closed")
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                if not transaction:
                    return await fn(conn)
                if autocommit:
                    out = await fn(conn)
                else:
                    out = await self._deadlock_runs(conn, fn, again)
        except DB_ERRORS as exc:
            if refused(exc):  # the data's problem: the store is not failing, and a retry would meet it again
                raise refusal(exc) from exc
            if transaction:
                await self._failed(exc)
            raise StoreUnavailable(f"postgresql: {_describe(exc)}") from exc
        self._succeeded()
        return out

    @staticmethod
    async def _deadlock_runs(conn: Any, fn: Callable[[Any], Awaitable[T]], again: str | None) -> T:
        """`fn(conn)` in a transaction; with `again`, run from its start while a statement deadlocks, up to
        DEADLOCK_RUNS runs in all (the last run's deadlock propagates)."""
        run = 1
        while True:
            try:
                async with conn.transaction():
                    return await fn(conn)
            except DB_ERRORS as exc:
                if again is None or not deadlocked(exc) or run == DEADLOCK_RUNS:
                    raise
                log.warning("store.deadlock_retried", write=again, run=run,
                            note="a statement deadlocked with another transaction: it was rolled back and is run "
                                 f"again from its start; a deadlock in its run {DEADLOCK_RUNS} fails it")
                run += 1

    async def _failed(self, exc: BaseException, count: int = 1) -> None:
        self.commit_failures += count
        if lost_connection(exc) and self._pool is not None:
            # A connection the server dropped rarely goes alone (a restart, a fail-over, an operator ending the
            # app's sessions): open new ones rather than find each dead one with a failed request.
            await self._pool.expire_connections()
        if self._failing is None:
            log.error("store.failing", error=_describe(exc), note="/readyz answers 503 until a commit succeeds again")
        self._failing = _describe(exc)

    def _cut_off_only(self, failed: Sequence[BaseException], written: bool) -> bool:
        """Whether a group's failures are only items a statement timeout cut off while others of it were written:
        those items' own slowness (a row another transaction holds locked), not the store's. They are counted
        (`commit_failures`) and logged, and the store is not marked failing: /readyz stays 200, rather than a
        replica being taken out of its load balancer for one locked row."""
        if not written or not all(cut_off(f.__cause__) for f in failed):
            return False
        self.commit_failures += len(failed)
        log.warning("store.items_cut_off", items=len(failed), error=_describe(failed[0].__cause__ or failed[0]),
                    note="items of a group were cut off by a statement timeout while the others were written: they "
                         "fail alone (an accept answered 503, a record retried); the store is not marked failing")
        return True

    def _succeeded(self) -> None:
        if self._failing is not None:
            log.info("store.recovered", failed_commits=self.commit_failures)
            self._failing = None

    async def _store_group(self, group: list[PendingAccept]) -> list[Outcome]:
        """Store a group of accepts on one connection (see pg_batch); its failures are the store's, except an
        accept the database refused for its data (StoreRefused), which is that accept's alone."""
        if self._pool is None:
            raise StoreUnavailable("the store is closed")
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                outcomes = await store_group(conn, group, self.channel, self._sweep_due)
        except DB_ERRORS as exc:
            if refused(exc):  # a group of one, refused for its data
                return [refusal(exc) for _ in group]
            await self._failed(exc, len(group))
            raise StoreUnavailable(f"postgresql: {_describe(exc)}") from exc
        failed = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, StoreRefused)]
        written = any(not isinstance(o, BaseException) for o in outcomes)
        if failed and not self._cut_off_only(failed, written):
            await self._failed(failed[0], len(failed))
        elif written:
            self._succeeded()
        return outcomes

    def _sweep_due(self) -> bool:
        """Whether the nonce being recorded now is one that sweeps expired ones (every NONCE_SWEEP_EVERY-th)."""
        due = self._nonces_recorded % NONCE_SWEEP_EVERY == 0
        self._nonces_recorded += 1
        return due

    def problem(self) -> StoreProblem | None:
        if self._failing is not None:
            return StoreProblem(kind="failing", reason=f"commits fail: {self._failing}")
        return None

    async def check(self) -> StoreProblem | None:
        """The server is asked now: a store seen failing is tried with a write that changes nothing (which clears
        it once it commits), a working one with a query on a pooled connection (a server that went away, or a
        pool whose connections were all dropped, shows here before a request finds out)."""
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._run(_touch if self._failing is not None else _ping), CHECK_TIMEOUT)
            except StoreUnavailable:
                pass
            except TimeoutError as exc:
                await self._failed(exc)
        return self.problem()

    async def ping(self) -> None:
        """A query on a pooled connection (as `check` asks a working store). Raises StoreUnavailable."""
        await self._run(_ping)

    # -- wake-ups across processes ----------------------------------------------------------------

    async def subscribe(self, callback: Callable[[str], None]) -> None:
        self._callbacks.append(callback)
        if self._listen_task is None:
            await self._listen()
            self._listen_task = asyncio.create_task(self._keep_listening(), name="postgres listen")

    def _notified(self, _conn: Any, _pid: int, _channel: str, destination: str) -> None:
        for callback in self._callbacks:
            callback(destination)

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.dsn, server_settings={"application_name": "ticketbridge-listen"})
        await conn.add_listener(self.channel, self._notified)
        conn.add_termination_listener(lambda _conn: self._lost_listener.set())
        self._listener = conn

    async def _drop_listener(self) -> None:
        if self._listener is not None:
            conn, self._listener = self._listener, None
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def _keep_listening(self) -> None:
        """Reconnect the listening connection as soon as it is lost (checked every LISTEN_CHECK_SECONDS too)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost_listener.wait(), LISTEN_CHECK_SECONDS)
            self._lost_listener.clear()
            if self._listener is not None and not self._listener.is_closed():
                continue
            await self._drop_listener()
            try:
                await self._listen()
                log.info("store.listen_reconnected")
                for callback in self._callbacks:  # whatever was announced meanwhile was missed
                    callback("*")
            except DB_ERRORS as exc:
                log.warning("store.listen_failed", error=_describe(exc))

    # -- intake -----------------------------------------------------------------------------------

    async def accept(self, event: Event, deliveries: list[NewDelivery], dedup_window_s: float,
                     nonce: Nonce | None = None, *, weight: int = 0) -> AcceptResult:
        """An accept weighing more than `large_accept_bytes` (`weight`: a large mail's) is heavy: its event and its
        deliveries' bodies are encoded in the parser thread, their long strings a piece at a time (heavy_accept),
        not on the loop, which encoding a 20 MiB mail at once held about 20 ms (60 MiB: 55 ms). Any other is encoded
        here, with no hand-off: a form post's is a few microseconds."""
        if self._pool is None:
            raise StoreUnavailable("the store is closed")
        if weight > self.large_accept_bytes:
            loop = asyncio.get_running_loop()
            pending = await offload.in_parser(heavy_accept, event, deliveries, dedup_window_s, nonce, loop)
            return await self._heavy(pending)
        return await self.batcher.submit(PendingAccept(event, deliveries, dedup_window_s, nonce))

    async def _heavy(self, pending: PendingAccept) -> AcceptResult:
        """A heavy accept's values longer than pg_pieces.SEND_AT_ONCE_BYTES are staged a piece at a time (a turn of
        the loop each) before it joins a group, whose statement joins them back: bound to it whole, the driver
        copied and sent 60 MiB in one turn of the loop, holding it 125-165 ms. Their pieces are deleted once it is
        answered; not when its caller was cancelled meanwhile, since its group may still read them (a later heavy
        accept deletes them)."""
        large = pending.take_large()
        if not large:
            return await self.batcher.submit(pending)
        owners = [owner for owner, _ in large]
        await self._stage(large)
        large.clear()  # the values are in the server: not kept while the accept waits for its group
        try:
            result = await self.batcher.submit(pending)
        except asyncio.CancelledError:
            raise
        except BaseException:
            await self._unstage(owners)
            raise
        await self._unstage(owners)
        return result

    async def _stage(self, values: list[tuple[str, bytes]]) -> None:
        """Send `values` ((owner, value)) a piece at a time (pg_pieces.stage), committed before the statement that
        joins them (`joined_pieces`) runs: a heavy accept's, a replay's new bodies."""
        async def send(conn: Any) -> None:
            await stage(conn, values)

        await self._run(send, autocommit=True)

    async def _unstage(self, owners: list[str]) -> None:
        """Delete the pieces `owners` staged; a failure is logged (a later heavy accept deletes them), not raised:
        the accept's own outcome stands."""
        async def delete(conn: Any) -> None:
            await unstage(conn, owners)

        try:
            await self._run(delete, transaction=False)
        except StoreUnavailable as exc:
            log.warning("store.pieces_left", owners=len(owners), error=str(exc),
                        note="a heavy accept's staged pieces were not deleted: a later heavy accept deletes them")

    # -- delivery -------------------------------------------------------------------------------

    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> ClaimBatch:
        """An ordinary body comes with the claim's statement, in its one round trip; one longer than
        DECODE_AT_ONCE_BYTES (quoting a large mail's text) is read apart, a piece at a time, and decoded in the parser
        thread (`_with_large_bodies`): returned by the statement, the driver put 40 MiB together and decoded it in
        one turn of the loop, 55 ms."""
        now = now_ms()
        token: int | None = None

        async def op(conn: Any) -> ClaimBatch:
            nonlocal token
            token = await self._token(conn)
            # A conversation's head only (HEAD_OF_CONVERSATION): a process whose snapshot still shows an earlier
            # delivery pending, or one in flight, does not take a later one; two that both see the head
            # pending cannot both lock it (SKIP LOCKED). So one conversation is worked by one sender at a time.
            got = await conn.fetch(CLAIM, owner, int(lease_s * 1000), now, destination, limit, token,
                                   DECODE_AT_ONCE_BYTES)
            if got:
                items = await claimed_items(got, token)
                if large := [r[0] for r in got if r[5] is None and r[13] is not None]:
                    items = await _with_large_bodies(conn, items, large)
                threaded = [i.id for i in items if i.conversation is not None]
                if threaded:
                    found = await conn.fetch(TICKETS_OF_CLAIMED + "(SELECT unnest($1::text[]))", threaded)
                    items = with_tickets(items, found)
                return ClaimBatch(items=items)
            nxt = await conn.fetchval(NEXT_DUE, destination)
            return ClaimBatch(items=[], next_due_ms=nxt)

        try:
            return await self._run(op)
        except StoreUnavailable:
            if token is not None:  # otherwise it failed before its statement was sent: it leased nothing
                await self._give_back_claim(destination, owner, token)
            raise

    async def _token(self, conn: Any) -> int:
        """The next claim's token: the next of those this process has taken, or the first of a block taken now
        from the sequence (TOKEN_BLOCK), on `conn`. Claims that both find none left take a block each, and the
        tokens left are the last block's: none is ever given twice."""
        if not self._tokens:
            start = int(await conn.fetchval("SELECT nextval('lease_tokens')")) * TOKEN_BLOCK
            self._tokens = range(start, start + TOKEN_BLOCK)
        token, self._tokens = self._tokens[0], self._tokens[1:]
        return token

    async def _give_back_claim(self, destination: str, owner: str, token: int) -> None:
        """A claim whose answer was lost (its connection dropped around COMMIT) may have leased rows nobody will
        send: give back, on a fresh connection, the rows leased by exactly that claim (its token, which no other
        claim is given, and its owner), rather than leave them in flight until their lease runs out. When the store
        is still down, the lease's end gives them back."""
        async def op(conn: Any) -> int:
            rows = await conn.fetch(
                "UPDATE deliveries SET status = 'pending', lease_owner = NULL, lease_until = NULL, updated_at = $1 "
                "WHERE status = 'in_flight' AND lease_token = $2 AND lease_owner = $3 RETURNING id",
                now_ms(), token, owner)
            return len(rows)

        try:
            given = await self._run(op)
        except StoreUnavailable as exc:
            log.warning("store.claim_unsettled", destination=destination, error=str(exc),
                        note="deliveries this claim may have leased go back when their lease runs out")
            return
        if given:
            log.warning("store.claim_given_back", destination=destination, count=given)

    async def record(self, result: AttemptResult, *, owner: str | None = None, token: int | None = None) -> None:
        if self._pool is None:
            raise StoreUnavailable("the store is closed")
        await self.records.submit(PendingRecord(result, owner, token))

    async def _record_group(self, group: list[PendingRecord]) -> list[RecordOutcome]:
        """Write a group of attempts' records on one connection (see pg_record); its failures are the store's,
        except a record the database refused for its data (StoreRefused) and a lease not held (LeaseLost,
        NotFound), which are that record's alone."""
        if self._pool is None:
            raise StoreUnavailable("the store is closed")
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                outcomes = await record_group(conn, group)
        except DB_ERRORS as exc:
            if refused(exc):  # a group of one, refused for its data
                raise refusal(exc) from exc
            await self._failed(exc, len(group))
            raise StoreUnavailable(f"postgresql: {_describe(exc)}") from exc
        failed = [o for o in outcomes if isinstance(o, StoreUnavailable) and not isinstance(o, StoreRefused)]
        written = any(o is None for o in outcomes)
        if failed and not self._cut_off_only(failed, written):
            await self._failed(failed[0].__cause__ or failed[0], len(failed))
        elif written:
            self._succeeded()
        return outcomes

    async def release(self, delivery_ids: list[str], *, owner: str | None = None,
                      tokens: Sequence[int] | None = None) -> None:
        if not delivery_ids:
            return
        held = leases(delivery_ids, tokens)

        async def op(conn: Any) -> None:
            # The conditions are checked again on the row as it is once a lock it waited for is let go (READ
            # COMMITTED): a release that waited on a claim of the same owner leaves that claim, its token another.
            await conn.execute(
                "UPDATE deliveries d SET status = 'pending', lease_owner = NULL, lease_until = NULL, "
                "next_attempt_at = LEAST(d.next_attempt_at, $1), updated_at = $1 "
                "FROM unnest($2::text[], $4::bigint[]) AS r (id, token) WHERE d.id = r.id AND d.status = 'in_flight' "
                "AND ($3::text IS NULL OR d.lease_owner = $3) AND (r.token IS NULL OR d.lease_token = r.token)",
                now_ms(), [i for i, _ in held], owner, [t for _, t in held])

        await self._run(op)

    async def extend_leases(self, delivery_ids: list[str], owner: str, lease_s: float,
                            tokens: Sequence[int] | None = None) -> list[str]:
        if not delivery_ids:
            return []
        held = leases(delivery_ids, tokens)

        async def op(conn: Any) -> list[str]:
            rows = await conn.fetch(
                f"UPDATE deliveries d SET lease_until = {DB_NOW_MS} + $1 "  # noqa: S608
                "FROM unnest($2::text[], $4::bigint[]) AS r (id, token) WHERE d.id = r.id AND d.status = 'in_flight' "
                "AND d.lease_owner = $3 AND (r.token IS NULL OR d.lease_token = r.token) RETURNING d.id",
                int(lease_s * 1000), [i for i, _ in held], owner, [t for _, t in held])
            return [r[0] for r in rows]

        return await self._run(op)

    async def release_expired(self) -> int:
        async def op(conn: Any) -> int:
            now = now_ms()
            released = await conn.fetch(
                "UPDATE deliveries SET status = 'pending', lease_owner = NULL, lease_until = NULL, updated_at = $1, "  # noqa: S608
                f"{REAPED_IN_DOUBT} WHERE status = 'in_flight' AND lease_until < {DB_NOW_MS} "
                "RETURNING destination", now)
            for destination in sorted({r[0] for r in released}):
                await conn.execute("SELECT pg_notify($1, $2)", self.channel, destination)
            return len(released)

        return await self._run(op)

    async def take_back(self, instance: str, gone: Callable[[str], bool]) -> int:
        async def owners(conn: Any) -> list[str]:
            rows = await conn.fetch("SELECT DISTINCT lease_owner FROM deliveries WHERE status = 'in_flight' "
                                    "AND starts_with(lease_owner, $1)", instance)
            return [r[0] for r in rows]

        dead = [owner for owner in await self._run(owners) if gone(owner)]
        if not dead:
            return 0

        async def op(conn: Any) -> int:
            # In doubt as a lease reaped is (release_expired): the process that held it may have sent it.
            released = await conn.fetch(
                "UPDATE deliveries SET status = 'pending', lease_owner = NULL, lease_until = NULL, updated_at = $1, "  # noqa: S608
                f"{REAPED_IN_DOUBT} WHERE status = 'in_flight' AND lease_owner = ANY($2::text[]) "
                "RETURNING destination", now_ms(), dead)
            for destination in sorted({r[0] for r in released}):
                await conn.execute("SELECT pg_notify($1, $2)", self.channel, destination)
            return len(released)

        return await self._run(op)

    def coordination(self) -> Coordination:
        if self._coordination is None:
            self._coordination = PgCoordination(self._run)
        return self._coordination

    # -- inspection and replay ------------------------------------------------------------------

    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRow]:
        where: list[str] = []
        args: list[Any] = []
        if flt.status is not None:
            where.append(status_condition(flt.status))
        for column, value in (("destination", flt.destination), ("source", flt.source), ("mapping", flt.mapping)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        if (forms := conversation_forms(flt)) is not None:
            args.extend(forms)
            where.append(f"conversation = ${len(args)}" if len(forms) == 1 else
                         f"conversation IN (${len(args) - 1}, ${len(args)})")
        if flt.before_id is not None:
            args.append(flt.before_id)
            where.append(f"id < ${len(args)}")
        sql = f"SELECT {ROW_COLUMNS} FROM deliveries"  # noqa: S608 - columns are constants, values bound
        if where:
            sql += " WHERE " + " AND ".join(where)
        args.append(flt.limit)
        sql += f" ORDER BY id DESC LIMIT ${len(args)}"

        async def op(conn: Any) -> list[DeliveryRow]:
            return [delivery_row(r) for r in await conn.fetch(sql, *args)]

        return await self._run(op, transaction=False)

    async def get_delivery(self, delivery_id: str) -> DeliveryDetail:
        """Its body and its event, when longer than DECODE_AT_ONCE_BYTES (a large mail's, a body quoting its text),
        are read a piece at a time and decoded in the parser thread, as `get_event` reads an event: read whole, the
        driver held the loop 80 ms for a 60 MiB event and a 20 MiB body."""
        async def op(conn: Any) -> tuple[Any, bytes | list[bytes] | None, bytes | list[bytes] | None,
                                         list[AttemptRow]]:
            r = await conn.fetchrow(f"SELECT {ROW_COLUMNS}, {at_most('body', '$2')}, options, "  # noqa: S608
                                    "octet_length(body) FROM deliveries WHERE id = $1", delivery_id,
                                    DECODE_AT_ONCE_BYTES)
            if r is None:
                raise NotFound(f"no delivery {named(delivery_id)}")
            body = r[ROW_WIDTH]
            if body is None and r[ROW_WIDTH + 2] is not None:
                body = await read_pieces(conn, delivery_id, BODY)
            event = await _event_data(conn, r[1])
            attempts = [attempt_row(a) for a in await conn.fetch(
                f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id = $1 ORDER BY n",  # noqa: S608
                delivery_id)]
            return r, body, event, attempts

        r, body, event, attempts = await self._run(op)
        if event is None:
            raise NotFound(f"no event {named(r[1])} for delivery {named(delivery_id)}")
        return DeliveryDetail(delivery=delivery_row(r),
                              body=await _decoded(body, decode_dict) if body is not None else None,
                              options=decode_dict(r[ROW_WIDTH + 1]), event=await _decoded(event, decode_event),
                              attempts=attempts)

    async def get_event(self, event_id: str) -> Event:
        """A large event (a large mail's, read back for each of its thread's follow-ups) is read as rows of a piece
        each (pg_pieces.read_pieces: read as one value, the driver put 60 MiB together and decoded it in one turn of
        the loop, 50-80 ms), then joined and decoded in the parser thread, a long string a piece at a time
        (pieces.decode_in_pieces: at once on the loop, 60 MiB held it 65 ms). A small one is read in one round trip
        and decoded here."""
        async def op(conn: Any) -> bytes | list[bytes]:
            data = await _event_data(conn, event_id)
            if data is None:
                raise NotFound(f"no event {named(event_id)}")
            return data

        return await _decoded(await self._run(op, transaction=False), decode_event)

    async def replay(
        self, delivery_ids: list[str], bodies: dict[str, tuple[dict[str, Any], str]] | None = None,
        mapping: str | None = None,
    ) -> list[str]:
        """New bodies are encoded in the parser thread, their long strings a piece at a time, and one longer than
        SEND_AT_ONCE_BYTES (quoting a large mail's text) is staged as a heavy accept's is (pg_pieces.stage), its
        UPDATE joining the pieces in the server: encoded and bound whole on the loop, a 20 MiB body held it 48 ms."""
        new = bodies or {}
        renamed = storable(mapping) if mapping else None
        encoded = await offload.in_parser(_encoded_bodies, new) if new else {}
        owners = {i: f"replay.{secrets.token_hex(8)}.{i}" for i, data in encoded.items()
                  if len(data) > SEND_AT_ONCE_BYTES}

        async def op(conn: Any) -> list[str]:
            now = now_ms()
            moved: list[str] = []
            # Their rows locked first, in the order of their ids, as a purge locks an event's deliveries: updated in
            # the order given (newest first), a replay and a purge waiting on each other's rows deadlocked.
            await conn.execute("SELECT 1 FROM deliveries WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
                               delivery_ids)
            for i in delivery_ids:
                if i in new:
                    got = await conn.fetchrow(REPLAY_RERENDERED, now, encoded[i], new[i][1], i, renamed,
                                              owners.get(i, ""))
                else:
                    got = await conn.fetchrow(
                        "UPDATE deliveries SET status = 'pending', tries = 0, next_attempt_at = $1, updated_at = $1, "
                        "last_error = NULL, in_doubt_since = NULL WHERE id = $2 AND status IN ('succeeded', 'dead') "
                        "AND body IS NOT NULL "
                        "RETURNING destination", now, i)
                if got is not None:
                    moved.append(i)
                    await conn.execute("SELECT pg_notify($1, $2)", self.channel, got[0])
            return moved

        try:
            if owners:
                await self._stage([(owners[i], encoded[i]) for i in owners])
                for i in owners:
                    encoded[i] = STAGED
            return await self._run(op, again="replay")
        finally:  # staged or not, moved or not: what was staged is deleted
            if owners:
                await self._unstage(list(owners.values()))

    async def mark_succeeded(self, delivery_id: str, attempt: AttemptResult) -> bool:
        r = storable_result(attempt)

        async def op(conn: Any) -> bool:
            now = now_ms()
            row = await conn.fetchrow(
                "UPDATE deliveries SET status = 'succeeded', attempts = attempts + 1, updated_at = $1, "
                "last_error = $2, ticket_id = $3, ticket_key = COALESCE($4, ticket_key), in_doubt_since = NULL, "
                "ticket_uuid = COALESCE($6, ticket_uuid), ticket_missing = false WHERE id = $5 "
                "AND status IN ('pending', 'dead') "
                "RETURNING attempts, conversation, role, destination",
                now, r.error, r.ticket_id, r.ticket_key, delivery_id, r.ticket_uuid)
            if row is None:
                if await conn.fetchval("SELECT 1 FROM deliveries WHERE id = $1", delivery_id) is None:
                    raise NotFound(f"no delivery {named(delivery_id)}")
                return False
            n, conversation, role, destination = row
            await conn.execute("INSERT INTO attempts (delivery_id, n, started_at, duration_ms, http_status, "
                               "response_excerpt, classification, error, exchange) "
                               "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", delivery_id, n, r.started_at_ms, 0.0,
                               None, None, r.classification, r.error, None)
            if conversation is not None and role != "follow_up":
                await conn.execute("UPDATE conversations SET ticket_id = $1, ticket_key = $2, ticket_at = $3, "
                                   "ticket_uuid = $5 WHERE id = $4 AND ticket_id IS NULL", r.ticket_id, r.ticket_key,
                                   now, conversation, r.ticket_uuid)
                await conn.execute("SELECT pg_notify($1, $2)", self.channel, destination)
            return True

        done: bool = await self._run(op)
        return done

    async def set_ticket(self, delivery_id: str, attempt: AttemptResult) -> str | None:
        r = storable_result(attempt)

        async def op(conn: Any) -> str | None:
            # The delivery, then its conversation, locked in the order a record, a mark_succeeded and a purge take
            # them; the conversation's lock keeps an accept from adding a message to it until this commits.
            found = await conn.fetchrow(f"SELECT {TICKET_TARGET_COLUMNS} FROM deliveries "  # noqa: S608 - constants
                                        "WHERE id = $1 FOR UPDATE", delivery_id)
            if found is None:
                raise NotFound(f"no delivery {named(delivery_id)}")
            d = ticket_target(found)
            c, busy = None, None
            if d.conversation is not None:
                got = await conn.fetchrow(f"SELECT {CONVERSATION_COLUMNS} FROM conversations "  # noqa: S608
                                          "WHERE id = $1 FOR NO KEY UPDATE", d.conversation)
                c = None if got is None else conversation_row(got)
                busy = await self._busy_in(conn, d.conversation)
            why_not = ticket_refusal(d, c, busy)
            if why_not is not None:
                return why_not
            now = now_ms()
            # A key or uuid the answer gave beside an id that was dropped is kept unless one is given.
            n, key, uuid = await conn.fetchrow(
                "UPDATE deliveries SET attempts = attempts + 1, updated_at = $1, last_error = $2, ticket_id = $3, "
                "ticket_key = COALESCE($4, ticket_key), ticket_uuid = COALESCE($5, ticket_uuid), "
                "ticket_missing = false WHERE id = $6 RETURNING attempts, ticket_key, ticket_uuid",
                now, r.error, r.ticket_id, r.ticket_key, r.ticket_uuid, delivery_id)
            await conn.execute("INSERT INTO attempts (delivery_id, n, started_at, duration_ms, http_status, "
                               "response_excerpt, classification, error, exchange) "
                               "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", delivery_id, n, r.started_at_ms, 0.0,
                               None, None, r.classification, r.error, None)
            if c is not None:
                await conn.execute("UPDATE conversations SET ticket_id = $1, ticket_key = $2, ticket_uuid = $3, "
                                   "ticket_at = $4 WHERE id = $5", r.ticket_id, key, uuid, now, c.id)
                await conn.execute("SELECT pg_notify($1, $2)", self.channel, d.destination)
            return None

        why_not: str | None = await self._run(op)
        return why_not

    @staticmethod
    async def _busy_in(conn: Any, conversation: str) -> tuple[str, bool] | None:
        """A delivery of `conversation` (whose row the caller has locked) that is being sent or claimed now (its id,
        False), else one pending whose earlier send's outcome is unknown (its id, True), else None
        (`rows.ticket_refusal`); the conversation's other unsettled deliveries are left locked, so that no claim
        takes one (as a create, the conversation having no ticket) until the caller commits. Locked with SKIP
        LOCKED: a record holding one of them waits for the conversation's lock, and waiting for its row in turn
        would deadlock; one locked by another is counted busy (a claim in progress, or a record about to write)."""
        locked = {row[0] for row in await conn.fetch(
            "SELECT id FROM deliveries WHERE conversation = $1 AND status = 'pending' FOR UPDATE SKIP LOCKED",
            conversation)}
        doubt = None
        for i, status, in_doubt in await conn.fetch(
                "SELECT id, status, in_doubt_since IS NOT NULL FROM deliveries WHERE conversation = $1 "
                "AND status IN ('pending', 'in_flight') ORDER BY id", conversation):
            if status == "in_flight" or i not in locked:
                return str(i), False
            if in_doubt and doubt is None:
                doubt = str(i), True
        return doubt

    async def mapping_backlog(self, open_since_ms: dict[str, int]) -> dict[str, dict[str, int]]:
        since = {storable(name): at for name, at in open_since_ms.items()}

        async def op(conn: Any) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for name, at in since.items():
                for status in ("pending", "in_flight", "dead"):  # each through its partial index
                    n = await conn.fetchval(f"SELECT COUNT(*) FROM deliveries WHERE status = '{status}' "  # noqa: S608
                                            "AND mapping = $1", name)
                    if n:
                        out.setdefault(name, {})[status] = n
                n = await conn.fetchval(MAPPING_CONVERSATIONS.format("$1", "$2"), name, at)
                if n:
                    out.setdefault(name, {})["conversations"] = n
            return out

        found: dict[str, dict[str, int]] = await self._run(op, transaction=False)
        return found

    async def mark_dead(self, destination: str, error: str, limit: int) -> int:
        destination, error = storable(destination), storable(error)

        async def op(conn: Any) -> int:
            done = await conn.execute(
                "UPDATE deliveries SET status = 'dead', last_error = $1, updated_at = $2 WHERE id IN "
                "(SELECT id FROM deliveries WHERE destination = $3 AND status = 'pending' ORDER BY id LIMIT $4 "
                "FOR UPDATE SKIP LOCKED)", error, now_ms(), destination, limit)
            return int(done.split()[-1])

        marked: int = await self._run(op)
        return marked

    async def destinations_of(self, delivery_ids: list[str]) -> dict[str, str]:
        asked = {storable(i): i for i in delivery_ids}

        async def op(conn: Any) -> dict[str, str]:
            return {asked[i]: dest for i, dest in await conn.fetch(
                "SELECT id, destination FROM deliveries WHERE id = ANY($1::text[])", list(asked))}

        found: dict[str, str] = await self._run(op, transaction=False)
        return found

    async def counts(self) -> dict[str, dict[str, int]]:
        async def op(conn: Any) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for dest, status, n in await conn.fetch(
                    DELIVERY_COUNTS):
                out.setdefault(dest, {})[status] = n
            return out

        return await self._run(op, transaction=False)

    async def list_unmatched(self, limit: int = 50, before_id: str | None = None) -> list[Event]:
        """An event longer than DECODE_AT_ONCE_BYTES (a large mail's) is read apart, as `get_event` reads it: read
        with the others, the driver held the loop 75 ms for a 60 MiB one. One deleted meanwhile is left out. The
        others, read with the statement, are decoded here with a turn of the loop between them once they pass
        TURN_BYTES (`Turns`): decoded one after another, 40 events just under 1 MiB held it 49-53 ms."""
        async def op(conn: Any) -> list[Any]:
            rows: list[Any] = await conn.fetch(
                f"SELECT id, {at_most('data', '$3')} FROM events WHERE routed = 0 AND id < $1 "  # noqa: S608
                "ORDER BY id DESC LIMIT $2", before_id or "~", limit, DECODE_AT_ONCE_BYTES)
            return rows

        rows = await self._run(op, transaction=False)
        out = []
        turns = Turns()
        while rows:  # from the page's end, each row let go once decoded (see loop_turns)
            event_id, head = rows.pop()
            if head is not None:
                await turns.take(len(head))
                out.append(decode_event(head))
                continue

            async def pieces(conn: Any, event_id: str = event_id) -> list[bytes] | None:
                return await read_pieces(conn, event_id)

            data = await self._run(pieces, transaction=False)
            if data is not None:
                out.append(await _decoded(data, decode_event))
        out.reverse()
        return out

    async def get_conversations(self, key: str, limit: int | None = None) -> list[ConversationDetail]:
        forms = list(lookups(key))

        async def op(conn: Any) -> list[ConversationDetail]:
            out = []
            for c in await conn.fetch(f"SELECT {CONVERSATION_COLUMNS} FROM conversations "  # noqa: S608 - constants
                                      f"WHERE {_KEY_OR_ID} ORDER BY id", forms):
                rows = [delivery_row(r) for r in await conn.fetch(
                    f"SELECT {ROW_COLUMNS} FROM deliveries WHERE conversation = $1 ORDER BY arrival, id "  # noqa: S608
                    "LIMIT $2", c[0], limit)]
                out.append(ConversationDetail(conversation=conversation_row(c), deliveries=rows))
            return out

        return await self._run(op, transaction=False)

    async def conversation_slice(self, conversation: str, limit: int, *, after: Arrival | None = None,
                                 before: Arrival | None = None, last: bool = False) -> ConversationSlice:
        conversation = storable(conversation)
        if last:
            async def tail(conn: Any) -> ConversationSlice:
                return last_slice(await conn.fetch(SLICE_LAST, conversation, limit + 1), limit)

            return await self._run(tail, transaction=False)
        place = after or before
        statement = SLICE_FIRST if place is None else SLICE_AFTER if after is not None else SLICE_BEFORE
        args: tuple[Any, ...] = (conversation, limit + 1) + (() if place is None else (place[0], storable(place[1])))

        async def op(conn: Any) -> ConversationSlice:
            async def probe(op: str, at: Arrival) -> bool:
                return await conn.fetchval(SLICE_PROBE[op], conversation, at[0], at[1]) is not None

            found = await conn.fetch(statement, *args)
            rows = found[:limit]
            if before is not None:
                rows.reverse()
            arrivals = [(r[ROW_WIDTH], r[0]) for r in rows]
            if before is not None:
                earlier = len(found) > limit
                later = await probe(">", arrivals[-1]) if rows else await probe(">=", before)
            else:
                later = len(found) > limit
                earlier = after is not None and (await probe("<", arrivals[0]) if rows else await probe("<=", after))
            return ConversationSlice(deliveries=[delivery_row(r) for r in rows], arrivals=arrivals, earlier=earlier,
                                     later=later)

        return await self._run(op, transaction=False)

    async def reset_conversation(self, key: str) -> list[ConversationRow]:
        forms = list(lookups(key))

        async def op(conn: Any) -> list[ConversationRow]:
            found = [conversation_row(c) for c in await conn.fetch(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE {_KEY_OR_ID} "  # noqa: S608
                "ORDER BY id FOR UPDATE", forms)]
            await conn.execute(RESET_CONVERSATION.format(now="$2") + f"WHERE {_KEY_OR_ID}", forms, now_ms())
            return found

        return await self._run(op)

    async def save_mapping_set(self, files: dict[str, str], version: str) -> None:
        data = encode(files)

        async def op(conn: Any) -> None:
            await conn.execute("INSERT INTO mapping_sets (id, version, files, saved_at) VALUES (1, $1, $2, $3) "
                               "ON CONFLICT (id) DO UPDATE SET version = excluded.version, files = excluded.files, "
                               "saved_at = excluded.saved_at", version, data, now_ms())

        await self._run(op)

    async def load_mapping_set(self) -> StoredMappingSet | None:
        async def op(conn: Any) -> StoredMappingSet | None:
            row = await conn.fetchrow("SELECT version, files, saved_at FROM mapping_sets WHERE id = 1")
            if row is None:
                return None
            return StoredMappingSet(files=decode_files(row[1]), version=row[0], saved_at_ms=row[2])

        return await self._run(op, transaction=False)

    # -- retention ------------------------------------------------------------------------------

    async def purge(self, cutoffs: Cutoffs, limit: int, dry_run: bool = False,
                    after: PurgeMark | None = None) -> PurgeCounts:
        """Each batch takes a transaction-scoped advisory lock first (per schema): one process purges at a
        time, and the others learn it at once (`busy`) rather than queueing behind its deletes."""
        if dry_run:
            return await self._run(lambda conn: _count_purgeable(conn, cutoffs), transaction=False)
        mark = after or PurgeMark()

        async def op(conn: Any) -> PurgeCounts:
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || "
                                       "'.ticketbridge.retention'))"):
                return PurgeCounts(after=mark, busy=True)
            out = PurgeCounts(after=mark)
            if cutoffs.events_ms is not None:
                got = await _purge_events(conn, cutoffs, limit, mark.events)
                out.add(got)
                out.more = got.more
                out.after = msgspec.structs.replace(out.after, events=got.after.events)
            if cutoffs.attempts_ms is not None:
                trimmed, more, last = await _trim_attempts(conn, cutoffs.attempts_ms, limit, mark.attempts)
                out.attempts += trimmed
                out.more = out.more or more
                out.after = msgspec.structs.replace(out.after, attempts=last)
            if cutoffs.dedup_ms is not None:
                out.dedup = len(await conn.fetch(
                    "DELETE FROM dedup_keys WHERE ctid = ANY(ARRAY(SELECT ctid FROM dedup_keys WHERE expires_at <= $1 "
                    "LIMIT $2 FOR UPDATE SKIP LOCKED)) AND expires_at <= $1 RETURNING 1", cutoffs.dedup_ms, limit))
                out.more = out.more or out.dedup >= limit
            if cutoffs.conversations_ms is not None:
                looked = await conn.fetch(
                    f"SELECT c.id, {CONVERSATION_GONE.format('$1', '$4')} FROM conversations c "  # noqa: S608
                    "WHERE $2::text IS NULL OR c.id > $2 ORDER BY c.id LIMIT $3",
                    cutoffs.conversations_ms, mark.conversations, limit, cutoffs.tickets_ms)
                gone = [r[0] for r in looked if r[1]]
                if gone:
                    out.conversations = len(await conn.fetch(
                        f"DELETE FROM conversations c WHERE c.id = ANY($2::text[]) AND "  # noqa: S608 - constants
                        f"{CONVERSATION_GONE.format('$1', '$3')} RETURNING 1", cutoffs.conversations_ms, gone,
                        cutoffs.tickets_ms))
                out.more = out.more or len(looked) >= limit
                out.after = msgspec.structs.replace(out.after, conversations=looked[-1][0] if looked
                                                    else mark.conversations)
            return out

        return await self._run(op, again="purge")

    async def attachment_refs(self, received_before_ms: int) -> set[str]:
        """Of an event longer than DECODE_AT_ONCE_BYTES (a large mail's), only the pieces that name an attachment's
        sha256 are read (pg_pieces.hash_pieces), the rest looked through in the server: read whole, the driver held
        the loop 75 ms for a 60 MiB event. The others, read with the page's statement, are looked through here with
        a turn of the loop between them once they pass TURN_BYTES (`Turns`): looked through one after another, a
        page (REFS_PAGE events, each up to DECODE_AT_ONCE_BYTES) held it about 0.5 ms per MiB, 41-44 ms for 100
        events just under 1 MiB. A page's rows, fetched at once, are bounded by their bytes as well (REFS_PAGE_SQL,
        REFS_PAGE_BYTES), each asking for about as many rows as the page before held (`refs_page_rows`); the next
        starts after its last event by (received_at, id), so that each event before the cutoff is looked through
        once, however many share its time."""
        refs: set[str] = set()
        turns = Turns()
        position: tuple[int, str] = (NEVER, "")
        asked = REFS_PAGE
        while True:
            async def page(conn: Any, start: tuple[int, str] = position, limit: int = asked) -> list[Any]:
                rows: list[Any] = await conn.fetch(REFS_PAGE_SQL, received_before_ms, start[0], start[1], limit,
                                                   DECODE_AT_ONCE_BYTES, REFS_PAGE_BYTES)
                return rows

            rows = await self._run(page, transaction=False)
            size = sum(r[2] for r in rows)
            last = len(rows) < asked and size < REFS_PAGE_BYTES
            if not last:
                position = (rows[-1][0], rows[-1][1])
                asked = refs_page_rows(asked, len(rows), size)
            while rows:  # from the page's end, each row let go once looked through (see loop_turns)
                r = rows.pop()
                if r[3] is not None:
                    await turns.take(len(r[3]))
                    refs.update(attachment_hashes(r[3]))
                    continue

                async def named_pieces(conn: Any, event_id: str = r[1]) -> list[bytes]:
                    return await hash_pieces(conn, event_id)

                for piece in await self._run(named_pieces, transaction=False):
                    await turns.take(len(piece))
                    refs.update(attachment_hashes(piece))
            if last:
                return refs

    async def oldest_pending(self) -> dict[str, int]:
        async def op(conn: Any) -> dict[str, int]:
            return {r[0]: r[1] for r in await conn.fetch(OLDEST_UNSETTLED)}

        return await self._run(op, transaction=False)

    async def add_audit(self, entry: AuditEntry) -> None:
        entry = storable_audit(entry)

        async def op(conn: Any) -> None:
            await conn.execute("INSERT INTO audit_log (id, at, actor, action, target, detail) "
                               "VALUES ($1, $2, $3, $4, $5, $6)", entry.id, entry.at_ms, entry.actor, entry.action,
                               entry.target, encode(entry.detail))

        await self._run(op)

    async def list_audit(self, limit: int = 50, before_id: str | None = None) -> list[AuditEntry]:
        async def op(conn: Any) -> list[AuditEntry]:
            # No sentinel past every id ('\uffff'): a database whose encoding lacks it (LATIN1) refuses it.
            rows = await conn.fetch("SELECT id, at, actor, action, target, detail FROM audit_log "
                                    "WHERE $1::text IS NULL OR id < $1 ORDER BY id DESC LIMIT $2", before_id, limit)
            return [audit_entry(r) for r in rows]

        return await self._run(op, transaction=False)


def refs_page_rows(asked: int, kept: int, size: int) -> int:
    """How many events the next page of retention's scan asks PostgreSQL for (REFS_PAGE_SQL's LIMIT), after a page
    that asked for `asked` and kept `kept` events of `size` bytes: twice as many as it kept when its bytes ended it
    (large mails), else twice as many as it asked; REFS_PAGE at most. The statement adds up the lengths of every
    row its LIMIT lets through before the bytes end the page: asking for REFS_PAGE each time, a page of 8 events
    just over 1 MiB read 2,000 rows for them (1.5-1.7 ms a page, 0.16-0.19 asking for twice the page before's)."""
    return min(REFS_PAGE, 2 * (kept if size >= REFS_PAGE_BYTES else asked))


REFS_PAGE_SQL = (
    "SELECT received_at, id, n, CASE WHEN n <= $5 THEN data END FROM (SELECT received_at, id, n, data, "
    "sum(n) OVER (ORDER BY received_at, id ROWS UNBOUNDED PRECEDING) - n AS earlier FROM (SELECT received_at, id, "
    "octet_length(data) AS n, data FROM events WHERE received_at < $1 AND (received_at, id) > ($2, $3) "
    "ORDER BY received_at, id LIMIT $4) AS p) AS w WHERE earlier < $6 ORDER BY received_at, id")
"""A page of retention's attachment scan: the events received before $1 after ($2, $3) by (received_at, id), at most
$4 of them, and ended by the one whose data takes the page's to $6 bytes (REFS_PAGE_BYTES: the rows are fetched at
once), each with its length and its data when that is at most $5 bytes long. The lengths, read from the values'
headers (a TOASTed one is not fetched for it), are added up over the rows in order (`earlier`: those before each);
only the data of the rows kept is fetched."""


REPLAY_RERENDERED = (
    "UPDATE deliveries SET status = 'pending', tries = 0, next_attempt_at = $1, updated_at = $1, "  # noqa: S608
    f"last_error = NULL, in_doubt_since = NULL, body = {joined_pieces('$2::bytea', '$6::text')}, "
    "mapping_version = $3, mapping = COALESCE($5, mapping) WHERE id = $4 AND status IN ('succeeded', 'dead') "
    "RETURNING destination")
"""A replay's move of a delivery with a new body ($2, or STAGED: the pieces staged by the owner $6, joined)."""


async def _event_data(conn: Any, event_id: str) -> bytes | list[bytes] | None:
    """An event's data: whole when it is at most DECODE_AT_ONCE_BYTES long (one round trip), else as pieces
    (pg_pieces.read_pieces); None when there is no such event."""
    row = await conn.fetchrow(READ_HEAD, event_id, DECODE_AT_ONCE_BYTES)
    if row is None:
        return None
    if row[0] is not None:
        return row[0]  # type: ignore[no-any-return]
    return await read_pieces(conn, event_id)


async def _decoded(data: bytes | list[bytes], decode: Callable[[bytes], T]) -> T:
    """`data` decoded: at once here when it is one value (at most DECODE_AT_ONCE_BYTES: about 1 ms), else, as pieces
    (pg_pieces.read_pieces), joined without the GIL held and decoded a long string at a time in the parser thread."""
    if isinstance(data, list):
        return await offload.in_parser(_joined_and_decoded, data, decode)
    return decode(data)


def _joined_and_decoded(pieces: list[bytes], decode: Callable[[bytes], T]) -> T:
    return decode_in_pieces(joined(pieces), decode)


async def _with_large_bodies(conn: Any, items: list[Claimed], large: list[str]) -> list[Claimed]:
    """`items` (just claimed, on `conn`) with the bodies of `large` (whose statement left them out for their length)
    read a piece at a time and decoded in the parser thread; within the claim's transaction, so that a failure or a
    cancellation leases nothing."""
    bodies = {}
    for delivery_id in large:
        pieces = await read_pieces(conn, delivery_id, BODY)
        bodies[delivery_id] = {} if pieces is None else await _decoded(pieces, decode_dict)
    return [msgspec.structs.replace(i, body=bodies[i.id]) if i.id in bodies else i for i in items]


def _encoded_bodies(bodies: dict[str, tuple[dict[str, Any], str]]) -> dict[str, bytes]:
    """A replay's new bodies encoded (in the parser thread), their long strings a piece at a time and joined without
    the GIL (pieces.json_in_pieces)."""
    return {i: json_in_pieces(body, encode) for i, (body, _) in bodies.items()}


async def _trim_attempts(conn: Any, cutoff_ms: int, limit: int, after: tuple[int, str, int] | None,
                         ) -> tuple[int, bool, tuple[int, str, int] | None]:
    """Look at the next `limit` attempts older than the cutoff (after `after`, oldest first) and delete those
    that are not their delivery's latest: (deleted, more to look at, where the scan stopped). Attempts are
    never changed once written, and a newer one only makes an older one deletable: no lock is needed."""
    start_at, start_id, start_n = after or (NEVER, "", 0)
    candidates = await conn.fetch(
        "SELECT a.started_at, a.delivery_id, a.n, a.n < d.attempts FROM attempts a JOIN deliveries d "
        "ON d.id = a.delivery_id WHERE a.started_at < $1 AND (a.started_at, a.delivery_id, a.n) > ($2, $3, $4) "
        "ORDER BY a.started_at, a.delivery_id, a.n LIMIT $5", cutoff_ms, start_at, start_id, start_n, limit)
    gone = [c for c in candidates if c[3]]
    deleted = 0
    if gone:
        deleted = len(await conn.fetch(
            "DELETE FROM attempts WHERE (delivery_id, n) IN (SELECT * FROM unnest($1::text[], $2::int[])) "
            "RETURNING 1", [c[1] for c in gone], [c[2] for c in gone]))
    last = (candidates[-1][0], candidates[-1][1], candidates[-1][2]) if candidates else after
    return deleted, len(candidates) >= limit, last


async def _purge_events(conn: Any, cutoffs: Cutoffs, limit: int, after: tuple[int, str] | None) -> PurgeCounts:
    """Look at the next `limit` events older than the cutoff (after `after`, oldest first) and delete those whose
    deliveries are all settled long enough. Their deliveries are locked and checked again first, so that a
    replay committed meanwhile keeps its event (and a replay waiting on the lock then finds nothing to move)."""
    assert cutoffs.events_ms is not None
    start_at, start_id = after or (NEVER, "")
    candidates = await conn.fetch(
        "SELECT id, received_at FROM events WHERE received_at < $1 AND (received_at, id) > ($2, $3) "
        "ORDER BY received_at, id LIMIT $4", cutoffs.events_ms, start_at, start_id, limit)
    out = PurgeCounts(more=len(candidates) >= limit,
                      after=PurgeMark(events=(candidates[-1][1], candidates[-1][0]) if candidates else after))
    if not candidates:
        return out
    ids = [c[0] for c in candidates]
    keep: set[str] = set()
    for event_id, status, updated_at in await conn.fetch(
            "SELECT event_id, status, updated_at FROM deliveries WHERE event_id = ANY($1::text[]) ORDER BY id "
            "FOR UPDATE", ids):
        if not settled(status, updated_at, cutoffs):
            keep.add(event_id)
    gone = [i for i in ids if i not in keep]
    if gone:
        # Their conversations hold as many fewer (`stored`, migration 0025): locked in the order of their ids, as
        # accepts lock them (pg_batch._lock_conversations), after the deliveries, as a record or mark_succeeded
        # takes its delivery before its conversation. Locked, no accept adds a delivery to them until this commits:
        # a held create something of its conversation waits on (rows.HOLDING_CREATE) is looked for then, and keeps
        # its event.
        await conn.execute(_UNSTORED[0], gone)
        keep = {r[0] for r in await conn.fetch(_HOLDING, gone)}
        gone = [i for i in gone if i not in keep]
    if gone:
        out.attempts = len(await conn.fetch(
            "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ANY($1::text[])) "
            "RETURNING 1", gone))
        for statement in _UNSTORED[1:]:
            await conn.execute(statement, gone)
        out.deliveries = len(await conn.fetch(
            "DELETE FROM deliveries WHERE event_id = ANY($1::text[]) RETURNING 1", gone))
        out.events = len(await conn.fetch("DELETE FROM events WHERE id = ANY($1::text[]) RETURNING 1", gone))
    return out


_UNSTORED = (
    "SELECT 1 FROM conversations WHERE id IN (SELECT conversation FROM deliveries WHERE event_id = ANY($1::text[])) "
    "ORDER BY id FOR NO KEY UPDATE",
    "UPDATE conversations c SET stored = c.stored - g.n FROM (SELECT conversation, count(*)::int AS n FROM deliveries "
    "WHERE event_id = ANY($1::text[]) AND conversation IS NOT NULL GROUP BY conversation) g "
    "WHERE c.id = g.conversation")
"""Before the deliveries of events (`$1`) are deleted: their conversations hold as many fewer."""
_HOLDING = f"SELECT DISTINCT d.event_id FROM deliveries d WHERE d.event_id = ANY($1::text[]) AND {HOLDING_CREATE}"  # noqa: S608
"""Of the events `$1`, those a held create keeps (rows.HOLDING_CREATE)."""


async def _count_purgeable(conn: Any, cutoffs: Cutoffs) -> PurgeCounts:
    """What a purge with these cutoffs would delete, counted without deleting anything."""
    out = PurgeCounts()
    events = cutoffs.events_ms if cutoffs.events_ms is not None else NEVER
    dead = cutoffs.dead_ms if cutoffs.dead_ms is not None else NEVER
    gone = f"SELECT e.id FROM events e WHERE e.received_at < $1 AND NOT {kept_condition('$1', '$2')}"  # noqa: S608
    out.events = await conn.fetchval(f"SELECT COUNT(*) FROM ({gone}) g", events, dead)  # noqa: S608 - constants
    out.deliveries = await conn.fetchval(f"SELECT COUNT(*) FROM deliveries WHERE event_id IN ({gone})",  # noqa: S608
                                         events, dead)
    out.attempts = await conn.fetchval(f"SELECT COUNT(*) FROM attempts a JOIN deliveries dd "  # noqa: S608
                                       f"ON dd.id = a.delivery_id WHERE dd.event_id IN ({gone})", events, dead)
    if cutoffs.attempts_ms is not None:
        out.attempts += await conn.fetchval(
            f"SELECT COUNT(*) FROM attempts a JOIN deliveries dd ON dd.id = a.delivery_id "  # noqa: S608 - constants
            f"WHERE a.started_at < $3 AND a.n < dd.attempts AND dd.event_id NOT IN ({gone})",
            events, dead, cutoffs.attempts_ms)
    if cutoffs.dedup_ms is not None:
        out.dedup = await conn.fetchval("SELECT COUNT(*) FROM dedup_keys WHERE expires_at <= $1", cutoffs.dedup_ms)
    if cutoffs.conversations_ms is not None:
        out.conversations = await conn.fetchval(f"SELECT COUNT(*) FROM conversations c WHERE "  # noqa: S608
                                                f"{CONVERSATION_GONE.format('$1', '$2')}", cutoffs.conversations_ms,
                                                cutoffs.tickets_ms)
    return out


async def _touch(conn: Any) -> None:
    """A write that changes a row without changing anything: it commits only when the server takes writes."""
    await conn.execute("UPDATE schema_migrations SET applied_at = applied_at "
                       "WHERE version = (SELECT MAX(version) FROM schema_migrations)")


async def _warm(conn: Any) -> None:
    """Prepare intake's and delivery's statements on a new connection (see pg_batch.warm_connection)."""
    await warm_connection(conn)
    await warm_records(conn)


async def _nothing_to_reset(_conn: Any) -> None:
    """What a pooled connection needs reset when it is given back, beyond asyncpg's own (a transaction left open is
    rolled back): nothing, since the store leaves no session state on it. It takes no advisory lock but
    transaction-scoped ones, opens no cursor, sets no setting, and listens on a connection of its own (`_listen`);
    asyncpg's default reset (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`) would cost a round trip
    per use."""


async def _ping(conn: Any) -> None:
    await conn.fetchval("SELECT 1")


def _describe(exc: BaseException) -> str:
    """An error's message, or its kind when it has none (a timeout)."""
    return str(exc) or type(exc).__name__
