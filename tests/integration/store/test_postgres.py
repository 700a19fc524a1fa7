"""The PostgreSQL store: the shared contract, plus what several processes sharing one queue rely on."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
import structlog
from aioresponses import aioresponses
from structlog.testing import capture_logs

from bridge.delivery.dispatcher import Dispatcher
from bridge.errors import StoreUnavailable
from bridge.retention import purge_store
from bridge.store.base import Cutoffs, DeliveryFilter
from bridge.store.postgres import (
    HEAD_OF_CONVERSATION,
    NONCE_SWEEP,
    NONCE_SWEEP_EVERY,
    ROW_COLUMNS,
    TOKEN_BLOCK,
    PostgresStore,
    split_schema,
)
from bridge.store.rows import MAPPING_CONVERSATIONS
from tests.conftest import eventually as eventually_async
from tests.integration.processes import DSN
from tests.integration.store.contract import (
    WEEK,
    StoreContract,
    accept_one,
    conversations_burst_and_purge,
    id_made_behind,
    kept,
    legacy_nul_rows,
    legacy_nul_rows_still_match,
    make_delivery,
    make_event,
    nonce,
    now_ms,
    result,
    row,
    settled_event,
    ticket_given,
    ticketless_create,
)
from tests.unit.bridge.delivery.test_dispatcher_faults import (
    URL_CREATE,
    HeldStarts,
    MockResponse,
    answers,
    destination,
    eventually,
    requests,
)

pytestmark = pytest.mark.integration

PRE_0028_DUE = "CREATE INDEX deliveries_due ON deliveries (destination, next_attempt_at) WHERE status = 'pending'"
"""deliveries_due as it was before migration 0028 (which made it again, and which dropping `queued` drops)."""


@pytest.fixture
def store(pg_store: PostgresStore) -> PostgresStore:
    return pg_store


class TestPostgresStoreContract(StoreContract):
    """Every behaviour of the store contract holds on PostgreSQL."""


async def test_two_processes_never_claim_the_same_delivery(two: tuple[PostgresStore, PostgresStore]) -> None:
    """Two stores on one database claiming concurrently share the work without overlap."""
    a, b = two
    for _ in range(40):
        await accept_one(a)
    claimed_a: list[str] = []
    claimed_b: list[str] = []

    async def drain(store: PostgresStore, into: list[str], owner: str) -> None:
        while batch := (await store.claim("kapture-support", 3, owner, 60)).items:
            into.extend(c.id for c in batch)
            await asyncio.sleep(0)

    await asyncio.gather(drain(a, claimed_a, "a"), drain(b, claimed_b, "b"))
    assert len(claimed_a) + len(claimed_b) == 40
    assert not set(claimed_a) & set(claimed_b)


async def test_concurrent_duplicates_from_two_processes_store_one_event(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    """The same dedup key accepted at once by two processes is stored once; the other is told it is a duplicate."""
    a, b = two
    results = await asyncio.gather(*(
        store.accept(make_event(dedup_key="msg-1"), [make_delivery()], WEEK) for store in (a, b, a, b)))
    fresh = [r for r in results if not r.duplicate]
    assert len(fresh) == 1
    assert {r.event_id for r in results} == {fresh[0].event_id}


async def test_a_nonce_used_in_one_process_is_a_replay_in_another(two: tuple[PostgresStore, PostgresStore]) -> None:
    """A nonce recorded through one process refuses another request through the other; the same request
    (its retry) is still accepted there."""
    a, b = two
    assert (await a.accept(make_event(dedup_key="m-1"), [make_delivery()], WEEK, nonce("tok", "body-a"))).replayed \
        is False
    replay = await b.accept(make_event(dedup_key="m-2"), [make_delivery()], WEEK, nonce("tok", "body-b"))
    assert replay.replayed is True
    retry = await b.accept(make_event(dedup_key="m-3"), [make_delivery()], WEEK, nonce("tok", "body-a"))
    assert retry.replayed is False
    assert len(await a.list_deliveries(DeliveryFilter())) == 2


async def test_concurrent_uses_of_one_nonce_store_one_request(two: tuple[PostgresStore, PostgresStore]) -> None:
    """Requests with one nonce and different bodies accepted at once by two processes: one is stored, the others
    are replays, and none of their dedup keys is left behind."""
    a, b = two
    results = await asyncio.gather(*(
        store.accept(make_event(dedup_key=f"m-{i}"), [make_delivery()], WEEK, nonce("tok", f"body-{i}"))
        for i, store in enumerate((a, b, a, b, a, b))))
    assert sorted(r.replayed for r in results) == [False] + [True] * 5
    assert len(await a.list_deliveries(DeliveryFilter())) == 1
    for i, r in enumerate(results):
        if r.replayed:
            again = await b.accept(make_event(dedup_key=f"m-{i}"), [], WEEK)
            assert again.duplicate is False


async def test_new_work_is_announced_to_other_processes(two: tuple[PostgresStore, PostgresStore]) -> None:
    """A delivery accepted by one process wakes the subscribers of another, naming its destination."""
    a, b = two
    heard: asyncio.Queue[str] = asyncio.Queue()
    await b.subscribe(heard.put_nowait)
    await accept_one(a, make_delivery(destination="lsq"))
    assert await asyncio.wait_for(heard.get(), 5) == "lsq"


async def test_unreachable_database_is_store_unavailable() -> None:
    """A server that cannot be reached is reported as StoreUnavailable, naming PostgreSQL."""
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/none")
    with pytest.raises(StoreUnavailable, match="postgresql"):
        await store.open()


def test_schema_is_taken_from_the_url() -> None:
    """`?schema=` selects a schema and is removed from the DSN; a bad name is refused."""
    assert split_schema("postgresql://u@h/db?schema=bridge&sslmode=disable") == (
        "postgresql://u@h/db?sslmode=disable", "bridge")
    assert split_schema("postgresql://u@h/db") == ("postgresql://u@h/db", None)
    with pytest.raises(ValueError, match="lower-case identifier"):
        split_schema("postgresql://u@h/db?schema=Robert'); DROP")


async def test_processes_starting_together_create_the_schema_once(pg_schema: str) -> None:
    """Several stores opening a new schema at the same moment all open; none fails on the concurrent create."""
    stores = [PostgresStore(DSN, schema=pg_schema) for _ in range(6)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        await accept_one(stores[0])
        assert len(await stores[5].list_deliveries(DeliveryFilter())) == 1
    finally:
        for s in stores:
            await s.close()


async def test_a_queue_in_another_schema_is_not_woken(pg_schema: str) -> None:
    """Two queues in one database (two schemas) announce work on their own channels: neither wakes the other."""
    other_schema = f"{pg_schema}_other"
    a, b, other = (PostgresStore(DSN, schema=pg_schema), PostgresStore(DSN, schema=pg_schema),
                   PostgresStore(DSN, schema=other_schema))
    for s in (a, b, other):
        await s.open()
    try:
        heard: asyncio.Queue[str] = asyncio.Queue()
        overheard: asyncio.Queue[str] = asyncio.Queue()
        await b.subscribe(heard.put_nowait)
        await other.subscribe(overheard.put_nowait)
        await accept_one(a, make_delivery(destination="lsq"))
        assert await asyncio.wait_for(heard.get(), 5) == "lsq"
        # A witness: work of the other queue, committed after, is what its listener hears first.
        await accept_one(other, make_delivery(destination="own"))
        assert await asyncio.wait_for(overheard.get(), 5) == "own"
    finally:
        for s in (a, b, other):
            await s.close()
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{other_schema}" CASCADE')
        finally:
            await conn.close()


async def test_expired_nonces_are_swept_a_few_at_a_time(store: PostgresStore, pg_schema: str) -> None:
    """Every NONCE_SWEEP_EVERY-th nonce recorded deletes up to NONCE_SWEEP expired ones, oldest first, never a
    live one."""
    now, total = now_ms(), NONCE_SWEEP + 8
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        await conn.executemany("INSERT INTO nonces VALUES ('src', $1, 'd', $2)",
                               [(f"old-{i:02}", now - 100_000 + i) for i in range(total)] + [("live", now + 600_000)])

        async def expired() -> list[str]:
            return sorted(r[0] for r in await conn.fetch("SELECT nonce FROM nonces WHERE nonce LIKE 'old-%'"))

        await store.accept(make_event(source="src"), [], WEEK, nonce("fresh-0"))
        assert await expired() == [f"old-{i:02}" for i in range(NONCE_SWEEP, total)]
        for n in range(1, NONCE_SWEEP_EVERY):
            await store.accept(make_event(source="src"), [], WEEK, nonce(f"fresh-{n}"))
        assert len(await expired()) == 8
        await store.accept(make_event(source="src"), [], WEEK, nonce("fresh-last"))
        assert await expired() == []
        assert await conn.fetchval("SELECT count(*) FROM nonces") == NONCE_SWEEP_EVERY + 2
    finally:
        await conn.close()


async def test_rows_kept_before_nul_mark_still_match_their_keys(store: PostgresStore, pg_schema: str) -> None:
    """A thread, a dedup key and a nonce whose key held a NUL, written as the store kept them before 0026 (the NUL
    `\\x00`, no mark), are still theirs: no second conversation, no second event, no second use of the nonce;
    among a group of accepts stored together too."""
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        for statement in legacy_nul_rows(now_ms()):
            await conn.execute(statement)
    finally:
        await conn.close()
    await legacy_nul_rows_still_match(store)


async def _hold_purge_lock(conn: asyncpg.Connection, schema: str) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1 || '.ticketbridge.retention'))", schema)


async def test_one_process_purges_at_a_time(two: tuple[PostgresStore, PostgresStore], pg_schema: str) -> None:
    """While one process holds the purge, another's purge does nothing and says `busy`, at once."""
    a, b = two
    done, _ = await settled_event(a)
    conn = await asyncpg.connect(DSN)
    try:
        async with conn.transaction():
            await _hold_purge_lock(conn, pg_schema)
            got = await b.purge(Cutoffs(events_ms=now_ms() + 1000), 500)
            assert (got.busy, got.events) == (True, 0)
            assert (await purge_store(b, Cutoffs(events_ms=now_ms() + 1000), 500)).busy
        got = await b.purge(Cutoffs(events_ms=now_ms() + 1000), 500)
        assert (got.busy, got.events) == (False, 1)
        assert not await kept(a, done)
    finally:
        await conn.close()


