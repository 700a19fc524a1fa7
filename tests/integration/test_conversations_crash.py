"""Conversations across real processes: a `kill -9` while creates are failing loses no follow-up and makes no
second ticket; two processes on one PostgreSQL queue keep each conversation in order."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.processes import DSN, free_port, spawn, stop_all, wait_http, write_partner_config

pytestmark = pytest.mark.integration

CASES = 4
MESSAGES = ("first", "second", "third")
FAILS = 100_000
LEASE_S = 5
"""PostgreSQL lease in seconds for the two-process test: short, so that a killed process's sends are soon taken over."""

CASE_MAPPING = """name: partner
source: partner
destination: kapture
action: create_ticket
conversation: "{{ payload.case }}"
fields:
  title: "Case {{ payload.case }}"
  source_ref: "{{ payload.id }}"
follow_up:
  action: update_ticket
  fields:
    ticket_id: "{{ ticket.id }}"
    sub_status: P
    comment: "{{ payload.text }}"
"""


def case_config(folder: Path, port: int, sandbox_port: int, delay: str = "100ms", **kw: Any) -> Path:
    cfg = write_partner_config(folder, port, sandbox_port, retry="{schedule: [" + ", ".join([delay] * 60)
                               + "], jitter: 0}", **kw)
    (folder / "mappings" / "partner.yaml").write_text(CASE_MAPPING)
    return cfg


async def post_thread(session: aiohttp.ClientSession, urls: list[str]) -> None:
    """Each case's messages in order (cases interleaved), alternating between the given servers."""
    n = 0
    for i, text in enumerate(MESSAGES):
        for case in range(CASES):
            async with session.post(urls[n % len(urls)], json={"id": f"c{case}-{i}", "case": f"c{case}",
                                                               "text": f"c{case} {text}"}) as resp:
                assert resp.status == 202, await resp.text()
            n += 1


async def creates_tried_twice(session: aiohttp.ClientSession, faults: str) -> None:
    """Wait until the failing vendor has seen every conversation's create at least twice (none waits for
    another), failing the test after 20 s."""
    tried = 0
    for _ in range(400):
        async with session.get(faults) as resp:
            tried = FAILS - int((await resp.json())["fail_count"])
        if tried >= 2 * CASES:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the vendor saw {tried} creates in 20 s, expected at least {2 * CASES}")


async def tickets_when_done(session: aiohttp.ClientSession, sandbox_port: int,
                            seconds: float = 30) -> list[dict[str, Any]]:
    """The sandbox's tickets once every case has its two comments (or after `seconds`)."""
    tickets: list[dict[str, Any]] = []
    for _ in range(int(seconds * 20)):
        async with session.get(f"http://127.0.0.1:{sandbox_port}/kapture/tickets") as resp:
            tickets = (await resp.json())["tickets"]
        if sum(len(t["comments"]) for t in tickets) >= CASES * (len(MESSAGES) - 1):
            break
        await asyncio.sleep(0.05)
    return tickets


def assert_one_ticket_per_case_with_comments_in_order(tickets: list[dict[str, Any]]) -> None:
    by_case = {t["fields"]["title"]: t for t in tickets}
    assert len(tickets) == CASES == len(by_case), [t["fields"] for t in tickets]
    for case in range(CASES):
        assert by_case[f"Case c{case}"]["comments"] == [f"c{case} {m}" for m in MESSAGES[1:]]


async def test_kill_9_while_creates_retry_leaves_one_ticket_and_every_follow_up_in_order(tmp_path: Path) -> None:
    """Creates failing (503) while every follow-up waits; kill -9; the vendor recovers; after a restart each
    conversation has exactly one ticket with its follow-ups applied in arrival order."""
    port, sandbox_port = free_port(), free_port()
    cfg = case_config(tmp_path, port, sandbox_port)
    log = tmp_path / "processes.log"
    sandbox = spawn(["sandbox", "--port", str(sandbox_port)], log)
    server = restarted = None
    faults = f"http://127.0.0.1:{sandbox_port}/kapture/_faults"
    try:
        await wait_http(f"http://127.0.0.1:{sandbox_port}/kapture/tickets", sandbox)
        async with aiohttp.ClientSession() as session:
            async with session.put(faults, json={"fail_count": FAILS, "fail_status": 503}) as resp:
                assert resp.status == 200
            server = spawn(["serve", "-c", str(cfg)], log)
            await wait_http(f"http://127.0.0.1:{port}/readyz", server)
            await post_thread(session, [f"http://127.0.0.1:{port}/hooks/partner"])
            await creates_tried_twice(session, faults)
            server.send_signal(signal.SIGKILL)
            server.wait(10)
            async with session.delete(faults) as resp:
                assert resp.status in (200, 204)
            restarted = spawn(["serve", "-c", str(cfg)], log)
            await wait_http(f"http://127.0.0.1:{port}/readyz", restarted)
            tickets = await tickets_when_done(session, sandbox_port)
        assert_one_ticket_per_case_with_comments_in_order(tickets)
    finally:
        stop_all(server, restarted, sandbox)


@pytest.mark.parametrize("kill", [False, True], ids=["both-up", "kill-9-one"])
async def test_two_postgresql_processes_keep_each_conversation_in_order(tmp_path: Path, pg_schema: str,
                                                                        kill: bool) -> None:
    """Messages of each conversation posted alternately to two processes on one PostgreSQL queue, while the
    creates fail and then recover (with one process killed -9 and started again meanwhile): one ticket per
    conversation, its follow-ups in order, none twice."""
    sandbox_port = free_port()
    ports = [free_port(), free_port()]
    log = tmp_path / "processes.log"
    sandbox = spawn(["sandbox", "--port", str(sandbox_port)], log)
    servers = []
    faults = f"http://127.0.0.1:{sandbox_port}/kapture/_faults"
    try:
        await wait_http(f"http://127.0.0.1:{sandbox_port}/kapture/tickets", sandbox)
        async with aiohttp.ClientSession() as session:
            async with session.put(faults, json={"fail_count": FAILS, "fail_status": 503}) as resp:
                assert resp.status == 200
            for i, port in enumerate(ports):
                # A short lease: a request the kill finds in flight holds its conversation until the lease
                # is taken over (within about 1⅓ leases).
                cfg = case_config(tmp_path, port, sandbox_port, name=f"node{i}", grace=2, max_in_flight=4,
                                  store=f"{DSN}?schema={pg_schema}", lease_seconds=LEASE_S)
                servers.append(spawn(["serve", "-c", str(cfg)], log))
            for port, proc in zip(ports, servers, strict=True):
                await wait_http(f"http://127.0.0.1:{port}/readyz", proc)
            await post_thread(session, [f"http://127.0.0.1:{p}/hooks/partner" for p in ports])
            await creates_tried_twice(session, faults)
            if kill:
                servers[0].send_signal(signal.SIGKILL)
                servers[0].wait(10)
            async with session.delete(faults) as resp:
                assert resp.status in (200, 204)
            if kill:
                servers[0] = spawn(["serve", "-c", str(tmp_path / "node0.yaml")], log)
                await wait_http(f"http://127.0.0.1:{ports[0]}/readyz", servers[0])
            # A delivery the killed process held in flight is taken over within about 1⅓ leases.
            tickets = await tickets_when_done(session, sandbox_port, seconds=30 + 2 * LEASE_S)
        assert_one_ticket_per_case_with_comments_in_order(tickets)
    finally:
        stop_all(*servers, sandbox)
