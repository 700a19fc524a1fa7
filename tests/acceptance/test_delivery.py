"""Delivery through the whole app over real HTTP: vendor outages, bad credentials, replay, restarts."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import pytest

from bridge.simulators.faults import Faults
from bridge.simulators.kapture import KaptureSimulator
from bridge.store.base import DeliveryFilter
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

MAPPING = {
    "partner": """
        source: partner
        destination: kapture
        action: create_ticket
        fields:
          title: {from: payload.title, required: true}
          source_ref: "{{ payload.id }}"
    """,
}


def config(destination: str, grace: float = 5.0) -> str:
    return f"""
    server: {{shutdown_grace_seconds: {grace}}}
    store: {{url: "sqlite:///var/bridge.db"}}
    sources:
      partner: {{kind: json, dedup: payload.id}}
    destinations:
      kapture: {destination}
    """


SANDBOX = ("{vendor: kapture, sandbox: true, timeout_seconds: 0.5, "
           "retry: {schedule: [50ms, 50ms, 50ms, 50ms], jitter: 0}}")


async def post(client: Any, ident: str) -> str:
    resp = await client.post("/hooks/partner", json={"id": ident, "title": f"ticket {ident}"})
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["event_id"])


async def only_delivery(client: Any) -> Any:
    store = runtime(client).store
    [row] = await store.list_deliveries(DeliveryFilter())
    return await store.get_delivery(row.id)


async def settled(client: Any, status: str) -> bool:
    return (await only_delivery(client)).delivery.status == status


@pytest.mark.parametrize("faults", [
    Faults(fail_count=3, fail_status=503),
    Faults(fail_count=2, fail_status=429, retry_after="0"),
    Faults(hang_count=2, hang_seconds=1),
    Faults(drop_count=2),
], ids=["5xx", "429", "timeouts", "dropped"])
async def test_vendor_down_then_recovered_delivers(write_config: ConfigFactory, bridge_client: AppClient,
                                                   faults: Faults) -> None:
    """Through 5xx answers, 429s, timeouts and dropped connections, the delivery is retried until it lands; a
    timeout once connected or a dropped connection is an unknown outcome, resent (Kapture's default without a
    `reference_field`) and counted as a possible duplicate."""
    client = await bridge_client(write_config(config(SANDBOX), MAPPING))
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    failures = faults.fail_count or faults.hang_count or faults.drop_count
    unknown = bool(faults.hang_count or faults.drop_count)
    sim.faults = faults
    await post(client, "a")
    await eventually(lambda: settled(client, "succeeded"))
    detail = await only_delivery(client)
    assert detail.delivery.attempts == failures + 1
    assert [a.classification for a in detail.attempts] == ["unknown" if unknown else "retry"] * failures + ["success"]
    assert (detail.delivery.unknowns, detail.delivery.duplicates) == ((failures, failures) if unknown else (0, 0))
    assert detail.delivery.ticket_id == sim.tickets[0]["ticketId"]
    assert len(sim.tickets) == 1


async def test_vendor_down_past_the_schedule_is_dead_then_replayed(write_config: ConfigFactory,
                                                                   bridge_client: AppClient) -> None:
    """A vendor down through the whole schedule leaves the delivery dead; a replay after recovery sends it."""
    client = await bridge_client(write_config(config(SANDBOX), MAPPING))
    rt = runtime(client)
    sim: KaptureSimulator = rt.simulators["kapture"]
    sim.faults = Faults(fail_count=-1, fail_status=500)
    await post(client, "a")
    await eventually(lambda: settled(client, "dead"))
    detail = await only_delivery(client)
    assert detail.delivery.attempts == 5
    assert "gave up after 5 attempts" in (detail.delivery.last_error or "")
    sim.faults = Faults()
    assert await rt.store.replay([detail.delivery.id]) == [detail.delivery.id]
    rt.dispatcher.notify({"kapture"})
    await eventually(lambda: settled(client, "succeeded"))
    after = await only_delivery(client)
    assert after.delivery.attempts == 6
    assert after.attempts[-1].classification == "success"


async def test_bad_credentials_are_dead_at_once(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """Kapture's 'Invalid Auth Key' (inside an HTTP 200) is an auth failure: dead after one attempt, not retried."""
    dest = "{vendor: kapture, sandbox: true, retry: {schedule: [50ms, 50ms]}}"
    client = await bridge_client(write_config(config(dest), MAPPING))
    runtime(client).simulators["kapture"].tokens = set()  # the sandbox's demo key no longer valid
    await post(client, "a")
    await eventually(lambda: settled(client, "dead"))
    detail = await only_delivery(client)  # dead is final: no claim hands it out again, so no later attempt
    assert detail.delivery.attempts == 1
    assert detail.attempts[0].classification == "auth"
    assert detail.attempts[0].http_status == 200
    assert "Invalid Auth Key" in (detail.attempts[0].error or "")


