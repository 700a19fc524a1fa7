"""A large mail's event and a delivery body quoting its text, read and written on PostgreSQL by the delivery page,
the unmatched list, retention's attachment scan, a claim and a replay: no turn of the event loop puts together,
decodes or sends the whole of one."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.store import pg_pieces, postgres
from bridge.store.postgres import PostgresStore
from tests.integration.store.contract import WEEK, make_delivery, make_event, result
from tests.integration.store.large_values import (
    ATTACHMENTS,
    SHA,
    TEXT,
    attachment_scan_of_events_under_a_mib,
    attachment_scan_of_large_events,
    claim_of_a_large_body,
    claim_of_bodies_under_a_mib,
    large_event,
    sha256_cut_between_pieces,
    unmatched_page_of_events_under_a_mib,
)
from tests.integration.store.test_pg_pieces import pieces_left
from tests.loop_cpu import LoopCpu, measured
from tests.spies import calls_through

pytestmark = pytest.mark.integration


@pytest.fixture
def store(pg_store: PostgresStore) -> PostgresStore:
    return pg_store


async def test_a_large_delivery_is_shown_without_holding_the_loop(store: PostgresStore) -> None:
    """A delivery whose body quotes a large mail's text (20 MiB), shown with its 60 MiB event (the delivery page,
    `deliveries show`), is read with no callback of the loop over 20 ms of its CPU: read as one value each, the
    driver held it 90-110 ms. Both read back exactly."""
    event, body = large_event(), {"comment": TEXT + "\u20ac end"}
    delivery = make_delivery(body=body)
    await store.accept(event, [delivery], WEEK, weight=80 << 20)
    meter = LoopCpu()
    shown = await meter.running(store.get_delivery(delivery.id))
    measured("get_delivery", meter)
    assert shown.event == event
    assert shown.body == body
    assert shown.delivery.id == delivery.id


async def test_a_large_unmatched_event_is_listed_without_holding_the_loop(store: PostgresStore) -> None:
    """The unmatched list (`deliveries unmatched`, whose --json prints each event whole) reads a large mail's
    event, among small ones, with no callback of the loop over 20 ms of its CPU; each reads back exactly, newest
    first."""
    small, large, newer = make_event(subject="a"), large_event(), make_event(subject="b")
    for e in (small, large, newer):
        await store.accept(e, [], WEEK, weight=60 << 20 if e is large else 0)
    meter = LoopCpu()
    listed = await meter.running(store.list_unmatched(10))
    measured("list_unmatched", meter)
    assert listed == [newer, large, small]


async def test_retentions_attachment_scan_reads_large_events_without_holding_the_loop(
        store: PostgresStore) -> None:
    """Retention's attachment scan finds the attachments large mails' events name with no callback of the loop
    over 20 ms of its CPU, besides a small event's."""
    await attachment_scan_of_large_events(store)


async def test_a_claim_decodes_a_large_body_without_holding_the_loop(store: PostgresStore) -> None:
    """A claim that takes a delivery whose body quotes a large mail's text (40 MiB: its text and its html) does not
    hold the loop over 20 ms of CPU; the body reads back exactly, beside an ordinary one claimed with it."""
    await claim_of_a_large_body(store)


