"""A page of a long conversation costs the same at its start, deep in it and at its end: each page is one range read
of the conversation's index from the cursor's place (the last page: from the index's end), never an offset counted
from its first message nor a count of its messages.

A chat kept for the retention window, or a thread that piled up while its vendor was down, holds tens of thousands
of messages. On SQLite the page's cost is counted in the reader's virtual machine steps (as
test_conversation_complexity counts the writer's), and the query plans are read: each page statement searches the
index deliveries_conversation by the conversation and the rowid, with no scan of the table and no sort. On
PostgreSQL the plans are read under EXPLAIN ANALYZE, with the planner's own plan for the values and with the
generic plan a prepared statement falls back to: an index scan of deliveries_conversation bounded by (arrival, id),
no sort, and no more index entries read than the page holds plus the one that says more follow."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bridge.store.postgres import SLICE_AFTER as PG_AFTER
from bridge.store.postgres import SLICE_BEFORE as PG_BEFORE
from bridge.store.postgres import SLICE_FIRST as PG_FIRST
from bridge.store.postgres import SLICE_LAST as PG_LAST
from bridge.store.postgres import SLICE_PROBE as PG_PROBE
from bridge.store.postgres import PostgresStore
from bridge.store.rows import NEW_DELIVERY_COLUMNS
from bridge.store.sqlite import SLICE_AFTER, SLICE_BEFORE, SLICE_FIRST, SLICE_LAST, SLICE_PROBE, SqliteStore
from tests.complexity.test_conversation_complexity import CONVERSATION, KEY, thread
from tests.integration.processes import DSN
from tests.integration.store.contract import accept_one, make_delivery

pytestmark = pytest.mark.integration

HISTORY = 12_000
"""Messages in the conversation: past 10k."""
PAGE = 100
BOUND = 1.5
"""A page deep in the conversation costs at most this many times the first page's steps."""


def _copied(prefix: str, conversation: str) -> str:
    """A SELECT list copying a delivery's row as a settled message of `conversation` (a SQL literal), its id
    `prefix` and the copy's number `i`."""
    given = {"id": f"'{prefix}' || lpad(i::text, 6, '0')", "status": "'succeeded'", "conversation": conversation}
    return ", ".join(given.get(c, c) for c in NEW_DELIVERY_COLUMNS.split(", "))


async def test_a_page_deep_in_a_long_sqlite_conversation_reads_as_little_as_its_first(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "paging.db")
    await store.open()
    try:
        await thread(store, HISTORY, ticket=True)
        other = make_delivery(conversation="m|chat:+15550199", conversation_key="chat:+15550199")
        await accept_one(store, other)  # another conversation after it, and deliveries outside any
        for _ in range(3):
            await accept_one(store, make_delivery())
        reader = store._reader
        assert reader is not None
        places = [tuple(r) for r in reader.execute(
            "SELECT rowid, id FROM deliveries WHERE conversation = ? ORDER BY rowid", (CONVERSATION,))]
        assert len(places) == HISTORY

        at = places[-PAGE][0]
        for statement, args, bound in (
                (SLICE_FIRST, (CONVERSATION, PAGE + 1), "(conversation=?)"),
                (SLICE_AFTER, (CONVERSATION, PAGE + 1, at), "(conversation=? AND rowid>?)"),
                (SLICE_BEFORE, (CONVERSATION, PAGE + 1, at), "(conversation=? AND rowid<?)"),
                (SLICE_LAST, (CONVERSATION, PAGE + 1), "(conversation=?)"),
                # SQLite shows `<=` as `<` (and `>=` as `>`) in a plan
                *((SLICE_PROBE[op], (CONVERSATION, at), f"(conversation=? AND rowid{op[0]}?)") for op in SLICE_PROBE)):
            plan = [r[3] for r in reader.execute(f"EXPLAIN QUERY PLAN {statement}", args)]
            scans = [line for line in plan if line.startswith("SCAN") and line != "SCAN CONSTANT ROW"]
            assert not scans and not [line for line in plan if "TEMP B-TREE" in line], plan
            index = "COVERING INDEX" if statement in SLICE_PROBE.values() else "INDEX"
            assert f"SEARCH deliveries USING {index} deliveries_conversation {bound}" in plan, plan
            if statement == SLICE_LAST:  # the conversation's count, by its primary key
                assert [line for line in plan if line.startswith("SEARCH conversations USING ")
                        and line.endswith("(id=?)")], plan

        count = [0]

        def step() -> int:
            count[0] += 1
            return 0

        async def cost(**place: Any) -> int:
            reader.set_progress_handler(step, 1)
            count[0] = 0
            got = await store.conversation_slice(CONVERSATION, PAGE, **place)
            reader.set_progress_handler(None, 1)
            assert len(got.deliveries) == PAGE
            return count[0]

        first = await cost()
        deep = await cost(after=places[-2 * PAGE - 1])
        back = await cost(before=places[-PAGE])
        last = await cost(last=True)
        tail = await store.conversation_slice(CONVERSATION, PAGE, last=True)
        assert (tail.arrivals, tail.ahead, tail.earlier, tail.later) == (places[-PAGE:], HISTORY - PAGE, True, False)
        for what, n in (("after a place near its end", deep), ("before a place near its end", back),
                        ("at its end (the last)", last)):
            assert n <= BOUND * first, (f"a page {what} of a {HISTORY}-message conversation took {n} steps, its "
                                        f"first page {first} ({n / first:.1f}x; at most {BOUND:g}x)")
    finally:
        await store.close()


