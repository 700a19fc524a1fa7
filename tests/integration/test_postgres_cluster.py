"""Two ticketbridge processes sharing one PostgreSQL queue: all work is done, none of it twice."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.conftest import eventually
from tests.integration.processes import DSN, free_port, spawn, stop, wait_http, write_partner_config

pytestmark = pytest.mark.integration

async def test_two_processes_share_the_work_without_sending_twice(tmp_path: Path, pg_schema: str) -> None:
    """Events posted to either of two processes on one database are each delivered exactly once."""
    sandbox_port = free_port()
    ports = [free_port(), free_port()]
    log = tmp_path / "processes.log"
    sandbox = spawn(["sandbox", "--port", str(sandbox_port)], log)
    servers = []
    try:
        await wait_http(f"http://127.0.0.1:{sandbox_port}/kapture/tickets", sandbox)
        for i, port in enumerate(ports):
            cfg = write_partner_config(tmp_path, port, sandbox_port, name=f"node{i}", grace=2, max_in_flight=4,
                                       store=f"{DSN}?schema={pg_schema}")
            servers.append(spawn(["serve", "-c", str(cfg)], log))
        for port, proc in zip(ports, servers, strict=True):
            await wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        async with aiohttp.ClientSession() as session:
            async def post(i: int) -> int:
                # The same event to both processes (a provider retrying on another node) is stored once.
                async with session.post(f"http://127.0.0.1:{ports[i % 2]}/hooks/partner", json={"id": f"e-{i}"}) as r:
                    first = r.status
                async with session.post(f"http://127.0.0.1:{ports[(i + 1) % 2]}/hooks/partner",
                                        json={"id": f"e-{i}"}) as r:
                    assert r.status == 200
                return first

            assert set(await asyncio.gather(*(post(i) for i in range(200)))) == {202}
            tickets: list[dict[str, object]] = []
            for _ in range(300):
                async with session.get(f"http://127.0.0.1:{sandbox_port}/kapture/tickets") as r:
                    tickets = (await r.json())["tickets"]
                if len(tickets) >= 200:
                    break
                await asyncio.sleep(0.05)
        refs = Counter(t["fields"]["source_ref"] for t in tickets)  # type: ignore[index]
        assert set(refs) == {f"e-{i}" for i in range(200)}
        assert max(refs.values()) == 1
        conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
        try:
            # A ticket is made before its attempt is recorded: the last records may still be on their way.
            async def recorded() -> bool:
                return bool(await conn.fetchval("SELECT COUNT(*) FROM deliveries WHERE status = 'succeeded'") == 200)

            await eventually(recorded, timeout=60)
            events = await conn.fetchval("SELECT COUNT(*) FROM events")
        finally:
            await conn.close()
        assert events == 200
    finally:
        for proc in [*servers, sandbox]:
            with contextlib.suppress(ProcessLookupError):
                stop(proc)
