"""`GET /metrics`: what ops scrape, behind the admin token, with every value checked against what happened."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from bridge.simulators.faults import Faults
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

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
