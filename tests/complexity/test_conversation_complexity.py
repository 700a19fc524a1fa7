"""A conversation's cost per message does not grow with its history: accepting a message into a thread of n earlier
ones, and claiming it (as a follow-up on the thread's ticket, or as the create of a thread restarted without one),
costs the same at n and at 8n.

A long-lived chat (a WhatsApp customer, a Slack channel) keeps every message it had for the retention window, in
one conversation. Counted in SQLite's virtual machine steps (the connection's progress handler, called at every
step), which the machine's other work does not move: a statement that walks the thread's history takes 8x the
steps at 8x the history, one that looks it up by an index a few more."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bridge.store.rows import NEW_DELIVERY_COLUMNS
from bridge.store.sqlite import SqliteStore
from tests.integration.store.contract import accept_one, make_delivery, result

pytestmark = pytest.mark.integration

CONVERSATION, KEY = "m|chat:+15550100", "chat:+15550100"
N = 1_000
GROWTH = 8
BOUND = 1.5
"""At most this many times the steps at 8x the history: a walk of the history is 8x, a look-up by index adds a level
of the B-tree at most."""


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[Callable[[str], Awaitable[SqliteStore]]]:
    opened: list[SqliteStore] = []

    async def make(name: str) -> SqliteStore:
        store = SqliteStore(tmp_path / f"{name}.db")
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


async def thread(store: SqliteStore, history: int, *, ticket: bool) -> None:
    """One conversation of `history` settled messages (the first accepted, the rest copied from it in one statement,
    each a row of its own, as long-lived as a thread's), with the ticket its create gave (`ticket`) or without one:
    restarted after its quiet period, its next message is a create again."""
    first = make_delivery(conversation=CONVERSATION, conversation_key=KEY)
    await accept_one(store, first)
    await store.claim("kapture-support", 1, "w", 60)
    await store.record(msgspec.structs.replace(result(first.id, "succeeded", ticket_id="T-1"), role="create"))
    conn = store._writer
    assert conn is not None
    copied = ", ".join("'dlv_copy' || i" if c == "id" else "'succeeded'" if c == "status" else c
                       for c in NEW_DELIVERY_COLUMNS.split(", "))
    conn.execute("BEGIN IMMEDIATE")
    conn.execute(f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                 f"INSERT INTO deliveries ({NEW_DELIVERY_COLUMNS}) SELECT {copied} FROM n, deliveries "
                 "WHERE deliveries.id = ?", (history - 1, first.id))
    conn.execute("UPDATE conversations SET messages = ?, ticket_id = CASE WHEN ? THEN ticket_id END, "
                 "ticket_at = CASE WHEN ? THEN ticket_at END WHERE id = ?", (history, ticket, ticket, CONVERSATION))
    if any(c[1] == "stored" for c in conn.execute("PRAGMA table_info(conversations)")):  # as accepts count them
        conn.execute("UPDATE conversations SET stored = ? WHERE id = ?", (history, CONVERSATION))
    conn.execute("COMMIT")
    assert conn.execute("SELECT count(*) FROM deliveries WHERE conversation = ?", (CONVERSATION,)).fetchone() == (
        history,)


def steps(store: SqliteStore) -> Callable[[], int]:
    """Count the steps of the store's writer (which claims and accepts) from now on: how many so far."""
    conn = store._writer
    assert conn is not None
    count = [0]

    def step() -> int:
        count[0] += 1
        return 0

    conn.set_progress_handler(step, 1)
    return lambda: count[0]


async def claim_steps(store: SqliteStore) -> tuple[int, Any]:
    """The steps of accepting the thread's next message and claiming it: (claim's, what was claimed)."""
    message = make_delivery(conversation=CONVERSATION, conversation_key=KEY)
    await accept_one(store, message)
    counted = steps(store)
    (got,) = (await store.claim("kapture-support", 10, "w", 60)).items
    assert got.id == message.id
    return counted(), got


async def accept_steps(store: SqliteStore) -> int:
    counted = steps(store)
    await accept_one(store, make_delivery(conversation=CONVERSATION, conversation_key=KEY))
    return counted()


def assert_flat(small: int, large: int, what: str) -> None:
    assert large <= BOUND * small, (f"{what}: {small} steps with {N} earlier messages, {large} with {GROWTH * N} "
                                    f"({large / small:.1f}x; at most {BOUND:g}x)")


async def test_a_thread_restarted_without_a_ticket_claims_its_create_without_reading_its_history(
        stores: Callable[[str], Awaitable[SqliteStore]]) -> None:
    """The claim of a thread's create when the thread has no ticket (restarted after its quiet period) looks for an
    earlier held create by the index of held creates (deliveries_held_create), not by reading every earlier
    message of the thread."""
    counts = []
    for history in (N, GROWTH * N):
        store = await stores(f"restarted-{history}")
        await thread(store, history, ticket=False)
        counted, got = await claim_steps(store)
        assert got.ticket is None  # a create
        counts.append(counted)
    assert_flat(*counts, "claiming a restarted thread's create")


async def test_a_follow_up_in_a_long_thread_is_claimed_without_reading_its_history(
        stores: Callable[[str], Awaitable[SqliteStore]]) -> None:
    """The claim of a follow-up on the thread's ticket counts the messages up to it (`ticket.messages`) as those
    the conversation holds (`conversations.stored`) less those after it, not by counting every earlier one."""
    counts = []
    for history in (N, GROWTH * N):
        store = await stores(f"follow-up-{history}")
        await thread(store, history, ticket=True)
        counted, got = await claim_steps(store)
        assert got.ticket is not None and got.ticket["messages"] == history + 1
        counts.append(counted)
    assert_flat(*counts, "claiming a follow-up in a thread")


async def test_accepting_a_message_into_a_long_thread_does_not_read_its_history(
        stores: Callable[[str], Awaitable[SqliteStore]]) -> None:
    counts = []
    for history in (N, GROWTH * N):
        store = await stores(f"accept-{history}")
        await thread(store, history, ticket=True)
        counts.append(await accept_steps(store))
    assert_flat(*counts, "accepting a message into a thread")
