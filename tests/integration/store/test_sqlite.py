"""The SQLite store: the shared contract, plus WAL, the owner lock, recovery, durability and group commit."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from aioresponses import aioresponses
from structlog.testing import capture_logs

from bridge.delivery.replay import mark_succeeded
from bridge.errors import NotFound, StoreLocked, StoreUnavailable
from bridge.events import Event
from bridge.retention import purge_store
from bridge.store import pieces
from bridge.store import sqlite as sqlite_store
from bridge.store.base import AttemptResult, ClaimBatch, Cutoffs, DeliveryFilter, NewDelivery
from bridge.store.rows import GROUP_BYTES, MAPPING_CONVERSATIONS
from bridge.store.sqlite import (
    BODY_INLINE,
    HEAD_OF_CONVERSATION,
    NONCE_SWEEP,
    NONCE_SWEEP_EVERY,
    ROW_COLUMNS,
    TICKETS_OF_CLAIMED,
    SqliteStore,
)
from bridge.store.sqlite_rewrites import CODE_MIGRATIONS, STATUS_COMPARED, STATUS_IN_LIST, rewrite_table
from tests.conftest import eventually
from tests.faults import default_executor_held
from tests.integration.store.contract import (
    WEEK,
    StoreContract,
    accept_one,
    conversations_burst_and_purge,
    legacy_nul_rows,
    legacy_nul_rows_still_match,
    make_delivery,
    make_event,
    nonce,
    now_ms,
    result,
    row,
)
from tests.unit.bridge.delivery.test_dispatcher import destination, gate, mock_vendor, requests_to, running

pytestmark = pytest.mark.integration
T = TypeVar("T")


@pytest.fixture
def store(sqlite_store: SqliteStore) -> SqliteStore:
    return sqlite_store


class TestSqliteStoreContract(StoreContract):
    """The SQLite store passes the contract every backend shares."""


async def handed_over(writes: list[Awaitable[T]]) -> list[asyncio.Task[T]]:
    """The writes, started as tasks, once every one of them has reached the store's writer (each queues its
    write before its first await), so that a held lock makes them wait together."""
    started = 0

    async def run(write: Awaitable[T]) -> T:
        nonlocal started
        started += 1
        return await write

    tasks = [asyncio.create_task(run(w)) for w in writes]
    await eventually(lambda: started == len(writes))
    return tasks


def query(path: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


async def test_rows_kept_before_nul_mark_still_match_their_keys(store: SqliteStore, tmp_path: Path) -> None:
    """A thread, a dedup key and a nonce whose key held a NUL, written as the store kept them before 0026 (the NUL
    `\\x00`, no mark), are still theirs: no second conversation, no second event, no second use of the nonce."""
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn, conn:
        for statement in legacy_nul_rows(now_ms()):
            conn.execute(statement)
    await legacy_nul_rows_still_match(store)


@contextmanager
def write_locked(path: Path) -> Iterator[None]:
    """Hold SQLite's write lock from another connection, as a slow disk would, so that writes queue up."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")


async def test_runs_in_wal_mode(store: SqliteStore, tmp_path: Path) -> None:
    """The database file is in WAL mode once the store is open."""
    assert query(tmp_path / "s.db", "PRAGMA journal_mode") == [("wal",)]


async def test_creates_the_parent_folder(tmp_path: Path) -> None:
    """Opening a store in a folder that does not exist yet creates the folder."""
    path = tmp_path / "var" / "deep" / "s.db"
    s = SqliteStore(path)
    await s.open()
    try:
        await accept_one(s)
    finally:
        await s.close()
    assert path.is_file()


async def test_second_owner_is_refused(store: SqliteStore, tmp_path: Path) -> None:
    """A second owning store on the same file is refused with StoreLocked naming the holder's pid."""
    second = SqliteStore(tmp_path / "s.db")
    with pytest.raises(StoreLocked, match=rf"in use by another ticketbridge process \(pid {os.getpid()}\)"):
        await second.open()
    await second.close()
    assert len(await store.list_deliveries(DeliveryFilter())) == 0


async def test_lock_is_given_up_on_close(tmp_path: Path) -> None:
    """Once the owner closes, another owner may open the same file."""
    path = tmp_path / "s.db"
    first = SqliteStore(path)
    await first.open()
    refused = SqliteStore(path)
    with pytest.raises(StoreLocked):
        await refused.open()
    await first.close()
    second = SqliteStore(path)
    await second.open()
    await second.close()


async def test_non_owner_opens_beside_the_owner(store: SqliteStore, tmp_path: Path) -> None:
    """A non-owning store (CLI use) opens beside the owner and sees its data."""
    _, (d,) = await accept_one(store)
    viewer = SqliteStore(tmp_path / "s.db", owner=False)
    await viewer.open()
    try:
        assert [r.id for r in await viewer.list_deliveries(DeliveryFilter())] == [d]
    finally:
        await viewer.close()


async def test_a_store_opened_beside_leases_in_flight_gives_its_claims_later_tokens(store: SqliteStore,
                                                                                    tmp_path: Path) -> None:
    """Claim tokens count up from those of the deliveries in flight when the store opens (migration 0023's
    `lease_token`), so that a store opened beside another's leases never gives a claim one of their tokens."""
    await accept_one(store, make_delivery(), make_delivery())
    [given] = (await store.claim("kapture-support", 1, "w", 60)).items
    [held] = (await store.claim("kapture-support", 1, "w", 60)).items
    assert given.token < held.token
    await store.release([given.id], owner="w", tokens=[given.token])
    other = SqliteStore(tmp_path / "s.db", owner=False)
    await other.open()
    try:
        [taken] = (await other.claim("kapture-support", 1, "x", 60)).items
        assert taken.id == given.id and taken.token > held.token
        await other.release([taken.id], owner="x", tokens=[held.token])
        assert (await row(other, taken.id)).status == "in_flight"
    finally:
        await other.close()


async def test_in_flight_deliveries_are_given_back_on_reopen(tmp_path: Path) -> None:
    """Deliveries left in flight by a stopped owner are pending and due at once when the store reopens."""
    path = tmp_path / "s.db"
    first = SqliteStore(path)
    await first.open()
    _, (leased, later) = await accept_one(first, make_delivery(), make_delivery())
    await first.claim("kapture-support", 10, "w", 3600)
    await first.record(result(later, "pending", classification="retry", next_attempt_at_ms=now_ms() + 3_600_000))
    await first.claim("kapture-support", 10, "w", 3600)
    await first.close()

    second = SqliteStore(path)
    with capture_logs() as logs:
        await second.open()
    try:
        r = await row(second, leased)
        assert (r.status, r.attempts) == ("pending", 0)
        assert r.next_attempt_at_ms <= now_ms()
        assert (await row(second, later)).status == "pending"
        assert [c.id for c in (await second.claim("kapture-support", 10, "w2", 30)).items] == [leased]
    finally:
        await second.close()
    recovered = [e for e in logs if e["event"] == "store.recovered_in_flight"]
    assert len(recovered) == 1
    assert recovered[0]["count"] == 1


async def test_non_owner_does_not_take_in_flight_work(store: SqliteStore, tmp_path: Path) -> None:
    """A non-owning store leaves the owner's in-flight deliveries alone."""
    _, (d,) = await accept_one(store)
    await store.claim("kapture-support", 1, "w", 3600)
    viewer = SqliteStore(tmp_path / "s.db", owner=False)
    await viewer.open()
    await viewer.close()
    assert (await row(store, d)).status == "in_flight"


async def test_data_survives_close_and_reopen(tmp_path: Path) -> None:
    """Everything committed is there after the store is closed and opened again."""
    path = tmp_path / "s.db"
    first = SqliteStore(path)
    await first.open()
    event = make_event(dedup_key="k")
    _, (d,) = await accept_one(first, make_delivery(options={"q": 1}), event=event)
    await first.claim("kapture-support", 1, "w", 30)
    await first.record(result(d, "succeeded", ticket_id="T-1"))
    before = await first.get_delivery(d)
    await first.close()

    second = SqliteStore(path)
    await second.open()
    try:
        assert await second.get_delivery(d) == before
        assert await second.get_event(event.id) == event
        dup = await second.accept(make_event(dedup_key="k"), [make_delivery()], WEEK)
        assert (dup.duplicate, dup.event_id) == (True, event.id)
    finally:
        await second.close()


def shipped_scripts() -> list[tuple[int, str]]:
    """(version, name) of each migration the package ships (its scripts and those in code), in order."""
    from importlib import resources

    names = sorted([*(f.name for f in resources.files("bridge.store.sql.sqlite").iterdir() if f.name.endswith(".sql")),
                    *CODE_MIGRATIONS])
    return [(int(name.split("_", 1)[0]), name) for name in names]


