"""A claim costs the same whatever one conversation's pending backlog: with n or 8n messages waiting in one
conversation behind its head, claiming the head, claiming while the head is in flight (nothing to take: when is the
next due), claiming the next message once the head is sent, and claiming another destination's delivery read as
much.

A conversation's messages are sent one at a time in arrival order, so a claim takes each conversation's head only.
A chat flood from one sender, or an email thread that piled up while its vendor was down (a thread an attacker can
make long on purpose: it is keyed by the sender's headers), holds thousands of pending messages in one
conversation; a claim that walked them paid for the whole backlog on every claim of the destination. On SQLite the
cost is counted in the writer's virtual machine steps (as test_conversation_complexity counts them); on PostgreSQL
the claim's statements are read under EXPLAIN (ANALYZE, BUFFERS), with the planner's plan for the values and the
generic plan a prepared statement falls back to: the due deliveries are read from deliveries_due's entries
with `queued = 0`, never stepping over the queued messages, and the buffers each statement touches do not grow
with the backlog."""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from bridge.store.base import Store
from bridge.store.pieces import DECODE_AT_ONCE_BYTES
from bridge.store.postgres import CLAIM as PG_CLAIM
from bridge.store.postgres import NEXT_DUE as PG_NEXT_DUE
from bridge.store.postgres import ROW_COLUMNS as PG_ROW_COLUMNS
from bridge.store.postgres import TICKETS_OF_CLAIMED as PG_TICKETS_OF_CLAIMED
from bridge.store.postgres import PostgresStore
from bridge.store.rows import NEW_DELIVERY_COLUMNS
from bridge.store.sqlite import SqliteStore
from tests.complexity.test_conversation_complexity import CONVERSATION, KEY, steps
from tests.complexity.test_conversation_paging_complexity import _nodes
from tests.integration.processes import DSN
from tests.integration.store.contract import accept_one, make_delivery, result

pytestmark = pytest.mark.integration

N = 1_000
GROWTH = 8
BOUND = 1.5
"""At most this many times the cost at n waiting messages with 8n: a walk of the backlog is 8x, a look-up by index
adds a level of the B-tree at most."""
OTHER = "lsq-service"


async def backlog(store: Store, waiting: int, *, ticket: bool) -> tuple[str, str]:
    """A conversation whose first message was sent (giving it a ticket, or not: restarted without one, its next
    message is a create), then its head and `waiting` messages behind it, all due; and a delivery of another
    destination. The waiting messages are copies of the head made in one statement, each a row of its own, as an
    accept makes them. Returns (the head's id, the other destination's delivery's id)."""
    first = make_delivery(conversation=CONVERSATION, conversation_key=KEY)
    await accept_one(store, first)
    await store.claim("kapture-support", 1, "w", 60)
    await store.record(msgspec.structs.replace(result(first.id, "succeeded", ticket_id="T-1"), role="create"))
    head = make_delivery(conversation=CONVERSATION, conversation_key=KEY)
    await accept_one(store, head)
    if isinstance(store, SqliteStore):
        conn = store._writer
        assert conn is not None
        copied = ", ".join("'dlv_copy' || i" if c == "id" else c for c in NEW_DELIVERY_COLUMNS.split(", "))
        conn.execute("BEGIN IMMEDIATE")
        # queued behind the head, as the accept's insert stores them on SQLite (a trigger does on PostgreSQL)
        conn.execute(f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                     f"INSERT INTO deliveries ({NEW_DELIVERY_COLUMNS}, queued) SELECT {copied}, 1 FROM n, deliveries "
                     "WHERE deliveries.id = ?", (waiting, head.id))
        conn.execute("UPDATE conversations SET stored = stored + ?, ticket_id = CASE WHEN ? THEN ticket_id END, "
                     "ticket_at = CASE WHEN ? THEN ticket_at END WHERE id = ?",
                     (waiting, ticket, ticket, CONVERSATION))
        conn.execute("COMMIT")
    else:
        assert isinstance(store, PostgresStore)

        async def fill(conn: Any) -> None:
            copied = ", ".join("'dlv_copy' || lpad(i::text, 6, '0')" if c == "id" else c
                               for c in NEW_DELIVERY_COLUMNS.split(", "))
            await conn.execute(f"INSERT INTO deliveries ({NEW_DELIVERY_COLUMNS}) SELECT {copied} FROM "
                               "generate_series(1, $1) AS i, deliveries WHERE deliveries.id = $2", waiting, head.id)
            await conn.execute("UPDATE conversations SET stored = stored + $1, ticket_id = CASE WHEN $2 THEN "
                               "ticket_id END, ticket_at = CASE WHEN $2 THEN ticket_at END WHERE id = $3",
                               waiting, ticket, CONVERSATION)

        await store._run(fill)

        async def vacuum(conn: Any) -> None:
            # The fill's one statement leaves the conversation's row updated 8n times in one transaction (migration
            # 0028's count), 8n dead versions for the next reader to step over; accepts, each committed by itself,
            # leave them to be pruned as they go.
            await conn.execute("VACUUM (ANALYZE) deliveries, conversations")

        await store._run(vacuum, transaction=False)
    other = make_delivery(destination=OTHER)
    await accept_one(store, other)
    return head.id, other.id


