"""bridge/kept_names.py on the real PostgreSQL: a name the store keeps (a source, destination, mapping or read token
name) that the database's encoding has no equivalent for (😀 in a LATIN1 database) fails the start, naming the file,
the name, the encoding and what to do, fails a hot reload, which keeps the old mappings, and is named by the CLI's
verbs on the store, those that change it refusing to; a name LATIN1 holds (é), or any name in a UTF-8 database, is
kept as before."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from aiohttp import web

from bridge.app import build_app
from bridge.errors import ErrorList
from bridge.store.postgres import PostgresStore
from tests.acceptance.cli_store import run
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.integration.processes import DSN

pytestmark = pytest.mark.integration

SMILE = "\U0001F600"
CONFIG = f"""
store: {{url: "sqlite:///var/unused.db"}}
admin: {{token: admin-secret, read_tokens: {{"auditor-{SMILE}": read-secret-1, "café": read-secret-2}}}}
sources:
  partner-é: {{kind: json}}
  web-{SMILE}: {{kind: json}}
destinations:
  kapture: {{vendor: kapture, sandbox: true}}
  kapture-{SMILE}: {{vendor: kapture, sandbox: true}}
"""
MAPPING = """
    source: partner-é
    destination: kapture
    action: create_ticket
    fields:
      title: "{{ payload.title }}"
"""
HELD = {"partner": MAPPING}
WHAT_TO_DO = ("has no equivalent for: every event, delivery or audit entry naming it would be refused (SQLSTATE "
              "22P05); rename it using only characters LATIN1 holds, or keep the store in a UTF-8 database (CREATE "
              "DATABASE … ENCODING 'UTF8')")


async def connections(dsn: str) -> int:
    """The app's connections open to the database of `dsn`."""
    conn = await asyncpg.connect(DSN, timeout=5)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND "
                                         "application_name LIKE 'ticketbridge%'", dsn.rsplit("/", 1)[1])
        return count
    finally:
        await conn.close()


async def test_names_a_latin1_database_cannot_hold_fail_the_start_naming_file_name_encoding_and_remedy(
    latin1_dsn: str, write_config: ConfigFactory, tmp_path: Path,
) -> None:
    """On a LATIN1 database, a source, destination, read token and mapping each named with 😀: the start fails with
    one error for each, at its file (and line, in bridge.yaml), the name escaped, LATIN1 and what to do; names with é
    (which LATIN1 holds) are not named; the store is closed again."""
    named = MAPPING.replace("source: partner-é", f"name: billing-{SMILE}\n    source: partner-é")
    config = write_config(CONFIG, {"partner": MAPPING, "billing": named, f"web-{SMILE}": MAPPING})
    runner = web.AppRunner(build_app(config, store=PostgresStore(latin1_dsn)))
    try:
        with pytest.raises(ErrorList) as refused:
            await runner.setup()
    finally:
        await runner.cleanup()
    bridge, folder = tmp_path / "bridge.yaml", tmp_path / "mappings"
    assert sorted(e.render() for e in refused.value.errors) == sorted([
        f"{bridge}:3:44: admin.read_tokens[\"auditor-{SMILE}\"]: read token name 'auditor-\\U0001f600' holds "
        f"characters the database's encoding, LATIN1, {WHAT_TO_DO}",
        f"{bridge}:6:3: sources[\"web-{SMILE}\"]: source name 'web-\\U0001f600' holds characters the database's "
        f"encoding, LATIN1, {WHAT_TO_DO}",
        f"{bridge}:9:3: destinations[\"kapture-{SMILE}\"]: destination name 'kapture-\\U0001f600' holds characters the "
        f"database's encoding, LATIN1, {WHAT_TO_DO}",
        f"{folder / 'billing.yaml'}: name: mapping name 'billing-\\U0001f600' holds characters the database's "
        f"encoding, LATIN1, {WHAT_TO_DO}",
        f"{folder / f'web-{SMILE}.yaml'}: mapping name (its file's name without the extension, as it has no `name:`) "
        f"'web-\\U0001f600' holds characters the database's encoding, LATIN1, {WHAT_TO_DO}",
    ])
    assert await connections(latin1_dsn) == 0


