"""Attempts' records on PostgreSQL: records that finish together share one statement and one commit, and each keeps
the fate it would have had alone (its lease, its numbering, its conversation's ticket, a failure of its own)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import msgspec
import pytest
from structlog.testing import capture_logs

from bridge.errors import LeaseLost, NotFound, StoreRefused, StoreUnavailable
from bridge.store.base import AttemptResult, DeliveryFilter
from bridge.store.pg_record import PendingRecord
from bridge.store.postgres import PostgresStore
from bridge.store.rows import GROUP_BYTES
from tests.bench.pg_round_trips import RoundTrips
from tests.conftest import eventually
from tests.integration.processes import DSN
from tests.integration.store.contract import accept_one, make_delivery, result, row

pytestmark = pytest.mark.integration


@pytest.fixture
def store(pg_store: PostgresStore) -> PostgresStore:
    return pg_store


@pytest.fixture
def trips() -> Iterator[RoundTrips]:
    with RoundTrips() as counted:
        yield counted


async def claimed(store: PostgresStore, n: int, owner: str = "me") -> list[str]:
    """`n` deliveries accepted and claimed by `owner`, in id order."""
    _, ids = await accept_one(store, *(make_delivery() for _ in range(n)))
    got = (await store.claim("kapture-support", n, owner, 60)).items
    assert sorted(c.id for c in got) == sorted(ids)
    return sorted(ids)


async def record_all(store: PostgresStore, attempts: list[tuple[AttemptResult, str | None]],
                     ) -> list[BaseException | None]:
    """Record `attempts` (each with its owner) at once, as lanes whose answers arrive together do."""
    return await asyncio.gather(*(store.record(a, owner=o) for a, o in attempts), return_exceptions=True)


async def test_concurrent_records_take_one_round_trip(store: PostgresStore, trips: RoundTrips) -> None:
    """Twenty records made in one turn of the loop are written by one statement, each delivery moved on and each
    attempt numbered by its own row."""
    ids = await claimed(store, 20)
    trips.counting = True
    outcomes = await record_all(store, [(result(d, "succeeded", ticket_id=f"T-{i}"), "me") for i, d in enumerate(ids)])
    trips.counting = False
    assert outcomes == [None] * 20
    assert sum(trips.statements.values()) == 1, trips.statements
    for i, d in enumerate(ids):
        detail = await store.get_delivery(d)
        assert (detail.delivery.status, detail.delivery.attempts, detail.delivery.ticket_id) == ("succeeded", 1,
                                                                                                  f"T-{i}")
        assert [a.n for a in detail.attempts] == [1]


async def test_a_record_alone_takes_one_round_trip(store: PostgresStore, trips: RoundTrips) -> None:
    """A record made alone is written by one statement, as before records were grouped."""
    (d,) = await claimed(store, 1)
    trips.counting = True
    await store.record(result(d, "succeeded", ticket_id="T-1"), owner="me")
    trips.counting = False
    assert sum(trips.statements.values()) == 1, trips.statements
    assert (await row(store, d)).status == "succeeded"


async def test_a_lost_lease_in_a_group_fails_only_its_own_record(store: PostgresStore, trips: RoundTrips) -> None:
    """In one group: a record whose lease another sender took (LeaseLost, nothing written), one of a delivery that
    does not exist (NotFound), one without an owner of a delivery given back (its attempt kept alone), and the
    others, written in the group's one statement."""
    lost, *mine = await claimed(store, 4)
    await store.release([lost], owner="me")
    assert [c.id for c in (await store.claim("kapture-support", 1, "fresh", 60)).items] == [lost]
    _, (given_back,) = await accept_one(store)
    await store.claim("kapture-support", 1, "slow", -1)
    assert await store.release_expired() == 1
    attempts: list[tuple[AttemptResult, str | None]] = [
        (result(mine[0], "succeeded", ticket_id="T-0"), "me"),
        (result(lost, "dead", classification="permanent", error="late"), "me"),
        (result(mine[1], "pending", http_status=503, classification="retry", next_attempt_at_ms=0), "me"),
        (result("dlv_missing", "succeeded"), "me"),
        (result(given_back, "succeeded", ticket_id="T-late"), None),
        (result(mine[2], "dead", classification="permanent", error="bad"), "me"),
    ]
    trips.counting = True
    with capture_logs() as logs:
        outcomes = await record_all(store, attempts)
    trips.counting = False
    assert [type(o).__name__ for o in outcomes] == ["NoneType", "LeaseLost", "NoneType", "NotFound", "NoneType",
                                                     "NoneType"]
    assert isinstance(outcomes[1], LeaseLost) and isinstance(outcomes[3], NotFound)
    assert trips.statements["WITH v AS (SELECT * FROM"] == 1
    assert "WITH u AS (UPDATE deliveries SET" not in trips.statements  # none written again alone
    assert [e["event"] for e in logs] == ["store.record_without_lease"]
    statuses = {d: (await row(store, d)) for d in (lost, *mine, given_back)}
    assert (statuses[lost].status, statuses[lost].attempts, statuses[lost].last_error) == ("in_flight", 0, None)
    assert [(statuses[d].status, statuses[d].attempts) for d in mine] == [("succeeded", 1), ("pending", 1),
                                                                         ("dead", 1)]
    assert (statuses[given_back].status, statuses[given_back].attempts, statuses[given_back].ticket_id) == (
        "pending", 1, None)
    assert [a.n for a in (await store.get_delivery(given_back)).attempts] == [1]
    await store.record(result(lost, "succeeded", ticket_id="T-2"), owner="fresh")
    assert (await row(store, lost)).status == "succeeded"


