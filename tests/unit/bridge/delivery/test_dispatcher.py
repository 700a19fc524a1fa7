"""bridge/delivery/dispatcher.py: lanes that claim, send and record, each destination on its own."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from itertools import pairwise
from types import SimpleNamespace
from typing import Any, ClassVar

import aiohttp
import msgspec
import pytest
import structlog
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from bridge.config import RateLimit, RetryConfig
from bridge.delivery.breaker import Breaker
from bridge.delivery.coordination import Admission, Gate
from bridge.delivery.dispatcher import LEASE_SECONDS, PROCESS_TOKEN, Destination, Dispatcher, Timings, _call
from bridge.delivery.ratelimit import Limiter, SlidingWindowLimiter, Unlimited
from bridge.delivery.sender import WrittenRequest, lookup_failure
from bridge.errors import StoreUnavailable
from bridge.events import Event
from bridge.offload import LOOP_ANSWER_BYTES
from bridge.store.base import AttemptResult, ClaimBatch, NewDelivery
from bridge.store.memory import MemoryStore
from bridge.vendors.base import Outcome, VendorAuthFailed, VendorRateLimited, VendorRequest, VendorUnavailable
from bridge.vendors.kapture import CREATE_PATH, KaptureAdapter, KaptureOptions

FAST = "http://kapture.test"
SLOW = "http://slow.test"
OK_BODY = {"status": "success", "ticket_id": "T-1"}


class MockResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 omits the `stream_writer` that aiohttp 3.14 requires (aioresponses#289)."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


def mock_vendor(m: aioresponses, base: str = FAST, **kwargs: Any) -> None:
    """Every POST to the Kapture create path of `base` answers as `kwargs` say."""
    kwargs.setdefault("status", 200)
    if "body" not in kwargs and "exception" not in kwargs:
        kwargs.setdefault("payload", OK_BODY)
    m.post(base + CREATE_PATH, response_class=MockResponse, repeat=True, **kwargs)


def requests_to(m: aioresponses, base: str = FAST) -> int:
    return len(m.requests.get(("POST", URL(base + CREATE_PATH)), []))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class FixedClock:
    """A wall clock that stands still unless moved: the dispatcher reads seconds, the store milliseconds."""

    def __init__(self, at_s: float = 1_750_000_000.0) -> None:
        self.at_s = at_s

    def seconds(self) -> float:
        return self.at_s

    def ms(self) -> int:
        return int(self.at_s * 1000)


class RecordingStore(MemoryStore):
    """The in-memory store, born open, remembering what the dispatcher asked of it, with faults to inject."""

    def __init__(self, clock: Callable[[], int] = now_ms, *, claim_errors: list[Exception] | None = None,
                 record_errors: list[Exception] | None = None) -> None:
        super().__init__(clock)
        self.opened = True
        self.calls: list[str] = []  # "claim", "record" and "release", in the order they were made
        self.records: list[AttemptResult] = []
        self.released: list[str] = []
        self.claims: list[tuple[str, int, str, float]] = []
        self.claim_errors = claim_errors or []
        self.record_errors = record_errors or []
        self.ids = itertools.count()

    async def add(self, destination: str, body: dict[str, Any] | None = None, *, tries: int = 0,
                  due_ms: int | None = None) -> str:
        """Accept one event with one delivery to `destination`, `tries` already made, due at `due_ms`."""
        delivery_id = f"dlv_{next(self.ids):03d}"
        event = Event.new(source="website-contact", kind="form", channel="form", payload={})
        await self.accept(event, [NewDelivery(
            id=delivery_id, mapping="contact-to-kapture", mapping_version="v1", destination=destination,
            action="create_ticket", body=body if body is not None else {"title": f"ticket {delivery_id}"},
        )], 0)
        kept = self.deliveries[delivery_id]
        kept.row = msgspec.structs.replace(kept.row, tries=tries, attempts=tries,
                                           next_attempt_at_ms=kept.row.next_attempt_at_ms if due_ms is None
                                           else due_ms)
        return delivery_id

    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> ClaimBatch:
        self.calls.append("claim")
        self.claims.append((destination, limit, owner, lease_s))
        if self.claim_errors:
            raise self.claim_errors.pop(0)
        return await super().claim(destination, limit, owner, lease_s)

    async def record(self, result: AttemptResult, *, owner: str | None = None,
                     token: int | None = None) -> None:
        self.calls.append("record")
        if self.record_errors:
            raise self.record_errors.pop(0)
        await super().record(result, owner=owner, token=token)
        self.records.append(result)

    async def release(self, delivery_ids: list[str], *, owner: str | None = None,
                      tokens: Sequence[int] | None = None) -> None:
        self.calls.append("release")
        self.released.extend(delivery_ids)
        await super().release(delivery_ids, owner=owner, tokens=tokens)

    def recorded(self, delivery_id: str) -> list[AttemptResult]:
        return [r for r in self.records if r.delivery_id == delivery_id]

    def status(self, delivery_id: str) -> str:
        return self.deliveries[delivery_id].row.status

    def tries(self, delivery_id: str) -> int:
        return self.deliveries[delivery_id].row.tries

    def idle_after_records(self, n: int) -> bool:
        """`n` attempts are recorded and the lane has claimed since the last: it has seen all there is to send."""
        if len(self.records) < n:
            return False
        last_record = len(self.calls) - 1 - self.calls[::-1].index("record")
        return "claim" in self.calls[last_record + 1:]


CLOCK_SLACK = 0.005  # an asyncio timer may fire up to the clock's resolution early; this is far above it


class StampingLimiter(Unlimited):
    """The unlimited limiter, noting on its own clock when each send started and until when it was paused."""

    def __init__(self) -> None:
        super().__init__()
        self.sent_at: list[float] = []
        self.paused: list[float] = []

    def sent(self) -> None:
        self.sent_at.append(self._clock())

    def pause(self, seconds: float) -> None:
        super().pause(seconds)
        self.paused.append(self._paused_until)


class RecordingLimiter:
    """A limiter that never waits and remembers every pause."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    def reserve(self) -> float:
        return 0.0

    def next_delay(self) -> float:
        return 0.0

    def start_delay(self) -> float:
        return 0.0

    def unreserve(self) -> None:
        pass

    def unsend(self, handle: int) -> None:
        pass

    def sent(self) -> None:
        pass

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)

    @property
    def window(self) -> float:
        return 2.5


def destination(
    name: str = "kapture", base_url: str = FAST, *, max_in_flight: int = 4, schedule: list[str | float] | None = None,
    max_retry_after: str = "1h", rate_limit: RateLimit | None = None, limiter: Limiter | None = None,
) -> Destination:
    """A Kapture destination, built by the Destination.from_config that bridge.app.build_destinations calls."""
    cfg = KaptureOptions(
        vendor="kapture", base_url=base_url, token="t", max_in_flight=max_in_flight, timeout_seconds=5.0,
        rate_limit=rate_limit,
        retry=RetryConfig(schedule=schedule if schedule is not None else ["30s", "5m"], jitter=0,
                          max_retry_after=max_retry_after),
    )
    dest = Destination.from_config(name, cfg, base_url)
    if limiter is not None:
        dest.limiter = limiter
    return dest


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until `check()` is true; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.005)


@asynccontextmanager
async def running(store: RecordingStore, *dests: Destination, grace: float = 0.0, poll_s: float = 3600.0,
                  clock: FixedClock | None = None,
                  session: aiohttp.ClientSession | None = None) -> AsyncIterator[Dispatcher]:
    """A started dispatcher over a real ClientSession (`session`, else a plain one), stopped and closed on the way
    out. Its poll is an hour unless said otherwise, so that a test sees only what notify and due times wake."""
    async with session if session is not None else aiohttp.ClientSession() as session:
        d = Dispatcher(store, session, {dest.name: dest for dest in dests},
                       timings=Timings(store_retry_s=0.01, record_retry_max_s=0.04, poll_s=poll_s),
                       clock=clock.seconds if clock else time.time)
        d.start()
        try:
            yield d
        finally:
            if not d.stopping:
                await d.stop(grace)


