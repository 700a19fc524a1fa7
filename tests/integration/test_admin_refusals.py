"""Values of an admin API request or a CLI command that PostgreSQL refuses for their data: a character a LATIN1
database has no equivalent for (SQLSTATE 22P05) in a path, query or body value, an int past 64 bits on the command
line (22000). Each is the caller's to change: the API answers 400 (path, query) or 422 (body) naming where the value
was given and the SQLSTATE, never the database's own words (logged as `admin.store_refused`); the CLI says which
arguments the store was given and exits 2; the store is not counted as failing, and a destination whose name the
store refuses is logged as such by its lane, not as a failing store."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge.console.models import read_cursor, write_cursor
from bridge.store.base import DeliveryFilter
from bridge.store.postgres import PostgresStore
from tests.acceptance.cli_store import run
from tests.acceptance.console_app import ADMIN, threaded_mapping
from tests.acceptance.threaded import serve_in_thread
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

pytestmark = pytest.mark.integration

SMILE = "\U0001F600"
REFUSED = ("the store refused this value (SQLSTATE 22P05): it can be neither kept nor looked up as given, and is "
           "refused the same way on every try; nothing was changed")
CONFIG = """
store: {url: "sqlite:///var/unused.db"}
admin: {token: admin-secret}
sources:
  partner: {kind: json}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""
MAPPINGS = {"partner": """
    source: partner
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.title }}"
"""}


class UncheckedNames(PostgresStore):
    """A PostgreSQL store that says it can keep every name, so that the app starts with one it cannot."""

    async def unheld(self, texts: Iterable[str]) -> list[str]:
        return []


async def error_of(resp: Any, status: int) -> str:
    assert resp.status == status, await resp.text()
    text: str = (await resp.json())["error"]
    return text