async def test_migrations_are_recorded_once(tmp_path: Path) -> None:
    """Each migration script runs and is recorded once, however often the store opens. A new store's open makes its
    schema, which upgrades nothing (`migrated`, what a CLI verb says it did, is empty), as is a later open's."""
    path = tmp_path / "s.db"
    applied = []
    for _ in range(3):
        s = SqliteStore(path)
        await s.open()
        await s.close()
        applied.append(s.migrated)
    rows = query(path, "SELECT version, name FROM schema_migrations ORDER BY version")
    assert rows == shipped_scripts()
    assert applied == [(), (), ()]
    assert (4, "0004_mapping_sets.sql") in rows
    tables = {r[0] for r in query(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"events", "dedup_keys", "deliveries", "attempts", "schema_migrations", "mapping_sets"} <= tables


async def test_a_migration_numbered_below_the_newest_applied_one_still_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A script that arrives after a higher-numbered one was applied (branches merged later) runs at the next open."""
    import types
    from importlib import resources

    from bridge.store import sqlite as sqlite_module

    folder = tmp_path / "sql"
    folder.mkdir()
    for script in resources.files("bridge.store.sql.sqlite").iterdir():
        if script.name.endswith(".sql"):
            (folder / script.name).write_text(script.read_text(encoding="utf-8"), encoding="utf-8")
    for shipped in folder.glob("0003_*.sql"):
        shipped.unlink()  # the test plays 0003 arriving late
    monkeypatch.setattr(sqlite_module, "resources", types.SimpleNamespace(files=lambda _package: folder))
    path = tmp_path / "s.db"
    first = SqliteStore(path)
    await first.open()
    await first.close()
    (folder / "0003_later.sql").write_text("CREATE TABLE later (x INTEGER)", encoding="utf-8")
    second = SqliteStore(path)
    await second.open()
    await second.close()
    versions = [r[0] for r in query(path, "SELECT version FROM schema_migrations ORDER BY version")]
    assert 3 in versions and 4 in versions
    assert query(path, "SELECT name FROM sqlite_master WHERE name = 'later'") == [("later",)]


async def test_an_older_database_is_migrated_on_open(tmp_path: Path) -> None:
    """A store file made by the first schema gains the later migrations when it is opened, keeping its rows."""
    path = tmp_path / "s.db"
    init = (Path(__file__).parents[3] / "bridge/store/sql/sqlite/0001_init.sql").read_text()
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(init + "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                                  "applied_at INTEGER NOT NULL); "
                                  "INSERT INTO schema_migrations VALUES (1, '0001_init.sql', 0);")
    s = SqliteStore(path)
    await s.open()
    try:
        _, (d,) = await accept_one(s)
        assert (await s.get_delivery(d)).delivery.ticket_key is None
    finally:
        await s.close()
    assert [r[0] for r in query(path, "SELECT version FROM schema_migrations ORDER BY version")] == [
        version for version, _ in shipped_scripts()]


def insert_plan(path: Path) -> list[str]:
    """The opcodes of a delivery's insert."""
    with closing(sqlite3.connect(path)) as conn:
        return [r[1] for r in conn.execute("EXPLAIN INSERT INTO deliveries (id, event_id, source, mapping, "
                                           "mapping_version, destination, action, status, options, next_attempt_at, "
                                           "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                           (None,) * 12)]


async def test_a_stores_delivery_status_is_checked_without_a_temporary_index(tmp_path: Path) -> None:
    """A store made before the statuses were compared one by one (its CHECK an `IN` list, for which SQLite builds a
    temporary index on every row written) is rewritten when opened, in place: its rows stay, a status outside the
    four is still refused, and the file passes SQLite's integrity check. A new store is the same."""
    old = tmp_path / "old.db"
    init = (Path(__file__).parents[3] / "bridge/store/sql/sqlite/0001_init.sql").read_text()
    assert STATUS_IN_LIST in init
    with closing(sqlite3.connect(old)) as conn:
        conn.executescript(init + "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                                  "applied_at INTEGER NOT NULL); "
                                  "INSERT INTO schema_migrations VALUES (1, '0001_init.sql', 0);")
    assert "OpenEphemeral" in insert_plan(old)
    new = tmp_path / "new.db"
    for path in (old, new):
        s = SqliteStore(path)
        await s.open()
        try:
            _, (d,) = await accept_one(s)
        finally:
            await s.close()
        assert "OpenEphemeral" not in insert_plan(path)
        (sql,), = query(path, "SELECT sql FROM sqlite_schema WHERE name = 'deliveries'")
        assert STATUS_COMPARED in sql and STATUS_IN_LIST not in sql
        assert query(path, "PRAGMA integrity_check") == [("ok",)]
        assert query(path, f"SELECT status FROM deliveries WHERE id = '{d}'") == [("pending",)]
        with closing(sqlite3.connect(path)) as conn, pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE deliveries SET status = 'done'")
    assert query(old, "SELECT sql FROM sqlite_schema WHERE name = 'deliveries'") == query(
        new, "SELECT sql FROM sqlite_schema WHERE name = 'deliveries'")


async def test_a_status_check_no_version_wrote_is_left_and_said(tmp_path: Path) -> None:
    """A deliveries table whose CREATE TABLE text does not hold the check every version wrote (made by hand) is
    left as it is, and the skip is logged, not passed over in silence."""
    path = tmp_path / "s.db"
    init = (Path(__file__).parents[3] / "bridge/store/sql/sqlite/0001_init.sql").read_text()
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(init.replace(STATUS_IN_LIST, "CHECK (status <> '')")
                           + "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                             "applied_at INTEGER NOT NULL); "
                             "INSERT INTO schema_migrations VALUES (1, '0001_init.sql', 0);")
    with capture_logs() as logs:
        s = SqliteStore(path)
        await s.open()
        await s.close()
    assert [e["table"] for e in logs if e["event"] == "store.rewrite_skipped"] == ["deliveries"]
    (sql,), = query(path, "SELECT sql FROM sqlite_schema WHERE name = 'deliveries'")
    assert "CHECK (status <> '')" in sql


def test_a_rewrite_that_does_not_read_back_leaves_the_schema_as_it_was(tmp_path: Path) -> None:
    """A rewritten CREATE TABLE text that SQLite cannot read fails the migration's transaction, which rolls back
    to the schema before it; and a text to replace that is not there once changes nothing."""
    path = tmp_path / "s.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE t (status TEXT CHECK (status IN ('a', 'b')))")
        before = conn.execute("SELECT sql FROM sqlite_schema").fetchall()
        assert rewrite_table(conn, "t", "('c')", "('d')") is False
        conn.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.DatabaseError, match="malformed"):
            rewrite_table(conn, "t", "CHECK (status IN ('a', 'b'))", "CHECK (status IN ('a',")
        conn.execute("ROLLBACK")
    assert query(path, "SELECT sql FROM sqlite_schema") == before
    assert query(path, "PRAGMA integrity_check") == [("ok",)]


async def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    """A corrupt file gives StoreUnavailable, and the failed open does not keep the lock."""
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not an SQLite database, not even close" * 100)
    broken = SqliteStore(path)
    with pytest.raises(StoreUnavailable, match=r"s\.db: file is not a database"):
        await broken.open()
    path.unlink()
    fresh = SqliteStore(path)
    await fresh.open()
    await fresh.close()


async def test_closed_store_is_unavailable(tmp_path: Path) -> None:
    """Reads and writes on a closed store raise StoreUnavailable; closing twice is harmless."""
    s = SqliteStore(tmp_path / "s.db")
    await s.open()
    await s.close()
    await s.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await s.accept(make_event(), [], WEEK)
    with pytest.raises(StoreUnavailable, match="closed"):
        await s.list_deliveries(DeliveryFilter())


async def test_close_waits_for_a_read_running_on_its_thread_and_later_reads_are_refused(tmp_path: Path) -> None:
    """A read still running on a worker thread when the store closes (its caller cancelled at shutdown) finishes
    on an open connection; the reader is closed after it, and a read queued behind the close is unavailable,
    never run on a closed (freed) connection."""
    s = SqliteStore(tmp_path / "s.db")
    await s.open()
    started, release = threading.Event(), threading.Event()
    outcome: list[object] = []

    def slow(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)
        try:
            outcome.append(conn.execute("SELECT 1").fetchone()[0])
        except sqlite3.Error as exc:
            outcome.append(exc)

    reading = asyncio.ensure_future(s._read(slow))
    await eventually(started.is_set)
    reading.cancel()  # as at shutdown: the caller goes, its thread runs on
    closing_task = asyncio.ensure_future(s.close())
    await eventually(lambda: s._committer is None)  # close has gone as far as the connections
    release.set()
    await closing_task
    await eventually(lambda: bool(outcome))
    assert outcome == [1]
    assert s._reader is None
    with pytest.raises(StoreUnavailable, match="closed"):
        await s.load_mapping_set()


async def test_reads_run_on_the_stores_own_thread(store: SqliteStore) -> None:
    """A read (a follow-up's event, the admin API's list) is answered while the event loop's default executor is
    held (as hung host name look-ups once held it): the store reads on a thread of its own."""
    event, [delivery_id] = await accept_one(store)
    async with default_executor_held():
        assert (await asyncio.wait_for(store.get_event(event.id), 5)).id == event.id
        assert [r.id for r in await asyncio.wait_for(store.list_deliveries(DeliveryFilter()), 5)] == [delivery_id]


async def test_concurrent_accepts_of_one_dedup_key_store_one_event(store: SqliteStore, tmp_path: Path) -> None:
    """Many simultaneous accepts with the same dedup key store exactly one event; the rest name it."""
    events = [make_event(dedup_key="same") for _ in range(20)]
    results = await asyncio.gather(*(store.accept(e, [make_delivery()], WEEK) for e in events))
    originals = [r for r in results if not r.duplicate]
    assert len(originals) == 1
    first = originals[0].event_id
    assert {r.event_id for r in results} == {first}
    assert sum(r.deliveries for r in results) == 1
    assert query(tmp_path / "s.db", "SELECT id FROM events") == [(first,)]
    assert len(await store.list_deliveries(DeliveryFilter())) == 1


async def test_concurrent_accepts_share_commits(store: SqliteStore, tmp_path: Path) -> None:
    """Accepts that arrive while a commit is under way are committed together, in fewer transactions."""
    batches, ops = store.batches, store.batched_ops
    with write_locked(tmp_path / "s.db"):
        tasks = await handed_over([store.accept(make_event(), [make_delivery()], WEEK) for _ in range(100)])
        assert not any(t.done() for t in tasks)
    results = await asyncio.gather(*tasks)
    assert all(not r.duplicate and r.deliveries == 1 for r in results)
    assert store.batched_ops - ops == 100
    assert 1 <= store.batches - batches <= 2
    assert query(tmp_path / "s.db", "SELECT COUNT(*) FROM deliveries") == [(100,)]


async def test_group_commit_respects_its_maximum(tmp_path: Path) -> None:
    """A group never holds more than `group_commit_max` writes."""
    path = tmp_path / "s.db"
    s = SqliteStore(path, group_commit_max=10)
    await s.open()
    try:
        batches = s.batches
        with write_locked(path):
            tasks = await handed_over([s.accept(make_event(), [make_delivery()], WEEK) for _ in range(50)])
        await asyncio.gather(*tasks)
        assert 5 <= s.batches - batches <= 6
    finally:
        await s.close()


async def test_a_group_stores_plain_and_other_accepts_in_their_order(store: SqliteStore, tmp_path: Path) -> None:
    """Plain accepts (no dedup key or nonce) are inserted together, but around the other writes of their group in
    order: every event and delivery is stored, in the order a write at a time would give."""
    events = [make_event(dedup_key="k1" if i == 2 else None) for i in range(6)]
    deliveries = [[] if i == 4 else [make_delivery(conversation="c1", conversation_key="c1") if i == 3
                                     else make_delivery(), make_delivery()] for i in range(6)]
    with write_locked(tmp_path / "s.db"):
        tasks = await handed_over([store.accept(e, ds, WEEK) for e, ds in zip(events, deliveries, strict=True)])
    results = await asyncio.gather(*tasks)
    assert [(r.event_id, r.duplicate, r.deliveries) for r in results] == [
        (e.id, False, len(ds)) for e, ds in zip(events, deliveries, strict=True)]
    assert query(tmp_path / "s.db", "SELECT id FROM events ORDER BY rowid") == [(e.id,) for e in events]
    assert query(tmp_path / "s.db", "SELECT id FROM deliveries ORDER BY rowid") == [
        (d.id,) for ds in deliveries for d in ds]
    for e in events:
        assert await store.get_event(e.id) == e


def large(chars: int, key: str | None = None) -> tuple[Event, NewDelivery]:
    """An accept carrying about twice `chars` bytes: an event payload and a delivery body of `chars` each."""
    return make_event(dedup_key=key, text="p" * chars), make_delivery(body={"comment": "b" * chars})


