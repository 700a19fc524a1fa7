"""Gates shared through PostgreSQL: two stores on one database (two processes) see one rate limit, one
429 pause and one breaker per destination."""

from __future__ import annotations

import asyncio
import math
import time
from types import SimpleNamespace
from typing import Any

import aiohttp
import asyncpg
import msgspec
import pytest
from aioresponses import aioresponses
from yarl import URL

from bridge.config import RateLimit, RetryConfig
from bridge.delivery.coordination import Admission
from bridge.delivery.dispatcher import Destination, Dispatcher, Timings
from bridge.delivery.ratelimit import slot_of_request
from bridge.events import Event
from bridge.store.base import ClaimBatch, NewDelivery
from bridge.store.memory import MemoryStore
from bridge.store.pg_coordination import HOLD_RECHECK_S, PgGate
from bridge.store.postgres import PostgresStore
from bridge.vendors.http import HttpOptions
from bridge.vendors.kapture import CREATE_PATH, KaptureOptions
from tests.conftest import eventually
from tests.integration.processes import DSN

pytestmark = pytest.mark.integration


def gates(two: tuple[PostgresStore, PostgresStore], rate: RateLimit | None) -> tuple[PgGate, PgGate]:
    a, b = two
    ga, gb = a.coordination().gate("lsq", rate), b.coordination().gate("lsq", rate)
    assert isinstance(ga, PgGate) and isinstance(gb, PgGate)
    return ga, gb


async def test_the_rate_limit_is_one_for_every_process(two: tuple[PostgresStore, PostgresStore]) -> None:
    """N sends granted in one process leave none in the window for another, which is told when one frees."""
    ga, gb = gates(two, RateLimit(requests=25, per_seconds=60))
    assert (await ga.admit(20)).granted == 20
    assert (await gb.admit(20)).granted == 5
    held = await ga.admit(1)
    assert (held.granted, held.held) == (0, True)
    assert 59 < held.wait_s <= 63.1  # 60 s and the margin (5 %)


async def test_unused_grants_are_given_back(two: tuple[PostgresStore, PostgresStore]) -> None:
    """Slots granted for work that was not there count no more against the limit."""
    ga, gb = gates(two, RateLimit(requests=10, per_seconds=60))
    admission = await ga.admit(10)
    await ga.unused(admission, 7)
    assert (await gb.admit(10)).granted == 7


async def test_a_429_pause_holds_every_process(two: tuple[PostgresStore, PostgresStore]) -> None:
    """A pause after one process's 429 holds back the other for as long."""
    ga, gb = gates(two, None)
    await ga.pause(150)
    held = await gb.admit(4)
    assert (held.granted, held.held) == (0, True)
    assert 149 < held.wait_s <= 150