async def _claim(store: SqliteStore, destination: str, what: str, counts: dict[str, list[int]]) -> list[Any]:
    """What a claim of `destination` takes, its steps added to counts[what]."""
    counted = steps(store)
    items = (await store.claim(destination, 10, "w", 60)).items
    counts.setdefault(what, []).append(counted())
    return items


@pytest.fixture
async def sqlite_stores(tmp_path: Path) -> AsyncIterator[list[SqliteStore]]:
    opened: list[SqliteStore] = []
    for waiting in (N, GROWTH * N):
        store = SqliteStore(tmp_path / f"backlog-{waiting}.db")
        await store.open()
        opened.append(store)
    yield opened
    for store in opened:
        await store.close()


@pytest.mark.parametrize("ticket", [True, False], ids=["follow-ups", "creates"])
async def test_a_claim_on_sqlite_does_not_read_a_conversations_backlog(sqlite_stores: list[SqliteStore],
                                                                       ticket: bool) -> None:
    """Each claim of the destination, and of another, takes as many steps with 8n messages waiting behind a
    conversation's head as with n, and takes the same deliveries: the head, nothing while it is in flight (the next
    due time none, the conversation's next waiting on it), then the message after it."""
    counts: dict[str, list[int]] = {}
    for store, waiting in zip(sqlite_stores, (N, GROWTH * N), strict=True):
        head, other = await backlog(store, waiting, ticket=ticket)
        (got,) = await _claim(store, "kapture-support", "the head", counts)
        assert got.id == head and (got.ticket is not None) == ticket
        if ticket:
            assert got.ticket is not None and got.ticket["messages"] == 2
        assert [d.id for d in await _claim(store, OTHER, "another destination's", counts)] == [other]
        assert await _claim(store, "kapture-support", "nothing, the head in flight", counts) == []
        await store.record(msgspec.structs.replace(result(head, "succeeded", ticket_id="T-1"), role="create"))
        (nxt,) = await _claim(store, "kapture-support", "the next, the head sent", counts)
        assert nxt.id == "dlv_copy1" and nxt.ticket is not None and nxt.ticket["messages"] == 3
    for what, (small, large) in counts.items():
        assert large <= BOUND * small, (f"claiming {what}: {small} steps with {N} messages waiting, {large} with "
                                        f"{GROWTH * N} ({large / small:.1f}x; at most {BOUND:g}x)")


