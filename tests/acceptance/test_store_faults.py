"""The whole app when its SQLite store fails: a deleted store file and a full disk are answered 503, fail
/readyz with the reason, and show in /metrics."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from tests.acceptance.test_metrics import samples
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.faults import fill, tiny_disk

CONFIG = """
store: {{url: "sqlite:///{db}"}}
admin: {{token: letmein}}
sources:
  contact: {{kind: form}}
destinations:
  kapture: {{vendor: kapture, sandbox: true}}
"""
MAPPINGS = {
    "contact": """
        source: contact
        destination: kapture
        action: create_ticket
        fields:
          title: "{{ payload.subject }}"
    """,
}
JSON = {"Accept": "application/json"}
AUTH = {"Authorization": "Bearer letmein"}


async def post(client: Any, subject: str) -> Any:
    return await client.post("/hooks/contact", data={"subject": subject}, headers=JSON)


async def store_metrics(client: Any) -> dict[str, float]:
    resp = await client.get("/metrics", headers=AUTH)
    assert resp.status == 200
    return {k: v for k, v in samples(await resp.text()).items() if k.startswith("ticketbridge_store_")}


def subjects(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {r[0] for r in conn.execute("SELECT json_extract(data, '$.payload.subject') FROM events")}


async def test_a_deleted_store_file_is_answered_503_and_the_server_asks_to_stop(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """Once the store file is deleted: /readyz and intake answer 503 with Retry-After, /metrics shows the store
    lost, the data accepted before is back at its path, and the server asks to be restarted."""
    client: Any = await bridge_client(write_config(CONFIG.format(db="var/bridge.db"), MAPPINGS), workers=False)
    rt = runtime(client)
    stopped: list[bool] = []
    rt.on_fatal = lambda: stopped.append(True)
    for subject in ("one", "two"):
        assert (await post(client, subject)).status == 202
    assert (await client.get("/readyz")).status == 200
    assert await store_metrics(client) == {'ticketbridge_store_up{problem=""}': 1,
                                          "ticketbridge_store_commit_failures_total": 0}
    db = tmp_path / "var" / "bridge.db"
    db.unlink()

    ready = await client.get("/readyz")
    assert ready.status == 503
    assert ready.headers["Retry-After"] == "5"
    body = await ready.json()
    assert (body["status"], body["store"]) == ("unavailable", "lost")
    assert f"{db} was deleted" in body["reason"]
    refused = await post(client, "three")
    assert refused.status == 503
    assert refused.headers["Retry-After"] == "5"
    assert (await refused.json())["accepted"] is False
    assert (await store_metrics(client))['ticketbridge_store_up{problem="lost"}'] == 0
    assert stopped == [True]
    assert rt.fatal is not None
    assert "saved to" in rt.fatal
    assert subjects(db) == {"one", "two"}


async def test_a_full_disk_fails_readyz_while_commits_fail_and_recovers_after(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """On a full disk intake answers 503 and /readyz says the store is failing; once space is freed both
    recover without a restart."""
    with tiny_disk(tmp_path / "tiny") as disk:
        client: Any = await bridge_client(write_config(CONFIG.format(db="tiny/bridge.db"), MAPPINGS), workers=False)
        assert (await post(client, "before")).status == 202
        filler = fill(disk)
        big = "x" * 200_000
        assert (await post(client, big)).status == 503
        ready = await client.get("/readyz")
        assert ready.status == 503
        body = await ready.json()
        assert body["store"] == "failing"
        assert "full" in body["reason"]
        metrics = await store_metrics(client)
        assert metrics['ticketbridge_store_up{problem="failing"}'] == 0
        assert metrics["ticketbridge_store_commit_failures_total"] >= 1
        filler.unlink()
        assert (await client.get("/readyz")).status == 200
        assert (await post(client, big)).status == 202
        assert (await store_metrics(client))['ticketbridge_store_up{problem=""}'] == 1
        await client.close()

