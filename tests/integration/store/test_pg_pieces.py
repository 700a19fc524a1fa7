"""A heavy accept's large values sent to PostgreSQL a piece at a time, and a large event read back so: no turn of the
event loop copies, sends or decodes the whole of a large mail's event."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from bridge.store import pg_batch, pg_pieces, postgres
from bridge.store.postgres import PostgresStore
from bridge.store.rows import now_ms
from tests.integration.processes import DSN
from tests.integration.store.contract import WEEK, make_delivery, make_event, nonce
from tests.integration.store.large_values import TEXT
from tests.loop_cpu import LoopCpu, measured
from tests.spies import calls_through

pytestmark = pytest.mark.integration


@pytest.fixture
def store(pg_store: PostgresStore) -> PostgresStore:
    return pg_store


async def pieces_left(store: PostgresStore) -> int:
    conn = await asyncpg.connect(DSN, server_settings={"search_path": store.schema or "public"})
    try:
        return int(await conn.fetchval("SELECT count(*) FROM accept_pieces"))
    finally:
        await conn.close()


async def test_a_60_mib_event_is_accepted_and_read_back_without_holding_the_loop(store: PostgresStore) -> None:
    """A large mail's 60 MiB event is accepted, and read back, with no callback of the loop taking more than a few
    milliseconds of its CPU (3-5 ms accepting, under 1 ms reading back): its value is sent as rows of a piece each,
    joined in the server, and read back as such rows. Bound as one value the driver held the loop 115-175 ms
    accepting it, and 70 ms reading it back. It reads back as it was accepted, and nothing staged is left."""
    event = make_event(text=TEXT + "\x00 after a NUL", stripped_text=TEXT, provider={"TextBody": TEXT})
    delivery = make_delivery(body={"comment": "short"})
    meter = LoopCpu()
    result = await meter.running(store.accept(event, [delivery], WEEK, weight=60 << 20))
    assert result.event_id == event.id
    measured("accept", meter)
    meter = LoopCpu()
    back = await meter.running(store.get_event(event.id))
    measured("get_event", meter)
    assert back == event
    assert back.payload["text"].endswith("\x00 after a NUL")
    assert await pieces_left(store) == 0


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Values over 2,000 bytes staged in pieces of 1,000 bytes (cutting characters' UTF-8 apart) and read back in
    pieces of 700; what each `stage` is given (owner, length)."""
    monkeypatch.setattr(pg_batch, "SEND_AT_ONCE_BYTES", 2000)
    monkeypatch.setattr(pg_pieces, "PIECE_SEND_BYTES", 1000)
    monkeypatch.setattr(pg_pieces, "PIECE_READ_BYTES", 700)
    monkeypatch.setattr(postgres, "DECODE_AT_ONCE_BYTES", 2000)
    staged: list[tuple[str, int]] = []
    stage = pg_pieces.stage

    async def noted(conn: Any, values: Any) -> None:
        staged.extend((owner, len(value)) for owner, value in values)
        await stage(conn, values)

    monkeypatch.setattr(postgres, "stage", noted)
    return staged


@pytest.mark.parametrize("with_nonce", [False, True])
async def test_a_heavy_accepts_large_values_are_staged_and_joined_byte_exact(
        store: PostgresStore, small_pieces: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch,
        with_nonce: bool) -> None:
    """A heavy accept's event and delivery body longer than SEND_AT_ONCE_BYTES are staged in pieces and joined
    back into their rows, in the group's statement (no nonce) and in an accept stored alone (a nonce): non-ASCII
    text cut between pieces, and a NUL, read back as they were given; a short body and a missing one are bound as
    they are. The pieces are deleted once the accept is answered; the event is read back as rows of a piece."""
    store.large_accept_bytes = 1000
    text = "\u00e9\u20ac\U0001f600\x00" * 1000
    event = make_event(text=text)
    large, short, none = (make_delivery(body={"comment": text}), make_delivery(body={"title": "small"}),
                          make_delivery(body=None))
    sent = nonce(f"n-{event.id}") if with_nonce else None
    result = await store.accept(event, [large, short, none], WEEK, sent, weight=20_000)
    assert (result.event_id, result.deliveries) == (event.id, 3)
    assert sorted(owner for owner, _ in small_pieces) == sorted([event.id, large.id])
    read: list[str] = []
    calls_through(monkeypatch, postgres, "read_pieces", lambda _conn, key, *_value: read.append(key))
    assert await store.get_event(event.id) == event
    assert read == [event.id]
    assert [(await store.get_delivery(d.id)).body for d in (large, short, none)] == [large.body, short.body, None]
    assert await pieces_left(store) == 0