def gate() -> tuple[asyncio.Event, Callable[..., Awaitable[None]], list[int]]:
    """A vendor callback that holds every request until the event is set; counts requests at once in flight."""
    release = asyncio.Event()
    in_flight = [0, 0]  # now, most ever

    async def hold(url: URL, **kwargs: Any) -> None:
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])
        try:
            await release.wait()
        finally:
            in_flight[0] -= 1

    return release, hold, in_flight


async def test_lane_sends_claimed_deliveries_and_records_success_with_ticket_id() -> None:
    """Each due delivery is sent once and recorded as succeeded with the vendor's ticket id."""
    store = RecordingStore()
    ids = [await store.add("kapture") for _ in range(3)]
    with aioresponses() as m:
        mock_vendor(m, payload={"status": "success", "ticket_id": "T-77"})
        async with running(store, destination()):
            await eventually(lambda: len(store.records) == 3)
        sent = m.requests[("POST", URL(FAST + CREATE_PATH))]
    assert sorted(r.delivery_id for r in store.records) == ids
    for result in store.records:
        assert result.next_status == "succeeded"
        assert result.classification == "success"
        assert result.ticket_id == "T-77"
        assert result.http_status == 200
        assert result.error is None
        assert result.next_attempt_at_ms is None
        assert result.response_excerpt is not None
        assert "T-77" in result.response_excerpt
    assert sorted(msgspec.json.decode(c.kwargs["data"])[0]["title"] for c in sent) == [f"ticket {i}" for i in ids]
    assert store.released == []


async def test_lane_claims_for_its_destination_with_a_lease() -> None:
    """A lane claims only its own destination's work, with the dispatcher's lease, whatever the send timeout."""
    store = RecordingStore()
    await store.add("other")
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination()) as d:
            await eventually(lambda: len(store.claims) >= 1)
    name, limit, owner, lease_s = store.claims[0]
    assert name == "kapture"
    assert limit == 4
    assert owner == d.owner
    assert lease_s == LEASE_SECONDS == d.lease_s
    assert store.records == []


async def test_retry_outcome_records_pending_with_next_attempt_in_the_future() -> None:
    """A 503 is recorded as pending, due after the schedule's first delay, and is not re-sent at once."""
    clock = FixedClock()
    store = RecordingStore(clock.ms)
    delivery_id = await store.add("kapture")
    with aioresponses() as m:
        mock_vendor(m, status=503, body="busy")
        async with running(store, destination(schedule=["30s", "5m"]), clock=clock):
            await eventually(lambda: store.idle_after_records(1))
        assert requests_to(m) == 1
    [result] = store.records
    assert result.delivery_id == delivery_id
    assert result.next_status == "pending"
    assert result.classification == "retry"
    assert result.http_status == 503
    assert result.error == "HTTP 503"
    assert result.next_attempt_at_ms is not None
    assert result.next_attempt_at_ms == clock.ms() + 30_000


async def test_retry_after_pushes_the_next_attempt_out() -> None:
    """A Retry-After longer than the scheduled delay sets the next attempt time."""
    clock = FixedClock()
    store = RecordingStore(clock.ms)
    await store.add("kapture")
    with aioresponses() as m:
        mock_vendor(m, status=503, body="busy", headers={"Retry-After": "120"})
        async with running(store, destination(schedule=["30s"]), clock=clock):
            await eventually(lambda: len(store.records) == 1)
    [result] = store.records
    assert result.next_attempt_at_ms == clock.ms() + 120_000


async def test_spent_schedule_is_dead_with_the_reason() -> None:
    """A retryable failure after every scheduled retry is recorded dead, its error naming both causes."""
    store = RecordingStore()
    await store.add("kapture", tries=2)
    with aioresponses() as m:
        mock_vendor(m, status=500, body="oops")
        async with running(store, destination(schedule=["30s", "5m"])):
            await eventually(lambda: len(store.records) == 1)
    [result] = store.records
    assert result.next_status == "dead"
    assert result.classification == "retry"
    assert result.next_attempt_at_ms is None
    assert result.error is not None
    assert result.error.startswith("HTTP 500")
    assert "gave up after 3 attempts" in result.error


async def test_retries_follow_the_schedule_until_dead() -> None:
    """With a schedule of two immediate retries, a failing vendor is tried three times, then the delivery is dead."""
    store = RecordingStore()
    delivery_id = await store.add("kapture")
    with aioresponses() as m:
        mock_vendor(m, status=503, body="busy")
        async with running(store, destination(schedule=[0, 0])):
            await eventually(lambda: len(store.records) == 3)
        assert requests_to(m) == 3  # the third was recorded dead: no claim can hand it out again
    assert [r.next_status for r in store.recorded(delivery_id)] == ["pending", "pending", "dead"]
    assert store.status(delivery_id) == "dead"


async def test_retry_is_sent_when_due_without_waiting_for_the_poll() -> None:
    """A retry due 0.3 s after a failure is sent once due, not before, and without waiting for the (hour's) poll."""
    store = RecordingStore()
    await store.add("kapture")
    answers = itertools.count()

    def answer(url: URL, **kwargs: Any) -> CallbackResult:
        if next(answers) == 0:
            return CallbackResult(status=503, body="busy", response_class=MockResponse)
        return CallbackResult(status=200, payload=OK_BODY, response_class=MockResponse)

    with aioresponses() as m:
        m.post(FAST + CREATE_PATH, callback=answer, repeat=True)
        async with running(store, destination(schedule=[0.3])):
            await eventually(lambda: len(store.records) == 2)
    first, second = store.records
    assert [first.next_status, second.next_status] == ["pending", "succeeded"]
    assert first.next_attempt_at_ms is not None
    assert second.started_at_ms >= first.next_attempt_at_ms


async def test_auth_failure_is_dead_without_retry() -> None:
    """A 401 is recorded dead at once, sent only once, and logged loudly as an auth failure."""
    store = RecordingStore()
    await store.add("kapture")
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        mock_vendor(m, status=401, body="")
        async with running(store, destination(schedule=["0s", "0s"])):
            await eventually(lambda: len(store.records) == 1)
        assert requests_to(m) == 1
    [result] = store.records
    assert result.next_status == "dead"
    assert result.classification == "auth"
    assert result.next_attempt_at_ms is None
    assert result.error is not None
    assert "credentials" in result.error
    [entry] = [e for e in logs if e["event"] == "delivery.auth_failed"]
    assert entry["log_level"] == "error"
    assert entry["destination"] == "kapture"


async def test_body_level_auth_failure_is_dead() -> None:
    """Kapture's "Invalid Auth Key" in a 200 answer is an auth failure, dead without retry."""
    store = RecordingStore()
    await store.add("kapture")
    with aioresponses() as m:
        mock_vendor(m, payload={"status": "failed", "message": "Invalid Auth Key"})
        async with running(store, destination()):
            await eventually(lambda: len(store.records) == 1)
    [result] = store.records
    assert (result.next_status, result.classification) == ("dead", "auth")


async def test_permanent_failure_is_dead_at_once() -> None:
    """A body-level rejection is dead on the first try and keeps the vendor's message."""
    store = RecordingStore()
    await store.add("kapture")
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        mock_vendor(m, payload={"status": "failed", "message": "unknown subject"})
        async with running(store, destination()):
            await eventually(lambda: len(store.records) == 1)
    [result] = store.records
    assert result.next_status == "dead"
    assert result.classification == "permanent"
    assert result.error is not None
    assert "unknown subject" in result.error
    assert "gave up" not in result.error
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["delivery.dead"]


async def test_unbuildable_request_is_dead_without_sending() -> None:
    """A delivery the adapter cannot turn into a request is dead, and nothing reaches the vendor."""
    store = RecordingStore()
    await store.add("kapture", body={"email_id": "a@b.c"})
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination()):
            await eventually(lambda: len(store.records) == 1)
        assert requests_to(m) == 0
    [result] = store.records
    assert result.next_status == "dead"
    assert result.http_status is None
    assert result.error is not None
    assert result.error.startswith("not sent: ")


