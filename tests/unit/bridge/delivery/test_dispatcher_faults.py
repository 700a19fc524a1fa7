"""bridge/delivery/dispatcher.py under faults: a store that cannot take results, and a half-open breaker."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp
import msgspec
import pytest
import structlog
from aioresponses import CallbackResult, aioresponses
from yarl import URL

from bridge.app import reap_expired_leases
from bridge.config import RateLimit, RetryConfig
from bridge.delivery.breaker import Breaker
from bridge.delivery.coordination import Admission, Change, Gate, LocalCoordination
from bridge.delivery.dispatcher import (
    MINIMAL_ERROR,
    Destination,
    Dispatcher,
    Timings,
    minimal,
    plainly_storable,
)
from bridge.delivery.ratelimit import Limiter, SlidingWindowLimiter
from bridge.delivery.sender import ID_CHARS
from bridge.errors import StoreRefused, StoreUnavailable
from bridge.events import Event
from bridge.store.base import (
    AttemptResult,
    NewDelivery,
    StoreProblem,
)
from bridge.store.memory import MemoryStore
from bridge.vendors.base import VendorAuthFailed, VendorRequest
from bridge.vendors.credentials import Token, TokenCredentials
from bridge.vendors.kapture import CREATE_PATH, KaptureAdapter, KaptureOptions

BASE = "http://kapture.test"
URL_CREATE = URL(BASE + CREATE_PATH)
FAST = Timings(store_retry_s=0.001, record_retry_max_s=0.004, poll_s=0.05)


class MockResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 omits the `stream_writer` that aiohttp 3.14 requires (aioresponses#289)."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class FaultyStore(MemoryStore):
    """The in-memory store, born open, on a clock the test moves (`now`, in seconds); `record` fails while
    `record_fails` > 0 (-1: always)."""

    def __init__(self, record_fails: int = 0) -> None:
        super().__init__(clock=lambda: int(self.now * 1000))
        self.opened = True
        self.now = 1_000_000.0
        self.records: list[AttemptResult] = []
        self.record_calls = 0
        self.record_fails = record_fails
        self.released: list[str] = []
        self.calls: list[str] = []
        self.ids = itertools.count()
        self.record_raises: list[Exception] = []
        """Raised by the next `record` calls, one each, before `record_fails` is looked at."""
        self.claim_raises: list[Exception] = []
        """Raised by the next `claim` calls, one each."""

    async def add(self, n: int = 1, *, conversation: str | None = None) -> list[str]:
        out = []
        for _ in range(n):
            delivery_id = f"dlv_{next(self.ids):03d}"
            event = Event.new(source="website-contact", kind="form", channel="form", payload={})
            await self.accept(event, [NewDelivery(id=delivery_id, mapping="m", mapping_version="v1",
                                                  destination="kapture", action="create_ticket",
                                                  body={"title": f"ticket {delivery_id}"},
                                                  conversation=conversation)], 0)
            out.append(delivery_id)
        return out

    def lease_elsewhere(self, delivery_id: str) -> None:
        """Leave the delivery leased by a process that died, its lease run out."""
        kept = self.deliveries[delivery_id]
        kept.row = msgspec.structs.replace(kept.row, status="in_flight")
        kept.lease_owner, kept.lease_until_ms = "dead-process", self.clock() - 1

    def status(self, delivery_id: str) -> str:
        return self.deliveries[delivery_id].row.status

    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> Any:
        if self.claim_raises:
            raise self.claim_raises.pop(0)
        return await super().claim(destination, limit, owner, lease_s)

    async def record(self, result: AttemptResult, *, owner: str | None = None,
                     token: int | None = None) -> None:
        self.record_calls += 1
        if self.record_raises:
            raise self.record_raises.pop(0)
        if self.record_fails != 0:
            self.record_fails -= 1
            raise StoreUnavailable("sqlite: database or disk is full")
        await super().record(result, owner=owner, token=token)
        self.records.append(result)

    async def release(self, delivery_ids: list[str], *, owner: str | None = None,
                      tokens: Sequence[int] | None = None) -> None:
        self.released += delivery_ids
        await super().release(delivery_ids, owner=owner, tokens=tokens)

    async def extend_leases(self, delivery_ids: list[str], owner: str, lease_s: float,
                            tokens: Sequence[int] | None = None) -> list[str]:
        self.calls.append("extend")
        return await super().extend_leases(delivery_ids, owner, lease_s, tokens)

    async def release_expired(self) -> int:
        self.calls.append("release_expired")
        now = self.clock()
        expired = [d.row.id for d in self.deliveries.values() if d.row.status == "in_flight"
                   and d.lease_until_ms is not None and d.lease_until_ms < now]
        count = await super().release_expired()
        self.released += expired
        return count


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
                  breaker: Breaker | None = None,
                  on_ticket_dropped: Callable[[str], None] | None = None) -> AsyncIterator[Dispatcher]:
    async with aiohttp.ClientSession() as session:
        d = Dispatcher(store, session, {dest.name: dest}, timings=FAST, max_unrecorded=max_unrecorded,
                       clock=lambda: store.now, on_ticket_dropped=on_ticket_dropped)
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
    first, probe, after = await store.add(3)
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
    [delivery_id] = await store.add()
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
    [delivery_id] = await store.add()
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


async def test_a_record_the_store_refuses_for_its_data_is_recorded_reduced() -> None:
    """The store refusing an attempt's record for its data (StoreRefused) is not retried as a store failure: the
    attempt is recorded at once without its excerpt and exchange, its error saying why and keeping the vendor's
    error; the delivery succeeds with its ticket and is sent once."""
    store = FaultyStore()
    store.record_raises = [StoreRefused("value out of range (SQLSTATE 22003)", "SQLSTATE 22003")]
    [delivery_id] = await store.add()
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers((200, {"status": "error", "message": "caf\u00e9 \u2603"})),
               repeat=True, response_class=MockResponse)
        async with running(store, destination()):
            await eventually(lambda: len(store.records) == 1)
        assert requests(m) == 1
    assert store.record_calls == 2
    (record,) = store.records
    assert (record.delivery_id, record.classification, record.next_status) == (delivery_id, "permanent", "dead")
    assert (record.response_excerpt, record.exchange) == (None, None)
    assert record.error == (
        "this attempt's full record could not be written (the store refused it: value out of range (SQLSTATE "
        "22003)): kept without its response excerpt and exchange; its error was: kapture: HTTP 200: caf\\xe9 "
        "\\u2603")
    events = [e["event"] for e in logs if e["event"].startswith("delivery.record")]
    assert events == ["delivery.record_reduced"]
    assert store.released == []


async def test_a_record_that_raises_is_recorded_reduced_not_left_to_be_sent_again() -> None:
    """Recording an attempt raising something other than a store failure (a value no store takes) no longer kills
    the delivery's task unrecorded (resent once its lease ran out): the success is recorded reduced, with its
    ticket, and the delivery is sent once."""
    store = FaultyStore()
    store.record_raises = [ValueError("a value no store takes")]
    [delivery_id] = await store.add()
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with running(store, destination()):
            await eventually(lambda: len(store.records) == 1)
        assert requests(m) == 1
    (record,) = store.records
    assert (record.classification, record.ticket_id, store.status(delivery_id)) == ("success", "T-1", "succeeded")
    assert record.error is not None and "recording it raised ValueError: a value no store takes" in record.error
    [reduced] = [e for e in logs if e["event"] == "delivery.record_reduced"]
    assert reduced["delivery_id"] == delivery_id


async def test_a_reduced_record_refused_too_is_recorded_minimal_with_its_plain_ticket_id() -> None:
    """When the reduced record is refused as well, the attempt is recorded minimal: its outcome, next state and
    its ticket id (plain ASCII, which every store takes), no text, a fixed error; the delivery succeeds with its
    ticket, is sent once, and `delivery.record_minimal` names the ticket id and that no ticket id was left out."""
    store = FaultyStore()
    store.record_raises = [StoreRefused("full (SQLSTATE 22P05)", "SQLSTATE 22P05"),
                           StoreRefused("reduced (SQLSTATE 22P05)", "SQLSTATE 22P05")]
    [delivery_id] = await store.add()
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with running(store, destination()):
            await eventually(lambda: len(store.records) == 1)
        assert requests(m) == 1
    assert store.record_calls == 3
    (record,) = store.records
    assert (record.classification, record.http_status, record.next_status) == ("success", 200, "succeeded")
    assert (record.ticket_id, record.ticket_key, record.response_excerpt, record.exchange) == ("T-1", None, None, None)
    assert record.error == MINIMAL_ERROR
    assert store.status(delivery_id) == "succeeded"
    assert store.deliveries[delivery_id].row.ticket_id == "T-1"
    [minimal] = [e for e in logs if e["event"] == "delivery.record_minimal"]
    assert (minimal["ticket_id"], minimal["error"]) == ("T-1", "the store refused it: reduced (SQLSTATE 22P05)")
    assert minimal["dropped"] == []
    events = [e["event"] for e in logs]
    assert "delivery.record_failed" not in events and "conversation.ticket_lost" not in events


REFUSED_TWICE = [StoreRefused("full (SQLSTATE 22P05)", "SQLSTATE 22P05"),
                 StoreRefused("reduced (SQLSTATE 22P05)", "SQLSTATE 22P05")]


async def test_a_conversations_create_recorded_minimal_keeps_its_ticket_for_the_next_message() -> None:
    """A conversation's first message whose full and reduced records are refused is recorded minimal with its
    (plain) ticket id: the conversation has its ticket, so the thread's next message is claimed as a follow-up of
    T-1, not a second create; no `conversation.ticket_lost`."""
    store = FaultyStore()
    store.record_raises = list(REFUSED_TWICE)
    [first] = await store.add(conversation="m|case-1")
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with running(store, destination()):
            await eventually(lambda: len(store.records) == 1)
        assert requests(m) == 1
    assert store.records[0].error == MINIMAL_ERROR
    assert store.conversations["m|case-1"].ticket_id == "T-1"
    [second] = await store.add(conversation="m|case-1")
    [claimed] = (await store.claim("kapture", 10, "test", 30.0)).items
    assert claimed.id == second != first
    assert claimed.ticket is not None and claimed.ticket["id"] == "T-1"  # sent as the follow-up of T-1
    assert "conversation.ticket_lost" not in [e["event"] for e in logs]


@pytest.mark.parametrize("ticket_id", ["7\U0001F600", "caf\u00e9", "T-\n1", "T\x7f"],
                         ids=["emoji", "latin1", "newline", "delete"])
async def test_a_ticket_id_not_every_store_takes_is_dropped_from_a_minimal_record_and_the_loss_logged(
    ticket_id: str,
) -> None:
    """A ticket id that is not plainly storable (past ASCII, a control character) may be what the store refused: a
    minimal record leaves it out, counted as a dropped ticket id (`on_ticket_dropped`, the metrics' counter), and
    for a conversation's create `conversation.ticket_lost` says loudly (an error) that the conversation has no
    ticket, naming it and the ticket."""
    store = FaultyStore()
    store.record_raises = list(REFUSED_TWICE)
    [delivery_id] = await store.add(conversation="m|case-1")
    dropped: list[str] = []
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers((200, {"status": "success", "ticket_id": ticket_id})),
               repeat=True, response_class=MockResponse)
        async with running(store, destination(), on_ticket_dropped=dropped.append):
            await eventually(lambda: len(store.records) == 1)
    assert dropped == ["kapture"]
    (record,) = store.records
    assert (record.ticket_id, record.next_status, record.error) == (None, "succeeded", MINIMAL_ERROR)
    assert store.conversations["m|case-1"].ticket_id is None
    [minimal] = [e for e in logs if e["event"] == "delivery.record_minimal"]
    assert minimal["dropped"] == ["ticket_id"]
    [lost] = [e for e in logs if e["event"] == "conversation.ticket_lost"]
    assert (lost["log_level"], lost["conversation"], lost["ticket_id"], lost["delivery_id"]) == (
        "error", "m|case-1", ticket_id, delivery_id)


def test_a_minimal_record_drops_only_the_ticket_ids_not_every_store_takes() -> None:
    """`minimal` keeps each plainly storable ticket id (printable ASCII up to ID_CHARS) and leaves out
    the others, with every text from outside and the excerpt and exchange."""
    full = AttemptResult(delivery_id="d", started_at_ms=1, duration_ms=2.0, http_status=200,
                         response_excerpt="ok", classification="success", error="e", ticket_id="143",
                         ticket_key="K-\u2603", ticket_uuid="a" * ID_CHARS, next_status="succeeded",
                         exchange={"request": {}}, role="follow_up", action="update_ticket", body={"c": 1})
    kept = minimal(full)
    assert (kept.ticket_id, kept.ticket_key, kept.ticket_uuid, kept.ticket_missing) == ("143", None, "a" * ID_CHARS,
                                                                                       False)
    assert (kept.response_excerpt, kept.exchange, kept.action, kept.body, kept.error) == (
        None, None, None, None, MINIMAL_ERROR)
    assert (kept.classification, kept.http_status, kept.next_status, kept.role) == (
        "success", 200, "succeeded", "follow_up")
    assert [plainly_storable(t) for t in ("T-1 x", "~", "", "a" * (ID_CHARS + 1), "\x7f", "\t")] == [
        True, True, True, False, False, False]


@pytest.mark.parametrize(("role", "next_status", "missing"), [
    ("create", "succeeded", True), (None, "succeeded", True), ("follow_up", "succeeded", False),
    ("create", "dead", False)])
def test_a_success_whose_ticket_id_a_minimal_record_drops_shows_its_ticket_missing(
        role: str | None, next_status: str, missing: bool) -> None:
    """A success whose ticket id a minimal record leaves out names no ticket, as one whose answer named none: it is
    `ticket_missing` (shown on the delivery; `deliveries set-ticket` gives it the ticket found at the vendor), but
    a follow-up's (its answer names no ticket of its own) or a failure's is not."""
    full = AttemptResult(delivery_id="d", started_at_ms=1, duration_ms=2.0, http_status=200, response_excerpt="ok",
                         classification="success", error=None, ticket_id="caf\u00e9", next_status=next_status,
                         role=role)
    kept = minimal(full)
    assert (kept.ticket_id, kept.ticket_missing) == (None, missing)


async def test_a_minimal_record_refused_too_is_logged_and_left_to_its_lease() -> None:
    """When the minimal record is refused as well, `delivery.record_failed` names the delivery, nothing more is
    tried, and the delivery is not released: it stays in flight until its lease runs out."""
    store = FaultyStore()
    store.record_raises = [StoreRefused(f"{level} (SQLSTATE 22001)", "SQLSTATE 22001")
                           for level in ("full", "reduced", "minimal")]
    [delivery_id] = await store.add()
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with running(store, destination()) as d:
            await eventually(lambda: any(e["event"] == "delivery.record_failed" for e in logs))
            await eventually(lambda: not d.lanes["kapture"].inflight)
        assert requests(m) == 1
    assert store.record_calls == 3
    assert store.records == []
    [failed] = [e for e in logs if e["event"] == "delivery.record_failed"]
    assert (failed["delivery_id"], failed["error"]) == (delivery_id, "the store refused it: minimal (SQLSTATE 22001)")
    assert store.status(delivery_id) == "in_flight"
    assert store.released == []


async def test_a_claim_the_store_refuses_for_its_data_is_logged_as_refused_not_as_a_failing_store() -> None:
    """A claim refused for its data (the destination's name, the owner: values of the config) is logged as
    `delivery.claim_refused` with its SQLSTATE, never `delivery.claim_failed`; the lane asks again at its poll and
    sends what is due once the store takes the claim."""
    store = FaultyStore()
    store.claim_raises = [StoreRefused("character has no equivalent in LATIN1 (SQLSTATE 22P05)", "SQLSTATE 22P05")]
    [delivery_id] = await store.add()
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with running(store, destination()):
            await eventually(lambda: len(store.records) == 1)
    [refused] = [e for e in logs if e["event"] == "delivery.claim_refused"]
    assert (refused["code"], refused["destination"]) == ("SQLSTATE 22P05", "kapture")
    assert "delivery.claim_failed" not in [e["event"] for e in logs]
    assert store.status(delivery_id) == "succeeded"


async def test_a_lane_holds_at_most_max_unrecorded_results_before_it_stops_claiming() -> None:
    """While the store refuses every result, a lane sends no more than it can hold in memory."""
    store = FaultyStore(record_fails=-1)
    await store.add(10)
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
    [held] = await store.add()
    with aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with running(store, destination()) as d:
            await eventually(lambda: store.record_calls >= 1)
            store.now += 10_000  # far past the lease
            [other] = await store.add()  # leased by a process that died: the reaper takes it back
            store.lease_elsewhere(other)
            taken_over: list[int] = []
            reaper = asyncio.create_task(reap_expired_leases(store, d, every_s=0.0, on_released=taken_over.append))
            await eventually(lambda: store.calls.count("release_expired") >= 3)
            reaper.cancel()
            await asyncio.gather(reaper, return_exceptions=True)
            assert store.status(held) == "in_flight"
            store.record_fails = 0
            await eventually(lambda: held in {r.delivery_id for r in store.records})
        sent = [msgspec.json.decode(c.kwargs["data"])[0]["title"] for c in m.requests[("POST", URL_CREATE)]]
    assert sent.count(f"ticket {held}") == 1
    assert store.calls[:2] == ["extend", "release_expired"]
    assert held not in store.released
    assert other in store.released
    assert sum(taken_over) == 1  # what /metrics shows as ticketbridge_lease_takeovers_total


@dataclass
class ReaperFakes:
    """The store and the dispatcher `reap_expired_leases` drives, in one fake, on a clock the test moves (`now`, in
    seconds; a lease is `lease_s`). Each call it is asked is noted by name in `passes`, then raises
    StoreUnavailable(`error`) if `fails(name, n)` says so of its `n`th call (1 the first). `take_back`,
    `recovered_at_open` and `release_expired` give back `taken_back`, `recovered` and `expired` deliveries;
    `give_back_owed` and `keep_leases` nothing; `check` says `problem`."""

    fails: Callable[[str, int], bool] = lambda name, n: False
    error: str = "postgresql: connection refused"
    now: float = 0.0
    lease_s: float = 10.0
    taken_back: int = 0
    recovered: int = 0
    expired: int = 0
    problem: StoreProblem | None = None
    passes: list[str] = field(default_factory=list)

    def _asked(self, name: str) -> None:
        self.passes.append(name)
        if self.fails(name, self.passes.count(name)):
            raise StoreUnavailable(self.error)

    # The store's part
    def recovered_at_open(self) -> int:
        return self.recovered

    async def release_expired(self) -> int:
        self._asked("release_expired")
        return self.expired

    async def ping(self) -> None:
        self._asked("ping")

    async def check(self) -> StoreProblem | None:
        return self.problem

    # The dispatcher's part
    async def take_back(self) -> int:
        self._asked("take_back")
        return self.taken_back

    async def give_back_owed(self) -> int:
        self._asked("give_back_owed")
        return 0

    async def keep_leases(self) -> int:
        self._asked("keep_leases")
        return 0

    def monotonic(self) -> float:
        return self.now

    @asynccontextmanager
    async def reaping(self, on_released: Callable[[int], None] | None = None) -> AsyncIterator[None]:
        """`reap_expired_leases` on these fakes, a pass after another, for as long as the block runs."""
        reaper = asyncio.create_task(reap_expired_leases(self, self, every_s=0.0,  # type: ignore[arg-type]
                                                         on_released=on_released))
        try:
            yield
        finally:
            reaper.cancel()
            await asyncio.gather(reaper, return_exceptions=True)


async def test_the_reaper_counts_what_an_earlier_process_left_in_flight_as_taken_over() -> None:
    """ticketbridge_lease_takeovers_total counts every delivery given back from a sender that died or stalled: at
    start those an earlier process left in flight, whether the store gave them back as it opened (SQLite) or
    take_back does (PostgreSQL, this host:port's earlier process); then those whose leases ran out."""
    fakes = ReaperFakes(recovered=3, taken_back=2, expired=1)
    taken_over: list[int] = []
    async with fakes.reaping(on_released=taken_over.append):
        await eventually(lambda: fakes.passes.count("release_expired") >= 3)
    assert taken_over[:3] == [2 + 3, 1, 1]


async def test_a_result_whose_lease_was_taken_is_not_recorded_over_the_new_claim() -> None:
    """When another sender holds the lease by the time the vendor answers, the result is refused: the lane
    logs delivery.lease_lost and leaves the new holder's claim as it is, without retrying the record."""
    store = FaultyStore()
    [delivery_id] = await store.add()

    def taken_meanwhile(url: URL, **kwargs: Any) -> CallbackResult:
        store.deliveries[delivery_id].lease_owner = "another-process"  # its lease ran out and was claimed
        return CallbackResult(status=200, payload={"status": "success", "ticket_id": "T-9"},
                              response_class=MockResponse)

    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=taken_meanwhile, repeat=True, response_class=MockResponse)
        async with running(store, destination()):
            await eventually(lambda: any(e["event"] == "delivery.lease_lost" for e in logs))
        assert requests(m) == 1
    assert store.record_calls == 1
    assert store.records == []
    kept = store.deliveries[delivery_id]
    assert (kept.row.status, kept.lease_owner, kept.row.attempts) == ("in_flight", "another-process", 0)
    [lost] = [e for e in logs if e["event"] == "delivery.lease_lost"]
    assert (lost["delivery_id"], lost["classification"], lost["ticket_id"]) == (delivery_id, "success", "T-9")


class HeldStarts(LocalCoordination):
    """Gates whose sends wait, once admitted, until `go` is set (one send each time): a process stalled between
    its claim and its request (a slow token, a SIGSTOP)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.waiting = 0

    def gate(self, destination: str, rate: RateLimit | None, limiter: Limiter | None = None) -> Gate:
        held = super().gate(destination, rate, limiter)
        starts = held.start

        async def start(admission: Admission, index: int) -> None:
            self.waiting += 1
            await self.go.wait()
            self.go.clear()  # one send each
            await starts(admission, index)

        held.start = start  # type: ignore[method-assign]
        return held


class Ticking:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def stalling(store: FaultyStore) -> AsyncIterator[tuple[Dispatcher, HeldStarts, Ticking]]:
    coordination, ticking = HeldStarts(), Ticking()
    async with aiohttp.ClientSession() as session:
        d = Dispatcher(store, session, {"kapture": destination()}, timings=FAST, clock=lambda: store.now,
                       coordination=coordination, monotonic=ticking, lease_s=3.0)
        d.start()
        try:
            yield d, coordination, ticking
        finally:
            if not d.stopping:
                await d.stop(0.0)


async def test_a_send_stalled_past_its_lease_is_not_sent_and_records_nothing() -> None:
    """A process that stalls between its claim and its request for longer than the lease (less its margin) does
    not send: another may have taken the delivery over and sent it. No attempt is recorded, and the delivery,
    its lease still this process's, goes back due now."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with stalling(store) as (_, coordination, ticking):
            await eventually(lambda: coordination.waiting == 1)
            ticking.now += 2.4  # past 3 s less a quarter
            coordination.go.set()
            await eventually(lambda: any(e["event"] == "delivery.lease_lost" for e in logs))
            await eventually(lambda: delivery_id in store.released)
            await eventually(lambda: coordination.waiting == 2)  # given back due now, claimed again at once
        assert requests(m) == 0
    assert store.record_calls == 0
    [lost] = [e for e in logs if e["event"] == "delivery.lease_lost"]
    assert (lost["delivery_id"], lost["unsent"]) == (delivery_id, True)
    assert "3s" in lost["error"]
    assert store.deliveries[delivery_id].row.attempts == 0


async def test_a_send_within_its_renewed_lease_goes_out() -> None:
    """Each extension that returns the delivery confirms its lease again: a send waiting longer than a lease in
    all, its lease kept, goes out."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    with aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with stalling(store) as (d, coordination, ticking):
            await eventually(lambda: coordination.waiting == 1)
            for _ in range(4):
                ticking.now += 1.0
                assert await d.keep_leases() == 1
            coordination.go.set()
            await eventually(lambda: delivery_id in {r.delivery_id for r in store.records})
        assert requests(m) == 1


async def test_a_send_whose_lease_was_not_extended_is_not_sent_nor_given_back() -> None:
    """An extension that does not return the delivery (its lease ran out and another process claimed it) loses
    it at once: its request is not written, and the new holder's claim is left as it is."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with stalling(store) as (d, coordination, _):
            await eventually(lambda: coordination.waiting == 1)
            store.deliveries[delivery_id].lease_owner = "another-process"
            assert await d.keep_leases() == 0
            coordination.go.set()
            await eventually(lambda: any(e["event"] == "delivery.lease_lost" for e in logs))
            await eventually(lambda: not d.lanes["kapture"].inflight)
        assert requests(m) == 0
    assert store.record_calls == 0
    kept = store.deliveries[delivery_id]
    assert (kept.row.status, kept.lease_owner, kept.row.attempts) == ("in_flight", "another-process", 0)


class CountingGates(LocalCoordination):
    """Gates counting each request they let out: a send's start, and each request beside it (`admit_request`)."""

    def __init__(self) -> None:
        super().__init__()
        self.admitted: list[str] = []

    def gate(self, destination: str, rate: RateLimit | None, limiter: Limiter | None = None) -> Gate:
        counted = super().gate(destination, rate, limiter)
        starts, requests = counted.start, counted.admit_request

        async def start(admission: Admission, index: int) -> None:
            self.admitted.append("start")
            await starts(admission, index)

        async def admit_request() -> None:
            self.admitted.append("request")
            await requests()

        counted.start = start  # type: ignore[method-assign]
        counted.admit_request = admit_request  # type: ignore[method-assign]
        return counted


class NumberedTokens(TokenCredentials):
    """Hands out tok-1, tok-2, …, each for an hour."""

    async def obtain(self, session: aiohttp.ClientSession) -> Token:
        now = self.clock()
        return Token(value=f"tok-{self.obtained + 1}", obtained_at=now, expires_at=now + 3600)


async def test_a_resend_after_a_token_renewal_is_admitted_by_the_gate() -> None:
    """A send refused for its token (401) is made again with a new one: that second request is let out by the
    destination's gate (its rate limit) as the first was, not around it, and so is each token's request (the first
    token's, the new one's): the vendor counts them all."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    dest = destination()
    dest.adapter.credentials = NumberedTokens("kapture")
    gates = CountingGates()
    with aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers((401, {"status": "failed", "message": "token expired"}),
                                                 (201, {"status": "success", "ticket_id": "T-1"})),
               repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": dest}, timings=FAST, clock=lambda: store.now,
                           coordination=gates)
            d.start()
            try:
                await eventually(lambda: delivery_id in {r.delivery_id for r in store.records})
            finally:
                await d.stop(0.0)
        assert requests(m) == 2
    assert store.records[0].classification == "success"
    assert gates.admitted == ["request", "start", "request", "request"]  # token, send, new token, resend


class CheckingTickets(KaptureAdapter):
    """A Kapture adapter that asks the vendor whether a follow-up's ticket is still there before it is sent."""

    async def ticket_exists(self, ticket_id: str, call: Any) -> bool | None:
        status, _ = await call(VendorRequest(method="GET", url=f"{self.base_url}/ticket/{ticket_id}", headers={},
                                             body=b""))
        return status == 200


async def test_a_token_obtained_for_a_ticket_check_is_admitted_by_the_gate() -> None:
    """The token a follow-up's ticket check obtains is let out by the destination's gate before the check, as the
    check itself and the send after it are."""
    store = FollowUps()
    [delivery_id] = await store.add()
    dest = destination()
    dest.adapter = CheckingTickets("kapture", dest.config, BASE)
    dest.adapter.credentials = NumberedTokens("kapture")
    gates = CountingGates()
    with aioresponses() as m:
        m.get(BASE + "/ticket/T-1", status=200, body="{}", response_class=MockResponse)
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": dest}, timings=FAST, clock=lambda: store.now,
                           coordination=gates, follow_ups=store.render)
            d.start()
            try:
                await eventually(lambda: delivery_id in {r.delivery_id for r in store.records})
            finally:
                await d.stop(0.0)
        assert requests(m) == 1
    assert store.records[0].classification == "success"
    assert gates.admitted == ["request", "request", "start"]  # the token, the check, the send


class LookingUp(KaptureAdapter):
    """A Kapture adapter that looks a value up at the vendor while it prepares its request, as Netgroot looks up its
    subject ids."""

    async def prepare(self, action: str, fields: dict[str, Any], fetch: Any) -> dict[str, Any]:
        status, body = await fetch(self.base_url + "/lookup", {})
        assert status == 200
        return {**fields, "title": body.decode()}


async def test_look_ups_made_while_a_request_is_prepared_are_admitted_by_the_gate() -> None:
    """Each request a look-up makes while the send is prepared (a retried one too) is let out by the destination's
    gate (its rate limit), as the send itself is: the vendor counts them all."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    dest = destination()
    dest.adapter = LookingUp("kapture", dest.config, BASE)
    gates = CountingGates()
    with aioresponses() as m:
        m.get(BASE + "/lookup", status=503, body="busy", response_class=MockResponse)
        m.get(BASE + "/lookup", status=200, body="Router down", response_class=MockResponse)
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": dest}, timings=FAST, clock=lambda: store.now,
                           coordination=gates)
            d.start()
            try:
                await eventually(lambda: delivery_id in {r.delivery_id for r in store.records})
            finally:
                await d.stop(0.0)
        assert len(m.requests[("GET", URL(BASE + "/lookup"))]) == 2
    assert store.records[0].classification == "success"
    assert gates.admitted == ["request", "request", "start"]


class TracingLimiter(SlidingWindowLimiter):
    """The sliding-window limiter, noting on its own clock when each request it lets out starts."""

    def __init__(self, requests: int, per_seconds: float) -> None:
        super().__init__(requests, per_seconds)
        self.started: list[float] = []

    def sent(self) -> int | None:
        self.started.append(self._clock())
        return super().sent()


async def test_look_ups_and_the_sends_they_are_made_for_keep_to_the_rate_limit() -> None:
    """On the in-process gate, two sends admitted together whose requests each look a value up first: the
    look-ups wait behind the sends' reserved slots, and the sends, passed by them, wait for room in the window
    rather than go out with them. No window of the limit (2 requests in 0.3 s) counts more than 2 of the 4."""
    store = FaultyStore()
    ids = await store.add(2)
    dest = destination()
    dest.adapter = LookingUp("kapture", dest.config, BASE)
    limiter = dest.limiter = TracingLimiter(2, 0.3)
    with aioresponses() as m:
        m.get(BASE + "/lookup", status=200, body="Router down", repeat=True, response_class=MockResponse)
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with running(store, dest):
            await eventually(lambda: {r.delivery_id for r in store.records} >= set(ids))
        made = len(m.requests[("GET", URL(BASE + "/lookup"))]) + requests(m)
    assert made == len(limiter.started) == 4
    assert all(later - earlier >= 0.3 for earlier, later in zip(limiter.started, limiter.started[2:], strict=False))
    assert all(r.classification == "success" for r in store.records)


async def test_a_failure_opens_the_breaker_before_its_slot_is_freed() -> None:
    """The failure that opens the breaker is told to the gate while its send still holds its in-flight slot: the
    lane, waiting for that slot, asks the gate only once the breaker is open, and no second request goes out."""
    store = FaultyStore()
    await store.add(3)
    held_when_told: list[int] = []
    admitted_while_told: list[int] = []
    with aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(*[(503, {"status": "error"})] * 3), repeat=True,
               response_class=MockResponse)
        async with running(store, destination(max_in_flight=1),
                           breaker=Breaker(threshold=1, base_cooldown=3600.0)) as d:
            lane = d.lanes["kapture"]
            gate = lane.gate
            admit, outcome = gate.admit, gate.outcome
            admits = 0

            async def counted_admit(want: int) -> Admission:
                nonlocal admits
                admits += 1
                return await admit(want)

            async def slow_outcome(classification: str, admission: Admission | None = None) -> Change:
                held_when_told.append(len(lane.sending))
                before = admits
                for _ in range(20):  # the gate's own round trip (PostgreSQL's): other tasks run meanwhile
                    await asyncio.sleep(0)
                admitted_while_told.append(admits - before)
                return await outcome(classification, admission)

            gate.admit = counted_admit  # type: ignore[method-assign]
            gate.outcome = slow_outcome  # type: ignore[method-assign]
            await eventually(lambda: len(store.records) >= 1 and admits >= 2)  # asked again, and held back
            assert lane.breaker.state == "open"
        assert requests(m) == 1
    assert held_when_told == [1]
    assert admitted_while_told == [0]


async def test_a_probe_given_up_for_its_lease_is_given_back_to_the_breaker() -> None:
    """The breaker's probe, given up unsent as its lease may have run out, is given back: the breaker does not
    wait for an answer that will not come, and the next probe goes out."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    with aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with stalling(store) as (d, coordination, ticking):
            d.lanes["kapture"].breaker = Breaker(state="open", until=0.0)  # half-open: its first send is the probe
            await eventually(lambda: coordination.waiting == 1)
            ticking.now += 2.4  # past 3 s less a quarter
            coordination.go.set()
            await eventually(lambda: coordination.waiting == 2)  # given back, and claimed again as a probe
            coordination.go.set()
            await eventually(lambda: delivery_id in {r.delivery_id for r in store.records})
            assert d.lanes["kapture"].breaker.state == "closed"
        assert requests(m) == 1


class HeldRequests(LocalCoordination):
    """Gates whose requests beside a send (`admit_request`: a new token's and a resend's after a refused token)
    made once `holding()` is true wait, once let out, until `go` is set: a process stalled between a refusal and its
    resend."""

    def __init__(self) -> None:
        super().__init__()
        self.go = asyncio.Event()
        self.waiting = 0
        self.holding: Callable[[], bool] = lambda: True

    def gate(self, destination: str, rate: RateLimit | None, limiter: Limiter | None = None) -> Gate:
        held = super().gate(destination, rate, limiter)
        requests = held.admit_request

        async def admit_request() -> None:
            await requests()
            if self.holding():
                self.waiting += 1
                await self.go.wait()

        held.admit_request = admit_request  # type: ignore[method-assign]
        return held


async def test_a_refused_probe_whose_resend_is_given_up_for_its_lease_keeps_its_slot_and_reopens_the_breaker() -> None:
    """The breaker's probe went out and was refused for its token; its resend, with a new one, is given up as its
    lease may have run out. The probe's request did go out: its slot stays counted, and its answer (refused
    credentials) reaches the breaker, which opens again, rather than the probe being given back as if unsent."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    dest = destination()
    dest.adapter.credentials = NumberedTokens("kapture")
    limiter = dest.limiter = SlidingWindowLimiter(5, 3600.0)
    coordination, ticking = HeldRequests(), Ticking()
    with aioresponses() as m:
        coordination.holding = lambda: requests(m) == 1  # from the refusal on
        m.post(str(URL_CREATE), callback=answers((401, {"status": "failed", "message": "token expired"})),
               repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": dest}, timings=FAST, clock=lambda: store.now,
                           coordination=coordination, monotonic=ticking, lease_s=3.0)
            d.start()
            d.lanes["kapture"].breaker = Breaker(state="open", until=0.0)  # half-open: its first send is the probe
            try:
                await eventually(lambda: coordination.waiting == 1)  # refused; the new token waits, its slot taken
                ticking.now += 2.4  # past 3 s less a quarter
                coordination.go.set()
                await eventually(lambda: delivery_id in store.released)
                assert d.lanes["kapture"].breaker.state == "open"
                # the first token's, the refused request, the new token's and the slot its resend took before
                # giving up
                assert limiter.used() == 4
            finally:
                await d.stop(0.0)
        assert requests(m) == 1
    assert store.record_calls == 0


@pytest.mark.parametrize(("status", "classification"), [(503, "retry"), (200, "success")])
async def test_a_stop_while_an_answer_is_told_to_the_gate_records_the_vendors_answer(
        status: int, classification: str) -> None:
    """A stop whose cancel lands while an answer is being told to the gate (a round trip on PostgreSQL) cuts that
    short, but the vendor has answered: the attempt is recorded as its answer (a 503: retry), not as unknown; a
    success (told to the gate once its slot is freed) is recorded too, not lost to be sent again."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    telling = asyncio.Event()
    with aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers((status, {"status": "error"} if status == 503 else
                                                  {"status": "success", "ticket_id": "T-1"})),
               repeat=True, response_class=MockResponse)
        async with running(store, destination()) as d:
            gate = d.lanes["kapture"].gate

            async def never_told(classification: str, admission: Admission | None = None) -> Change:
                telling.set()
                await asyncio.Event().wait()  # the gate's round trip, not over when the stop comes
                return None

            gate.outcome = never_told  # type: ignore[method-assign]
            await telling.wait()
            await d.stop(0.0)
        assert requests(m) == 1
    [record] = store.records
    assert (record.delivery_id, record.classification, record.http_status) == (delivery_id, classification, status)