async def test_a_burst_of_large_accepts_is_stored_in_groups_of_at_most_group_bytes(store: SqliteStore,
                                                                                  tmp_path: Path) -> None:
    """Accepts made together are grouped up to GROUP_BYTES of what they write, not only up to group_commit_max:
    accepts over a third of it each (event JSON and delivery body) go two to a group, one over the bound by itself
    goes alone, and every accept is stored in its order and answered once with its own result; a dedup key used
    again in a later group is still a duplicate of the first."""
    sixth = GROUP_BYTES // 6
    accepts = [large(sixth, "k"), large(sixth), large(sixth), large(GROUP_BYTES), large(sixth, "k"), large(10)]
    batches, ops = store.batches, store.batched_ops
    results = await asyncio.gather(*(store.accept(e, [d], WEEK) for e, d in accepts))
    assert (store.batches - batches, store.batched_ops - ops) == (4, 6)  # [1, 2], [3], [big], [duplicate, small]
    assert [(r.event_id, r.duplicate, r.deliveries) for r in results] == [
        (e.id, False, 1) for e, _ in accepts[:4]] + [(accepts[0][0].id, True, 0), (accepts[5][0].id, False, 1)]
    stored = [e for i, (e, _) in enumerate(accepts) if i != 4]
    assert query(tmp_path / "s.db", "SELECT id FROM events ORDER BY rowid") == [(e.id,) for e in stored]
    with pytest.raises(NotFound):
        await store.get_event(accepts[4][0].id)
    for i, (e, d) in enumerate(accepts):
        if i != 4:
            assert await store.get_event(e.id) == e
            assert (await store.get_delivery(d.id)).body == d.body


async def test_a_write_over_group_bytes_goes_alone_between_small_ones(store: SqliteStore) -> None:
    """A write larger than GROUP_BYTES by itself is a group of one, wherever it stands in the queue: the small
    writes before it make a group, and so do those after it."""
    accepts = [large(10), large(10), large(GROUP_BYTES // 2 + 1), large(10), large(10)]
    batches, ops = store.batches, store.batched_ops
    results = await asyncio.gather(*(store.accept(e, [d], WEEK) for e, d in accepts))
    assert (store.batches - batches, store.batched_ops - ops) == (3, 5)  # [small, small], [big], [small, small]
    assert [r.event_id for r in results] == [e.id for e, _ in accepts]


async def test_a_group_of_records_closes_at_group_bytes(store: SqliteStore) -> None:
    """A record weighs its texts (follow-up body, exchange, error, response excerpt): follow-ups whose bodies are
    each over a third of GROUP_BYTES go two to a group, and every one is written, once."""
    await asyncio.gather(*(accept_one(store) for _ in range(3)))
    items = (await store.claim("kapture-support", 3, "me", 30)).items
    assert len(items) == 3
    third = GROUP_BYTES // 3 + 1
    follow_ups = [msgspec.structs.replace(result(i.id, "succeeded"), role="follow_up", action="add_comment",
                                          body={"comment": str(n) * third}) for n, i in enumerate(items)]
    batches, ops = store.batches, store.batched_ops
    await asyncio.gather(*(store.record(f, owner="me") for f in follow_ups))
    assert (store.batches - batches, store.batched_ops - ops) == (2, 3)  # [1, 2], [3]
    for n, i in enumerate(items):
        detail = await store.get_delivery(i.id)
        assert (detail.delivery.status, [a.n for a in detail.attempts]) == ("succeeded", [1])
        assert detail.body == {"comment": str(n) * third}


async def test_the_event_loop_stays_responsive_during_a_burst_of_large_accepts(store: SqliteStore,
                                                                                 tmp_path: Path) -> None:
    """A group's statements run on the event loop's thread: 256 accepts of 1 MiB queued together (a burst of large
    mails, held up by another writer) are written in groups of GROUP_BYTES, so that no turn of the loop waits on
    more than a few of them. A ticker measures the longest gap between its turns from when they are all queued, in
    the process's CPU time (every thread's: the loop's, and the writer thread's, which holds the loop while it holds
    the GIL), which time other processes take from this one on a busy machine does not add to: a few milliseconds
    (30-45 ms when a full garbage collection falls in it); one group of them all held the loop for a few
    milliseconds per MiB, over half a second."""
    text = "p" * (512 * 1024)  # one string for every event and body: the test holds 256 MiB of encoded rows only
    accepts = [(make_event(text=text), make_delivery(body={"comment": text})) for _ in range(256)]
    gaps: list[float] = []
    stop = asyncio.Event()

    async def tick() -> None:
        last = time.process_time()
        while not stop.is_set():
            await asyncio.sleep(0)
            now = time.process_time()
            gaps.append(now - last)
            last = now

    batches = store.batches
    with write_locked(tmp_path / "s.db"):  # encoding the accepts is their callers' work, done before the ticker
        tasks = await handed_over([store.accept(e, [d], WEEK) for e, d in accepts])
        ticker = asyncio.create_task(tick())
        await eventually(lambda: len(gaps) > 0)
    try:
        results = await asyncio.gather(*tasks)
    finally:
        stop.set()
        await ticker
    assert [r.event_id for r in results] == [e.id for e, _ in accepts]
    assert max(gaps) < 0.2, f"the loop was held {max(gaps) * 1000:.0f} ms of CPU"
    assert store.batches - batches >= 128


@contextmanager
def adapted() -> Iterator[list[type]]:
    """The types of the values sqlite3 puts through its adaptation protocol meanwhile: a None, a bytes or a bool is
    looked up in its adapter registry and probed for `__adapt__` and `__conform__` before it is bound."""
    seen: list[type] = []
    kinds = (type(None), bytes, bool)
    for kind in kinds:
        sqlite3.register_adapter(kind, lambda value, kind=kind: seen.append(kind) or value)
    try:
        yield seen
    finally:
        for kind in kinds:
            del sqlite3.adapters[(kind, sqlite3.PrepareProtocol)]


async def test_an_ordinary_accept_binds_each_value_without_adapting_it(store: SqliteStore, tmp_path: Path) -> None:
    """The accept's rows bind only exact str, int and bytearray values, which need no adaptation (six per event
    before, about 3k instructions each): its JSON as bytearrays, its ordinary NULLs written by the statement. The
    rows read back as before, alone and grouped."""
    events = [make_event() for _ in range(3)]
    with adapted() as seen:
        await store.accept(events[0], [make_delivery()], WEEK)
        with write_locked(tmp_path / "s.db"):
            tasks = await handed_over([store.accept(e, [make_delivery()], WEEK) for e in events[1:]])
        await asyncio.gather(*tasks)
    assert seen == []
    assert query(tmp_path / "s.db", "SELECT typeof(data), typeof(dedup_key) FROM events") == [("blob", "null")] * 3
    assert query(tmp_path / "s.db", "SELECT typeof(body), typeof(options), typeof(last_error), typeof(conversation) "
                                    "FROM deliveries") == [("blob", "blob", "null", "null")] * 3
    for e in events:
        assert await store.get_event(e.id) == e


async def test_an_ordinary_record_binds_each_value_without_adapting_it(store: SqliteStore, tmp_path: Path) -> None:
    """An attempt's record (an ordinary success, and a retry with and without an answer) binds only values that need
    no adaptation (nine per success before, about 3k instructions each): its Nones written NULL by the statement,
    its exchange as a bytearray, its doubt flag as an int. Each column holds what it held before, of the same type."""
    ok, retried, failed = make_delivery(), make_delivery(), make_delivery()
    await accept_one(store, ok, retried, failed)
    assert len((await store.claim("kapture-support", 10, "w", 30)).items) == 3
    due = now_ms() + 60_000
    success = msgspec.structs.replace(result(ok.id, "succeeded", ticket_id="T-1"),
                                      exchange={"request": {"method": "POST"}})
    with adapted() as seen:
        await store.record(success, owner="w")
        await store.record(result(retried.id, "pending", http_status=503, classification="retry",
                                  error="HTTP 503", next_attempt_at_ms=due), owner="w")
        await store.record(result(failed.id, "pending", http_status=None, classification="retry",
                                  error="connection refused", next_attempt_at_ms=due), owner="w")
    assert seen == []
    columns = ("status, attempts, tries, next_attempt_at, lease_owner, lease_until, last_error, ticket_id, ticket_key, "
               "role, action, body, in_doubt_since, unknowns, duplicates")
    typed = ", ".join(f"typeof({c.strip()})" for c in columns.split(","))
    got = {r[0]: r[1:] for r in query(tmp_path / "s.db", f"SELECT id, {columns}, {typed} FROM deliveries")}
    assert got[ok.id][:15] == ("succeeded", 1, 1, got[ok.id][3], None, None, None, "T-1", None, None,
                               "create_ticket", got[ok.id][11], None, 0, 0)
    assert got[retried.id][:15] == ("pending", 1, 1, due, None, None, "HTTP 503", None, None, None, "create_ticket",
                                    got[retried.id][11], None, 0, 0)
    assert got[failed.id][6] == "connection refused"
    types = ("text", "integer", "integer", "integer", "null", "null")
    assert got[ok.id][15:] == (*types, "null", "text", "null", "null", "text", "blob", "null", "integer", "integer")
    assert got[retried.id][15:] == got[failed.id][15:] == (*types, "text", "null", "null", "null", "text", "blob",
                                                             "null", "integer", "integer")
    attempts = {r[0]: r[1:] for r in query(
        tmp_path / "s.db", "SELECT delivery_id, http_status, response_excerpt, error, exchange, typeof(n), "
                           "typeof(started_at), typeof(duration_ms), typeof(http_status), typeof(response_excerpt), "
                           "typeof(classification), typeof(error), typeof(exchange) FROM attempts")}
    assert attempts[ok.id] == (200, '{"status": "success"}', None, b'{"request":{"method":"POST"}}',
                               "integer", "integer", "real", "integer", "text", "text", "null", "blob")
    assert attempts[retried.id] == (503, '{"status": "success"}', "HTTP 503", None,
                                    "integer", "integer", "real", "integer", "text", "text", "text", "null")
    assert attempts[failed.id][:4] == (None, '{"status": "success"}', "connection refused", None)
    assert attempts[failed.id][7] == "null"


async def test_a_group_counts_its_conversations_in_arrival_order(store: SqliteStore, tmp_path: Path) -> None:
    """Plain accepts that join a conversation are counted in arrival order around the group's other writes: a
    message that restarts the conversation (past reopen_after) between two plain ones leaves it at two messages,
    as a write at a time would; counted out of order, the first plain one would land after the restart."""
    def joining(reopen_after_ms: int = 7 * 86_400_000) -> list[NewDelivery]:
        return [make_delivery(conversation="m|k", conversation_key="k", reopen_after_ms=reopen_after_ms)]

    accepts = [(make_event(), joining()), (make_event(dedup_key="restart"), joining(-1)), (make_event(), joining())]
    with write_locked(tmp_path / "s.db"):
        tasks = await handed_over([store.accept(e, ds, WEEK) for e, ds in accepts])
    assert [r.duplicate for r in await asyncio.gather(*tasks)] == [False, False, False]
    assert query(tmp_path / "s.db", "SELECT messages FROM conversations WHERE id = 'm|k'") == [(2,)]
    assert query(tmp_path / "s.db", "SELECT id FROM deliveries ORDER BY rowid") == [
        (ds[0].id,) for _e, ds in accepts]


async def test_a_failing_write_does_not_fail_its_group(store: SqliteStore, tmp_path: Path) -> None:
    """In a group, a write that fails is rolled back alone, as StoreUnavailable; the others commit."""
    good1, good2, bad = make_event(), make_event(), make_event()
    clash = make_delivery()
    with write_locked(tmp_path / "s.db"):
        tasks = await handed_over([
            store.accept(good1, [make_delivery()], WEEK),
            store.accept(bad, [clash, make_delivery(delivery_id=clash.id)], WEEK),
            store.accept(good2, [make_delivery()], WEEK),
        ])
    r1, r_bad, r2 = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(r_bad, StoreUnavailable)
    assert not isinstance(r1, BaseException)
    assert not isinstance(r2, BaseException)
    assert (r1.event_id, r2.event_id) == (good1.id, good2.id)
    assert await store.get_event(good1.id) == good1
    assert await store.get_event(good2.id) == good2
    with pytest.raises(NotFound):
        await store.get_event(bad.id)
    assert len(await store.list_deliveries(DeliveryFilter())) == 2


async def test_expired_nonces_are_swept_a_few_at_a_time(store: SqliteStore, tmp_path: Path) -> None:
    """Every NONCE_SWEEP_EVERY-th nonce recorded deletes up to NONCE_SWEEP expired ones, oldest first, and never
    a live one."""
    now, total = now_ms(), NONCE_SWEEP + 8
    with closing(sqlite3.connect(tmp_path / "s.db", timeout=10)) as conn, conn:
        conn.executemany("INSERT INTO nonces VALUES ('src', ?, 'd', ?)",
                         [(f"old-{i:02}", now - 100_000 + i) for i in range(total)] + [("live", now + 600_000)])

    def expired() -> list[str]:
        return sorted(str(r[0]) for r in query(tmp_path / "s.db", "SELECT nonce FROM nonces WHERE nonce LIKE 'old-%'"))

    await store.accept(make_event(source="src"), [], WEEK, nonce("fresh-0"))
    assert expired() == [f"old-{i:02}" for i in range(NONCE_SWEEP, total)]
    for n in range(1, NONCE_SWEEP_EVERY):
        await store.accept(make_event(source="src"), [], WEEK, nonce(f"fresh-{n}"))
    assert len(expired()) == 8
    await store.accept(make_event(source="src"), [], WEEK, nonce("fresh-last"))
    assert expired() == []
    assert query(tmp_path / "s.db", "SELECT count(*) FROM nonces") == [(NONCE_SWEEP_EVERY + 2,)]


async def test_a_removed_mappings_conversations_are_counted_from_an_index(store: SqliteStore, tmp_path: Path) -> None:
    """mapping_backlog's count of a mapping's recent conversations searches conversations_mapping (0018)."""
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        plan = " / ".join(r[3] for r in conn.execute(
            f"EXPLAIN QUERY PLAN {MAPPING_CONVERSATIONS.format('?', '?')}", ("m", 0)))
    assert "USING COVERING INDEX conversations_mapping (mapping=? AND last_message_at>?)" in plan, plan


async def test_a_conversations_head_and_waiting_are_found_without_walking_its_history(
        store: SqliteStore, tmp_path: Path) -> None:
    """The claim's head check and a listed delivery's `waiting` look up only the conversation's unsettled
    deliveries (the partial index deliveries_open_conversation), not every delivery it ever had."""
    queries = (f"SELECT id FROM deliveries d WHERE status = 'pending' AND destination = 'x' "
               f"AND next_attempt_at <= 0 AND {HEAD_OF_CONVERSATION} ORDER BY next_attempt_at, id LIMIT 10",
               f"SELECT {ROW_COLUMNS} FROM deliveries ORDER BY id DESC LIMIT 50")
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        for query in queries:
            plan = " / ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {query}"))
            assert "USING INDEX deliveries_open_conversation" in plan, plan


