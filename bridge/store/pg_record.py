"""Attempts' records on PostgreSQL: the records of attempts that finish together share one statement and one commit.

Records are queued (RecordBatcher). A record alone is written as before, by one self-committing statement
(RECORD: the delivery's row under its lease, the attempt, the conversation's ticket). A group is written by one
statement over unnested arrays (RECORDS), which PostgreSQL runs as one transaction: each delivery's row is
updated under its own lease check, each attempt numbered by its row's new count, and each conversation given the
ticket of its group's last create to succeed. The statement returns which records it wrote; every other one (its
lease lost, its delivery missing, or recorded without an owner after its lease was taken back) then takes the
unleased path on its own (`record_unleased`): LeaseLost, NotFound, or the attempt kept alone, as a record alone
would. When the group's statement fails (a value the database refuses, a deadlock with another process, a
`statement_timeout` cutting off a slow or large group), nothing of it was written, and each record is written again
alone on the same connection, under the same lease checks, so that a failure is its own record's and no attempt is
numbered twice (once CUT_OFF_ALONE_MAX records alone were cut off by the timeout too, the rest fail untried); only
a lost connection (whose statement may or may not have committed) fails the group as a whole.
A group closes at `group_commit_max` records or GROUP_BYTES of texts, whichever comes first. Every caller is
answered only once the statement that wrote its record has committed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from bridge.errors import LeaseLost, NotFound, StoreUnavailable
from bridge.store.base import AttemptResult
from bridge.store.pg_batch import (
    DB_ERRORS,
    NOT_YET_MIGRATED,
    GroupBatcher,
    each_alone,
    lost_connection,
    refusal,
    refused,
)
from bridge.store.rows import GROUP_BYTES, doubt_after, encode, gives_ticket, lease_lost, now_ms, storable_result

log = structlog.get_logger("ticketbridge.store")

RECORD = (
    "WITH u AS (UPDATE deliveries SET status = $1, attempts = attempts + 1, tries = tries + $23, "
    "next_attempt_at = COALESCE($2, next_attempt_at), lease_owner = NULL, lease_until = NULL, updated_at = $3, "
    "last_error = $4, ticket_id = COALESCE($5, ticket_id), ticket_key = COALESCE($6, ticket_key), "
    "ticket_uuid = COALESCE($16, ticket_uuid), role = COALESCE($7, role), action = COALESCE($8, action), "
    "body = COALESCE($9, body), in_doubt_since = CASE WHEN $1 = 'succeeded' THEN NULL "
    "WHEN $12::boolean THEN COALESCE(in_doubt_since, $13) ELSE in_doubt_since END, "
    "unknowns = unknowns + $14, duplicates = duplicates + $15, ticket_missing = $25 WHERE id = $10 "
    "AND status = 'in_flight' "
    "AND ($11::text IS NULL OR lease_owner = $11) AND ($24::bigint IS NULL OR lease_token = $24) "
    "RETURNING id, attempts, conversation), "
    "a AS (INSERT INTO attempts (delivery_id, n, started_at, duration_ms, http_status, response_excerpt, "
    "classification, error, exchange) SELECT id, attempts, $13, $17, $18, $19, $20, $4, $21 FROM u), "
    "c AS (UPDATE conversations SET ticket_id = $5, ticket_key = $6, ticket_at = $3, ticket_uuid = $16 "
    "WHERE $22::boolean AND id = (SELECT conversation FROM u)) "
    "SELECT attempts FROM u")
"""An attempt recorded under its lease (its owner's, $11, and its claim's token, $24, when given), in one statement:
the delivery's row, the attempt (numbered by the row's new count), and, when the attempt gives its conversation a
ticket ($22), the conversation's."""

