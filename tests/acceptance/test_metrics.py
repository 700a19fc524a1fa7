"""`GET /metrics`: what ops scrape, behind the admin token, with every value checked against what happened."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from bridge.simulators.faults import Faults
from bridge.store import open_store
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.integration.store.contract import accept_one, make_delivery

CONFIG = """
store: {{url: "sqlite:///var/bridge.db"}}
admin: {{token: "{token}"}}
sources:
  contact: {{kind: form}}
  partner: {{kind: json, hmac: {{secret: s3cret}}}}
destinations:
  kapture: {{vendor: kapture, sandbox: true, retry: {{schedule: [20ms, 20ms], jitter: 0}}}}
"""
MAPPINGS = {
    "contact": """
        source: [contact, partner]
        destination: kapture
        action: create_ticket
        fields:
          title: "{{ payload.subject }}"
    """,
}
AUTH = {"Authorization": "Bearer letmein"}


def samples(text: str) -> dict[str, float]:
    """Each sample line, `name{labels}` → value."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


async def test_metrics_count_intake_attempts_and_the_backlog(write_config: ConfigFactory,
                                                             bridge_client: AppClient) -> None:
    """Accepted and rejected requests, attempts by classification and deliveries by status are all exposed."""
    client: Any = await bridge_client(write_config(CONFIG.format(token="letmein"), MAPPINGS))
    sim = runtime(client).simulators["kapture"]
    sim.faults = Faults(fail_count=1, fail_status=503)
    for subject in ("a", "b"):
        assert (await client.post("/hooks/contact", data={"subject": subject},
                                  headers={"Accept": "application/json"})).status == 202
    body = b'{"subject": "c"}'
    bad = await client.post("/hooks/partner", data=body, headers={"Content-Type": "application/json",
                                                                  "X-Signature": "00"})
    assert bad.status == 401
    good = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert (await client.post("/hooks/partner", data=body, headers={"Content-Type": "application/json",
                                                                    "X-Signature": good})).status == 202
    await eventually(lambda: len(sim.tickets) == 3)

    async def recorded() -> bool:
        # A ticket exists as soon as the simulator answers; its delivery's status is committed a moment later.
        return (await runtime(client).store.counts()).get("kapture") == {"succeeded": 3}

    await eventually(recorded)

    resp = await client.get("/metrics", headers=AUTH)
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    got = samples(await resp.text())
    assert got['ticketbridge_intake_requests_total{source="contact",outcome="accepted"}'] == 2
    assert got['ticketbridge_intake_requests_total{source="partner",outcome="rejected.401"}'] == 1
    assert got['ticketbridge_intake_requests_total{source="partner",outcome="accepted"}'] == 1
    assert got['ticketbridge_delivery_attempts_total{destination="kapture",classification="success"}'] == 3
    assert got['ticketbridge_delivery_attempts_total{destination="kapture",classification="retry"}'] == 1
    assert got['ticketbridge_destination_paused{destination="kapture"}'] == 0
    assert got['ticketbridge_deliveries{destination="kapture",status="succeeded"}'] == 3
    loaded = [v for k, v in got.items() if k.startswith("ticketbridge_mappings_loaded_timestamp_seconds{version=")]
    assert loaded == [runtime(client).mappings.loaded_at.timestamp()]  # in full, not rounded to 6 digits


