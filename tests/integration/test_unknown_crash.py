"""`kill -9` while tickets are being created, with `on_unknown: reconcile`: the sends cut off are looked up
after the restart, so every accepted event makes exactly one ticket."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import aiohttp
import pytest

from tests.integration.processes import (
    PARTNER_MAPPING,
    delivered_refs,
    free_port,
    spawn,
    stop_all,
    wait_http,
    write_partner_config,
)
from tests.integration.test_crash_recovery import load

pytestmark = pytest.mark.integration

MAPPING = PARTNER_MAPPING + """  ref_details: [{object: {bridge_ref: "{{ event.id }}"}}]
"""  # the reference reconciliation looks tickets up by
LOAD = 60_000
"""Events the load posts at most: it is cut by the kill long before (about 1,300 to 1,500 on a quiet machine). With
6,000, a machine busy with other work posted them all before a send was caught made and unanswered."""


async def tickets(sandbox_port: int) -> list[dict[str, object]]:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{sandbox_port}/kapture/tickets") as resp:
        found: list[dict[str, object]] = (await resp.json())["tickets"]
        return found


async def hang(sandbox_port: int, seconds: float) -> None:
    """Have the sandbox's Kapture make each ticket at once and answer `seconds` later."""
    async with aiohttp.ClientSession() as session, \
            session.put(f"http://127.0.0.1:{sandbox_port}/kapture/_faults",
                        json={"hang_after_count": -1, "hang_seconds": seconds}) as resp:
        assert resp.status == 200, await resp.text()


async def made_unanswered(db_path: Path, sandbox_port: int, before: set[str]) -> int:
    """How many deliveries the store has in flight whose ticket the vendor made after `before` was read."""
    with closing(sqlite3.connect(db_path)) as db:
        in_flight = {r[0] for r in db.execute("SELECT json_extract(CAST(body AS TEXT), '$.source_ref') FROM deliveries "
                                              "WHERE status = 'in_flight'")}
    made = {str(t["fields"]["source_ref"]) for t in await tickets(sandbox_port)} - before  # type: ignore[index]
    return len(in_flight & made)


async def test_kill_9_during_load_with_reconcile_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    """Events answered 2xx before a kill -9 (while creates were made but not yet answered) are all delivered
    after a restart, each as exactly one ticket: the sends in flight at the kill are found, not sent again."""
    port, sandbox_port = free_port(), free_port()
    cfg = write_partner_config(tmp_path, port, sandbox_port,
                               retry="{schedule: [100ms, 200ms, 500ms, 1s, 1s, 1s], jitter: 0}")
    cfg.write_text(cfg.read_text() + "    on_unknown: reconcile\n    reference_field: ref_details.bridge_ref\n")
    (tmp_path / "mappings" / "partner.yaml").write_text(MAPPING)
    log = tmp_path / "processes.log"
    sandbox = spawn(["sandbox", "--port", str(sandbox_port)], log)
    server = spawn(["serve", "-c", str(cfg)], log)
    restarted = None
    try:
        await wait_http(f"http://127.0.0.1:{sandbox_port}/kapture/tickets", sandbox)
        await wait_http(f"http://127.0.0.1:{port}/readyz", server)
        await hang(sandbox_port, 0.05)  # each create is made at once and answered 50 ms later
        accepted: set[str] = set()
        killed = asyncio.Event()
        # More events than a busy machine posts before the kill: the load must still be running when it lands.
        loader = asyncio.create_task(load(f"http://127.0.0.1:{port}/hooks/partner", LOAD, 32, accepted, killed))
        while len(accepted) < 1200 and not loader.done():
            await asyncio.sleep(0.01)
        # From now on a create is made and its answer held back 5 s: once one such ticket stands for a delivery
        # the store holds in flight, that send can be neither answered nor recorded before the kill. (Killed at a
        # random moment, the kill could land between a claim and its sends, cutting off none.)
        await hang(sandbox_port, 5.0)
        before = {str(t["fields"]["source_ref"]) for t in await tickets(sandbox_port)}  # type: ignore[index]
        deadline = time.monotonic() + 30
        while not await made_unanswered(tmp_path / "var" / "bridge.db", sandbox_port, before):
            assert time.monotonic() < deadline and not loader.done(), "no send was caught made and unanswered"
            await asyncio.sleep(0.005)
        made_before_kill = len(await tickets(sandbox_port))
        server.send_signal(signal.SIGKILL)
        killed.set()
        server.wait(10)
        await loader
        await hang(sandbox_port, 0.05)
        assert 1200 <= len(accepted) < LOAD, "the kill should land in the middle of the load"
        assert made_before_kill > 0, "the kill should land while tickets are being made"

        restarted = spawn(["serve", "-c", str(cfg)], log)
        await wait_http(f"http://127.0.0.1:{port}/readyz", restarted)
        missing = accepted - await delivered_refs(sandbox_port, accepted)
        assert not missing, f"{len(missing)} accepted events never delivered, e.g. {sorted(missing)[:5]}"
        refs = Counter(str(t["fields"]["source_ref"]) for t in await tickets(sandbox_port))  # type: ignore[index]
        doubled = sorted(r for r, n in refs.items() if n > 1)
        assert not doubled, f"{len(doubled)} events made more than one ticket, e.g. {doubled[:5]}"
        with closing(sqlite3.connect(tmp_path / "var" / "bridge.db")) as db:
            in_doubt = db.execute("SELECT COUNT(*) FROM deliveries WHERE unknowns > 0").fetchone()[0]
            kinds = dict(db.execute("SELECT classification, COUNT(*) FROM attempts GROUP BY classification"))
        print(f"accepted {len(accepted)}; in doubt after the kill {in_doubt}; attempts {kinds}")
        assert in_doubt > 0, "the kill should find sends in flight"
        assert kinds.get("reconciled", 0) >= 1  # (events stored whose 2xx the kill cut off are delivered too)
    finally:
        stop_all(server, restarted, sandbox)