async def test_a_stop_while_an_answer_is_told_to_the_gate_does_not_wait_for_a_store_that_is_down() -> None:
    """A stop whose cancel lands in the gate's update while the store is down tries the vendor's answer's record
    once, logs delivery.record_failed (the lease is left to run out) and returns: it does not wait, retrying, for
    the store to come back."""
    store = FaultyStore(record_fails=-1)  # the store takes no record
    [delivery_id] = await store.add()
    telling = asyncio.Event()
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers((503, {"status": "error"})), repeat=True,
               response_class=MockResponse)
        async with running(store, destination()) as d:
            gate = d.lanes["kapture"].gate

            async def never_told(classification: str, admission: Admission | None = None) -> Change:
                telling.set()
                await asyncio.Event().wait()
                return None

            gate.outcome = never_told  # type: ignore[method-assign]
            await telling.wait()
            await asyncio.wait_for(d.stop(0.0), 5.0)
        assert requests(m) == 1
    assert store.record_calls == 1
    [failed] = [e for e in logs if e["event"] == "delivery.record_failed"]
    assert (failed["delivery_id"], failed["classification"]) == (delivery_id, "retry")
    assert "lease" in failed["note"]
    assert store.released == []


class CrashingOnSuccess(KaptureAdapter):
    """A Kapture adapter whose reading of a 2xx answer raises (a bug): the vendor has taken the request."""

    def classify(self, action: str, status: int, headers: Any, body: bytes) -> Any:
        if 200 <= status < 300:
            raise KeyError("ticket")
        return super().classify(action, status, headers, body)