RECORDS = (
    "WITH v AS (SELECT * FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], "
    "$8::text[], $9::bytea[], $10::text[], $11::text[], $12::boolean[], $13::bigint[], $14::int[], $15::int[], "
    "$16::text[], $17::float8[], $18::int[], $19::text[], $20::text[], $21::bytea[], $22::boolean[], "
    "$23::int[], $24::bigint[], $25::boolean[]) WITH ORDINALITY AS v (status, next_at, error, ticket_id, ticket_key, "
    "role, action, body, id, owner, unknown, started, unknowns, duplicates, ticket_uuid, duration, http_status, "
    "excerpt, classification, exchange, gives, tried, token, missing, o)), "
    "u AS (UPDATE deliveries d SET status = v.status, attempts = d.attempts + 1, tries = d.tries + v.tried, "
    "next_attempt_at = COALESCE(v.next_at, d.next_attempt_at), lease_owner = NULL, lease_until = NULL, "
    "updated_at = $1, last_error = v.error, ticket_id = COALESCE(v.ticket_id, d.ticket_id), "
    "ticket_key = COALESCE(v.ticket_key, d.ticket_key), ticket_uuid = COALESCE(v.ticket_uuid, d.ticket_uuid), "
    "role = COALESCE(v.role, d.role), action = COALESCE(v.action, d.action), body = COALESCE(v.body, d.body), "
    "in_doubt_since = CASE WHEN v.status = 'succeeded' THEN NULL "
    "WHEN v.unknown THEN COALESCE(d.in_doubt_since, v.started) ELSE d.in_doubt_since END, "
    "unknowns = d.unknowns + v.unknowns, duplicates = d.duplicates + v.duplicates, ticket_missing = v.missing FROM v "
    "WHERE d.id = v.id AND d.status = 'in_flight' AND (v.owner IS NULL OR d.lease_owner = v.owner) "
    "AND (v.token IS NULL OR d.lease_token = v.token) RETURNING d.id, d.attempts, d.conversation, v.o), "
    "a AS (INSERT INTO attempts (delivery_id, n, started_at, duration_ms, http_status, response_excerpt, "
    "classification, error, exchange) SELECT u.id, u.attempts, v.started, v.duration, v.http_status, v.excerpt, "
    "v.classification, v.error, v.exchange FROM u JOIN v ON v.o = u.o), "
    "c AS (UPDATE conversations x SET ticket_id = t.ticket_id, ticket_key = t.ticket_key, ticket_at = $1, "
    "ticket_uuid = t.ticket_uuid FROM (SELECT DISTINCT ON (u.conversation) u.conversation, v.ticket_id, "
    "v.ticket_key, v.ticket_uuid FROM u JOIN v ON v.o = u.o WHERE v.gives AND u.conversation IS NOT NULL "
    "ORDER BY u.conversation, v.o DESC) t WHERE x.id = t.conversation) "
    "SELECT ARRAY(SELECT o FROM u)")
"""A group of attempts (one element per attempt in each array, from $2, in the order of RECORD's arguments without
its time, $3: see PendingRecord.args; no delivery twice) recorded in one statement, each as RECORD records one; a
conversation given tickets by two creates of the group (which one conversation's single delivery in flight at a
time does not allow) keeps the one with the larger delivery id. Returns the ordinals (from 1) of the attempts
written."""

WIDTH = 24
"""How many values each record gives RECORDS (one array each): RECORD's arguments without its time."""
class PendingRecord:
    """One attempt's record waiting for its group: the values of its statement, encoded before it queues."""

    __slots__ = ("args", "future", "owner", "result", "size", "token")

    def __init__(self, result: AttemptResult, owner: str | None, token: int | None = None) -> None:
        r = storable_result(result)
        role_action, role_body = (r.action, r.body) if r.role is not None else (None, None)
        unknown, duplicates = doubt_after(r)
        self.result = r
        self.owner = owner
        self.token = token
        self.args: tuple[Any, ...] = (
            r.next_status, r.next_attempt_at_ms, r.error, r.ticket_id, r.ticket_key, r.role, role_action,
            None if role_body is None else encode(role_body), r.delivery_id, owner, unknown, r.started_at_ms,
            int(unknown), duplicates, r.ticket_uuid, r.duration_ms, r.http_status, r.response_excerpt,
            r.classification, None if r.exchange is None else encode(r.exchange), gives_ticket(r),
            int(r.uses_try), token, r.ticket_missing)
        """RECORD's arguments without the time ($3), in order."""
        a = self.args
        self.size = len(a[2] or "") + len(a[7] or b"") + len(a[17] or "") + len(a[19] or b"")
        """The texts the record carries, which GROUP_BYTES bounds per group: error and response excerpt (in
        characters: each at most a few kilobytes), the follow-up's encoded body and the encoded exchange (bytes)."""
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()


Outcome = BaseException | None
"""What one record of a group came to: written (None), or the error it alone failed with."""


class RecordBatcher(GroupBatcher[PendingRecord, None]):
    """Queues records and writes them a group at a time (pg_batch.GroupBatcher, without lingering: a record is
    written as soon as a group slot is free), a group closing at `group_max` records or at `group_bytes` of their
    texts, whichever comes first; a record larger than `group_bytes` by itself makes a group of one."""

    def __init__(self, run_group: Callable[[list[PendingRecord]], Awaitable[list[Outcome]]], group_max: int,
                 concurrent: int = 1, group_bytes: int = GROUP_BYTES) -> None:
        super().__init__(run_group, group_max, concurrent=concurrent, linger_below=0, group_bytes=group_bytes)


