"""The SQLite store file deleted under load: no 2xx for what only the deleted file would hold, the server exits
non-zero, and once started again every accepted event is delivered."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from bridge.cli.serve import EXIT_FATAL
from tests.integration.processes import delivered_refs, free_port, spawn, stop_all, wait_http, write_partner_config

pytestmark = pytest.mark.integration


async def load(url: str, accepted: set[str], refused: set[str], done: asyncio.Event) -> None:
    """Post events until `done`, or until the server is gone; sort them by answer."""
    counter = iter(range(1_000_000))

    async def worker(session: aiohttp.ClientSession) -> None:
        while not done.is_set():
            ident = f"e-{next(counter)}"
            try:
                async with session.post(url, json={"id": ident}) as resp:
                    (accepted if 200 <= resp.status < 300 else refused).add(ident)
            except (aiohttp.ClientError, OSError):
                return

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.gather(*(worker(session) for _ in range(16)))


async def test_a_store_file_deleted_under_load_loses_nothing_accepted(tmp_path: Path) -> None:
    """Deleting the store file mid-load: the server refuses (503), saves the data, exits with EXIT_FATAL, and a
    restart delivers every event it answered 2xx."""
    port, sandbox_port = free_port(), free_port()
    cfg = write_partner_config(tmp_path, port, sandbox_port)
    log = tmp_path / "processes.log"
    sandbox = spawn(["sandbox", "--port", str(sandbox_port)], log)
    server = spawn(["serve", "-c", str(cfg)], log)
    restarted = None
    try:
        await wait_http(f"http://127.0.0.1:{sandbox_port}/kapture/tickets", sandbox)
        await wait_http(f"http://127.0.0.1:{port}/readyz", server)
        accepted: set[str] = set()
        refused: set[str] = set()
        done = asyncio.Event()
        loader = asyncio.create_task(load(f"http://127.0.0.1:{port}/hooks/partner", accepted, refused, done))
        async with asyncio.timeout(30):  # a server that accepts nothing fails the test rather than hanging it
            while len(accepted) < 500 and not loader.done():
                await asyncio.sleep(0.01)
        (tmp_path / "var" / "bridge.db").unlink()
        status = await asyncio.to_thread(server.wait, 30)
        done.set()
        await loader
        assert status == EXIT_FATAL
        assert refused, "the deletion should be found while requests still come in"
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        events = [line.get("event") for line in lines]
        assert events.count("store.lost") == 1
        assert "store.salvaged" in events

        restarted = spawn(["serve", "-c", str(cfg)], log)
        await wait_http(f"http://127.0.0.1:{port}/readyz", restarted)
        missing = accepted - await delivered_refs(sandbox_port, accepted)
        assert not missing, f"{len(missing)} of {len(accepted)} accepted events never delivered: {sorted(missing)[:5]}"
    finally:
        stop_all(server, restarted, sandbox)