async def test_a_conversations_earlier_deliveries_are_read_by_arrival_from_an_index(
        store: SqliteStore, tmp_path: Path) -> None:
    """What compares a conversation's deliveries by arrival (the rowid) reads a range of an index by conversation,
    then rowid: the finished messages after a follow-up (which its count of messages takes off those the
    conversation holds, 0025, with its unfinished ones, 0028), deliveries_settled_conversation (0028); the first
    unfinished delivery (the head's first test, and `waiting`), deliveries_open_conversation, and one in
    flight, deliveries_sending_conversation (0028), so that the messages waiting behind the head are not read; the
    look-up of an earlier held create (the head's second test, and `waiting`), deliveries_held_create (0024), which
    holds the held creates alone, so that a thread without a ticket is not read back to its first message."""
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:
        counted = " / ".join(r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {TICKETS_OF_CLAIMED}(?)", ("x",)))
        head = " / ".join(r[3] for r in conn.execute(
            f"EXPLAIN QUERY PLAN SELECT id FROM deliveries d WHERE id = ? AND {HEAD_OF_CONVERSATION}", ("x",)))
        waiting = " / ".join(r[3] for r in conn.execute(
            f"EXPLAIN QUERY PLAN SELECT {ROW_COLUMNS} FROM deliveries WHERE id = ?", ("x",)))
    assert "USING INDEX deliveries_settled_conversation (conversation=? AND rowid>?)" in counted, counted
    for plan in (head, waiting):
        assert "USING INDEX deliveries_held_create (conversation=? AND rowid<?)" in plan, plan
    # the head's first test and `waiting` read the conversation's first unfinished delivery: the index's first
    # entry, no sort
    for plan in (head, waiting):
        assert "USING INDEX deliveries_open_conversation (conversation=?)" in plan and "TEMP B-TREE" not in plan, plan
    assert "USING INDEX deliveries_sending_conversation (conversation=?)" in head, head


async def test_marking_an_in_doubt_create_succeeded_sends_the_waiting_follow_up_at_once(store: SqliteStore) -> None:
    """A create in doubt, due again only much later, holds its conversation's next message back; marked succeeded
    by an operator, its lane is woken (as the server subscribes it) and the follow-up goes with the ticket given,
    without waiting for the create's due time or the poll."""
    create = make_delivery(destination="kapture", conversation="m|k", conversation_key="k")
    follow = make_delivery(destination="kapture", conversation="m|k", conversation_key="k")
    await accept_one(store, create)
    await accept_one(store, follow)
    await store.claim("kapture", 1, "w", 30)
    await store.record(result(create.id, "pending", http_status=None, classification="unknown",
                              next_attempt_at_ms=now_ms() + 3_600_000))
    assert (await row(store, follow.id)).waiting is True
    empty_claims: list[int | None] = []  # the lane found nothing due: asleep until the create's due time
    claim = store.claim

    async def claiming(*args: Any) -> ClaimBatch:
        batch = await claim(*args)
        if not batch.items:
            empty_claims.append(batch.next_due_ms)
        return batch

    store.claim = claiming  # type: ignore[method-assign]
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination()) as dispatcher:  # type: ignore[arg-type]
            await store.subscribe(lambda name: dispatcher.notify(set(dispatcher.lanes) if name == "*" else {name}))
            await eventually(lambda: bool(empty_claims))
            assert (empty_claims[0] or 0) > now_ms() + 3_000_000  # its next wake-up: the create's due time
            assert await mark_succeeded(store, create.id, "T-1", ticket_key=None, by="ops") is None
            await eventually(lambda: _status(store, follow.id), timeout=5.0)
        assert requests_to(m) == 1
    assert (await row(store, follow.id)).ticket_id == "T-1"


async def test_a_delivery_records_its_attempt_without_a_task_of_its_own(store: SqliteStore) -> None:
    """The dispatcher awaits the SQLite store's record as it is (Store.records_at_once), not through
    asyncio.shield, which would start a task per record."""
    _, [delivery_id] = await accept_one(store, make_delivery(destination="kapture"))
    loop = asyncio.get_running_loop()
    started: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        started.append(getattr(coro, "__qualname__", ""))
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    try:
        with aioresponses() as m:
            mock_vendor(m)
            async with running(store, destination()):  # type: ignore[arg-type]
                await eventually(lambda: _status(store, delivery_id))
    finally:
        loop.set_task_factory(None)
    assert "Lane._deliver" in started
    assert "SqliteStore.record" not in started


@pytest.mark.parametrize("cancelled", ["as it starts", "waiting for the writer"])
async def test_a_record_whose_sender_is_cancelled_meanwhile_is_done_in_full(store: SqliteStore, tmp_path: Path,
                                                                           cancelled: str) -> None:
    """A stop that cancels a delivery once the vendor has answered, as its record starts or while the record waits
    for the writer (the file locked by another process), leaves the record to be done all the same, in full: the
    answer the vendor gave is not lost."""
    _, [delivery_id] = await accept_one(store, make_delivery(destination="kapture"))
    record = store.record
    recording: list[str] = []

    def counting(result: AttemptResult, *, owner: str | None = None,
                 token: int | None = None) -> Coroutine[Any, Any, None]:
        recording.append(result.delivery_id)
        if cancelled == "as it starts":
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # lands at the record's first wait
        return record(result, owner=owner, token=token)

    store.record = counting  # type: ignore[method-assign]
    answer, hold, in_flight = gate()
    with aioresponses() as m:
        mock_vendor(m, payload={"status": "success", "ticket_id": "T-9"}, callback=hold)
        async with running(store, destination()) as dispatcher:  # type: ignore[arg-type]
            [lane] = dispatcher.lanes.values()
            await eventually(lambda: in_flight[0] == 1)  # claimed and sent
            [sending] = lane.inflight.values()
            with write_locked(tmp_path / "s.db"):
                answer.set()
                await eventually(lambda: recording == [delivery_id])
                await dispatcher.stop(0.0)
                assert sending.cancelled()
            await eventually(lambda: _status(store, delivery_id))
    got = await store.get_delivery(delivery_id)
    assert (got.delivery.attempts, got.delivery.ticket_id) == (1, "T-9")
    assert [(a.n, a.classification) for a in got.attempts] == [(1, "success")]
    assert query(tmp_path / "s.db", "SELECT lease_owner, lease_until FROM deliveries") == [(None, None)]


async def _status(store: SqliteStore, delivery_id: str) -> bool:
    return (await row(store, delivery_id)).status == "succeeded"


async def test_only_another_processes_commits_are_announced(tmp_path: Path) -> None:
    """A look at the file hears "*" once for each time another process (the CLI) committed since the last look,
    and nothing for the owner's own writes, reads, or another process's reads."""
    store = SqliteStore(tmp_path / "s.db", watch_s=3600)  # looked at here, not by its own timer
    await store.open()
    other = SqliteStore(tmp_path / "s.db", owner=False)
    try:
        heard: list[str] = []
        await store.subscribe(heard.append)
        _, [first] = await accept_one(store, make_delivery(destination="kapture"))
        await store.claim("kapture", 1, "w", 30)
        await store.record(result(first, "succeeded"))
        await other.open()
        await other.list_deliveries(DeliveryFilter())
        assert store.look_for_others() is False and heard == []
        assert await other.replay([first]) == [first]
        assert store.look_for_others() is True and heard == ["*"]
        assert store.look_for_others() is False and heard == ["*"]
        await accept_one(other, make_delivery(destination="kapture"))
        await accept_one(store, make_delivery(destination="kapture"))
        assert store.look_for_others() is True and heard == ["*", "*"]
    finally:
        await other.close()
        await store.close()


