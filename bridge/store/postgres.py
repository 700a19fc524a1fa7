"""The PostgreSQL store, for several ticketbridge processes sharing one queue.

Each accept is one transaction; PostgreSQL groups the commits of concurrent transactions itself.
Claims take due rows with `FOR UPDATE SKIP LOCKED`, so processes never take the same delivery, and
lease them: a process that dies leaves leases that run out, and `release_expired` (run by every
process's dispatcher) gives that work to the others. New work is announced with NOTIFY inside the
accepting transaction, so every process's idle lane wakes once it is committed; polling remains the
fallback, and the listening connection reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import structlog

from bridge.errors import NotFound, StoreUnavailable
from bridge.events import Event
from bridge.store.base import (
    AcceptResult,
    AttemptResult,
    ClaimBatch,
    ConversationDetail,
    DeliveryDetail,
    DeliveryFilter,
    DeliveryRow,
    NewDelivery,
    Nonce,
    Store,
    StoredMappingSet,
    StoreProblem,
)
from bridge.store.rows import (
    ATTEMPT_COLUMNS,
    CONVERSATION_COLUMNS,
    HEAD_OF_CONVERSATION,
    NEW_DELIVERY_COLUMNS,
    ROW_COLUMNS,
    ROW_WIDTH,
    TICKETS_OF_CLAIMED,
    attempt_row,
    claimed_items,
    conversation_row,
    decode_dict,
    decode_event,
    decode_files,
    delivery_row,
    encode,
    new_delivery_rows,
    now_ms,
    status_condition,
    with_tickets,
)

try:
    import asyncpg
except ImportError:  # pragma: no cover - reported when a postgresql:// store is opened
    asyncpg = None

log = structlog.get_logger("ticketbridge.store")
CHANNEL = "ticketbridge_work"
LISTEN_CHECK_SECONDS = 5.0
NONCE_SWEEP = 32
NONCE_SWEEP_EVERY = 16
"""Every NONCE_SWEEP_EVERY-th nonce a process records deletes up to NONCE_SWEEP expired ones: two per nonce on
average, so the table shrinks back after a burst, in one statement rather than sixteen."""
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
T = TypeVar("T")


def split_schema(dsn: str) -> tuple[str, str | None]:
    """`postgresql://…?schema=name` → (the DSN without it, name): ticketbridge's tables in their own schema."""
    parts = urlsplit(dsn)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    if schema is not None and not _SCHEMA.match(schema):
        raise ValueError(f"schema {schema!r} in the store url must be a lower-case identifier, e.g. ticketbridge")
    return urlunsplit(parts._replace(query=rest)), schema


def work_channel(schema: str | None) -> str:
    """The NOTIFY channel new work is announced on. Channels are shared by the whole database, so each
    schema (each separate queue) has its own; PostgreSQL refuses channel names of 64 bytes or more."""
    if schema is None:
        return CHANNEL
    name = f"{CHANNEL}_{schema}"
    return name if len(name) < 64 else f"{CHANNEL}_{hashlib.sha256(schema.encode()).hexdigest()[:24]}"


class _Replayed(Exception):
    """A nonce held by another request: ends the accepting transaction, which rolls back."""


async def _claim_nonce(conn: Any, source: str, nonce: Nonce, now: int) -> None:
    """Record `nonce` for `source`, or raise _Replayed when another request holds it. A concurrent claim of the
    same nonce waits for this transaction, then sees its row."""
    claimed = await conn.fetchval(
        "INSERT INTO nonces AS n VALUES ($1, $2, $3, $4) ON CONFLICT (source, nonce) DO UPDATE "
        "SET digest = EXCLUDED.digest, expires_at = GREATEST(n.expires_at, EXCLUDED.expires_at) "
        "WHERE n.expires_at <= $5 OR n.digest = EXCLUDED.digest RETURNING 1",
        source, nonce.value, nonce.digest, nonce.expires_at_ms, now)
    if claimed is None:
        raise _Replayed


async def _sweep_nonces(conn: Any, now: int) -> None:
    """Delete up to NONCE_SWEEP expired nonces, oldest first, skipping rows another transaction holds."""
    await conn.execute("DELETE FROM nonces WHERE ctid = ANY(ARRAY(SELECT ctid FROM nonces WHERE expires_at <= $1 "
                       "ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED))", now, NONCE_SWEEP)