async def test_path_and_query_values_the_database_refuses_are_400s_naming_them(
    latin1_dsn: str, write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """A delivery or event id, a filter or a cursor holding 😀, on a LATIN1 database: 400 naming the path or query
    field and the SQLSTATE (the database's words only in the log), /readyz 200, no `store.failing`."""
    client = await bridge_client(write_config(CONFIG, MAPPINGS), store=PostgresStore(latin1_dsn), workers=False)
    store = runtime(client).store
    with capture_logs() as logs:
        for path, where in [(f"/admin/api/deliveries/dlv_{SMILE}", "path.delivery_id"),
                            (f"/admin/api/events/evt_{SMILE}", "path.event_id"),
                            (f"/admin/api/deliveries?destination={SMILE}", "query.destination"),
                            (f"/admin/api/deliveries?mapping=partner&cursor=dlv_{SMILE}",
                             "query.mapping or query.cursor"),
                            (f"/admin/api/audit?cursor=aud_{SMILE}", "query.cursor")]:
            assert await error_of(await client.get(path, headers=ADMIN), 400) == f"{where}: {REFUSED}", path
        assert (await client.get("/readyz")).status == 200
    refusals = [e for e in logs if e["event"] == "admin.store_refused"]
    assert len(refusals) == 5
    assert all("LATIN1" in e["error"] and e["code"] == "SQLSTATE 22P05" for e in refusals)
    assert "store.failing" not in [e["event"] for e in logs]
    assert store.problem() is None and store.commit_failures == 0


async def test_a_conversation_cursor_whose_place_the_database_refuses_is_a_400_naming_it(
    latin1_dsn: str, write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """A conversation's cursor, well made for its conversation but holding a delivery id with 😀 (no cursor the API
    gives has one), on a LATIN1 database: 400 naming the key and the cursor, and the SQLSTATE."""
    client = await bridge_client(write_config(CONFIG, {"partner": threaded_mapping()}), store=PostgresStore(latin1_dsn),
                                 workers=False)
    resp = await client.post("/hooks/partner", json={"conversation_id": "C1", "text": "Router down"})
    assert resp.status == 202, await resp.text()
    resp = await client.get("/admin/api/conversations/chat%3AC1", headers=ADMIN)
    assert resp.status == 200, await resp.text()
    place = read_cursor((await resp.json())["items"][0]["next_cursor"])
    cursor = write_cursor(place._replace(at=(place.at[0], f"dlv_{SMILE}")))
    resp = await client.get("/admin/api/conversations/chat%3AC1", params={"cursor": cursor}, headers=ADMIN)
    assert await error_of(resp, 400) == f"path.key or query.cursor: {REFUSED}"
    assert runtime(client).store.problem() is None


async def test_body_values_the_database_refuses_are_422s_and_change_nothing(
    latin1_dsn: str, write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """A replay of an id holding 😀, a delivery marked succeeded with a ticket id holding 😀: 422 naming the body
    field and the SQLSTATE; the delivery is left as it was and nothing is audited. The same mark on an id holding 😀
    is the path's: 400."""
    client = await bridge_client(write_config(CONFIG, MAPPINGS), store=PostgresStore(latin1_dsn), workers=False)
    store = runtime(client).store
    resp = await client.post("/hooks/partner", json={"title": "Router down"})
    assert resp.status == 202, await resp.text()
    (row,) = await store.list_deliveries(DeliveryFilter())
    resp = await client.post("/admin/api/replay", json={"ids": [row.id, f"dlv_{SMILE}"]}, headers=ADMIN)
    assert await error_of(resp, 422) == f"body.ids: {REFUSED}"
    resp = await client.post(f"/admin/api/deliveries/{row.id}/mark-succeeded", headers=ADMIN,
                             json={"ticket_id": f"T-{SMILE}", "note": "found it"})
    assert await error_of(resp, 422) == f"body.ticket_id or body.note: {REFUSED}"
    resp = await client.post(f"/admin/api/deliveries/dlv_{SMILE}/mark-succeeded", json={"ticket_id": "T-1"},
                             headers=ADMIN)
    assert await error_of(resp, 400) == f"path.delivery_id: {REFUSED}"
    detail = await store.get_delivery(row.id)
    assert (detail.delivery.status, detail.delivery.ticket_id, detail.attempts) == ("pending", None, [])
    assert await store.list_audit(10, None) == []
    assert store.problem() is None and (await client.get("/readyz")).status == 200


async def test_a_destination_whose_name_the_database_refuses_is_logged_by_its_lane_not_as_a_failing_store(
    latin1_dsn: str, write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """A destination named with 😀, on a LATIN1 database, past the start's check of names (which refuses it): its
    gate (a row named for it) is refused, logged as `delivery.admit_refused` with the SQLSTATE, never
    `delivery.admit_failed` or `store.failing`."""
    mapping = MAPPINGS["partner"].replace("destination: kapture", f"destination: kapture-{SMILE}")
    config = write_config(CONFIG.replace("  kapture:", f"  kapture-{SMILE}:"), {"partner": mapping})
    with capture_logs() as logs:
        client = await bridge_client(config, store=UncheckedNames(latin1_dsn))
        await eventually(lambda: any(e["event"] == "delivery.admit_refused" for e in logs))
    (refused, *_) = [e for e in logs if e["event"] == "delivery.admit_refused"]
    assert refused["code"] == "SQLSTATE 22P05" and "LATIN1" in refused["error"]
    events = [e["event"] for e in logs]
    assert "delivery.admit_failed" not in events and "store.failing" not in events
    assert runtime(client).store.problem() is None


def test_the_cli_names_the_arguments_the_database_refuses_and_exits_2(
    latin1_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On the store: `deliveries show` of an id holding 😀 (LATIN1) prints which argument the store refused and the
    SQLSTATE, and exits 2. (`deliveries list --limit 2**70`, past 64 bits, which any database refused, is refused
    before the store is opened: past LIST_MOST, tests/acceptance/test_cli_deliveries.py.) Through a server
    (`--url`), the server's 400 is printed, exit 2."""
    (tmp_path / "bridge.yaml").write_text(CONFIG.replace("sqlite:///var/unused.db", latin1_dsn))
    (tmp_path / "mappings").mkdir()
    cfg = str(tmp_path / "bridge.yaml")
    code, _, err = run(capsys, "deliveries", "show", "-c", cfg, f"dlv_{SMILE}")
    assert (code, err.strip()) == (2, "the store refused a value given: ID 'dlv_\\U0001f600' (SQLSTATE 22P05): it "
                                      "can be neither kept nor looked up as given, and is refused the same way on "
                                      "every try; nothing was changed")
    with serve_in_thread(tmp_path / "server", CONFIG.replace("sqlite:///var/unused.db", latin1_dsn), MAPPINGS) as url:
        monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "admin-secret")
        code, _, err = run(capsys, "deliveries", "show", "--url", url, f"dlv_{SMILE}")
        # The server runs in this process: its own warning (admin.store_refused) reaches the command's stderr too.
        said = [line for line in err.splitlines() if '"event":"admin.store_refused"' not in line]
        assert (code, "\n".join(said).strip()) == (2, f"{url} answered 400: path.delivery_id: {REFUSED}")