@pytest.fixture
async def pg_store() -> AsyncIterator[PostgresStore]:
    try:
        conn = await asyncpg.connect(DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {DSN} is not reachable ({exc})")
    schema = f"tb_test_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(DSN, schema=schema)
    try:
        await store.open()
        yield store
    finally:
        await store.close()
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out, stack = [], [plan]
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(node.get("Plans", []))
    return out


async def test_a_page_deep_in_a_long_postgres_conversation_is_one_bounded_index_range(
        pg_store: PostgresStore) -> None:
    first = make_delivery(conversation=CONVERSATION, conversation_key=KEY)
    await accept_one(pg_store, first)

    async def fill(conn: Any) -> list[tuple[int, str]]:
        for prefix, conversation in (("dlv_copy", f"'{CONVERSATION}'"), ("dlv_other", "'m|chat:+15550199'")):
            await conn.execute(f"INSERT INTO deliveries ({NEW_DELIVERY_COLUMNS}) "
                               f"SELECT {_copied(prefix, conversation)} FROM generate_series(1, $1) AS i, "
                               "deliveries WHERE deliveries.id = $2", HISTORY - 1, first.id)
        await conn.execute("ANALYZE deliveries")
        return [(r[0], r[1]) for r in await conn.fetch(
            "SELECT arrival, id FROM deliveries WHERE conversation = $1 ORDER BY arrival, id", CONVERSATION)]

    places = await pg_store._run(fill)
    assert len(places) == HISTORY
    at = places[-PAGE]

    async def plans(conn: Any) -> list[tuple[str, str, list[dict[str, Any]]]]:
        """Each statement's plan for the values given, and its generic plan (`$1`… unknown to the planner), which
        a prepared statement run many times may fall back to."""
        out = []
        for name, statement, args in (("first", PG_FIRST, (CONVERSATION, PAGE + 1)),
                                      ("after", PG_AFTER, (CONVERSATION, PAGE + 1, *at)),
                                      ("before", PG_BEFORE, (CONVERSATION, PAGE + 1, *at)),
                                      ("last", PG_LAST, (CONVERSATION, PAGE + 1)),
                                      *((f"probe {op}", PG_PROBE[op], (CONVERSATION, *at)) for op in PG_PROBE)):
            explained = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", *args)
            out.append(("for the values", name, _nodes(json.loads(explained)[0]["Plan"])))
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            await conn.execute(f"PREPARE page AS {statement}")
            given = ", ".join(str(a) if isinstance(a, int) else "'" + a.replace("'", "''") + "'" for a in args)
            explained = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE page({given})")
            await conn.execute("DEALLOCATE page")
            await conn.execute("RESET plan_cache_mode")
            nodes = _nodes(json.loads(explained)[0]["Plan"])
            assert any("$1" in n.get("Index Cond", "") for n in nodes), nodes  # the generic plan indeed
            out.append(("generic", name, nodes))
        return out

    for mode, name, nodes in await pg_store._run(plans, transaction=False):
        where = f"{name} ({mode})"
        scans = [n for n in nodes if n.get("Relation Name") == "deliveries"
                 and n.get("Index Name") == "deliveries_conversation"]
        assert scans, (where, [(n["Node Type"], n.get("Index Name")) for n in nodes])
        assert not [n for n in nodes if n["Node Type"] in ("Sort", "Seq Scan", "Bitmap Heap Scan")
                    and n.get("Parent Relationship") != "SubPlan"], (where, [n["Node Type"] for n in nodes])
        scan = scans[0]
        if name not in ("first", "last"):
            assert "arrival" in scan.get("Index Cond", ""), (where, scan.get("Index Cond"))
        if name == "last":  # the conversation's count, by its primary key
            assert [n for n in nodes if n.get("Relation Name") == "conversations"
                    and n.get("Index Name") == "conversations_pkey"], (where, nodes)
        most = 1 if name.startswith("probe") else PAGE + 1
        assert scan["Actual Rows"] <= most, (where, scan["Actual Rows"])