async def test_a_crash_after_the_request_was_written_is_an_unknown_outcome_not_a_plain_retry() -> None:
    """An attempt that raises once its request went out (here, classifying the vendor's 2xx) is recorded as
    `unknown` and the delivery marked in doubt, so that `on_unknown` decides its next send (a resend counted as a
    possible duplicate, a reconciliation, a hold), not retried as if nothing had reached the vendor."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    dest = destination()
    dest.adapter = CrashingOnSuccess("kapture", dest.config, BASE)
    with aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with running(store, dest):
            await eventually(lambda: bool(store.records))
        assert requests(m) == 1
    [result] = store.records
    assert result.classification == "unknown"
    assert "internal error: KeyError" in (result.error or "")
    assert store.deliveries[delivery_id].row.in_doubt_since_ms is not None
    assert store.status(delivery_id) == "pending"


async def test_a_crash_before_the_request_was_written_is_a_retry() -> None:
    """An attempt that raises before its request goes out (building it) is a plain retry on the schedule: nothing
    reached the vendor, so the delivery is not in doubt."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    dest = destination()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("title")

    dest.adapter.build_request = broken  # type: ignore[method-assign]
    with aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with running(store, dest):
            await eventually(lambda: bool(store.records))
        assert requests(m) == 0
    [result] = store.records
    assert result.classification == "retry"
    assert store.deliveries[delivery_id].row.in_doubt_since_ms is None


