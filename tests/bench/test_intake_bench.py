"""Intake throughput with durable commits, against a bare aiohttp handler, in one run.

Both servers get the same load generator (its own process), the same form payload and the same
number of connections, in alternating rounds; the ratio of each pair of rounds is reported, and the
median is held to the target. Every event answered 2xx must be in the store afterwards.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

HERE = Path(__file__).parent
TARGET = 0.6
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "4"))
CONCURRENCY = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening after {timeout}s")


def load(url: str, seconds: float) -> dict[str, float]:
    out = subprocess.run([sys.executable, str(HERE / "loadgen.py"), url, "--seconds", str(seconds),
                          "--concurrency", str(CONCURRENCY)], capture_output=True, check=True, text=True)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def test_intake_rate_against_a_bare_handler(tmp_path: Path) -> None:
    """ticketbridge's durable intake reaches at least 0.6x the rate of a bare aiohttp handler."""
    bare_port, tb_port = free_port(), free_port()
    bare = subprocess.Popen([sys.executable, str(HERE / "bare_server.py"), str(bare_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "PORT": str(tb_port)}
    tb = subprocess.Popen([sys.executable, "-m", "bridge", "serve", "--no-workers"], cwd=tmp_path, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(bare_port, bare)
        wait_port(tb_port, tb)
        path = "/hooks/website-contact"
        load(f"http://127.0.0.1:{bare_port}{path}", 1)  # warm-up
        warm = load(f"http://127.0.0.1:{tb_port}{path}", 1)
        assert warm["errors"] == 0
        rows = []
        accepted = int(warm["requests"])
        for _ in range(ROUNDS):
            b = load(f"http://127.0.0.1:{bare_port}{path}", SECONDS)
            t = load(f"http://127.0.0.1:{tb_port}{path}", SECONDS)
            assert b["errors"] == 0 and t["errors"] == 0
            accepted += int(t["requests"])
            rows.append((b, t, t["rate"] / b["rate"]))
    finally:
        for proc in (bare, tb):
            proc.terminate()
            proc.wait(20)

    print(f"\nintake, {CONCURRENCY} connections, {SECONDS:g}s rounds (requests/s; p50/p99 ms)")
    for b, t, ratio in rows:
        print(f"  bare {b['rate']:8.0f} ({b['p50_ms']}/{b['p99_ms']})   ticketbridge {t['rate']:8.0f} "
              f"({t['p50_ms']}/{t['p99_ms']})   ratio {ratio:.2f}")
    median = statistics.median(r for _, _, r in rows)
    print(f"  median ratio {median:.2f} (target >= {TARGET})")

    with sqlite3.connect(tmp_path / "var" / "ticketbridge.db") as conn:
        stored = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    assert stored == accepted, "every event answered 2xx must be on disk, and nothing else"
    assert median >= TARGET
