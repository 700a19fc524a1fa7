"""A large mail's event and a delivery body quoting its text, read on SQLite by a claim, the delivery page, the
unmatched list and retention's attachment scan: none is read or decoded whole on the event loop, nor fetched or
decoded whole in one call on the read thread (which holds the GIL, and so the loop, throughout)."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bridge.errors import StoreUnavailable
from bridge.store import loop_turns, rows
from bridge.store import sqlite as sqlite_store
from bridge.store.sqlite import SqliteStore
from tests.integration.store.contract import WEEK, make_delivery, make_event
from tests.integration.store.large_values import (
    ATTACHMENTS,
    SHA,
    attachment_scan_of_events_under_a_mib,
    attachment_scan_of_large_events,
    claim_of_a_large_body,
    claim_of_bodies_under_a_mib,
    sha256_cut_between_pieces,
    unmatched_page_of_events_under_a_mib,
)
from tests.spies import calls_through

pytestmark = pytest.mark.integration


@pytest.fixture
def store(sqlite_store: SqliteStore) -> SqliteStore:
    return sqlite_store


async def test_a_claim_decodes_a_large_body_off_the_loop(store: SqliteStore) -> None:
    """A claim that takes a delivery whose body quotes a large mail's text (40 MiB: its text and its html) does not
    hold the loop over 20 ms of CPU: the claim's write, which runs on the loop, read and decoded it, 72-114 ms. The body
    reads back exactly, beside an ordinary one claimed with it."""
    await claim_of_a_large_body(store)


async def test_retentions_attachment_scan_looks_through_large_events_off_the_loop(store: SqliteStore) -> None:
    """Retention's attachment scan finds the attachments two large mails' events name with no callback of the loop
    over 20 ms of its CPU (besides a small event's): each page's events were looked through on the loop, 17 ms for
    each 60 MiB event."""
    await attachment_scan_of_large_events(store)


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Values over 2,000 bytes read in pieces of 700 bytes (cutting characters' UTF-8 apart); the (table, column) of
    each value read so."""
    monkeypatch.setattr(sqlite_store, "PIECE_READ_BYTES", 700)
    monkeypatch.setattr(sqlite_store, "DECODE_AT_ONCE_BYTES", 2000)
    read: list[tuple[str, str]] = []
    calls_through(monkeypatch, sqlite_store, "_blob_read", lambda _conn, table, column, _rowid: read.append(
        (table, column)))
    return read


async def test_large_values_are_read_a_piece_at_a_time_and_back_exactly(
        store: SqliteStore, small_pieces: list[tuple[str, str]], tmp_path: Path) -> None:
    """An event and bodies over DECODE_AT_ONCE_BYTES are read a piece at a time (and decoded so) by the delivery
    page, the unmatched list and a claim, where they were fetched and decoded whole (a 60 MiB event held the GIL
    54 ms in one call, a 40 MiB body 44 ms): a body kept apart and one kept in its row (before 0021). Non-ASCII
    text cut between pieces, and a NUL, read back exactly."""
    text = "\u00e9\u20ac\U0001f600\x00" * 400
    event, unmatched = make_event(text=text, attachments=ATTACHMENTS), make_event(text=text + "u")
    body, old_body = {"comment": text}, {"comment": text + "old"}
    apart, in_row, small = (make_delivery(body=body), make_delivery(body={"title": "x"}),
                            make_delivery(body={"title": "short"}))
    await store.accept(event, [apart, in_row, small], WEEK)
    await store.accept(unmatched, [], WEEK)
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:  # as a version before 0021 stored it
        conn.execute("UPDATE deliveries SET body = ? WHERE id = ?", (msgspec.json.encode(old_body), in_row.id))
        conn.commit()
    shown = await store.get_delivery(apart.id)
    assert (shown.body, shown.event) == (body, event)
    assert small_pieces == [("delivery_bodies", "body"), ("events", "data")]
    assert (await store.get_delivery(in_row.id)).body == old_body
    assert small_pieces[2:] == [("deliveries", "body"), ("events", "data")]
    small_pieces.clear()
    assert await store.list_unmatched(10) == [unmatched]
    assert small_pieces == [("events", "data")]
    small_pieces.clear()
    claimed = await store.claim("kapture-support", 10, "w", 30)
    assert {c.id: c.body for c in claimed.items} == {apart.id: body, in_row.id: old_body, small.id: small.body}
    assert sorted(small_pieces) == [("deliveries", "body"), ("delivery_bodies", "body")]
    assert await store.attachment_refs(2 ** 62) == {SHA}


async def test_a_claim_whose_large_body_cannot_be_read_gives_its_leases_back(
        store: SqliteStore, small_pieces: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """When a large body cannot be read once the claim is written, the claim fails and its deliveries are pending
    again, at once: the next claim takes them."""
    large, small = make_delivery(body={"comment": "z" * 5000}), make_delivery(body={"title": "short"})
    await store.accept(make_event(), [large, small], WEEK)

    def fails(_conn: Any, ids: list[str]) -> Any:
        raise StoreUnavailable("disk I/O error")

    monkeypatch.setattr(sqlite_store, "_large_bodies", fails)
    with pytest.raises(StoreUnavailable):
        await store.claim("kapture-support", 10, "w", 30)
    monkeypatch.undo()
    claimed = await store.claim("kapture-support", 10, "w", 30)
    assert sorted(c.id for c in claimed.items) == sorted([large.id, small.id])


@pytest.mark.parametrize("how", ["cancelled", "undecodable"])
async def test_a_claim_stopped_while_its_bodies_are_decoded_gives_its_leases_back(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """A claim whose bodies are decoded once its write is committed (`rows.claimed_items`, on the loop, a turn of it
    between them: here after each) and that is cancelled meanwhile (a stop, raised at the turn), or meets a body it
    cannot decode, leaves no lease behind: its deliveries are pending again at once, and the next claim takes them,
    bodies whole."""
    deliveries = [make_delivery(body={"title": f"t{n}", "comment": "c" * 5000}) for n in range(3)]
    await store.accept(make_event(), deliveries, WEEK)
    monkeypatch.setattr(loop_turns, "TURN_BYTES", 1000)
    decode_dict = rows.decode_dict

    def stopped(data: Any) -> Any:
        if how == "cancelled":
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # raised at the claim's next await
            return decode_dict(data)
        raise msgspec.DecodeError("truncated")

    monkeypatch.setattr(rows, "decode_dict", stopped)
    with pytest.raises(asyncio.CancelledError if how == "cancelled" else msgspec.DecodeError):
        await asyncio.get_running_loop().create_task(store.claim("kapture-support", 10, "w", 30))
    monkeypatch.undo()
    claimed = await store.claim("kapture-support", 10, "w", 30)
    assert {c.id: c.body for c in claimed.items} == {d.id: d.body for d in deliveries}


async def test_an_attachments_sha256_cut_between_two_pieces_is_found(store: SqliteStore,
                                                                     small_pieces: list[tuple[str, str]]) -> None:
    """Retention's scan finds each large event's attachment wherever the cut between two pieces falls in its sha256
    (or just before or after it): one event for each place of it relative to the cut."""
    await sha256_cut_between_pieces(store, sqlite_store.PIECE_READ_BYTES)


async def test_a_page_of_unmatched_events_under_a_mib_is_listed_without_holding_the_loop(
        store: SqliteStore) -> None:
    """The unmatched list of 40 events just under 1 MiB each is read and decoded on the read thread: no callback of
    the loop over 20 ms of its CPU."""
    await unmatched_page_of_events_under_a_mib(store)


async def test_retentions_attachment_scan_of_events_under_a_mib_does_not_hold_the_loop(store: SqliteStore) -> None:
    """Retention's attachment scan of 100 events just under 1 MiB each looks through them on the read thread: no
    callback of the loop over 20 ms of its CPU."""
    await attachment_scan_of_events_under_a_mib(store)


async def test_a_claim_of_bodies_under_a_mib_does_not_hold_the_loop(store: SqliteStore) -> None:
    """A claim of 40 deliveries whose bodies are 0.7 MiB each reads 1 MiB of them in the claim's write (which runs on
    the loop), the rest on the read thread, and decodes them with a turn of the loop between them: read and decoded
    by the write, they held it 62-64 ms."""
    await claim_of_bodies_under_a_mib(store)