@pytest.fixture
async def pg_stores() -> AsyncIterator[list[PostgresStore]]:
    try:
        conn = await asyncpg.connect(DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {DSN} is not reachable ({exc})")
    stores: list[PostgresStore] = []
    try:
        for _ in (N, GROWTH * N):
            store = PostgresStore(DSN, schema=f"tb_test_{uuid.uuid4().hex[:12]}")
            stores.append(store)
            await store.open()
        yield stores
    finally:
        for store in stores:
            await store.close()
            await conn.execute(f'DROP SCHEMA IF EXISTS "{store.schema}" CASCADE')
        await conn.close()


def _buffers(node: dict[str, Any]) -> int:
    return int(node.get("Shared Hit Blocks", 0)) + int(node.get("Shared Read Blocks", 0))


async def _explained(conn: Any, statement: str, args: tuple[Any, ...]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The plan, run, of `statement` with `args`, for the values and as the generic plan (`$1`… unknown to the
    planner), each in a transaction rolled back (a claim's update is undone); of two runs, the one that touched fewer
    buffers: a statement's first run over pages just written may set their hint bits or prune them (once: a few
    dozen buffers more, seen in one schema and not the other), where a walk of the backlog reads it every time."""
    first, second = await _explained_once(conn, statement, args), await _explained_once(conn, statement, args)
    return [min(a, b, key=lambda plan: _buffers(plan[1][0])) for a, b in zip(first, second, strict=True)]


async def _explained_once(conn: Any, statement: str,
                          args: tuple[Any, ...]) -> list[tuple[str, list[dict[str, Any]]]]:
    out = []
    for mode in ("for the values", "generic"):
        tx = conn.transaction()
        await tx.start()
        try:
            if mode == "generic":
                await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                await conn.execute(f"PREPARE claiming AS {statement}")
                given = ", ".join("NULL" if a is None else str(a) if isinstance(a, int) else
                                  "ARRAY[" + ", ".join(f"'{x}'" for x in a) + "]" if isinstance(a, list) else f"'{a}'"
                                  for a in args)
                explained = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) EXECUTE claiming({given})")
                await conn.execute("DEALLOCATE claiming")
            else:
                explained = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", *args)
        finally:
            await tx.rollback()
        out.append((mode, _nodes(json.loads(explained)[0]["Plan"])))
    return out


async def _claim_plans(conn: Any, head: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """The plans of the head listed (its `waiting`, while it is pending) and of the claim's statements: claiming the
    head, claiming with the head in flight (the update and the next due time, which find nothing), and the claimed
    head's ticket."""
    now = 4_000_000_000_000
    claim = ("w", 60_000, now, "kapture-support", 10, 1, DECODE_AT_ONCE_BYTES)
    out = [(f"the head listed, whether it waits ({mode})", nodes) for mode, nodes in await _explained(
        conn, f"SELECT {PG_ROW_COLUMNS} FROM deliveries WHERE id = $1", (head,))]
    out += [(f"claiming the head ({mode})", nodes) for mode, nodes in await _explained(conn, PG_CLAIM, claim)]
    await conn.execute("UPDATE deliveries SET status = 'in_flight', lease_owner = 'w', lease_until = $1 "
                       "WHERE id = $2", now, head)  # as the claim does
    out += [(f"claiming with the head in flight ({mode})", nodes)
            for mode, nodes in await _explained(conn, PG_CLAIM, claim)]
    out += [(f"the next due time ({mode})", nodes)
            for mode, nodes in await _explained(conn, PG_NEXT_DUE, ("kapture-support",))]
    out += [(f"the head's ticket ({mode})", nodes) for mode, nodes in await _explained(
        conn, PG_TICKETS_OF_CLAIMED + "(SELECT unnest($1::text[]))", ([head],))]
    return out


async def test_a_claim_on_postgres_does_not_read_a_conversations_backlog(pg_stores: list[PostgresStore]) -> None:
    """The claim's statements (its update, the next due time when nothing is due, the claimed follow-ups' tickets)
    read the due deliveries from deliveries_due's entries with `queued = 0` (not the queued ones), never the table, and
    touch as many buffers with 8n messages waiting behind a conversation's head as with n; so does the listing of
    the head (whether it waits)."""
    measured: dict[str, list[int]] = {}
    for store, waiting in zip(pg_stores, (N, GROWTH * N), strict=True):
        head, _ = await backlog(store, waiting, ticket=True)

        for what, nodes in await store._run(functools.partial(_claim_plans, head=head), transaction=False):
            scans = [n for n in nodes if n.get("Relation Name") == "deliveries" and (n.get("Index Name") in (
                "deliveries_due",) or n["Node Type"] in ("Seq Scan", "Bitmap Heap Scan"))]
            if what.startswith("claiming") or what.startswith("the next due"):
                assert [(n.get("Index Name"), "queued = 0" in n.get("Index Cond", "")) for n in scans] == [
                    ("deliveries_due", True)], (what, [
                    (n["Node Type"], n.get("Relation Name"), n.get("Index Name"), n.get("Parent Relationship"))
                    for n in nodes])
            measured.setdefault(what, []).append(_buffers(nodes[0]))
    for what, (small, large) in measured.items():
        # A statement of a buffer or two (the next due time) may read one more: the queued messages, in
        # deliveries_due beside the heads, give the index one more level at 8n. A walk of them reads 8x.
        assert large <= max(BOUND * small, small + 1), (
            f"{what}: {small} buffers with {N} messages waiting, {large} with {GROWTH * N} "
            f"({large / max(small, 1):.1f}x; at most {BOUND:g}x, or one buffer more)")
