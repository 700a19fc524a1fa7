"""The PostgreSQL store when the server refuses writes (a full disk, simulated with triggers) or cannot be
reached (a relay the test cuts)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import msgspec
import pytest
from structlog.testing import capture_logs

from bridge.errors import StoreRefused, StoreUnavailable
from bridge.store.base import AttemptResult, DeliveryFilter
from bridge.store.postgres import PostgresStore
from bridge.store.rows import now_ms
from tests.integration.processes import DSN
from tests.integration.store.contract import accept_one, make_delivery

pytestmark = pytest.mark.integration

DISK_FULL = """
CREATE FUNCTION "{schema}".disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; END $$;
CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON "{schema}".events
    FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".disk_full();
CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON "{schema}".schema_migrations
    FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".disk_full();
"""


@pytest.fixture
def store(pg_store: PostgresStore) -> PostgresStore:
    return pg_store


async def test_refused_writes_are_reported_until_a_commit_succeeds(store: PostgresStore, pg_schema: str) -> None:
    """While the server refuses writes the store says `failing`, and check() clears it once writes commit again."""
    await accept_one(store, make_delivery())
    assert await store.check() is None
    admin = await asyncpg.connect(DSN)
    try:
        await admin.execute(DISK_FULL.format(schema=pg_schema))
        with capture_logs() as logs:
            for _ in range(2):
                with pytest.raises(StoreUnavailable, match="No space left"):
                    await accept_one(store, make_delivery())
            problem = await store.check()
        assert problem is not None
        assert problem.kind == "failing"
        assert "No space left" in problem.reason
        assert store.commit_failures == 3
        assert [e["event"] for e in logs].count("store.failing") == 1
        await admin.execute(f'DROP FUNCTION "{pg_schema}".disk_full() CASCADE')
    finally:
        await admin.close()
    with capture_logs() as logs:
        assert await store.check() is None
    assert [e["event"] for e in logs] == ["store.recovered"]
    await accept_one(store, make_delivery())


class Proxy:
    """A TCP relay to PostgreSQL that a test can cut (every connection dropped, new ones refused) and restore."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()
        await self.server.wait_closed()


async def test_an_unreachable_server_is_reported_until_it_answers_again(pg_schema: str) -> None:
    """While PostgreSQL cannot be reached, check() (for /readyz) says `failing`, and intake and ping() (for the lease
    reaper) raise StoreUnavailable; once it answers again, the store recovers by itself with new connections."""
    parts = urlsplit(DSN)
    proxy = Proxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    await proxy.start()
    store = PostgresStore(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl(),
                          schema=pg_schema)
    await store.open()
    try:
        await accept_one(store, make_delivery())
        assert await store.check() is None
        await store.ping()
        await proxy.cut()
        problem = await store.check()
        assert problem is not None
        assert problem.kind == "failing"
        with pytest.raises(StoreUnavailable, match="postgresql"):
            await accept_one(store, make_delivery())
        with pytest.raises(StoreUnavailable, match="postgresql"):  # the lease reaper's question: does it answer
            await store.ping()
        await proxy.start()
        assert await store.check() is None
        await store.ping()
        await accept_one(store, make_delivery())
    finally:
        await store.close()
        await proxy.cut()


async def _claim_answer_lost(store: PostgresStore) -> list[Any]:
    """A claim of "me" (up to 10, kapture-support) that commits but whose answer is lost (the connection dropped
    around COMMIT): it raises StoreUnavailable. What it logged."""
    run = store._run
    calls = 0

    async def answer_lost(fn: Any, *, transaction: bool = True) -> Any:
        nonlocal calls
        calls += 1
        out = await run(fn, transaction=transaction)
        if calls == 1:
            raise StoreUnavailable("postgresql: connection was closed in the middle of operation")
        return out

    store._run = answer_lost  # type: ignore[method-assign]
    try:
        with capture_logs() as logs, pytest.raises(StoreUnavailable):
            await store.claim("kapture-support", 10, "me", 60)
    finally:
        store._run = run  # type: ignore[method-assign]
    return logs