async def test_a_hanging_vendor_does_not_delay_another(write_config: ConfigFactory, bridge_client: AppClient,
                                                       aiohttp_server: Any) -> None:
    """While one destination's vendor hangs, another destination's deliveries all go out."""
    slow = KaptureSimulator()
    slow.faults = Faults(hang_count=-1, hang_seconds=2)
    server = await aiohttp_server(slow.app())
    cfg = f"""
    server: {{shutdown_grace_seconds: 0.2}}
    store: {{url: "sqlite:///var/bridge.db"}}
    sources:
      partner: {{kind: json}}
    destinations:
      slow: {{vendor: kapture, base_url: "{server.make_url('')}", token: sandbox-token, max_in_flight: 2}}
      fast: {{vendor: kapture, sandbox: true}}
    """
    mappings = {name: MAPPING["partner"].replace("destination: kapture", f"destination: {name}")
                for name in ("slow", "fast")}
    client = await bridge_client(write_config(cfg, mappings))
    fast: KaptureSimulator = runtime(client).simulators["kapture"]
    for i in range(5):
        await post(client, str(i))
    await eventually(lambda: len(fast.tickets) == 5)
    assert slow.tickets == []  # its vendor hangs for 2 s a request: the fast ones went out in the meantime


async def test_restart_sends_pending_and_in_flight_work_once(write_config: ConfigFactory, bridge_client: AppClient,
                                                             aiohttp_server: Any) -> None:
    """Stopped with deliveries pending and in flight, the next start sends each; none that succeeded is sent again."""
    sim = KaptureSimulator()
    server = await aiohttp_server(sim.app())
    dest = f"{{vendor: kapture, base_url: \"{server.make_url('')}\", token: sandbox-token, max_in_flight: 2}}"
    cfg = write_config(config(dest, grace=0.1), MAPPING)

    first = await bridge_client(cfg)
    done_before = [f"early-{i}" for i in range(4)]
    for ident in done_before:
        await post(first, ident)
    await eventually(lambda: len(sim.tickets) == 4)
    await eventually(lambda: _count(first, "succeeded", 4))
    sim.faults = Faults(latency_ms=2000)
    late = [f"late-{i}" for i in range(6)]
    for ident in late:
        await post(first, ident)
    await eventually(lambda: sim.requests >= 6)  # two sends are now in flight
    await first.close()

    sim.faults = Faults()
    second = await bridge_client(cfg)
    await eventually(lambda: _count(second, "succeeded", 10), timeout=15)
    refs = Counter(t["fields"]["source_ref"] for t in sim.tickets)
    assert set(refs) == set(done_before) | set(late)
    assert all(refs[ident] == 1 for ident in done_before)


async def _count(client: Any, status: str, n: int) -> bool:
    rows = await runtime(client).store.list_deliveries(DeliveryFilter(status=status, limit=100))
    return len(rows) == n


async def test_new_work_wakes_an_idle_destination_at_once(write_config: ConfigFactory,
                                                          bridge_client: AppClient) -> None:
    """An accepted event wakes an idle lane: it is sent though the fallback poll is an hour away."""
    client = await bridge_client(write_config(config(SANDBOX), MAPPING))
    rt = runtime(client)
    sim: KaptureSimulator = rt.simulators["kapture"]
    assert rt.dispatcher is not None and rt.store is not None
    claims = 0
    claim = rt.store.claim

    async def counted_claim(*args: Any) -> Any:
        nonlocal claims
        claims += 1
        return await claim(*args)

    rt.store.claim = counted_claim  # type: ignore[method-assign]  # a spy: when the lane looks for work
    rt.dispatcher.timings = dataclasses.replace(rt.dispatcher.timings, poll_s=3600.0)
    rt.dispatcher.notify({"kapture"})
    await eventually(lambda: claims >= 1)  # the lane looked, found nothing, and now sleeps for the hour
    await post(client, "a")
    await eventually(lambda: len(sim.tickets) == 1)
