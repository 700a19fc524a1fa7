"""The SQLite store under faults: its file deleted or replaced while open, and a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge.errors import StoreLocked, StoreRefused, StoreUnavailable
from bridge.store.base import DeliveryFilter, StoreProblem
from bridge.store.sqlite import SqliteStore
from tests.faults import fill, tiny_disk
from tests.integration.store.contract import WEEK, accept_one, make_delivery, make_event

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "data" / "s.db")
    await opened.open()
    yield opened
    await opened.close()


def event_ids(path: Path) -> set[str]:
    """The events a store file holds, read with plain sqlite3."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {r[0] for r in conn.execute("SELECT id FROM events")}


async def lost_signalled(store: SqliteStore) -> bool:
    """Whether wait_lost has returned: the store signals before it answers the write that found the loss."""
    waiter = asyncio.ensure_future(store.wait_lost())
    for _ in range(3):
        await asyncio.sleep(0)
    done = waiter.done()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    return done


def kind(problem: StoreProblem | None) -> str | None:
    return None if problem is None else problem.kind


async def test_a_deleted_file_refuses_every_write_and_is_restored_in_place(store: SqliteStore) -> None:
    """After its file is deleted the next commit fails, later writes fail at once, and the data comes back."""
    first, _ = await accept_one(store, make_delivery())
    store.path.unlink()
    with capture_logs() as logs:
        with pytest.raises(StoreUnavailable, match="was deleted"):
            await accept_one(store, make_delivery())
        with pytest.raises(StoreUnavailable, match="store is lost"):
            await store.claim("kapture-support", 10, "w", 30)
    assert kind(store.problem()) == "lost"
    assert await lost_signalled(store)
    assert [e["path"] for e in logs if e["event"] == "store.lost"] == [str(store.path)]
    [saved] = [e for e in logs if e["event"] == "store.salvaged"]
    assert (saved["path"], saved["restored"]) == (str(store.path), True)
    assert "deleted" in await store.wait_lost()
    await store.close()
    assert event_ids(store.path) == {first.id}


async def test_every_accept_answered_after_the_deletion_fails_and_every_success_is_kept(store: SqliteStore) -> None:
    """Writes racing the deletion: each one that succeeded is in the restored file; each begun after it failed."""
    ok: list[str] = []
    failed_after: list[bool] = []
    deleted = asyncio.Event()

    async def one(i: int) -> None:
        event = make_event(n=i)
        begun_after = deleted.is_set()
        try:
            await store.accept(event, [make_delivery()], WEEK)
        except StoreUnavailable:
            failed_after.append(begun_after)
            return
        assert not begun_after, "a write begun after the deletion was committed"
        ok.append(event.id)

    tasks = [asyncio.create_task(one(i)) for i in range(100)]
    while len(ok) < 20 and not all(t.done() for t in tasks):
        await asyncio.sleep(0)
    assert len(ok) >= 20
    store.path.unlink()
    deleted.set()
    tasks += [asyncio.create_task(one(i)) for i in range(100, 200)]
    await asyncio.gather(*tasks)
    assert failed_after.count(True) == 100
    await store.close()
    assert set(ok) <= event_ids(store.path)


