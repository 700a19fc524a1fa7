"""`kill -9` during a load: every event that got a 2xx is delivered after a restart."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.integration.processes import delivered_refs, free_port, spawn, stop_all, wait_http, write_partner_config

pytestmark = pytest.mark.integration

async def load(url: str, total: int, concurrency: int, accepted: set[str], stop_at: asyncio.Event) -> None:
    """Post `total` events; remember those answered 2xx; stop early once the server is gone."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            ident = f"e-{i}"
            try:
                async with session.post(url, json={"id": ident}) as resp:
                    if 200 <= resp.status < 300:
                        accepted.add(ident)
            except (aiohttp.ClientError, OSError):
                if stop_at.is_set():
                    return

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))


async def test_kill_9_during_load_loses_nothing_accepted(tmp_path: Path) -> None:
    """Events answered 2xx before a kill -9 are all delivered once the server is started again."""
    port, sandbox_port = free_port(), free_port()
    cfg = write_partner_config(tmp_path, port, sandbox_port,
                               retry="{schedule: [100ms, 200ms, 500ms, 1s, 1s, 1s], jitter: 0}")
    log = tmp_path / "processes.log"
    sandbox = spawn(["sandbox", "--port", str(sandbox_port)], log)
    server = spawn(["serve", "-c", str(cfg)], log)
    restarted = None
    try:
        await wait_http(f"http://127.0.0.1:{sandbox_port}/kapture/tickets", sandbox)
        await wait_http(f"http://127.0.0.1:{port}/readyz", server)
        accepted: set[str] = set()
        killed = asyncio.Event()
        loader = asyncio.create_task(load(f"http://127.0.0.1:{port}/hooks/partner", 4000, 32, accepted, killed))
        while len(accepted) < 1500 and not loader.done():
            await asyncio.sleep(0.01)
        server.send_signal(signal.SIGKILL)
        killed.set()
        server.wait(10)
        await loader
        assert 1500 <= len(accepted) < 4000, "the kill should land in the middle of the load"

        restarted = spawn(["serve", "-c", str(cfg)], log)
        await wait_http(f"http://127.0.0.1:{port}/readyz", restarted)
        missing = accepted - await delivered_refs(sandbox_port, accepted)
        assert not missing, f"{len(missing)} accepted events never delivered, e.g. {sorted(missing)[:5]}"
    finally:
        stop_all(server, restarted, sandbox)
