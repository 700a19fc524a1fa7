"""A store outage longer than a lease, on real SQLite and PostgreSQL stores: what the dispatcher claimed and never
sent is given back when the store answers, not reaped in doubt."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import msgspec
import pytest
from aioresponses import aioresponses
from structlog.testing import capture_logs
from yarl import URL

from bridge.app import reap_expired_leases
from bridge.config import RetryConfig
from bridge.delivery.dispatcher import Destination, Dispatcher, Timings
from bridge.errors import StoreUnavailable
from bridge.events import Event
from bridge.store.base import AttemptResult, Store
from bridge.store.postgres import PostgresStore
from bridge.store.sqlite import SqliteStore
from bridge.vendors.kapture import CREATE_PATH, KaptureOptions
from tests.conftest import eventually
from tests.integration.store.contract import accept_one, make_delivery, now_ms, row
from tests.unit.bridge.delivery.test_dispatcher_faults import MockResponse, answers

pytestmark = pytest.mark.integration

BASE = "http://kapture.test"
URL_CREATE = URL(BASE + CREATE_PATH)
LEASE_S = 0.5


class Outage:
    """`store` as the dispatcher and the reaper see it, with a switch: `down` makes every call they make fail
    (StoreUnavailable), as a database restarting does. It goes down as the claim that follows `down_at_claim`
    returns, and claims every delivery as a conversation's follow-up (its ticket known), rendered by `render`, which
    reads its event from the store: the follow-up is not sent while the store is down."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False
        self.down_at_claim = False
        self.claimed_at_ms = 0
        self.release_failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def _fail(self) -> None:
        if self.down:
            raise StoreUnavailable("postgresql: connection refused")

    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> Any:
        self._fail()
        batch = await self.store.claim(destination, limit, owner, lease_s)
        if batch.items and self.down_at_claim:
            self.down, self.down_at_claim, self.claimed_at_ms = True, False, now_ms()
        return msgspec.structs.replace(batch, items=[
            msgspec.structs.replace(item, conversation="email:<root@example.com>", ticket={"id": "T-1"})
            for item in batch.items])

    async def get_event(self, event_id: str) -> Event:
        self._fail()
        return await self.store.get_event(event_id)

    async def render(self, item: Any) -> Any:
        await self.get_event(item.event_id)
        return item

    async def record(self, result: AttemptResult, *, owner: str | None = None, token: int | None = None) -> None:
        self._fail()
        await self.store.record(result, owner=owner, token=token)

    async def release(self, delivery_ids: list[str], *, owner: str | None = None,
                      tokens: Sequence[int] | None = None) -> None:
        if self.down:
            self.release_failures += 1
        self._fail()
        await self.store.release(delivery_ids, owner=owner, tokens=tokens)

    async def extend_leases(self, delivery_ids: list[str], owner: str, lease_s: float,
                            tokens: Sequence[int] | None = None) -> list[str]:
        self._fail()
        return await self.store.extend_leases(delivery_ids, owner, lease_s, tokens)

    async def release_expired(self) -> int:
        self._fail()
        return await self.store.release_expired()


@asynccontextmanager
async def reaping(store: Outage, dispatcher: Dispatcher) -> AsyncIterator[None]:
    """The server's lease reaper, a pass every third of a lease, while in the block."""
    reaper = asyncio.create_task(reap_expired_leases(store, dispatcher, LEASE_S / 3))  # type: ignore[arg-type]
    try:
        yield
    finally:
        reaper.cancel()
        await asyncio.gather(reaper, return_exceptions=True)


def status_not(store: Store, delivery_id: str, *statuses: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return (await row(store, delivery_id)).status not in statuses

    return check


async def test_on_sqlite_a_follow_up_never_sent_is_given_back_not_in_doubt_after_an_outage(
        sqlite_store: SqliteStore) -> None:
    """See `given_back_not_in_doubt_after_an_outage`."""
    await given_back_not_in_doubt_after_an_outage(sqlite_store)


async def test_on_postgres_a_follow_up_never_sent_is_given_back_not_in_doubt_after_an_outage(
        pg_store: PostgresStore) -> None:
    """See `given_back_not_in_doubt_after_an_outage`."""
    await given_back_not_in_doubt_after_an_outage(pg_store)


async def given_back_not_in_doubt_after_an_outage(store: Store) -> None:
    """The store goes down as a follow-up is rendered, and stays down until its lease has run out: the release
    keeps failing. Once the store is back, the follow-up is pending, not in doubt (no unknown counted), and sent
    once. Before, the lane gave its release up once the lease may have run out, and the reaper's first pass took
    it back in doubt."""
    _, [delivery_id] = await accept_one(store, make_delivery())
    outage = Outage(store)
    outage.down_at_claim = True
    cfg = KaptureOptions(vendor="kapture", base_url=BASE, token="t", timeout_seconds=5.0,
                         retry=RetryConfig(schedule=[], jitter=0))
    dest = Destination.from_config("kapture-support", cfg, BASE)
    with capture_logs() as logs, aioresponses() as m:
        m.post(BASE + CREATE_PATH, callback=answers(), repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(outage, session, {dest.name: dest},  # type: ignore[arg-type]
                           timings=Timings(store_retry_s=0.01, record_retry_max_s=0.05, poll_s=0.05),
                           lease_s=LEASE_S, follow_ups=outage.render)
            d.start()
            try:
                await eventually(lambda: outage.release_failures >= 1)
                ran_out = outage.claimed_at_ms + int(LEASE_S * 1000) + 50
                await eventually(lambda: now_ms() > ran_out)  # the lease has run out, at the store's clock too
                failures = outage.release_failures
                # Asked once more since (or, before, given up: `delivery.release_failed`)
                await eventually(lambda: outage.release_failures > failures
                                 or any(e["event"] == "delivery.release_failed" for e in logs))
                outage.down = False
                async with reaping(outage, d):
                    await eventually(status_not(store, delivery_id, "in_flight"))
                    r = await row(store, delivery_id)  # pending, or sent already
                    assert (r.unknowns, r.in_doubt_since_ms) == (0, None)
                    await eventually(status_not(store, delivery_id, "in_flight", "pending"))
            finally:
                await d.stop(0.0)
    r = await row(store, delivery_id)
    assert (r.status, r.unknowns, r.in_doubt_since_ms, r.duplicates) == ("succeeded", 0, None, 0)
    assert len(m.requests[("POST", URL_CREATE)]) == 1
    events = [e["event"] for e in logs]
    assert "delivery.released_late" in events and "delivery.release_failed" not in events, events
