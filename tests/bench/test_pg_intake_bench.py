"""Intake on PostgreSQL against intake on SQLite: one process each, in one run, with wrk as the load.

Both servers run the shipped default config (the example mappings, deliveries held back with
`--no-workers`) and differ only in `store.url`. They get the same form body over the same number of
connections, in alternating rounds; the median rates and their spread are reported, and the ratio of the
medians is held to the target. Every request wrk saw answered 202 must be stored, on both.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import statistics
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.bench.harness import (
    CONNECTIONS,
    Load,
    free_port,
    needs_wrk,
    pg_events,
    run_wrk,
    spawn,
    spread,
    stop,
    wait_port,
)
from tests.integration.processes import DSN

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]
TARGET = 0.5
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))


def write_config(folder: Path, port: int, store: str) -> Path:
    """The shipped default config with its own port and store, and the repository's example mappings."""
    text = (ROOT / "bridge" / "defaults" / "bridge.yaml").read_text()
    text = text.replace("url: sqlite:///var/ticketbridge.db", f'url: "{store}"')
    text = text.replace("port: ${PORT:-8080}", f"port: {port}")
    assert f"port: {port}" in text and store in text, "the shipped default changed: update this benchmark"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "bridge.yaml"
    cfg.write_text(text + f"\nmappings: {ROOT / 'mappings'}\nlog: {{level: warning}}\n")
    return cfg


@needs_wrk
def test_postgresql_intake_against_sqlite(tmp_path: Path) -> None:
    """One process on PostgreSQL takes at least half the intake rate of one process on SQLite."""
    schema = f"tb_bench_{uuid.uuid4().hex[:12]}"
    ports = {"sqlite": free_port(), "postgresql": free_port()}
    stores = {"sqlite": "sqlite:///var/ticketbridge.db", "postgresql": f"{DSN}?schema={schema}"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    results: dict[str, list[Load]] = {"sqlite": [], "postgresql": []}
    answered = {"sqlite": 0, "postgresql": 0}
    try:
        for name in ("sqlite", "postgresql"):
            cfg = write_config(tmp_path / name, ports[name], stores[name])
            procs[name] = spawn(["-m", "bridge", "serve", "-c", str(cfg), "--no-workers"], tmp_path / name)
        for name, proc in procs.items():
            wait_port(ports[name], proc)
        for name in procs:  # warm-up
            warm = run_wrk(f"http://127.0.0.1:{ports[name]}/hooks/website-contact", seconds=1)
            assert warm.errors == 0
            answered[name] += warm.requests
        for _ in range(ROUNDS):
            for name in procs:
                got = run_wrk(f"http://127.0.0.1:{ports[name]}/hooks/website-contact", seconds=SECONDS)
                assert got.errors == 0, f"{name}: {got}"
                answered[name] += got.requests
                results[name].append(got)
    finally:
        stop(*procs.values())
    stored_pg = asyncio.run(pg_events(schema, drop=True))
    with sqlite3.connect(tmp_path / "sqlite" / "var" / "ticketbridge.db") as conn:
        stored_sqlite = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    rates = {name: [r.rate for r in rows] for name, rows in results.items()}
    ratio = statistics.median(rates["postgresql"]) / statistics.median(rates["sqlite"])
    print(f"\nintake, one process each, wrk -t1 -c{CONNECTIONS} -d{SECONDS}s, {ROUNDS} rounds (requests/s)")
    for name in ("sqlite", "postgresql"):
        p50 = statistics.median(r.p50_ms for r in results[name])
        print(f"  {name:10} median {spread(rates[name])}  p50 {p50:.2f} ms  rounds "
              + ", ".join(f"{r:.0f}" for r in rates[name]))
    print(f"  ratio of medians PostgreSQL/SQLite {ratio:.2f} (target >= {TARGET})")

    # wrk does not count the requests still in flight when it stops, which may have been stored.
    slack = CONNECTIONS * (ROUNDS + 1)
    assert answered["sqlite"] <= stored_sqlite <= answered["sqlite"] + slack
    assert answered["postgresql"] <= stored_pg <= answered["postgresql"] + slack
    assert ratio >= TARGET
