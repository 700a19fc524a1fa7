"""The PostgreSQL store when the server refuses writes (a full disk, simulated with triggers)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
from structlog.testing import capture_logs

from bridge.errors import StoreUnavailable
from bridge.store.postgres import PostgresStore
from tests.integration.processes import DSN
from tests.integration.store.contract import accept_one, make_delivery

pytestmark = pytest.mark.integration

DISK_FULL = """
CREATE FUNCTION "{schema}".disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; END $$;
CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON "{schema}".events
    FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".disk_full();
CREATE TRIGGER disk_full BEFORE INSERT OR UPDATE ON "{schema}".schema_migrations
    FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".disk_full();
"""


@pytest.fixture
async def store(pg_schema: str) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(DSN, schema=pg_schema)
    await opened.open()
    yield opened
    await opened.close()


async def test_refused_writes_are_reported_until_a_commit_succeeds(store: PostgresStore, pg_schema: str) -> None:
    """While the server refuses writes the store says `failing`, and check() clears it once writes commit again."""
    await accept_one(store, make_delivery())
    assert await store.check() is None
    admin = await asyncpg.connect(DSN)
    try:
        await admin.execute(DISK_FULL.format(schema=pg_schema))
        with capture_logs() as logs:
            for _ in range(2):
                with pytest.raises(StoreUnavailable, match="No space left"):
                    await accept_one(store, make_delivery())
            problem = await store.check()
        assert problem is not None
        assert problem.kind == "failing"
        assert "No space left" in problem.reason
        assert store.commit_failures == 3
        assert [e["event"] for e in logs].count("store.failing") == 1
        await admin.execute(f'DROP FUNCTION "{pg_schema}".disk_full() CASCADE')
    finally:
        await admin.close()
    with capture_logs() as logs:
        assert await store.check() is None
    assert [e["event"] for e in logs] == ["store.recovered"]
    await accept_one(store, make_delivery())
