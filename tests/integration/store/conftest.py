"""What the PostgreSQL store tests share: an opened store on a fresh schema, and two of them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bridge.store.postgres import PostgresStore
from tests.integration.processes import DSN


@pytest.fixture
async def pg_store(pg_schema: str) -> AsyncIterator[PostgresStore]:
    """An opened PostgreSQL store on the test's schema, closed after the test."""
    opened = PostgresStore(DSN, schema=pg_schema)
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def two(pg_schema: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two opened stores on one database, as two ticketbridge processes would have."""
    a, b = PostgresStore(DSN, schema=pg_schema), PostgresStore(DSN, schema=pg_schema)
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()