async def test_a_bug_past_the_attempts_own_net_is_logged_and_the_lane_goes_on() -> None:
    """An exception the attempt's own handling does not take (here, telling the gate its answer) ends that
    delivery's task with `delivery.task_failed` logged with its traceback: the task's
    exception is taken, not left for asyncio to report, and the delivery stays in flight for its lease to run out.
    The lane goes on with the next."""
    store = FaultyStore()
    first, second = await store.add(2)
    told: list[str] = []
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with running(store, destination()) as d:
            gate = d.lanes["kapture"].gate
            real = gate.outcome

            async def outcome(classification: str, admission: Admission | None = None) -> Change:
                told.append(classification)
                if len(told) == 1:
                    raise RuntimeError("a bug in the gate")
                return await real(classification, admission)

            gate.outcome = outcome  # type: ignore[method-assign]
            await eventually(lambda: any(r.delivery_id == second for r in store.records))
            await eventually(lambda: not d.lanes["kapture"].inflight)
    failed = [e for e in logs if e["event"] == "delivery.task_failed"]
    assert [(e["delivery_id"], e["log_level"], e["exc_info"]) for e in failed] == [(first, "error", True)]
    assert "lease" in failed[0]["note"]
    assert [r.delivery_id for r in store.records] == [second]
    assert store.released == []


class FailingGates(LocalCoordination):
    """Gates kept by a store that fails: the next `fails` sends' starts (`where="start"`), or requests beside a send
    (`where="look-up"`: `admit_request`), made once `when()` is true, raise StoreUnavailable, as a shared gate's round
    trip does while its database is unreachable. Each classification fed to the breaker is noted (`outcomes`)."""

    def __init__(self, where: str, fails: int = 1, when: Callable[[], bool] = lambda: True) -> None:
        super().__init__()
        self.where, self.fails, self.when = where, fails, when
        self.outcomes: list[str] = []

    def failing(self, where: str) -> None:
        if self.where == where and self.fails > 0 and self.when():
            self.fails -= 1
            raise StoreUnavailable("postgresql: connection refused")

    def gate(self, destination: str, rate: RateLimit | None, limiter: Limiter | None = None) -> Gate:
        kept = super().gate(destination, rate, limiter)
        starts, requests, outcomes = kept.start, kept.admit_request, kept.outcome

        async def start(admission: Admission, index: int) -> None:
            self.failing("start")
            await starts(admission, index)

        async def admit_request() -> None:
            self.failing("look-up")
            await requests()

        async def outcome(classification: str, admission: Admission | None = None) -> Change:
            self.outcomes.append(classification)
            return await outcomes(classification, admission)

        kept.start = start  # type: ignore[method-assign]
        kept.admit_request = admit_request  # type: ignore[method-assign]
        kept.outcome = outcome  # type: ignore[method-assign]
        return kept


