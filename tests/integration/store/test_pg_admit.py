"""A PostgreSQL gate's common admit (breaker closed, no hold nor pause) is one statement, which grants what the
transaction it replaces granted, across processes sharing the gate; other states still answer as before."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from bridge.config import RateLimit
from bridge.store.pg_coordination import PgGate
from bridge.store.postgres import PostgresStore
from tests.bench.pg_round_trips import RoundTrips
from tests.conftest import eventually
from tests.integration.processes import DSN

pytestmark = pytest.mark.integration


@pytest.fixture
def trips() -> Iterator[RoundTrips]:
    with RoundTrips() as counted:
        yield counted


@pytest.fixture
async def sql(two: tuple[PostgresStore, PostgresStore]) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to the stores' schema."""
    conn = await asyncpg.connect(DSN, server_settings={"search_path": two[0].schema or "public"})
    yield conn
    await conn.close()


def gates(two: tuple[PostgresStore, PostgresStore], rate: RateLimit | None) -> tuple[PgGate, PgGate]:
    a, b = two
    ga, gb = a.coordination().gate("lsq", rate), b.coordination().gate("lsq", rate)
    assert isinstance(ga, PgGate) and isinstance(gb, PgGate)
    return ga, gb


def statements(trips: RoundTrips) -> int:
    return sum(trips.statements.values())


async def test_an_admit_without_a_rate_limit_is_one_statement(two: tuple[PostgresStore, PostgresStore],
                                                              trips: RoundTrips) -> None:
    """With the breaker closed and no hold, an admit is one statement, the destination's first as its later ones."""
    ga, gb = gates(two, None)
    trips.counting = True
    for gate in (ga, gb, ga):
        before = statements(trips)
        admission = await gate.admit(4)
        assert (admission.granted, admission.held, admission.probe, admission.slots) == (4, False, False, [])
        assert statements(trips) - before == 1, trips.statements


async def test_an_admit_within_a_rate_limit_is_one_statement(two: tuple[PostgresStore, PostgresStore],
                                                             trips: RoundTrips, sql: asyncpg.Connection) -> None:
    """A rate-limited admit takes what the window has room for in one statement, and drops the slots long gone."""
    ga, gb = gates(two, RateLimit(requests=10, per_seconds=60))
    now = await sql.fetchval("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint")
    await sql.execute("INSERT INTO send_slots (destination, at_ms) VALUES ('lsq', $1)", now - 200_000)
    trips.counting = True
    first = await ga.admit(6)
    assert statements(trips) == 1, trips.statements
    second = await gb.admit(6)
    assert statements(trips) == 2, trips.statements
    trips.counting = False
    assert (first.granted, second.granted) == (6, 4)
    assert len(first.slots) == 6 and len(second.slots) == 4 and not first.held and not second.held
    rows = {r[0]: r[1] for r in await sql.fetch("SELECT id, at_ms FROM send_slots")}
    assert sorted(rows) == sorted(first.slots + second.slots)  # the slot two windows old is gone
    assert all(at >= now for at in rows.values())


async def test_a_full_window_is_answered_in_one_statement_with_the_wait_for_its_slot(
        two: tuple[PostgresStore, PostgresStore], trips: RoundTrips, sql: asyncpg.Connection) -> None:
    """With N of N taken in the window, an admit grants none and waits until the send that must leave the window
    before one more fits has left it: the Nth newest, however many more the window holds."""
    ga, _gb = gates(two, RateLimit(requests=3, per_seconds=60))  # a window of 63 s with its margin
    now = await sql.fetchval("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint")
    await sql.executemany("INSERT INTO send_slots (destination, at_ms) VALUES ('lsq', $1)",
                          [(now - ago,) for ago in (55_000, 50_000, 40_000, 30_000)])
    trips.counting = True
    held = await ga.admit(2)
    assert statements(trips) == 1, trips.statements
    assert (held.granted, held.held, held.slots) == (0, True, [])
    assert 12.5 < held.wait_s <= 13.001  # 50 s ago, leaving the 63 s window in 13 s