async def test_a_record_of_an_earlier_claim_in_a_group_fails_only_its_own_record(store: PostgresStore,
                                                                                   trips: RoundTrips) -> None:
    """In one group, all of one owner: a record naming the token of a claim whose lease was reaped (the delivery
    claimed again since by the same owner) fails alone with LeaseLost, nothing written over the new claim; the
    others, naming their claims' tokens, are written by the group's one statement."""
    _, ids = await accept_one(store, *(make_delivery() for _ in range(3)))
    [stale] = (await store.claim("kapture-support", 1, "me", -1)).items
    assert await store.release_expired() == 1
    batch = (await store.claim("kapture-support", 3, "me", 60)).items
    token = {c.id: c.token for c in batch}
    assert sorted(token) == sorted(ids) and token[stale.id] != stale.token
    others = sorted(set(ids) - {stale.id})
    trips.counting = True
    outcomes = await asyncio.gather(
        store.record(result(others[0], "succeeded", ticket_id="T-0"), owner="me", token=token[others[0]]),
        store.record(result(stale.id, "succeeded", ticket_id="T-late"), owner="me", token=stale.token),
        store.record(result(others[1], "succeeded", ticket_id="T-1"), owner="me", token=token[others[1]]),
        return_exceptions=True)
    trips.counting = False
    assert [type(o).__name__ for o in outcomes] == ["NoneType", "LeaseLost", "NoneType"]
    assert trips.statements["WITH v AS (SELECT * FROM"] == 1
    assert "WITH u AS (UPDATE deliveries SET" not in trips.statements
    kept = await row(store, stale.id)
    assert (kept.status, kept.attempts, kept.ticket_id) == ("in_flight", 0, None)
    assert [(await row(store, d)).status for d in others] == ["succeeded", "succeeded"]
    await store.record(result(stale.id, "succeeded", ticket_id="T-2"), owner="me", token=token[stale.id])
    assert (await row(store, stale.id)).ticket_id == "T-2"