@pytest.mark.parametrize(
    ("headers", "max_retry_after", "pause"),
    [({"Retry-After": "7"}, "1h", 7.0), ({}, "1h", 2.5), ({"Retry-After": "86400"}, "10m", 600.0)],
)
async def test_429_pauses_the_destinations_limiter(headers: dict[str, str], max_retry_after: str, pause: float) -> None:
    """A 429 pauses the limiter for Retry-After (capped), or for one window without it."""
    store = RecordingStore()
    await store.add("kapture")
    limiter = RecordingLimiter()
    with aioresponses() as m:
        mock_vendor(m, status=429, body="slow down", headers=headers)
        async with running(store, destination(limiter=limiter, max_retry_after=max_retry_after)):
            await eventually(lambda: len(store.records) == 1)
    assert limiter.pauses == [pause]
    assert store.records[0].next_status == "pending"


async def test_other_failures_do_not_pause_the_limiter() -> None:
    """A 503 schedules a retry but leaves the rate limiter alone."""
    store = RecordingStore()
    await store.add("kapture")
    limiter = RecordingLimiter()
    with aioresponses() as m:
        mock_vendor(m, status=503, body="busy", headers={"Retry-After": "7"})
        async with running(store, destination(limiter=limiter)):
            await eventually(lambda: len(store.records) == 1)
    assert limiter.pauses == []


async def test_429_holds_back_the_next_send() -> None:
    """After a 429 with Retry-After, the next delivery of that destination waits out the pause."""
    store = RecordingStore()
    await store.add("kapture")
    answers = itertools.count()

    def answer(url: URL, **kwargs: Any) -> CallbackResult:
        if next(answers) == 0:
            return CallbackResult(status=429, body="slow down", headers={"Retry-After": "0.4"},
                                  response_class=MockResponse)
        return CallbackResult(status=200, payload=OK_BODY, response_class=MockResponse)

    limiter = StampingLimiter()
    with aioresponses() as m:
        m.post(FAST + CREATE_PATH, callback=answer, repeat=True)
        async with running(store, destination(limiter=limiter)) as d:
            await eventually(lambda: len(store.records) == 1)
            await store.add("kapture")
            d.notify({"kapture"})
            await eventually(lambda: len(store.records) == 2)
    assert [r.classification for r in store.records] == ["retry", "success"]
    [paused_until] = limiter.paused
    assert limiter.sent_at[1] >= paused_until - CLOCK_SLACK


async def test_notify_wakes_an_idle_lane_at_once() -> None:
    """New work after notify() is sent by an idle lane, without waiting for the poll (an hour here)."""
    store = RecordingStore()
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination()) as d:
            await eventually(lambda: len(store.claims) == 1)
            await store.add("kapture")
            d.notify({"kapture", "no-such-destination"})
            await eventually(lambda: len(store.records) == 1)
    assert store.records[0].next_status == "succeeded"


async def test_without_notify_an_idle_lane_waits_for_the_poll() -> None:
    """Without notify(), work added to an idle lane waits for the poll, while a woken lane beside it sends."""
    store = RecordingStore()
    with aioresponses() as m:
        mock_vendor(m)
        mock_vendor(m, SLOW)
        async with running(store, destination(), destination("other", SLOW)) as d:
            await eventually(lambda: [c[0] for c in store.claims].count("kapture") == 1
                             and [c[0] for c in store.claims].count("other") == 1)
            waiting = await store.add("kapture")
            woken = await store.add("other")
            d.notify({"other"})
            await eventually(lambda: store.status(woken) == "succeeded")
            assert [r.delivery_id for r in store.records] == [woken]
            assert [c[0] for c in store.claims].count("kapture") == 1
            d.notify({"kapture"})
            await eventually(lambda: len(store.records) == 2)
    assert store.records[1].delivery_id == waiting


async def test_the_poll_finds_work_nobody_announced() -> None:
    """Work added without notify() (by another process, say) is found by the lane's poll."""
    store = RecordingStore()
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination(), poll_s=0.05):
            await eventually(lambda: len(store.claims) == 1)
            await store.add("kapture")
            await eventually(lambda: len(store.records) == 1)
    assert store.records[0].next_status == "succeeded"


async def test_idle_lane_wakes_when_the_next_delivery_is_due() -> None:
    """A lane with only future work sleeps until that work is due, not for a whole poll interval."""
    store = RecordingStore()
    due_ms = now_ms() + 300
    await store.add("kapture", due_ms=due_ms)
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination()):
            await eventually(lambda: len(store.records) == 1)
    assert store.records[0].started_at_ms >= due_ms


async def test_max_in_flight_caps_concurrent_sends() -> None:
    """With max_in_flight 3 and ten deliveries due, never more than three sends are in flight at once."""
    store = RecordingStore()
    for _ in range(10):
        await store.add("kapture")
    release, hold, in_flight = gate()
    with aioresponses() as m:
        mock_vendor(m, callback=hold)
        async with running(store, destination(max_in_flight=3)) as d:
            await eventually(lambda: in_flight[0] == 3)
            assert d.in_flight() == 3
            assert all(limit <= 3 for _, limit, _, _ in store.claims)
            release.set()
            await eventually(lambda: len(store.records) == 10)
    assert in_flight[1] == 3
    assert all(r.next_status == "succeeded" for r in store.records)


async def test_rate_limit_spaces_sends() -> None:
    """A destination limited to 2 requests per 0.3 s never starts a third send within 0.3 s of the first two."""
    store = RecordingStore()
    for _ in range(5):
        await store.add("kapture")

    class Stamping(SlidingWindowLimiter):
        sent_at: ClassVar[list[float]] = []

        def sent(self) -> None:
            self.sent_at.append(self._clock())
            super().sent()

    with aioresponses() as m:
        mock_vendor(m)
        limiter = Stamping(2, 0.3)
        async with running(store, destination(max_in_flight=10, limiter=limiter)):
            await eventually(lambda: len(store.records) == 5)
        assert requests_to(m) == 5
    sent_at = limiter.sent_at
    assert len(sent_at) == 5
    assert all(later - earlier >= 0.3 - CLOCK_SLACK for earlier, later in zip(sent_at, sent_at[2:], strict=False))


class SlowFirstResolver(AbstractResolver):
    """Every host name is 127.0.0.1; the first look-up takes `first_s` (a slow name server, as a connect or a busy
    event loop may hold a request between its slot and its write)."""

    def __init__(self, first_s: float) -> None:
        self.first_s = first_s

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET,
                      ) -> list[ResolveResult]:
        if self.first_s:
            delay, self.first_s = self.first_s, 0.0
            await asyncio.sleep(delay)
        return [ResolveResult(hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0,
                              flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        pass


async def test_a_send_counts_against_the_rate_limit_from_when_its_request_is_written(aiohttp_server: Any) -> None:
    """A request written late for its slot counts from its write: the next window's request is written a full window
    after it. Counted from the slot, the first (0.4 s late: its host name is slow to resolve) and the second (on
    time for its own slot) would reach the vendor 0.15 s apart under a limit of one per 0.5 s."""
    written_at: list[float] = []

    class Stamped(WrittenRequest):
        async def send(self, conn: Any) -> aiohttp.ClientResponse:
            written_at.append(time.monotonic())
            return await super().send(conn)

    async def create(request: web.Request) -> web.Response:
        return web.json_response(OK_BODY)

    app = web.Application()
    app.router.add_post(CREATE_PATH, create)
    server = await aiohttp_server(app)
    store = RecordingStore()
    for _ in range(3):
        await store.add("kapture")
    limiter = SlidingWindowLimiter(1, 0.5)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=SlowFirstResolver(0.4)),
                                    request_class=Stamped)
    dest = destination(base_url=f"http://vendor.test:{server.port}", limiter=limiter)
    async with running(store, dest, session=session):
        await eventually(lambda: len(store.records) == 3)
    assert [r.next_status for r in store.records] == ["succeeded"] * 3
    assert len(written_at) == 3
    assert all(later - earlier >= limiter.window for earlier, later in pairwise(written_at))


async def test_stop_lets_in_flight_sends_finish_within_the_grace() -> None:
    """A send that completes inside the grace period is recorded, and nothing is released."""
    store = RecordingStore()
    await store.add("kapture")
    release, hold, in_flight = gate()
    with aioresponses() as m:
        mock_vendor(m, callback=hold)
        async with running(store, destination()) as d:
            await eventually(lambda: in_flight[0] == 1)
            stopping = asyncio.create_task(d.stop(5.0))
            await eventually(lambda: d.stopping)
            assert store.records == []
            release.set()
            await asyncio.wait_for(stopping, timeout=10.0)
    assert [r.next_status for r in store.records] == ["succeeded"]
    assert store.released == []
    assert d.in_flight() == 0


