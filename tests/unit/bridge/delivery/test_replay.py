"""bridge/delivery/replay.py: deliveries sent again chunk by chunk, each one left out named with its reason."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bridge.delivery import replay as replay_module
from bridge.delivery.replay import ReplayStopped, replay_deliveries, set_ticket
from bridge.errors import StoreUnavailable
from bridge.events import Event
from bridge.mapping.compiled import CompiledMapping
from bridge.mapping.mappingset import MappingSet, compile_document
from bridge.store.base import NewDelivery
from bridge.store.memory import MemoryStore
from bridge.store.sqlite import SqliteStore
from bridge.yamlfile import load_yaml
from tests.integration.store.contract import result
from tests.spies import calls_through

IDS = ["dlv_dead", "dlv_unrendered", "dlv_pending", "dlv_missing"]
PENDING = "it is pending (waiting for its next try, or replayed already): it is sent without another replay"
REFUSED = {"dlv_unrendered": "it never rendered (fix the mapping, then replay with --again)",
           "dlv_pending": PENDING, "dlv_missing": "no such delivery"}


def _delivery(ident: str, body: dict[str, str] | None, status: str) -> NewDelivery:
    return NewDelivery(id=ident, mapping="partner", mapping_version="v1", destination="kapture",
                       action="create_ticket", body=body, status=status,  # type: ignore[arg-type]
                       error=None if status == "pending" else "refused")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "s.db")
    await opened.open()
    event = Event.new(source="partner", kind="json", channel="webhook", payload={"title": "t"})
    await opened.accept(event, [_delivery("dlv_dead", {"title": "t"}, "dead"),
                                _delivery("dlv_unrendered", None, "dead"),
                                _delivery("dlv_pending", {"title": "t"}, "pending")], 0)
    yield opened
    await opened.close()


async def test_a_dry_run_names_what_would_be_left_and_moves_nothing(store: SqliteStore) -> None:
    """A dry run moves nothing and gives, for each delivery that would not be replayed, the reason a real one
    would give."""
    moved, refused = await replay_deliveries(store, IDS, None, {}, destinations=["kapture"], dry_run=True,
                                             rerender_hint="--again")
    assert (moved, refused) == ([], REFUSED)
    assert (await store.get_delivery("dlv_dead")).delivery.status == "dead"


async def test_a_replay_moves_what_it_can_chunk_by_chunk(store: SqliteStore,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The dead delivery with a body goes back to pending; every other one is named with why; progress hears
    the count done after each chunk."""
    monkeypatch.setattr(replay_module, "REPLAY_CHUNK", 3)
    done: list[int] = []
    moved, refused = await replay_deliveries(store, IDS, None, {}, destinations=["kapture"], dry_run=False,
                                             rerender_hint="--again", progress=done.append)
    assert (moved, refused, done) == (["dlv_dead"], REFUSED, [3, 4])
    assert (await store.get_delivery("dlv_dead")).delivery.status == "pending"


@pytest.mark.parametrize("dry_run", [True, False])
async def test_a_delivery_to_a_destination_no_longer_configured_is_refused_by_name(store: SqliteStore,
                                                                                    dry_run: bool) -> None:
    """With its destination gone from the config, a dead delivery is refused naming it and saying to restore it,
    and stays dead (pending, no lane would ever send it)."""
    moved, refused = await replay_deliveries(store, ["dlv_dead", "dlv_missing"], None, {}, destinations=["other"],
                                             dry_run=dry_run, rerender_hint="--again")
    assert moved == []
    assert refused == {"dlv_missing": "no such delivery",
                       "dlv_dead": "its destination 'kapture' is no longer configured, so nothing would send it: "
                                   "restore 'kapture' under `destinations:` in the config, then replay it"}
    assert (await store.get_delivery("dlv_dead")).delivery.status == "dead"


