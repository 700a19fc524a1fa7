"""Deliveries whose destination was deleted from bridge.yaml: logged at start, listed as not configured by the
admin API, and marked dead by an operator (admin API, audited, or the CLI on the store), so that they can be
replayed later or purged by retention."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bridge.store.base import DeliveryFilter
from tests.acceptance.cli_store import run
from tests.conftest import AppClient, ConfigFactory, runtime

TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
BOTH = f"""
store: {{url: "sqlite:///var/bridge.db"}}
admin: {{token: {TOKEN}}}
sources:
  partner: {{kind: json}}
destinations:
  kapture: {{vendor: kapture, sandbox: true}}
  old-desk: {{vendor: kapture, sandbox: true}}
"""
ONE = BOTH.replace("  old-desk: {vendor: kapture, sandbox: true}\n", "")
TO = """
source: partner
destination: {destination}
action: create_ticket
fields:
  title: "{{{{ payload.title }}}}"
"""


async def strand(write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """Two deliveries left pending for old-desk, then old-desk and its mapping deleted."""
    first = await bridge_client(write_config(BOTH, {"kapture": TO.format(destination="kapture"),
                                                    "old": TO.format(destination="old-desk")}), workers=False)
    for n in (1, 2):
        resp = await first.post("/hooks/partner", json={"title": f"t{n}"})
        assert (await resp.json())["deliveries"] == 2
    await first.close()
    (tmp_path / "mappings" / "old.yaml").unlink()


async def test_a_deleted_destinations_deliveries_are_logged_listed_and_marked_dead(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """At start `deliveries.orphaned` names the destination and its counts; /admin/api/destinations lists it as
    not configured; mark-dead refuses a configured destination, and marks the deleted one's pending deliveries
    dead with the reason, audited, so that replay can take them."""
    await strand(write_config, bridge_client, tmp_path)
    with capture_logs() as logs:
        client = await bridge_client(write_config(ONE), workers=False)
    [orphaned] = [e for e in logs if e["event"] == "deliveries.orphaned"]
    assert (orphaned["log_level"], orphaned["destination"], orphaned["counts"]) == (
        "warning", "old-desk", {"pending": 2})
    assert "mark-dead --destination old-desk" in orphaned["note"]

    listed = (await (await client.get("/admin/api/destinations", headers=ADMIN)).json())["items"]
    assert [(d["name"], d["configured"]) for d in listed] == [("kapture", True), ("old-desk", False)]
    assert (listed[1]["counts"]["pending"], listed[1]["backlog"]) == (2, 2)

    resp = await client.post("/admin/api/destinations/kapture/mark-dead", json={"reason": "x"}, headers=ADMIN)
    assert resp.status == 409 and "is configured" in (await resp.json())["error"]
    resp = await client.post("/admin/api/destinations/old-desk/mark-dead", json={"reason": "desk retired"},
                             headers=ADMIN)
    assert (resp.status, await resp.json()) == (200, {"destination": "old-desk", "marked": 2})
    store = runtime(client).store
    assert store is not None
    rows = await store.list_deliveries(DeliveryFilter(destination="old-desk"))
    assert {(r.status, r.last_error) for r in rows} == {("dead", "marked dead by admin: desk retired")}
    [entry] = (await (await client.get("/admin/api/audit", headers=ADMIN)).json())["items"]
    assert (entry["action"], entry["target"], entry["detail"]["marked"]) == ("destination.mark_dead", "old-desk", 2)
    resp = await client.post("/admin/api/replay", json={"destination": "old-desk", "dry_run": True}, headers=ADMIN)
    assert len((await resp.json())["matched"]) == 2


async def test_the_cli_marks_a_deleted_destinations_deliveries_dead_on_the_store(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`deliveries mark-dead --destination X --reason R` on the store file marks X's pending deliveries dead, and
    refuses (exit 1) a destination the config still has. (The CLI runs its own event loop: in a thread here.)"""
    await strand(write_config, bridge_client, tmp_path)
    write_config(ONE)
    cfg = str(tmp_path / "bridge.yaml")
    capsys.readouterr()
    code, _, err = await asyncio.to_thread(run, capsys, "deliveries", "mark-dead", "--destination", "kapture",
                                           "--reason", "x", "-c", cfg)
    assert code == 1 and "'kapture' is configured" in err
    code, out, _ = await asyncio.to_thread(run, capsys, "deliveries", "mark-dead", "--destination", "old-desk",
                                           "--reason", "retired", "-c", cfg)
    assert code == 0 and out.startswith("2 pending deliveries of old-desk marked dead")
    code, out, _ = await asyncio.to_thread(run, capsys, "deliveries", "list", "--destination", "old-desk", "--json",
                                           "-c", cfg)
    assert out.count('"status":"dead"') == 2 and "marked dead by cli:" in out