async def test_stop_records_an_answer_being_classified_in_a_thread_as_the_vendor_gave_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A send cut off by the stop's grace while its answer (past LOOP_ANSWER_BYTES) is classified in the INFLATING
    thread has had its answer: the stop waits for the classification, and the success is recorded with its ticket,
    not as `unknown` ("stopped before the vendor answered")."""
    store = RecordingStore()
    await store.add("kapture")
    started, go = threading.Event(), threading.Event()
    classify = KaptureAdapter.classify

    def held(self: KaptureAdapter, action: str, status: int, headers: Any, body: bytes) -> Any:
        started.set()
        assert go.wait(10)
        return classify(self, action, status, headers, body)

    monkeypatch.setattr(KaptureAdapter, "classify", held)
    answer = msgspec.json.encode({**OK_BODY, "pad": "x" * LOOP_ANSWER_BYTES})
    with aioresponses() as m:
        mock_vendor(m, body=answer)
        async with running(store, destination()) as d:
            assert await asyncio.to_thread(started.wait, 10)
            stopping = asyncio.create_task(d.stop(0.2))
            # the grace ran out: the send's task is cancelled (or, cut off at once, gone)
            await eventually(lambda: all(t.cancelling() for lane in d.lanes.values()
                                         for t in lane.inflight.values()))
            go.set()
            await asyncio.wait_for(stopping, timeout=10.0)
    assert [(r.classification, r.next_status, r.ticket_id) for r in store.records] == [
        ("success", "succeeded", "T-1")]


async def test_stop_records_sends_cancelled_after_the_grace_as_unknown() -> None:
    """A send still hanging when the grace runs out is cancelled; its request went out, so it is not released
    as unsent but recorded as an unknown outcome: pending again, in doubt (Kapture without a reference resends)."""
    store = RecordingStore()
    quick = await store.add("kapture")
    stuck = await store.add("kapture")
    _, hold, in_flight = gate()

    async def maybe_hold(url: URL, **kwargs: Any) -> None:
        if msgspec.json.decode(kwargs["data"])[0]["title"] != f"ticket {quick}":
            await hold(url, **kwargs)

    with aioresponses() as m:
        mock_vendor(m, callback=maybe_hold)
        async with running(store, destination()) as d:
            await eventually(lambda: in_flight[0] == 1 and len(store.records) == 1)
            await asyncio.wait_for(d.stop(0.2), timeout=10.0)
    assert [(r.delivery_id, r.classification, r.next_status) for r in store.records] == [
        (quick, "success", "succeeded"), (stuck, "unknown", "pending")]
    assert "stopped before the vendor answered" in (store.records[1].error or "")
    assert store.released == []
    assert in_flight[0] == 0
    assert d.cancelled == []


class SlowClaims(RecordingStore):
    """Claims that take a while (a commit behind others), counting how many are out at once."""

    def __init__(self) -> None:
        super().__init__()
        self.out = [0, 0]  # now, most ever

    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> ClaimBatch:
        self.out[0] += 1
        self.out[1] = max(self.out[1], self.out[0])
        try:
            await asyncio.sleep(0.05)
            return await super().claim(destination, limit, owner, lease_s)
        finally:
            self.out[0] -= 1


async def test_claims_go_out_beside_each_other_within_the_free_slots() -> None:
    """Without a rate limit, a lane claims for slots freed while an earlier claim is still out, never for more
    slots than are free; every delivery is sent once."""
    store = SlowClaims()
    ids = [await store.add("kapture") for _ in range(24)]
    answers = itertools.count()

    async def answer(url: URL, **kwargs: Any) -> None:
        await asyncio.sleep(0.02 * (next(answers) % 4))  # answers come one by one, freeing slots while a claim is out

    with aioresponses() as m:
        mock_vendor(m, callback=answer)
        async with running(store, destination(max_in_flight=8)):
            await eventually(lambda: len(store.records) == 24)
        assert requests_to(m) == 24
    assert sorted(r.delivery_id for r in store.records) == ids
    assert store.out[1] > 1
    assert all(limit <= 8 for _, limit, _, _ in store.claims)


async def test_claims_under_a_rate_limit_go_one_at_a_time() -> None:
    """With a rate limit, a lane claims only once its earlier claim is back."""
    store = SlowClaims()
    for _ in range(6):
        await store.add("kapture")
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination(max_in_flight=8, limiter=SlidingWindowLimiter(2, 0.2))):
            await eventually(lambda: len(store.records) == 6)
    assert store.out[1] == 1


async def test_work_waiting_for_the_rate_limit_is_not_claimed() -> None:
    """A lane claims only what the rate limit lets it send now: the rest stays pending, unleased, until a slot
    frees, so no lease runs out while a delivery waits and nothing needs giving back at stop."""
    store = RecordingStore()
    ids = [await store.add("kapture") for _ in range(3)]
    with aioresponses() as m:
        mock_vendor(m)
        limiter = SlidingWindowLimiter(1, 60.0)
        async with running(store, destination(limiter=limiter)) as d:
            await eventually(lambda: len(store.records) == 1)
            assert [store.status(i) for i in ids[1:]] == ["pending", "pending"]
            await asyncio.wait_for(d.stop(1.0), timeout=10.0)
        assert requests_to(m) == 1
    assert [r.delivery_id for r in store.records] == ids[:1]
    assert [c[1] for c in store.claims] == [1]
    assert store.released == []


def event_waits() -> list[asyncio.Task[Any]]:
    """The tasks that wait on an asyncio.Event."""
    return [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__qualname__", "") == "Event.wait"]


async def test_a_busy_lane_waits_for_a_slot_without_a_task_and_a_stop_ends_its_wait() -> None:
    """A lane whose slots are all sending waits for one to free up on that event alone, with no task of its own
    (a busy lane waits several times a claim); a stop ends that wait at once, its lane finishing, not cancelled."""
    store = RecordingStore()
    for _ in range(2):
        await store.add("kapture")
    release, hold, in_flight = gate()
    with aioresponses() as m:
        mock_vendor(m, callback=hold)
        async with running(store, destination(max_in_flight=2)) as d:
            await eventually(lambda: in_flight[0] == 2)
            [lane] = d.lanes.values()
            await eventually(lambda: not lane.claims and lane.slot_freed._waiters)  # type: ignore[attr-defined]
            assert event_waits() == []
            stopping = asyncio.create_task(d.stop(5.0))
            await eventually(lambda: all(task.done() for task in d.tasks))
            assert not stopping.done()  # the sends out are given their grace meanwhile
            release.set()
            await asyncio.wait_for(stopping, timeout=10.0)
    assert not any(task.cancelled() for task in d.tasks)
    assert sorted(r.next_status for r in store.records) == ["succeeded", "succeeded"]


async def test_stop_ends_claiming() -> None:
    """After stop() returns, the lanes make no further claims."""
    store = RecordingStore()
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination()) as d:
            await eventually(lambda: len(store.claims) == 1)
            await d.stop(0.0)
            claims = len(store.claims)
            await store.add("kapture")
            d.notify({"kapture"})
    assert len(store.claims) == claims
    assert store.records == []
    assert all(task.done() for task in d.tasks)


async def test_hanging_vendor_does_not_delay_another_destination() -> None:
    """While one destination's vendor hangs on every request, another destination's work is all sent."""
    store = RecordingStore()
    slow_ids = [await store.add("slow") for _ in range(6)]
    fast_ids = [await store.add("fast") for _ in range(5)]
    _, hold, in_flight = gate()
    with aioresponses() as m:
        mock_vendor(m, SLOW, callback=hold)
        mock_vendor(m, FAST)
        async with running(store, destination("slow", SLOW, max_in_flight=2), destination("fast", FAST)) as d:
            await eventually(lambda: in_flight[0] == 2)
            await eventually(lambda: len(store.records) == 5)
            assert in_flight[0] == 2  # the hanging requests were never answered meanwhile
            await d.stop(0.05)
    assert sorted(r.delivery_id for r in store.records if r.classification == "success") == fast_ids
    unanswered = [r for r in store.records if r.classification == "unknown"]  # cut off at the stop, sent
    assert len(unanswered) == 2 and {r.delivery_id for r in unanswered} <= set(slow_ids)
    assert store.released == []


async def test_lane_retries_a_claim_after_the_store_fails() -> None:
    """A StoreUnavailable on claim is logged and the lane tries again, then sends."""
    store = RecordingStore(claim_errors=[StoreUnavailable("disk full")])
    await store.add("kapture")
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination()):
            await eventually(lambda: len(store.records) == 1)
    assert [e["error"] for e in logs if e["event"] == "delivery.claim_failed"] == ["disk full"]


async def test_lane_restarts_after_a_crash() -> None:
    """An unexpected error in a lane is logged and the lane starts again, so its destination keeps sending."""
    store = RecordingStore(claim_errors=[RuntimeError("bug")])
    await store.add("kapture")
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination()):
            await eventually(lambda: len(store.records) == 1)
    assert [e["event"] for e in logs if e["event"] == "delivery.lane_crashed"] == ["delivery.lane_crashed"]


async def test_record_is_retried_when_the_store_is_unavailable() -> None:
    """A StoreUnavailable while recording an attempt is retried, so the outcome is not lost."""
    store = RecordingStore(record_errors=[StoreUnavailable("locked"), StoreUnavailable("locked")])
    await store.add("kapture")
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination()):
            await eventually(lambda: len(store.records) == 1)
        assert requests_to(m) == 1
    assert store.records[0].next_status == "succeeded"


async def test_timeout_is_recorded_as_unknown_and_pending() -> None:
    """A vendor timeout is recorded as an unknown outcome, pending again (Kapture's default without a
    reference resends), with the timeout named in the error."""
    store = RecordingStore()
    await store.add("kapture")
    with aioresponses() as m:
        mock_vendor(m, exception=TimeoutError())
        async with running(store, destination()):
            await eventually(lambda: len(store.records) == 1)
    [result] = store.records
    assert (result.classification, result.next_status) == ("unknown", "pending")
    assert result.error == "timed out after 5s once connected: the vendor may have acted on it"
    assert result.http_status is None


def test_destination_defaults_to_unlimited() -> None:
    """A Destination built without a limiter sends without a rate limit."""
    d = destination()
    bare = Destination(name=d.name, config=d.config, adapter=d.adapter, policy=d.policy)
    assert isinstance(bare.limiter, Unlimited)


def test_destination_from_config_rate_limit() -> None:
    """Destination.from_config gives a destination with a rate_limit a sliding-window limiter and its schedule."""
    d = destination(rate_limit=RateLimit(requests=25, per_seconds=5))
    assert isinstance(d.limiter, SlidingWindowLimiter)
    assert d.policy.delays == (30.0, 300.0)



class CountingLimiter(RecordingLimiter):
    """A limiter that never waits and counts the sends it is told about."""

    def __init__(self) -> None:
        super().__init__()
        self.reserved = 0
        self.started = 0

    def reserve(self) -> float:
        self.reserved += 1
        return 0.0

    def unreserve(self) -> None:
        self.reserved -= 1  # a slot granted for work that was not there

    def sent(self) -> None:
        self.started += 1


async def test_each_send_marks_its_rate_limit_slot_used() -> None:
    """Every request that goes out tells the destination's limiter when it started; unsent ones do not."""
    store = RecordingStore()
    for _ in range(3):
        await store.add("kapture")
    await store.add("kapture", body={"email_id": "no title: never sent"})
    limiter = CountingLimiter()
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination(limiter=limiter)):
            await eventually(lambda: len(store.records) == 4)
        assert requests_to(m) == 3
    assert (limiter.reserved, limiter.started) == (3, 3)  # the unsent one's reservation given back


