"""Group commit on PostgreSQL: concurrent accepts share a transaction, and each keeps the fate it would have
had alone (dedup, nonces, a failure of its own)."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from bridge import offload
from bridge.errors import NotFound, StoreUnavailable
from bridge.events import Event
from bridge.store import pg_batch, pieces, postgres
from bridge.store.base import AcceptResult, DeliveryFilter, NewDelivery
from bridge.store.pg_batch import DEADLOCK_RUNS, PendingAccept
from bridge.store.postgres import PostgresStore, channel_for
from bridge.store.rows import GROUP_BYTES
from tests.conftest import eventually
from tests.integration.processes import DSN
from tests.integration.store.contract import WEEK, accept_one, make_delivery, make_event, nonce

pytestmark = pytest.mark.integration


@pytest.fixture
def store(pg_store: PostgresStore) -> PostgresStore:
    return pg_store


def pool_pids(store: PostgresStore) -> list[int]:
    """The server pids of the store's pooled connections (only these are terminated: other tests may share the
    database)."""
    return [h._con.get_server_pid() for h in store._pool._holders if h._con is not None]


async def test_concurrent_accepts_share_one_commit(store: PostgresStore) -> None:
    """Accepts made in one turn of the loop are stored in one group, each answered with its own result."""
    events = [make_event(dedup_key=f"k-{i}") for i in range(50)]
    results = await asyncio.gather(*(store.accept(e, [make_delivery(), make_delivery()], WEEK) for e in events))
    assert [(r.event_id, r.duplicate, r.deliveries) for r in results] == [(e.id, False, 2) for e in events]
    assert (store.batcher.groups, store.batcher.grouped) == (1, 50)
    assert len(await store.list_deliveries(DeliveryFilter(limit=500))) == 100
    assert await store.get_event(events[7].id) == events[7]


async def test_a_group_never_exceeds_group_commit_max(pg_schema: str) -> None:
    """A group holds at most `group_commit_max` accepts; the rest go in the next groups."""
    store = PostgresStore(DSN, schema=pg_schema, group_commit_max=8)
    await store.open()
    try:
        await asyncio.gather(*(accept_one(store) for _ in range(20)))
        assert (store.batcher.groups, store.batcher.grouped) == (3, 20)
    finally:
        await store.close()


async def test_one_dedup_key_twice_in_a_group_stores_the_first(store: PostgresStore) -> None:
    """Within a group, the later uses of a dedup key are duplicates naming the first; a key already stored makes
    every use in the group a duplicate of the stored event."""
    old = make_event(dedup_key="old")
    await accept_one(store, event=old)
    a, b, c = make_event(dedup_key="new"), make_event(dedup_key="new"), make_event(dedup_key="old")
    d = make_event(dedup_key="old")
    results = await asyncio.gather(*(store.accept(e, [make_delivery()], WEEK) for e in (a, b, c, d)))
    assert store.batcher.groups == 2
    assert [(r.event_id, r.duplicate) for r in results] == [(a.id, False), (a.id, True), (old.id, True),
                                                            (old.id, True)]
    for dup in (b, c, d):
        with pytest.raises(NotFound):
            await store.get_event(dup.id)
    assert len(await store.list_deliveries(DeliveryFilter())) == 2


async def test_a_failing_accept_fails_alone(store: PostgresStore) -> None:
    """An accept that cannot be stored (a delivery id used twice) fails with StoreUnavailable; the others of its
    group are stored, and its dedup key is left free."""
    good = make_delivery()
    bad_event = make_event(dedup_key="bad")
    others = [make_event(dedup_key=f"ok-{i}") for i in range(5)]
    results = await asyncio.gather(
        *(store.accept(e, [make_delivery()], WEEK) for e in others[:2]),
        store.accept(bad_event, [good, make_delivery(delivery_id=good.id)], WEEK),
        *(store.accept(e, [make_delivery()], WEEK) for e in others[2:]),
        return_exceptions=True)
    assert store.batcher.groups == 1
    assert isinstance(results[2], StoreUnavailable)
    assert [r.event_id for r in results if isinstance(r, AcceptResult)] == [e.id for e in others]
    assert len(await store.list_deliveries(DeliveryFilter())) == 5
    with pytest.raises(NotFound):
        await store.get_event(bad_event.id)
    assert (await store.accept(make_event(dedup_key="bad"), [], WEEK)).duplicate is False


async def test_a_replay_in_a_group_rolls_back_only_itself(store: PostgresStore) -> None:
    """A nonce replay among a group's accepts stores nothing of its own (not its dedup key) and nothing of the
    others is lost; the same nonce with the first request's digest is still accepted in the group."""
    await store.accept(make_event(dedup_key="first"), [make_delivery()], WEEK, nonce("tok", "body-a"))
    plain = [make_event(dedup_key=f"p-{i}") for i in range(4)]
    replay, retry = make_event(dedup_key="replay"), make_event(dedup_key="retry")
    results = await asyncio.gather(
        store.accept(plain[0], [make_delivery()], WEEK),
        store.accept(replay, [make_delivery()], WEEK, nonce("tok", "body-b")),
        store.accept(plain[1], [make_delivery()], WEEK),
        store.accept(retry, [make_delivery()], WEEK, nonce("tok", "body-a")),
        *(store.accept(e, [make_delivery()], WEEK) for e in plain[2:]))
    assert store.batcher.groups == 2
    assert [(r.replayed, r.duplicate) for r in results] == [(False, False), (True, False)] + [(False, False)] * 4
    assert len(await store.list_deliveries(DeliveryFilter())) == 6
    with pytest.raises(NotFound):
        await store.get_event(replay.id)
    assert (await store.accept(make_event(dedup_key="replay"), [], WEEK)).duplicate is False