async def test_a_duplicate_heavy_accept_leaves_no_pieces(store: PostgresStore,
                                                         small_pieces: list[tuple[str, int]]) -> None:
    """A heavy accept whose dedup key was taken is answered as a duplicate, its staged pieces deleted."""
    store.large_accept_bytes = 1000
    first, again = make_event(text="x" * 5000, dedup_key="k"), make_event(text="y" * 5000, dedup_key="k")
    assert not (await store.accept(first, [make_delivery()], WEEK, weight=20_000)).duplicate
    assert (await store.accept(again, [make_delivery()], WEEK, weight=20_000)).event_id == first.id
    assert len(small_pieces) == 2
    assert await store.get_event(first.id) == first
    assert await pieces_left(store) == 0


async def test_a_group_of_heavy_and_light_accepts_stores_each(store: PostgresStore,
                                                             small_pieces: list[tuple[str, int]]) -> None:
    """Heavy accepts, staged, share a group with light ones (one with a nonce, so the group's plain accepts are
    stored by one statement per table): each reads back as it was given."""
    store.large_accept_bytes = 1000
    heavy = [make_event(text=f"{n}\u00e9" * 3000) for n in range(3)]
    light = [make_event() for _ in range(3)]
    accepts = [store.accept(e, [make_delivery(body={"comment": e.payload["text"]})], WEEK, weight=20_000)
               for e in heavy]
    accepts += [store.accept(e, [make_delivery()], WEEK, nonce(f"n-{e.id}") if n == 0 else None)
                for n, e in enumerate(light)]
    results = await asyncio.gather(*accepts)
    assert [r.event_id for r in results] == [e.id for e in heavy + light]
    for e in heavy + light:
        assert await store.get_event(e.id) == e
    assert await pieces_left(store) == 0


async def test_a_light_accept_stages_nothing(store: PostgresStore, small_pieces: list[tuple[str, int]]) -> None:
    """An accept weighing large_accept_bytes or less is bound as it is, even with a value over SEND_AT_ONCE_BYTES;
    so is a heavy one whose values are all short."""
    store.large_accept_bytes = 10_000
    light, heavy = make_event(text="l" * 5000), make_event(text="h" * 100)
    await store.accept(light, [make_delivery()], WEEK, weight=10_000)
    await store.accept(heavy, [make_delivery()], WEEK, weight=20_000)
    assert small_pieces == []
    assert [await store.get_event(e.id) for e in (light, heavy)] == [light, heavy]


async def test_pieces_a_stopped_process_left_are_deleted_by_a_later_heavy_accept(
        store: PostgresStore, small_pieces: list[tuple[str, int]]) -> None:
    """Pieces staged more than STAGED_KEEP_MS ago (by a process that stopped before its accept was answered) are
    deleted by the next heavy accept; younger ones (another process's accept still waiting) are kept."""
    conn = await asyncpg.connect(DSN, server_settings={"search_path": store.schema or "public"})
    try:
        await conn.executemany("INSERT INTO accept_pieces VALUES ($1, 0, $2, 'x')",
                               [("evt_old", now_ms() - pg_pieces.STAGED_KEEP_MS - 1000), ("evt_young", now_ms())])
    finally:
        await conn.close()
    store.large_accept_bytes = 1000
    event = make_event(text="z" * 5000)
    await store.accept(event, [make_delivery()], WEEK, weight=20_000)
    assert await pieces_left(store) == 1
    assert await store.get_event(event.id) == event


async def test_an_accept_whose_pieces_were_not_deleted_keeps_its_outcome(
        store: PostgresStore, small_pieces: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    """When deleting an accept's pieces fails, the accept is still answered as stored (it is committed), and the
    store is not taken for failing."""
    async def fails(_conn: Any, _owners: Any) -> None:
        raise OSError("connection reset")

    monkeypatch.setattr(postgres, "unstage", fails)
    store.large_accept_bytes = 1000
    event = make_event(text="w" * 5000)
    assert (await store.accept(event, [make_delivery()], WEEK, weight=20_000)).event_id == event.id
    assert await store.get_event(event.id) == event
    assert store.problem() is None
