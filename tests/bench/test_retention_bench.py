"""Retention under load: the database of a server with a short retention stays the same size however long
it runs, and the sweep does not hold the writer long enough to delay intake. Figures are printed."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import time
from contextlib import closing
from pathlib import Path

import pytest

from bridge.store.sqlite import SqliteStore
from tests.bench.harness import HERE, Load, free_port, needs_wrk, run_wrk, spawn, stop, wait_port
from tests.bench.test_delivery_bench import config

pytestmark = pytest.mark.bench

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "16"))
ROUND_SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
WARM_UP_ROUNDS = 4
SEEDED = int(os.environ.get("BENCH_SEEDED", "150000"))
BATCH = int(os.environ.get("BENCH_RETENTION_BATCH", "200"))
DAY_MS = 86_400_000
STEADY_CONNECTIONS = 4
"""Few enough that delivery keeps up on a small machine: what cannot be delivered cannot be purged either."""


def steady_load(url: str, seconds: float) -> Load:
    return run_wrk(url, seconds=seconds, connections=STEADY_CONNECTIONS)


def checkpointed_size(db: Path) -> tuple[int, int, dict[str, int]]:
    """The database file's size after a checkpoint that empties the WAL, the WAL's size, and row counts."""
    with closing(sqlite3.connect(db, timeout=10)) as conn:
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        counts = {"events": conn.execute("SELECT COUNT(*) FROM events").fetchone()[0],
                  "pending": conn.execute("SELECT COUNT(*) FROM deliveries WHERE status != 'succeeded'").fetchone()[0],
                  "attempts": conn.execute("SELECT COUNT(*) FROM attempts").fetchone()[0],
                  "free_pages": conn.execute("PRAGMA freelist_count").fetchone()[0]}
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size, wal.stat().st_size if wal.exists() else 0, counts


@needs_wrk
def test_database_size_stays_flat_under_steady_load(tmp_path: Path) -> None:
    """With events kept 5 s, a server taking a steady load keeps its database file (after a checkpoint) within
    twice its size at the end of the warm-up, growing by under a quarter of what keeping every event would
    add, while the events it accepted keep adding up."""
    port, vendor_port = free_port(), free_port()
    cfg = config(tmp_path, port, vendor_port, retries=3,
                 retention="{events: 5s, attempts: 5s, dead: 5s, every: 1s}")
    vendor = spawn([str(HERE / "standin_vendor.py"), str(vendor_port)], tmp_path)
    bridge = spawn(["-m", "bridge", "serve", "-c", str(cfg)], tmp_path)
    db = tmp_path / "var" / "bridge.db"
    rows = []
    accepted = 0
    try:
        wait_port(vendor_port, vendor)
        wait_port(port, bridge)
        started = time.monotonic()
        for _ in range(ROUNDS):
            got = steady_load(f"http://127.0.0.1:{port}/hooks/website-contact", ROUND_SECONDS)
            assert got.errors == 0
            accepted += got.requests
            size, wal, counts = checkpointed_size(db)
            rows.append((time.monotonic() - started, accepted, size, wal, counts, got.rate, got.p99_ms))
    finally:
        stop(bridge, vendor)
    print(f"\nretention 5 s, sweep every 1 s, {ROUND_SECONDS:.0f} s rounds of closed-loop load "
          f"({STEADY_CONNECTIONS} connections), load average {os.getloadavg()[0]:.1f}:")
    print("   time  accepted   db size (MiB)  wal   events  unsettled  attempts  free pages  rate/s  p99 ms")
    for t, acc, size, wal, c, rate, p99 in rows:
        print(f"  {t:5.0f}s  {acc:8d}  {size / 2**20:13.2f}  {wal:4d}  {c['events']:6d}  {c['pending']:9d}  "
              f"{c['attempts']:8d}  {c['free_pages']:10d}  {rate:6.0f}  {p99:6.1f}")
    base, base_accepted = rows[WARM_UP_ROUNDS - 1][2], rows[WARM_UP_ROUNDS - 1][1]
    later = [r[2] for r in rows[WARM_UP_ROUNDS:]]
    # What an event costs while nothing has been purged yet: the growth the same load would cause kept forever.
    per_event = rows[0][2] / rows[0][1]
    kept_forever = per_event * (accepted - base_accepted)
    grown = max(later) - base
    print(f"after warm-up: {base / 2**20:.2f} MiB, then at most {max(later) / 2**20:.2f} MiB "
          f"({max(later) / base:.2f}x) while accepted events went from {base_accepted} to {accepted}; "
          f"grown {grown / 2**20:.2f} MiB where keeping them all would have grown it by about "
          f"{kept_forever / 2**20:.1f} MiB")
    assert max(later) <= 2 * base
    assert grown <= 0.25 * kept_forever
    assert accepted >= 2 * rows[WARM_UP_ROUNDS - 1][1], "the load must go on well past the warm-up"


async def _seed(db: Path, n: int) -> None:
    """`n` events received 40 days ago, each with a succeeded delivery and its attempt: what a sweep purges."""
    store = SqliteStore(db)
    await store.open()
    await store.close()
    old = time.time_ns() // 1_000_000 - 40 * DAY_MS
    data = (b'{"id":"x","source":"website-contact","kind":"form","channel":"form","payload":{"name":"Asha",'
            b'"email":"asha@example.com","subject":"Router down","message":"No internet since morning"},'
            b'"headers":{"user-agent":"curl/8"},"meta":{"remote":"127.0.0.1"}}')
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.executemany("INSERT INTO events VALUES (?, 'website-contact', 'form', 'form', ?, NULL, 0, ?, 1)",
                         ((f"evt_{i:08d}", old + i, data) for i in range(n)))
        conn.executemany(
            "INSERT INTO deliveries (id, event_id, source, mapping, mapping_version, destination, action, status, "
            "body, options, attempts, tries, next_attempt_at, created_at, updated_at) VALUES (?, ?, "
            "'website-contact', 'contact', 'v1', 'vendor', 'create_ticket', 'succeeded', ?, '{}', 1, 1, ?, ?, ?)",
            ((f"dlv_{i:08d}", f"evt_{i:08d}", b'{"title":"Website enquiry: Router down"}', old + i, old + i,
              old + i) for i in range(n)))
        conn.executemany("INSERT INTO attempts VALUES (?, 1, ?, 12.5, 200, ?, 'success', NULL, NULL)",
                         ((f"dlv_{i:08d}", old + i, '{"status":"success"}') for i in range(n)))


def _latency_rounds(tmp_path: Path, retention: str, rounds: int, db: Path) -> tuple[list[Load], int, int]:
    port, vendor_port = free_port(), free_port()
    cfg = config(tmp_path, port, vendor_port, retries=3, retention=retention)
    vendor = spawn([str(HERE / "standin_vendor.py"), str(vendor_port)], tmp_path)
    bridge = spawn(["-m", "bridge", "serve", "-c", str(cfg)], tmp_path)
    results = []
    try:
        wait_port(vendor_port, vendor)
        wait_port(port, bridge)
        with closing(sqlite3.connect(db)) as conn:
            def aged() -> int:
                count: int = conn.execute("SELECT COUNT(*) FROM events WHERE received_at < ?",
                                          (time.time_ns() // 1_000_000 - DAY_MS,)).fetchone()[0]
                return count

            before = aged()
            if retention != "{enabled: false}":
                while aged() == before:
                    time.sleep(0.05)  # polling until the sweep has begun
                before = aged()
            for _ in range(rounds):
                results.append(run_wrk(f"http://127.0.0.1:{port}/hooks/website-contact", seconds=ROUND_SECONDS / 2))
            after = aged()
    finally:
        stop(bridge, vendor)
    return results, before, after


@needs_wrk
def test_a_sweep_does_not_delay_intake(tmp_path: Path) -> None:
    """Intake's p99 latency while the sweep purges a large backlog of aged-out events (the default batch) stays
    within 2x (+5 ms) of the same server's with retention off, on the same database."""
    (tmp_path / "var").mkdir()
    db = tmp_path / "var" / "bridge.db"
    asyncio.run(_seed(db, SEEDED))
    off, _, _ = _latency_rounds(tmp_path, "{enabled: false}", 3, db)
    on, before, after = _latency_rounds(tmp_path, f"{{every: 1s, batch: {BATCH}}}", 3, db)
    p99_off = statistics.median(r.p99_ms for r in off)
    p99_on = statistics.median(r.p99_ms for r in on)
    print(f"\nbatch {BATCH}, load average {os.getloadavg()[0]:.1f}")
    print(f"intake with retention off: rate {[r.rate for r in off]}/s, p50 {[r.p50_ms for r in off]} ms, "
          f"p99 {[r.p99_ms for r in off]} ms")
    print(f"intake while sweeping:     rate {[r.rate for r in on]}/s, p50 {[r.p50_ms for r in on]} ms, "
          f"p99 {[r.p99_ms for r in on]} ms")
    print(f"aged-out events: {SEEDED} seeded, {before} when the load began, {after} when it ended "
          f"({before - after} purged during the load); median p99 {p99_off:.1f} ms off, {p99_on:.1f} ms sweeping")
    assert after > 0, "the sweep must run through the whole measurement"
    assert p99_on <= 2 * p99_off + 5