async def test_a_refused_value_in_a_group_fails_only_its_own_record(store: PostgresStore) -> None:
    """A value the database refuses (an HTTP status past INTEGER) fails its record alone with StoreRefused; the
    group's other records are written, the store is not counted failing, and the refused record's delivery keeps
    its lease for the reduced record that follows."""
    ids = await claimed(store, 5)
    attempts: list[tuple[AttemptResult, str | None]] = [
        (result(d, "pending", http_status=2**40 if i == 2 else 500, classification="retry", next_attempt_at_ms=0),
         "me") for i, d in enumerate(ids)]
    with capture_logs() as logs:
        outcomes = await record_all(store, attempts)
    assert store.records.groups == 1
    assert isinstance(outcomes[2], StoreRefused) and "int32" in str(outcomes[2])
    assert [o for i, o in enumerate(outcomes) if i != 2] == [None] * 4
    assert "store.failing" not in [e["event"] for e in logs]
    assert (await store.check(), store.commit_failures) == (None, 0)
    rows = {r.id: r for r in await store.list_deliveries(DeliveryFilter())}
    assert [(rows[d].status, rows[d].attempts) for d in ids] == [("pending", 1)] * 2 + [("in_flight", 0)] + [
        ("pending", 1)] * 2
    await store.record(msgspec.structs.replace(attempts[2][0], http_status=None), owner="me")
    assert (await row(store, ids[2])).attempts == 1


async def test_two_records_of_one_delivery_in_a_group_are_written_in_turn(store: PostgresStore) -> None:
    """A delivery recorded twice in one group (without an owner) is recorded as two records in turn would be: the
    first moves it on, the second keeps its attempt (numbered after the first) and changes nothing else."""
    (d,) = await claimed(store, 1)
    outcomes = await record_all(store, [(result(d, "succeeded", ticket_id="T-1"), None),
                                        (result(d, "dead", classification="permanent", error="x"), None)])
    assert outcomes == [None, None]
    assert store.records.groups == 1
    detail = await store.get_delivery(d)
    assert (detail.delivery.status, detail.delivery.ticket_id) == ("succeeded", "T-1")
    assert [(a.n, a.classification) for a in detail.attempts] == [(1, "success"), (2, "permanent")]


async def test_creates_in_a_group_give_each_conversation_its_ticket(store: PostgresStore, trips: RoundTrips) -> None:
    """Creates of two conversations recorded in one statement give each conversation its own ticket; a follow-up's
    success in the same group gives none."""
    a = make_delivery(conversation="m|a", conversation_key="a")
    b = make_delivery(conversation="m|b", conversation_key="b")
    c = make_delivery(conversation="m|c", conversation_key="c")
    for d in (a, b, c):
        await accept_one(store, d)
    assert len((await store.claim("kapture-support", 10, "w", 30)).items) == 3
    trips.counting = True
    outcomes = await record_all(store, [
        (msgspec.structs.replace(result(a.id, "succeeded", ticket_id="T-a"), role="create", ticket_key="#a"), "w"),
        (msgspec.structs.replace(result(b.id, "succeeded", ticket_id="T-b"), role="create",
                                 ticket_uuid="uuid-b"), "w"),
        (msgspec.structs.replace(result(c.id, "succeeded", ticket_id="T-c"), role="follow_up"), "w"),
    ])
    trips.counting = False
    assert outcomes == [None] * 3
    assert sum(trips.statements.values()) == 1, trips.statements
    tickets = {}
    for key in ("a", "b", "c"):
        (found,) = await store.get_conversations(key)
        tickets[key] = (found.conversation.ticket_id, found.conversation.ticket_key, found.conversation.ticket_uuid)
    assert tickets == {"a": ("T-a", "#a", None), "b": ("T-b", None, "uuid-b"), "c": (None, None, None)}