async def test_purges_from_two_processes_delete_every_event_once(two: tuple[PostgresStore, PostgresStore]) -> None:
    """Two processes sweeping together delete every settled event exactly once between them."""
    a, b = two
    for _ in range(30):
        await settled_event(a)
    cutoffs = Cutoffs(events_ms=now_ms() + 1000)
    totals = await asyncio.gather(*[purge_store(s, cutoffs, 4, pause_s=0) for s in (a, b, a, b)])
    assert sum(t.events for t in totals) <= 30
    assert (await purge_store(a, cutoffs, 500)).events == 30 - sum(t.events for t in totals)
    assert (await a.purge(cutoffs, 500, dry_run=True)).events == 0


async def test_a_replay_committed_while_the_purge_waits_keeps_its_event(store: PostgresStore, pg_schema: str) -> None:
    """A purge that finds a delivery locked by a replay waits for it, then sees it pending and keeps the event."""
    ev, d = await settled_event(store)
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("UPDATE deliveries SET status = 'pending' WHERE id = $1", d)
        purge = asyncio.create_task(store.purge(Cutoffs(events_ms=now_ms() + 1000), 500))
        while not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                      "AND pid <> pg_backend_pid()"):
            await asyncio.sleep(0.01)  # polling for the purge to be waiting on the row lock
        await tx.commit()
        got = await purge
        assert got.events == 0 and await kept(store, ev)
        assert (await store.get_delivery(d)).delivery.status == "pending"
    finally:
        await conn.close()