async def test_a_removed_destination_costs_one_look_up_per_chunk_not_one_per_id(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a destination removed from the config still has deliveries in the store (here a succeeded one,
    which a replay would make pending for no lane), a replay finds the chunk's destinations by one look-up per
    chunk: no delivery is read one by one to check it, and the store's counts are not read at all."""
    event = Event.new(source="partner", kind="json", channel="webhook", payload={"title": "t"})
    retired = NewDelivery(id="dlv_retired", mapping="partner", mapping_version="v1", destination="retired",
                          action="create_ticket", body={"title": "t"}, status="dead", error="refused")
    await store.accept(event, [retired, *(_delivery(f"dlv_more{n}", {"title": "t"}, "dead") for n in range(5))], 0)
    monkeypatch.setattr(replay_module, "REPLAY_CHUNK", 4)
    calls: list[str] = []
    for name in ("get_delivery", "counts", "destinations_of"):
        original = getattr(store, name)

        def counted(*args: object, _name: str = name, _original: object = original) -> object:
            calls.append(_name)
            return _original(*args)  # type: ignore[operator]

        monkeypatch.setattr(store, name, counted)
    ids = ["dlv_dead", "dlv_retired", *(f"dlv_more{n}" for n in range(5))]
    moved, refused = await replay_deliveries(store, ids, None, {}, destinations=["kapture"], dry_run=False,
                                             rerender_hint="--again")
    assert sorted(moved) == sorted(i for i in ids if i != "dlv_retired")
    assert list(refused) == ["dlv_retired"] and "'retired' is no longer configured" in refused["dlv_retired"]
    assert calls == ["destinations_of", "destinations_of"]  # 7 ids, chunks of 4
    assert (await store.get_delivery("dlv_retired")).delivery.status == "dead"


MAIL_MAPPING = """\
name: partner
source: partner
destination: kapture
action: create_ticket
fields:
  title: "{{ payload.title }}"
  comment: "{{ payload.text }}"
"""
LONG = 100_000
"""Characters of each event's text, quoted by its re-rendered body."""


async def long_mails(store: SqliteStore) -> tuple[list[str], CompiledMapping]:
    """Seven dead deliveries of events whose text is LONG characters, and the mapping that quotes it."""
    doc = load_yaml(MAIL_MAPPING, "partner.yaml")
    mapping, errors = compile_document(doc, "partner", "v2", {"partner"}, {"kapture": frozenset({"create_ticket"})})
    assert errors == [] and mapping is not None
    ids = [f"dlv_long{n}" for n in range(7)]
    for n, i in enumerate(ids):
        event = Event.new(source="partner", kind="json", channel="webhook",
                          payload={"title": f"t{n}", "text": str(n) * LONG})
        await store.accept(event, [_delivery(i, {"title": "old"}, "dead")], 0)
    return ids, mapping


@pytest.mark.parametrize("dry_run", [False, True])
async def test_re_rendered_bodies_are_handed_to_the_store_a_part_at_a_time(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch, dry_run: bool) -> None:
    """A chunk's re-rendered bodies are held a part at a time, each part ended by the body that takes their weight
    as text past REPLAY_RENDERED_CHARS (here two and a half bodies'): the chunk's 500 were rendered, and held,
    all at once, each up to a million characters a field (a mail's text quoted). Every delivery is moved, with its
    new body; a dry run renders each and moves none."""
    ids, mapping = await long_mails(store)
    monkeypatch.setattr(replay_module, "REPLAY_RENDERED_CHARS", LONG * 5 // 2)
    parts: list[list[str]] = []
    calls_through(monkeypatch, store, "replay", lambda part, *_args, **_kw: parts.append(list(part)))
    rendered: list[str] = []
    calls_through(monkeypatch, replay_module, "rerender_bodies", lambda _store, part, *_args, **_kw: rendered.append(
        part[0]))
    moved, refused = await replay_deliveries(store, ids, MappingSet.build([mapping]), {}, destinations=["kapture"],
                                             dry_run=dry_run, rerender_hint="--again")
    assert refused == {}
    assert rendered == [ids[0], ids[3], ids[6]]
    if dry_run:
        assert (moved, parts) == ([], [])
        return
    assert parts == [ids[:3], ids[3:6], ids[6:]]
    assert moved == ids
    for n, i in enumerate(ids):
        assert (await store.get_delivery(i)).body == {"title": f"t{n}", "comment": str(n) * LONG}


async def test_a_replay_stopped_by_an_error_after_a_part_names_the_deliveries_it_moved(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each part of a chunk is its own change: an error on the second part's leaves the first part's deliveries
    pending with their new bodies, and the replay says so (ReplayStopped naming them and the error), so that the
    caller reports and audits them; the error alone said nothing of them."""
    ids, mapping = await long_mails(store)
    monkeypatch.setattr(replay_module, "REPLAY_RENDERED_CHARS", LONG * 5 // 2)
    original = store.replay
    calls: list[list[str]] = []

    async def failing_second(part: list[str], *args: Any, **kwargs: Any) -> list[str]:
        calls.append(part)
        if len(calls) == 2:
            raise StoreUnavailable("the disk is full")
        return await original(part, *args, **kwargs)

    monkeypatch.setattr(store, "replay", failing_second)
    with pytest.raises(ReplayStopped) as stopped:
        await replay_deliveries(store, ids, MappingSet.build([mapping]), {}, destinations=["kapture"],
                                dry_run=False, rerender_hint="--again")
    assert stopped.value.moved == ids[:3]
    assert isinstance(stopped.value.cause, StoreUnavailable)
    assert [(await store.get_delivery(i)).delivery.status for i in ids] == ["pending"] * 3 + ["dead"] * 4


async def test_a_replay_stopped_before_it_moved_any_raises_the_error_itself(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing moved, nothing to tell beyond the error: it is raised as it came."""

    async def failing(*_args: Any, **_kwargs: Any) -> list[str]:
        raise StoreUnavailable("the disk is full")

    monkeypatch.setattr(store, "replay", failing)
    with pytest.raises(StoreUnavailable):
        await replay_deliveries(store, ["dlv_dead"], None, {}, destinations=["kapture"], dry_run=False,
                                rerender_hint="--again")


@pytest.mark.parametrize(("outcome", "reason"), [
    (None, PENDING),
    ("in_flight", "it is in flight: it is being sent now"),
    ("succeeded", "it was under way when this replay came (replayed meanwhile, or retrying) and has succeeded "
                  "since: it was sent; replay it again to send it once more"),
    ("dead", "it was under way when this replay came (replayed meanwhile, or retrying) and is dead again since: see "
             "its attempts"),
])
async def test_a_delivery_another_replay_moved_first_is_refused_with_what_became_of_it(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch, outcome: str | None, reason: str) -> None:
    """Two replays of one delivery at once: the one whose write comes second finds it pending (the first moved it)
    and moves nothing; by the time it says why, the delivery may be in flight, or sent and settled. Its reason says
    what became of it, not that it never rendered (it has a body)."""
    own_replay = store.replay

    async def second(ids: list[str], *args: object, **kwargs: object) -> list[str]:
        assert await own_replay(ids) == ids  # the other replay, first
        moved = await own_replay(ids, *args, **kwargs)  # type: ignore[arg-type]
        if outcome is not None:
            assert ids[0] in [c.id for c in (await store.claim("kapture", 10, "lane", 30)).items]
            if outcome != "in_flight":
                await store.record(result(ids[0], outcome), owner="lane")  # type: ignore[arg-type]
        return moved

    monkeypatch.setattr(store, "replay", second)
    moved, refused = await replay_deliveries(store, ["dlv_dead"], None, {}, destinations=["kapture"], dry_run=False,
                                             rerender_hint="--again")
    assert (moved, refused) == ([], {"dlv_dead": reason})


async def test_set_ticket_records_who_and_why_and_audits_only_when_asked() -> None:
    """set_ticket gives a create that named no ticket the operator's ticket, its attempt saying who and why, and
    keeps an audit entry only with `audit`; a refusal says why and audits nothing."""
    store = MemoryStore()
    await store.open()
    event = Event.new(source="partner", kind="json", channel="webhook", payload={"title": "t"})
    await store.accept(event, [_delivery("dlv_a", {"title": "t"}, "pending")], 0)
    await store.claim("kapture", 1, "w", 30)
    await store.record(msgspec.structs.replace(result("dlv_a", "succeeded"), ticket_missing=True))
    assert await set_ticket(store, "dlv_a", "T-1", ticket_key=None, by="cli:ops", note="found", audit=True) is None
    detail = await store.get_delivery("dlv_a")
    assert (detail.delivery.ticket_id, detail.attempts[-1].error) == ("T-1", "ticket T-1 set by cli:ops: found")
    (entry,) = await store.list_audit()
    assert (entry.action, entry.target, entry.actor, entry.detail) == (
        "delivery.set_ticket", "dlv_a", "cli:ops", {"ticket_id": "T-1", "ticket_key": None, "note": "found"})
    assert await set_ticket(store, "dlv_a", "T-2", ticket_key=None, by="cli:ops", audit=True) == (
        "it has ticket 'T-1' already")
    assert len(await store.list_audit()) == 1
