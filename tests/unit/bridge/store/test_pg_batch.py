"""The accept batcher: groups, concurrency, and how a group's failure reaches its callers (no database)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from bridge.errors import StoreUnavailable
from bridge.store.base import AcceptResult
from bridge.store.pg_batch import (
    CUT_OFF_ALONE_MAX,
    DEADLOCK_RUNS,
    AcceptBatcher,
    Outcome,
    PendingAccept,
    each_alone,
)
from bridge.store.postgres import PostgresStore
from bridge.store.rows import GROUP_BYTES, encode
from tests.integration.store.contract import make_delivery, make_event


def pending() -> PendingAccept:
    return PendingAccept(make_event(), [make_delivery()], 60, None)


async def test_at_most_concurrent_groups_are_stored_at_once() -> None:
    """With `concurrent=2`, groups queued in different turns are stored at once, a third waits until one of the two
    running groups is done, and the accepts queued meanwhile join it."""
    running: list[int] = []
    peak = 0
    release = asyncio.Event()

    async def run(group: list[PendingAccept]) -> list[Outcome]:
        nonlocal peak
        running.append(len(group))
        peak = max(peak, len(running))
        await release.wait()
        running.pop()
        return [item.stored() for item in group]

    batcher = AcceptBatcher(run, group_max=2, concurrent=2)
    items = [pending() for _ in range(7)]
    calls = [asyncio.create_task(batcher.submit(item)) for item in items[:2]]
    while len(running) < 1:
        await asyncio.sleep(0)
    calls += [asyncio.create_task(batcher.submit(item)) for item in items[2:4]]
    while len(running) < 2:
        await asyncio.sleep(0)
    calls += [asyncio.create_task(batcher.submit(item)) for item in items[4:]]
    for _ in range(5):
        await asyncio.sleep(0)
    assert batcher.groups == 2
    release.set()
    results = await asyncio.gather(*calls)
    assert [r.event_id for r in results] == [i.event.id for i in items]
    assert peak == 2
    assert (batcher.groups, batcher.grouped) == (4, 7)


async def test_the_groups_of_a_split_burst_are_stored_one_after_another() -> None:
    """A burst the bounds split (by bytes, here) is stored in arrival order: its next group's statement starts only
    once the group before it is stored, even with a slot free, so that a dedup key both hold goes to the first."""
    log: list[str] = []
    release = asyncio.Event()

    async def run(group: list[PendingAccept]) -> list[Outcome]:
        name = "big" if len(group) == 1 and group[0].size > 1000 else "rest"
        log.append(f"{name} starts")
        if name == "big":
            await release.wait()
        log.append(f"{name} ends")
        return [item.stored() for item in group]

    batcher = AcceptBatcher(run, group_max=100, concurrent=2, group_bytes=sized(4000).size)
    burst = [sized(4000), sized(400), sized(400)]
    calls = [asyncio.create_task(batcher.submit(item)) for item in burst]
    while batcher.groups < 2:
        await asyncio.sleep(0)
    for _ in range(5):
        await asyncio.sleep(0)
    assert log == ["big starts"]
    release.set()
    await asyncio.gather(*calls)
    assert log == ["big starts", "big ends", "rest starts", "rest ends"]


async def test_a_failing_group_fails_each_of_its_callers() -> None:
    """An error raised by the group's store reaches every caller of that group, and the next group is stored."""
    fail = True

    async def run(group: list[PendingAccept]) -> list[Outcome]:
        if fail:
            raise ConnectionResetError("server closed the connection")
        return [item.stored() for item in group]

    batcher = AcceptBatcher(run, group_max=100)
    results = await asyncio.gather(*(batcher.submit(pending()) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionResetError) for r in results)
    fail = False
    assert isinstance(await batcher.submit(pending()), AcceptResult)


async def test_each_caller_gets_its_own_outcome() -> None:
    """An outcome that is an error fails only its own caller."""
    async def run(group: list[PendingAccept]) -> list[Outcome]:
        return [ValueError("bad") if i == 1 else item.stored() for i, item in enumerate(group)]

    batcher = AcceptBatcher(run, group_max=100)
    first, second, third = await asyncio.gather(*(batcher.submit(pending()) for _ in range(3)),
                                                return_exceptions=True)
    assert isinstance(second, ValueError)
    assert isinstance(first, AcceptResult)
    assert isinstance(third, AcceptResult)


def unavailable(exc: BaseException) -> StoreUnavailable:
    failed = StoreUnavailable(f"postgresql: {exc}")
    failed.__cause__ = exc
    return failed


async def test_items_written_alone_stop_after_two_are_cut_off_by_a_timeout() -> None:
    """Written again one by one, a group's items are each tried while at most one was cut off by a statement
    timeout, whatever else failed; once CUT_OFF_ALONE_MAX were, the rest fail untried with StoreUnavailable."""
    timeout = asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout")
    deadlock = asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
    tried: list[int] = []

    async def write(i: int) -> BaseException | None:
        tried.append(i)
        return {1: unavailable(deadlock), 2: unavailable(timeout), 4: unavailable(timeout)}.get(i)

    with capture_logs() as logs:
        out = await each_alone(range(7), write)
    assert CUT_OFF_ALONE_MAX == 2
    assert tried == [0, 1, 2, 3, 4]
    assert out[0] is None and out[3] is None
    assert [type(o).__name__ for o in out[5:]] == ["StoreUnavailable"] * 2
    assert "cut off by a statement timeout" in str(out[5]) and out[5].__cause__ is None
    assert [(e["event"], e["tried"], e["untried"]) for e in logs] == [("store.group_cut_off", 5, 2)]
    tried.clear()
    again = await each_alone(range(4), write)  # one cut off: every item tried
    assert [None if o is None else str(o) for o in again] == [None, str(out[1]), str(out[2]), None]
    assert tried == [0, 1, 2, 3]