async def test_a_down_vendor_is_probed_not_hammered() -> None:
    """With the vendor failing, the breaker stops the lane after a few attempts; the backlog keeps its tries."""
    store = RecordingStore()
    ids = [await store.add("kapture") for _ in range(50)]
    with aioresponses() as m:
        mock_vendor(m, status=503, body="down")
        mock_vendor(m, SLOW)
        async with running(store, destination(schedule=["10ms"] * 10), destination("other", SLOW)) as d:
            d.lanes["kapture"].breaker = Breaker(threshold=5, base_cooldown=30)
            await eventually(lambda: d.lanes["kapture"].breaker.state == "open"
                             and len(store.records) == requests_to(m))
            attempted = requests_to(m)
            kapture_claims = [c[0] for c in store.claims].count("kapture")
            # A witness: while another lane claims and sends five deliveries, the paused lane claims nothing.
            others = [await store.add("other") for _ in range(5)]
            d.notify({"other", "kapture"})
            await eventually(lambda: all(store.status(i) == "succeeded" for i in others))
            assert [c[0] for c in store.claims].count("kapture") == kapture_claims
            assert requests_to(m) == attempted
    assert attempted <= 5 + 4  # the threshold, plus sends already under way when it opened
    untouched = [i for i in ids if not store.recorded(i)]
    assert len(untouched) >= 40
    assert all(store.status(i) == "pending" and store.tries(i) == 0 for i in untouched)


async def test_a_vendor_that_redirects_every_send_pauses_the_lane_and_kills_no_backlog() -> None:
    """A vendor answering every send with a 301 (its URL moved) is a failure of the destination: the breaker opens
    after a few, and the backlog waits with its tries for the URL to be fixed, rather than each delivery dying as a
    permanent failure (a replay of all of them); the error names where the redirect pointed."""
    store = RecordingStore()
    ids = [await store.add("kapture") for _ in range(30)]
    with aioresponses() as m:
        mock_vendor(m, status=301, body="", headers={"Location": "https://moved.example/v2/add?token=LIVE-1"})
        async with running(store, destination(schedule=["10ms"] * 10)) as d:
            d.lanes["kapture"].breaker = Breaker(threshold=5, base_cooldown=30)
            await eventually(lambda: d.lanes["kapture"].breaker.state == "open"
                             and len(store.records) == requests_to(m))
    assert requests_to(m) <= 5 + 4  # the threshold, plus sends already under way when it opened
    assert not any(store.status(i) == "dead" for i in ids)
    assert {r.classification for r in store.records} == {"retry"}
    assert {r.error for r in store.records} == {
        "HTTP 301 redirect to 'https://moved.example/v2/…' (not followed): the destination's URL is not where the "
        "API answers; fix its base_url or path"}


async def test_a_create_answered_with_a_302_is_not_posted_again() -> None:
    """Many APIs answer a create they made with a 302 to the new ticket (Post/Redirect/Get): the delivery is in
    doubt (unknown, here held for an operator), and the ticket is never POSTed again, as a retry would."""
    store = RecordingStore()
    delivery_id = await store.add("kapture")
    dest = destination(schedule=["10ms"] * 3)
    dest.config.on_unknown = "hold"
    with aioresponses() as m:
        mock_vendor(m, status=302, body="", headers={"Location": "https://app.kapture.example/ticket/4711"})
        async with running(store, dest):
            await eventually(lambda: len(store.records) >= 1 and store.status(delivery_id) != "pending")
        assert requests_to(m) == 1
    assert [r.classification for r in store.records] == ["unknown"]


async def test_the_breaker_probes_then_resumes_when_the_vendor_is_back() -> None:
    """After the cooldown one probe goes out; its success resumes the lane and every delivery lands."""
    store = RecordingStore()
    ids = [await store.add("kapture") for _ in range(20)]
    answers = itertools.count()

    def vendor(url: URL, **kwargs: Any) -> CallbackResult:
        if next(answers) < 6:
            return CallbackResult(status=503, body="down", response_class=MockResponse)
        return CallbackResult(status=200, payload=OK_BODY, response_class=MockResponse)

    with aioresponses() as m, structlog.testing.capture_logs() as logs:
        mock_vendor(m, callback=vendor)
        async with running(store, destination(schedule=["10ms"] * 10, max_in_flight=1)) as d:
            d.lanes["kapture"].breaker = Breaker(threshold=3, base_cooldown=0.05)
            await eventually(lambda: all(store.status(i) == "succeeded" for i in ids))
    events = [e["event"] for e in logs if e["event"].startswith("destination.")]
    assert events[0] == "destination.paused"
    assert events[-1] == "destination.resumed"


