"""The accept batcher: groups, concurrency, and how a group's failure reaches its callers (no database)."""

from __future__ import annotations

import asyncio

from bridge.store.base import AcceptResult
from bridge.store.pg_batch import AcceptBatcher, Outcome, PendingAccept
from tests.integration.store.contract import make_delivery, make_event


def pending() -> PendingAccept:
    return PendingAccept(make_event(), [make_delivery()], 60, None)


async def test_at_most_concurrent_groups_are_stored_at_once() -> None:
    """With `concurrent=2`, a third group waits until one of the two running groups is done, and the accepts
    queued meanwhile join it."""
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
    calls = [asyncio.create_task(batcher.submit(item)) for item in items]
    while len(running) < 2:
        await asyncio.sleep(0)
    assert batcher.groups == 2
    release.set()
    results = await asyncio.gather(*calls)
    assert [r.event_id for r in results] == [i.event.id for i in items]
    assert peak == 2
    assert (batcher.groups, batcher.grouped) == (4, 7)


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