async def _settled_thread(store: PostgresStore) -> None:
    """A conversation `k` of 100 deliveries, each claimed and settled with a ticket in turn: its history."""
    for _ in range(100):
        d = make_delivery(conversation="m|k", conversation_key="k")
        await accept_one(store, d)
        await store.claim("kapture-support", 1, "w", 60)
        await store.record(result(d.id, "succeeded", ticket_id="T-1"))


async def _head_and_waiting_use(pg_schema: str, index: str) -> None:
    """The claim's head check and a listed delivery's `waiting` are planned (the table analyzed, sequential scans
    off) through `index`."""
    queries = (f"SELECT id FROM deliveries d WHERE status = 'pending' AND destination = 'kapture-support' "
               f"AND next_attempt_at <= {now_ms()} AND {HEAD_OF_CONVERSATION} ORDER BY next_attempt_at, id LIMIT 10",
               f"SELECT {ROW_COLUMNS} FROM deliveries ORDER BY id DESC LIMIT 50")
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        await conn.execute("ANALYZE deliveries")
        await conn.execute("SET enable_seqscan = off")
        for query in queries:
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {query}"))
            assert index in plan, plan
    finally:
        await conn.close()


async def test_a_conversations_head_and_waiting_are_found_without_walking_its_history(
        store: PostgresStore, pg_schema: str) -> None:
    """The claim's head check and a listed delivery's `waiting` look up only the conversation's unsettled
    deliveries (the partial index deliveries_open_conversation), not every delivery it ever had. Sequential scans
    are turned off: on a table this small one would be cheaper, on a real queue it is not."""
    await _settled_thread(store)
    await accept_one(store, make_delivery(conversation="m|k", conversation_key="k"))
    await _head_and_waiting_use(pg_schema, "deliveries_open_conversation")


async def test_a_thread_without_a_ticket_looks_for_a_held_create_without_walking_its_history(
        store: PostgresStore, pg_schema: str) -> None:
    """While a conversation has no ticket (restarted after its quiet period, or reset), the head's second test and a
    listed delivery's `waiting` look for an earlier held create in the index of held creates (0024,
    deliveries_held_create), not through every earlier delivery of the thread (deliveries_conversation)."""
    await _settled_thread(store)
    await store.reset_conversation("k")
    await accept_one(store, make_delivery(conversation="m|k", conversation_key="k"))
    await _head_and_waiting_use(pg_schema, "deliveries_held_create")