async def test_the_file_is_checked_per_group_commit_not_per_write(store: SqliteStore,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Watching for a deleted file costs two os.stat per group commit (before and after COMMIT), however many
    writes the group holds."""
    real_stat = os.stat
    calls = 0

    def counting(*args: Any, **kwargs: Any) -> os.stat_result:
        nonlocal calls
        calls += 1
        return real_stat(*args, **kwargs)

    groups = store.batches
    monkeypatch.setattr(os, "stat", counting)
    await asyncio.gather(*(accept_one(store, make_delivery(), event=make_event(n=i)) for i in range(200)))
    monkeypatch.undo()
    groups = store.batches - groups
    assert groups <= 20
    assert calls == 2 * groups


async def test_a_replaced_file_is_kept_and_the_lost_data_saved_beside_it(store: SqliteStore) -> None:
    """A file put in the store's place is never overwritten: the lost database is saved as <name>.lost-<time>."""
    first, _ = await accept_one(store, make_delivery())
    store.path.unlink()
    store.path.write_bytes(b"the operator's file")
    with pytest.raises(StoreUnavailable, match="replaced"):
        await accept_one(store, make_delivery())
    await store.close()
    assert store.path.read_bytes() == b"the operator's file"
    [saved] = store.path.parent.glob("s.db.lost-*")
    assert event_ids(saved) == {first.id}


async def test_check_finds_a_deleted_file_without_any_write(store: SqliteStore) -> None:
    """/readyz's check sees the loss at once, even when nothing has been written since."""
    await accept_one(store, make_delivery())
    assert await store.check() is None
    store.path.unlink()
    assert store.problem() is None  # not seen yet: nothing was committed
    problem = await store.check()
    assert problem is not None
    assert problem.kind == "lost"
    assert str(store.path) in problem.reason
    assert store.path.exists()


async def test_when_the_data_cannot_be_saved_the_store_stays_up_refusing_work(tmp_path: Path) -> None:
    """A failed salvage leaves the process as the only holder of the data: it refuses writes, names the orphan
    to copy, and does not ask to stop."""
    folder = tmp_path / "data"
    store = SqliteStore(folder / "s.db")
    await store.open()
    try:
        await accept_one(store, make_delivery())
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
        folder.write_text("not a folder")  # so the lost database cannot be written back there
        with capture_logs() as logs, pytest.raises(StoreUnavailable, match="deleted"):
            await accept_one(store, make_delivery())
        assert kind(store.problem()) == "lost"
        assert not await lost_signalled(store)
        [failed] = [e for e in logs if e["event"] == "store.salvage_failed"]
        assert failed["orphan"] is not None
        assert failed["orphan"].startswith("/proc/")
        with open(failed["orphan"], "rb") as orphan:  # noqa: ASYNC230 - 16 bytes of a local file
            assert orphan.read(16) == b"SQLite format 3\0"
    finally:
        await store.close()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with tiny_disk(tmp_path / "tiny") as mount:
        yield mount


async def test_a_full_disk_is_reported_while_commits_fail_and_clears_when_they_succeed(disk: Path) -> None:
    """On a full disk commits fail and the store says `failing`; once space is back, check() finds it healthy."""
    store = SqliteStore(disk / "s.db")
    await store.open()
    try:
        await accept_one(store, make_delivery())
        filler = fill(disk)
        with capture_logs() as logs:
            for _ in range(2):
                with pytest.raises(StoreUnavailable, match="full"):
                    await accept_one(store, make_delivery(), event=make_event(text="x" * 50_000))
            problem = await store.check()
        assert problem is not None
        assert problem.kind == "failing"
        assert "full" in problem.reason
        assert store.commit_failures >= 2
        assert [e["event"] for e in logs].count("store.failing") == 1
        filler.unlink()
        with capture_logs() as logs:
            assert await store.check() is None
        assert [e["event"] for e in logs] == ["store.recovered"]
        await accept_one(store, make_delivery(), event=make_event(text="x" * 50_000))
        assert len(await store.list_deliveries(DeliveryFilter())) == 2
    finally:
        await store.close()


async def test_an_accept_past_sqlites_length_limit_is_refused_alone_and_the_store_stays_healthy(
    store: SqliteStore,
) -> None:
    """An event whose data is past SQLITE_LIMIT_LENGTH (lowered on the writer to 4,000 bytes: "string or blob too
    big", sqlite3.DataError) is refused for its data: StoreRefused, never counted as a failing store; accepts in the
    same group are stored, and so is the next one."""
    assert store._writer is not None
    store._writer.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 4000)
    big = make_event(subject="x" * 5000)
    with capture_logs() as logs:
        with pytest.raises(StoreRefused, match=r"string or blob too big \(DataError\)"):
            await store.accept(big, [make_delivery()], WEEK)
        others = [make_event(dedup_key=f"ok-{i}") for i in range(3)]
        results = await asyncio.gather(
            store.accept(others[0], [make_delivery()], WEEK), store.accept(make_event(subject="y" * 5000), [], WEEK),
            *(store.accept(e, [make_delivery()], WEEK) for e in others[1:]), return_exceptions=True)
    assert isinstance(results[1], StoreRefused)
    assert [r.event_id for r in results if not isinstance(r, BaseException)] == [e.id for e in others]
    assert "store.failing" not in [e["event"] for e in logs]
    assert (store.problem(), store.commit_failures) == (None, 0)
    await accept_one(store)
    assert len(await store.list_deliveries(DeliveryFilter())) == 4


