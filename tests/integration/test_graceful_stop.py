"""SIGTERM: stop taking requests, let sends in flight finish within the grace period, give back the rest."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from tests.integration.processes import free_port, spawn, stop, wait_http, write_partner_config

pytestmark = pytest.mark.integration

def statuses(folder: Path) -> dict[str, int]:
    with sqlite3.connect(folder / "var" / "bridge.db") as conn:
        return dict(conn.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status").fetchall())


async def run_stop(tmp_path: Path, grace: float, latency_ms: int) -> tuple[dict[str, int], int, Path, int, int]:
    port, sandbox_port = free_port(), free_port()
    cfg = write_partner_config(tmp_path, port, sandbox_port, grace=grace, max_in_flight=2, dedup=False)
    log = tmp_path / "processes.log"
    sandbox = spawn(["sandbox", "--port", str(sandbox_port)], log)
    server = spawn(["serve", "-c", str(cfg)], log)
    try:
        await wait_http(f"http://127.0.0.1:{sandbox_port}/kapture/tickets", sandbox)
        await wait_http(f"http://127.0.0.1:{port}/readyz", server)
        async with aiohttp.ClientSession() as session:
            await session.put(f"http://127.0.0.1:{sandbox_port}/kapture/_faults", json={"latency_ms": latency_ms})
            for i in range(5):
                async with session.post(f"http://127.0.0.1:{port}/hooks/partner", json={"id": f"e-{i}"}) as r:
                    assert r.status == 202
            for _ in range(200):
                async with session.get(f"http://127.0.0.1:{sandbox_port}/kapture/tickets") as r:
                    if (await r.json())["requests"] >= 2:
                        break
                await asyncio.sleep(0.02)
            server.send_signal(signal.SIGTERM)
            await refusing(f"http://127.0.0.1:{port}/healthz")
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.post(f"http://127.0.0.1:{port}/hooks/partner", json={"id": "late"})
        code = await asyncio.to_thread(server.wait, grace + 10)
        return statuses(tmp_path), code, cfg, sandbox_port, port
    finally:
        with contextlib.suppress(ProcessLookupError):
            stop(server)
        stop(sandbox)


async def refusing(url: str, timeout: float = 10.0) -> None:
    """Wait until `url` refuses new connections (the server has stopped listening); GETs store nothing."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    await resp.read()
            except aiohttp.ClientConnectionError:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"{url} still answered {timeout}s after SIGTERM")


async def test_sigterm_lets_sends_in_flight_finish(tmp_path: Path) -> None:
    """Sends in flight that finish within the grace period are recorded; the rest stay pending; exit 0."""
    counts, code, *_ = await run_stop(tmp_path, grace=5, latency_ms=600)
    assert code == 0
    assert counts.get("in_flight", 0) == 0
    assert counts["succeeded"] == 2
    assert counts["pending"] == 3


async def test_sigterm_gives_back_sends_past_the_grace_period(tmp_path: Path) -> None:
    """Sends still in flight when the grace period ends are left pending (those whose request went out recorded as
    unknown outcomes, due again after the first retry delay), and all are sent after a restart."""
    counts, code, cfg, sandbox_port, port = await run_stop(tmp_path, grace=0.3, latency_ms=3000)
    assert code == 0
    assert counts.get("in_flight", 0) == 0
    assert counts.get("succeeded", 0) == 0
    assert counts["pending"] == 5
    log = tmp_path / "processes.log"
    sandbox = spawn(["sandbox", "--port", str(sandbox_port)], log)
    server = None
    try:
        # The vendor is up before the bridge starts: a send refused for a vendor still starting would be
        # scheduled minutes later (its second attempt), longer than this test waits.
        await wait_http(f"http://127.0.0.1:{sandbox_port}/kapture/tickets", sandbox)
        server = spawn(["serve", "-c", str(cfg)], log)
        await wait_http(f"http://127.0.0.1:{port}/readyz", server)
        deadline = time.monotonic() + 60  # the sends cut off are due again after the first retry delay (5 s)
        while statuses(tmp_path).get("succeeded") != 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert statuses(tmp_path) == {"succeeded": 5}
    finally:
        if server is not None:
            stop(server)
        stop(sandbox)
