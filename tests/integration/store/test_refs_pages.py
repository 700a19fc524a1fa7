"""Retention's attachment scan on SQLite and PostgreSQL reads the events a page at a time, each page bounded by its
events' bytes as well as their number: the memory it holds stays a page's whatever the events' sizes, and every event
before the cutoff is looked through once, pages ending between events received at the same time."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import msgspec
import pytest

from bridge.store import postgres, sqlite
from bridge.store.base import Store
from bridge.store.rows import REFS_PAGE_BYTES, encode
from tests.allocations import peak_of
from tests.integration.store.contract import WEEK, make_event
from tests.integration.store.large_values import ATTACHMENTS, sha_of, stored_under_a_mib
from tests.spies import calls_through

pytestmark = pytest.mark.integration

LARGE_EVENTS = 40
"""Events just under DECODE_AT_ONCE_BYTES scanned by the memory test: 37 MiB, over four times REFS_PAGE_BYTES."""


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> tuple[Store, ModuleType, str]:
    """The store, its module (whose bounds a test sets) and the name of its method that runs a page's statement."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_store"), sqlite, "_read"
    return request.getfixturevalue("pg_store"), postgres, "_run"


async def test_a_scan_of_large_events_holds_a_page_of_their_bytes_at_most(
        backend: tuple[Store, ModuleType, str]) -> None:
    """The scan of 40 events just under 1 MiB each holds less than twice REFS_PAGE_BYTES at once (PostgreSQL: a
    page's rows, 10.8 MiB; SQLite, whose rows are let go one by one: one of them, 1 MiB): a page of REFS_PAGE events
    held them all, 37 MiB here and up to 2 GiB in a store of large mails (asyncpg's fetch, SQLite's fetchall). Each
    event's attachment is found."""
    store, _module, _run = backend
    stored = sum(len(encode(e)) for e in await stored_under_a_mib(store, LARGE_EVENTS))
    assert stored > 4 * REFS_PAGE_BYTES
    refs, peak = await peak_of(lambda: store.attachment_refs(2 ** 62))
    assert refs == {sha_of(n) for n in range(LARGE_EVENTS)}
    assert peak < 2 * REFS_PAGE_BYTES, f"peak {peak / 2 ** 20:.1f} MiB"


TIED = 7
"""Events received in the same millisecond, between two received before them and one after."""


def tied_events() -> list[Any]:
    """Ten events of the same size, each naming an attachment of its own, oldest first: two received a second
    before the TIED ones, which share their time, and one a second after."""
    at = datetime(2026, 11, 2, 9, 30, 0, 123000, tzinfo=UTC)
    times = [at - timedelta(seconds=1)] * 2 + [at] * TIED + [at + timedelta(seconds=1)]
    return [msgspec.structs.replace(make_event(pad="p" * 3000, attachments=[{**ATTACHMENTS[0], "sha256": sha_of(n)}]),
                                    received_at=t) for n, t in enumerate(times)]


@pytest.fixture
def scanned(backend: tuple[Store, ModuleType, str], monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times each attachment was found in an event looked through."""
    found: Counter[str] = Counter()
    hashes = [sha_of(n).encode() for n in range(len(tied_events()))]
    calls_through(monkeypatch, backend[1], "attachment_hashes", lambda data: found.update(
        h.decode() for h in hashes if h in data))
    return found


@pytest.mark.parametrize("bound", ["bytes", "rows"])
async def test_pages_ending_among_events_received_at_the_same_time_look_through_each_once(
        backend: tuple[Store, ModuleType, str], scanned: Counter[str], bound: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With pages of three events, cut by their bytes (REFS_PAGE_BYTES two and a half events') or by their number
    (REFS_PAGE), two of the four pages end among the seven events received in one millisecond: the scan looks
    through each of the ten events once, and finds every attachment."""
    store, module, run = backend
    events = tied_events()
    for e in events:
        await store.accept(e, [], WEEK)
    sizes = {len(encode(e)) for e in events}
    assert len(sizes) == 1
    if bound == "bytes":
        monkeypatch.setattr(module, "REFS_PAGE_BYTES", sizes.pop() * 5 // 2)
    else:
        monkeypatch.setattr(module, "REFS_PAGE", 3)
    pages: list[object] = []
    calls_through(monkeypatch, store, run, lambda *_args, **_kw: pages.append(None))
    assert await store.attachment_refs(2 ** 62) == {sha_of(n) for n in range(len(events))}
    assert scanned == Counter({sha_of(n): 1 for n in range(len(events))})
    assert len(pages) == 4


class _Asked:
    """A connection that notes the LIMIT each page of the scan asks for (REFS_PAGE_SQL's $4)."""

    def __init__(self, conn: Any, asked: list[int]) -> None:
        self.conn, self.asked = conn, asked

    async def fetch(self, query: str, *args: Any) -> Any:
        if query == postgres.REFS_PAGE_SQL:
            self.asked.append(args[3])
        return await self.conn.fetch(query, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


async def test_after_a_page_its_bytes_ended_the_next_asks_postgres_for_about_its_rows(
        pg_store: postgres.PostgresStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL's statement adds up the lengths of every row its LIMIT lets through before the bytes end the page:
    asking for REFS_PAGE each time, 8 events just over 1 MiB read 2,000 rows a page (1.5-1.7 ms, 0.16-0.19 asking
    for twice the page before's). After a page its bytes ended, the next asks for twice the events it kept; after a
    full one, twice what it asked, REFS_PAGE at most (here 16): nine large events (2.5 of them a page's bytes), then
    forty small ones, each looked through once."""
    at = datetime(2026, 11, 2, 9, 30, 0, tzinfo=UTC)
    events = [msgspec.structs.replace(make_event(pad=("L" * 20_000 if n < 9 else "s"),
                                                 attachments=[{**ATTACHMENTS[0], "sha256": sha_of(n)}]),
                                      received_at=at + timedelta(seconds=n)) for n in range(49)]
    for e in events:
        await pg_store.accept(e, [], WEEK)
    monkeypatch.setattr(postgres, "REFS_PAGE", 16)
    monkeypatch.setattr(postgres, "REFS_PAGE_BYTES", len(encode(events[0])) * 5 // 2)
    found: Counter[str] = Counter()
    hashes = [sha_of(n).encode() for n in range(len(events))]
    calls_through(monkeypatch, postgres, "attachment_hashes", lambda data: found.update(
        h.decode() for h in hashes if h in data))
    asked: list[int] = []
    run = pg_store._run

    async def noting(fn: Any, **kw: Any) -> Any:
        return await run(lambda conn: fn(_Asked(conn, asked)), **kw)

    monkeypatch.setattr(pg_store, "_run", noting)
    assert await pg_store.attachment_refs(2 ** 62) == {sha_of(n) for n in range(len(events))}
    assert found == Counter({sha_of(n): 1 for n in range(len(events))})
    assert asked == [16, 6, 6, 6, 12, 16, 16]
