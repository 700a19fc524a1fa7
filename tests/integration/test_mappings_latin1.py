"""The last good mapping set on a LATIN1 PostgreSQL database: mapping files are kept as bytes (their JSON, in a
`bytea` column since migration 0004), so text the database's encoding lacks, in a comment or a template, is saved
and served again exactly as it was written."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bridge.store.postgres import PostgresStore
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

pytestmark = pytest.mark.integration

CONFIG = """
store: {url: "sqlite:///var/unused.db"}
sources:
  partner: {kind: json}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""
MAPPING = """\
# Owner: Zoë \U0001F600 (support ☃), line 1 of a comment LATIN1 has no equivalent for
source: partner
destination: kapture
action: create_ticket
fields:
  title: "{{ payload.title }} \u2603"
"""


async def test_a_mapping_set_holding_text_latin1_lacks_is_kept_and_served_again_exactly(
    latin1_dsn: str, write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path,
) -> None:
    """A set whose file holds 😀 and ☃ (in a comment and in a template) is kept as the last good one on a LATIN1
    database (`mappings.saved`, never `mappings.save_failed`), and reads back identical; a later start with a broken
    folder serves it, its file as it was written."""
    with capture_logs() as logs:
        client = await bridge_client(write_config(CONFIG, {"partner": MAPPING}), store=PostgresStore(latin1_dsn),
                                     workers=False)
        rt = runtime(client)
        await eventually(lambda: any(e["event"] in ("mappings.saved", "mappings.save_failed") for e in logs))
    events = [e["event"] for e in logs if e["event"].startswith("mappings.")]
    assert events == ["mappings.saved"]
    assert rt.mapping_status.stored_version == rt.mappings.version
    assert rt.store is not None
    kept = await rt.store.load_mapping_set()
    assert kept is not None
    assert (kept.version, kept.files) == (rt.mappings.version, {"partner.yaml": MAPPING})
    version = rt.mappings.version

    (tmp_path / "mappings" / "partner.yaml").write_text(MAPPING.replace("{{ payload.title }}", "{{ payload.title"))
    again = await bridge_client(write_config(CONFIG), store=PostgresStore(latin1_dsn), workers=False)
    status = runtime(again).mapping_status
    assert (status.source, runtime(again).mappings.version) == ("last_good", version)
    assert runtime(again).mappings.files == {"partner.yaml": MAPPING}