def varied(d: str, i: int) -> AttemptResult:
    """The i-th of the kinds of record whose columns the group's statement writes differently from a plain success:
    unknown outcomes (in doubt, counted; a resend's duplicate; one settled unsent), a follow-up's action and body,
    a third ticket reference, text that is empty rather than absent, no status, an exchange kept."""
    base = result(d, "succeeded", ticket_id=f"T-{i}")
    kinds = [
        msgspec.structs.replace(base, classification="unknown", next_status="pending", next_attempt_at_ms=10**13,
                                http_status=None, error="timed out", ticket_id=None),
        msgspec.structs.replace(base, classification="unknown", next_status="pending", duplicate=True,
                                next_attempt_at_ms=10**13, ticket_id=None, error="reset"),
        msgspec.structs.replace(base, classification="unknown", next_status="pending", unsent=True,
                                next_attempt_at_ms=10**13, ticket_id=None, error="reconciliation stopped"),
        msgspec.structs.replace(base, role="follow_up", action="add_comment", body={"comment": "still down", "x": None,
                                                                                   "y": ""}),
        msgspec.structs.replace(base, ticket_uuid="8d5c-uuid", ticket_key="K-1"),
        msgspec.structs.replace(base, ticket_id="", ticket_key="", error="", response_excerpt=""),
        msgspec.structs.replace(base, http_status=None, response_excerpt=None, exchange={"request": {"url": "u"}}),
        msgspec.structs.replace(base, classification="permanent", next_status="dead", error="HTTP 400 \U0001f600",
                                ticket_id=None, exchange={}),
        base,
    ]
    return kinds[i % len(kinds)]


async def test_a_group_writes_each_record_as_it_would_be_written_alone(store: PostgresStore) -> None:
    """The same kinds of record written one at a time on some deliveries and together in one group on others leave
    the same rows: status, counts, doubt, follow-up body and action, every ticket reference, and the attempts."""
    alone = await claimed(store, 9)
    grouped = await claimed(store, 9)
    for i, d in enumerate(alone):
        await store.record(varied(d, i), owner="me")
    assert await record_all(store, [(varied(d, i), "me") for i, d in enumerate(grouped)]) == [None] * 9

    async def written(d: str) -> tuple[object, ...]:
        return tuple(await store._run(lambda conn: conn.fetchrow(
            "SELECT status, attempts, tries, next_attempt_at = 10000000000000, lease_owner, last_error, ticket_id, "
            "ticket_key, ticket_uuid, role, action, body, in_doubt_since IS NOT NULL, unknowns, duplicates "
            "FROM deliveries "
            "WHERE id = $1", d), transaction=False))

    async def attempts(d: str) -> list[tuple[object, ...]]:
        rows = await store._run(lambda conn: conn.fetch(
            "SELECT n, duration_ms, http_status, response_excerpt, classification, error, exchange FROM attempts "
            "WHERE delivery_id = $1 ORDER BY n", d), transaction=False)
        return [tuple(r) for r in rows]

    for a, g in zip(alone, grouped, strict=True):
        assert await written(a) == await written(g)
        assert await attempts(a) == await attempts(g)


STATEMENT_TIMEOUT_MS = 1000
"""A statement_timeout the tests' statements meet only when held up on a lock they hold open on purpose."""


@pytest.fixture
async def admin() -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own, to hold rows locked and to look at the store's sessions."""
    conn = await asyncpg.connect(DSN)
    try:
        yield conn
    finally:
        await conn.close()


def pool_pids(store: PostgresStore) -> set[int]:
    return {h._con.get_server_pid() for h in store._pool._holders if h._con is not None}


async def numbered(store: PostgresStore, d: str) -> tuple[str, int, list[int]]:
    """A delivery's status, its attempt count, and the numbers of its attempts."""
    detail = await store.get_delivery(d)
    return detail.delivery.status, detail.delivery.attempts, [a.n for a in detail.attempts]


