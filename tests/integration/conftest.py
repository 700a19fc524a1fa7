"""What the integration tests share: the PostgreSQL they use, and a fresh schema per test."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

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


@pytest.fixture
def latin1_dsn() -> Iterator[str]:
    """A fresh database whose encoding is LATIN1 (as one made with `createdb -E LATIN1` is), dropped after the test
    (ask for it before the app, so that the app is closed first): its text columns refuse every character outside
    Latin-1, such as U+1F600 (SQLSTATE 22P05), which no layer before the store writes out. Made outside any event
    loop, so that tests that run the CLI (its own loop) take it too."""
    name = f"tb_latin1_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(DSN, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(admin(f"CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"))
    try:
        yield urlsplit(DSN)._replace(path=f"/{name}").geturl()
    finally:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