async def test_nonce_and_plain_accepts_of_one_key_in_a_group_store_one_event(store: PostgresStore) -> None:
    """An accept with a nonce and one without, sharing a dedup key in one group, store one event; the other is
    its duplicate, and a duplicate records no nonce."""
    plain, signed = make_event(dedup_key="k"), make_event(dedup_key="k")
    r1, r2 = await asyncio.gather(store.accept(plain, [make_delivery()], WEEK),
                                  store.accept(signed, [make_delivery()], WEEK, nonce("tok", "body-a")))
    assert store.batcher.groups == 1
    assert (r1.event_id, r1.duplicate, r2.event_id, r2.duplicate, r2.replayed) == (plain.id, False, plain.id, True,
                                                                                   False)
    assert (await store.accept(make_event(), [], WEEK, nonce("tok", "body-b"))).replayed is False


async def test_a_broken_connection_fails_the_group_with_store_unavailable(store: PostgresStore) -> None:
    """A group whose connection the server drops fails with StoreUnavailable (never a driver error), the store
    says it is failing, and the next accepts are stored on fresh connections."""
    await accept_one(store)
    admin = await asyncpg.connect(DSN)
    try:
        async def blocked() -> None:
            # Hold the events table so that the group waits on the server, then drop every pooled connection.
            async with admin.transaction():
                await admin.execute(f'LOCK TABLE "{store.schema}".events')
                pending = asyncio.gather(*(accept_one(store) for _ in range(5)), return_exceptions=True)
                ours = pool_pids(store)
                while not await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[]) "
                                               "AND wait_event_type = 'Lock'", ours):
                    await asyncio.sleep(0.01)
                await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", ours)
                failures = await pending
            assert failures and all(isinstance(f, StoreUnavailable) for f in failures)

        await blocked()
    finally:
        await admin.close()
    problem = store.problem()
    assert problem is not None
    assert problem.kind == "failing"
    await asyncio.gather(*(accept_one(store) for _ in range(5)))
    assert store.problem() is None
    assert len(await store.list_deliveries(DeliveryFilter())) == 6


async def test_an_accept_held_past_the_statement_timeout_fails_alone(store: PostgresStore, pg_schema: str) -> None:
    """A statement_timeout (57014) that cuts off a group's statement, held up here by a dedup key another
    transaction inserted and has not committed, costs the accept held up alone: the group is stored again accept by
    accept on the same connection, the others are stored (once each), the held one fails with StoreUnavailable
    and leaves its key free. The connection is not taken for lost: the pool keeps it."""
    timed = PostgresStore(f"{DSN}?statement_timeout=1000", schema=pg_schema)
    await timed.open()
    admin = await asyncpg.connect(DSN)
    try:
        before = set(pool_pids(timed))
        events = [make_event(dedup_key=k) for k in ("k-0", "k-1", "held", "k-3")]
        async with admin.transaction():
            await admin.execute(f'INSERT INTO "{pg_schema}".dedup_keys VALUES ($1, $2, $3, $4)',
                                events[2].source, "held", "evt_other", 0)
            results = await asyncio.gather(*(timed.accept(e, [make_delivery()], WEEK) for e in events),
                                           return_exceptions=True)
        assert timed.batcher.groups == 1
        assert isinstance(results[2], StoreUnavailable) and "statement timeout" in str(results[2])
        assert [(r.event_id, r.duplicate) for r in results if isinstance(r, AcceptResult)] == [
            (e.id, False) for i, e in enumerate(events) if i != 2]
        assert set(pool_pids(timed)) == before  # no connection given up for lost
        assert len(await timed.list_deliveries(DeliveryFilter())) == 3
        assert timed.problem() is None  # one accept's slowness does not mark the store failing
        with pytest.raises(NotFound):
            await timed.get_event(events[2].id)
        assert (await timed.accept(events[2], [make_delivery()], WEEK)).duplicate is False
        assert timed.problem() is None
    finally:
        await admin.close()
        await timed.close()


