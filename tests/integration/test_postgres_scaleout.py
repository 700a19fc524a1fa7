"""Three ticketbridge processes on one PostgreSQL store, as correct as one: one rate limit at the vendor,
one 429 pause, and leases that mean ownership (a killed process's work taken over in bounded time, nothing
sent twice that was not in flight at the kill). Plus one process whose work waits for the rate limit or a
Retry-After longer than its lease, which is not sent twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from bridge.delivery.dispatcher import LEASE_SECONDS
from bridge.vendors.kapture import CREATE_PATH
from tests.conftest import eventually
from tests.integration.processes import DSN, free_port, spawn, stop, wait_http, write_partner_config
from tests.integration.test_postgres_outage import KILL, local_ports

pytestmark = pytest.mark.integration


@dataclass
class Cluster:
    """A recording Kapture sandbox and ticketbridge processes sharing one schema."""

    sandbox_port: int
    ports: list[int]
    servers: list[subprocess.Popen[bytes]]
    schema: str
    session: aiohttp.ClientSession
    accepted: list[str] = field(default_factory=list)

    @property
    def sandbox(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}/kapture"

    async def post(self, i: int, to: int | None = None) -> int:
        port = self.ports[to if to is not None else i % len(self.ports)]
        async with self.session.post(f"http://127.0.0.1:{port}/hooks/partner", json={"id": f"e-{i}"}) as r:
            if r.status == 202:
                self.accepted.append(f"e-{i}")
            return r.status

    async def received(self) -> list[dict[str, Any]]:
        """The vendor's log of ticket creations: arrival time (`t`, the sandbox's monotonic clock) and status."""
        async with self.session.get(f"{self.sandbox}/_received") as r:
            entries: list[dict[str, Any]] = (await r.json())["received"]
        return [e for e in entries if e["method"] == "POST" and e["path"].endswith(CREATE_PATH)]

    async def any_received(self) -> bool:
        return bool(await self.received())

    async def refs(self) -> Counter[str]:
        """How many tickets the vendor created for each event id."""
        async with self.session.get(f"{self.sandbox}/tickets") as r:
            tickets = (await r.json())["tickets"]
        return Counter(t["fields"]["source_ref"] for t in tickets)

    async def delivered(self, within: float) -> Counter[str]:
        """Wait until every accepted event has a ticket; the tickets per event id."""
        deadline = time.monotonic() + within
        while True:
            refs = await self.refs()
            if set(self.accepted) <= set(refs):
                return refs
            if time.monotonic() > deadline:
                missing = sorted(set(self.accepted) - set(refs))
                raise AssertionError(f"{len(missing)} accepted events not delivered within {within}s: {missing[:5]}")
            await asyncio.sleep(0.1)

    async def sql(self, query: str, *args: Any) -> list[Any]:
        conn = await asyncpg.connect(DSN, server_settings={"search_path": self.schema})
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, schema: str, n: int = 3, **config: Any) -> AsyncIterator[Cluster]:
    sandbox_port = free_port()
    ports = [free_port() for _ in range(n)]
    log = tmp_path / "processes.log"
    sandbox = spawn(["sandbox", "--port", str(sandbox_port)], log)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        await wait_http(f"http://127.0.0.1:{sandbox_port}/kapture/tickets", sandbox)
        for i, port in enumerate(ports):
            cfg = write_partner_config(tmp_path, port, sandbox_port, name=f"node{i}", grace=2,
                                       store=f"{DSN}?schema={schema}", **config)
            servers.append(spawn(["serve", "-c", str(cfg)], log))
        for port, proc in zip(ports, servers, strict=True):
            await wait_http(f"http://127.0.0.1:{port}/readyz", proc)
        async with aiohttp.ClientSession() as session:
            yield Cluster(sandbox_port, ports, servers, schema, session)
    finally:
        for proc in [*servers, sandbox]:
            with contextlib.suppress(ProcessLookupError):
                stop(proc)


def most_in_any_window(times: list[float], window: float) -> int:
    """The most arrivals in any half-open window of `window` seconds (each window starting at an arrival)."""
    times = sorted(times)
    most, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + window:
            j += 1
        most = max(most, j - i)
    return most


async def held_by(c: Cluster, owner_prefix: str) -> set[str]:
    """The deliveries in flight under a lease owner starting with `owner_prefix`."""
    return {r[0] for r in await c.sql("SELECT id FROM deliveries WHERE status = 'in_flight' "
                                      "AND starts_with(lease_owner, $1)", owner_prefix)}


async def test_three_processes_keep_one_rate_limit_at_the_vendor(tmp_path: Path, pg_schema: str) -> None:
    """A destination limited to 25 per 2 s receives at most 25 requests in every 2 s window from three
    processes together, and all 300 events spread over them arrive, each once."""
    async with cluster(tmp_path, pg_schema, rate_limit="{requests: 25, per_seconds: 2}", max_in_flight=16) as c:
        assert set(await asyncio.gather(*(c.post(i) for i in range(300)))) == {202}
        refs = await c.delivered(within=90)
        received = await c.received()
    assert len(c.accepted) == 300
    assert max(refs.values()) == 1
    assert len(received) == 300
    most = most_in_any_window([e["t"] for e in received], 2.0)
    print(f"most requests in any 2 s window: {most} (limit 25)")
    assert most <= 25


async def test_a_killed_process_work_is_taken_over_within_the_lease(tmp_path: Path, pg_schema: str) -> None:
    """After kill -9 of one of three processes mid-load, every accepted event is delivered, duplicates are at
    most the sends it had in flight, and with the default lease its work is taken over within 15 s (a lease
    and the third of one the reaper waits: 10 s + 3.3 s)."""
    lease_s = LEASE_SECONDS
    async with cluster(tmp_path, pg_schema, max_in_flight=4) as c:
        await c.session.put(f"{c.sandbox}/_faults", json={"latency_ms": 400})  # sends stay in flight a while
        assert set(await asyncio.gather(*(c.post(i) for i in range(240)))) == {202}
        victim = c.servers[0]
        owner = f"{socket.gethostname()}:{c.ports[0]}/{victim.pid}."
        deadline = time.monotonic() + 60
        while len(await c.refs()) < 40 or not await held_by(c, owner):  # mid-load, the victim holding work
            assert time.monotonic() < deadline, "the victim never held work"
            await asyncio.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(5)
        killed_at = time.monotonic()
        held = await held_by(c, owner)
        assert held, "the killed process held no work: the test did not kill it mid-load"
        while await held_by(c, owner):
            assert time.monotonic() - killed_at < 4 * lease_s, "the killed process's work was never taken over"
            await asyncio.sleep(0.1)
        took_over_s = time.monotonic() - killed_at
        refs = await c.delivered(within=120)
    duplicates = sum(n - 1 for n in refs.values())
    print(f"take-over {took_over_s:.1f} s (lease {lease_s} s); in flight at the kill {len(held)}; "
          f"duplicates {duplicates}")
    assert took_over_s <= 15.0
    assert duplicates <= len(held)
    assert set(refs) == set(c.accepted)


async def test_a_429_to_one_process_holds_back_all_three(tmp_path: Path, pg_schema: str) -> None:
    """A 429 with Retry-After answered to one process stops every process sending to that vendor for the
    pause, and nothing is sent twice. (The product honours any Retry-After; 8 s keeps the test short.)"""
    pause_s = 8.0
    async with cluster(tmp_path, pg_schema, max_in_flight=1) as c:
        await c.session.put(f"{c.sandbox}/_faults",
                            json={"fail_count": 1, "fail_status": 429, "retry_after": f"{pause_s:g}"})
        # One event first, so that exactly one request (from one process) meets the 429; then work for all.
        assert await c.post(0, to=1) == 202
        await eventually(c.any_received, timeout=60)  # the one request that meets the 429
        assert set(await asyncio.gather(*(c.post(i) for i in range(1, 61)))) == {202}
        refs = await c.delivered(within=60)
        received = await c.received()
    statuses = [e["status"] for e in received]
    assert statuses[0] == 429
    first_after = min(e["t"] for e in received[1:])
    held_s = first_after - received[0]["t"]
    print(f"after the 429 (Retry-After {pause_s:g} s) the vendor heard nothing for {held_s:.2f} s")
    assert held_s >= pause_s - 0.1
    assert max(refs.values()) == 1
    assert len(received) == 61 + 1  # each event once, and the one 429


async def test_work_waiting_longer_than_its_lease_is_not_sent_twice(tmp_path: Path, pg_schema: str) -> None:
    """One process whose deliveries wait for the rate limit and behind a Retry-After, and whose sends take
    longer than its 1 s lease, sends every one exactly once: it claims only what it may send now, and renews
    the leases of what it is sending."""
    async with cluster(tmp_path, pg_schema, n=1, rate_limit="{requests: 2, per_seconds: 1}", lease_seconds=1,
                       max_in_flight=8) as c:
        await c.session.put(f"{c.sandbox}/_faults",
                            json={"after": 2, "fail_count": 1, "fail_status": 429, "retry_after": "4",
                                  "latency_ms": 1500})
        assert set(await asyncio.gather(*(c.post(i) for i in range(12)))) == {202}
        refs = await c.delivered(within=60)
        received = await c.received()
    assert max(refs.values()) == 1
    assert len(received) == 12 + 1


async def test_a_restarted_process_takes_back_its_own_work(tmp_path: Path, pg_schema: str) -> None:
    """A lone process killed mid-send and started again on its port takes back what it held as it starts, not
    after its leases (30 s here) run out, and every accepted event is delivered."""
    lease_s = 30.0
    async with cluster(tmp_path, pg_schema, n=1, max_in_flight=4, lease_seconds=lease_s) as c:
        await c.session.put(f"{c.sandbox}/_faults", json={"latency_ms": 1000})
        assert set(await asyncio.gather(*(c.post(i) for i in range(30)))) == {202}
        old = c.servers[0]
        owner = f"{socket.gethostname()}:{c.ports[0]}/{old.pid}."
        deadline = time.monotonic() + 30
        while True:  # mid-load, and holding work: frozen (SIGSTOP) while that is checked, so it cannot let go of it
            assert time.monotonic() < deadline, "the process never held work"
            if len(await c.refs()) >= 4:
                os.kill(old.pid, signal.SIGSTOP)
                if held := await held_by(c, owner):
                    break
                os.kill(old.pid, signal.SIGCONT)  # between a result recorded and its next claim: try again
            await asyncio.sleep(0.05)
        os.kill(old.pid, signal.SIGKILL)
        old.wait(5)
        restarted = spawn(["serve", "-c", str(tmp_path / "node0.yaml")], tmp_path / "processes.log")
        c.servers.append(restarted)
        await wait_http(f"http://127.0.0.1:{c.ports[0]}/readyz", restarted)
        started = time.monotonic()
        while await held_by(c, owner):
            assert time.monotonic() - started < lease_s / 2, "the restarted process did not take its work back"
            await asyncio.sleep(0.05)
        took_back_s = time.monotonic() - started
        refs = await c.delivered(within=60)
    print(f"taken back {took_back_s:.1f} s after the restart answered (lease {lease_s:g} s)")
    assert took_back_s <= 3.0
    assert set(refs) == set(c.accepted)
    assert sum(n - 1 for n in refs.values()) <= len(held)


async def test_killing_the_database_connections_of_three_processes_gives_no_500(
    tmp_path: Path, pg_schema: str,
) -> None:
    """Killing every database connection of three processes several times during load (pg_terminate_backend)
    answers no request with 500 (a 503 says Retry-After, and the provider retries), and every event answered
    202 (or 200 duplicate, on a retry) by any of them is delivered."""
    events, kills = 450, 4
    statuses: Counter[int] = Counter()
    async with cluster(tmp_path, pg_schema, max_in_flight=8) as c:
        ids = iter(range(events))
        done = asyncio.Event()
        killed: list[int] = []

        async def post() -> None:
            for i in ids:
                port = c.ports[i % len(c.ports)]
                for _ in range(100):  # a provider retries what was not accepted
                    async with c.session.post(f"http://127.0.0.1:{port}/hooks/partner", json={"id": f"e-{i}"}) as r:
                        statuses[r.status] += 1
                        if r.status in (200, 202):
                            c.accepted.append(f"e-{i}")
                        if r.status != 503:
                            break
                        assert r.headers.get("Retry-After") == "5"
                    await asyncio.sleep(0.01)
            done.set()

        async def kill(admin: asyncpg.Connection) -> None:
            for _ in range(kills):
                while statuses[202] < (len(killed) + 1) * events // (kills + 2) and not done.is_set():
                    await asyncio.sleep(0.005)
                ports = [p for proc in c.servers for p in local_ports(proc.pid)]
                rows = await admin.fetch(KILL, ports)
                killed.append(sum(1 for r in rows if r[0]))

        admin = await asyncpg.connect(DSN)
        try:
            await asyncio.gather(kill(admin), *(post() for _ in range(24)))
        finally:
            await admin.close()
        refs = await c.delivered(within=90)
        for port in c.ports:
            async with c.session.get(f"http://127.0.0.1:{port}/readyz") as r:
                assert r.status == 200
    print(f"answers {dict(statuses)}; connections terminated per round {killed}; "
          f"duplicates {sum(n - 1 for n in refs.values())}")
    assert statuses[500] == 0, statuses
    assert len(killed) == kills and all(killed), f"each round terminated connections: {killed}"
    # Each event was answered 202, or 200 `duplicate` when a 503 met an accept that had in fact committed: either
    # way the provider stops, and the event must reach the vendor.
    assert statuses[202] + statuses[200] == events
    assert set(refs) == {f"e-{i}" for i in range(events)}


@pytest.mark.slow
async def test_a_429_with_retry_after_150_to_one_process_holds_back_all_three(tmp_path: Path, pg_schema: str) -> None:
    """A 429 with `Retry-After: 150` answered to one of three processes pauses the destination in the shared gate
    for 150 s: while it lasts no process sends though all three hold accepted work, and after it every event
    arrives once (about 2.7 minutes)."""
    pause_s = 150.0
    async with cluster(tmp_path, pg_schema, max_in_flight=2) as c:
        await c.session.put(f"{c.sandbox}/_faults",
                            json={"fail_count": 1, "fail_status": 429, "retry_after": f"{pause_s:g}"})
        assert await c.post(0, to=1) == 202
        await eventually(c.any_received, timeout=60)  # the one request that meets the 429
        [[paused_for_ms]] = await c.sql("SELECT paused_until - (extract(epoch from clock_timestamp()) * 1000)::bigint "
                                        "FROM destination_gates WHERE destination = 'kapture'")
        assert pause_s - 5 < paused_for_ms / 1000 <= pause_s, paused_for_ms
        assert set(await asyncio.gather(*(c.post(i) for i in range(1, 61)))) == {202}
        # Held: for a while, every process has work due and none reaches the vendor.
        [[due]] = await c.sql("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
        assert due == 61
        watched_until = time.monotonic() + 10
        while time.monotonic() < watched_until:
            assert len(await c.received()) == 1, "a process sent during the pause"
            await asyncio.sleep(0.2)
        refs = await c.delivered(within=pause_s + 30)
        received = await c.received()
    held_s = min(e["t"] for e in received[1:]) - received[0]["t"]
    print(f"after the 429 (Retry-After {pause_s:g} s) the vendor heard nothing for {held_s:.1f} s")
    assert received[0]["status"] == 429
    assert held_s >= pause_s - 0.5
    assert max(refs.values()) == 1
    assert len(received) == 61 + 1
