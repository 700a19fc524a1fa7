"""bridge/delivery/dispatcher.py under faults: a store that cannot take results, and a half-open breaker."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import msgspec
import structlog
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from bridge.app import reap_expired_leases
from bridge.config import RetryConfig
from bridge.delivery.breaker import Breaker
from bridge.delivery.dispatcher import Destination, Dispatcher, Timings
from bridge.errors import StoreUnavailable
from bridge.events import Event
from bridge.store.base import (
    AcceptResult,
    AttemptResult,
    ClaimBatch,
    Claimed,
    DeliveryDetail,
    DeliveryFilter,
    DeliveryRow,
    NewDelivery,
    Store,
)
from bridge.vendors.kapture import CREATE_PATH, KaptureOptions

BASE = "http://kapture.test"
URL_CREATE = URL(BASE + CREATE_PATH)
FAST = Timings(store_retry_s=0.001, record_retry_max_s=0.004, poll_s=0.05)


class MockResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 omits the `stream_writer` that aiohttp 3.14 requires (aioresponses#289)."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


@dataclass
class Lease:
    item: Claimed
    status: str = "pending"
    until: float = 0.0
    due_ms: int = 0


@dataclass
class FaultyStore(Store):
    """The delivery calls, in memory, on a lease clock the test moves; `record` fails while `record_fails` > 0
    (-1: always)."""

    now: float = 0.0
    rows: dict[str, Lease] = field(default_factory=dict)
    records: list[AttemptResult] = field(default_factory=list)
    record_calls: int = 0
    record_fails: int = 0
    released: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    ids: itertools.count[int] = field(default_factory=itertools.count)

    def add(self, n: int = 1) -> list[str]:
        out = []
        for _ in range(n):
            delivery_id = f"dlv_{next(self.ids):03d}"
            self.rows[delivery_id] = Lease(Claimed(
                id=delivery_id, event_id=f"evt_{delivery_id}", mapping="m", destination="kapture",
                action="create_ticket", body={"title": f"ticket {delivery_id}"}, options={}, tries=0, attempts=0))
            out.append(delivery_id)
        return out

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> ClaimBatch:
        now_ms = time.time_ns() // 1_000_000
        due = [r for r in self.rows.values() if r.status == "pending" and r.due_ms <= now_ms][:limit]
        for row in due:
            row.status, row.until = "in_flight", self.now + lease_s
        return ClaimBatch(items=[msgspec.structs.replace(r.item) for r in due])

    async def record(self, result: AttemptResult) -> None:
        self.record_calls += 1
        if self.record_fails != 0:
            self.record_fails -= 1
            raise StoreUnavailable("sqlite: database or disk is full")
        self.records.append(result)
        row = self.rows[result.delivery_id]
        row.status, row.due_ms = result.next_status, result.next_attempt_at_ms or row.due_ms

    async def release(self, delivery_ids: list[str]) -> None:
        self.released += delivery_ids
        for i in delivery_ids:
            self.rows[i].status = "pending"

    async def extend_leases(self, delivery_ids: list[str], owner: str, lease_s: float) -> int:
        self.calls.append("extend")
        held = [self.rows[i] for i in delivery_ids if self.rows[i].status == "in_flight"]
        for row in held:
            row.until = self.now + lease_s
        return len(held)

    async def release_expired(self) -> int:
        self.calls.append("release_expired")
        expired = [r for r in self.rows.values() if r.status == "in_flight" and r.until < self.now]
        for row in expired:
            row.status = "pending"
        self.released += [r.item.id for r in expired]
        return len(expired)

    async def accept(self, event: Event, deliveries: list[NewDelivery], dedup_window_s: float) -> AcceptResult:
        raise AssertionError("not called by the dispatcher")

    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRow]:
        raise AssertionError("not called by the dispatcher")

    async def get_delivery(self, delivery_id: str) -> DeliveryDetail:
        raise AssertionError("not called by the dispatcher")

    async def get_event(self, event_id: str) -> Event:
        raise AssertionError("not called by the dispatcher")

    async def replay(self, delivery_ids: list[str], bodies: Any = None) -> list[str]:
        raise AssertionError("not called by the dispatcher")

    async def counts(self) -> dict[str, dict[str, int]]:
        raise AssertionError("not called by the dispatcher")

    async def purge(self, cutoffs: Any, limit: int, dry_run: bool = False, after: Any = None) -> Any:
        raise AssertionError("not called by the dispatcher")

    async def attachment_refs(self, received_before_ms: int) -> set[str]:
        raise AssertionError("not called by the dispatcher")


def destination(max_in_flight: int = 4) -> Destination:
    cfg = KaptureOptions(vendor="kapture", base_url=BASE, token="t", max_in_flight=max_in_flight, timeout_seconds=5.0,
                         retry=RetryConfig(schedule=["1h"], jitter=0))
    return Destination.from_config("kapture", cfg, BASE)


def answers(*bodies: tuple[int, dict[str, Any]]) -> Callable[..., CallbackResult]:
    """A vendor that gives these answers in turn, then succeeds."""
    queue = list(bodies)

    def answer(url: URL, **kwargs: Any) -> CallbackResult:
        status, payload = queue.pop(0) if queue else (200, {"status": "success", "ticket_id": "T-1"})
        return CallbackResult(status=status, payload=payload, response_class=MockResponse)

    return answer


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until `check()` is true; fail after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.002)


@asynccontextmanager
async def running(store: FaultyStore, dest: Destination, *, max_unrecorded: int = 256,
                  breaker: Breaker | None = None) -> AsyncIterator[Dispatcher]:
    async with aiohttp.ClientSession() as session:
        d = Dispatcher(store, session, {dest.name: dest}, timings=FAST, max_unrecorded=max_unrecorded)
        d.start()
        if breaker is not None:
            d.lanes[dest.name].breaker = breaker  # before the lane's first turn
        try:
            yield d
        finally:
            if not d.stopping:
                await d.stop(0.0)


def requests(m: aioresponses) -> int:
    return len(m.requests.get(("POST", URL_CREATE), []))


async def test_after_a_permanent_probe_result_the_lane_sends_the_next_delivery() -> None:
    """A probe answered with a permanent failure (Kapture's `title is missing` in a 200) closes the breaker,
    and the lane goes on to send what is due."""
    store = FaultyStore()
    first, probe, after = store.add(3)
    vendor = answers((503, {"status": "error"}), (200, {"status": "error", "message": "title is missing"}))
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=vendor, repeat=True, response_class=MockResponse)
        async with running(store, destination(max_in_flight=1),
                           breaker=Breaker(threshold=1, base_cooldown=0.0)) as d:
            await eventually(lambda: len(store.records) == 3)
            assert d.lanes["kapture"].breaker.state == "closed"
        assert requests(m) == 3
    assert [(r.delivery_id, r.classification) for r in store.records] == [
        (first, "retry"), (probe, "permanent"), (after, "success")]
    changes = [e["event"] for e in logs if e["event"].startswith("destination.")]
    assert changes == ["destination.paused", "destination.resumed"]


async def test_a_result_the_store_refuses_is_recorded_once_it_takes_it() -> None:
    """The store failing `record` five times costs no second send: the result is retried from memory."""
    store = FaultyStore(record_fails=5)
    [delivery_id] = store.add()
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with running(store, destination()):
            await eventually(lambda: len(store.records) == 1)
        assert requests(m) == 1
    assert store.record_calls == 6
    assert [(r.delivery_id, r.next_status) for r in store.records] == [(delivery_id, "succeeded")]
    events = [e["event"] for e in logs if e["event"].startswith("delivery.record")]
    assert events == ["delivery.record_retrying", "delivery.recorded_late"]
    assert store.released == []


async def test_a_result_given_up_at_shutdown_is_logged_as_a_possible_duplicate() -> None:
    """A stop while a result is still held in memory logs delivery.record_failed naming the delivery, and
    does not release it (the send happened)."""
    store = FaultyStore(record_fails=-1)
    [delivery_id] = store.add()
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with running(store, destination()) as d:
            await eventually(lambda: store.record_calls >= 3)
            await d.stop(0.0)
        assert requests(m) == 1
    [failed] = [e for e in logs if e["event"] == "delivery.record_failed"]
    assert failed["delivery_id"] == delivery_id
    assert "possible duplicate" in failed["note"]
    assert failed["failed_records"] >= 3
    assert store.released == []


async def test_a_lane_holds_at_most_max_unrecorded_results_before_it_stops_claiming() -> None:
    """While the store refuses every result, a lane sends no more than it can hold in memory."""
    store = FaultyStore(record_fails=-1)
    store.add(10)
    with aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with running(store, destination(max_in_flight=1), max_unrecorded=3) as d:
            await eventually(lambda: store.record_calls >= 30)
            assert len(d.lanes["kapture"].inflight) == 3
        assert requests(m) == 3


async def test_the_reaper_never_gives_back_a_delivery_whose_result_is_held() -> None:
    """Leases run out while a result waits for the store: the reaper extends what the dispatcher holds before
    it reaps, so that delivery stays leased and is not sent again."""
    store = FaultyStore(record_fails=-1)
    [held] = store.add()
    with aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with running(store, destination()) as d:
            await eventually(lambda: store.record_calls >= 1)
            store.now += 10_000  # far past the lease
            [other] = store.add()  # leased by a process that died: the reaper takes it back
            store.rows[other].status = "in_flight"
            reaper = asyncio.create_task(reap_expired_leases(store, d, every_s=0.0))
            await eventually(lambda: store.calls.count("release_expired") >= 3)
            reaper.cancel()
            await asyncio.gather(reaper, return_exceptions=True)
            assert store.rows[held].status == "in_flight"
            store.record_fails = 0
            await eventually(lambda: held in {r.delivery_id for r in store.records})
        sent = [msgspec.json.decode(c.kwargs["data"])[0]["title"] for c in m.requests[("POST", URL_CREATE)]]
    assert sent.count(f"ticket {held}") == 1
    assert store.calls[:2] == ["extend", "release_expired"]
    assert held not in store.released
    assert other in store.released