async def test_failures_in_every_process_open_one_breaker_and_one_probe_goes_out(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """Consecutive failures counted across processes open the breaker for all; half-open, one probe in all."""
    ga, gb = gates(two, None)
    ga.breaker.base_cooldown = gb.breaker.base_cooldown = 0.0  # open, then half-open at once
    for gate in (ga, gb, ga, gb):
        assert await gate.outcome("retry") is None
    assert await gb.outcome("retry") == "opened"
    probe = await ga.admit(4)
    assert (probe.granted, probe.probe) == (1, True)
    other = await gb.admit(4)
    assert (other.granted, other.held) == (0, True)
    assert await ga.outcome("success", probe) == "closed"
    assert (await gb.admit(4)).granted == 4


async def test_an_unused_probe_is_given_back(two: tuple[PostgresStore, PostgresStore]) -> None:
    """A probe granted when nothing was due goes back, so another process may probe."""
    ga, gb = gates(two, None)
    ga.breaker.base_cooldown = gb.breaker.base_cooldown = 0.0
    for _ in range(5):
        await ga.outcome("retry")
    probe = await ga.admit(1)
    assert probe.probe
    await ga.unused(probe, 1)
    assert (await gb.admit(3)).probe


async def test_a_probe_is_held_while_renewed_and_given_up_within_its_hold_once_its_sender_is_gone(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """A probe out from one process holds the other back while its holder renews it (`keep_probe`, as the lease
    reaper does), and once renewals stop (its process died) another process may probe within the hold."""
    ga, gb = gates(two, None)
    ga.breaker.base_cooldown = gb.breaker.base_cooldown = 0.0
    ga.probe_hold_s = gb.probe_hold_s = 1.0
    for _ in range(5):
        await ga.outcome("retry")
    assert (await ga.admit(1)).probe
    renewed_until = time.monotonic() + 2.5  # more than twice the hold
    while time.monotonic() < renewed_until:
        await ga.keep_probe()
        assert (await gb.admit(3)).granted == 0, "a renewed probe was given up"
        await asyncio.sleep(0.1)
    stopped = time.monotonic()
    while not (taken := await gb.admit(3)).probe:
        assert time.monotonic() - stopped < 1.0 + 0.5, "a probe nobody renews was never given up"
        await asyncio.sleep(0.02)
    assert await gb.outcome("success", taken) == "closed"


async def test_a_send_late_for_its_slot_waits_for_a_free_one(two: tuple[PostgresStore, PostgresStore]) -> None:
    """A granted send that starts long after its grant is checked against the window again: with the window
    full meanwhile (another process's grant), it waits for a slot and goes out a window after that grant."""
    ga, gb = gates(two, RateLimit(requests=1, per_seconds=1.0))
    late = await ga.admit(1)
    # As if this process had stalled for 10 s since its grant, which has left the window meanwhile.
    late.asked_at -= 10
    conn = await asyncpg.connect(DSN, server_settings={"search_path": two[0].schema or "public"})
    try:
        await conn.execute("UPDATE send_slots SET at_ms = at_ms - 10000 WHERE id = $1", late.slots[0])
        other = await gb.admit(1)
        assert other.granted == 1
        await ga.start(late, 0)
        at = {r[0]: r[1] for r in await conn.fetch("SELECT id, at_ms FROM send_slots")}
    finally:
        await conn.close()
    assert at[late.slots[0]] >= at[other.slots[0]] + 1000


async def test_an_operators_hold_in_one_process_holds_every_process_until_resumed(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """A console pause through one process's gate admits nothing in the other (asking again within a second),
    shows in both views as until resumed or until its end, and ends for both when resumed."""
    ga, gb = gates(two, None)
    await ga.hold(None)
    held = await gb.admit(4)
    assert (held.granted, held.held) == (0, True) and 0 < held.wait_s <= HOLD_RECHECK_S
    assert (await gb.view()).held_until_s == math.inf
    await ga.unhold()
    assert (await gb.admit(4)).granted == 4
    assert (await gb.view()).held_until_s is None
    await gb.hold(30)
    until = (await ga.view()).held_until_s
    assert until is not None and abs(until - (time.time() + 30)) < 2
    assert (await ga.admit(1)).granted == 0


async def test_the_view_counts_every_process_sends_and_dates_the_breaker_at_the_database_clock(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """Rate-limit use counts the sends granted in every process; an open breaker's reopening is an epoch time
    both processes agree on, whichever opened it."""
    ga, gb = gates(two, RateLimit(requests=25, per_seconds=60))
    assert (await ga.admit(3)).granted == 3
    assert (await gb.admit(2)).granted == 2
    assert (await gb.view()).rate_used == 5
    ga.breaker.base_cooldown = 30.0
    for _ in range(4):
        await ga.outcome("retry")
    assert await ga.outcome("retry") == "opened"
    view = await gb.view()
    assert view.breaker == "open"
    assert view.breaker_reopens_at_s is not None and abs(view.breaker_reopens_at_s - (time.time() + 30)) < 2
    assert (await ga.view()).breaker_reopens_at_s == view.breaker_reopens_at_s


async def test_the_view_counts_the_slots_taken_in_the_window_not_those_dated_later(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """Rate-limit use is what the current window holds: a slot dated past the database's now (reserved ahead)
    is not counted as used, nor one older than the window."""
    ga, gb = gates(two, RateLimit(requests=25, per_seconds=60))
    assert (await ga.admit(2)).granted == 2
    conn = await asyncpg.connect(DSN, server_settings={"search_path": two[0].schema or "public"})
    try:
        now = await conn.fetchval("SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint")
        await conn.executemany("INSERT INTO send_slots (destination, at_ms) VALUES ('lsq', $1)",
                               [(now + 30_000,), (now + 5_000,), (now - 61_000,)])
    finally:
        await conn.close()
    assert (await gb.view()).rate_used == 2


async def test_successes_at_once_share_their_reset_of_the_failures_counted(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """Successes that come while a reset of the shared failure count is out share the next one (a busy lane sends
    one at a time, not one per send); each still clears the failures another process counted before it, and a
    failure that comes after them is counted, not cleared by them."""
    ga, gb = gates(two, None)
    statements = 0
    run = ga._run

    async def counted(fn: Any, **kwargs: Any) -> Any:
        nonlocal statements
        statements += 1
        return await run(fn, **kwargs)

    async def failures() -> int:
        return int(await two[0]._run(lambda conn: conn.fetchval(
            "SELECT failures FROM destination_gates WHERE destination = 'lsq'"), transaction=False))

    ga._run = counted
    for _ in range(3):
        assert await gb.outcome("retry") is None
    assert await failures() == 3
    assert await asyncio.gather(*(ga.outcome("success") for _ in range(20))) == [None] * 20
    assert statements <= 2
    assert await failures() == 0
    await asyncio.gather(ga.outcome("success"), ga.outcome("retry"))
    assert await failures() == 1


async def test_a_failure_is_counted_while_successes_keep_asking_for_resets(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """A failure waits for the resets asked before it, not for those successes keep asking for after it. Here each
    reset is sent only once another success has asked for the next (two groups of lanes, taking turns), so that a
    reset is always wanted: the failure's report still returns (it hung before). Whether its count then stands
    depends on the successes after it, which clear it, as they should."""
    ga, _gb = gates(two, None)
    run = ga._run
    resets = 0
    stop = asyncio.Event()

    async def once_another_asks(fn: Any, **kwargs: Any) -> Any:
        nonlocal resets
        resets += 1
        await eventually(lambda: ga._next_reset is not None or stop.is_set())
        return await run(fn, **kwargs)

    async def successes() -> None:
        while not stop.is_set():
            await ga.outcome("success")

    async def failures() -> int:
        return int(await two[0]._run(lambda conn: conn.fetchval(
            "SELECT failures FROM destination_gates WHERE destination = 'lsq'"), transaction=False))

    ga._run = once_another_asks
    lanes = [asyncio.create_task(successes()) for _ in range(2)]
    try:
        await eventually(lambda: resets >= 1)
        lanes += [asyncio.create_task(successes()) for _ in range(2)]
        await eventually(lambda: resets >= 3)
        assert await asyncio.wait_for(ga.outcome("retry"), 30) is None
        assert not stop.is_set() and resets >= 3
    finally:
        stop.set()
        await asyncio.gather(*lanes)
    assert await failures() in (0, 1)  # counted, then cleared by a success asked after it, or not yet


async def test_a_request_beside_a_send_counts_in_the_shared_window(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """A request made beside an admitted send (a resend after a refused token, a look-up) takes a slot in the
    window every process counts."""
    ga, gb = gates(two, RateLimit(requests=3, per_seconds=60))
    assert (await ga.admit(2)).granted == 2
    await gb.admit_request()  # the third slot: room for it
    held = await ga.admit(1)
    assert (held.granted, held.held) == (0, True)
    assert 59 < held.wait_s <= 63.1


async def test_a_request_written_late_for_its_slot_counts_from_its_write_in_every_process(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """A send started in time whose request is written 0.4 s after its slot (a connect, a busy process) has its slot
    moved to the write, by the database's clock: another process's next send waits a window from there. Counted from
    the slot, it would go 0.4 s sooner and reach the vendor less than a window after the late one."""
    ga, gb = gates(two, RateLimit(requests=1, per_seconds=2))
    admission = await ga.admit(1)
    assert admission.granted == 1
    await ga.start(admission, 0)
    written = slot_of_request()
    assert written is not None
    [[dated]] = await slots_at(two[0])
    await asyncio.sleep(0.4)  # the request is written late
    written()

    async def moved_on() -> bool:
        return await slots_at(two[0]) != [[dated]]

    await eventually(moved_on, timeout=10)
    [[moved]] = await slots_at(two[0])
    assert moved - dated >= 400
    held = await gb.admit(1)
    assert (held.granted, held.held) == (0, True)
    assert held.wait_s > ga.window - 0.2  # a window from the write, less the time since it (not 0.4 s less)


async def slots_at(store: PostgresStore) -> list[list[int]]:
    return [[r[0]] for r in await store._run(lambda conn: conn.fetch(
        "SELECT at_ms FROM send_slots WHERE destination = 'lsq' ORDER BY id"), transaction=False)]


async def test_a_probe_given_back_after_its_hold_ran_out_leaves_the_probe_another_process_took(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """A probe given back unsent (its lease lost) by a process that stalled past the probe's hold clears its own
    mark only: the probe another process took once that hold ran out still holds every process back, so that one
    probe is out at a time."""
    ga, gb = gates(two, None)
    ga.breaker.base_cooldown = gb.breaker.base_cooldown = 0.0
    for _ in range(5):
        await ga.outcome("retry")
    stalled = await ga.admit(1)
    assert stalled.probe
    conn = await asyncpg.connect(DSN, server_settings={"search_path": two[0].schema or "public"})
    try:  # the stall: the probe's hold ran out unrenewed
        await conn.execute("UPDATE destination_gates SET probe_until = 1 WHERE destination = 'lsq'")
    finally:
        await conn.close()
    assert (await gb.admit(1)).probe
    await ga.unused(stalled, 1)
    for gate in (ga, gb):
        held = await gate.admit(3)
        assert (held.granted, held.held) == (0, True), "a second probe out while the first one is"


async def test_only_the_probes_answer_ends_the_half_open_state_in_every_process(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """Sends granted before the breaker opened, answered (failing or not) while the probe is out, in the probe's
    process or another, are not its answer: the probe stays out, held and renewed by its process (`keep_probe`),
    and no process is granted a second one; the probe's own answer closes the breaker for all. So are the answers
    of a stalled process's probe whose hold ran out and another's probe is out since."""
    ga, gb = gates(two, None)
    ga.breaker.base_cooldown = gb.breaker.base_cooldown = 0.0
    early_a, early_b = await ga.admit(2), await gb.admit(2)  # out before the breaker opens, answered late
    for _ in range(5):
        await ga.outcome("retry", early_a)
    probe = await ga.admit(1)
    assert probe.probe
    for gate, early in ((ga, early_a), (gb, early_b), (ga, early_a)):
        for classification in ("retry", "auth", "success", "permanent"):
            assert await gate.outcome(classification, early) is None
            for other in (ga, gb):
                assert (await other.admit(3)).granted == 0, f"a second probe out after a late {classification}"
    assert ga.probe_mark == probe.probe_mark, "the probe's process no longer renews its hold"
    conn = await asyncpg.connect(DSN, server_settings={"search_path": two[0].schema or "public"})
    try:
        held_until = await conn.fetchval("SELECT probe_until FROM destination_gates WHERE destination = 'lsq'")
        await ga.keep_probe()
        assert await conn.fetchval("SELECT probe_until FROM destination_gates WHERE destination = 'lsq'") \
            >= held_until > 0, "the probe's hold is no longer renewed"
        await conn.execute("UPDATE destination_gates SET probe_until = 1")  # a stall past the hold
    finally:
        await conn.close()
    taken = await gb.admit(1)
    assert taken.probe
    assert await ga.outcome("retry", probe) is None  # the stalled probe's answer: no longer the probe
    assert (await ga.admit(3)).granted == 0, "a second probe out while the one taken since is"
    assert await gb.outcome("success", taken) == "closed"
    assert (await ga.admit(3)).granted == 3


async def test_a_send_given_back_deletes_its_own_slot_and_a_sent_one_stays_counted(
        two: tuple[PostgresStore, PostgresStore]) -> None:
    """Of three sends granted together, the first, settled unsent, gives back its own slot, not the last one's,
    which went out: every process's window counts the sends made and no more."""
    ga, gb = gates(two, RateLimit(requests=3, per_seconds=60))
    admission = await ga.admit(3)
    for index in (1, 2):
        await ga.start(admission, index)
    await ga.give_back(admission, 0)
    conn = await asyncpg.connect(DSN, server_settings={"search_path": two[0].schema or "public"})
    try:
        rows = sorted(r[0] for r in await conn.fetch("SELECT id FROM send_slots WHERE destination = 'lsq'"))
    finally:
        await conn.close()
    assert rows == sorted(admission.slots[1:])
    assert (await gb.admit(3)).granted == 1


class MockResponse(aiohttp.ClientResponse):
    """aioresponses 0.7.9 omits the `stream_writer` that aiohttp 3.14 requires (aioresponses#289)."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class Queue(MemoryStore):
    """The in-memory store, born open, holding the deliveries `add` makes."""

    def __init__(self) -> None:
        super().__init__()
        self.opened = True

    async def add(self, delivery_id: str, due_ms: int) -> None:
        event = Event.new(source="website-contact", kind="form", channel="form", payload={})
        await self.accept(event, [NewDelivery(id=delivery_id, mapping="m", mapping_version="v1", destination="lsq",
                                              action="create_ticket", body={"title": delivery_id})], 0)
        kept = self.deliveries[delivery_id]
        kept.row = msgspec.structs.replace(kept.row, next_attempt_at_ms=due_ms)


class FollowUps(Queue):
    """The queue, claiming every delivery as a follow-up of a conversation with ticket T-1."""

    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> ClaimBatch:
        batch = await super().claim(destination, limit, owner, lease_s)
        return msgspec.structs.replace(batch, items=[
            msgspec.structs.replace(item, conversation="email:<root@example.com>", ticket={"id": "T-1"})
            for item in batch.items])


async def test_a_probe_settled_without_a_send_gives_its_mark_back_and_the_next_send_probes(
        pg_store: PostgresStore) -> None:
    """The shared breaker's probe settled without its request going out (a follow-up that failed to render) is no
    answer from the vendor: its mark is given back, not told as a success, so the breaker stays half-open for
    every process and the next delivery sent is the probe (at once: not after the given-back probe's hold)."""
    coordination = pg_store.coordination()
    gate = coordination.gate("lsq", None)
    assert isinstance(gate, PgGate)
    gate.breaker.base_cooldown = 0.0  # open, then half-open at once
    for _ in range(5):
        await gate.outcome("retry")
    store = FollowUps()
    await store.add("dlv_broken", store.clock() - 1000)  # claimed first: the probe
    await store.add("dlv_after", store.clock())
    starts: list[tuple[bool, str]] = []
    start = gate.start

    async def watched(admission: Admission, index: int) -> None:
        starts.append((admission.probe, (await gate.view()).breaker))
        await start(admission, index)

    gate.start = watched  # type: ignore[method-assign]

    async def render(item: Any) -> Any:
        if item.id == "dlv_broken":
            raise KeyError("ticket")
        return item

    base = "http://kapture.test"
    cfg = KaptureOptions(vendor="kapture", base_url=base, token="t", max_in_flight=4, timeout_seconds=5.0,
                         retry=RetryConfig(schedule=["1h"], jitter=0))
    with aioresponses() as m:
        m.post(base + CREATE_PATH, status=200, payload={"status": "success", "ticket_id": "T-1"}, repeat=True,
               response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"lsq": Destination.from_config("lsq", cfg, base)}, follow_ups=render,
                           coordination=coordination, timings=Timings(store_retry_s=0.01, poll_s=3600.0))
            d.start()
            try:
                await eventually(lambda: all(store.deliveries[i].row.status in ("dead", "succeeded")
                                             for i in ("dlv_broken", "dlv_after")))
            finally:
                await d.stop(0.0)
        assert len(m.requests[("POST", URL(base + CREATE_PATH))]) == 1
    assert starts == [(True, "half_open")]
    assert [store.deliveries[i].row.status for i in ("dlv_broken", "dlv_after")] == ["dead", "succeeded"]
    assert (await gate.view()).breaker == "closed"


async def test_a_token_request_takes_a_slot_in_the_shared_window(two: tuple[PostgresStore, PostgresStore]) -> None:
    """The OAuth2 token an http destination obtains for a send is let out by the shared gate, as the send itself
    is: the window every process counts holds both requests, and another process is granted what is left. (One
    send in flight at most: the lane asks for no slot beside it, which a claim finding nothing gives back.)"""
    a, b = two
    rate = RateLimit(requests=4, per_seconds=60)
    base = "http://api.test"
    cfg = msgspec.convert({"vendor": "http", "base_url": base, "path": "/tickets", "ticket_id_path": "data.id",
                           "rate_limit": {"requests": 4, "per_seconds": 60}, "timeout_seconds": 5.0,
                           "max_in_flight": 1,
                           "auth": {"oauth2": {"token_url": "/oauth/token", "client_id": "c", "client_secret": "s"}}},
                          HttpOptions)
    store = Queue()
    await store.add("dlv_1", store.clock())
    with aioresponses() as m:
        m.post(base + "/oauth/token", status=200, payload={"access_token": "tok-1", "expires_in": 3600},
               response_class=MockResponse)
        m.post(base + "/tickets", status=201, payload={"data": {"id": "T-2"}}, response_class=MockResponse)
        async with aiohttp.ClientSession() as session:
            d = Dispatcher(store, session, {"lsq": Destination.from_config("lsq", cfg, base)},
                           coordination=a.coordination(), timings=Timings(store_retry_s=0.01, poll_s=3600.0))
            d.start()
            try:
                await eventually(lambda: store.deliveries["dlv_1"].row.status == "succeeded")
            finally:
                await d.stop(0.0)
        assert [key[1].path for key in m.requests] == ["/oauth/token", "/tickets"]
    other = b.coordination().gate("lsq", rate)
    assert (await other.view()).rate_used == 2
    assert (await other.admit(4)).granted == 2
