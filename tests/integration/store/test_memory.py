"""The in-memory store: the shared contract, so that tests running on it run on a real `Store`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.errors import StoreUnavailable
from bridge.store.memory import MemoryStore
from tests.integration.store.contract import WEEK, StoreContract, make_delivery, make_event


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    opened = MemoryStore()
    await opened.open()
    yield opened
    await opened.close()


class TestMemoryStoreContract(StoreContract):
    """The in-memory store passes the contract every backend shares."""


async def test_a_closed_memory_store_is_unavailable() -> None:
    """Like the durable stores, the in-memory one refuses work until opened and after closing."""
    store = MemoryStore()
    with pytest.raises(StoreUnavailable):
        await store.accept(make_event(), [make_delivery()], WEEK)
    await store.open()
    await store.accept(make_event(), [make_delivery()], WEEK)
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.claim("kapture-support", 10, "w", 30)


async def test_the_clock_decides_what_is_due() -> None:
    """A delivery is due by the store's clock, so tests can move time without waiting for it."""
    now = [1_000_000]
    store = MemoryStore(clock=lambda: now[0])
    await store.open()
    await store.accept(make_event(), [make_delivery()], WEEK)
    [item] = (await store.claim("kapture-support", 10, "w", 0.5)).items
    assert await store.release_expired() == 0
    now[0] += 501
    assert await store.release_expired() == 1
    assert [c.id for c in (await store.claim("kapture-support", 10, "w", 30)).items] == [item.id]