async def test_a_pool_whose_connections_were_all_terminated_recovers(store: PostgresStore) -> None:
    """Every pooled connection terminated while idle: the next check() or accept opens new ones, and /readyz's
    check reports the store fine again."""
    await asyncio.gather(*(accept_one(store) for _ in range(3)))
    pids = pool_pids(store)
    assert pids
    admin = await asyncpg.connect(DSN)
    try:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
        while await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids):
            await asyncio.sleep(0.01)
    finally:
        await admin.close()
    for _ in range(len(pids) + 1):  # each dropped connection fails at most the call that finds it dropped
        if await store.check() is None:
            break
    assert await store.check() is None
    await accept_one(store)
    assert len(await store.list_deliveries(DeliveryFilter())) == 4


async def test_a_terminated_listener_reconnects_and_hears_again(store: PostgresStore) -> None:
    """When the listening connection is terminated it reconnects at once, says work may have been missed ("*"),
    and hears new work again."""
    heard: asyncio.Queue[str] = asyncio.Queue()
    await store.subscribe(heard.put_nowait)
    assert store._listener is not None
    pid = store._listener.get_server_pid()
    admin = await asyncpg.connect(DSN)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    assert await asyncio.wait_for(heard.get(), 3) == "*"
    await accept_one(store, make_delivery(destination="lsq"))
    assert await asyncio.wait_for(heard.get(), 5) == "lsq"


async def test_work_is_announced_only_to_its_own_schema(pg_schema: str) -> None:
    """Two deployments on one database in two schemas: new work in one does not wake the other's listener."""
    other_schema = f"tb_test_{uuid.uuid4().hex[:12]}"
    a, b = PostgresStore(DSN, schema=pg_schema), PostgresStore(DSN, schema=other_schema)
    assert channel_for(pg_schema) != channel_for(other_schema)
    await a.open()
    await b.open()
    try:
        heard_b: asyncio.Queue[str] = asyncio.Queue()
        await b.subscribe(heard_b.put_nowait)
        await accept_one(a, make_delivery(destination="only-in-a"))
        await accept_one(b, make_delivery(destination="only-in-b"))
        # Notifications arrive in commit order: had b heard a's, "only-in-a" would come first.
        assert await asyncio.wait_for(heard_b.get(), 5) == "only-in-b"
        assert heard_b.empty()
    finally:
        await a.close()
        await b.close()
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{other_schema}" CASCADE')
        finally:
            await conn.close()


def test_long_schema_names_get_a_channel_within_postgresqls_limit() -> None:
    """A schema name of 63 characters still gives a channel of at most 63 bytes, distinct per schema."""
    long_a, long_b = "a" * 63, "a" * 62 + "b"
    assert len(channel_for(long_a)) <= 63
    assert channel_for(long_a) != channel_for(long_b)
    assert channel_for(None) == "ticketbridge_work"


async def test_a_group_counts_each_message_in_its_conversation(store: PostgresStore) -> None:
    """Messages of one conversation stored in one group (one statement, or savepoints beside a nonce) are each
    counted once in it, a duplicate not at all, and only the first is claimable."""
    def threaded() -> NewDelivery:
        return make_delivery(conversation="m|k", conversation_key="k")

    first = [threaded() for _ in range(3)]
    results = await asyncio.gather(store.accept(make_event(dedup_key="a"), [first[0]], WEEK),
                                   store.accept(make_event(dedup_key="a"), [threaded()], WEEK),
                                   *(store.accept(make_event(), [d], WEEK) for d in first[1:]))
    assert store.batcher.groups == 1 and [r.duplicate for r in results] == [False, True, False, False]
    (found,) = await store.get_conversations("k")
    assert (found.conversation.messages, [d.id for d in found.deliveries]) == (3, [d.id for d in first])
    more = [threaded() for _ in range(2)]
    await asyncio.gather(store.accept(make_event(), [more[0]], WEEK),
                         store.accept(make_event(), [more[1]], WEEK, nonce("tok", "body")))
    (found,) = await store.get_conversations("k")
    assert found.conversation.messages == 5
    assert [c.id for c in (await store.claim("kapture-support", 10, "w", 30)).items] == [first[0].id]