async def test_a_replay_by_another_process_is_sent_at_once(store: SqliteStore, tmp_path: Path) -> None:
    """A delivery replayed by the CLI on the store file, beside the running server, is sent again within the
    store's look at the file (every 0.1 s), not at the lane's next poll (an hour here)."""
    _, [delivery_id] = await accept_one(store, make_delivery(destination="kapture"))
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination()) as dispatcher:  # type: ignore[arg-type]
            await store.subscribe(lambda name: dispatcher.notify(set(dispatcher.lanes) if name == "*" else {name}))
            await eventually(lambda: _status(store, delivery_id))
            assert requests_to(m) == 1
            cli = SqliteStore(tmp_path / "s.db", owner=False)
            await cli.open()
            try:
                assert await cli.replay([delivery_id]) == [delivery_id]
            finally:
                await cli.close()
            await eventually(lambda: requests_to(m) == 2, timeout=5.0)
            await eventually(lambda: _status(store, delivery_id))


async def test_each_conversation_counts_the_deliveries_it_holds(store: SqliteStore, tmp_path: Path) -> None:
    """`conversations.stored` is the number of deliveries each conversation holds, after a burst of accepts stored
    together (chats, whose key only the provider writes, and email threads with other senders' messages split off
    to conversations of their own) and a purge of the settled ones' events."""
    await conversations_burst_and_purge(store)
    counted = query(tmp_path / "s.db", "SELECT conversation, count(*) FROM deliveries WHERE conversation IS NOT NULL "
                                       "GROUP BY conversation")
    stored = query(tmp_path / "s.db", "SELECT id, stored FROM conversations WHERE stored > 0")
    assert len(counted) > 4 and dict(stored) == dict(counted)


async def test_migration_0025_counts_the_deliveries_each_conversation_holds(tmp_path: Path) -> None:
    """A database from before 0025 (no `conversations.stored`): the migration counts each conversation's deliveries
    once, so that the follow-ups claimed after it count their messages as before (here the fourth of a thread, one
    more waiting behind it)."""
    path = tmp_path / "s.db"
    s = SqliteStore(path)
    await s.open()
    thread = [make_delivery(conversation="m|k", conversation_key="k") for _ in range(5)]
    try:
        for d in thread:
            await accept_one(s, d)
        for n, d in enumerate(thread[:3]):
            (got,) = (await s.claim("kapture-support", 10, "w", 30)).items
            assert got.id == d.id
            await s.record(msgspec.structs.replace(result(d.id, "succeeded", ticket_id="T-1"),
                                                   role="follow_up" if n else "create"))
        await accept_one(s, make_delivery(conversation="m|other", conversation_key="other"))
    finally:
        await s.close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("ALTER TABLE conversations DROP COLUMN stored")
        conn.execute("DELETE FROM schema_migrations WHERE version = 25")
    s = SqliteStore(path)
    await s.open()
    try:
        assert dict(query(path, "SELECT id, stored FROM conversations")) == {"m|k": 5, "m|other": 1}
        got = {c.id: c for c in (await s.claim("kapture-support", 10, "w", 30)).items}
        ticket = got[thread[3].id].ticket
        assert ticket is not None and ticket["messages"] == 4
    finally:
        await s.close()


async def test_a_message_accepted_behind_an_unfinished_one_is_stored_queued_by_its_insert(tmp_path: Path) -> None:
    """A message accepted while an earlier one of its conversation is unfinished is stored `queued` (migration 0028)
    by the accept's insert: its row is written once, not written again to queue it. Another conversation's first
    message is not queued; the head's record makes the next message the head."""
    s = SqliteStore(tmp_path / "s.db")
    await s.open()
    conn = s._writer
    assert conn is not None
    conn.execute("CREATE TEMP TABLE rewritten (id TEXT)")
    conn.execute("CREATE TEMP TRIGGER rewrite_counted AFTER UPDATE ON main.deliveries "
                 "BEGIN INSERT INTO rewritten VALUES (NEW.id); END")
    thread = [make_delivery(conversation="m|k", conversation_key="k") for _ in range(3)]
    other = make_delivery(destination="lsq-service", conversation="m|other", conversation_key="other")
    try:
        for d in (*thread, other):
            await accept_one(s, d)
        assert conn.execute("SELECT id FROM rewritten").fetchall() == []
        assert dict(conn.execute("SELECT id, queued FROM deliveries").fetchall()) == {
            thread[0].id: 0, thread[1].id: 1, thread[2].id: 1, other.id: 0}
        (head,) = (await s.claim("kapture-support", 10, "w", 30)).items
        assert head.id == thread[0].id
        await s.record(msgspec.structs.replace(result(head.id, "succeeded", ticket_id="T-1"), role="create"))
        assert dict(conn.execute("SELECT id, queued FROM deliveries WHERE status = 'pending'").fetchall()) == {
            thread[1].id: 0, thread[2].id: 1, other.id: 0}
    finally:
        await s.close()


async def test_migration_0028_queues_the_messages_waiting_in_each_conversation(tmp_path: Path) -> None:
    """A database from before 0028 (no `queued`, no `unsettled`, no triggers): the migration queues the pending
    messages stored behind an unfinished one and counts each conversation's unfinished messages, so that claims go
    on in arrival order, a follow-up counting its messages as before."""
    path = tmp_path / "s.db"
    s = SqliteStore(path)
    await s.open()
    thread = [make_delivery(conversation="m|k", conversation_key="k") for _ in range(4)]
    other = make_delivery(destination="lsq-service", conversation="m|other", conversation_key="other")
    try:
        for d in (*thread, other):
            await accept_one(s, d)
        assert [c.id for c in (await s.claim("kapture-support", 10, "w", 30)).items] == [thread[0].id]
        await s.record(msgspec.structs.replace(result(thread[0].id, "succeeded", ticket_id="T-1"), role="create"))
    finally:
        await s.close()
    with closing(sqlite3.connect(path)) as conn, conn:
        for trigger in ("joined", "finished", "reopened", "unfinished_deleted"):
            conn.execute(f"DROP TRIGGER deliveries_{trigger}")
        for index in ("due", "sending_conversation", "settled_conversation"):
            conn.execute(f"DROP INDEX deliveries_{index}")
        conn.execute("ALTER TABLE deliveries DROP COLUMN queued")
        conn.execute("CREATE INDEX deliveries_due ON deliveries (destination, next_attempt_at) "
                     "WHERE status = 'pending'")  # as before 0028, which makes it again
        conn.execute("ALTER TABLE conversations DROP COLUMN unsettled")
        conn.execute("DELETE FROM schema_migrations WHERE version = 28")
    s = SqliteStore(path)
    await s.open()
    try:
        assert dict(query(path, "SELECT id, unsettled FROM conversations")) == {"m|k": 3, "m|other": 1}
        assert dict(query(path, "SELECT id, queued FROM deliveries WHERE status = 'pending'")) == {
            thread[1].id: 0, thread[2].id: 1, thread[3].id: 1, other.id: 0}
        for n, d in enumerate(thread[1:], start=2):
            (got_one,) = (await s.claim("kapture-support", 10, "w", 30)).items
            assert got_one.id == d.id and got_one.ticket is not None and got_one.ticket["messages"] == n
            await s.record(result(d.id, "succeeded"))
    finally:
        await s.close()