class SlowRecordStore(RecordingStore):
    """A store whose commits wait until the test lets them through, as slow fsyncs would."""

    def __init__(self) -> None:
        super().__init__()
        self.commit = asyncio.Event()
        self.recording = 0  # records begun

    async def record(self, result: AttemptResult, *, owner: str | None = None,
                     token: int | None = None) -> None:
        self.recording += 1
        await self.commit.wait()
        await super().record(result, owner=owner, token=token)


async def test_the_vendor_slot_is_freed_before_the_attempt_is_recorded() -> None:
    """max_in_flight caps requests to the vendor, not commits: sends go on while attempts are being recorded."""
    store = SlowRecordStore()
    for _ in range(6):
        await store.add("kapture")
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination(max_in_flight=2)):
            await eventually(lambda: requests_to(m) == 6)
            assert store.records == []
            store.commit.set()
            await eventually(lambda: len(store.records) == 6)


async def test_an_unexpected_error_while_sending_is_a_recorded_attempt() -> None:
    """A bug in sending costs the delivery one attempt on its schedule, recorded with the error, never a stuck lease.
    Raised once the request was let out (here, by the HTTP client), the request may have reached the vendor: the
    outcome is unknown, for `on_unknown` to settle."""
    store = RecordingStore()
    delivery_id = await store.add("kapture")
    with aioresponses() as m:
        mock_vendor(m, exception=RuntimeError("boom"))
        async with running(store, destination(schedule=["30s"])):
            await eventually(lambda: len(store.records) == 1)
    [result] = store.records
    assert result.delivery_id == delivery_id
    assert result.classification == "unknown"
    assert result.next_status == "pending"
    assert result.error == ("internal error: RuntimeError: boom, after its request was written: the vendor may have "
                            "acted on it")


async def test_a_send_answered_before_the_grace_ends_is_recorded_not_given_back() -> None:
    """Stopping while a vendor's answer is being recorded keeps that answer: the delivery is not released."""
    store = SlowRecordStore()
    delivery_id = await store.add("kapture")
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination()) as d:
            await eventually(lambda: store.recording == 1)  # answered; its record is under way
            await d.stop(0.05)
            store.commit.set()
        await eventually(lambda: len(store.records) == 1)
    assert store.released == []
    assert store.status(delivery_id) == "succeeded"


class FollowUpStore(RecordingStore):
    """Claims every delivery as a follow-up: its conversation already has ticket T-1."""

    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> ClaimBatch:
        batch = await super().claim(destination, limit, owner, lease_s)
        return msgspec.structs.replace(batch, items=[
            msgspec.structs.replace(item, conversation="email:<root@example.com>", ticket={"id": "T-1"})
            for item in batch.items])


async def test_a_follow_up_whose_rendering_crashes_is_recorded_dead_not_left_to_its_lease() -> None:
    """An unexpected error while rendering a follow-up settles it unsent as a render failure, and the lane goes on."""
    store = FollowUpStore()
    first, second = await store.add("kapture"), await store.add("kapture")

    async def render(item: Any) -> Any:
        if item.id == first:
            raise KeyError("ticket")
        return item

    with aioresponses() as m:
        mock_vendor(m)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": destination()}, follow_ups=render,
                           timings=Timings(store_retry_s=0.01, record_retry_max_s=0.04, poll_s=3600.0))
            d.start()
            try:
                await eventually(lambda: len(store.records) == 2)
            finally:
                await d.stop(0.0)
        assert requests_to(m) == 1
    crashed = store.recorded(first)[0]
    assert (crashed.classification, crashed.next_status, crashed.http_status) == ("permanent", "dead", None)
    assert crashed.error == "not sent: the follow-up could not be rendered: KeyError: 'ticket'"
    assert store.status(first) == "dead"
    assert store.recorded(second)[0].next_status == "succeeded"
    assert not d.lanes["kapture"].inflight


async def test_deliveries_settled_unsent_give_their_rate_limit_slots_back() -> None:
    """With 2 requests a minute, two follow-ups settled without a request (a render that fails, a body the vendor's
    mapping refuses) leave the window to the two sends after them, which go out at once: a slot kept by each
    would hold them back for a minute, and every later window by as many."""
    store = FollowUpStore()
    first = now_ms() - 1000  # claimed, and settled, first
    broken = await store.add("kapture", due_ms=first)
    unmappable = await store.add("kapture", body={"email_id": "no title: never sent"}, due_ms=first)
    sent = [await store.add("kapture") for _ in range(2)]

    async def render(item: Any) -> Any:
        if item.id == broken:
            raise KeyError("ticket")
        return item

    limiter = SlidingWindowLimiter(2, 60.0)
    with aioresponses() as m:
        mock_vendor(m)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": destination(max_in_flight=10, limiter=limiter)},
                           follow_ups=render, timings=Timings(store_retry_s=0.01, poll_s=3600.0))
            d.start()
            try:
                await eventually(lambda: len(store.records) == 4, within=5.0)
            finally:
                await d.stop(0.0)
        assert requests_to(m) == 2
    assert [store.status(i) for i in (broken, unmappable, *sent)] == ["dead", "dead", "succeeded", "succeeded"]
    assert (limiter._pending, limiter.used()) == (0, 2)


def watch_starts(gate: Gate) -> list[tuple[bool, str]]:
    """Each send that starts at `gate`, as (whether it is the breaker's probe, the breaker's state then)."""
    seen: list[tuple[bool, str]] = []
    start = gate.start

    async def watched(admission: Admission, index: int) -> None:
        seen.append((admission.probe, (await gate.view()).breaker))
        await start(admission, index)

    gate.start = watched  # type: ignore[method-assign]
    return seen


class TicketGoneOnce(KaptureAdapter):
    """Kapture whose first check of a follow-up's ticket finds it gone; later checks find it."""

    checks = 0

    async def ticket_exists(self, ticket_id: str, call: Any) -> bool | None:
        self.checks += 1
        return self.checks > 1


@pytest.mark.parametrize("unsent", ["render failed", "ticket gone", "mapping refused"])
async def test_a_probe_settled_without_a_send_leaves_the_breaker_half_open_and_the_next_send_probes(
        unsent: str) -> None:
    """The half-open breaker's probe settled without its request going out (a follow-up that failed to render, its
    ticket gone, a body the vendor's mapping refuses) says nothing of the vendor: it is given back, not counted as
    a success, so the breaker stays half-open and the next delivery sent is the probe, whose success closes it."""
    store = FollowUpStore()
    body = {"email_id": "no title: never sent"} if unsent == "mapping refused" else None
    first = await store.add("kapture", body=body, due_ms=now_ms() - 1000)  # claimed first: the probe
    after = await store.add("kapture")
    dest = destination(schedule=["30s"])
    if unsent == "ticket gone":
        dest.adapter = TicketGoneOnce("kapture", dest.config, FAST)

    async def render(item: Any) -> Any:
        if unsent == "render failed" and item.id == first:
            raise KeyError("ticket")
        return item

    with aioresponses() as m:
        mock_vendor(m)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": dest}, follow_ups=render,
                           timings=Timings(store_retry_s=0.01, poll_s=3600.0))
            d.start()
            gate = d.lanes["kapture"].gate
            gate.breaker = Breaker(state="open", until=0.0)  # half-open: its first delivery is the probe
            starts = watch_starts(gate)
            try:
                await eventually(lambda: len(store.records) == 2)
                assert starts == [(True, "half_open")]
                assert gate.breaker.state == "closed"
            finally:
                await d.stop(0.0)
        assert requests_to(m) == 1
    assert [(r.delivery_id, r.classification, r.next_status) for r in store.records] == [
        (first, "permanent", "dead"), (after, "success", "succeeded")]