async def test_a_removed_mappings_conversations_are_counted_from_an_index(
        store: PostgresStore, pg_schema: str) -> None:
    """mapping_backlog's count of a mapping's recent conversations (a reload that drops the mapping) reads the
    index conversations_mapping (0018), not the whole table. Sequential scans are turned off: on a table this
    small one would be cheaper, on one of a year's threads it is not."""
    for n in range(50):
        await accept_one(store, make_delivery(mapping=f"m{n % 5}", conversation=f"m{n % 5}|chat:{n}",
                                              conversation_key=f"chat:{n}"))
    assert (await store.mapping_backlog({"m1": 0}))["m1"]["conversations"] == 10
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        await conn.execute("ANALYZE conversations")
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(
            f"EXPLAIN {MAPPING_CONVERSATIONS.format('$1::text', '$2::bigint')}", "m1", 0))
        assert "conversations_mapping" in plan and "Seq Scan" not in plan, plan
    finally:
        await conn.close()


async def test_take_back_gives_back_only_what_a_gone_earlier_process_of_the_instance_holds(
    store: PostgresStore,
) -> None:
    """take_back frees at once the in-flight work of this instance's owners that `gone` says are gone, and
    leaves a running predecessor's, another instance's (`host:80` is not `host:8080`) and the finished alone.
    What it frees is in doubt since its claim, as a lease that ran out is: the gone process may have sent it."""
    for _ in range(4):
        await accept_one(store)
    owners = ["h:8080/11.aa", "h:8080/12.bb", "h:80/11.aa", "other:8080/11.aa"]
    claimed = {owner: (await store.claim("kapture-support", 1, owner, 600)).items[0].id for owner in owners}
    claimed_at = (await row(store, claimed["h:8080/11.aa"])).updated_at_ms
    asked: list[str] = []

    def gone(owner: str) -> bool:
        asked.append(owner)
        return owner == "h:8080/11.aa"

    assert await store.take_back("h:8080/", gone) == 1
    assert sorted(asked) == ["h:8080/11.aa", "h:8080/12.bb"]
    taken = await row(store, claimed["h:8080/11.aa"])
    assert (taken.status, taken.in_doubt_since_ms, taken.unknowns) == ("pending", claimed_at, 1)
    kept = [await row(store, claimed[o]) for o in owners[1:]]
    assert [(r.status, r.in_doubt_since_ms, r.unknowns) for r in kept] == [("in_flight", None, 0)] * 3
    batch = await store.claim("kapture-support", 4, "h:8080/13.cc", 600)
    assert [(c.id, c.in_doubt_since_ms) for c in batch.items] == [(claimed["h:8080/11.aa"], claimed_at)]
    assert await store.take_back("h:8080/", lambda owner: False) == 0


SKEW_MS = 120_000  # two minutes: far more than a lease