async def test_a_hot_reload_naming_a_mapping_a_latin1_database_cannot_hold_fails_and_keeps_the_old_set(
    latin1_dsn: str, write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path,
) -> None:
    """Started on a LATIN1 database with names it holds, a reload adding a mapping named with 😀 fails, naming its
    file, the name and LATIN1, and the old set stays in force; one named with é then loads."""
    config = write_config(CONFIG.replace(f"web-{SMILE}", "web").replace(f"kapture-{SMILE}", "kapture-2")
                          .replace(f"auditor-{SMILE}", "auditor"), HELD)
    client = await bridge_client(config, store=PostgresStore(latin1_dsn), workers=False)
    rt = runtime(client)
    reloader, before = rt.reloader, rt.mappings
    assert reloader is not None and rt.store is not None and rt.store.encoding == "LATIN1"
    (tmp_path / "mappings" / "billing.yaml").write_text(
        MAPPING.replace("source: partner-é", f"name: billing-{SMILE}\n    source: partner-é"))
    assert await reloader.reload("signal") is False
    assert rt.mappings is before
    assert rt.mapping_status.last_error == (
        f"{tmp_path / 'mappings' / 'billing.yaml'}: name: mapping name 'billing-\\U0001f600' holds characters the "
        f"database's encoding, LATIN1, {WHAT_TO_DO}")
    (tmp_path / "mappings" / "billing.yaml").write_text(
        MAPPING.replace("source: partner-é", "name: billing-é\n    source: partner-é"))
    assert await reloader.reload("signal") is True
    assert sorted(rt.mappings.mappings) == ["billing-é", "partner"]


async def test_any_name_starts_on_a_utf8_database(
    pg_schema: str, write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """In a UTF-8 database every name is kept: the names with 😀 start, and the store says its encoding."""
    config = write_config(CONFIG, {"partner": MAPPING, f"web-{SMILE}": MAPPING})
    client = await bridge_client(config, store=PostgresStore(DSN, schema=pg_schema), workers=False)
    store = runtime(client).store
    assert store is not None and store.encoding == "UTF8"
    assert await store.unheld([f"web-{SMILE}"]) == []
    assert (await client.get("/readyz")).status == 200


def test_cli_verbs_on_the_store_check_the_names_as_serve_does(
    latin1_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """The CLI on a LATIN1 database, with a destination named with 😀: a verb that changes the store (`deliveries
    mark-succeeded`, `replay`) prints `serve`'s error for the name and exits 2, changing nothing; one that only
    reads (`deliveries list`, `replay --dry-run`) or only deletes (`purge`) prints it and goes on, its exit code
    its own. Renamed with é, nothing is printed."""
    config = CONFIG.replace("sqlite:///var/unused.db", latin1_dsn).replace(f"web-{SMILE}", "web") \
        .replace(f"auditor-{SMILE}", "auditor")
    (tmp_path / "bridge.yaml").write_text(config)
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "partner.yaml").write_text(MAPPING)
    cfg = str(tmp_path / "bridge.yaml")
    named = (f"{tmp_path / 'bridge.yaml'}:9:3: destinations[\"kapture-{SMILE}\"]: destination name "
             f"'kapture-\\U0001f600' holds characters the database's encoding, LATIN1, {WHAT_TO_DO}")
    for verb in (["deliveries", "mark-succeeded", "dlv_1", "--ticket-id", "7"], ["replay", "dlv_1"]):
        code, _, err = run(capsys, *verb, "-c", cfg)
        assert code == 2, verb
        assert err.splitlines() == [named, "nothing was changed: a server with this config refuses to start on this "
                                           "store, and so does this verb; rename what is named above"], verb
    for verb, exit_code in ((["deliveries", "list"], 0), (["replay", "dlv_1", "--dry-run"], 0),
                            (["purge", "--older-than", "30d", "--dry-run"], 0)):
        code, _, err = run(capsys, *verb, "-c", cfg)
        assert code == exit_code, (verb, err)
        assert err.splitlines()[:2] == [named, "a server with this config refuses to start on this store (rename "
                                               "what is named above); this verb goes on, as it writes none of these "
                                               "names"], verb
    (tmp_path / "bridge.yaml").write_text(config.replace(f"kapture-{SMILE}", "kapture-é"))
    code, _, err = run(capsys, "deliveries", "mark-succeeded", "dlv_1", "--ticket-id", "7", "-c", cfg)
    assert (code, err.strip()) == (1, "no delivery 'dlv_1'")