@pytest.mark.parametrize("where", ["start", "look-up"])
async def test_a_store_failing_the_gate_before_the_request_costs_no_try_and_tells_the_breaker_nothing(
        where: str) -> None:
    """The store that keeps the gate failing as a send starts, or as a look-up made while it is prepared is
    admitted, sent nothing: no attempt is recorded, no try used (a delivery on its last try does not go dead for
    it), the breaker is told nothing and the lane does not log a crash. The delivery goes back and is sent once the
    store answers again; its slot at the gate is given back."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    cfg = KaptureOptions(vendor="kapture", base_url=BASE, token="t", max_in_flight=4, timeout_seconds=5.0,
                         retry=RetryConfig(schedule=[], jitter=0))  # its first try is its last
    dest = Destination.from_config("kapture", cfg, BASE)
    dest.adapter = LookingUp("kapture", dest.config, BASE)
    limiter = dest.limiter = SlidingWindowLimiter(100, 60)
    gates = FailingGates(where)
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.get(BASE + "/lookup", status=200, body="Router down", repeat=True, response_class=MockResponse)
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": dest}, timings=FAST, clock=lambda: store.now,
                           coordination=gates)
            d.start()
            try:
                await eventually(lambda: delivery_id in {r.delivery_id for r in store.records})
            finally:
                await d.stop(0.0)
        assert requests(m) == 1
    assert gates.fails == 0
    assert [(r.classification, r.next_status) for r in store.records] == [("success", "succeeded")]
    assert store.deliveries[delivery_id].row.attempts == 1
    assert gates.outcomes == ["success"]
    assert store.released == [delivery_id]
    events = [e["event"] for e in logs]
    assert "delivery.gate_failed" in events and "delivery.crashed" not in events, events
    # the requests made: a look-up and the send, and before them the look-up of the try the failing start stopped
    assert limiter.used() == 2 + (where == "start"), "a slot neither used nor given back"


class FollowUps(FaultyStore):
    """Claims every delivery as a conversation's follow-up (its ticket T-1 known), rendered by `render`, which reads
    its event from the store (`get_event`, as the server's renderer does): the next reads raise `event_raises`."""

    def __init__(self) -> None:
        super().__init__()
        self.event_raises: list[Exception] = []

    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> Any:
        batch = await super().claim(destination, limit, owner, lease_s)
        return msgspec.structs.replace(batch, items=[
            msgspec.structs.replace(item, conversation="email:<root@example.com>", ticket={"id": "T-1"})
            for item in batch.items])

    async def get_event(self, event_id: str) -> Event:
        if self.event_raises:
            raise self.event_raises.pop(0)
        return await super().get_event(event_id)

    async def render(self, item: Any) -> Any:
        await self.get_event(item.event_id)
        return item


def last_try() -> Destination:
    """Kapture whose first try is its last: a try used goes dead."""
    cfg = KaptureOptions(vendor="kapture", base_url=BASE, token="t", max_in_flight=4, timeout_seconds=5.0,
                         retry=RetryConfig(schedule=[], jitter=0))
    return Destination.from_config("kapture", cfg, BASE)


@pytest.mark.parametrize("probe", [False, True])
async def test_a_store_failing_a_follow_ups_render_costs_no_try_and_tells_the_breaker_nothing(probe: bool) -> None:
    """A follow-up whose event the store cannot give as it is rendered (its ticket known) sends nothing: no attempt
    is recorded, no try used (on its last try, it does not go dead), the breaker is told nothing, its slot at the
    gate goes back, and `delivery.event_unread` says so. It is given back and sent once the store answers again;
    the breaker's probe so given back leaves the breaker half-open, and the send that follows probes and closes
    it."""
    store = FollowUps()
    [delivery_id] = await store.add()
    store.event_raises.append(StoreUnavailable("postgresql: connection refused"))
    dest = last_try()
    limiter = dest.limiter = SlidingWindowLimiter(100, 60)
    gates = FailingGates("nowhere")
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": dest}, timings=FAST, clock=lambda: store.now,
                           coordination=gates, follow_ups=store.render)
            d.start()
            gate = d.lanes["kapture"].gate
            if probe:
                gate.breaker = Breaker(state="open", until=0.0)  # half-open: its first delivery is the probe
            try:
                await eventually(lambda: delivery_id in {r.delivery_id for r in store.records})
            finally:
                await d.stop(0.0)
        assert requests(m) == 1
    assert store.event_raises == []
    assert [(r.classification, r.next_status, r.role) for r in store.records] == [
        ("success", "succeeded", "follow_up")]
    assert store.deliveries[delivery_id].row.attempts == 1
    assert gates.outcomes == ["success"]
    assert gate.breaker.state == "closed"
    assert store.released == [delivery_id]
    assert limiter.used() == 1, "the slot of the send not made was kept"
    unread = [e for e in logs if e["event"] == "delivery.event_unread"]
    assert [(e["delivery_id"], e["log_level"]) for e in unread] == [(delivery_id, "error")]
    assert "to render the follow-up: postgresql: connection refused" in unread[0]["error"]
    assert not {"delivery.crashed", "delivery.gate_failed"} & {e["event"] for e in logs}


class ReleaseDown(FollowUps):
    """FollowUps whose `release` fails while `release_down` (counted in `release_failures`)."""

    def __init__(self) -> None:
        super().__init__()
        self.release_down = True
        self.release_failures = 0

    async def release(self, delivery_ids: list[str], *, owner: str | None = None,
                      tokens: Sequence[int] | None = None) -> None:
        if self.release_down:
            self.release_failures += 1
            raise StoreUnavailable("postgresql: connection refused")
        await super().release(delivery_ids, owner=owner, tokens=tokens)

@asynccontextmanager
async def giving_back(store: FollowUps) -> AsyncIterator[tuple[Dispatcher, aioresponses, list[Any]]]:
    """A dispatcher sending `store`'s follow-up, whose event the store first fails to read (so it is given back
    unsent), to a vendor that answers at once: the dispatcher, the vendor's mock and the logs captured; stopped at
    the end unless the test stopped it."""
    store.event_raises.append(StoreUnavailable("postgresql: connection refused"))
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": last_try()}, timings=FAST, clock=lambda: store.now,
                           follow_ups=store.render)
            d.start()
            try:
                yield d, m, logs
            finally:
                if not d.stopping:
                    await d.stop(0.0)


async def test_a_delivery_given_back_unsent_while_the_store_is_down_is_not_reaped_in_doubt() -> None:
    """A follow-up whose event the store cannot read is given back unsent; the store fails that release too. The
    release is retried while its lease is kept (a reaper pass past the claim's lease does not take it), and once the
    store answers it is pending, not in doubt, and sent once, not flagged as a possible duplicate."""
    store = ReleaseDown()
    [delivery_id] = await store.add()
    async with giving_back(store) as (d, m, logs):
        await eventually(lambda: store.release_failures >= 3)
        for _ in range(2):  # the reaper's passes, the claim's own lease long run out
            await d.keep_leases()
            store.now += 0.9 * d.lease_s
            assert await store.release_expired() == 0
        store.release_down = False
        await eventually(lambda: bool(store.records))
    assert requests(m) == 1
    row = store.deliveries[delivery_id].row
    assert (row.status, row.unknowns, row.in_doubt_since_ms, row.duplicates) == ("succeeded", 0, None, 0)
    assert [(r.classification, r.duplicate) for r in store.records] == [("success", False)]
    events = [e["event"] for e in logs]
    assert events.count("delivery.release_retrying") == 1 and "delivery.released_late" in events, events
    assert "delivery.release_failed" not in events


class ReleaseHangs(FollowUps):
    """FollowUps whose first release fails, and whose second hangs until `let_go` is set, then fails (a connection
    waited for while the server comes back); every later release is done."""

    def __init__(self) -> None:
        super().__init__()
        self.releases = 0
        self.hanging = asyncio.Event()
        self.let_go = asyncio.Event()

    async def release(self, delivery_ids: list[str], *, owner: str | None = None,
                      tokens: Sequence[int] | None = None) -> None:
        self.releases += 1
        if self.releases == 1:
            raise StoreUnavailable("postgresql: connection refused")
        if self.releases == 2:
            self.hanging.set()
            await self.let_go.wait()
            raise StoreUnavailable("postgresql: connection refused")
        await super().release(delivery_ids, owner=owner, tokens=tokens)


async def test_a_release_that_fails_after_the_reaper_gave_it_back_is_not_said_to_have_failed() -> None:
    """A follow-up given back unsent, its release failing, is owed. While the lane's next release waits on the store,
    the reaper's pass gives it back with what is owed and renews the leases (its own not returned: it is pending).
    The lane's release then failing, the lane says it was given back (`delivery.released_late`), not that it stays
    in flight to be given back in doubt (`delivery.release_failed`, an error), which it was not: it is sent once,
    not in doubt. Before, the failure was weighed first, and the lease not returned, or the lane's new claim of it,
    made it `delivery.release_failed`."""
    store = ReleaseHangs()
    [delivery_id] = await store.add()
    async with giving_back(store) as (d, m, logs):
        await eventually(store.hanging.is_set)
        assert await d.give_back_owed() == 1  # the reaper's pass, on a connection of its own
        await d.keep_leases()
        store.let_go.set()
        await eventually(lambda: bool(store.records))
    assert requests(m) == 1
    row = store.deliveries[delivery_id].row
    assert (row.status, row.unknowns, row.in_doubt_since_ms) == ("succeeded", 0, None)
    late = [e for e in logs if e["event"] == "delivery.released_late"]
    assert [e.get("with_owed") for e in late] == [True]
    assert "delivery.release_failed" not in [e["event"] for e in logs]