@pytest.mark.parametrize("alone", ["nul-dedup-key", "nonce"])
async def test_a_message_stored_alone_keeps_its_place_before_a_later_one_of_its_conversation(
        store: PostgresStore, alone: str) -> None:
    """An accept stored alone in its group (a dedup key holding a NUL, a nonce) and a plain one after it, of one
    conversation, are stored in the order they were accepted: the first is the conversation's head and opens its
    ticket. Before, the group stored its plain accepts first and the second message became the head."""
    first = make_delivery(conversation="contact-to-kapture|thread-C", conversation_key="thread-C")
    second = make_delivery(conversation="contact-to-kapture|thread-C", conversation_key="thread-C")
    if alone == "nonce":
        stored_alone = store.accept(make_event(dedup_key="msg-1"), [first], WEEK, nonce("tok", "body"))
    else:
        stored_alone = store.accept(make_event(dedup_key="msg\x00-1"), [first], WEEK)
    await asyncio.gather(stored_alone, store.accept(make_event(dedup_key="msg-2"), [second], WEEK))
    assert store.batcher.groups == 1
    (found,) = await store.get_conversations("thread-C")
    assert [d.id for d in found.deliveries] == [first.id, second.id]
    assert [c.id for c in (await store.claim("kapture-support", 10, "w", 30)).items] == [first.id]


async def test_a_message_stored_alone_after_its_conversations_plain_ones_takes_its_place(
        store: PostgresStore) -> None:
    """Plain accepts stored in one statement and, after them, one stored alone of the same conversation keep their
    order too."""
    deliveries = [make_delivery(conversation="m|t", conversation_key="t") for _ in range(3)]
    await asyncio.gather(store.accept(make_event(), [deliveries[0]], WEEK),
                         store.accept(make_event(), [deliveries[1]], WEEK),
                         store.accept(make_event(dedup_key="x\x00y"), [deliveries[2]], WEEK))
    assert store.batcher.groups == 1
    (found,) = await store.get_conversations("t")
    assert [d.id for d in found.deliveries] == [d.id for d in deliveries]