async def test_a_delivery_stopped_before_its_send_starts_gives_its_slot_back() -> None:
    """A stop that cancels a delivery still being prepared (its follow-up rendering) gives back the slot it was
    admitted in: nothing was sent, and a gate shared with other dispatchers must not count it."""
    store = FollowUpStore()
    await store.add("kapture")
    rendering = asyncio.Event()

    async def render(item: Any) -> Any:
        rendering.set()
        await asyncio.Event().wait()  # never done: cut short by the stop

    limiter = SlidingWindowLimiter(2, 60.0)
    with aioresponses() as m:
        mock_vendor(m)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": destination(limiter=limiter)}, follow_ups=render,
                           timings=Timings(store_retry_s=0.01, poll_s=3600.0))
            d.start()
            await asyncio.wait_for(rendering.wait(), 5.0)
            assert limiter._pending == 1
            await d.stop(0.0)
        assert requests_to(m) == 0
    assert (limiter._pending, limiter.used()) == (0, 0)


def ended_pid() -> int:
    """The pid of a process that has run and ended."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    return ended.pid


async def test_an_owner_is_gone_when_its_pid_no_longer_runs_or_is_ours_from_an_earlier_process() -> None:
    """Only an earlier process of the instance is taken back from: a pid that has ended, or this pid under another
    process token (a restarted container's pid 1); this process and a running pid keep their work."""
    ended = ended_pid()
    async with aiohttp.ClientSession() as session:
        d = Dispatcher(RecordingStore(), session, {}, instance="h:8080")
    assert d.owner == f"h:8080/{os.getpid()}.{PROCESS_TOKEN}"
    assert not d._gone(d.owner)
    assert d._gone(f"h:8080/{os.getpid()}.0ther")
    assert d._gone(f"h:8080/{ended}.abcd")
    assert not d._gone(f"h:8080/{os.getppid()}.abcd")
    assert not d._gone("h:8080/not-a-pid")


class CheckFailing(KaptureAdapter):
    """Kapture whose check of a follow-up's ticket fails with `failure`."""

    failure: ClassVar[Exception] = TimeoutError()

    async def ticket_exists(self, ticket_id: str, call: Any) -> bool | None:
        raise self.failure


@pytest.mark.parametrize(("failure", "classification", "status", "error"), [
    (VendorAuthFailed("the key was refused"), "auth", "dead", "not sent: the key was refused"),
    (VendorUnavailable("check answered 503"), "retry", "pending",
     "not sent: the ticket check failed: VendorUnavailable: check answered 503"),
    (aiohttp.ClientConnectionError("gone"), "retry", "pending",
     "not sent: the ticket check failed: ClientConnectionError: gone"),
    (TimeoutError(), "retry", "pending", "not sent: the ticket check failed: TimeoutError: "),
])
async def test_a_failed_ticket_check_is_recorded_auth_or_retry_naming_it(
        failure: Exception, classification: str, status: str, error: str) -> None:
    """A follow-up whose ticket check is refused for its credentials is an auth failure (dead); one whose check
    fails in passing is retried, its error naming the check and the failure. Neither is sent."""
    store = FollowUpStore()
    delivery_id = await store.add("kapture")
    dest = destination()
    dest.adapter = CheckFailing("kapture", dest.config, FAST)
    CheckFailing.failure = failure
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, dest):
            await eventually(lambda: len(store.records) == 1)
        assert requests_to(m) == 0
    [result] = store.recorded(delivery_id)
    assert (result.classification, result.next_status, result.error) == (classification, status, error)


class CheckCrashingOnce(KaptureAdapter):
    """Kapture whose first check of a follow-up's ticket raises what no look-up fails with (a bug: a KeyError
    reading its answer); later checks find the ticket."""

    checks = 0

    async def ticket_exists(self, ticket_id: str, call: Any) -> bool | None:
        self.checks += 1
        if self.checks == 1:
            raise KeyError("ticketId")
        return True


@pytest.mark.parametrize("where", ["ticket check", "preparing"])
async def test_a_crash_while_a_delivery_is_prepared_is_a_recorded_attempt_and_the_lane_goes_on(where: str) -> None:
    """An unexpected error while a delivery is prepared, before any request of its own went out (its ticket check
    raising a KeyError; any other bug in preparing it, here a store error reading its conversation), costs it one
    attempt on its schedule, recorded and logged (`delivery.crashed`, with its traceback) as a crash before its
    request was written: not a dead task whose delivery waits, unrecorded, for its lease to run out. The lane goes
    on to the next delivery."""
    store = FollowUpStore()
    broken = await store.add("kapture", due_ms=now_ms() - 1000)
    after = await store.add("kapture")
    dest = destination(schedule=["30s"], max_in_flight=1)
    if where == "ticket check":
        dest.adapter = CheckCrashingOnce("kapture", dest.config, FAST)
    with aioresponses() as m, structlog.testing.capture_logs() as logs:
        mock_vendor(m)
        async with running(store, dest) as d:
            lane = d.lanes["kapture"]
            if where == "preparing":
                prepare = lane._prepare

                async def crashing(item: Any) -> Any:
                    if item.id == broken:
                        raise RuntimeError("conversation row unreadable")
                    return await prepare(item)

                lane._prepare = crashing  # type: ignore[method-assign]
            await eventually(lambda: len(store.records) == 2)
        assert requests_to(m) == 1
    error = "internal error: KeyError: 'ticketId'" if where == "ticket check" else \
        "internal error: RuntimeError: conversation row unreadable"
    [crashed] = store.recorded(broken)
    assert (crashed.classification, crashed.next_status, crashed.http_status, crashed.error) == (
        "retry", "pending", None, error)
    assert store.status(broken) == "pending" and store.tries(broken) == 1
    assert store.recorded(after)[0].next_status == "succeeded"
    [logged] = [e for e in logs if e["event"] == "delivery.crashed"]
    assert (logged["delivery_id"], logged["written"], logged["exc_info"]) == (broken, False, True)


class RateLimitedIn200(KaptureAdapter):
    """An adapter that reads a rate limit inside an HTTP 200 (as LeadSquared's MXAPIRateLimitExceededException)."""

    def classify(self, action: str, status: int, headers: Any, body: bytes) -> Outcome:
        return Outcome(classification="retry", error="API calls exceeded", retry_after=7.0, rate_limited=True)


async def test_a_rate_limit_the_adapter_reads_in_a_200_pauses_the_destination() -> None:
    """A rate limit an adapter reads in an answer whose status is no 429 (a 200) pauses the destination for the
    wait it read, as a 429 does: not only this delivery is retried later."""
    store = RecordingStore()
    await store.add("kapture")
    limiter = RecordingLimiter()
    dest = destination(limiter=limiter)
    dest.adapter = RateLimitedIn200("kapture", dest.config, FAST)
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, dest):
            await eventually(lambda: len(store.records) == 1)
    assert limiter.pauses == [7.0]
    assert store.records[0].next_status == "pending"


class LookingUp(KaptureAdapter):
    """A Kapture adapter that looks a value up at the vendor while it prepares its request (as Netgroot's
    getSubjects)."""

    async def prepare(self, action: str, fields: dict[str, Any], fetch: Any) -> dict[str, Any]:
        status, _body = await fetch(self.base_url + "/lookup", {})
        if status != 200:
            raise VendorUnavailable(f"lookup: HTTP {status}")
        return fields


@pytest.mark.parametrize(("status", "headers", "pause"), [(429, {"Retry-After": "30"}, 30.0), (429, {}, 2.5)])
async def test_a_look_ups_rate_limit_pauses_the_destination_and_retries_the_delivery_later(
        status: int, headers: dict[str, str], pause: float) -> None:
    """A look-up made while the request is prepared and answered with a rate limit (a 429) is not tried again at
    once: the delivery is retried on its schedule (no sooner than Retry-After), and the destination paused as after
    a send's 429."""
    store = RecordingStore()
    await store.add("kapture")
    limiter = RecordingLimiter()
    dest = destination(limiter=limiter, schedule=["1s", "5m"])
    dest.adapter = LookingUp("kapture", dest.config, FAST)
    with aioresponses() as m:
        m.get(FAST + "/lookup", status=status, body="slow down", headers=headers, repeat=True,
              response_class=MockResponse)
        mock_vendor(m)
        async with running(store, dest):
            await eventually(lambda: len(store.records) == 1)
        assert len(m.requests[("GET", URL(FAST + "/lookup"))]) == 1
        assert requests_to(m) == 0
    [result] = store.records
    assert limiter.pauses == [pause]
    assert result.classification == "retry" and result.next_status == "pending"
    assert result.next_attempt_at_ms is not None and result.next_attempt_at_ms >= now_ms() + (pause - 3) * 1000
    assert f"rate limited (HTTP {status}" in (result.error or "")


