"""What the tests of large values read and written a piece at a time share across SQLite and PostgreSQL
(test_sqlite_pieces, test_pg_pieces, test_pg_pieces_reads): a large mail's text, and the cases both stores must meet
alike. The bound on a callback of the loop, and its check, are tests/loop_cpu.py's."""

from __future__ import annotations

import asyncio
import hashlib

from bridge.events import Event
from bridge.store.base import Store
from bridge.store.pieces import DECODE_AT_ONCE_BYTES
from bridge.store.rows import encode
from tests.integration.store.contract import WEEK, make_delivery, make_event
from tests.loop_cpu import LoopCpu, measured

LINE = "le routeur clignote en rouge, la ligne tombe toutes les minutes, aidez-moi s'il vous pla\u00eet\n"
TEXT = LINE * (20 * 2 ** 20 // len(LINE.encode()))
"""20 MiB of UTF-8, with a two-byte character in each line: kept three times in the event, 60 MiB. (Latin-1, so that
Python keeps it a byte a character: the test's memory stays under a gigabyte.)"""
SHA = "ab" * 32
ATTACHMENTS = [{"name": "photo.jpg", "content_type": "image/jpeg", "size": 123, "sha256": SHA}]


def large_event(sha: str = SHA) -> Event:
    """A large mail's event: 20 MiB of text three times over (60 MiB, a NUL in it), an attachment (`sha`) named."""
    return make_event(text=TEXT + "\x00 after a NUL", stripped_text=TEXT, provider={"TextBody": TEXT},
                      attachments=[{**ATTACHMENTS[0], "sha256": sha}])


async def attachment_scan_of_large_events(store: Store) -> None:
    """Retention's attachment scan finds the attachments two large mails' events name, and a small event's, with no
    callback of the loop MAX_CALLBACK_CPU_MS."""
    events = [large_event(), large_event("cd" * 32), make_event(attachments=[{**ATTACHMENTS[0], "sha256": "ef" * 32}])]
    for e in events:
        await store.accept(e, [], WEEK, weight=60 << 20)
    meter = LoopCpu()
    refs = await meter.running(store.attachment_refs(2 ** 62))
    measured("attachment_refs", meter)
    assert refs == {SHA, "cd" * 32, "ef" * 32}


async def claim_of_a_large_body(store: Store) -> None:
    """A claim that takes a delivery whose body quotes a large mail's text (40 MiB: its text and its html) holds no
    callback of the loop MAX_CALLBACK_CPU_MS; the body reads back exactly, beside an ordinary one claimed with it."""
    body = {"comment": TEXT, "html": "<p>" + TEXT + "</p>", "title": "Router down \u00e9"}
    large, small = make_delivery(body=body), make_delivery(body={"title": "short"})
    await store.accept(make_event(), [large, small], WEEK, weight=40 << 20)
    meter = LoopCpu()
    claimed = await meter.running(store.claim("kapture-support", 10, "w", 30))
    measured("claim", meter)
    assert {c.id: c.body for c in claimed.items} == {large.id: body, small.id: small.body}


async def sha256_cut_between_pieces(store: Store, piece_bytes: int) -> None:
    """Retention's scan finds each large event's attachment wherever the cut between two pieces (of `piece_bytes`,
    the store's read size as the test set it) falls in its sha256, or just before or after it: one event for each
    place of it relative to the cut."""
    hashes = [hashlib.sha256(str(k).encode()).hexdigest() for k in range(piece_bytes)]
    events = [make_event(pad="p" * (2500 + k), attachments=[{**ATTACHMENTS[0], "sha256": h}])
              for k, h in enumerate(hashes)]
    await asyncio.gather(*(store.accept(e, [], WEEK) for e in events))
    assert await store.attachment_refs(2 ** 62) == set(hashes)


PAGE = 40
"""Events (or bodies) in a page of values each just under DECODE_AT_ONCE_BYTES: decoded one after another on the
loop, about 1.3 ms each, a page held it past MAX_CALLBACK_CPU_MS twice over."""
SCAN_PAGE = 100
"""Events in a page of retention's attachment scan, each just under DECODE_AT_ONCE_BYTES: scanned one after another
on the loop, under 0.5 ms each, a page held it past MAX_CALLBACK_CPU_MS twice over."""


def under_a_mib(n: int) -> str:
    """Text whose event (kept three times over in it: its text, stripped text and provider's field) or body (twice)
    is stored just under DECODE_AT_ONCE_BYTES: read with its page's statement, decoded on the loop. `n` makes each
    differ."""
    return f"{n}\n" + LINE * (DECODE_AT_ONCE_BYTES * 15 // 16 // 3 // len(LINE.encode()))


def event_under_a_mib(n: int) -> Event:
    """An event stored just under DECODE_AT_ONCE_BYTES, naming an attachment of its own (`sha_of(n)`)."""
    text = under_a_mib(n)
    return make_event(text=text, stripped_text=text, provider={"TextBody": text},
                      attachments=[{**ATTACHMENTS[0], "sha256": sha_of(n)}])


def sha_of(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


async def stored_under_a_mib(store: Store, count: int) -> list[Event]:
    """`count` events just under DECODE_AT_ONCE_BYTES each, unmatched, stored one after another (oldest first)."""
    events = [event_under_a_mib(n) for n in range(count)]
    for e in events:
        assert len(encode(e)) <= DECODE_AT_ONCE_BYTES
        await store.accept(e, [], WEEK)
    return events


async def unmatched_page_of_events_under_a_mib(store: Store) -> None:
    """The unmatched list, a page of events just under DECODE_AT_ONCE_BYTES each (read with its statement, decoded
    on the loop), holds no callback of the loop MAX_CALLBACK_CPU_MS; every event reads back exactly, newest first."""
    events = await stored_under_a_mib(store, PAGE)
    meter = LoopCpu()
    listed = await meter.running(store.list_unmatched(PAGE))
    measured("list_unmatched of events under 1 MiB", meter)
    assert listed == events[::-1]


async def attachment_scan_of_events_under_a_mib(store: Store) -> None:
    """Retention's attachment scan of a page of events just under DECODE_AT_ONCE_BYTES each (read with its statement,
    scanned on the loop) holds no callback of the loop MAX_CALLBACK_CPU_MS, and finds each one's attachment."""
    await stored_under_a_mib(store, SCAN_PAGE)
    meter = LoopCpu()
    refs = await meter.running(store.attachment_refs(2 ** 62))
    measured("attachment_refs of events under 1 MiB", meter)
    assert refs == {sha_of(n) for n in range(SCAN_PAGE)}


async def claim_of_bodies_under_a_mib(store: Store) -> None:
    """A claim of PAGE deliveries whose bodies are two thirds of DECODE_AT_ONCE_BYTES each (read with the claim's
    statement, decoded on the loop) holds no callback of the loop MAX_CALLBACK_CPU_MS; each body reads back
    exactly."""
    bodies = [{"comment": under_a_mib(n) * 2, "title": f"Router down {n}"} for n in range(PAGE)]
    deliveries = [make_delivery(body=b) for b in bodies]
    for d in deliveries:
        assert len(encode(d.body)) <= DECODE_AT_ONCE_BYTES
        await store.accept(make_event(), [d], WEEK)
    meter = LoopCpu()
    claimed = await meter.running(store.claim("kapture-support", PAGE, "w", 30))
    measured("claim of bodies under 1 MiB", meter)
    assert {c.id: c.body for c in claimed.items} == {d.id: d.body for d in deliveries}