async def test_slots_given_back_while_an_admit_reads_a_full_window_leave_it_a_wait(
        two: tuple[PostgresStore, PostgresStore], sql: asyncpg.Connection) -> None:
    """Slots given back (their rows deleted, without the gate row's lock: `PgGate.unused`) while an admit reads a
    full window do not leave it without a wait: what it counts and the slot it waits for are read together. A copy of
    `gate_admit` held, right after the read that counts the window, on an advisory lock the test holds lets the
    slots go back at that very point."""
    ga, _gb = gates(two, RateLimit(requests=2, per_seconds=60))
    full = await ga.admit(2)
    assert full.granted == 2
    source: str = await sql.fetchval(
        "SELECT prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE p.proname = 'gate_admit' AND n.nspname = current_schema()")
    key = secrets.randbits(62)
    counted = source.index(";", source.index("INTO taken")) + 1
    paused = f"{source[:counted]}\n    PERFORM pg_advisory_lock({key}); PERFORM pg_advisory_unlock({key});" \
             f"{source[counted:]}"
    await sql.execute("CREATE FUNCTION gate_admit_paused(p_destination TEXT, p_want INTEGER, p_requests INTEGER, "
                      "p_window_ms BIGINT, OUT slots BIGINT[], OUT wait_ms BIGINT) LANGUAGE plpgsql VOLATILE AS "
                      f"$paused${paused}$paused$")
    admitting = await asyncpg.connect(DSN, server_settings={"search_path": two[0].schema or "public"})
    try:
        await sql.execute("SELECT pg_advisory_lock($1)", key)
        answer = asyncio.ensure_future(admitting.fetchrow(
            "SELECT slots, wait_ms FROM gate_admit_paused('lsq', 1, 2, $1)", ga._window_ms))

        async def counted_and_waiting() -> bool:
            return bool(await sql.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                           "AND NOT granted AND pid = $1", admitting.get_server_pid()))

        await eventually(counted_and_waiting)
        await ga.unused(full, 2)
        await sql.execute("SELECT pg_advisory_unlock($1)", key)
        slots, wait_ms = await answer
    finally:
        await admitting.close()
    assert slots == []
    assert wait_ms is not None and wait_ms >= 1, "a full window answered without a wait"


async def test_admits_at_once_in_two_processes_grant_the_limit_exactly(
        two: tuple[PostgresStore, PostgresStore], trips: RoundTrips, sql: asyncpg.Connection) -> None:
    """Admits sent together from two processes take turns on the gate's row: each sees the slots the others took
    before it (one statement each still), and together they grant the limit, no more."""
    ga, gb = gates(two, RateLimit(requests=25, per_seconds=60))
    for store in two:  # each pool's connections all open (as a busy process's are), their set-up not counted
        assert store._pool is not None
        held = [await store._pool.acquire() for _ in range(store.max_size)]
        for conn in held:
            await store._pool.release(conn)
    trips.counting = True
    admissions = await asyncio.gather(*(g.admit(1) for _ in range(20) for g in (ga, gb)))
    trips.counting = False
    assert statements(trips) == 40, trips.statements
    assert sum(a.granted for a in admissions) == 25
    assert await sql.fetchval("SELECT count(*) FROM send_slots") == 25
    assert all(a.held and a.wait_s > 59 for a in admissions if not a.granted)


async def test_a_pause_a_hold_or_an_open_breaker_still_hold_the_admit(
        two: tuple[PostgresStore, PostgresStore], trips: RoundTrips, sql: asyncpg.Connection) -> None:
    """The states the one statement leaves to the gate's transaction hold back an admit as they did, and the common
    admit is one statement again once they are over."""
    ga, gb = gates(two, RateLimit(requests=25, per_seconds=60))
    await ga.pause(30)
    paused = await gb.admit(2)
    assert (paused.granted, paused.held) == (0, True) and 29 < paused.wait_s <= 30
    await sql.execute("UPDATE destination_gates SET paused_until = 0")  # as if its 30 s were over
    await ga.hold(None)
    assert (await gb.admit(2)).granted == 0
    await ga.unhold()
    ga.breaker.base_cooldown = 30.0
    for _ in range(5):
        await ga.outcome("retry")
    opened = await gb.admit(2)
    assert (opened.granted, opened.held) == (0, True) and 29 < opened.wait_s <= 30
    await sql.execute("UPDATE destination_gates SET open_until = 0")  # as if its 30 s were over
    probe = await ga.admit(2)
    assert probe.probe
    assert await ga.outcome("success", probe) == "closed"
    trips.counting = True
    assert (await gb.admit(2)).granted == 2
    assert statements(trips) == 1, trips.statements