async def test_a_conversation_made_before_the_sender_column_keeps_working(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 0017 on a store with conversations: their rows stay, without a first sender, and take the next
    message of any sender as before; a conversation opened afterwards keeps its first sender."""
    import types
    from importlib import resources

    from bridge.store import sqlite as sqlite_module

    folder = tmp_path / "sql"
    folder.mkdir()
    for script in resources.files("bridge.store.sql.sqlite").iterdir():
        if script.name.endswith(".sql") and not script.name.startswith("0017_"):
            (folder / script.name).write_text(script.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setattr(sqlite_module, "resources", types.SimpleNamespace(files=lambda _package: folder))
    path = tmp_path / "s.db"
    before = SqliteStore(path)
    await before.open()
    await before.close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("INSERT INTO conversations (id, key, mapping, destination, messages, started_at, "
                     "last_message_at, ticket_id, ticket_at) VALUES ('m|mail:old@x', 'mail:old@x', 'm', "
                     "'kapture-support', 1, ?1, ?1, 'T-1', ?1)", (int(time.time() * 1000),))
    monkeypatch.undo()
    s = SqliteStore(path)
    await s.open()
    try:
        assert query(path, "SELECT MAX(version) FROM schema_migrations") == [(shipped_scripts()[-1][0],)]
        later = make_delivery(conversation="m|mail:old@x", conversation_key="mail:old@x", sender="b@x.io",
                              sender_checked=True)
        await accept_one(s, later)
        (found,) = await s.get_conversations("mail:old@x")
        assert (found.conversation.messages, found.conversation.ticket_id, found.conversation.sender) == (
            2, "T-1", None)
        (got,) = (await s.claim("kapture-support", 10, "w", 30)).items
        assert got.id == later.id and got.ticket is not None and got.ticket["first_sender"] is None
        fresh = make_delivery(conversation="m|mail:new@x", conversation_key="mail:new@x", sender="a@x.io",
                              sender_checked=True)
        await accept_one(s, fresh)
        (new,) = await s.get_conversations("mail:new@x")
        assert new.conversation.sender == "a@x.io"
    finally:
        await s.close()


def dead(body: dict[str, Any] | None) -> NewDelivery:
    return make_delivery(body=body, status="dead", error="HTTP 500")


@contextmanager
def traced(store: SqliteStore) -> Iterator[list[tuple[int, str]]]:
    """Each statement the store's writer runs meanwhile, with the thread that runs it. SQLite reports each trigger a
    statement fires (migration 0028's, on a delivery's status) with the statement's own text again, its values
    filled in: such a repeat is the same statement, and left out."""
    seen: list[tuple[int, str]] = []
    assert store._writer is not None

    def trace(sql: str) -> None:
        if not seen or seen[-1] != (threading.get_ident(), sql):
            seen.append((threading.get_ident(), sql))

    store._writer.set_trace_callback(trace)
    try:
        yield seen
    finally:
        store._writer.set_trace_callback(None)


def transactions(seen: list[tuple[int, str]], marker: str) -> list[list[tuple[int, str]]]:
    """The statements starting with `marker` of each transaction that runs one, transaction by transaction."""
    out: list[list[tuple[int, str]]] = []
    for thread, sql in seen:
        if sql.startswith("BEGIN"):
            out.append([])
        elif sql.startswith(marker):
            out[-1].append((thread, sql))
    return [t for t in out if t]


REPLAYED = "UPDATE deliveries SET status = 'pending', tries = 0"


async def test_a_replay_writes_off_the_event_loop_in_parts_bounded_like_a_group(store: SqliteStore) -> None:
    """A replay's statements run on a worker thread, never the event loop's, in parts each committed by itself: at
    most group_commit_max deliveries, and at most group_bytes of new bodies (the first whatever its size), so that
    neither the loop nor the intake queued behind waits for the whole of a large replay."""
    store.group_commit_max = 4
    store.group_bytes = 100_000
    small = [dead({"title": str(n)}) for n in range(10)]
    await accept_one(store, *small)
    ids = [d.id for d in small]
    with traced(store) as seen:
        assert await store.replay(ids) == ids
    parts = transactions(seen, REPLAYED)
    loop_thread = threading.get_ident()
    assert {thread for p in parts for thread, _ in p}.isdisjoint({loop_thread})
    assert [len(p) for p in parts] == [4, 4, 2]

    large = [dead({"title": str(n)}) for n in range(5)]
    await accept_one(store, *large)
    ids = [d.id for d in large]
    new = {i: ({"comment": "x" * 45_000}, "v2") for i in ids}  # each about 45 kB encoded: two to a part
    with traced(store) as seen:
        assert await store.replay(ids, new) == ids
    parts = transactions(seen, REPLAYED)
    assert {thread for p in parts for thread, _ in p}.isdisjoint({loop_thread})
    assert [len(p) for p in parts] == [2, 2, 1]
    for i in ids:
        detail = await store.get_delivery(i)
        assert (detail.delivery.status, detail.delivery.mapping_version, detail.body) == ("pending", "v2", new[i][0])


async def test_a_replay_encodes_its_new_bodies_off_the_event_loop_each_once(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-rendered replay's new bodies are encoded by the part that writes them, on its worker thread, never on
    the event loop's (where 500 large ones held the loop for a third of a second), each once: one found not to fit
    its part is carried, encoded, to the next."""
    store.group_bytes = 100_000
    large = [dead({"title": str(n)}) for n in range(5)]
    await accept_one(store, *large)
    ids = [d.id for d in large]
    new = {i: ({"comment": "x" * 45_000}, "v2") for i in ids}  # each about 45 kB encoded: two to a part
    encoded: list[tuple[int, Any]] = []
    encode = sqlite_store._json_blob

    def noted(value: Any) -> bytearray:
        encoded.append((threading.get_ident(), value))
        return encode(value)

    monkeypatch.setattr(sqlite_store, "_json_blob", noted)
    with traced(store) as seen:
        assert await store.replay(ids, new) == ids
    assert [len(p) for p in transactions(seen, REPLAYED)] == [2, 2, 1]
    assert sorted(id(value) for _, value in encoded) == sorted(id(body) for body, _ in new.values())
    assert threading.get_ident() not in {thread for thread, _ in encoded}
    for i in ids:
        assert (await store.get_delivery(i)).body == new[i][0]


async def test_a_replay_encodes_and_writes_a_long_new_body_a_piece_at_a_time(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A re-rendered body's long strings (a large mail's text, quoted) are encoded PIECE_CHARS at a time and written
    into delivery_bodies so (incremental blob I/O), as a heavy accept's are: no one call holds the GIL for a whole
    body, however many large ones a replay writes (each was encoded and bound whole before). A body carried to the
    next part is written so too; a small one stays in its row. Each reads back as it was given."""
    monkeypatch.setattr(pieces, "PIECE_CHARS", 1000)
    store.group_bytes = 15_000
    olds = [dead({"title": str(n)}) for n in range(3)]
    await accept_one(store, *olds)
    ids = [d.id for d in olds]
    new = {ids[0]: ({"comment": "~" * 10_000}, "v2"), ids[1]: ({"comment": "~" * 10_000}, "v2"),
           ids[2]: ({"title": "small"}, "v2")}
    calls = encoded_calls(monkeypatch)
    with traced(store) as seen:
        assert await store.replay(ids, new) == ids
    assert [len(p) for p in transactions(seen, REPLAYED)] == [1, 2]  # the second body carried to the next part
    assert sum(call.count(b"~") for call in calls) == 20_000
    assert max(call.count(b"~") for call in calls) == 1000
    assert not [sql for _, sql in seen if "7E" * 1001 in sql.upper() or "~" * 1001 in sql]
    assert len([sql for _, sql in seen if "zeroblob(" in sql]) == 2
    for i in ids:
        detail = await store.get_delivery(i)
        assert (detail.delivery.status, detail.body) == ("pending", new[i][0])
    assert query(tmp_path / "s.db", "SELECT count(*) FROM delivery_bodies") == [(2,)]


INSERT_EVENT = "INSERT INTO events"


def on_loop(transactions_: list[list[tuple[int, str]]]) -> list[list[bool]]:
    """Each transaction's statements, as whether each ran on this (the event loop's) thread."""
    loop_thread = threading.get_ident()
    return [[thread == loop_thread for thread, _ in t] for t in transactions_]


async def test_an_accept_larger_than_a_group_is_written_off_the_event_loop_and_answered_once_committed(
        store: SqliteStore, tmp_path: Path) -> None:
    """An accept that encodes to more than group_bytes (a large mail, whose statements held the loop about 3 ms per
    MiB) is written by itself on a worker thread, while the small accepts queued around it are written on the loop's
    thread in groups of their own; each is answered only once its commit is done, as another connection sees."""
    store.group_bytes = 100_000
    accepts = [large(10), large(60_000), large(10)]
    with traced(store) as seen:
        results = await asyncio.gather(*(store.accept(e, [d], WEEK) for e, d in accepts))
    assert on_loop(transactions(seen, INSERT_EVENT)) == [[True], [False], [True]]
    assert [r.event_id for r in results] == [e.id for e, _ in accepts]
    event, delivery = large(60_000)
    with traced(store) as seen:
        assert (await store.accept(event, [delivery], WEEK)).event_id == event.id
        assert query(tmp_path / "s.db", f"SELECT id FROM events WHERE id = '{event.id}'") == [(event.id,)]
    assert on_loop(transactions(seen, INSERT_EVENT)) == [[False]]
    assert await store.get_event(event.id) == event
    assert (await store.get_delivery(delivery.id)).body == delivery.body


async def test_an_accept_of_an_event_made_from_a_large_request_is_encoded_and_written_off_the_event_loop(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event made from more than large_accept_bytes (`weight`: its request's body) is encoded and written on a
    worker thread, whatever it encodes to, its dedup key checked there; one made from less is encoded and written
    on the loop's thread, where a small write costs least."""
    store.large_accept_bytes = 1000
    encoded: list[int] = []
    encode = sqlite_store._json_blob

    def noted(value: Any) -> bytearray:
        encoded.append(threading.get_ident())
        return encode(value)

    monkeypatch.setattr(sqlite_store, "_json_blob", noted)
    heavy, light, again = make_event(dedup_key="k"), make_event(), make_event(dedup_key="k")
    with traced(store) as seen:
        first = await store.accept(heavy, [make_delivery()], WEEK, weight=1001)
        heavy_encodes = len(encoded)
        second = await store.accept(light, [make_delivery()], WEEK, weight=1000)
        duplicate = await store.accept(again, [make_delivery()], WEEK, weight=1001)
    assert (first.event_id, second.event_id, duplicate.event_id, duplicate.duplicate) == (
        heavy.id, light.id, heavy.id, True)
    assert on_loop(transactions(seen, INSERT_EVENT)) == [[False], [True]]
    loop_thread = threading.get_ident()
    assert heavy_encodes == 3  # the event, its delivery's body and options
    assert [t == loop_thread for t in encoded] == [False] * 3 + [True] * 3 + [False] * 3
    assert await store.get_event(heavy.id) == heavy


@contextmanager
def default_pool_taken(loop: asyncio.AbstractEventLoop, threads: int) -> Iterator[None]:
    """Each of the `threads` threads of the event loop's default executor held by work that waits until the block
    ends: a pool taken by slow work (DNS look-ups, reads, attachment saves)."""
    go, started = threading.Event(), threading.Semaphore(0)

    def held() -> None:
        started.release()
        go.wait()

    for _ in range(threads):
        loop.run_in_executor(None, held)
    for _ in range(threads):
        started.acquire()
    try:
        yield
    finally:
        go.set()


async def test_a_large_accept_is_written_on_the_stores_own_thread_while_the_default_pool_is_taken(
        tmp_path: Path) -> None:
    """A large accept's statements run on a thread of the store's own, not the loop's default pool, where slow work
    (DNS look-ups, reads) could keep them waiting with SQLite's write lock taken: every other write, and every
    other process's, would wait as long. Its BEGIN runs there too, once that thread has it, so the lock is taken
    only as its statements run. With the default pool taken, a large accept and a small one queued behind it are
    both answered."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=2))
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:
        store.large_accept_bytes = 1000
        heavy, light = make_event(text="h" * 2000), make_event()
        with traced(store) as seen, default_pool_taken(loop, 2):
            writes = [asyncio.ensure_future(store.accept(heavy, [make_delivery()], WEEK, weight=1001)),
                      asyncio.ensure_future(store.accept(light, [make_delivery()], WEEK))]
            await eventually(lambda: all(w.done() for w in writes))
        assert [w.result().event_id for w in writes] == [heavy.id, light.id]
        loop_thread = threading.get_ident()
        begins = [thread for thread, sql in seen if sql.startswith("BEGIN")]
        assert len(begins) == 2 and begins[0] != loop_thread and begins[1] == loop_thread
        assert {thread for thread, sql in seen if sql.startswith(INSERT_EVENT)} == {begins[0], loop_thread}
    finally:
        await store.close()


NESTED = {"a": [1, {"b": "x" * 40}], "c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": {"k": "deep " * 9}}}}}}}}}


def joined(encoded: bytearray | sqlite_store._Pieces) -> bytes:
    return bytes(encoded) if isinstance(encoded, bytearray) else b"".join(encoded.chunks)


@pytest.mark.parametrize("value", [
    {"text": "plain " * 10, "short": "ok", "none": None, "n": 3, "f": 1.5, "t": True},
    {"text": 'quotes " and \\ backslashes\n\t\x00\x1f, \u00e9t\u00e9, \u2603 and \U0001f600 ' * 3},
    ["a long item " * 5, ["and a nested " * 4], {"k": "in a dict " * 4}],
    NESTED,
    make_event(text="body " * 20, stripped_text="body " * 20, provider={"TextBody": "body " * 20}),
    {"exactly": "e" * 16, "over": "o" * 17},
    {"none": "long enough? no"},
])
def test_a_long_string_encoded_in_pieces_is_the_json_encoded_at_once(
        value: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each string longer than a piece, down to PIECE_DEPTH, is encoded a piece at a time, and the whole is the
    same JSON, byte for byte, as the value encoded at once: whatever it escapes (a quote, a control character),
    whatever its characters (a piece ends between two code points, never within one)."""
    monkeypatch.setattr(pieces, "PIECE_CHARS", 16)
    assert joined(sqlite_store._json_pieces(value)) == bytes(sqlite_store._json_blob(value))