async def test_a_look_ups_503_with_retry_after_delays_that_delivery_alone() -> None:
    """A look-up's 503 with Retry-After is not tried again at once: its delivery is retried no sooner than
    Retry-After, and the destination is not paused (a send's 503 with Retry-After delays that delivery alone too;
    only a 429 pauses the destination)."""
    store = RecordingStore()
    await store.add("kapture")
    limiter = RecordingLimiter()
    dest = destination(limiter=limiter, schedule=["1s", "5m"])
    dest.adapter = LookingUp("kapture", dest.config, FAST)
    with aioresponses() as m:
        m.get(FAST + "/lookup", status=503, body="maintenance", headers={"Retry-After": "120"}, repeat=True,
              response_class=MockResponse)
        mock_vendor(m)
        async with running(store, dest):
            await eventually(lambda: len(store.records) == 1)
        assert len(m.requests[("GET", URL(FAST + "/lookup"))]) == 1
        assert requests_to(m) == 0
    [result] = store.records
    assert limiter.pauses == []
    assert result.classification == "retry" and result.next_status == "pending"
    assert result.next_attempt_at_ms is not None and result.next_attempt_at_ms >= now_ms() + 117 * 1000
    assert result.error == "not sent: a look-up (GET /lookup) answered HTTP 503 with Retry-After 120s"


async def test_a_look_ups_503_without_retry_after_is_tried_again_and_pauses_nothing() -> None:
    """A look-up's 503 that says nothing of when to come back is a failure in passing: tried again at once (up to
    twice), and the destination is not paused."""
    store = RecordingStore()
    await store.add("kapture")
    limiter = RecordingLimiter()
    dest = destination(limiter=limiter)
    dest.adapter = LookingUp("kapture", dest.config, FAST)
    with aioresponses() as m:
        m.get(FAST + "/lookup", status=503, body="busy", repeat=True, response_class=MockResponse)
        mock_vendor(m)
        async with running(store, dest):
            await eventually(lambda: len(store.records) == 1)
        assert len(m.requests[("GET", URL(FAST + "/lookup"))]) == 3
    assert limiter.pauses == []
    assert store.records[0].classification == "retry"


async def _pull_answered(status: int, body: str, retry_after: str) -> Exception:
    """What a reconciliation's request (`_call`) raises for a pull the vendor answers `status` with `Retry-After`."""

    async def admitted() -> None:
        pass

    with aioresponses() as m:
        m.get(FAST + "/pull", status=status, body=body, headers={"Retry-After": retry_after},
              response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            with pytest.raises(Exception) as caught:
                await _call(session, 5.0, {}, None, VendorRequest(method="GET", url=FAST + "/pull", headers={},
                                                                  body=b""), admit=admitted)
    return caught.value


async def test_a_reconciliations_rate_limited_look_up_raises_for_the_pause() -> None:
    """A reconciliation's or a ticket check's request (`_call`) answered 429 raises VendorRateLimited with the
    wait, which the delivery turns into a paused destination (`lookup_failure`)."""
    raised = await _pull_answered(429, "slow down", "12")
    assert type(raised) is VendorRateLimited and raised.retry_after == 12.0
    outcome = lookup_failure(raised, failed="reconciliation could not look the ticket up: ")
    assert outcome.rate_limited and outcome.retry_after == 12.0 and outcome.classification == "retry"


async def test_a_reconciliations_look_up_answered_503_with_retry_after_pauses_nothing() -> None:
    """A reconciliation's or a ticket check's request answered 503 with Retry-After delays its delivery (retried no
    sooner than the wait) without pausing the destination: only a 429 does."""
    raised = await _pull_answered(503, "maintenance", "120")
    assert isinstance(raised, VendorUnavailable) and not isinstance(raised, VendorRateLimited)
    outcome = lookup_failure(raised, failed="reconciliation could not look the ticket up: ")
    assert (outcome.classification, outcome.retry_after, outcome.rate_limited) == ("retry", 120.0, False)


async def test_a_probe_whose_task_fails_after_it_went_out_opens_the_breaker_again() -> None:
    """The half-open breaker's probe went out, and a bug after the vendor answered (here, redacting the answer)
    ended its task before the gate was told: the probe is told as a failure, so that the breaker opens again
    rather than staying half-open, its probe out for good."""
    store = FollowUpStore()
    first = await store.add("kapture", due_ms=now_ms() - 1000)  # claimed first: the probe
    dest = destination(schedule=["30s"])
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        mock_vendor(m)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": dest}, timings=Timings(store_retry_s=0.01, poll_s=3600.0))

            def broken(sent: Any, item: Any) -> Any:
                raise RuntimeError("a bug while redacting")

            d.start()
            lane = d.lanes["kapture"]
            lane._redacted = broken  # type: ignore[method-assign]
            gate = lane.gate
            gate.breaker = Breaker(state="open", until=0.0)  # half-open: its first delivery is the probe
            try:
                await eventually(lambda: any(e["event"] == "delivery.task_failed" for e in logs))
                await eventually(lambda: not lane.inflight)
                assert (gate.breaker.state, gate.breaker.probing) == ("open", False)
            finally:
                await d.stop(0.0)
        assert requests_to(m) == 1
    assert [e["delivery_id"] for e in logs if e["event"] == "delivery.task_failed"] == [first]


def sandbox_destination() -> Destination:
    """A destination on a shared sandbox (`sandbox: true` with a base_url): its lane sends once the check passes."""
    dest = destination()
    dest.config.sandbox = True  # set past the config's checks: its credential is the test vendor's
    return dest


async def test_a_sandbox_check_that_raises_is_retried_with_the_backoff_and_never_ends_the_lane() -> None:
    """A sandbox check that raises something other than what it answers for (a bug, `Session is closed`) is a
    check that failed: its traceback logged once, `sandbox.unverified` at each try with the wait doubling, and the
    lane sends once the check passes. Before, the exception left `Lane.run` before its `try`: a `lane_crashed` each
    time, the supervisor's store retry between (an hour here) instead of the sandbox's backoff."""
    store = RecordingStore()
    await store.add("kapture")
    calls: list[int] = []

    async def check(dest: Destination) -> str | None:
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError("Session is closed")
        return None

    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        mock_vendor(m, payload=OK_BODY)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": sandbox_destination()}, sandbox_check=check,
                           timings=Timings(store_retry_s=3600, poll_s=3600, sandbox_retry_s=0.001,
                                           sandbox_retry_max_s=0.002))
            d.start()
            try:
                await eventually(lambda: len(store.records) == 1)
            finally:
                await d.stop(0)
    assert len(calls) == 4
    assert [e["event"] for e in logs if e["event"].startswith(("sandbox.", "delivery.lane"))] == [
        "sandbox.check_failed", "sandbox.unverified", "sandbox.unverified", "sandbox.unverified", "sandbox.verified"]
    unverified = [e for e in logs if e["event"] == "sandbox.unverified"]
    assert [e["retry_in_s"] for e in unverified] == [0.001, 0.002, 0.002]
    assert unverified[0]["error"] == "the check failed: RuntimeError: Session is closed"
    assert store.records[0].next_status == "succeeded"


async def test_a_sandbox_check_that_raises_at_shutdown_is_quiet() -> None:
    """A check still out when the dispatcher stops, raising as the session closes under it, ends the lane's wait
    with nothing logged: no traceback, no `sandbox.unverified`."""
    store = RecordingStore()
    asked = asyncio.Event()
    d: Dispatcher | None = None

    async def check(dest: Destination) -> str | None:
        asked.set()
        assert d is not None
        await d.stop_event.wait()
        raise RuntimeError("Session is closed")

    with structlog.testing.capture_logs() as logs:
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": sandbox_destination()}, sandbox_check=check,
                           timings=Timings(store_retry_s=3600, poll_s=3600))
            d.start()
            await asyncio.wait_for(asked.wait(), 10)
            await d.stop(0)
            assert all(t.done() and not t.cancelled() and t.exception() is None for t in d.tasks)
    assert [e["event"] for e in logs if e["log_level"] in ("error", "warning", "critical")] == []
    assert not any(e["event"].startswith("sandbox.") for e in logs)
