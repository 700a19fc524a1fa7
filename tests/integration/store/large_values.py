"""What the tests of large values read and written a piece at a time share across SQLite and PostgreSQL
(test_sqlite_pieces, test_pg_pieces, test_pg_pieces_reads): a large mail's text, and the cases both stores must meet
alike. The bound on a callback of the loop, and its check, are tests/loop_cpu.py's."""

from __future__ import annotations

import asyncio
import hashlib

from bridge.events import Event
from bridge.store.base import Store
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