async def test_a_group_cut_off_by_a_statement_timeout_is_written_record_by_record(
        store: PostgresStore, pg_schema: str, admin: asyncpg.Connection) -> None:
    """A statement_timeout (57014) that cuts off a group's statement, here held up by a row another transaction has
    locked, costs the record held up alone: the group's other records are written again one by one on the same
    connection (never twice: each attempt numbered 1), and the held-up one fails with StoreUnavailable, written
    once it is recorded again. The connection is not taken for lost: the pool keeps it."""
    ids = await claimed(store, 4)
    slow = ids[2]
    timed = PostgresStore(f"{DSN}?statement_timeout={STATEMENT_TIMEOUT_MS}", schema=pg_schema)
    await timed.open()
    try:
        assert await timed._run(lambda conn: conn.fetchval("SHOW statement_timeout"), transaction=False) == "1s"
        before = pool_pids(timed)
        async with admin.transaction():
            await admin.execute(f'SELECT 1 FROM "{pg_schema}".deliveries WHERE id = $1 FOR UPDATE', slow)
            with capture_logs() as logs:
                outcomes = await record_all(timed, [(result(d, "succeeded", ticket_id=f"T-{i}"), "me")
                                                    for i, d in enumerate(ids)])
        assert timed.records.groups == 1
        assert [o for i, o in enumerate(outcomes) if i != 2] == [None] * 3
        assert isinstance(outcomes[2], StoreUnavailable) and "statement timeout" in str(outcomes[2])
        assert isinstance(outcomes[2].__cause__, asyncpg.QueryCanceledError)
        assert [await numbered(timed, d) for d in ids] == [("succeeded", 1, [1])] * 2 + [("in_flight", 0, [])] + [
            ("succeeded", 1, [1])]
        assert pool_pids(timed) == before  # no connection given up for lost
        # The held-up record's own slowness, not the store's: counted and logged, the store not marked failing.
        events = [e["event"] for e in logs]
        assert timed.commit_failures == 1 and "store.items_cut_off" in events and "store.failing" not in events
        assert timed.problem() is None
        await timed.record(result(slow, "succeeded", ticket_id="T-2"), owner="me")
        assert await numbered(timed, slow) == ("succeeded", 1, [1])
        assert timed.problem() is None
    finally:
        await timed.close()


async def test_records_alone_cut_off_in_turn_fail_the_rest_untried(store: PostgresStore, pg_schema: str,
                                                                   admin: asyncpg.Connection) -> None:
    """When two records written alone after their group was cut off are both cut off (here two rows held
    locked), the server is taken to be slow for every record: the records after them fail with StoreUnavailable
    untried, within three timeouts rather than one per record, and each is written once when recorded again."""
    ids = await claimed(store, 5)
    timed = PostgresStore(f"{DSN}?statement_timeout={STATEMENT_TIMEOUT_MS}", schema=pg_schema)
    await timed.open()
    try:
        async with admin.transaction():
            await admin.execute(f'SELECT 1 FROM "{pg_schema}".deliveries WHERE id = ANY($1::text[]) FOR UPDATE',
                                ids[1:3])
            with capture_logs() as logs:
                outcomes = await record_all(timed, [(result(d, "succeeded"), "me") for d in ids])
        assert timed.records.groups == 1
        assert outcomes[0] is None
        assert all(isinstance(o, StoreUnavailable) for o in outcomes[1:])
        assert ["statement timeout" in str(o) and "not written" not in str(o) for o in outcomes[1:3]] == [True] * 2
        assert ["not written" in str(o) for o in outcomes[3:]] == [True] * 2
        assert [(e["tried"], e["untried"]) for e in logs if e["event"] == "store.group_cut_off"] == [(3, 2)]
        assert timed.problem() is not None  # a server too slow for two items: the store is marked failing
        assert [await numbered(timed, d) for d in ids] == [("succeeded", 1, [1])] + [("in_flight", 0, [])] * 4
        assert await record_all(timed, [(result(d, "succeeded"), "me") for d in ids[1:]]) == [None] * 4
        assert [await numbered(timed, d) for d in ids] == [("succeeded", 1, [1])] * 5
    finally:
        await timed.close()


