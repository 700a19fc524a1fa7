"""Cost at scale: intake and drain rates with a store holding a million events against an empty store, in one
run. Minutes of wall time (seeding the million rows takes most of it): marked slow as well as bench.

Two servers, one on an empty SQLite store and one on a store seeded with BENCH_SCALE_EVENTS (1,000,000) old
events, each with its succeeded delivery and attempt (the history a busy bridge keeps for its retention
window), retention off so that no sweep runs meanwhile. Intake: wrk against each with deliveries held back,
in alternating rounds. Drain: each server is then started with its workers against its own stand-in vendor,
and the rate at which its backlog (what intake accepted) reaches the vendor is measured. The million-row
store must be within 20 % of the empty one on both (the hot path uses indexes, never a scan of history).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import statistics
import time
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

from tests.bench.harness import CONNECTIONS, FORM, HERE, free_port, needs_wrk, run_wrk, spawn, spread, stop, wait_port
from tests.bench.test_delivery_bench import config
from tests.bench.test_retention_bench import _seed

pytestmark = [pytest.mark.bench, pytest.mark.slow, needs_wrk]

EVENTS = int(os.environ.get("BENCH_SCALE_EVENTS", "1000000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
TARGET = 0.8
PATH = "/hooks/website-contact"


def delivered(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=30) as resp:
        return int(json.loads(resp.read())["unique"])


def pending(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'").fetchone()[0])


def test_a_million_event_store_costs_intake_and_drain_under_a_fifth(tmp_path: Path) -> None:
    """Intake and drain rates on a store of a million events are each at least 0.8x those on an empty store."""
    folders = {"empty": tmp_path / "empty", "1M": tmp_path / "big"}
    vendor_ports = {name: free_port() for name in folders}
    ports = {name: free_port() for name in folders}
    cfgs = {}
    for name, folder in folders.items():
        folder.mkdir()
        (folder / "var").mkdir()
        cfgs[name] = config(folder, ports[name], vendor_ports[name], retention="{enabled: false}")
    started = time.monotonic()
    asyncio.run(_seed(folders["1M"] / "var" / "bridge.db", EVENTS))
    asyncio.run(_seed(folders["empty"] / "var" / "bridge.db", 0))
    seeded_s = time.monotonic() - started

    intake: dict[str, list[float]] = {name: [] for name in folders}
    procs = {name: spawn(["-m", "bridge", "serve", "-c", str(cfgs[name]), "--no-workers"], folder)
             for name, folder in folders.items()}
    try:
        for name, proc in procs.items():
            wait_port(ports[name], proc)
            assert run_wrk(f"http://127.0.0.1:{ports[name]}{PATH}", FORM, 1).errors == 0
        for _ in range(ROUNDS):
            for name in folders:
                got = run_wrk(f"http://127.0.0.1:{ports[name]}{PATH}", FORM, SECONDS)
                assert got.errors == 0, got
                intake[name].append(got.rate)
    finally:
        stop(*procs.values())

    drain: dict[str, float] = {}
    backlog: dict[str, int] = {}
    for name, folder in folders.items():
        backlog[name] = pending(folder / "var" / "bridge.db")
        vendor = spawn([str(HERE / "standin_vendor.py"), str(vendor_ports[name])], folder)
        server = None
        try:
            wait_port(vendor_ports[name], vendor)
            server = spawn(["-m", "bridge", "serve", "-c", str(cfgs[name])], folder)
            deadline = time.monotonic() + 300
            while (first := delivered(vendor_ports[name])) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            t0 = time.monotonic()  # from the first delivery: the server's start-up is not drain
            while delivered(vendor_ports[name]) < backlog[name] and time.monotonic() < deadline:
                time.sleep(0.05)
            got = delivered(vendor_ports[name])
            drain[name] = (got - first) / (time.monotonic() - t0)
        finally:
            stop(server, vendor)
        assert got == backlog[name], f"{name}: {got} of {backlog[name]} delivered"

    intake_ratio = statistics.median(intake["1M"]) / statistics.median(intake["empty"])
    drain_ratio = drain["1M"] / drain["empty"]
    print(f"\nscale: {EVENTS} events seeded in {seeded_s:.0f} s; wrk -t1 -c{CONNECTIONS}, {ROUNDS} rounds of "
          f"{SECONDS:g} s; load average {os.getloadavg()[0]:.1f}")
    for name in folders:
        label = "empty" if name == "empty" else f"{EVENTS:,}"
        print(f"  {label:9} intake {spread(intake[name])} /s; drain of {backlog[name]} pending: {drain[name]:.0f}/s "
              "(from the first delivery)")
    print(f"  {EVENTS:,}/empty: intake {intake_ratio:.2f}, drain {drain_ratio:.2f} (target >= {TARGET})")
    assert intake_ratio >= TARGET
    assert drain_ratio >= TARGET