class StoreDown(FollowUps):
    """FollowUps whose store goes down (`down`) as the claim that follows `down_at_claim` returns: every call the
    dispatcher and the reaper make fails then, StoreUnavailable. The first to fail hangs first for `outage_s` (the
    test's clock, `now`, moved on by it), as a call does while the store restarts. Releases are counted in
    `release_failures` (failed) and kept in `given_back` (done: the ids each asked)."""

    def __init__(self, *, render: bool = True) -> None:
        super().__init__()
        self.render_follow_ups = render
        self.down = False
        self.down_at_claim = False
        self.outage_s = 0.0
        self.release_failures = 0
        self.given_back: list[list[str]] = []

    def _fail(self) -> None:
        if self.down:
            self.now += self.outage_s
            self.outage_s = 0.0
            raise StoreUnavailable("postgresql: connection refused")

    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> Any:
        self._fail()
        if not self.render_follow_ups:
            return await FaultyStore.claim(self, destination, limit, owner, lease_s)
        batch = await super().claim(destination, limit, owner, lease_s)
        if batch.items and self.down_at_claim:
            self.down, self.down_at_claim = True, False
        return batch

    async def get_event(self, event_id: str) -> Event:
        self._fail()
        return await super().get_event(event_id)

    async def record(self, result: AttemptResult, *, owner: str | None = None,
                     token: int | None = None) -> None:
        if self.down:
            self.record_calls += 1
            self._fail()
        await super().record(result, owner=owner, token=token)

    async def release(self, delivery_ids: list[str], *, owner: str | None = None,
                      tokens: Sequence[int] | None = None) -> None:
        if self.down:
            self.release_failures += 1
            self._fail()
        self.given_back.append(delivery_ids)
        await super().release(delivery_ids, owner=owner, tokens=tokens)

    async def extend_leases(self, delivery_ids: list[str], owner: str, lease_s: float,
                            tokens: Sequence[int] | None = None) -> list[str]:
        self._fail()
        return await super().extend_leases(delivery_ids, owner, lease_s, tokens)

    async def release_expired(self) -> int:
        self._fail()
        return await super().release_expired()


SLOW_RETRIES = Timings(store_retry_s=3600.0, record_retry_max_s=3600.0, poll_s=0.05)
"""A lane's own retries (of a release, a claim) that never come within a test: what happens is the reaper's."""


async def test_deliveries_never_sent_are_given_back_not_in_doubt_after_an_outage_longer_than_their_lease() -> None:
    """The store goes down as three follow-ups are rendered, and stays down for three leases: their releases fail,
    and their leases run out unrenewed. Their holder keeps them owed, and the reaper's first pass once the store is
    back gives them back, in one release, before it reaps: they are pending, not in doubt (no unknown counted), and
    then sent once each. Before, the lane gave up a release once the lease may have run out, and the reaper took
    them back in doubt."""
    store = StoreDown()
    ids = await store.add(3)
    store.down_at_claim = True
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": last_try()}, timings=SLOW_RETRIES, clock=lambda: store.now,
                           monotonic=lambda: store.now, follow_ups=store.render)
            store.outage_s = 3 * d.lease_s
            d.start()
            reaper: asyncio.Task[None] | None = None
            try:
                await eventually(lambda: store.release_failures >= 3)
                store.down = False
                reaper = asyncio.create_task(reap_expired_leases(store, d, every_s=3600.0))
                await eventually(lambda: all(store.status(i) != "in_flight" for i in ids))
                rows = [store.deliveries[i].row for i in ids]  # pending, or sent already
                assert [(r.unknowns, r.in_doubt_since_ms) for r in rows] == [(0, None)] * 3
                await eventually(lambda: len(store.records) == 3)
            finally:
                if reaper is not None:
                    reaper.cancel()
                    await asyncio.gather(reaper, return_exceptions=True)
                await d.stop(0.0)
        assert requests(m) == 3
    assert [sorted(asked) for asked in store.given_back] == [ids], "not given back in one release"
    rows = [store.deliveries[i].row for i in ids]
    assert [(r.status, r.unknowns, r.in_doubt_since_ms, r.duplicates) for r in rows] == [
        ("succeeded", 0, None, 0)] * 3
    events = [e["event"] for e in logs]
    assert [e["count"] for e in logs if e["event"] == "delivery.given_back"] == [3]
    assert events.count("delivery.released_late") == 3 and "delivery.release_failed" not in events, events


async def test_a_delivery_sent_whose_record_failed_past_its_lease_is_never_given_back_and_ends_in_doubt() -> None:
    """The safety side: the store goes down as a create's answer is to be recorded, for three leases. The store
    back (its records still failing), the reaper's pass gives back nothing of it (it was sent) and keeps its lease;
    its holder stopped with the result unrecorded, its lease runs out and it is reaped in doubt."""
    store = StoreDown(render=False)
    [delivery_id] = await store.add()

    def down_as_answered(url: URL, **kwargs: Any) -> CallbackResult:
        store.down = True
        return CallbackResult(status=200, payload={"status": "success", "ticket_id": "T-1"},
                              response_class=MockResponse)

    with aioresponses() as m:
        m.post(str(URL_CREATE), callback=down_as_answered, repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": destination()}, timings=FAST, clock=lambda: store.now,
                           monotonic=lambda: store.now)
            store.outage_s = 3 * d.lease_s
            d.start()
            reaper: asyncio.Task[None] | None = None
            try:
                await eventually(lambda: store.record_calls >= 1)
                store.down, store.record_fails = False, -1  # back, but for its records
                reaper = asyncio.create_task(reap_expired_leases(store, d, every_s=3600.0))
                await eventually(lambda: "release_expired" in store.calls)
                assert store.status(delivery_id) == "in_flight"
            finally:
                if reaper is not None:
                    reaper.cancel()
                    await asyncio.gather(reaper, return_exceptions=True)
                await d.stop(0.0)
        assert requests(m) == 1
    store.now += 2 * d.lease_s
    assert await store.release_expired() == 1
    assert store.given_back == []
    row = store.deliveries[delivery_id].row
    assert (row.status, row.unknowns) == ("pending", 1) and row.in_doubt_since_ms is not None


async def test_after_a_pass_the_store_failed_the_reaper_reaps_once_the_store_has_answered_for_a_lease() -> None:
    """An outage longer than a lease lets every process's leases run out. Once the store answers again, the reaper
    gives back what this process owes and renews its leases at once, but reaps only once the store has answered
    for a lease, so that the other live processes renew theirs and give back what they owe first."""
    down = [True]
    fakes = ReaperFakes(fails=lambda name, n: name == "keep_leases" and down[0])
    with structlog.testing.capture_logs() as logs:
        async with fakes.reaping():
            await eventually(lambda: fakes.passes.count("keep_leases") >= 2)
            down[0] = False
            fakes.passes.clear()
            await eventually(lambda: fakes.passes.count("keep_leases") >= 3)
            fakes.now += 9.9
            fakes.passes.clear()
            await eventually(lambda: fakes.passes.count("keep_leases") >= 3)
            assert "release_expired" not in fakes.passes
            fakes.now += 0.2
            await eventually(lambda: "release_expired" in fakes.passes)
    assert [e["event"] for e in logs].count("delivery.reap_deferred") == 1
    assert [(e["capped"], e["log_level"]) for e in logs if e["event"] == "delivery.reap_resumed"] == [(False, "info")]


async def test_a_reaper_holding_nothing_waits_a_lease_from_when_the_store_answers_not_from_its_first_pass() -> None:
    """A process holding and owing nothing renews and gives back nothing: its passes ask the store nothing. After
    a pass the store failed, it asks the store (`Store.ping`) each pass until it has answered for a lease, so that
    the passes of an outage longer than a lease do not count as the store answering: as the store comes back, the
    reaper waits a lease before it reaps, and the other processes renew their leases first. Before, the wait ran
    from its first pass after the failure, which asked nothing, and it reaped as the store came back."""
    down = [True]
    # Nothing held nor owed: keep_leases and give_back_owed ask the store nothing, and never fail.
    fakes = ReaperFakes(fails=lambda name, n: name in ("release_expired", "ping") and down[0])
    async with fakes.reaping():
        await eventually(lambda: "release_expired" in fakes.passes)  # failed: the store is down
        count = fakes.passes.count("keep_leases")
        await eventually(lambda: fakes.passes.count("keep_leases") >= count + 3)  # still down, passes asking nothing
        down[0], fakes.now = False, 10.1  # back, a lease and more after the failed pass
        fakes.passes.clear()
        await eventually(lambda: fakes.passes.count("keep_leases") >= 3)
        assert "release_expired" not in fakes.passes, "reaped as the store came back"
        fakes.now += 10.0
        await eventually(lambda: "release_expired" in fakes.passes)


async def test_a_store_that_answers_while_its_commits_are_seen_failing_is_reaped_after_a_lease() -> None:
    """A store that answers while it still says its commits fail (SQLite with its disk nearly full: `check` says
    `failing` until a commit succeeds with room) is asked whether it answers (`Store.ping`), not whether it fails:
    the reaper, holding nothing, reaps a lease after the pass the store failed, not once the disk has room."""
    fakes = ReaperFakes(fails=lambda name, n: name == "release_expired" and n == 1, error="disk I/O error",
                        problem=StoreProblem(kind="failing", reason="commits fail: database or disk is full"))
    async with fakes.reaping():
        await eventually(lambda: "release_expired" in fakes.passes)  # the failed pass
        count = fakes.passes.count("keep_leases")
        await eventually(lambda: fakes.passes.count("keep_leases") >= count + 3)
        fakes.now += 10.0
        await eventually(lambda: fakes.passes.count("release_expired") >= 2)


async def test_a_give_back_of_what_is_owed_that_fails_does_not_keep_the_reaper_from_renewing_leases() -> None:
    """The release of what this process owes failing (alone: a lock it waits on past the statement timeout), the
    pass still renews this process's leases, results held in memory among them, and then counts as failed (it does
    not reap). Before, the failure ended the pass before the renewal, for as long as it lasted."""
    fakes = ReaperFakes(fails=lambda name, n: name == "give_back_owed",
                        error="postgresql: canceling statement due to statement timeout")
    with structlog.testing.capture_logs() as logs:
        async with fakes.reaping():
            await eventually(lambda: fakes.passes.count("give_back_owed") >= 3)
    assert fakes.passes.count("keep_leases") >= 2, fakes.passes
    assert "release_expired" not in fakes.passes
    assert any(e["event"] == "delivery.reap_failed" for e in logs)


async def test_a_store_failing_a_pass_now_and_then_defers_reaping_for_three_leases_at_most() -> None:
    """A store failing every other pass of the reaper (each failure would start its wait for a lease again) defers
    reaping for REAP_DEFERRED_LEASES leases at most: a dead process's work is still taken over."""
    fakes = ReaperFakes(fails=lambda name, n: name == "keep_leases" and n % 2 == 1)
    with structlog.testing.capture_logs() as logs:
        async with fakes.reaping():
            await eventually(lambda: fakes.passes.count("keep_leases") >= 6)
            fakes.now += 29.9
            count = fakes.passes.count("keep_leases")
            await eventually(lambda: fakes.passes.count("keep_leases") >= count + 6)
            assert "release_expired" not in fakes.passes
            fakes.now += 0.2
            await eventually(lambda: "release_expired" in fakes.passes)
    # The operator is told reaping resumed though the store never answered for a lease: a warning
    resumed = [e for e in logs if e["event"] == "delivery.reap_resumed"]
    assert [(e["capped"], e["log_level"], e["deferred_s"]) for e in resumed] == [(True, "warning", 30.1)]