async def test_metrics_need_the_admin_token(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """Off (404) while admin.token is empty, whatever token the request carries."""
    off: Any = await bridge_client(write_config(CONFIG.format(token=""), MAPPINGS), workers=False)
    assert (await off.get("/metrics", headers=AUTH)).status == 404


async def test_metrics_refuse_a_wrong_token(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """A wrong or missing bearer token gets 401 and no figures."""
    client: Any = await bridge_client(write_config(CONFIG.format(token="letmein"), MAPPINGS), workers=False)
    for headers in ({}, {"Authorization": "Bearer nope"}):
        resp = await client.get("/metrics", headers=headers)
        assert resp.status == 401
        assert "ticketbridge_" not in await resp.text()


OBSERVED = """
store: {url: "sqlite:///var/bridge.db"}
admin: {token: letmein, read_tokens: {grafana: "r3ad-only-token"}}
sources:
  contact: {kind: form}
  orphan: {kind: form}
destinations:
  kapture: {vendor: kapture, sandbox: true, retry: {schedule: [20ms, 20ms], jitter: 0}}
"""
OBSERVED_MAPPINGS = {
    "contact": """
        source: contact
        destination: kapture
        action: create_ticket
        when: "payload.subject != 'skip me'"
        fields:
          title: "{{ payload.subject }}"
          priority: {from: payload.level, required: true}
    """,
}


def histogram(got: dict[str, float], name: str, labels: str) -> tuple[dict[str, float], float, float]:
    """A histogram's cumulative buckets (le → count), its sum and its count, for one label set."""
    prefix = f"{name}_bucket{{{labels},le="
    buckets = {k[len(prefix) + 1:-2]: v for k, v in got.items() if k.startswith(prefix)}
    return buckets, got[f"{name}_sum{{{labels}}}"], got[f"{name}_count{{{labels}}}"]


async def test_metrics_show_latency_histograms_unmatched_events_and_render_failures(
    write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """Intake latency by source, attempt duration and delivery latency by destination are histograms whose
    counts match what happened; events no mapping took are counted by reason and render failures by mapping."""
    client: Any = await bridge_client(write_config(OBSERVED, OBSERVED_MAPPINGS))
    sim = runtime(client).simulators["kapture"]
    sim.faults = Faults(fail_count=1, fail_status=503)
    posts = [("contact", {"subject": "a", "level": "high"}), ("contact", {"subject": "b", "level": "low"}),
             ("contact", {"subject": "skip me", "level": "low"}), ("contact", {"subject": "c"}),
             ("orphan", {"subject": "d"})]
    for source, form in posts:
        resp = await client.post(f"/hooks/{source}", data=form, headers={"Accept": "application/json"})
        assert resp.status == 202, await resp.text()
    await eventually(lambda: len(sim.tickets) == 2)

    async def recorded() -> bool:
        return (await runtime(client).store.counts()).get("kapture", {}).get("succeeded") == 2

    await eventually(recorded)
    got = samples(await (await client.get("/metrics", headers=AUTH)).text())

    buckets, total, count = histogram(got, "ticketbridge_intake_duration_seconds", 'source="contact"')
    assert count == 4 and buckets["+Inf"] == 4 and total > 0
    assert list(buckets.values()) == sorted(buckets.values())  # cumulative
    assert histogram(got, "ticketbridge_intake_duration_seconds", 'source="orphan"')[2] == 1
    attempts = histogram(got, "ticketbridge_delivery_attempt_duration_seconds", 'destination="kapture"')
    assert attempts[2] == 3  # one 503, then two successes
    latency = histogram(got, "ticketbridge_delivery_latency_seconds", 'destination="kapture"')
    assert latency[2] == 2 and latency[1] >= attempts[1] / 3
    assert got['ticketbridge_events_unmatched_total{source="contact",reason="skipped"}'] == 1
    assert got['ticketbridge_events_unmatched_total{source="orphan",reason="no_mapping"}'] == 1
    assert got['ticketbridge_render_failures_total{mapping="contact"}'] == 1
    assert got['ticketbridge_destination_backlog{destination="kapture"}'] == 0
    assert got['ticketbridge_destination_oldest_pending_age_seconds{destination="kapture"}'] == 0
    assert got["ticketbridge_lease_takeovers_total"] == 0
    assert got["ticketbridge_mapping_reload_failing"] == 0


async def test_metrics_show_the_backlog_its_age_and_an_operator_pause(write_config: ConfigFactory,
                                                                      bridge_client: AppClient) -> None:
    """A destination paused through the admin API shows paused=1, and the deliveries held back show as its
    backlog with the age of the oldest one."""
    client: Any = await bridge_client(write_config(OBSERVED, OBSERVED_MAPPINGS))
    paused = await client.post("/admin/api/destinations/kapture/pause", json={"reason": "test"}, headers=AUTH)
    assert paused.status == 200, await paused.text()
    for subject in ("a", "b"):
        assert (await client.post("/hooks/contact", data={"subject": subject, "level": "low"},
                                  headers={"Accept": "application/json"})).status == 202

    async def aged() -> bool:
        runtime(client).backlog_cache = None  # read the store now rather than within BACKLOG_SECONDS
        got = samples(await (await client.get("/metrics", headers=AUTH)).text())
        return got['ticketbridge_destination_oldest_pending_age_seconds{destination="kapture"}'] > 0

    await eventually(aged)
    got = samples(await (await client.get("/metrics", headers=AUTH)).text())
    assert got['ticketbridge_destination_paused{destination="kapture"}'] == 1
    assert got['ticketbridge_destination_backlog{destination="kapture"}'] == 2
    assert len(runtime(client).simulators["kapture"].tickets) == 0


async def test_metrics_take_a_read_token(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """A read-only token from admin.read_tokens may scrape /metrics, as the admin token may."""
    client: Any = await bridge_client(write_config(OBSERVED, OBSERVED_MAPPINGS), workers=False)
    resp = await client.get("/metrics", headers={"Authorization": "Bearer r3ad-only-token"})
    assert resp.status == 200
    assert "ticketbridge_info" in await resp.text()


async def test_metrics_show_every_delivery_status_of_each_destination_before_it_has_any(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """Each configured destination has a `ticketbridge_deliveries` series for every status from the first scrape,
    0 while the store has none: an alert comparing the dead count with a while ago sees the first dead delivery."""
    client: Any = await bridge_client(write_config(OBSERVED, OBSERVED_MAPPINGS), workers=False)
    statuses = ("pending", "in_flight", "succeeded", "dead")

    def deliveries(got: dict[str, float]) -> dict[str, float]:
        return {s: got[f'ticketbridge_deliveries{{destination="kapture",status="{s}"}}'] for s in statuses}

    got = samples(await (await client.get("/metrics", headers=AUTH)).text())
    assert deliveries(got) == dict.fromkeys(statuses, 0)
    resp = await client.post("/hooks/contact", data={"subject": "no level"}, headers={"Accept": "application/json"})
    assert resp.status == 202, await resp.text()  # its mapping does not render it: dead at intake
    runtime(client).backlog_cache = None  # read the store now rather than within BACKLOG_SECONDS
    got = samples(await (await client.get("/metrics", headers=AUTH)).text())
    assert deliveries(got) == {"pending": 0, "in_flight": 0, "succeeded": 0, "dead": 1}


async def test_deliveries_a_crash_left_in_flight_count_as_taken_over(write_config: ConfigFactory,
                                                                    bridge_client: AppClient) -> None:
    """A server killed while sending (kill -9) leaves its deliveries in flight; on SQLite the restarted server gives
    them back when it opens the store (store.recovered_in_flight), and counts them in
    ticketbridge_lease_takeovers_total, as a shared store counts those it takes back or whose leases ran out."""
    config = write_config(CONFIG.format(token="letmein"), MAPPINGS)
    crashed = open_store(config)
    await crashed.open()
    try:
        for _ in range(4):
            await accept_one(crashed, make_delivery(destination="kapture", mapping="contact"))
        assert len((await crashed.claim("kapture", 10, "host:1/99.1", 3600)).items) == 4
    finally:
        await crashed.close()  # its leases stay: nothing gives them back
    client: Any = await bridge_client(config)

    async def counted() -> bool:
        got = samples(await (await client.get("/metrics", headers=AUTH)).text())
        return got["ticketbridge_lease_takeovers_total"] == 4

    await eventually(counted)
    await eventually(lambda: len(runtime(client).simulators["kapture"].tickets) == 4)