async def test_an_ordinary_claim_reads_no_pieces(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim of ordinary bodies (and of one without a body) reads them with its statement: no piece is asked
    for."""
    read: list[Any] = []
    calls_through(monkeypatch, postgres, "read_pieces", lambda *args: read.append(args))
    ds = [make_delivery(body={"title": "x" * 1000}), make_delivery(body=None)]
    await store.accept(make_event(), ds, WEEK)
    claimed = await store.claim("kapture-support", 10, "w", 30)
    assert sorted((c.id, c.body) for c in claimed.items) == sorted([(ds[0].id, ds[0].body), (ds[1].id, {})])
    assert read == []


async def test_a_replay_writes_a_large_rerendered_body_without_holding_the_loop(store: PostgresStore) -> None:
    """A replay re-rendered to a body quoting a large mail's text (20 MiB) writes it with no callback of the loop
    over 20 ms of its CPU: encoded and bound whole, it held the loop 40-60 ms. The body reads back exactly, and no
    staged piece is left."""
    delivery = make_delivery(body={"title": "first"})
    await store.accept(make_event(), [delivery], WEEK)
    claimed = await store.claim("kapture-support", 10, "w", 30)
    await store.record(result(delivery.id, "dead", classification="permanent"), owner="w",
                       token=claimed.items[0].token)
    body = {"comment": TEXT + "\x00\u20ac", "title": "again"}
    meter = LoopCpu()
    moved = await meter.running(store.replay([delivery.id], {delivery.id: (body, "v2")}))
    measured("replay", meter)
    assert moved == [delivery.id]
    shown = await store.get_delivery(delivery.id)
    assert shown.body == body
    assert await pieces_left(store) == 0


async def test_a_replay_of_a_large_body_left_a_delivery_already_pending_as_it_was(store: PostgresStore) -> None:
    """A large re-rendered body is not written to a delivery the replay does not move (pending), and its staged
    pieces are deleted all the same."""
    delivery = make_delivery(body={"title": "first"})
    await store.accept(make_event(), [delivery], WEEK)
    assert await store.replay([delivery.id], {delivery.id: ({"comment": "z" * (3 << 20)}, "v2")}) == []
    assert (await store.get_delivery(delivery.id)).body == {"title": "first"}
    assert await pieces_left(store) == 0


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Values over 2,000 bytes read, and a replay's new bodies over 2,000 bytes sent, in pieces of 700 bytes (cutting
    characters' UTF-8 apart); an accept's values are sent as they are."""
    monkeypatch.setattr(pg_pieces, "PIECE_SEND_BYTES", 700)
    monkeypatch.setattr(pg_pieces, "PIECE_READ_BYTES", 700)
    monkeypatch.setattr(postgres, "SEND_AT_ONCE_BYTES", 2000)
    monkeypatch.setattr(postgres, "DECODE_AT_ONCE_BYTES", 2000)


async def test_values_read_and_written_in_pieces_are_byte_exact(store: PostgresStore, small_pieces: None,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Bodies and events just over the size read in pieces, cut between a character's bytes, read back exactly on
    every path: the delivery page, the unmatched list, the attachment scan, a claim, a replay's new body."""
    asked: list[tuple[str, ...]] = []
    for name in ("read_pieces", "hash_pieces"):
        calls_through(monkeypatch, postgres, name, lambda _conn, key, *value, name=name: asked.append((name, key)))
    calls_through(monkeypatch, postgres, "stage", lambda _conn, values: asked.extend(
        ("stage", owner.rsplit(".", 1)[-1]) for owner, _ in values))
    text = "\u00e9\u20ac\U0001f600\x00" * 400
    event = make_event(text=text, attachments=ATTACHMENTS)
    unmatched = make_event(text=text + "u")
    body = {"comment": text}
    large, small = make_delivery(body=body), make_delivery(body={"title": "short"})
    await store.accept(event, [large, small], WEEK)
    await store.accept(unmatched, [], WEEK)
    assert (await store.get_delivery(large.id)).body == body
    assert (await store.get_delivery(large.id)).event == event
    assert await store.list_unmatched(10) == [unmatched]
    assert await store.attachment_refs(2 ** 62) == {SHA}
    claimed = await store.claim("kapture-support", 10, "w", 30)
    assert {c.id: c.body for c in claimed.items} == {large.id: body, small.id: small.body}
    for c in claimed.items:
        await store.record(result(c.id, "dead", classification="permanent"), owner="w", token=c.token)
    again = {"comment": text + "again"}
    assert sorted(await store.replay([large.id, small.id], {large.id: (again, "v2"), small.id: ({"t": 1}, "v2")})) \
        == sorted([large.id, small.id])
    assert (await store.get_delivery(large.id)).body == again
    assert (await store.get_delivery(small.id)).body == {"t": 1}
    assert await pieces_left(store) == 0
    assert set(asked) == {("read_pieces", large.id), ("read_pieces", event.id), ("read_pieces", unmatched.id),
                          ("hash_pieces", event.id), ("hash_pieces", unmatched.id), ("stage", large.id)}


async def test_an_attachments_sha256_cut_between_two_pieces_is_found(store: PostgresStore,
                                                                     small_pieces: None) -> None:
    """Retention's scan finds each large event's attachment wherever the cut between two pieces falls in its sha256
    (or just before or after it): one event for each place of it relative to the cut."""
    await sha256_cut_between_pieces(store, pg_pieces.PIECE_READ_BYTES)


async def test_a_page_of_unmatched_events_under_a_mib_is_listed_without_holding_the_loop(
        store: PostgresStore) -> None:
    """The unmatched list of 40 events just under 1 MiB each, read with its statement and decoded on the loop, gives
    the loop a turn between them: decoded one after another, they held it 49-53 ms."""
    await unmatched_page_of_events_under_a_mib(store)


async def test_retentions_attachment_scan_of_events_under_a_mib_does_not_hold_the_loop(store: PostgresStore) -> None:
    """Retention's attachment scan of 100 events just under 1 MiB each, read with its statement and scanned on the
    loop, gives the loop a turn between them: scanned one after another, they held it 41-44 ms."""
    await attachment_scan_of_events_under_a_mib(store)


async def test_a_claim_of_bodies_under_a_mib_does_not_hold_the_loop(store: PostgresStore) -> None:
    """A claim of 40 deliveries whose bodies are 0.7 MiB each, read with the claim's statement and decoded on the
    loop, gives the loop a turn between them: decoded one after another, they held it 37-53 ms."""
    await claim_of_bodies_under_a_mib(store)