@pytest.mark.parametrize("grace_s", [0.0, 30.0])
async def test_a_stop_while_a_release_keeps_failing_tries_once_more_and_does_not_wait(grace_s: float) -> None:
    """A stop while the store keeps failing the release of a delivery given back unsent asks once more, does not
    wait for the store (whatever its grace), and says the delivery is left to its lease."""
    store = ReleaseDown()
    [delivery_id] = await store.add()
    async with giving_back(store) as (d, m, logs):
        await eventually(lambda: store.release_failures >= 2)
        before = store.release_failures
        await asyncio.wait_for(d.stop(grace_s), 5.0)
    assert requests(m) == 0
    assert store.release_failures > before, "not asked once more at the stop"
    assert store.status(delivery_id) == "in_flight" and d.in_flight() == 0
    failed = [e for e in logs if e["event"] == "delivery.release_failed"]
    assert [e["why"] for e in failed] == ["stopping"], failed


async def test_a_follow_up_whose_event_the_store_refuses_to_read_is_dead_and_tells_the_breaker_nothing() -> None:
    """A follow-up whose event the store refuses to read for its data (StoreRefused: so it would on every try) is
    settled unsent as `permanent` (dead, for an operator), its error naming the refusal: not given back to be
    refused again at once, and the breaker is told nothing (the vendor was asked nothing)."""
    store = FollowUps()
    [delivery_id] = await store.add()
    store.event_raises.append(StoreRefused("value too long for the row", "54000"))
    gates = FailingGates("nowhere")
    with aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": destination()}, timings=FAST, clock=lambda: store.now,
                           coordination=gates, follow_ups=store.render)
            d.start()
            try:
                await eventually(lambda: delivery_id in {r.delivery_id for r in store.records})
            finally:
                await d.stop(0.0)
        assert requests(m) == 0
    [result] = store.records
    assert (result.classification, result.next_status, result.http_status, result.unsent) == (
        "permanent", "dead", None, True)
    assert result.error == ("not sent: the store refused to read its event, to render the follow-up: value too long "
                            "for the row")
    assert gates.outcomes == []
    assert store.released == []


@pytest.mark.parametrize(("failing", "probe"), [("token", False), ("resend", False), ("resend", True)])
async def test_a_resend_the_store_keeps_back_after_a_refused_token_is_recorded_as_the_refusal(
        failing: str, probe: bool) -> None:
    """A send refused for its token (401) whose resend the store keeps from going out (the gate's store failing
    as the new token's request, or the resend itself, is let out) is no crash and no unknown outcome: one request
    was written, and its answer, a refusal, says the vendor did not act on it. The attempt is recorded as that
    refusal (its status and exchange), a `retry` on the schedule, its error saying the resend was not made; the
    breaker is told nothing (an old token refused, then the store failing, says nothing of the vendor), unless it
    was the probe, whose answer the refusal is. The slot of the request written stays used."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    dest = destination()
    limiter = dest.limiter = SlidingWindowLimiter(100, 60)
    creds = dest.adapter.credentials = NumberedTokens("kapture")
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        refused = (lambda: requests(m) == 1) if failing == "token" else (lambda: creds.obtained == 2)
        gates = FailingGates("look-up", when=refused)
        m.post(str(URL_CREATE), callback=answers((401, {"status": "failed", "message": "token expired"})),
               repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": dest}, timings=FAST, clock=lambda: store.now,
                           coordination=gates)
            d.start()
            gate = d.lanes["kapture"].gate
            if probe:
                gate.breaker = Breaker(state="open", until=0.0)  # half-open: its first delivery is the probe
            try:
                await eventually(lambda: delivery_id in {r.delivery_id for r in store.records})
            finally:
                await d.stop(0.0)
        assert requests(m) == 1
    assert gates.fails == 0
    [result] = store.records
    assert (result.classification, result.next_status, result.http_status) == ("retry", "pending", 401)
    assert result.error == ("HTTP 401: the vendor refused the credentials: token expired; its resend with renewed "
                            "credentials was not made: the store failed before it went out: postgresql: connection "
                            "refused")
    assert result.exchange is not None and result.exchange["request"]["headers"]["Authorization"] == "[redacted]"
    assert result.exchange["response_headers"] == {"Content-Type": "application/json"}
    assert result.response_excerpt is not None and "token expired" in result.response_excerpt
    assert store.deliveries[delivery_id].row.in_doubt_since_ms is None
    assert gates.outcomes == (["auth"] if probe else [])
    assert gate.breaker.state == ("open" if probe else "closed")
    assert limiter.used() == 2 + (failing == "resend"), "the slot of the request written was given back"
    events = [e["event"] for e in logs]
    assert "delivery.resend_unsent" in events and "delivery.crashed" not in events, events


async def test_a_resend_the_store_keeps_back_on_the_last_try_uses_no_try() -> None:
    """On a delivery's last try, a send refused for its token (401) whose resend the store keeps from going out does
    not make it dead: the vendor refused only the old token, and our store stopped the resend. The refusal is
    recorded (an attempt) without using a try, and the delivery is due again once a store failure's wait has
    passed; sent then, it succeeds with the renewed token on that same last try."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    dest = last_try()
    creds = dest.adapter.credentials = NumberedTokens("kapture")
    with aioresponses() as m:
        gates = FailingGates("look-up", when=lambda: creds.obtained == 2)
        m.post(str(URL_CREATE), callback=answers((401, {"status": "failed", "message": "token expired"})),
               repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": dest}, timings=FAST, clock=lambda: store.now,
                           coordination=gates)
            d.start()
            try:
                await eventually(lambda: delivery_id in {r.delivery_id for r in store.records})
                [refused] = store.records
                assert (refused.classification, refused.next_status, refused.http_status, refused.uses_try) == (
                    "retry", "pending", 401, False)
                assert refused.next_attempt_at_ms == int((store.now + FAST.store_retry_s) * 1000)
                row = store.deliveries[delivery_id].row
                assert (row.status, row.attempts, row.tries) == ("pending", 1, 0)
                store.now += FAST.store_retry_s
                d.notify({"kapture"})
                await eventually(lambda: store.status(delivery_id) == "succeeded")
            finally:
                await d.stop(0.0)
        assert requests(m) == 2
    row = store.deliveries[delivery_id].row
    assert (row.attempts, row.tries) == (2, 1)


class RefusedLookUp(KaptureAdapter):
    """A Kapture adapter that looks a value up while it prepares its request, and raises VendorAuthFailed when the
    look-up is refused (401), as Netgroot's subject list does."""

    async def prepare(self, action: str, fields: dict[str, Any], fetch: Any) -> dict[str, Any]:
        status, body = await fetch(self.base_url + "/lookup", {})
        if status == 401:
            raise VendorAuthFailed("the look-up was refused (HTTP 401)")
        return {**fields, "title": body.decode()}


async def test_a_renewal_the_store_keeps_back_after_a_refused_look_up_is_given_back_unsent() -> None:
    """A token refused by a look-up made while the send was prepared, whose renewal the store keeps back: nothing of
    the send was written, so it goes as at the gate: no attempt recorded, no try used, the breaker told nothing;
    the delivery is given back and sent once the store answers again."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    dest = last_try()
    dest.adapter = RefusedLookUp("kapture", dest.config, BASE)
    creds = dest.adapter.credentials = NumberedTokens("kapture")
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        # the new token's request, the first let out once the look-up was refused
        gates = FailingGates("look-up", when=lambda: len(m.requests.get(("GET", URL(BASE + "/lookup")), [])) == 1)
        m.get(BASE + "/lookup", status=401, body="token expired", response_class=MockResponse)
        m.get(BASE + "/lookup", status=200, body="Router down", repeat=True, response_class=MockResponse)
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": dest}, timings=FAST, clock=lambda: store.now,
                           coordination=gates)
            d.start()
            try:
                await eventually(lambda: delivery_id in {r.delivery_id for r in store.records})
            finally:
                await d.stop(0.0)
        assert requests(m) == 1
    assert (gates.fails, creds.obtained) == (0, 1)  # the new token was not asked for
    assert [(r.classification, r.next_status) for r in store.records] == [("success", "succeeded")]
    assert store.deliveries[delivery_id].row.attempts == 1
    assert gates.outcomes == ["success"]
    assert store.released == [delivery_id]
    events = [e["event"] for e in logs]
    assert "delivery.gate_failed" in events and "delivery.crashed" not in events, events


class ReleaseTakenAnswerLost(FollowUps):
    """A store whose first release is done but its answer lost (a connection dropped after the COMMIT)."""

    def __init__(self) -> None:
        super().__init__()
        self.release_calls: list[str] = []

    async def release(self, delivery_ids: list[str], *, owner: str | None = None,
                      tokens: Sequence[int] | None = None) -> None:
        self.release_calls.append(self.status(delivery_ids[0]))
        await super().release(delivery_ids, owner=owner, tokens=tokens)
        if len(self.release_calls) == 1:
            raise StoreUnavailable("postgresql: connection lost")


async def test_a_release_retried_after_a_lost_answer_never_gives_back_the_claim_that_followed() -> None:
    """A delivery given back unsent (its event unread) whose release was done but its answer lost: the lane claims it
    again and sends it. Before, the release's retry then gave back that new claim while its request was out, and the
    lane claimed and sent it once more: two requests for one delivery. Claimed again, it is not asked again."""
    store = ReleaseTakenAnswerLost()
    [delivery_id] = await store.add()
    store.event_raises.append(StoreUnavailable("postgresql: connection refused"))
    answer = asyncio.Event()

    async def vendor(url: Any, **kwargs: Any) -> CallbackResult:
        await answer.wait()
        return CallbackResult(status=200, payload={"status": "success", "ticket_id": "T-1"},
                              response_class=MockResponse)

    timings = Timings(store_retry_s=0.3, record_retry_max_s=0.6, poll_s=0.05)
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=vendor, repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": last_try()}, timings=timings, clock=lambda: store.now,
                           follow_ups=store.render)
            d.start()
            try:
                await eventually(lambda: requests(m) >= 1)  # the new claim's request is out, its answer held
                # The retry's turn: it sees the new claim (or, on a slow machine, a release done before the claim).
                await eventually(lambda: any(e["event"] == "delivery.released_late" for e in logs)
                                 or len(store.release_calls) >= 2)
                answer.set()
                await eventually(lambda: store.status(delivery_id) == "succeeded")
            finally:
                answer.set()
                await d.stop(1.0)
    assert requests(m) == 1
    assert store.release_calls[0] == "in_flight"
    assert "in_flight" not in store.release_calls[1:]  # never the new claim's


class ReleaseMeetsTheNextClaim(FollowUps):
    """A store whose first release is done but its answer lost, and whose retry of it then waits, as on a row lock on
    PostgreSQL, until the lane has claimed the delivery again (the lane's claim itself waiting until the retry is out,
    so that the lane's `claimed_again` look cannot see it coming), and only then runs: a release and a claim of the
    same owner met within one transaction's time. `after_retry`: the delivery's status once the retry has run."""

    def __init__(self) -> None:
        super().__init__()
        self.releases = 0
        self.retry_out = asyncio.Event()
        self.claimed_again = asyncio.Event()
        self.after_retry: str | None = None

    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> Any:
        if self.releases == 1:
            await self.retry_out.wait()
        batch = await super().claim(destination, limit, owner, lease_s)
        if self.releases >= 2 and batch.items:
            self.claimed_again.set()
        return batch

    async def release(self, delivery_ids: list[str], *, owner: str | None = None,
                      tokens: Sequence[int] | None = None) -> None:
        self.releases += 1
        if self.releases == 2:
            self.retry_out.set()
            await self.claimed_again.wait()
        await super().release(delivery_ids, owner=owner, tokens=tokens)
        if self.releases == 1:
            raise StoreUnavailable("postgresql: connection lost")
        if self.releases == 2:
            self.after_retry = self.status(delivery_ids[0])


async def test_a_release_retried_as_the_lane_claims_again_leaves_the_new_claim_to_its_send() -> None:
    """A delivery given back unsent whose release was done but its answer lost: the release's retry goes out before
    the lane has claimed the delivery again, and runs only once it has (a release waiting on the row's lock while the
    claim that follows it commits). Before, a release matched by owner gave back that new claim while its request was
    out, and the lane claimed and sent it once more. It names the old claim's token now: the new claim is left."""
    store = ReleaseMeetsTheNextClaim()
    [delivery_id] = await store.add()
    store.event_raises.append(StoreUnavailable("postgresql: connection refused"))
    answer = asyncio.Event()

    async def vendor(url: Any, **kwargs: Any) -> CallbackResult:
        await answer.wait()
        return CallbackResult(status=200, payload={"status": "success", "ticket_id": "T-1"},
                              response_class=MockResponse)

    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=vendor, repeat=True, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"kapture": last_try()}, timings=FAST, clock=lambda: store.now,
                           follow_ups=store.render)
            d.start()
            try:
                await eventually(lambda: store.after_retry is not None)
                await eventually(lambda: requests(m) >= 1)  # the new claim's request is out, its answer held
                answer.set()
                await eventually(lambda: store.status(delivery_id) == "succeeded")
            finally:
                answer.set()
                await d.stop(1.0)
    assert store.after_retry == "in_flight", "the late release gave back the claim that followed it"
    assert requests(m) == 1
    assert store.releases == 2
    assert [(r.classification, r.next_status) for r in store.records] == [("success", "succeeded")]
    events = [e["event"] for e in logs]
    assert "delivery.released_late" in events and "delivery.lease_lost" not in events, events