async def test_a_burst_of_large_accepts_is_stored_in_groups_of_at_most_group_bytes(store: PostgresStore) -> None:
    """Accepts made together are grouped up to GROUP_BYTES of what they send, not only up to group_commit_max:
    accepts over a third of it each (event payload and delivery body) go two to a group, one over the bound by
    itself goes alone, and every accept is stored and answered with its own result; a dedup key used again in a
    later group is still a duplicate of the first."""
    sixth = GROUP_BYTES // 6

    def large(chars: int, key: str | None = None) -> tuple[Event, NewDelivery]:
        return make_event(dedup_key=key, text="p" * chars), make_delivery(body={"comment": "b" * chars})

    accepts = [large(sixth, "k"), large(sixth), large(sixth), large(GROUP_BYTES), large(sixth, "k"), large(10)]
    sizes = [PendingAccept(e, [d], WEEK, None).size for e, d in accepts]
    assert all(GROUP_BYTES // 3 < s < GROUP_BYTES // 2 for s in sizes[:3]) and sizes[3] > GROUP_BYTES
    results = await asyncio.gather(*(store.accept(e, [d], WEEK) for e, d in accepts))
    assert (store.batcher.groups, store.batcher.grouped) == (4, 6)  # [1, 2], [3], [big], [duplicate of 1, small]
    assert [(r.event_id, r.duplicate, r.deliveries) for r in results] == [
        (e.id, False, 1) for e, _ in accepts[:4]] + [(accepts[0][0].id, True, 0), (accepts[5][0].id, False, 1)]
    for i, (e, d) in enumerate(accepts):
        if i == 4:
            with pytest.raises(NotFound):
                await store.get_event(e.id)
            continue
        assert await store.get_event(e.id) == e
        assert (await store.get_delivery(d.id)).body == d.body


async def test_a_dedup_key_in_a_split_burst_goes_to_the_first_request(store: PostgresStore) -> None:
    """A burst split by the byte bound into [A] and [filler, B], A and B holding one dedup key: the second group's
    smaller statement is not sent beside the first, so A always owns the key and B is its duplicate (run beside
    it, the second group's statement reached the server first in about one burst of ten)."""
    part = GROUP_BYTES * 3 // 8
    assert store.batcher.concurrent >= 2  # a slot is free for the second group
    for trial in range(20):
        key = f"k{trial}"
        first = make_event(dedup_key=key, text="a" * part), make_delivery(body={"c": "b" * part})
        filler = make_event(text="f" * (GROUP_BYTES // 4)), make_delivery()
        second = make_event(dedup_key=key, text="x"), make_delivery()
        groups = store.batcher.groups
        results = await asyncio.gather(*(store.accept(e, [d], WEEK) for e, d in (first, filler, second)))
        assert store.batcher.groups - groups == 2
        assert [(r.event_id, r.duplicate) for r in results] == [
            (first[0].id, False), (filler[0].id, False), (first[0].id, True)], trial


def mail(thread: str) -> NewDelivery:
    """A reply in the email thread `thread`, whose conversation only its first sender joins (sender_checked)."""
    return make_delivery(conversation=f"m|mail:{thread}", conversation_key=f"mail:{thread}", sender="u@x.example",
                         sender_checked=True)


async def each_waits_on_a_lock(conn: asyncpg.Connection, stores: tuple[PostgresStore, ...]) -> bool:
    """Whether a pooled connection of each of `stores` waits for a lock another transaction holds."""
    for store in stores:
        if not await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[]) "
                                   "AND wait_event_type = 'Lock'", pool_pids(store)):
            return False
    return True


async def test_replies_to_the_same_threads_in_opposite_orders_do_not_deadlock(
        two: tuple[PostgresStore, PostgresStore], pg_schema: str) -> None:
    """Two processes' groups of sender-checked replies (every email thread's) to the same threads, arriving in
    opposite orders, lock the threads' conversations in one order: neither deadlocks, so no reply is answered 503,
    none is tried twice, and every one is counted in its thread. The middle thread is held locked until both groups
    wait, so that they are sure to meet (run one message at a time in arrival order, each group held the threads on
    its side of the middle and waited for the other's: a deadlock every time)."""
    a, b = two
    threads = [f"t{i:02}" for i in range(20)]
    await asyncio.gather(*(accept_one(a, mail(t)) for t in threads))
    holder = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", "m|mail:t10")
        groups = (a.batcher.groups, b.batcher.groups)
        with capture_logs() as logs:
            accepts = asyncio.gather(*(a.accept(make_event(), [mail(t)], WEEK) for t in threads),
                                     *(b.accept(make_event(), [mail(t)], WEEK) for t in reversed(threads)),
                                     return_exceptions=True)
            await eventually(lambda: each_waits_on_a_lock(holder, two))
            await held.rollback()
            results = await accepts
    finally:
        await holder.close()
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert (a.batcher.groups - groups[0], b.batcher.groups - groups[1]) == (1, 1)
    assert not [e for e in logs if e["event"] in ("store.failing", "store.deadlock_retried")]
    assert a.problem() is None and b.problem() is None
    for t in threads:
        (found,) = await a.get_conversations(f"mail:{t}")
        assert (found.conversation.messages, len(found.deliveries)) == (3, 3), t


async def test_replies_that_deadlock_opening_the_same_threads_are_stored_once_more(
        two: tuple[PostgresStore, PostgresStore], pg_schema: str) -> None:
    """Threads not yet stored cannot be locked before they are written: two groups opening the same new threads in
    opposite orders deadlock, and the server fails one's statement. That group is rolled back and run once more, so
    every message is stored and counted, none answered 503. The middle thread is held, inserted but not committed,
    until both groups wait for it, so that they are sure to meet."""
    a, b = two
    threads = ["t0", "t1", "t2"]
    holder = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("INSERT INTO conversations (id, key, mapping, destination, messages, started_at, "
                             "last_message_at) VALUES ('m|mail:t1', 'mail:t1', 'm', 'kapture-support', 1, 0, 0)")
        with capture_logs() as logs:
            accepts = asyncio.gather(*(a.accept(make_event(), [mail(t)], WEEK) for t in threads),
                                     *(b.accept(make_event(), [mail(t)], WEEK) for t in reversed(threads)),
                                     return_exceptions=True)
            await eventually(lambda: each_waits_on_a_lock(holder, two))
            await held.rollback()
            results = await accepts
    finally:
        await holder.close()
    assert [r for r in results if isinstance(r, BaseException)] == []
    events = [e["event"] for e in logs]
    assert "store.deadlock_retried" in events and "store.failing" not in events
    assert a.problem() is None and b.problem() is None
    for t in threads:
        (found,) = await a.get_conversations(f"mail:{t}")
        assert (found.conversation.messages, len(found.deliveries)) == (2, 2), t


async def test_a_key_and_a_conversation_are_taken_in_one_order_by_both_kinds_of_group(
        two: tuple[PostgresStore, PostgresStore], pg_schema: str) -> None:
    """An accept with dedup key K and a delivery in conversation C, in a group with an email reply (stored one
    accept at a time), and a provider's retry of it in another process's group statement: both take K before C,
    so the retry waits for the first group and is its duplicate, with no deadlock (the first group locked the
    conversations before K, the statement K before C: a deadlock every time). The email thread is held locked
    until both wait, so that they are sure to meet."""
    a, b = two

    def plain() -> NewDelivery:
        return make_delivery(conversation="a|C", conversation_key="C")

    await accept_one(a, plain())
    await accept_one(a, mail("D"))
    holder = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
    first, retry = make_event(dedup_key="K"), make_event(dedup_key="K")
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM conversations WHERE id = 'm|mail:D' FOR UPDATE")
        groups = a.batcher.groups
        with capture_logs() as logs:
            group = asyncio.gather(a.accept(first, [plain()], WEEK), a.accept(make_event(), [mail("D")], WEEK),
                                   return_exceptions=True)
            await eventually(lambda: each_waits_on_a_lock(holder, (a,)))
            again = asyncio.ensure_future(b.accept(retry, [plain()], WEEK))
            await eventually(lambda: each_waits_on_a_lock(holder, (b,)))
            await held.rollback()
            results = await group
            result = await again
    finally:
        await holder.close()
    assert a.batcher.groups - groups == 1
    assert [type(r).__name__ for r in results] == ["AcceptResult", "AcceptResult"]
    assert (result.event_id, result.duplicate) == (first.id, True)
    assert not [e for e in logs if e["event"] in ("store.failing", "store.deadlock_retried")]
    (found,) = await a.get_conversations("C")
    assert found.conversation.messages == 2


def deadlocking_accepts(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, int], Counter[str]]:
    """Make the store's accept_one fail as a deadlock (40P01) the first n tries of an event (n: the returned dict,
    event id → n, empty to start with); the Counter returned counts every event's tries."""
    deadlocks: dict[str, int] = {}
    tries: Counter[str] = Counter()
    accept_one_really = pg_batch.accept_one

    async def deadlocking(conn: asyncpg.Connection, item: PendingAccept, *args: Any) -> AcceptResult:
        tries[item.event.id] += 1
        if tries[item.event.id] <= deadlocks.get(item.event.id, 0):
            await conn.execute("SELECT 1")  # a statement of its own, rolled back with it
            raise asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
        return await accept_one_really(conn, item, *args)

    monkeypatch.setattr(pg_batch, "accept_one", deadlocking)
    return deadlocks, tries