def test_a_long_string_no_store_takes_is_refused_in_pieces_as_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text that is not UTF-8 (a lone surrogate) raises UnicodeEncodeError from its piece as from the whole value,
    so that intake stores the event again escaped."""
    monkeypatch.setattr(pieces, "PIECE_CHARS", 16)
    value = {"text": "fine " * 10 + "\udc80" + "fine " * 10}
    with pytest.raises(UnicodeEncodeError):
        sqlite_store._json_blob(value)
    with pytest.raises(UnicodeEncodeError):
        sqlite_store._json_pieces(value)


def encoded_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What each call to msgspec's encoder gives the SQLite store, from now on."""
    calls: list[bytes] = []
    encode_into, encode_piece = sqlite_store._encode_into, pieces._encode_piece

    def into(value: Any, buffer: bytearray, *offset: int) -> None:
        encode_into(value, buffer, *offset)
        calls.append(bytes(buffer))

    def piece(value: Any) -> bytes:
        calls.append(encode_piece(value))
        return calls[-1]

    monkeypatch.setattr(sqlite_store, "_encode_into", into)
    monkeypatch.setattr(pieces, "_encode_piece", piece)
    return calls


@pytest.mark.parametrize("key", [None, "k"])
async def test_a_heavy_accept_encodes_and_writes_its_long_strings_a_piece_at_a_time(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str | None) -> None:
    """msgspec holds the GIL for all of one call, and so does sqlite3 as it copies a value bound to a statement: a
    heavy accept's long text (a large mail's, kept in the event and quoted by a delivery's body) is encoded
    PIECE_CHARS at a time and written into its row so (incremental blob I/O), so that no one call holds the event
    loop for the whole of it (each value was encoded and bound at once before). It reads back as it was given,
    with a dedup key or without."""
    monkeypatch.setattr(pieces, "PIECE_CHARS", 1000)
    store.large_accept_bytes = 1000
    calls = encoded_calls(monkeypatch)
    heavy, delivery = make_event(text="~" * 10_000, dedup_key=key), make_delivery(body={"comment": "~" * 10_000})
    small = make_delivery(body={"title": "small"})
    with traced(store) as seen:
        assert (await store.accept(heavy, [delivery, small], WEEK, weight=20_000)).event_id == heavy.id
    assert sum(call.count(b"~") for call in calls) == 20_000
    assert max(call.count(b"~") for call in calls) == 1000
    # No statement was given the text whole (the trace shows each with its values: a blob as X'7E7E…').
    assert not [sql for _, sql in seen if "7E" * 1001 in sql.upper() or "~" * 1001 in sql]
    assert len([sql for _, sql in seen if "zeroblob(" in sql]) == 2  # the event's JSON, the long body
    assert await store.get_event(heavy.id) == heavy
    assert (await store.get_delivery(delivery.id)).body == delivery.body
    assert (await store.get_delivery(small.id)).body == small.body
    assert query(tmp_path / "s.db", "SELECT count(*) FROM delivery_bodies") == [(1,)]
    again = make_event(text="~" * 10_000, dedup_key=key)
    assert (await store.accept(again, [make_delivery()], WEEK, weight=20_000)).duplicate is (key is not None)


async def test_a_heavy_accept_whose_text_is_refused_stores_nothing_and_leaves_the_store_working(
        store: SqliteStore, tmp_path: Path) -> None:
    """Text that is not UTF-8 (a lone surrogate) raises UnicodeEncodeError from the worker thread that encodes it,
    as it does on the loop, so that intake stores the event again escaped: nothing of it is written, the store is
    not taken for failing, and the next accept is written."""
    store.large_accept_bytes = 0
    refused, fine = make_event(text="\udc80" * 10), make_event()
    with pytest.raises(UnicodeEncodeError):
        await store.accept(refused, [make_delivery()], WEEK, weight=1)
    assert (await store.accept(fine, [make_delivery()], WEEK, weight=1)).event_id == fine.id
    assert query(tmp_path / "s.db", "SELECT id FROM events") == [(fine.id,)]
    assert store.problem() is None


async def test_a_replay_counts_a_body_kept_in_its_row_before_0021_in_its_bound(store: SqliteStore,
                                                                              tmp_path: Path) -> None:
    """A large body stored in its row (before 0021 kept bodies apart) is written again with the row by a replay:
    its size is read first and bounds the parts as a new body's does. Such rows read and replay as before."""
    store.group_bytes = 100_000
    olds = [dead({"title": str(n)}) for n in range(3)]
    await accept_one(store, *olds)
    old_body = {"comment": "o" * 60_000}
    with closing(sqlite3.connect(tmp_path / "s.db")) as conn:  # as a version before 0021 stored them
        conn.executemany("UPDATE deliveries SET body = ? WHERE id = ?",
                         [(msgspec.json.encode(old_body), d.id) for d in olds])
        conn.commit()
    ids = [d.id for d in olds]
    with traced(store) as seen:
        assert await store.replay(ids) == ids
    assert [len(p) for p in transactions(seen, REPLAYED)] == [1, 1, 1]
    assert (await store.get_delivery(ids[0])).body == old_body
    claimed = (await store.claim("kapture-support", 10, "w", 30)).items
    assert {c.id: c.body for c in claimed} == {i: old_body for i in ids}


def wal_bytes(path: Path) -> int:
    return os.path.getsize(path.with_name(path.name + "-wal"))


async def test_a_status_change_does_not_write_a_large_body_again(store: SqliteStore, tmp_path: Path) -> None:
    """A body over BODY_INLINE is kept apart from its delivery's row: the claim, the record and the replay that
    change its status write a page or two each to the WAL, not the 900 kB body again (SQLite writes a row whole
    whenever one of its columns changes). Claimed, shown and replayed, the body is the one stored."""
    body = {"comment": os.urandom(450_000).hex()}  # 900 kB, incompressible
    d = make_delivery(body=body)
    await accept_one(store, d)
    path = tmp_path / "s.db"
    assert query(path, "PRAGMA wal_checkpoint(TRUNCATE)")[0][0] == 0  # the WAL emptied: what follows alone is in it
    assert wal_bytes(path) == 0
    [claimed] = (await store.claim("kapture-support", 10, "w", 30)).items
    assert claimed.body == body
    await store.record(result(d.id, "dead", http_status=422, classification="permanent", error="HTTP 422"),
                       owner="w")
    assert await store.replay([d.id]) == [d.id]
    assert wal_bytes(path) < 100_000, wal_bytes(path)
    assert (await store.get_delivery(d.id)).body == body
    assert query(path, "SELECT typeof(body) FROM deliveries") == [("null",)]
    assert query(path, "SELECT COUNT(*) FROM delivery_bodies") == [(1,)]


async def test_a_body_is_kept_apart_or_in_its_row_by_its_size_wherever_it_is_written(store: SqliteStore,
                                                                                      tmp_path: Path) -> None:
    """A body over BODY_INLINE is kept apart, one at most is kept in its row, whichever writes it (an accept, a
    replay's new body, a follow-up's record), a new one replacing the old wherever that was; a purge takes the
    bodies kept apart with their deliveries."""
    path = tmp_path / "s.db"
    big, small = {"comment": "b" * (BODY_INLINE + 1)}, {"comment": "s"}

    def kept(delivery_id: str) -> tuple[str, int]:
        [(inline, apart)] = query(path, f"SELECT typeof(body), (SELECT COUNT(*) FROM delivery_bodies b WHERE "
                                        f"b.id = d.id) FROM deliveries d WHERE id = '{delivery_id}'")
        return str(inline), int(str(apart))

    d = dead(big)
    event, _ = await accept_one(store, d)
    assert kept(d.id) == ("null", 1)
    assert await store.replay([d.id], {d.id: (small, "v2")}) == [d.id]
    assert kept(d.id) == ("blob", 0)
    assert (await store.get_delivery(d.id)).body == small
    await store.claim("kapture-support", 10, "w", 30)
    await store.record(result(d.id, "dead", http_status=422, classification="permanent", error="HTTP 422"),
                       owner="w")
    assert await store.replay([d.id], {d.id: (big, "v3")}) == [d.id]
    assert kept(d.id) == ("null", 1)
    assert (await store.get_delivery(d.id)).body == big
    await store.claim("kapture-support", 10, "w", 30)
    follow_up = msgspec.structs.replace(result(d.id, "succeeded"), role="follow_up", action="add_comment",
                                        body={"comment": "f" * (BODY_INLINE * 2)})
    await store.record(follow_up, owner="w")
    assert kept(d.id) == ("null", 1)
    assert (await store.get_delivery(d.id)).body == follow_up.body
    gone = await store.purge(Cutoffs(events_ms=now_ms() + 1), 100)
    assert (gone.events, gone.deliveries) == (1, 1)
    assert query(path, "SELECT COUNT(*) FROM delivery_bodies") == [(0,)]
    with pytest.raises(NotFound):
        await store.get_event(event.id)