@asynccontextmanager
async def _claiming_again(store: FaultyStore) -> AsyncIterator[tuple[Dispatcher, HeldStarts]]:
    """A dispatcher of one lane (an unknown outcome sent again), on the store's clock, whose sends wait at the gate
    until the test lets them go (HeldStarts): the lane may claim a delivery again while its earlier send waits there.
    Stopped at the end."""
    coordination = HeldStarts()
    cfg = KaptureOptions(vendor="kapture", base_url=BASE, token="t", max_in_flight=4, timeout_seconds=5.0,
                         on_unknown="resend", retry=RetryConfig(schedule=["1h"], jitter=0))
    async with aiohttp.ClientSession() as session:
        d = Dispatcher(store, session, {"kapture": Destination.from_config("kapture", cfg, BASE)},
                       coordination=coordination, timings=FAST, clock=lambda: store.now)
        d.start()
        try:
            yield d, coordination
        finally:
            await d.stop(1.0)


async def test_a_send_held_past_its_lease_does_not_go_once_its_own_lane_claimed_it_again() -> None:
    """A send held at the gate (the process stalled) until its lease ran out and was reaped, and the lane claimed the
    delivery again meanwhile: the lane's notes of the lease (`confirmed`) are the new claim's, so the old send saw its
    lease as fresh and went beside the new one. Only the new claim's send goes now; the old one is given up unsent,
    and its release, naming its own claim, leaves the new claim be."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with _claiming_again(store) as (d, coordination):
            await eventually(lambda: coordination.waiting == 1)
            store.now += 2 * d.lease_s  # the store's clock: its lease ran out, and a reaper gives it back
            assert await store.release_expired() == 1
            d.notify({"kapture"})
            await eventually(lambda: coordination.waiting == 2)  # claimed again: its new send at the gate too
            coordination.go.set()  # both go on
            await eventually(lambda: store.status(delivery_id) == "succeeded")
            await eventually(lambda: any(e["event"] == "delivery.lease_lost" for e in logs))
    assert requests(m) == 1
    assert [(r.classification, r.next_status) for r in store.records] == [("success", "succeeded")]
    [lost] = [e for e in logs if e["event"] == "delivery.lease_lost"]
    assert lost["unsent"] is True and "claimed again" in lost["error"]


async def test_an_extension_asked_for_an_earlier_claim_leaves_the_claim_that_followed_confirmed() -> None:
    """An extension asked while the delivery was held by its first claim, answered once the lane claimed it again
    (the first claim reaped meanwhile): the store does not extend the first claim's lease (its token is no longer the
    row's), and that answer is not taken as the new claim's lease lost. The new claim's send goes out."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    extend = store.extend_leases
    asked = asyncio.Event()
    answer = asyncio.Event()

    async def held_extension(delivery_ids: list[str], owner: str, lease_s: float,
                             tokens: Sequence[int] | None = None) -> list[str]:
        asked.set()
        await answer.wait()
        return await extend(delivery_ids, owner, lease_s, tokens)

    store.extend_leases = held_extension  # type: ignore[method-assign]
    with aioresponses() as m:
        m.post(str(URL_CREATE), callback=answers(), repeat=True, response_class=MockResponse)
        async with _claiming_again(store) as (d, coordination):
            await eventually(lambda: coordination.waiting == 1)
            keeping = asyncio.ensure_future(d.keep_leases())
            await eventually(asked.is_set)  # asked for the first claim's token
            store.now += 2 * d.lease_s  # the store's clock: its lease ran out, and a reaper gives it back
            assert await store.release_expired() == 1
            d.notify({"kapture"})
            await eventually(lambda: coordination.waiting == 2)  # claimed again: its new send at the gate too
            answer.set()
            assert await keeping == 0
            coordination.go.set()  # both go on
            await eventually(lambda: store.status(delivery_id) == "succeeded")
    assert requests(m) == 1
    assert [(r.classification, r.next_status) for r in store.records] == [("success", "succeeded")]


class HeldAnswers:
    """A vendor that holds each request's answer (a success) until the test lets it go (`answer(n)`, the n-th
    request's), counting the requests out at once (`peak`)."""

    def __init__(self) -> None:
        self.held: list[asyncio.Event] = []
        self.out = 0
        self.peak = 0

    async def respond(self, url: URL, **kwargs: Any) -> CallbackResult:
        go = asyncio.Event()
        self.held.append(go)
        self.out += 1
        self.peak = max(self.peak, self.out)
        try:
            await go.wait()
        finally:
            self.out -= 1
        return CallbackResult(status=200, payload={"status": "success", "ticket_id": f"T-{len(self.held)}"},
                              response_class=MockResponse)

    def answer(self, n: int) -> None:
        self.held[n].set()


async def _claimed_twice(store: FaultyStore, d: Dispatcher, vendor: HeldAnswers) -> None:
    """With the delivery's first request out, its answer held: the process stalls, the lease runs out and a reaper
    gives it back, and the lane claims it again and sends it once more (its second request out, held too)."""
    await eventually(lambda: len(vendor.held) == 1)
    store.now += 2 * d.lease_s
    assert await store.release_expired() == 1
    d.notify({"kapture"})
    await eventually(lambda: len(vendor.held) == 2)


async def test_an_earlier_claims_late_answer_leaves_the_later_claims_request_to_be_recorded_at_a_stop() -> None:
    """A delivery claimed again (its first lease reaped while its request was out) whose first claim's answer comes
    in while the second claim's request is out: that late answer is not recorded (its lease is the new claim's) and
    must leave the new claim's notes be. Before, it cleared them (the lane's notes were the delivery's, not the
    claim's): at a stop, the second request, out and unanswered, was neither recorded as an unknown outcome nor given
    back, and the delivery stayed in flight, no attempt recorded, until its lease ran out."""
    store = FaultyStore()
    [delivery_id] = await store.add()
    vendor = HeldAnswers()
    with structlog.testing.capture_logs() as logs, aioresponses() as m:
        m.post(str(URL_CREATE), callback=vendor.respond, repeat=True, response_class=MockResponse)
        async with running(store, destination()) as d:
            await _claimed_twice(store, d, vendor)
            vendor.answer(0)  # the first claim's answer, late
            await eventually(lambda: any(e["event"] == "delivery.lease_lost" for e in logs))
            await d.stop(0.0)  # the second claim's request is out, unanswered
    [recorded] = store.records
    assert (recorded.delivery_id, recorded.classification) == (delivery_id, "unknown")
    kept = store.deliveries[delivery_id]
    assert (kept.row.status, kept.row.attempts) == ("pending", 1)


async def test_a_delivery_claimed_again_while_its_first_request_is_out_counts_twice_against_max_in_flight() -> None:
    """Both requests of a delivery claimed again while its first was out are at the vendor at once: each holds one of
    the destination's `max_in_flight` slots. Before, the lane counted the delivery once, and with max_in_flight 2
    sent a third request beside them."""
    store = FaultyStore()
    await store.add()
    vendor = HeldAnswers()
    with aioresponses() as m:
        m.post(str(URL_CREATE), callback=vendor.respond, repeat=True, response_class=MockResponse)
        async with running(store, destination(max_in_flight=2)) as d:
            await _claimed_twice(store, d, vendor)
            [other] = await store.add()
            d.notify({"kapture"})
            lane = d.lanes["kapture"]
            # Until the lane counts both requests (or, counting one, has sent the other delivery beside them):
            await eventually(lambda: len(lane.sending) == 2 or len(vendor.held) == 3)
            vendor.answer(0)  # a slot frees: the other delivery goes now
            await eventually(lambda: len(vendor.held) == 3)
            for go in vendor.held:
                go.set()
            await eventually(lambda: store.status(other) == "succeeded")
    assert vendor.peak == 2