async def test_a_deadlock_retry_keeps_a_thread_in_arrival_order(
        store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread's first message (alice), a reply from bob and one from alice in one group; alice's first accept
    deadlocks once. The group is run again from its start, so her message still comes first: the thread is hers,
    with her two messages in order, and bob's reply, of another sender, opens a conversation of its own (retried
    after its group committed, her first message drew a later arrival than the replies: bob headed the thread, and
    both of hers, split off, made conversations and tickets of their own)."""
    deadlocks, tries = deadlocking_accepts(monkeypatch)
    events = [make_event(subject="original"), make_event(subject="reply"), make_event(subject="follow-up")]
    deadlocks[events[0].id] = 1

    def message(sender: str) -> NewDelivery:
        return make_delivery(conversation="m|mail:x", conversation_key="mail:x", sender=sender, sender_checked=True)

    messages = [message("alice@x.example"), message("bob@x.example"), message("alice@x.example")]
    with capture_logs() as logs:
        results = await asyncio.gather(*(store.accept(e, [d], WEEK) for e, d in zip(events, messages, strict=True)))
    assert [(r.event_id, r.duplicate) for r in results] == [(e.id, False) for e in events]
    assert store.batcher.groups == 1 and tries[events[0].id] == 2
    assert [e["accepts"] for e in logs if e["event"] == "store.deadlock_retried"] == [3]
    assert [e["delivery_id"] for e in logs if e["event"] == "conversation.sender_mismatch"] == [messages[1].id]
    (found,) = await store.get_conversations("mail:x")
    assert (found.conversation.id, found.conversation.sender, found.conversation.messages) == (
        "m|mail:x", "alice@x.example", 2)
    assert [d.id for d in found.deliveries] == [messages[0].id, messages[2].id]
    batch = await store.claim("kapture-support", 10, "me", 30)
    assert [d.id for d in batch.items] == [messages[0].id, messages[1].id]  # alice's reply waits for her first


async def test_a_group_is_run_again_after_each_deadlock_and_one_in_its_last_run_fails_the_accept_it_hits(
        store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deadlock (40P01) rolls its whole group back, and the group is run again from its start, up to DEADLOCK_RUNS
    runs in all (a run that meets a third process's group after the first deadlock is not the last); a deadlock in
    the last run fails the accept it hits alone (StoreUnavailable: 503), nothing of it stored, the rest of its group
    stored. So for a group of one."""
    assert DEADLOCK_RUNS == 3
    deadlocks, tries = deadlocking_accepts(monkeypatch)
    once, twice, thrice, never = make_event(), make_event(), make_event(), make_event()
    deadlocks.update({once.id: 1, twice.id: 1, thrice.id: 1})
    with capture_logs() as logs:
        results = await asyncio.gather(*(store.accept(e, [mail(t)], WEEK)
                                         for e, t in ((once, "a"), (twice, "b"), (thrice, "c"), (never, "d"))),
                                       return_exceptions=True)
    assert store.batcher.groups == 1
    assert [type(r).__name__ for r in results] == ["AcceptResult", "AcceptResult", "StoreUnavailable", "AcceptResult"]
    assert "deadlock detected" in str(results[2])
    retried = [(e["accepts"], e["run"]) for e in logs if e["event"] == "store.deadlock_retried"]
    assert retried == [(4, 1), (4, 2)]  # the whole group, twice
    # once's deadlock ended the first run before the others were tried, twice's (its first) the second; in the
    # third, thrice's ended only its own
    assert (tries[once.id], tries[twice.id], tries[thrice.id], tries[never.id]) == (3, 2, 1, 1)
    with pytest.raises(NotFound):
        await store.get_event(thrice.id)
    assert [await store.get_event(e.id) for e in (once, twice, never)] == [once, twice, never]
    for alone, times in ((make_event(), 2), (make_event(), 3)):
        deadlocks[alone.id] = times
        if times < DEADLOCK_RUNS:
            assert (await store.accept(alone, [mail("e")], WEEK)).event_id == alone.id
        else:
            with pytest.raises(StoreUnavailable, match="deadlock detected"):
                await store.accept(alone, [mail("f")], WEEK)
        assert tries[alone.id] == min(times + 1, DEADLOCK_RUNS)


