"""What the integration tests share: the PostgreSQL they use, and a fresh schema per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.integration.processes import DSN


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A fresh schema for one test, dropped after it; fails clearly when PostgreSQL is not there."""
    try:
        conn = await asyncpg.connect(DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(f"PostgreSQL at {DSN} is not reachable ({exc}); start it with "
                    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, "
                    "or point TICKETBRIDGE_TEST_PG at another server")
    name = f"tb_test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()