async def test_a_lost_connection_fails_the_whole_group(store: PostgresStore, pg_schema: str,
                                                       admin: asyncpg.Connection) -> None:
    """A group whose connection the server drops while its statement runs fails as a whole with StoreUnavailable
    (whether it committed cannot be known, so no record is written again on another connection), nothing of it is
    written, the store says it is failing, and the records made again are each written once."""
    ids = await claimed(store, 3)
    async with admin.transaction():
        await admin.execute(f'SELECT 1 FROM "{pg_schema}".deliveries WHERE id = $1 FOR UPDATE', ids[1])
        pending = record_all(store, [(result(d, "succeeded", ticket_id="T"), "me") for d in ids])
        waiting = asyncio.ensure_future(pending)
        ours = list(pool_pids(store))

        async def blocked() -> bool:
            return bool(await admin.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[]) "
                                             "AND wait_event_type = 'Lock'", ours))

        await eventually(blocked)  # fails, rather than hangs, if the group's statement never waits on the lock
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY($1::int[]) "
                            "AND wait_event_type = 'Lock'", ours)
        outcomes = await waiting
    assert store.records.groups == 1
    assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
    assert store.problem() is not None
    assert [await numbered(store, d) for d in ids] == [("in_flight", 0, [])] * 3
    assert await record_all(store, [(result(d, "succeeded", ticket_id="T"), "me") for d in ids]) == [None] * 3
    assert [await numbered(store, d) for d in ids] == [("succeeded", 1, [1])] * 3
    assert store.problem() is None


def follow_up(d: str, body_chars: int) -> AttemptResult:
    return msgspec.structs.replace(result(d, "succeeded"), role="follow_up", action="add_comment",
                                   body={"comment": "x" * body_chars})


async def test_a_group_closes_at_group_bytes_and_a_larger_record_goes_alone(store: PostgresStore) -> None:
    """Records made together are grouped up to GROUP_BYTES of texts, not only up to group_commit_max records:
    follow-ups whose bodies are each over a third of it go two to a group, one over the bound by itself goes
    alone, and every record is written, once."""
    third = GROUP_BYTES // 3 + 1
    sizes = [third, third, third, GROUP_BYTES + 1, third, 10]
    ids = await claimed(store, len(sizes))
    attempts = [follow_up(d, n) for d, n in zip(ids, sizes, strict=True)]
    # PendingRecord.size must be the cost of the bodies themselves, so the groups below are the bound's doing.
    assert [PendingRecord(a, "me").size for a in attempts[:4]] == [third + 14 + 21] * 3 + [GROUP_BYTES + 1 + 14 + 21]
    assert await record_all(store, [(a, "me") for a in attempts]) == [None] * len(sizes)
    assert (store.records.groups, store.records.grouped) == (4, 6)  # [third, third], [third], [big], [third, 10]
    for d, n in zip(ids, sizes, strict=True):
        detail = await store.get_delivery(d)
        assert (detail.delivery.status, [a.n for a in detail.attempts]) == ("succeeded", [1])
        assert detail.body == {"comment": "x" * n}


async def test_a_group_keeps_each_records_ticket_missing(store: PostgresStore, trips: RoundTrips) -> None:
    """Records written by one statement each keep their own `ticket_missing`: the success that named no ticket shows
    it, the one beside it that named its ticket does not."""
    named, unnamed = await claimed(store, 2)
    trips.counting = True
    outcomes = await record_all(store, [
        (result(named, "succeeded", ticket_id="T-1"), "me"),
        (msgspec.structs.replace(result(unnamed, "succeeded"), ticket_missing=True), "me")])
    trips.counting = False
    assert outcomes == [None, None]
    assert sum(trips.statements.values()) == 1, trips.statements
    assert ((await row(store, named)).ticket_missing, (await row(store, unnamed)).ticket_missing) == (False, True)