async def test_leases_run_by_the_databases_clock_whatever_a_hosts_clock_says(
        two: tuple[PostgresStore, PostgresStore], monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease taken by a process whose clock is behind does not look run out to a reaper whose clock is right,
    and a reaper whose clock is ahead does not reap a live lease: leases are set, extended and reaped by the
    database's clock, one for every process."""
    a, b = two

    def host_clock(skew_ms: int) -> None:
        for module in ("bridge.store.postgres", "bridge.store.pg_batch", "bridge.store.pg_record"):
            monkeypatch.setattr(f"{module}.now_ms", lambda: now_ms() + skew_ms)

    host_clock(-SKEW_MS)  # a's host is behind
    _, [late] = await accept_one(a)
    assert [i.id for i in (await a.claim("kapture-support", 1, "a", 10)).items] == [late]
    assert await a.extend_leases([late], "a", 10) == [late]
    host_clock(0)  # b's host is right
    assert await b.release_expired() == 0
    host_clock(SKEW_MS)  # and if it were ahead
    assert await b.release_expired() == 0
    assert (await row(b, late)).status == "in_flight"
    host_clock(0)
    assert await a.extend_leases([late], "a", -1) == [late]  # its lease ran out: now reaped, by any clock
    assert await b.release_expired() == 1
    assert (await row(b, late)).status == "pending"


async def test_a_reply_accepted_by_a_host_whose_clock_is_behind_waits_behind_a_held_create(
        two: tuple[PostgresStore, PostgresStore], monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread's first message accepted by one process, its reply half a second later by another whose clock is
    3 s behind (so the reply's id, and its times, sort before the first's): the first is the conversation's head, and
    once its create is held in doubt the reply waits, in either process, rather than go as a second create."""
    a, b = two
    conv = {"conversation": "m|mail:r1@ex.com", "conversation_key": "mail:r1@ex.com"}
    first = make_delivery(**conv)
    await accept_one(a, first)
    for module in ("bridge.store.postgres", "bridge.store.pg_batch", "bridge.store.pg_record"):
        monkeypatch.setattr(f"{module}.now_ms", lambda: now_ms() - 3000)  # b's host, and b's ids, are behind
    reply = make_delivery(delivery_id=id_made_behind(3000), **conv)
    assert reply.id < first.id
    await accept_one(b, reply)
    monkeypatch.undo()  # a's host (its due times are b's plus 3 s)
    assert [i.id for i in (await a.claim("kapture-support", 10, "a", 30)).items] == [first.id]
    await a.record(msgspec.structs.replace(
        result(first.id, "dead", http_status=None, classification="unknown", error="timed out; held"),
        role="create"))
    for store in (a, b):
        batch = await store.claim("kapture-support", 10, "w", 30)
        assert batch.items == [] and batch.next_due_ms is None
        assert (await row(store, reply.id)).waiting is True


async def test_after_migration_0022_a_conversations_stored_deliveries_keep_their_id_order(pg_schema: str) -> None:
    """A database from before 0022 (no `arrival`, nor what 0028 adds after it): its deliveries get arrival 0 without
    the table being rewritten, so a conversation's stored deliveries keep the id order that decided when they were
    stored, and come before every delivery accepted after the migration, whatever its id."""
    store = PostgresStore(DSN, schema=pg_schema)
    await store.open()
    try:
        later = make_delivery(conversation="m|k", conversation_key="k")
        earlier = make_delivery(conversation="m|k", conversation_key="k", delivery_id=id_made_behind())
        await accept_one(store, later)
        await accept_one(store, earlier)
    finally:
        await store.close()
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        await conn.execute(
            "ALTER TABLE deliveries DROP COLUMN arrival; "
            "CREATE INDEX deliveries_conversation ON deliveries (conversation, id) WHERE conversation IS NOT NULL; "
            "CREATE INDEX deliveries_open_conversation ON deliveries (conversation, id) "
            "WHERE conversation IS NOT NULL AND status IN ('pending', 'in_flight'); "
            "DROP FUNCTION deliveries_joined, deliveries_finished CASCADE; DROP INDEX deliveries_sending_conversation; "
            "ALTER TABLE deliveries DROP COLUMN queued; ALTER TABLE conversations DROP COLUMN unsettled; "
            f"{PRE_0028_DUE}; DELETE FROM schema_migrations WHERE version IN (22, 28)")
        stored_at = await conn.fetchval("SELECT relfilenode FROM pg_class WHERE relname = 'deliveries'")
    finally:
        await conn.close()
    store = PostgresStore(DSN, schema=pg_schema)
    try:
        await store.open()
        third = make_delivery(conversation="m|k", conversation_key="k", delivery_id=id_made_behind(60_000))
        await accept_one(store, third)
        (found,) = await store.get_conversations("k")
        assert [d.id for d in found.deliveries] == [earlier.id, later.id, third.id]
        (got,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert got.id == earlier.id
        await store.record(msgspec.structs.replace(result(earlier.id, "succeeded", ticket_id="T-1"), role="create"))
        (got,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert got.id == later.id and got.ticket is not None and got.ticket["messages"] == 2
    finally:
        await store.close()
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        assert await conn.fetchval("SELECT relfilenode FROM pg_class WHERE relname = 'deliveries'") == stored_at
        arrivals = dict(await conn.fetch("SELECT id, arrival FROM deliveries"))
        assert arrivals[earlier.id] == arrivals[later.id] == 0 < arrivals[third.id]
    finally:
        await conn.close()


async def test_each_conversation_counts_the_deliveries_it_holds(store: PostgresStore, pg_schema: str) -> None:
    """`conversations.stored` is the number of deliveries each conversation holds, after a burst of accepts stored
    together (chats, whose key only the provider writes, and email threads with other senders' messages split off
    to conversations of their own) and a purge of the settled ones' events."""
    await conversations_burst_and_purge(store)
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        counted = await conn.fetch("SELECT conversation, count(*) FROM deliveries WHERE conversation IS NOT NULL "
                                   "GROUP BY conversation")
        stored = await conn.fetch("SELECT id, stored FROM conversations WHERE stored > 0")
    finally:
        await conn.close()
    assert len(counted) > 4 and dict(stored) == dict(counted)


async def test_migration_0025_counts_the_deliveries_each_conversation_holds(pg_schema: str) -> None:
    """A database from before 0025 (no `conversations.stored`): the migration counts each conversation's deliveries
    once, so that the follow-ups claimed after it count their messages as before (here the fourth of a thread, one
    more waiting behind it)."""
    store = PostgresStore(DSN, schema=pg_schema)
    await store.open()
    thread = [make_delivery(conversation="m|k", conversation_key="k") for _ in range(5)]
    try:
        for d in thread:
            await accept_one(store, d)
        for n, d in enumerate(thread[:3]):
            (got,) = (await store.claim("kapture-support", 10, "w", 30)).items
            assert got.id == d.id
            await store.record(msgspec.structs.replace(result(d.id, "succeeded", ticket_id="T-1"),
                                                       role="follow_up" if n else "create"))
        await accept_one(store, make_delivery(conversation="m|other", conversation_key="other"))
    finally:
        await store.close()
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        await conn.execute("ALTER TABLE conversations DROP COLUMN stored; "
                           "DELETE FROM schema_migrations WHERE version = 25")
    finally:
        await conn.close()
    store = PostgresStore(DSN, schema=pg_schema)
    try:
        await store.open()
        got = {c.id: c for c in (await store.claim("kapture-support", 10, "w", 30)).items}
        ticket = got[thread[3].id].ticket
        assert ticket is not None and ticket["messages"] == 4
    finally:
        await store.close()
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        assert dict(await conn.fetch("SELECT id, stored FROM conversations")) == {"m|k": 5, "m|other": 1}
    finally:
        await conn.close()


async def test_a_process_stalled_past_its_lease_does_not_send_what_another_took_over(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """Process A claims a delivery and stalls before its request (a slow token, a SIGSTOP) until its lease runs
    out; B reaps it, sends it and records its success. When A goes on, it does not send it: the vendor gets
    B's request alone, and B's record stands."""
    a, b = two
    _, [delivery_id] = await accept_one(a, make_delivery(destination="kapture"))
    coordination = HeldStarts()
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            stalled = Dispatcher(a, session, {"kapture": destination()}, coordination=coordination, lease_s=1.0)
            stalled.start()  # no lease reaper runs for A: its lease is not renewed, as in a stopped process
            try:
                await eventually(lambda: coordination.waiting == 1)

                async def reaped() -> bool:
                    return await b.release_expired() == 1

                await eventually_async(reaped)
                [taken] = (await b.claim("kapture", 1, "process-b", 30)).items
                assert taken.id == delivery_id
                await b.record(result(delivery_id, "succeeded", ticket_id="T-B"), owner="process-b")
                coordination.go.set()
                await eventually(lambda: any(e["event"] == "delivery.lease_lost" for e in logs))
            finally:
                await stalled.stop(0.0)
        assert requests(m) == 0
    done = await row(b, delivery_id)
    assert (done.status, done.ticket_id, done.attempts) == ("succeeded", "T-B", 1)


async def test_migration_0028_queues_the_messages_waiting_in_each_conversation(pg_schema: str) -> None:
    """A database from before 0028 (no `queued`, no `unsettled`, no triggers): the migration queues the pending
    messages stored behind an unfinished one and counts each conversation's unfinished messages, so that claims go
    on in arrival order, a follow-up counting its messages as before."""
    store = PostgresStore(DSN, schema=pg_schema)
    await store.open()
    thread = [make_delivery(conversation="m|k", conversation_key="k") for _ in range(4)]
    other = make_delivery(destination="lsq-service", conversation="m|other", conversation_key="other")
    try:
        for d in (*thread, other):
            await accept_one(store, d)
        assert [c.id for c in (await store.claim("kapture-support", 10, "w", 30)).items] == [thread[0].id]
        await store.record(msgspec.structs.replace(result(thread[0].id, "succeeded", ticket_id="T-1"),
                                                   role="create"))
    finally:
        await store.close()
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        await conn.execute("DROP FUNCTION deliveries_joined, deliveries_finished CASCADE; "
                           "DROP INDEX deliveries_sending_conversation, deliveries_settled_conversation; "
                           "ALTER TABLE deliveries DROP COLUMN queued; "
                           "ALTER TABLE conversations DROP COLUMN unsettled; "
                           f"{PRE_0028_DUE}; DELETE FROM schema_migrations WHERE version = 28")
    finally:
        await conn.close()
    store = PostgresStore(DSN, schema=pg_schema)
    try:
        await store.open()
        conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
        try:
            assert dict(await conn.fetch("SELECT id, unsettled FROM conversations")) == {"m|k": 3, "m|other": 1}
            assert dict(await conn.fetch("SELECT id, queued FROM deliveries WHERE status = 'pending'")) == {
                thread[1].id: 0, thread[2].id: 1, thread[3].id: 1, other.id: 0}
        finally:
            await conn.close()
        for n, d in enumerate(thread[1:], start=2):
            (got,) = (await store.claim("kapture-support", 10, "w", 30)).items
            assert got.id == d.id and got.ticket is not None and got.ticket["messages"] == n
            await store.record(result(d.id, "succeeded"))
    finally:
        await store.close()


async def test_a_database_of_the_previous_version_opens_and_is_migrated(pg_schema: str) -> None:
    """A store opened on a database one migration behind (here 0017 undone: no `conversations.sender`) opens,
    although its pool's connections are warmed before the migrations run and the warmed statements name the new
    column; it is migrated, and takes accepts."""
    store = PostgresStore(DSN, schema=pg_schema)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        await conn.execute("DROP INDEX conversations_ticket; ALTER TABLE conversations DROP COLUMN sender; "
                           "DELETE FROM schema_migrations WHERE version = 17")
    finally:
        await conn.close()
    store = PostgresStore(DSN, schema=pg_schema)
    try:
        await store.open()
        assert store.migrated == ("0017_conversation_sender.sql",)
        await accept_one(store)
        assert len(await store.list_deliveries(DeliveryFilter())) == 1
    finally:
        await store.close()
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        assert await conn.fetchval("SELECT MAX(version) FROM schema_migrations") >= 17
        assert await conn.fetchval("SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = $1 "
                                   "AND table_name = 'conversations' AND column_name = 'sender'", pg_schema) == 1
    finally:
        await conn.close()


async def test_a_release_waiting_on_the_rows_lock_leaves_the_claim_that_took_it(
        store: PostgresStore, pg_schema: str) -> None:
    """A release asked again after its answer was lost, whose UPDATE waits on the row's lock while the first release
    and the same owner's next claim of the delivery commit: READ COMMITTED then checks its conditions again on the row
    as that claim left it, in flight under the same owner. Matched by owner, the release gave back that claim while
    its request was out; naming the first claim's token, it leaves it."""
    _, [d] = await accept_one(store)
    [first] = (await store.claim("kapture-support", 1, "me", 60)).items
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    run = store._run
    try:
        held = conn.transaction()
        await held.start()

        async def in_held_transaction(fn: Any, **_: Any) -> Any:
            return await fn(conn)

        store._run = in_held_transaction  # type: ignore[method-assign]
        await store.release([d], owner="me", tokens=[first.token])  # the first release: its answer is lost
        [second] = (await store.claim("kapture-support", 1, "me", 60)).items  # the lane's next claim
        store._run = run  # type: ignore[method-assign]
        assert second.id == d and second.token != first.token
        retry = asyncio.create_task(store.release([d], owner="me", tokens=[first.token]))
        holder = conn.get_server_pid()

        async def waiting_on_the_row() -> bool:
            return bool(await store._pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))", holder))

        await eventually_async(waiting_on_the_row)
        await held.commit()
        await retry
    finally:
        store._run = run  # type: ignore[method-assign]
        await conn.close()
    assert (await row(store, d)).status == "in_flight"
    await store.record(result(d, "succeeded", ticket_id="T-1"), owner="me", token=second.token)
    assert (await row(store, d)).status == "succeeded"


async def test_claim_tokens_come_in_blocks_no_two_processes_share(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """Each process takes its claims' tokens a block at a time from one sequence: two processes' claims never share
    a token, and a process asks the sequence once per TOKEN_BLOCK claims."""
    a, b = two
    await accept_one(a, *[make_delivery() for _ in range(6)])
    tokens = [c.token for s in (a, b, a, b, a, b) for c in (await s.claim("kapture-support", 1, "w", 60)).items]
    assert len(tokens) == 6 and len(set(tokens)) == 6
    assert tokens[2] == tokens[0] + 1 and tokens[3] == tokens[1] + 1
    assert abs(tokens[1] - tokens[0]) >= TOKEN_BLOCK


BLOCKED_BY = ("WITH RECURSIVE chain (pid) AS (SELECT $1::int UNION SELECT a.pid FROM pg_stat_activity a, chain c "
              "WHERE c.pid = ANY(pg_blocking_pids(a.pid))) SELECT count(*) - 1 FROM chain")
"""How many sessions wait, directly or behind another waiting one, for a lock the session $1 holds."""


async def waiting_behind(conn: asyncpg.Connection, count: int, *tasks: asyncio.Task[Any]) -> None:
    """Until `count` sessions wait for the locks `conn` holds (or behind those that do). Fails at once when one of
    `tasks` (those that should be waiting) ended meanwhile, saying how, and after a minute in any case: never a
    test that hangs."""
    pid = await conn.fetchval("SELECT pg_backend_pid()")

    async def waiting() -> bool:
        for task in tasks:
            if task.done():
                raise AssertionError(f"a task ended instead of waiting: {task!r}")
        return bool(await conn.fetchval(BLOCKED_BY, pid) == count)

    await eventually_async(waiting, timeout=60, interval=0.01)


async def test_a_replay_and_a_purge_take_their_rows_in_one_order(two: tuple[PostgresStore, PostgresStore],
                                                                 pg_schema: str) -> None:
    """A purge locks its events' deliveries in the order of their ids; a replay given them newest first took them
    in that order, one update at a time. The purge holding the older and waiting for the newer while the replay held
    the newer and waited for the older was a deadlock: the replay answered 503, the sweep failed. A replay locks its
    rows in the order of their ids first: it waits for the purge, then finds the rows gone."""
    a, b = two
    older_event, older = await settled_event(a)
    newer_event, newer = await settled_event(a)
    assert older < newer
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        with capture_logs() as logs:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE", older)  # both wait behind it
            purge = asyncio.create_task(a.purge(Cutoffs(events_ms=now_ms() + 1000), 500))
            await waiting_behind(conn, 1, purge)
            replay = asyncio.create_task(b.replay([newer, older]))
            await waiting_behind(conn, 2, purge, replay)
            await tx.commit()
            purged, moved = await asyncio.gather(purge, replay)
        assert (purged.events, moved) == (2, [])
        assert not await kept(a, older_event) and not await kept(a, newer_event)
        assert "store.deadlock_retried" not in [e["event"] for e in logs]
    finally:
        await conn.close()


async def test_a_replay_a_deadlock_rolled_back_is_run_again_whole(store: PostgresStore, pg_schema: str) -> None:
    """A replay whose statement deadlocked with another transaction (here one taking the rows in the opposite order)
    is run again from its start, since nothing of it was answered or kept: it moves every delivery, logging
    store.deadlock_retried, and the store is not marked failing."""
    _, older = await settled_event(store)
    _, newer = await settled_event(store)
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        await conn.execute("SET deadlock_timeout = '60s'")  # the replay, waiting first, finds the deadlock
        with capture_logs() as logs:
            tx = conn.transaction()
            await tx.start()
            await conn.execute("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE", newer)
            replay = asyncio.create_task(store.replay([newer, older]))
            await waiting_behind(conn, 1, replay)  # the replay holds the older, and waits for the newer
            await conn.execute("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE", older)  # the replay is undone
            await waiting_behind(conn, 1, replay)  # run again, it waits for both
            await tx.commit()
            assert sorted(await replay) == sorted([newer, older])
        # Once the first run is rolled back, its next run and this session race for the older row (a row lock is
        # taken by looking at the row again, not granted in turn): when the next run takes it first, they deadlock
        # once more, and the run after it goes through.
        retried = [e.get("write") for e in logs if e["event"] == "store.deadlock_retried"]
        assert retried in (["replay"], ["replay", "replay"]), retried
        assert store.problem() is None
        assert {(await row(store, i)).status for i in (older, newer)} == {"pending"}
    finally:
        await conn.close()


async def _ticketless(store: PostgresStore, n: int) -> tuple[str, str, str]:
    """Round `n`'s conversation (of a destination of its own): its create succeeded naming no ticket, its next message
    pending. (create id, next id, destination)"""
    first, second = await ticketless_create(store, f"dest{n}", f"k{n}")
    return first.id, second.id, f"dest{n}"


async def test_set_ticket_counts_a_message_being_claimed_as_busy_without_waiting(
        pg_store: PostgresStore, pg_schema: str) -> None:
    """On PostgreSQL a message of the conversation locked by a claim in progress (another process's, not yet
    committed) makes set_ticket refuse at once, naming it, rather than give the ticket that claim may be taking as a
    create; once the claim is over, the ticket is given."""
    first, second, _ = await _ticketless(pg_store, 1)
    conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        claim = conn.transaction()
        await claim.start()
        await conn.execute("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE", second)
        why_not = await asyncio.wait_for(pg_store.set_ticket(first, ticket_given(first)), 10)
        assert why_not is not None and f"delivery {second} of its conversation m|k1 is being sent now" in why_not
        await claim.rollback()
    finally:
        await conn.close()
    assert await pg_store.set_ticket(first, ticket_given(first)) is None
    assert (await row(pg_store, first)).ticket_id == "T-1"


async def test_set_ticket_racing_another_process_claim_never_gives_a_create_in_flight_a_ticket(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """Two processes: one gives a conversation's create its ticket while the other claims the conversation's next
    message. Whichever goes first, the message is either claimed as a follow-up on the ticket given, or claimed as
    a create and the ticket refused: never a create claimed while the conversation takes a ticket its record would
    replace (two tickets, one lost)."""
    a, b = two
    outcomes = set()
    for n in range(20):
        first, second, dest = await _ticketless(a, n)
        why_not, batch = await asyncio.gather(a.set_ticket(first, ticket_given(first)), b.claim(dest, 10, "w2", 30))
        claimed = {i.id: i for i in batch.items}
        if why_not is None:
            assert second not in claimed or (claimed[second].ticket or {}).get("id") == "T-1", n
            outcomes.add("given")
        else:
            assert "is being sent now" in why_not, why_not
            assert claimed[second].ticket is None
            assert (await row(a, first)).ticket_id is None
            outcomes.add("refused")
    assert outcomes  # either order may win each round; each round's invariant is what matters


async def test_set_ticket_racing_a_create_record_keeps_the_records_ticket(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """While the conversation's next message, claimed as a create, is recorded succeeded by another process, set_ticket
    refuses (it is being sent, or the conversation has its ticket now), without a deadlock: the conversation keeps the
    ticket its create made, and the ticketless create stays without one."""
    a, b = two
    for n in range(10):
        first, second, dest = await _ticketless(a, n)
        (item,) = (await b.claim(dest, 10, "w2", 30)).items
        assert item.id == second and item.ticket is None
        recorded = msgspec.structs.replace(result(second, "succeeded", ticket_id="T-2"), role="create")
        why_not, _ = await asyncio.wait_for(asyncio.gather(
            a.set_ticket(first, ticket_given(first)), b.record(recorded, owner="w2", token=item.token)), 20)
        assert why_not is not None and ("is being sent now" in why_not or "has ticket 'T-2' already" in why_not)
        (conv,) = await a.get_conversations(f"k{n}")
        assert conv.conversation.ticket_id == "T-2"
        assert (await row(a, first)).ticket_id is None