async def test_a_message_held_behind_its_conversation_takes_its_place_after_the_one_committed_first(
        store: PostgresStore) -> None:
    """A group's accept of a message in a conversation another transaction is writing (an accept of another process,
    holding the conversation's row) waits for that transaction before it takes its arrival, so the two are ordered
    as they commit: a reader following a conversation page after page (`conversation_slice` after the last one
    read) sees each message once. Before, the group statement inserted its deliveries, taking their arrival,
    before it upserted their conversations: the message committed second sorted first, and a reader that had read
    past the first had skipped it."""
    await accept_one(store, make_delivery(conversation="m|k", conversation_key="k"))
    other = make_delivery(conversation="m|k", conversation_key="k")
    admin = await asyncpg.connect(DSN, server_settings={"search_path": store.schema})
    try:
        async with admin.transaction():  # another process's accept, as accept_one writes it: the row, then the rest
            await admin.execute("UPDATE conversations SET messages = messages + 1, stored = stored + 1 "
                                "WHERE id = 'm|k'")
            waiting = asyncio.ensure_future(accept_one(store, make_delivery(conversation="m|k", conversation_key="k")))
            await eventually(lambda: each_waits_on_a_lock(admin, (store,)))
            await admin.execute("INSERT INTO events (id, source, kind, channel, received_at, data, routed) "
                                "VALUES ('evt_other', 'partner', 'json', 'webhook', 0, '{}'::bytea, 1)")
            await admin.execute(
                "INSERT INTO deliveries (id, event_id, source, mapping, mapping_version, destination, action, status, "
                "options, next_attempt_at, created_at, updated_at, conversation) SELECT $1, 'evt_other', source, "
                "mapping, mapping_version, destination, action, 'pending', options, 0, 0, 0, conversation "
                "FROM deliveries WHERE conversation = 'm|k'", other.id)
        _, (held,) = await waiting
    finally:
        await admin.close()
    whole = await store.conversation_slice("m|k", 10)
    assert [d.id for d in whole.deliveries][1:] == [other.id, held]
    # A reader that read up to the other process's message, before the held one was committed, reads on after it.
    after = await store.conversation_slice("m|k", 10, after=whole.arrivals[1])
    assert [d.id for d in after.deliveries] == [held]


def encoding_threads(monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[int, int]], list[int]]:
    """From now on: each piece of a long string the store encodes (its thread, its length), and the thread of each
    value it encodes at once (an event's or a body's JSON, a delivery's options, a heavy value's rest)."""
    pieced: list[tuple[int, int]] = []
    whole: list[int] = []
    encode_piece, encode = pieces._encode_piece, pg_batch.encode

    def piece(text: str) -> bytes:
        pieced.append((threading.get_ident(), len(text)))
        return encode_piece(text)

    def at_once(value: Any) -> bytes:
        whole.append(threading.get_ident())
        return encode(value)

    monkeypatch.setattr(pieces, "_encode_piece", piece)
    monkeypatch.setattr(pg_batch, "encode", at_once)
    return pieced, whole