class PostgresStore(Store):
    def __init__(self, dsn: str, *, schema: str | None = None, min_size: int = 2, max_size: int = 10) -> None:
        self.dsn = dsn
        self.schema = schema
        self.channel = work_channel(schema)
        self.min_size = min_size
        self.max_size = max_size
        self._pool: Any = None
        self._listener: Any = None
        self._listen_task: asyncio.Task[None] | None = None
        self._callbacks: list[Callable[[str], None]] = []
        self._nonces_recorded = 0
        self._failing: str | None = None
        self.commit_failures = 0

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
                                                   server_settings=settings)
            await self._migrate()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.close()
            raise StoreUnavailable(f"postgresql: {exc}") from exc

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
                log.info("store.migrated", version=version, name=name)

    async def close(self) -> None:
        if self._listen_task is not None:
            self._listen_task.cancel()
            await asyncio.gather(self._listen_task, return_exceptions=True)
            self._listen_task = None
        await self._drop_listener()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.close(), 10)

    async def _run(self, fn: Callable[[Any], Awaitable[T]], *, transaction: bool = True) -> T:
        """Run `fn(connection)`, in a transaction; driver and connection errors become StoreUnavailable."""
        if self._pool is None:
            raise StoreUnavailable("the store is closed")
        try:
            async with self._pool.acquire() as conn:
                if not transaction:
                    return await fn(conn)
                async with conn.transaction():
                    out = await fn(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if transaction:
                self.commit_failures += 1
                if self._failing is None:
                    log.error("store.failing", error=str(exc), note="/readyz answers 503 until a commit succeeds again")
                self._failing = str(exc)
            raise StoreUnavailable(f"postgresql: {exc}") from exc
        if self._failing is not None:
            log.info("store.recovered", failed_commits=self.commit_failures)
            self._failing = None
        return out

    def problem(self) -> StoreProblem | None:
        if self._failing is not None:
            return StoreProblem(kind="failing", reason=f"commits fail: {self._failing}")
        return None

    async def check(self) -> StoreProblem | None:
        """A store seen failing is tried with a write that changes nothing, which clears it once it commits."""
        if self._failing is not None and self._pool is not None:
            with contextlib.suppress(StoreUnavailable):
                await self._run(_touch)
        return self.problem()

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
        self._listener = conn

    async def _drop_listener(self) -> None:
        if self._listener is not None:
            conn, self._listener = self._listener, None
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

    async def _keep_listening(self) -> None:
        while True:
            await asyncio.sleep(LISTEN_CHECK_SECONDS)
            if self._listener is not None and not self._listener.is_closed():
                continue
            await self._drop_listener()
            try:
                await self._listen()
                log.info("store.listen_reconnected")
                for callback in self._callbacks:  # whatever was announced meanwhile was missed
                    callback("*")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("store.listen_failed", error=str(exc))

    # -- intake -----------------------------------------------------------------------------------

    async def accept(self, event: Event, deliveries: list[NewDelivery], dedup_window_s: float,
                     nonce: Nonce | None = None) -> AcceptResult:
        data = encode(event)
        received = int(event.received_at.timestamp() * 1000)
        created = now_ms()
        rows = new_delivery_rows(event, deliveries, created)
        wake = sorted({d.destination for d in deliveries if d.status == "pending"})

        async def op(conn: Any) -> AcceptResult:
            if event.dedup_key is not None:
                # A concurrent insert of the same key waits for this row's transaction, then sees it.
                fresh = await conn.fetchval(
                    "INSERT INTO dedup_keys AS d VALUES ($1, $2, $3, $4) ON CONFLICT (source, key) DO UPDATE "
                    "SET event_id = EXCLUDED.event_id, expires_at = EXCLUDED.expires_at WHERE d.expires_at <= $5 "
                    "RETURNING event_id",
                    event.source, event.dedup_key, event.id, created + int(dedup_window_s * 1000), created)
                if fresh is None:
                    first = await conn.fetchval("SELECT event_id FROM dedup_keys WHERE source = $1 AND key = $2",
                                                event.source, event.dedup_key)
                    return AcceptResult(event_id=first, duplicate=True, deliveries=0)
            if nonce is not None:
                await _claim_nonce(conn, event.source, nonce, created)
                if self._nonces_recorded % NONCE_SWEEP_EVERY == 0:
                    await _sweep_nonces(conn, created)
                self._nonces_recorded += 1
            await conn.execute("INSERT INTO events VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", event.id,
                               event.source, event.kind, event.channel, received, event.dedup_key, event.spam, data,
                               len(rows))
            for d in deliveries:
                if d.conversation is not None:
                    await _join_conversation(conn, d, created)
            if rows:
                await conn.executemany(f"INSERT INTO deliveries ({NEW_DELIVERY_COLUMNS}) "  # noqa: S608 - constants
                                       "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                                       rows)
            for destination in wake:
                await conn.execute("SELECT pg_notify($1, $2)", self.channel, destination)
            return AcceptResult(event_id=event.id, duplicate=False, deliveries=len(rows))

        try:
            return await self._run(op)
        except _Replayed:  # raised inside the transaction, so that its dedup key is rolled back with it
            return AcceptResult(event_id="", duplicate=False, deliveries=0, replayed=True)

    # -- delivery -------------------------------------------------------------------------------

    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> ClaimBatch:
        async def op(conn: Any) -> ClaimBatch:
            now = now_ms()
            # A conversation's head only (HEAD_OF_CONVERSATION): a process whose snapshot still shows an earlier
            # delivery pending, or one in flight, does not take a later one; two that both see the head
            # pending cannot both lock it (SKIP LOCKED). So one conversation is worked by one sender at a time.
            got = await conn.fetch(
                "UPDATE deliveries x SET status = 'in_flight', lease_owner = $1, lease_until = $2, updated_at = $3 "  # noqa: S608
                "FROM (SELECT id FROM deliveries d WHERE status = 'pending' AND destination = $4 "
                f"AND next_attempt_at <= $3 AND {HEAD_OF_CONVERSATION} ORDER BY next_attempt_at, id LIMIT $5 "
                "FOR UPDATE SKIP LOCKED) due "
                "WHERE x.id = due.id RETURNING x.id, x.event_id, x.mapping, x.destination, x.action, x.body, "
                "x.options, x.tries, x.attempts, x.next_attempt_at, x.conversation",
                owner, now + int(lease_s * 1000), now, destination, limit)
            if got:
                items = claimed_items(got)
                threaded = [i.id for i in items if i.conversation is not None]
                if threaded:
                    found = await conn.fetch(TICKETS_OF_CLAIMED + "(SELECT unnest($1::text[]))", threaded)
                    items = with_tickets(items, found)
                return ClaimBatch(items=items)
            nxt = await conn.fetchval("SELECT next_attempt_at FROM deliveries d WHERE status = 'pending' "  # noqa: S608
                                      f"AND destination = $1 AND {HEAD_OF_CONVERSATION} "
                                      "ORDER BY next_attempt_at LIMIT 1", destination)
            return ClaimBatch(items=[], next_due_ms=nxt)

        return await self._run(op)

    async def record(self, result: AttemptResult) -> None:
        r = result

        async def op(conn: Any) -> None:
            n = await conn.fetchval(
                "UPDATE deliveries SET status = $1, attempts = attempts + 1, tries = tries + 1, "
                "next_attempt_at = COALESCE($2, next_attempt_at), lease_owner = NULL, lease_until = NULL, "
                "updated_at = $3, last_error = $4, ticket_id = COALESCE($5, ticket_id), "
                "ticket_key = COALESCE($6, ticket_key) WHERE id = $7 AND status = 'in_flight' RETURNING attempts",
                r.next_status, r.next_attempt_at_ms, now_ms(), r.error, r.ticket_id, r.ticket_key, r.delivery_id)
            if n is None:
                n = await conn.fetchval("UPDATE deliveries SET attempts = attempts + 1 WHERE id = $1 "
                                        "RETURNING attempts", r.delivery_id)
                if n is None:
                    raise NotFound(f"no delivery {r.delivery_id}")
                log.warning("store.record_without_lease", delivery_id=r.delivery_id)
            await conn.execute("INSERT INTO attempts VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", r.delivery_id, n,
                               r.started_at_ms, r.duration_ms, r.http_status, r.response_excerpt, r.classification,
                               r.error)
            if r.role is not None:
                await conn.execute("UPDATE deliveries SET role = $1, action = COALESCE($2, action), "
                                   "body = COALESCE($3, body) WHERE id = $4", r.role, r.action,
                                   None if r.body is None else encode(r.body), r.delivery_id)
                if r.role == "create" and r.next_status == "succeeded" and r.ticket_id is not None:
                    await conn.execute("UPDATE conversations SET ticket_id = $1, ticket_key = $2, ticket_at = $3 "
                                       "WHERE id = (SELECT conversation FROM deliveries WHERE id = $4)",
                                       r.ticket_id, r.ticket_key, now_ms(), r.delivery_id)

        await self._run(op)

    async def release(self, delivery_ids: list[str]) -> None:
        if not delivery_ids:
            return

        async def op(conn: Any) -> None:
            now = now_ms()
            await conn.execute(
                "UPDATE deliveries SET status = 'pending', lease_owner = NULL, lease_until = NULL, "
                "next_attempt_at = LEAST(next_attempt_at, $1), updated_at = $1 "
                "WHERE id = ANY($2::text[]) AND status = 'in_flight'", now, delivery_ids)

        await self._run(op)

    async def extend_leases(self, delivery_ids: list[str], owner: str, lease_s: float) -> int:
        if not delivery_ids:
            return 0

        async def op(conn: Any) -> int:
            rows = await conn.fetch(
                "UPDATE deliveries SET lease_until = $1 WHERE id = ANY($2::text[]) AND status = 'in_flight' "
                "AND lease_owner = $3 RETURNING id", now_ms() + int(lease_s * 1000), delivery_ids, owner)
            return len(rows)

        return await self._run(op)

    async def release_expired(self) -> int:
        async def op(conn: Any) -> int:
            now = now_ms()
            released = await conn.fetch(
                "UPDATE deliveries SET status = 'pending', lease_owner = NULL, lease_until = NULL, updated_at = $1 "
                "WHERE status = 'in_flight' AND lease_until < $1 RETURNING destination", now)
            for destination in sorted({r[0] for r in released}):
                await conn.execute("SELECT pg_notify($1, $2)", self.channel, destination)
            return len(released)

        return await self._run(op)

    # -- inspection and replay ------------------------------------------------------------------

    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRow]:
        where: list[str] = []
        args: list[Any] = []
        if flt.status is not None:
            where.append(status_condition(flt.status))
        for column, value in (("destination", flt.destination), ("source", flt.source), ("mapping", flt.mapping),
                              ("conversation", flt.conversation)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
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
        async def op(conn: Any) -> DeliveryDetail:
            r = await conn.fetchrow(f"SELECT {ROW_COLUMNS}, body, options FROM deliveries WHERE id = $1",  # noqa: S608
                                    delivery_id)
            if r is None:
                raise NotFound(f"no delivery {delivery_id!r}")
            event = await conn.fetchval("SELECT data FROM events WHERE id = $1", r[1])
            attempts = [attempt_row(a) for a in await conn.fetch(
                f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id = $1 ORDER BY n",  # noqa: S608
                delivery_id)]
            body, options = r[ROW_WIDTH], r[ROW_WIDTH + 1]
            return DeliveryDetail(delivery=delivery_row(r), body=decode_dict(body) if body is not None else None,
                                  options=decode_dict(options), event=decode_event(event), attempts=attempts)

        return await self._run(op)

    async def get_event(self, event_id: str) -> Event:
        async def op(conn: Any) -> Event:
            data = await conn.fetchval("SELECT data FROM events WHERE id = $1", event_id)
            if data is None:
                raise NotFound(f"no event {event_id!r}")
            return decode_event(data)

        return await self._run(op, transaction=False)

    async def replay(
        self, delivery_ids: list[str], bodies: dict[str, tuple[dict[str, Any], str]] | None = None,
    ) -> list[str]:
        new = bodies or {}

        async def op(conn: Any) -> list[str]:
            now = now_ms()
            moved: list[str] = []
            for i in delivery_ids:
                if i in new:
                    body, version = new[i]
                    got = await conn.fetchrow(
                        "UPDATE deliveries SET status = 'pending', tries = 0, next_attempt_at = $1, updated_at = $1, "
                        "last_error = NULL, body = $2, mapping_version = $3 "
                        "WHERE id = $4 AND status IN ('succeeded', 'dead') RETURNING destination",
                        now, encode(body), version, i)
                else:
                    got = await conn.fetchrow(
                        "UPDATE deliveries SET status = 'pending', tries = 0, next_attempt_at = $1, updated_at = $1, "
                        "last_error = NULL WHERE id = $2 AND status IN ('succeeded', 'dead') AND body IS NOT NULL "
                        "RETURNING destination", now, i)
                if got is not None:
                    moved.append(i)
                    await conn.execute("SELECT pg_notify($1, $2)", self.channel, got[0])
            return moved

        return await self._run(op)

    async def counts(self) -> dict[str, dict[str, int]]:
        async def op(conn: Any) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for dest, status, n in await conn.fetch(
                    "SELECT destination, status, COUNT(*) FROM deliveries GROUP BY destination, status"):
                out.setdefault(dest, {})[status] = n
            return out

        return await self._run(op, transaction=False)

    async def list_unmatched(self, limit: int = 50, before_id: str | None = None) -> list[Event]:
        async def op(conn: Any) -> list[Event]:
            return [decode_event(r[0]) for r in await conn.fetch(
                "SELECT data FROM events WHERE routed = 0 AND id < $1 ORDER BY id DESC LIMIT $2",
                before_id or "~", limit)]

        return await self._run(op, transaction=False)

    async def get_conversations(self, key: str) -> list[ConversationDetail]:
        async def op(conn: Any) -> list[ConversationDetail]:
            out = []
            for c in await conn.fetch(f"SELECT {CONVERSATION_COLUMNS} FROM conversations "  # noqa: S608 - constants
                                      "WHERE key = $1 OR id = $1 ORDER BY id", key):
                rows = [delivery_row(r) for r in await conn.fetch(
                    f"SELECT {ROW_COLUMNS} FROM deliveries WHERE conversation = $1 ORDER BY id", c[0])]  # noqa: S608
                out.append(ConversationDetail(conversation=conversation_row(c), deliveries=rows))
            return out

        return await self._run(op, transaction=False)

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


async def _join_conversation(conn: Any, d: NewDelivery, now: int) -> None:
    """Count the message in its conversation (one upsert): the first message opens it, and a message after
    the quiet period (`reopen_after`) starts it anew, without a ticket, so that it becomes a create."""
    await conn.execute(
        "INSERT INTO conversations AS c (id, key, mapping, destination, messages, started_at, last_message_at, "
        "ticket_id, ticket_at) VALUES ($1, $2, $3, $4, 1, $5::bigint, $5::bigint, $6::text, "
        "CASE WHEN $6::text IS NULL THEN NULL ELSE $5::bigint END) ON CONFLICT (id) DO UPDATE SET "
        "messages = CASE WHEN $5::bigint - c.last_message_at > $7::bigint THEN 1 ELSE c.messages + 1 END, "
        "started_at = CASE WHEN $5::bigint - c.last_message_at > $7::bigint THEN $5 ELSE c.started_at END, "
        "ticket_id = CASE WHEN $5::bigint - c.last_message_at > $7::bigint THEN $6::text ELSE c.ticket_id END, "
        "ticket_key = CASE WHEN $5::bigint - c.last_message_at > $7::bigint THEN NULL ELSE c.ticket_key END, "
        "ticket_at = CASE WHEN $5::bigint - c.last_message_at > $7::bigint THEN EXCLUDED.ticket_at "
        "ELSE c.ticket_at END, "
        "last_message_at = GREATEST(c.last_message_at, $5)",
        d.conversation, d.conversation_key or d.conversation, d.mapping, d.destination, now, d.known_ticket,
        d.reopen_after_ms)


async def _touch(conn: Any) -> None:
    """A write that changes a row without changing anything: it commits only when the server takes writes."""
    await conn.execute("UPDATE schema_migrations SET applied_at = applied_at "
                       "WHERE version = (SELECT MAX(version) FROM schema_migrations)")
