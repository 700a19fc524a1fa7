"""What the connection guard (per-connection read deadlines, the cap) costs on the fastest handler.

The same bare handler is served by aiohttp's plain runner and through the guard, loaded by the same
generator (wrk) in alternating rounds. Each server's CPU time per answered request is read from /proc, which
other load on the machine disturbs far less than the request rate does; the median ratio of the two is
held to the target. With a handler this cheap any per-request cost shows; ticketbridge's intake does
far more per request.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from tests.bench.harness import HERE, cpu_seconds, free_port, needs_wrk, run_wrk, spawn, stop, wait_port

pytestmark = [pytest.mark.bench, needs_wrk]

TARGET = 1.10
ROUNDS = 6
SECONDS = 4


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from Linux's /proc")
def test_the_guard_costs_little_on_a_bare_handler() -> None:
    """Served through the connection guard, a bare handler spends at most 1.10x the CPU per request."""
    ports = {"plain": free_port(), "guarded": free_port()}
    procs = {kind: spawn([str(HERE / "bare_server.py"), str(port), *(["guarded"] if kind == "guarded" else [])],
                         HERE)
             for kind, port in ports.items()}
    rows = []
    try:
        for kind, proc in procs.items():
            wait_port(ports[kind], proc)
            run_wrk(f"http://127.0.0.1:{ports[kind]}/hooks/x", seconds=1)  # warm-up
        for i in range(ROUNDS):
            got = {}
            for kind in ("plain", "guarded") if i % 2 == 0 else ("guarded", "plain"):
                before = cpu_seconds(procs[kind].pid)
                result = run_wrk(f"http://127.0.0.1:{ports[kind]}/hooks/x", seconds=SECONDS / 2)
                assert result.errors == 0
                got[kind] = (result, (cpu_seconds(procs[kind].pid) - before) / result.requests * 1e6)
            rows.append((got["plain"], got["guarded"], got["guarded"][1] / got["plain"][1]))
    finally:
        stop(*procs.values())
    print(f"\nbare handler, plain runner vs connection guard, {SECONDS / 2:g}s rounds (requests/s; CPU µs/request)")
    for (p, p_us), (g, g_us), ratio in rows:
        print(f"  plain {p.rate:7.0f} {p_us:6.1f} µs   guarded {g.rate:7.0f} {g_us:6.1f} µs   "
              f"CPU ratio {ratio:.3f}")
    median = statistics.median(r for _, _, r in rows)
    print(f"  median CPU ratio {median:.3f} (target <= {TARGET})")
    assert median <= TARGET