@pytest.mark.parametrize("key", [None, "k"])
async def test_a_heavy_accept_is_encoded_off_the_loop_a_piece_at_a_time(
        store: PostgresStore, monkeypatch: pytest.MonkeyPatch, key: str | None) -> None:
    """An accept weighing more than large_accept_bytes (a large mail's) has its event and its deliveries' bodies
    encoded in the parser thread, their long strings PIECE_CHARS at a time (msgspec holds the GIL for all of one
    call): no step of it holds the loop, nor the GIL, for the whole text. They were encoded at once on the loop
    before. It reads back as it was given, and a second accept of its dedup key is a duplicate."""
    monkeypatch.setattr(pieces, "PIECE_CHARS", 1000)
    store.large_accept_bytes = 1000
    pieced, whole = encoding_threads(monkeypatch)
    heavy = make_event(text="~" * 10_000, dedup_key=key)
    long_body, small_body = make_delivery(body={"comment": "~" * 10_000}), make_delivery(body={"title": "small"})
    assert (await store.accept(heavy, [long_body, small_body], WEEK, weight=20_000)).event_id == heavy.id
    loop_thread = threading.get_ident()
    assert sum(length for _, length in pieced) == 20_000 and max(length for _, length in pieced) == 1000
    assert loop_thread not in {thread for thread, _ in pieced} | set(whole)
    assert await store.get_event(heavy.id) == heavy
    assert [(await store.get_delivery(d.id)).body for d in (long_body, small_body)] == [long_body.body,
                                                                                         small_body.body]
    again = make_event(text="~" * 10_000, dedup_key=key)
    assert (await store.accept(again, [make_delivery()], WEEK, weight=20_000)).duplicate is (key is not None)


async def test_a_light_accept_is_encoded_on_the_loop_with_no_hand_off(
        store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """An accept weighing large_accept_bytes or less (a form post's) is encoded at once on the loop, where it costs
    less than a hand-off to a thread would: nothing of it goes to the parser thread."""
    store.large_accept_bytes = 1000
    monkeypatch.setattr(pieces, "PIECE_CHARS", 1000)
    pieced, _ = encoding_threads(monkeypatch)
    handed: list[Any] = []
    monkeypatch.setattr(offload, "in_parser", lambda fn, *args: handed.append(fn))
    light = make_event(text="~" * 5000)
    assert (await store.accept(light, [make_delivery(body={"comment": "~" * 5000})], WEEK, weight=1000)).event_id \
        == light.id
    assert (pieced, handed) == ([], [])
    assert await store.get_event(light.id) == light


async def test_a_heavy_accept_whose_text_is_refused_raises_as_on_the_loop(store: PostgresStore) -> None:
    """Text that is not UTF-8 (a lone surrogate) raises UnicodeEncodeError from the parser thread that encodes it,
    as it does on the loop, so that intake stores the event again escaped; nothing of it is stored, and the store
    is not taken for failing."""
    store.large_accept_bytes = 0
    refused, fine = make_event(text="\udc80" * 10), make_event()
    with pytest.raises(UnicodeEncodeError):
        await store.accept(refused, [make_delivery()], WEEK, weight=1)
    assert (await store.accept(fine, [make_delivery()], WEEK, weight=1)).event_id == fine.id
    with pytest.raises(NotFound):
        await store.get_event(refused.id)
    assert store.problem() is None


async def test_a_large_event_read_back_is_decoded_off_the_loop_a_piece_at_a_time(
        store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large mail's event, read back for each follow-up of its thread, is decoded in the parser thread, its long
    strings a piece at a time: decoded on the loop in one call, 60 MiB held it 65 ms. A small one is decoded on the
    loop, with no hand-off."""
    monkeypatch.setattr(postgres, "DECODE_AT_ONCE_BYTES", 1000)
    monkeypatch.setattr(pieces, "DECODE_AT_ONCE_BYTES", 1000)
    monkeypatch.setattr(pieces, "PIECE_CHARS", 1000)
    monkeypatch.setattr(pieces, "_PROBE_BYTES", 100)
    large = make_event(text="~" * 5000, stripped_text="~" * 5000, provider={"TextBody": "~" * 5000})
    small = make_event(text="~" * 100)
    await accept_one(store, event=large)
    await accept_one(store, event=small)
    calls: list[tuple[int, int]] = []
    decode = pieces._decode_str

    def noted(piece: Any) -> Any:
        calls.append((threading.get_ident(), bytes(piece).count(b"~")))
        return decode(piece)

    monkeypatch.setattr(pieces, "_decode_str", noted)
    assert await store.get_event(large.id) == large
    assert calls and threading.get_ident() not in {thread for thread, _ in calls}
    assert max(tildes for _, tildes in calls) == 1000
    calls.clear()
    handed: list[Any] = []
    monkeypatch.setattr(offload, "in_parser", lambda fn, *args: handed.append(fn))
    assert await store.get_event(small.id) == small
    assert (calls, handed) == ([], [])
