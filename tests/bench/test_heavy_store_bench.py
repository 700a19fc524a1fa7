"""The longest call holding the GIL while the stores handle a large mail (its 20 MiB text three times in its event,
once more in a delivery's body): no thread can run meanwhile, the event loop's included.

Each step is run under cProfile with a CPU clock (`time.thread_time`, which the machine's other work does not
move), and the longest single call into C it makes is reported: a PostgreSQL heavy accept's encoding
(`heavy_accept`), a SQLite replay's write of a re-rendered body, a large event read back from SQLite, and intake's
escape walk of a refused payload. Calls that let go of the GIL (bytes.join past 1 MiB, SQLite's blob reads and
writes) are left out. Before they were done a piece at a time, the longest were 30-40 ms (the accept's encode, on
the loop itself), 15-20 ms plus a bind of the whole body (the replay), 62 ms (the read back's decode, after a
40 ms fetch) and 95 ms (the escape's substitution, on the loop); after, 13-14 ms at most: joining a 20 MiB
string's pieces (str.join keeps the GIL).
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.escaping import escape_tree
from bridge.store import sqlite as sqlite_store
from bridge.store.pg_batch import heavy_accept
from bridge.store.pieces import decode_in_pieces
from bridge.store.rows import decode_event, encode
from tests.integration.store.contract import WEEK, make_delivery, make_event

pytestmark = pytest.mark.bench

LINE = "the router blinks red and the line drops every few minutes, please help\n"
TEXT = LINE * (20 * 2 ** 20 // len(LINE))
TARGET_MS = 30.0
WITHOUT_GIL = {"<method 'join' of 'bytes' objects>", "<method 'read' of 'sqlite3.Blob' objects>",
               "<method 'write' of 'sqlite3.Blob' objects>", "<method 'execute' of 'sqlite3.Connection' objects>",
               "<method '__exit__' of 'sqlite3.Blob' objects>"}
"""Calls that run without the GIL (sqlite3 steps its statements without it: the replay's are an UPDATE and an
INSERT of a zeroblob, whose values are small)."""


def longest_call(step: Callable[[], Any]) -> tuple[float, str]:
    """The CPU milliseconds of the longest call into C that `step` makes holding the GIL, and what it was."""
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    step()
    profile.disable()
    calls = [(total / count * 1000, name) for (where, _, name), (_, count, total, _, _)
             in pstats.Stats(profile).stats.items()  # type: ignore[attr-defined]
             if where == "~" and name not in WITHOUT_GIL]
    return max(calls)


def mail() -> Any:
    return make_event(text=TEXT, stripped_text=TEXT, provider={"TextBody": TEXT})


def test_a_heavy_accepts_encoding_holds_the_gil_a_piece_at_most() -> None:
    loop = asyncio.new_event_loop()
    try:
        event, delivery = mail(), make_delivery(body={"comment": TEXT})
        ms, what = longest_call(lambda: heavy_accept(event, [delivery], WEEK, None, loop))
    finally:
        loop.close()
    print(f"\nPostgreSQL heavy accept's encoding: longest call {ms:.1f} ms ({what})")
    assert ms < TARGET_MS, what


def test_a_replayed_body_is_written_holding_the_gil_a_piece_at_most(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "bodies.db", isolation_level=None)
    conn.execute("CREATE TABLE deliveries (id TEXT PRIMARY KEY, body BLOB)")
    conn.execute("CREATE TABLE delivery_bodies (id TEXT PRIMARY KEY, body BLOB)")
    body = {"comment": TEXT}
    ms, what = longest_call(lambda: sqlite_store._put_body(conn, "dlv_1", sqlite_store._json_pieces(body)))
    print(f"\nSQLite replay's body: longest call {ms:.1f} ms ({what})")
    assert ms < TARGET_MS, what


def test_a_large_event_is_read_back_holding_the_gil_a_piece_at_most(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "events.db", isolation_level=None)
    conn.execute("CREATE TABLE events (id TEXT PRIMARY KEY, data BLOB)")
    conn.execute("INSERT INTO events VALUES ('evt_1', ?)", (encode(mail()),))
    rowid = conn.execute("SELECT rowid FROM events").fetchone()[0]
    ms, what = longest_call(lambda: decode_in_pieces(sqlite_store._blob_read(conn, "events", "data", rowid),
                                                     decode_event))
    print(f"\nA large event read back: longest call {ms:.1f} ms ({what})")
    assert ms < TARGET_MS, what


def test_a_refused_large_payload_is_escaped_holding_the_gil_a_slice_at_most() -> None:
    payload = {"text": TEXT + "\udcff", "stripped_text": TEXT, "provider": {"TextBody": TEXT}}
    ms, what = longest_call(lambda: escape_tree(payload))
    print(f"\nA refused payload's escape: longest call {ms:.1f} ms ({what})")
    assert ms < TARGET_MS, what
