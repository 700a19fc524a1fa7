"""Cost at scale: intake and drain rates with a store holding a million events against an empty store, in one
run. Minutes of wall time (seeding the million rows takes most of it): marked slow as well as bench.

Two stores, one empty and one seeded with BENCH_SCALE_EVENTS (1,000,000) old events, each with its succeeded
delivery and attempt (the history a busy bridge keeps for its retention window), retention off so that no
sweep runs meanwhile. Each round takes intake on each store in turn (wrk, with deliveries held back), then
drains each store's new backlog in turn (the server started with its workers against the store's own
stand-in vendor; the rate at which the backlog reaches the vendor, from its first delivery). The rounds
alternate the two stores, the one going first changing each round, so that both see the same load from the
rest of the machine, and the medians of the rounds are compared: the million-event store must be within
20 % of the empty one on both (the hot path uses indexes, never a scan of history). Meanwhile /metrics is read
every second, as a monitored bridge's is (its gauges count the store's deliveries at most every 10 s). Beside
the rates is each server's CPU time per request and per delivery, which a busy neighbour moves less than the
rate.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import statistics
import threading
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

from tests.bench.harness import (
    CONNECTIONS,
    FORM,
    HERE,
    cpu_seconds,
    free_port,
    needs_wrk,
    run_wrk,
    spawn,
    spread,
    stop,
    wait_port,
)
from tests.bench.test_delivery_bench import config
from tests.bench.test_retention_bench import _seed

pytestmark = [pytest.mark.bench, pytest.mark.slow, needs_wrk]

EVENTS = int(os.environ.get("BENCH_SCALE_EVENTS", "1000000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
TARGET = 0.8
PATH = "/hooks/website-contact"
DRAIN_TIMEOUT_S = 300
ADMIN_TOKEN = "bench-scale-admin-token-0123456789abcdef"


def delivered(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=30) as resp:
        return int(json.loads(resp.read())["unique"])


def pending(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM deliveries WHERE status IN ('pending', 'in_flight')")
                   .fetchone()[0])


class MetricsPoller(threading.Thread):
    """Reads /metrics from whichever of `ports` is up, every second, until stopped; counts the readings."""

    def __init__(self, ports: list[int]) -> None:
        super().__init__(daemon=True)
        self.ports = ports
        self.readings = 0
        self.refused: list[int] = []  # HTTP statuses other than 200: the poller is misconfigured
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            for port in self.ports:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                             headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        resp.read()
                    self.readings += 1
                except urllib.error.HTTPError as exc:
                    self.refused.append(exc.code)
                except OSError:
                    pass  # that server is not running now


def intake_round(folder: Path, cfg: Path, port: int) -> tuple[float, float]:
    """Intake on one store, deliveries held back: (requests/s, server CPU µs per request)."""
    proc = spawn(["-m", "bridge", "serve", "-c", str(cfg), "--no-workers"], folder)
    try:
        wait_port(port, proc)
        assert run_wrk(f"http://127.0.0.1:{port}{PATH}", FORM, 1).errors == 0  # warm-up
        cpu = cpu_seconds(proc.pid)
        got = run_wrk(f"http://127.0.0.1:{port}{PATH}", FORM, SECONDS)
        cpu = cpu_seconds(proc.pid) - cpu
    finally:
        stop(proc)
    assert got.errors == 0, got
    return got.rate, cpu / max(got.requests, 1) * 1e6


def drain_round(folder: Path, cfg: Path, vendor_port: int) -> tuple[int, float, float]:
    """Deliver one store's backlog to its stand-in vendor: (backlog, deliveries/s from the first delivery,
    server CPU µs per delivery over the same time)."""
    db = folder / "var" / "bridge.db"
    backlog = pending(db)
    base = delivered(vendor_port)
    server = spawn(["-m", "bridge", "serve", "-c", str(cfg)], folder)
    try:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while (first := delivered(vendor_port)) == base and time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"server exited with {server.returncode}")
            time.sleep(0.01)
        t0, cpu = time.monotonic(), cpu_seconds(server.pid)  # from the first delivery: start-up is not drain
        while (got := delivered(vendor_port)) < base + backlog and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(server.pid) - cpu
    finally:
        stop(server)
    assert got == base + backlog, f"{folder.name}: {got - base} of {backlog} delivered"
    assert pending(db) == 0, f"{folder.name}: deliveries left pending after the drain"
    return backlog, (got - first) / elapsed, cpu / max(got - first, 1) * 1e6


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
        with cfgs[name].open("a") as cfg:
            cfg.write(f'admin: {{token: "{ADMIN_TOKEN}"}}\n')
    started = time.monotonic()
    asyncio.run(_seed(folders["1M"] / "var" / "bridge.db", EVENTS))
    asyncio.run(_seed(folders["empty"] / "var" / "bridge.db", 0))
    seeded_s = time.monotonic() - started

    intake: dict[str, list[float]] = {name: [] for name in folders}
    intake_cpu: dict[str, list[float]] = {name: [] for name in folders}
    drain: dict[str, list[float]] = {name: [] for name in folders}
    drain_cpu: dict[str, list[float]] = {name: [] for name in folders}
    backlogs: dict[str, list[int]] = {name: [] for name in folders}
    vendors = {name: spawn([str(HERE / "standin_vendor.py"), str(vendor_ports[name])], folder)
               for name, folder in folders.items()}
    poller = MetricsPoller(list(ports.values()))
    poller.start()
    try:
        for name, vendor in vendors.items():
            wait_port(vendor_ports[name], vendor)
        for n in range(ROUNDS):
            order = list(folders) if n % 2 == 0 else list(reversed(folders))  # neither store always goes first
            for name in order:
                rate, cpu = intake_round(folders[name], cfgs[name], ports[name])
                intake[name].append(rate)
                intake_cpu[name].append(cpu)
            for name in order:
                backlog, rate, cpu = drain_round(folders[name], cfgs[name], vendor_ports[name])
                backlogs[name].append(backlog)
                drain[name].append(rate)
                drain_cpu[name].append(cpu)
    finally:
        poller.done.set()
        poller.join()
        stop(*vendors.values())
    assert not poller.refused, f"/metrics answered {sorted(set(poller.refused))}"
    assert poller.readings > 0

    intake_ratio = statistics.median(intake["1M"]) / statistics.median(intake["empty"])
    drain_ratio = statistics.median(drain["1M"]) / statistics.median(drain["empty"])
    print(f"\nscale: {EVENTS} events seeded in {seeded_s:.0f} s; {ROUNDS} alternating rounds, each wrk -t1 "
          f"-c{CONNECTIONS} for {SECONDS:g} s, then the drain of what it accepted; load average "
          f"{os.getloadavg()[0]:.1f}; /metrics read {poller.readings} times")
    for name in folders:
        label = "empty" if name == "empty" else f"{EVENTS:,}"
        print(f"  {label:9} intake {spread(intake[name])} /s, {spread(intake_cpu[name])} µs CPU each; "
              f"drain of {spread([float(b) for b in backlogs[name]])} pending: {spread(drain[name])} /s, "
              f"{spread(drain_cpu[name])} µs CPU each")
    cpu_in = statistics.median(intake_cpu["empty"]) / statistics.median(intake_cpu["1M"])
    cpu_out = statistics.median(drain_cpu["empty"]) / statistics.median(drain_cpu["1M"])
    print(f"  {EVENTS:,}/empty: intake {intake_ratio:.2f} (CPU {cpu_in:.2f}), drain {drain_ratio:.2f} "
          f"(CPU {cpu_out:.2f}) (target >= {TARGET})")
    assert intake_ratio >= TARGET
    assert drain_ratio >= TARGET