async def test_an_int_past_64_bits_is_refused_not_raised_as_it_is(store: SqliteStore) -> None:
    """A number SQLite cannot hold (an int past 64 bits: OverflowError from the sqlite3 module) is a refusal of the
    data, StoreRefused, not an exception the caller knows nothing of; the store stays healthy."""
    delivery = make_delivery(conversation="contact-to-kapture|key:1", conversation_key="key:1", reopen_after_ms=2**70)
    with pytest.raises(StoreRefused, match="too large"):
        await store.accept(make_event(), [delivery], WEEK)
    assert (store.problem(), store.commit_failures) == (None, 0)


async def test_no_constraint_waits_for_commit_so_a_refusal_is_always_one_writes(store: SqliteStore) -> None:
    """Every constraint of the schema is checked when its statement runs, never at COMMIT: no foreign key is
    DEFERRABLE, `defer_foreign_keys` is off, and SQLite checks NOT NULL, CHECK and UNIQUE per statement. So a group
    commit's COMMIT cannot raise IntegrityError for one request's rows: a refusal is raised by that write's own
    statement, inside its savepoint, and refuses it alone (an attempt naming no stored delivery shows it)."""
    assert store._writer is not None
    schema = " ".join(r[0] for r in store._writer.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL"))
    assert "REFERENCES" in schema and "DEFERR" not in schema.upper()
    assert store._writer.execute("PRAGMA defer_foreign_keys").fetchone() == (0,)
    with contextlib.closing(sqlite3.connect(store.path, isolation_level=None)) as conn:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):  # the statement, not the COMMIT
            conn.execute("INSERT INTO attempts (delivery_id, n, started_at, duration_ms, classification) "
                         "VALUES ('dlv_none', 1, 0, 0, 'success')")
        conn.execute("ROLLBACK")


NAMED_BY = "the file named by ${BRIDGE_DB}"
"""How a store file given by an environment variable is named (Config.shown_store_file)."""


async def test_a_file_taken_from_a_variable_is_named_by_it_when_lost_replaced_or_locked(tmp_path: Path) -> None:
    """A store whose path came from `${BRIDGE_DB}` names itself by that variable in what it says of a lost file (the
    error, /readyz's reason, the log lines) and of another process holding it, and names the copy it saved beside
    the file by what it adds to the name: never by the path, which may say more than the operator chose to show."""
    secret = tmp_path / "hunter2-secret"
    store = SqliteStore(secret / "s.db", shown=NAMED_BY)
    await store.open()
    try:
        with pytest.raises(StoreLocked) as locked:
            await SqliteStore(secret / "s.db", shown=NAMED_BY).open()
        assert str(locked.value).startswith(f"{NAMED_BY} is in use by another ticketbridge process (pid ")
        await accept_one(store, make_delivery())
        store.path.unlink()
        store.path.write_bytes(b"the operator's file")
        with capture_logs() as logs, pytest.raises(StoreUnavailable) as lost:
            await accept_one(store, make_delivery())
        reason = await store.wait_lost()
        problem = store.problem()
    finally:
        await store.close()
    assert problem is not None
    assert f"{NAMED_BY} was replaced by another file while the store was open" in str(lost.value)
    assert f"{NAMED_BY} was replaced" in problem.reason
    assert f"what it held was saved to {NAMED_BY}, with '.lost-" in reason
    assert [e["path"] for e in logs if e["event"] == "store.lost"] == [NAMED_BY]
    [saved] = [e for e in logs if e["event"] == "store.salvaged"]
    assert saved["path"].startswith(f"{NAMED_BY}, with '.lost-") and saved["restored"] is False
    said = " ".join([str(locked.value), str(lost.value), problem.reason, reason, repr(logs)])
    assert "hunter2" not in said, said