async def record_group(conn: Any, group: list[PendingRecord]) -> list[Outcome]:
    """Write `group`'s records on `conn`; one outcome per record. A group of one is written as a record alone is, and
    raises its failure; a failure of the connection while the group's statement runs fails the group as a whole."""
    if len(group) == 1:
        await record_one(conn, group[0])
        return [None]
    firsts: dict[str, int] = {}
    for i, item in enumerate(group):
        firsts.setdefault(item.result.delivery_id, i)
    # Sent in the order of the rows' ids; PostgreSQL locks them in the order its plan reaches them, which need not
    # be this one, so a group can deadlock with another statement locking several of its rows (a lease reaped at
    # that moment): the database then fails one, and a failed group is written again record by record.
    together = sorted(firsts.items())
    try:
        written = await conn.fetchval(RECORDS, now_ms(), *_columns([group[i].args for _, i in together]))
    except DB_ERRORS as exc:
        if lost_connection(exc):
            raise
        # Nothing of the group was written: find out whose record it was, each written alone.
        return await each_alone(group, lambda item: _alone(conn, item))
    done = {together[o - 1][1] for o in written}
    out: list[Outcome] = []
    for i, item in enumerate(group):
        if i in done:
            out.append(None)
        elif firsts[item.result.delivery_id] != i:  # a second record of one delivery: after the first, alone
            out.append(await _alone(conn, item))
        else:
            out.append(await _alone(conn, item, unleased=True))
    return out


async def record_one(conn: Any, item: PendingRecord) -> None:
    """One record, by its statement committed by itself (the lease checked by the UPDATE itself, which waits on a
    concurrent change of the row and then checks the condition again), or, when it wrote nothing, the unleased
    path."""
    a = item.args
    updated = await conn.fetchrow(RECORD, a[0], a[1], now_ms(), *a[2:])
    if updated is None:  # nothing was written: the lease is not held, or there is no such delivery
        async with conn.transaction():
            await record_unleased(conn, item.result, item.owner, item.token)


async def _alone(conn: Any, item: PendingRecord, unleased: bool = False) -> Outcome:
    """One record of a group written alone: its failure is its outcome (StoreRefused for a value the database
    refuses, StoreUnavailable caused by the driver's error for another failure)."""
    try:
        if unleased:
            async with conn.transaction():
                await record_unleased(conn, item.result, item.owner, item.token)
        else:
            await record_one(conn, item)
    except (LeaseLost, NotFound) as exc:
        return exc
    except DB_ERRORS as exc:
        if refused(exc):
            return refusal(exc)
        failed = StoreUnavailable(f"postgresql: {str(exc) or type(exc).__name__}")
        failed.__cause__ = exc
        return failed
    return None


async def record_unleased(conn: Any, r: AttemptResult, owner: str | None, token: int | None = None) -> None:
    """An attempt whose delivery is not in flight under `owner`'s lease (by the claim that gave `token`): with an
    owner or a token, LeaseLost (NotFound when there is no such delivery); without either, the attempt is kept and
    the delivery's state left alone."""
    if owner is not None or token is not None:
        if await conn.fetchval("SELECT 1 FROM deliveries WHERE id = $1", r.delivery_id) is None:
            raise NotFound(f"no delivery {r.delivery_id}")
        raise LeaseLost(lease_lost(r.delivery_id, owner, token))
    # Its lease was taken back meanwhile: keep the attempt, leave the state to whoever holds it now.
    n = await conn.fetchval("UPDATE deliveries SET attempts = attempts + 1 WHERE id = $1 "
                            "RETURNING attempts", r.delivery_id)
    if n is None:
        raise NotFound(f"no delivery {r.delivery_id}")
    log.warning("store.record_without_lease", delivery_id=r.delivery_id)
    await conn.execute("INSERT INTO attempts (delivery_id, n, started_at, duration_ms, http_status, "
                       "response_excerpt, classification, error, exchange) "
                       "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", r.delivery_id, n,
                       r.started_at_ms, r.duration_ms, r.http_status, r.response_excerpt, r.classification,
                       r.error, None if r.exchange is None else encode(r.exchange))


async def warm_records(conn: Any) -> None:
    """Prepare the record statements on a new connection (their first preparation reads the tables' catalogue and
    the arrays' types). Before the migrations have brought the tables up to date, nothing to do."""
    with contextlib.suppress(*NOT_YET_MIGRATED):
        await conn.prepare(RECORD)
        await conn.prepare(RECORDS)


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    """Rows as one list per column, for unnest."""
    return [list(c) for c in zip(*rows, strict=True)]