async def test_a_replays_write_is_a_group_by_itself_between_the_writes_queued_around_it(
        store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued between other writes (here while another process holds the write lock), a replay's write goes by
    itself: the writes before it make a group, and so do those after it; each is answered with its own result."""
    d = dead({"title": "t"})
    await accept_one(store, d)
    groups: list[list[bool]] = []  # each group taken, as whether each of its writes runs off the loop
    take = store._take

    def taken() -> list[Any]:
        group = take()
        groups.append([op.off_loop for op in group])
        return group

    monkeypatch.setattr(store, "_take", taken)
    accepts = [make_event() for _ in range(3)]
    with write_locked(tmp_path / "s.db"):
        first = asyncio.create_task(store.accept(accepts[0], [make_delivery()], WEEK))
        await eventually(lambda: len(groups) == 1)  # taken, waiting for the lock
        before = asyncio.create_task(store.accept(accepts[1], [make_delivery()], WEEK))
        replay = asyncio.create_task(store.replay([d.id]))
        await eventually(lambda: len(store._pending) == 2)
        after = asyncio.create_task(store.accept(accepts[2], [make_delivery()], WEEK))
        await eventually(lambda: len(store._pending) == 3)
    results = await asyncio.gather(first, before, replay, after)
    assert [r.event_id for r in (results[0], results[1], results[3])] == [e.id for e in accepts]
    assert results[2] == [d.id]
    assert groups == [[False], [False], [True], [False]]


PURGED_EVENTS = "DELETE FROM events"
PURGED_ATTEMPTS = "DELETE FROM attempts WHERE delivery_id = "
PURGE_STATEMENTS = ("SELECT e.id", "SELECT a.started_at", "DELETE FROM", "SELECT c.id")


async def test_a_purge_deletes_off_the_event_loop_in_transactions_bounded_by_their_bytes(store: SqliteStore) -> None:
    """A purge's statements run on a worker thread, never the event loop's (where deleting 250 events of a 900 kB
    mail held it for seconds), each kind in a transaction of its own, and the events and attempts a transaction
    deletes stop at group_bytes of what they hold (the first whatever its size): the writes queued behind wait for a
    short transaction. Events kept (a pending delivery) are looked at and weigh nothing."""
    store.group_bytes = 100_000
    large = [make_delivery(body={"comment": "x" * 45_000}, status="succeeded") for _ in range(5)]
    for d in large[:2]:
        await accept_one(store, d)
    kept = make_delivery(body={"comment": "k" * 90_000})  # pending: kept
    await accept_one(store, kept)
    for d in large[2:]:
        await accept_one(store, d)
    tried = make_delivery()  # a delivery whose two attempts of 45 kB exchanges each are older than the cutoff
    await accept_one(store, tried)
    for n in range(5):
        await store.claim("kapture-support", 10, "w", 30)
        attempt = msgspec.structs.replace(result(tried.id, "pending", http_status=500, classification="retry"),
                                          exchange={"response": f"{n}" * 45_000})
        await store.record(attempt, owner="w")
    cutoff = now_ms() + 1
    with traced(store) as seen:
        counts = await purge_store(store, Cutoffs(events_ms=cutoff, attempts_ms=cutoff, dedup_ms=cutoff,
                                                  conversations_ms=cutoff), 100, pause_s=0)
    assert (counts.events, counts.deliveries, counts.attempts) == (5, 5, 4)
    loop_thread = threading.get_ident()
    purging = [(thread, sql) for thread, sql in seen if sql.startswith(PURGE_STATEMENTS)]
    assert purging
    assert {thread for thread, _ in purging}.isdisjoint({loop_thread})
    assert [len(p) for p in transactions(seen, PURGED_EVENTS)] == [2, 2, 1]
    assert [len(p) for p in transactions(seen, PURGED_ATTEMPTS)] == [2, 2]  # the latest attempt stays
    assert {r.id for r in await store.list_deliveries(DeliveryFilter())} == {kept.id, tried.id}


async def test_the_writer_thread_tries_begin_as_often_as_the_loop_does(store: SqliteStore, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """While another process holds the write lock, an off-loop write's BEGIN (on the store's writer thread) is tried
    again after 1, 2, 4 ... ms up to BUSY_DELAY_MAX, as a group's on the loop is, and goes through once the lock is
    given back."""
    monkeypatch.setattr(sqlite_store, "BUSY_DELAY_MAX", 0.004)
    waits: list[float] = []
    fifth = threading.Event()
    released = threading.Event()

    def sleep(delay: float) -> None:  # the writer thread's wait between two tries
        waits.append(delay)
        if len(waits) == 5:
            fifth.set()
            assert released.wait(timeout=10)

    assert store._writer is not None
    with write_locked(tmp_path / "s.db"):
        monkeypatch.setattr(sqlite_store.time, "sleep", sleep)
        written = asyncio.ensure_future(store._run_off_loop(store._writer, _one))
        assert await asyncio.to_thread(fifth.wait, 10)
    released.set()
    assert await written == 1
    store._writer.execute("ROLLBACK")
    assert waits == [0.001, 0.002, 0.004, 0.004, 0.004]


def _one(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT 1").fetchone()[0])


async def test_a_purge_beside_the_owner_leaves_it_the_writer_between_two_transactions(
        store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ticketbridge purge` beside a running server purges in short transactions and, after each, leaves the write
    lock free for longer than the server waits between two tries: a server's write that waited for one of them is
    stored before the purge's next transaction, rather than after the whole purge (intake's 202 took up to 4.5 s)."""
    cli = SqliteStore(tmp_path / "s.db", owner=False)
    await cli.open()
    try:
        cli.group_bytes = 100_000
        for _ in range(4):
            await accept_one(store, make_delivery(body={"comment": "x" * 45_000}, status="succeeded"))
        order: list[tuple[str, str]] = []
        assert store._writer is not None and cli._writer is not None
        store._writer.set_trace_callback(lambda sql: order.append(("server", sql)))
        cli._writer.set_trace_callback(lambda sql: order.append(("cli", sql)))
        loop = asyncio.get_running_loop()
        refused = threading.Semaphore(0)  # released at each of the server's tries of BEGIN the lock refuses
        begin = store._begin

        class Tried:
            def __init__(self, conn: sqlite3.Connection) -> None:
                self.conn = conn

            def execute(self, sql: str) -> sqlite3.Cursor:
                try:
                    return self.conn.execute(sql)
                except sqlite3.OperationalError:
                    refused.release()
                    raise

        async def noted(conn: sqlite3.Connection) -> None:
            await begin(Tried(conn))  # type: ignore[arg-type]

        monkeypatch.setattr(store, "_begin", noted)
        late = make_event()
        stored: list[asyncio.Task[Any]] = []
        purge_events = sqlite_store._purge_events

        def purging(*args: Any, **kw: Any) -> Any:
            if not stored:  # the purge's first transaction holds the lock: the server's write waits for it, until
                # its tries are BUSY_DELAY_MAX apart (after 1, 2, 4 ... 32 ms)
                loop.call_soon_threadsafe(lambda: stored.append(asyncio.ensure_future(
                    store.accept(late, [make_delivery()], WEEK))))
                for _ in range(8):
                    assert refused.acquire(timeout=10)
            return purge_events(*args, **kw)

        monkeypatch.setattr(sqlite_store, "_purge_events", purging)
        counts = await purge_store(cli, Cutoffs(events_ms=now_ms() + 1), 100, pause_s=0)
        assert counts.events == 4
        await stored[0]
    finally:
        await cli.close()
    steps = [(who, sql) for who, sql in order if sql.startswith((PURGED_EVENTS, "INSERT INTO events"))]
    assert [who for who, _ in steps] == ["cli", "cli", "server", "cli", "cli"]


def _pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The positive delays asyncio.sleep is asked for from now on (each still slept)."""
    delays: list[float] = []
    sleep = asyncio.sleep

    async def noted(delay: float, *args: Any) -> Any:
        if delay > 0:
            delays.append(delay)
        return await sleep(delay, *args)

    monkeypatch.setattr(asyncio, "sleep", noted)
    return delays


async def test_a_purge_with_no_server_running_commits_its_transactions_back_to_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pause a store beside the owner leaves after each commit is for an owner waiting for the write lock: with
    no server holding the store (its lock file left by one that stopped, or none at all), `ticketbridge purge` runs
    its transactions back to back (it took 44.7 s rather than 5.5 on 20,000 small events). A server started
    meanwhile is looked for again (at most every OWNER_LOOK_SECONDS: here every time) and then handed the lock."""
    path = tmp_path / "s.db"
    earlier = SqliteStore(path)  # a server that ran and stopped: its lock file stays
    await earlier.open()
    await earlier.close()
    cli = SqliteStore(path, owner=False)
    await cli.open()
    try:
        cli.group_bytes = 100_000
        for _ in range(4):
            await accept_one(cli, make_delivery(body={"comment": "x" * 45_000}, status="succeeded"))
        pauses = _pauses(monkeypatch)
        counts = await purge_store(cli, Cutoffs(events_ms=now_ms() + 1), 100, pause_s=0)
        assert counts.events == 4
        assert pauses == []
        monkeypatch.setattr(sqlite_store, "OWNER_LOOK_SECONDS", 0.0)
        server = SqliteStore(path)
        await server.open()
        try:
            for _ in range(4):
                await accept_one(server, make_delivery(body={"comment": "x" * 45_000}, status="succeeded"))
            counts = await purge_store(cli, Cutoffs(events_ms=now_ms() + 1), 100, pause_s=0)
            assert counts.events == 4
            assert pauses and all(0 < p <= sqlite_store.HAND_OVER_SECONDS for p in pauses)
        finally:
            await server.close()
    finally:
        await cli.close()


async def test_a_server_starting_while_a_cli_looks_for_it_still_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CLI's look for an owner holds the lock file's lock shared for a moment: a server starting right then finds
    it taken, tries again, and starts, rather than refusing to as though another server held the store."""
    path = tmp_path / "s.db"
    earlier = SqliteStore(path)
    await earlier.open()
    await earlier.close()
    look = os.open(path.with_name(path.name + ".lock"), os.O_RDONLY)
    fcntl.flock(look, fcntl.LOCK_SH | fcntl.LOCK_NB)  # a CLI looking, as the server tries its lock
    flock = fcntl.flock
    refused = []

    def trying(fd: int, operation: int) -> None:
        try:
            flock(fd, operation)
        except BlockingIOError:
            refused.append(fd)
            flock(look, fcntl.LOCK_UN)  # the look is over
            os.close(look)
            raise

    monkeypatch.setattr(fcntl, "flock", trying)
    server = SqliteStore(path)
    await server.open()
    try:
        assert len(refused) == 1
        await accept_one(server)
    finally:
        await server.close()


def decoded_pieces(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes]]:
    """Each string piece the stores give msgspec to decode from now on (pieces.decode_in_pieces), with its thread."""
    calls: list[tuple[int, bytes]] = []
    decode = pieces._decode_str

    def noted(piece: Any) -> Any:
        calls.append((threading.get_ident(), bytes(piece)))
        return decode(piece)

    monkeypatch.setattr(pieces, "_decode_str", noted)
    return calls


async def test_a_large_event_is_read_back_and_decoded_a_piece_at_a_time(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large mail's event, read back for each follow-up of its thread, is read from its row a piece at a time
    (blob I/O) and its long strings decoded a piece at a time: fetched in its row and decoded in one call, 60 MiB
    held the GIL, and so the loop, some 200 ms. A small one is read and decoded at once."""
    monkeypatch.setattr(sqlite_store, "DECODE_AT_ONCE_BYTES", 1000)
    monkeypatch.setattr(pieces, "DECODE_AT_ONCE_BYTES", 1000)
    monkeypatch.setattr(pieces, "PIECE_CHARS", 1000)
    monkeypatch.setattr(pieces, "_PROBE_BYTES", 100)
    read: list[int] = []
    blob_read = sqlite_store._blob_read

    def noted(conn: sqlite3.Connection, *where: Any) -> bytes:
        data = blob_read(conn, *where)
        read.append(len(data))
        return data

    monkeypatch.setattr(sqlite_store, "_blob_read", noted)
    monkeypatch.setattr(sqlite_store, "PIECE_READ_BYTES", 1000)
    large = make_event(text="~" * 5000, stripped_text="~" * 5000, provider={"TextBody": "~" * 5000})
    small = make_event(text="~" * 100)
    await accept_one(store, event=large)
    await accept_one(store, event=small)
    calls = decoded_pieces(monkeypatch)
    assert await store.get_event(large.id) == large
    assert len(read) == 1 and read[0] > 15_000
    assert max(piece.count(b"~") for _, piece in calls) == 1000  # a piece (and the next one looked at) at most
    calls.clear()
    assert await store.get_event(small.id) == small
    assert (calls, len(read)) == ([], 1)
    with pytest.raises(NotFound):
        await store.get_event("evt_none")


async def test_a_last_slice_whose_conversation_row_is_gone_reads_without_its_count(
        store: SqliteStore, tmp_path: Path) -> None:
    """Deliveries whose conversation row is missing (nothing ties them: a row removed by hand, a store restored in
    part) are still read as the conversation's last slice, with how many come before them unknown (None), rather
    than failing the page."""
    ids = []
    for _ in range(3):
        d = make_delivery(conversation="m|k", conversation_key="k")
        await accept_one(store, d)
        ids.append(d.id)
    with closing(sqlite3.connect(store.path)) as conn, conn:
        conn.execute("DELETE FROM conversations WHERE id = 'm|k'")
    tail = await store.conversation_slice("m|k", 2, last=True)
    assert ([d.id for d in tail.deliveries], tail.earlier, tail.ahead) == (ids[1:], True, None)
