"""A server process on PostgreSQL whose database connections are killed under load: never a 500, and every
event it accepted is delivered."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from tests.integration.processes import DSN, free_port, spawn, stop, wait_http, write_partner_config

pytestmark = pytest.mark.integration

EVENTS = 600
KILLS = 5
KILL = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'ticketbridge' "
        "AND datname = current_database() AND pid <> pg_backend_pid() AND client_port = ANY($1::int[])")
"""The operator's statement, narrowed to the server under test (other tests may share the database)."""


def local_ports(pid: int) -> list[int]:
    """The local TCP ports of process `pid`'s sockets (its connections to PostgreSQL among them), from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = fd.readlink().name
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.append(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def test_killed_connections_give_503s_never_500s_and_every_202_is_delivered(
    tmp_path: Path, pg_schema: str,
) -> None:
    """Killing the app's PostgreSQL connections several times during load answers no request with 500, every
    503 says Retry-After, and every event answered 202 reaches the vendor."""
    sandbox_port, port = free_port(), free_port()
    log = tmp_path / "processes.log"
    sandbox = spawn(["sandbox", "--port", str(sandbox_port)], log)
    server = None
    statuses: Counter[int] = Counter()
    accepted: set[str] = set()
    try:
        await wait_http(f"http://127.0.0.1:{sandbox_port}/kapture/tickets", sandbox)
        cfg = write_partner_config(tmp_path, port, sandbox_port, store=f"{DSN}?schema={pg_schema}", max_in_flight=8)
        server = spawn(["serve", "-c", str(cfg)], log)
        await wait_http(f"http://127.0.0.1:{port}/readyz", server)
        ids = iter(range(EVENTS))
        done = asyncio.Event()
        killed: list[int] = []

        async with aiohttp.ClientSession() as session:
            async def post() -> None:
                for i in ids:
                    for _ in range(100):  # a provider retries what was not accepted
                        async with session.post(f"http://127.0.0.1:{port}/hooks/partner", json={"id": f"e-{i}"}) as r:
                            statuses[r.status] += 1
                            if r.status == 503:
                                assert r.headers.get("Retry-After") == "5"
                                await asyncio.sleep(0.01)
                                continue
                            if r.status == 202:
                                accepted.add(f"e-{i}")
                            break
                done.set()

            async def kill(admin: asyncpg.Connection) -> None:
                for _ in range(KILLS):
                    while statuses[202] < (len(killed) + 1) * EVENTS // (KILLS + 2) and not done.is_set():
                        await asyncio.sleep(0.005)
                    assert server is not None
                    rows = await admin.fetch(KILL, local_ports(server.pid))
                    killed.append(sum(1 for r in rows if r[0]))

            admin = await asyncpg.connect(DSN)
            try:
                await asyncio.gather(kill(admin), *(post() for _ in range(16)))
            finally:
                await admin.close()

            assert statuses[500] == 0, statuses
            assert len(killed) == KILLS and all(killed), f"each round terminated connections: {killed}"
            assert accepted, statuses
            refs: set[str] = set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60):
                    while not accepted <= refs:
                        await asyncio.sleep(0.1)
                        async with session.get(f"http://127.0.0.1:{sandbox_port}/kapture/tickets") as r:
                            refs = {t["fields"]["source_ref"] for t in (await r.json())["tickets"]}
            assert accepted <= refs, f"accepted (202) but not delivered: {sorted(accepted - refs)}"
            async with session.get(f"http://127.0.0.1:{port}/readyz") as r:
                assert r.status == 200
        conn = await asyncpg.connect(DSN, server_settings={"search_path": pg_schema})
        try:  # a vendor's answer is recorded just after it arrives (or retried from memory)
            succeeded = 0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    while succeeded < len(accepted):
                        await asyncio.sleep(0.1)
                        succeeded = await conn.fetchval("SELECT COUNT(*) FROM deliveries WHERE status = 'succeeded'")
        finally:
            await conn.close()
        assert succeeded >= len(accepted)
    finally:
        for proc in (server, sandbox):
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    stop(proc)