async def test_a_claim_whose_answer_is_lost_gives_back_what_it_leased(store: PostgresStore) -> None:
    """A claim that committed but whose answer never arrived (the connection dropped around COMMIT) raises
    StoreUnavailable and gives back the rows it leased; rows the same owner leased before stay in flight."""
    _, (held,) = await accept_one(store, make_delivery())
    assert [c.id for c in (await store.claim("kapture-support", 1, "me", 60)).items] == [held]
    _, lost = await accept_one(store, make_delivery(), make_delivery())
    logs = await _claim_answer_lost(store)
    assert [(e["event"], e.get("count")) for e in logs] == [("store.claim_given_back", 2)]
    statuses = {r.id: r.status for r in await store.list_deliveries(DeliveryFilter())}
    assert statuses == {held: "in_flight", lost[0]: "pending", lost[1]: "pending"}
    assert {c.id for c in (await store.claim("kapture-support", 10, "me", 60)).items} == set(lost)


async def test_a_claim_whose_answer_is_lost_gives_back_only_its_own_rows_within_one_millisecond(
        store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two claims of one owner and destination in the same millisecond (an unpaced lane's claims run side by side),
    the second's answer lost: only the rows it leased go back, by its token. Matched by owner and time, the give-back
    took the first claim's rows too, while their requests were out."""
    _, (held,) = await accept_one(store, make_delivery())
    _, lost = await accept_one(store, make_delivery(), make_delivery())
    frozen = now_ms() + 1000  # every delivery due
    monkeypatch.setattr("bridge.store.postgres.now_ms", lambda: frozen)
    [first] = (await store.claim("kapture-support", 1, "me", 60)).items
    assert first.id == held
    logs = await _claim_answer_lost(store)
    assert [(e["event"], e.get("count")) for e in logs] == [("store.claim_given_back", 2)]
    statuses = {r.id: r.status for r in await store.list_deliveries(DeliveryFilter())}
    assert statuses == {held: "in_flight", lost[0]: "pending", lost[1]: "pending"}
    await store.record(AttemptResult(delivery_id=held, started_at_ms=1, duration_ms=1.0, http_status=200,
                                     response_excerpt=None, classification="success", error=None, ticket_id="T-1",
                                     next_status="succeeded"), owner="me", token=first.token)


async def test_values_refused_for_their_data_leave_the_store_healthy(store: PostgresStore) -> None:
    """Numbers past their column (a conversation's reopen_after past BIGINT, an HTTP status past INTEGER) are
    refused for their data: StoreRefused naming the value (SQLSTATE 22000, raised by asyncpg before the statement
    is sent), no `store.failing`, no failed commit counted; the delivery keeps its lease, and the record and accept
    that follow are stored."""
    threaded = make_delivery(conversation="contact-to-kapture|key:1", conversation_key="key:1", reopen_after_ms=2**70)
    (delivery_id,) = (await accept_one(store))[1]
    assert [c.id for c in (await store.claim("kapture-support", 1, "me", 60)).items] == [delivery_id]
    attempt = AttemptResult(delivery_id=delivery_id, started_at_ms=1, duration_ms=1.0, http_status=500,
                            response_excerpt=None, classification="retry", error="HTTP 500", next_status="pending")
    with capture_logs() as logs:
        with pytest.raises(StoreRefused, match=r"out of int64 range\) \(SQLSTATE 22000\)"):
            await accept_one(store, threaded)
        with pytest.raises(StoreRefused, match=r"out of int32 range\) \(SQLSTATE 22000\)"):
            await store.record(msgspec.structs.replace(attempt, http_status=2**40), owner="me")
    assert "store.failing" not in [e["event"] for e in logs]
    assert (await store.check(), store.commit_failures) == (None, 0)
    await store.record(attempt, owner="me")
    await accept_one(store)
    assert len(await store.list_deliveries(DeliveryFilter())) == 2
