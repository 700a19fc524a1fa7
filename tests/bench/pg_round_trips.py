"""The benchmarks' PostgreSQL: a fresh schema in the test database, and the round trips this process makes to it.

`fresh_schema()` names a schema of its own (`tb_bench_…`, as the speed table's) for a `postgresql://…?schema=`
store url; `drop_schema` drops it after. `RoundTrips` counts, per statement, what asyncpg's connections send
while it is installed: a statement is one round trip (a query with arguments is bound and executed in one, a
simple query in one, an `executemany` pipelined in one), and a statement a connection has not prepared before one
more (its Parse and Describe). Only what is sent while `counting` is set is counted. It wraps asyncpg's Connection
methods, which costs CPU of its own: counting runs are not timed.
"""

from __future__ import annotations

import asyncio
import functools
import re
import uuid
from collections import Counter
from typing import Any

import asyncpg
from asyncpg.connection import Connection

from tests.integration.processes import DSN

__all__ = ["DSN", "RoundTrips", "drop_schema", "fresh_schema", "store_url"]


def fresh_schema() -> str:
    return f"tb_bench_{uuid.uuid4().hex[:12]}"


def store_url(schema: str) -> str:
    return f"{DSN}?schema={schema}"


def drop_schema(schema: str) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


def _kind(query: str) -> str:
    """A statement's short name: its first words, up to the first table it names."""
    words = re.sub(r"\s+", " ", query.strip()).split(" ")
    head = " ".join(words[:6])
    return head if len(head) <= 60 else head[:57] + "..."


class RoundTrips:
    """Counts of statements (by `_kind`) and of statement preparations, while installed (`with RoundTrips() as n`)."""

    def __init__(self) -> None:
        self.statements: Counter[str] = Counter()
        self.prepared = 0
        self.counting = False
        self._seen: set[int] = set()
        self._kept: list[Any] = []  # the prepared statements seen, so that their ids are not reused
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> RoundTrips:
        counts = self
        execute = Connection.execute
        run = Connection._Connection__execute
        many = Connection._executemany
        get_statement = Connection._get_statement
        self._saved = {"execute": execute, "_Connection__execute": run, "_executemany": many,
                       "_get_statement": get_statement}

        @functools.wraps(execute)
        async def counted_execute(conn: Connection, query: str, *args: Any, **kwargs: Any) -> Any:
            if not args and counts.counting:  # a simple query (BEGIN, COMMIT, a reset); with arguments, below
                counts.statements[_kind(query)] += 1
            return await execute(conn, query, *args, **kwargs)

        @functools.wraps(run)
        async def counted_run(conn: Connection, query: str, *args: Any, **kwargs: Any) -> Any:
            if counts.counting:
                counts.statements[_kind(query)] += 1
            return await run(conn, query, *args, **kwargs)

        @functools.wraps(many)
        async def counted_many(conn: Connection, query: str, *args: Any, **kwargs: Any) -> Any:
            if counts.counting:
                counts.statements["executemany " + _kind(query)] += 1
            return await many(conn, query, *args, **kwargs)

        @functools.wraps(get_statement)
        async def counted_statement(conn: Connection, *args: Any, **kwargs: Any) -> Any:
            stmt = await get_statement(conn, *args, **kwargs)
            if id(stmt) not in counts._seen:
                counts._seen.add(id(stmt))
                counts._kept.append(stmt)
                counts.prepared += counts.counting
            return stmt

        Connection.execute = counted_execute
        Connection._Connection__execute = counted_run
        Connection._executemany = counted_many
        Connection._get_statement = counted_statement
        return self

    def __exit__(self, *exc: object) -> None:
        for name, value in self._saved.items():
            setattr(Connection, name, value)

    @property
    def total(self) -> int:
        return sum(self.statements.values()) + self.prepared

    def report(self, per: int, what: str) -> str:
        lines = [f"round trips to PostgreSQL per {what}: {self.total / per:.2f} "
                 f"({sum(self.statements.values()) / per:.2f} statements, {self.prepared / per:.3f} preparations)"]
        for kind, n in self.statements.most_common():
            lines.append(f"  {n / per:7.3f}  {kind}")
        return "\n".join(lines)
