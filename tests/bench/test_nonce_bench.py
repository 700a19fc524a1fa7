"""What recording a nonce with each event costs the SQLite store's accept on the event loop's thread.

Blocks of 64 accepts (at once, as concurrent requests arrive, so that they share group commits) alternate
between without and with a nonce, so that the store's growth and the machine's load fall on both alike.
The measure is the loop thread's CPU time: the statements run there, and the commit's fsync runs on its
own thread either way. The nonce table starts with expired rows, so the nonce blocks also pay for the
sweep. Each round's ratio is reported; the median is held to the target.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sqlite3
import statistics
import time
from contextlib import closing
from pathlib import Path

import pytest

from bridge.store.base import Nonce
from bridge.store.rows import now_ms
from bridge.store.sqlite import SqliteStore
from tests.integration.store.contract import WEEK, make_delivery, make_event

pytestmark = pytest.mark.bench

TARGET = 2.0
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "8192"))
EXPIRED = int(os.environ.get("BENCH_EXPIRED", str(EVENTS * 8)))
CONCURRENCY = 64


async def _block(store: SqliteStore, with_nonce: bool) -> float:
    """The loop thread's CPU seconds for CONCURRENCY accepts at once (their arguments made beforehand)."""
    calls = []
    for _ in range(CONCURRENCY):  # random keys, as Mailgun's tokens and Message-Ids are
        nonce = Nonce(value=secrets.token_hex(25), digest="d" * 32, expires_at_ms=now_ms() + 600_000) \
            if with_nonce else None
        calls.append((make_event(dedup_key=f"<{secrets.token_hex(12)}@mail.example.com>"), [make_delivery()], nonce))
    started = time.thread_time()
    await asyncio.gather(*(store.accept(event, deliveries, WEEK, nonce) for event, deliveries, nonce in calls))
    return time.thread_time() - started


async def test_a_nonce_costs_the_sqlite_accept_little(tmp_path: Path) -> None:
    """Accepts that record a nonce cost the loop thread at most 2x the CPU of accepts that do not, even
    while expired nonces are being swept."""
    store = SqliteStore(tmp_path / "bench.db")
    await store.open()
    with closing(sqlite3.connect(tmp_path / "bench.db", timeout=10)) as conn, conn:
        conn.executemany("INSERT INTO nonces VALUES ('website-contact', ?, 'd', ?)",
                         [(f"old-{i}", now_ms() - 1000) for i in range(EXPIRED)])
    try:
        ratios = []
        for r in range(ROUNDS):
            cpu = {False: 0.0, True: 0.0}
            for b in range(EVENTS // CONCURRENCY):  # blocks interleaved, so drift and load fall on both alike
                with_nonce = (b + r) % 2 == 1
                cpu[with_nonce] += await _block(store, with_nonce)
            ratios.append(cpu[True] / cpu[False])
            per = {k: v / (EVENTS // 2) * 1e6 for k, v in cpu.items()}
            print(f"round {r}: {per[False]:.1f} us of loop CPU per accept without a nonce, {per[True]:.1f} us with "
                  f"({ratios[-1]:.2f}x)")
    finally:
        await store.close()
    assert statistics.median(ratios) <= TARGET, ratios
