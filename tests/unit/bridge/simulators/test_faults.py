"""The simulators' fault knobs: failing statuses in the vendor's shape, latency, hangs and dropped connections."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from bridge.simulators import registry
from bridge.simulators.faults import Faults
from bridge.simulators.leadsquared import LeadSquaredSimulator
from bridge.simulators.netgroot import NetgrootSimulator
from bridge.vendors.netgroot import SUBJECTS_PATH


def test_registry_has_a_simulator_for_every_vendor() -> None:
    """Every vendor has a simulator, built fresh by its factory."""
    from bridge.vendors.registry import ADAPTERS

    sims = registry()
    assert set(sims) == set(ADAPTERS)
    assert sims["leadsquared"]() is not sims["leadsquared"]()


async def test_fail_count_answers_in_the_vendors_shape_then_recovers(aiohttp_client: Any) -> None:
    """Set over HTTP, a failure knob answers the next requests with its status and Retry-After, then stops."""
    sim = NetgrootSimulator()
    client = await aiohttp_client(sim.app())
    resp = await client.put("/_faults", json={"fail_count": 2, "fail_status": 503, "retry_after": "7"})
    assert (await resp.json())["fail_count"] == 2
    for _ in range(2):
        resp = await client.get(SUBJECTS_PATH, headers={"Authorization": "Bearer sandbox-token"})
        assert (resp.status, resp.headers["Retry-After"]) == (503, "7")
        assert await resp.json() == {"success": False, "message": "simulated outage"}
    resp = await client.get(SUBJECTS_PATH, headers={"Authorization": "Bearer sandbox-token"})
    assert resp.status == 200
    assert (await (await client.get("/_faults")).json())["fail_count"] == 0


async def test_bad_knobs_are_refused(aiohttp_client: Any) -> None:
    """An unknown or mistyped knob is a 400 naming it."""
    client = await aiohttp_client(NetgrootSimulator().app())
    resp = await client.put("/_faults", json={"fail_cuont": 1})
    assert resp.status == 400
    assert "fail_cuont" in (await resp.json())["error"]


async def test_latency_delays_answers(aiohttp_client: Any) -> None:
    """latency_ms holds every answer at least that long."""
    sim = LeadSquaredSimulator()
    sim.faults = Faults(latency_ms=200)
    client = await aiohttp_client(sim.app())
    started = time.monotonic()
    await client.post("/api/tenants/sandbox-org/tickets", json={})
    assert time.monotonic() - started >= 0.19


async def test_hang_outlasts_a_client_timeout(aiohttp_client: Any) -> None:
    """hang_count makes requests hang past the client's timeout; the next one is served."""
    sim = NetgrootSimulator()
    sim.faults = Faults(hang_count=1, hang_seconds=5)
    client = await aiohttp_client(sim.app())
    with pytest.raises(asyncio.TimeoutError):
        await client.get(SUBJECTS_PATH, timeout=aiohttp.ClientTimeout(total=0.2))
    resp = await client.get(SUBJECTS_PATH, headers={"Authorization": "Bearer sandbox-token"})
    assert resp.status == 200


async def test_drop_closes_the_connection_and_is_listed(aiohttp_client: Any) -> None:
    """drop_count closes the connection without an answer, and the received list says it was dropped."""
    sim = NetgrootSimulator()
    sim.faults = Faults(drop_count=1)
    client = await aiohttp_client(sim.app())
    with pytest.raises(aiohttp.ClientError):
        await client.get(SUBJECTS_PATH)
    assert [e["status"] for e in sim.received.entries] == ["dropped"]


async def test_after_serves_the_first_requests_normally(aiohttp_client: Any) -> None:
    """With `after: 2`, two requests are served and the faults start with the third."""
    sim = NetgrootSimulator()
    sim.faults = Faults(after=2, fail_count=-1, fail_status=500)
    client = await aiohttp_client(sim.app())
    statuses = [(await client.get(SUBJECTS_PATH, headers={"Authorization": "Bearer sandbox-token"})).status
                for _ in range(4)]
    assert statuses == [200, 200, 500, 500]
