"""Where an intake request's time goes: a ladder of servers, each adding one layer to the one before, all loaded
by wrk with the same form over the same connections in rotating rounds (each round starts one rung later).

Rungs:
1. a bare aiohttp handler (read the body, answer 202 with JSON);
2. the same handler behind ticketbridge's connection guard (read deadlines, the connection cap);
3. ticketbridge with its shipped default config on a store that keeps nothing: the handler's own work
   (checks, parse, mapping render, event, answer, counters) and nothing stored;
4. the same on the in-memory store: what storing costs in Python, without SQL or a disk;
5. ticketbridge as it runs, durable on SQLite: each 202 after its group's commit.

For each rung the table gives its rate, its process's CPU time per request (all threads), and what that adds
to the rung before. The ratio of rung 5 to rung 1 is the speed table's intake row; this bench says which layer
the difference is made of. Every rung answers every request 2xx, and the durable rung has every answered event
on disk.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
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

pytestmark = [pytest.mark.bench, needs_wrk]

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
PATH = "/hooks/website-contact"


@dataclass
class Rung:
    name: str
    port: int
    args: Callable[[int], list[str]]
    """The process's arguments, given its port."""
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)
    answered: int = 0


def test_where_intake_time_goes(tmp_path: Path) -> None:
    rungs = [
        Rung("bare aiohttp handler", free_port(), lambda p: [str(HERE / "bare_server.py"), str(p)]),
        Rung("+ connection guard", free_port(), lambda p: [str(HERE / "bare_server.py"), str(p), "guarded"]),
        Rung("+ ticketbridge handler, nothing stored", free_port(),
             lambda p: [str(HERE / "intake_rungs.py"), str(p), "none"]),
        Rung("+ in-memory store", free_port(), lambda p: [str(HERE / "intake_rungs.py"), str(p), "memory"]),
        Rung("ticketbridge, durable SQLite", free_port(), lambda _p: ["-m", "bridge", "serve", "--no-workers"]),
    ]
    procs = []
    try:
        for rung in rungs:
            folder = tmp_path / f"rung-{rung.port}"
            folder.mkdir()
            proc = spawn(rung.args(rung.port), folder, {**os.environ, "PORT": str(rung.port)})
            procs.append(proc)
            wait_port(rung.port, proc)
        for rung in rungs:  # warm-up
            warm = run_wrk(f"http://127.0.0.1:{rung.port}{PATH}", FORM, 1, tmp_path / "wrk")
            assert warm.errors == 0, (rung.name, warm)
            rung.answered += warm.requests
        for n in range(ROUNDS):
            turn = n % len(rungs)
            pairs = list(zip(rungs, procs, strict=True))
            for rung, proc in pairs[turn:] + pairs[:turn]:
                cpu = cpu_seconds(proc.pid)
                load = run_wrk(f"http://127.0.0.1:{rung.port}{PATH}", FORM, SECONDS, tmp_path / "wrk")
                used = cpu_seconds(proc.pid) - cpu
                assert load.errors == 0, (rung.name, load)
                rung.answered += load.requests
                rung.rates.append(load.rate)
                rung.cpu_us.append(used / max(load.requests, 1) * 1e6)
    finally:
        stop(*procs)

    print(f"\nwhere intake time goes: wrk -t1 -c{CONNECTIONS}, {ROUNDS} rotating rounds of {SECONDS:g}s; "
          "medians (range); CPU is the server process's, all threads")
    print(f"  {'rung':<42} {'requests/s':>22} {'CPU us/request':>20} {'adds us':>8} {'rate vs bare':>13}")
    before: float | None = None
    bare_rate = statistics.median(rungs[0].rates)
    for rung in rungs:
        cpu = statistics.median(rung.cpu_us)
        adds = "" if before is None else f"{cpu - before:+.0f}"
        print(f"  {rung.name:<42} {spread(rung.rates):>22} {spread(rung.cpu_us):>20} {adds:>8} "
              f"{statistics.median(rung.rates) / bare_rate:>12.2f}x")
        before = cpu

    durable = rungs[-1]
    db = tmp_path / f"rung-{durable.port}" / "var" / "ticketbridge.db"
    with sqlite3.connect(db) as conn:
        stored = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    # wrk does not count the requests in flight when it stopped, which the server may have stored
    assert durable.answered <= stored <= durable.answered + CONNECTIONS * (ROUNDS + 1), "answered events are on disk"