def sized(payload_chars: int, body_chars: int = 0) -> PendingAccept:
    """An accept whose event carries `payload_chars` of text and whose delivery's body `body_chars`."""
    return PendingAccept(make_event(text="p" * payload_chars), [make_delivery(body={"b": "x" * body_chars})], 60,
                         None)


async def group_sizes(items: list[PendingAccept], group_max: int, group_bytes: int) -> list[int]:
    """The sizes of the groups `items`, accepted together, are stored in; each caller answered with its own."""
    sizes: list[int] = []

    async def run(group: list[PendingAccept]) -> list[Outcome]:
        sizes.append(len(group))
        return [item.stored() for item in group]

    batcher = AcceptBatcher(run, group_max, group_bytes=group_bytes)
    results = await asyncio.gather(*(batcher.submit(item) for item in items))
    assert [r.event_id for r in results] == [item.event.id for item in items]
    assert (batcher.groups, batcher.grouped) == (len(sizes), len(items))
    assert (batcher._pending, batcher._pending_size) == ([], 0)
    return sizes


async def test_an_accept_counts_its_encoded_event_and_deliveries() -> None:
    """Its size is the bytes of the request its statement sends encoded: the event (payload, headers) and each
    delivery's body, as encoded for the statement (no second encoding); a delivery's options are its mapping's."""
    event = make_event(text="p" * 1000)
    deliveries = [make_delivery(body={"b": "x" * 300}), make_delivery(body=None, options={"o": "y" * 7})]
    item = PendingAccept(event, deliveries, 60, None)
    assert item.size == len(encode(event)) + len(encode({"b": "x" * 300}))
    assert sized(5000, 3000).size > 8000


async def test_a_group_closes_at_its_bytes_or_its_count_whichever_comes_first() -> None:
    """Accepts of a third of the bound go three to a group; under a bound they do not reach, the
    count closes groups; an accept over the bound goes alone, and does not carry its neighbours with it."""
    small, big = sized(400), sized(4000)
    bound = 3 * small.size
    assert big.size > bound
    assert await group_sizes([sized(400) for _ in range(7)], group_max=100, group_bytes=bound) == [3, 3, 1]
    assert await group_sizes([sized(400) for _ in range(5)], group_max=2, group_bytes=10**9) == [2, 2, 1]
    mixed = [sized(400), sized(4000), sized(400), sized(400), sized(4000), sized(400)]
    assert await group_sizes(mixed, group_max=100, group_bytes=bound) == [1, 1, 2, 1, 1]
    assert await group_sizes([sized(400), sized(4000)], group_max=100, group_bytes=bound) == [1, 1]
    assert await group_sizes([sized(4000)], group_max=100, group_bytes=bound) == [1]
    assert await group_sizes([sized(400) for _ in range(4)], group_max=100, group_bytes=bound - 1) == [2, 2]


async def test_the_default_bound_is_group_bytes() -> None:
    async def run(group: list[PendingAccept]) -> list[Outcome]:
        return [item.stored() for item in group]

    assert AcceptBatcher(run, 512).group_bytes == GROUP_BYTES == 2 * 1024 * 1024


class _Connection:
    """A connection whose transactions do nothing: `fn` alone decides what a run does."""

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        yield

    def transaction(self) -> Any:
        return self._transaction()


async def test_a_write_outside_intake_is_run_again_while_it_deadlocks_up_to_its_last_run() -> None:
    """A replay or a purge's batch (`again` given) is run from its start after each deadlock, up to DEADLOCK_RUNS
    runs in all, each logged with its number; the last run's deadlock propagates. Without `again`, the first."""
    deadlock = asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
    runs: list[int] = []

    def deadlocking(times: int) -> Callable[[Any], Awaitable[str]]:
        async def fn(conn: Any) -> str:
            runs.append(len(runs) + 1)
            if len(runs) <= times:
                raise deadlock
            return "done"
        return fn

    with capture_logs() as logs:
        assert await PostgresStore._deadlock_runs(_Connection(), deadlocking(DEADLOCK_RUNS - 1), "replay") == "done"
    assert len(runs) == DEADLOCK_RUNS == 3
    assert [(e["write"], e["run"]) for e in logs if e["event"] == "store.deadlock_retried"] == [("replay", 1),
                                                                                              ("replay", 2)]
    for again, times in (("purge", DEADLOCK_RUNS), (None, 1)):
        runs.clear()
        with pytest.raises(asyncpg.exceptions.DeadlockDetectedError):
            await PostgresStore._deadlock_runs(_Connection(), deadlocking(times), again)
        assert len(runs) == times
