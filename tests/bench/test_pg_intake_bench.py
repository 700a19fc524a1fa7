"""Intake on PostgreSQL against intake on SQLite: one process each, in one run, with wrk as the load.

Both servers run the shipped default config (the example mappings, deliveries held back with
`--no-workers`) and differ only in `store.url`. They get the same form body over the same number of
connections, in alternating rounds; the median rates and their spread are reported, and the ratio of the
medians is held to the target. Every request wrk saw answered 202 must be stored, on both.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.bench.test_intake_bench import free_port, wait_port
from tests.integration.processes import DSN

pytestmark = pytest.mark.bench

ROOT = Path(__file__).resolve().parents[2]
TARGET = 0.5
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = 32
BODY = "name=Asha&email=asha%40example.com&subject=Router+down&message=No+internet"
POST_LUA = f"""
wrk.method = "POST"
wrk.body = "{BODY}"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Accept"] = "application/json"
"""


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


def wrk(url: str, script: Path, seconds: int) -> dict[str, float]:
    """Run wrk; its rate, the requests it saw completed, and how many of those were not 2xx/3xx."""
    out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, check=True, text=True).stdout
    requests = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    assert requests and rate and p50, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p50.group(2)]
    return {"requests": int(requests.group(1)), "rate": float(rate.group(1)), "p50_ms": float(p50.group(1)) * scale,
            "bad": int(bad.group(1)) if bad else 0, "errors": sum(map(int, errors.groups())) if errors else 0}


async def pg_events(schema: str) -> int:
    conn = await asyncpg.connect(DSN, server_settings={"search_path": schema})
    try:
        return int(await conn.fetchval("SELECT COUNT(*) FROM events"))
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


def spread(rates: list[float]) -> str:
    return f"{statistics.median(rates):8.0f}  (min {min(rates):.0f}, max {max(rates):.0f})"


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_postgresql_intake_against_sqlite(tmp_path: Path) -> None:
    """One process on PostgreSQL takes at least half the intake rate of one process on SQLite."""
    schema = f"tb_bench_{uuid.uuid4().hex[:12]}"
    script = tmp_path / "post.lua"
    script.write_text(POST_LUA)
    ports = {"sqlite": free_port(), "postgresql": free_port()}
    stores = {"sqlite": "sqlite:///var/ticketbridge.db", "postgresql": f"{DSN}?schema={schema}"}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    results: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgresql": []}
    answered = {"sqlite": 0, "postgresql": 0}
    try:
        for name in ("sqlite", "postgresql"):
            cfg = write_config(tmp_path / name, ports[name], stores[name])
            procs[name] = subprocess.Popen([sys.executable, "-m", "bridge", "serve", "-c", str(cfg), "--no-workers"],
                                           cwd=tmp_path / name, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name, proc in procs.items():
            wait_port(ports[name], proc)
        for name in procs:  # warm-up
            warm = wrk(f"http://127.0.0.1:{ports[name]}/hooks/website-contact", script, 1)
            assert (warm["bad"], warm["errors"]) == (0, 0)
            answered[name] += int(warm["requests"])
        for _ in range(ROUNDS):
            for name in procs:
                got = wrk(f"http://127.0.0.1:{ports[name]}/hooks/website-contact", script, SECONDS)
                assert (got["bad"], got["errors"]) == (0, 0), f"{name}: {got}"
                answered[name] += int(got["requests"])
                results[name].append(got)
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(20)
    stored_pg = asyncio.run(pg_events(schema))
    with sqlite3.connect(tmp_path / "sqlite" / "var" / "ticketbridge.db") as conn:
        stored_sqlite = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    rates = {name: [r["rate"] for r in rows] for name, rows in results.items()}
    ratio = statistics.median(rates["postgresql"]) / statistics.median(rates["sqlite"])
    print(f"\nintake, one process each, wrk -t1 -c{CONNECTIONS} -d{SECONDS}s, {ROUNDS} rounds (requests/s)")
    for name in ("sqlite", "postgresql"):
        p50 = statistics.median(r["p50_ms"] for r in results[name])
        print(f"  {name:10} median {spread(rates[name])}  p50 {p50:.2f} ms  rounds "
              + ", ".join(f"{r:.0f}" for r in rates[name]))
    print(f"  ratio of medians PostgreSQL/SQLite {ratio:.2f} (target >= {TARGET})")

    # wrk does not count the requests still in flight when it stops, which may have been stored.
    slack = CONNECTIONS * (ROUNDS + 1)
    assert answered["sqlite"] <= stored_sqlite <= answered["sqlite"] + slack
    assert answered["postgresql"] <= stored_pg <= answered["postgresql"] + slack
    assert ratio >= TARGET
