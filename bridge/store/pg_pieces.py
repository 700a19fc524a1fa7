"""Large values sent to PostgreSQL a piece at a time (a heavy accept's, a replay's new body), and large events and
bodies read back a piece at a time.

asyncpg does all its work on the event loop: it copies a parameter into its message buffer and hands the whole
message to the transport in one call, and it puts a row's column together and decodes it in the callback that reads
the row's last bytes. A large mail's 60 MiB event so held the loop 125-165 ms when accepted and 50-80 ms when read
back, while every other request waited. Here no turn of the loop handles more than a piece of such a value:

- `stage` copies each value of an accept longer than SEND_AT_ONCE_BYTES (COPY, binary) into the table accept_pieces
  (migration 0027), PIECE_SEND_BYTES a row, the loop getting a turn between two rows; the accept then binds STAGED
  (an empty value, which no encoded event or body is) in its place, and its statement joins the pieces back in the
  server (`joined_pieces`). The pieces are committed before the accept's group runs, so every run of it (a group
  written again accept by accept, or after a deadlock) finds them; `unstage` deletes them once the accept is
  answered, and what a process that stopped meanwhile left behind is deleted by a later `stage` (STAGED_KEEP_MS).
- `read_pieces` reads a value longer than DECODE_AT_ONCE_BYTES as rows of PIECE_READ_BYTES, cut from it in the server
  once it is decompressed whole (a substring of a compressed value decompresses it from its start: cut from the
  column, 60 MiB in 256 KiB pieces took 16 s of the server's time); the caller joins them off the loop. So is a
  delivery's body read (`read_pieces(..., BODY)`): one quoting a large mail's text, read by a claim or the delivery
  page. A statement that reads such a value with other columns or rows asks for it only when it is short
  (`at_most`), and for a longer one's pieces apart.
- `hash_pieces` reads, of a large event, only the pieces that hold an attachment's sha256 (retention's scan).
- A replay's large re-rendered body is staged as an accept's is, and its UPDATE joins the pieces (`joined_pieces`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from bridge.store.pieces import PIECE_READ_BYTES
from bridge.store.rows import SHA256_MARK, SHA256_SPAN, now_ms

SEND_AT_ONCE_BYTES = 1 << 20
"""A value of an accept up to this long is bound to its statement as it is (the driver copies it, about 0.1-0.3 ms
a MiB, on the loop); a longer one is staged in pieces."""
PIECE_SEND_BYTES = 256 * 1024
"""How much of a staged value one row of accept_pieces holds: what the driver copies in one turn of the loop."""
STAGED = b""
"""What an accept binds in place of a staged value: its statement joins the pieces (`joined_pieces`) instead."""
STAGED_KEEP_MS = 3_600_000
"""Pieces older than this are left over by a process that stopped before it deleted them: a later `stage` deletes
them. Far longer than any accept waits for its group."""
_STAGE_COLUMNS = ("owner", "n", "staged_at", "data")
_SWEEP = "DELETE FROM accept_pieces WHERE staged_at < $1"
_UNSTAGE = "DELETE FROM accept_pieces WHERE owner = ANY($1::text[])"
EVENT = ("events", "data")
BODY = ("deliveries", "body")
"""The large values read in pieces: an event's data, a delivery's body (table, column; each row by its `id`)."""


def at_most(column: str, param: str) -> str:
    """SQL for `column` (a bytea) when it is at most `param` bytes long, else NULL. Its length is read without
    decompressing or fetching it (a TOASTed value's header holds it)."""
    return f"CASE WHEN octet_length({column}) <= {param} THEN {column} END"


READ_HEAD = f"SELECT {at_most('data', '$2')} FROM events WHERE id = $1"  # noqa: S608 - constants
"""An event's data when it is at most $2 bytes long, else NULL (and no row when there is no such event): one round
trip for an ordinary event."""
_CUT = ("FROM (SELECT {column} || ''::bytea AS d FROM {table} WHERE id = $1 OFFSET 0) AS e "
        "CROSS JOIN LATERAL generate_series(1, octet_length(e.d), $2) AS s")
_READ_PIECES = "SELECT s, substring(e.d FROM s FOR $2) " + _CUT  # noqa: S608 - constants
"""A value as rows of $2 bytes (its place, from 1, and the piece). The concatenation detoasts the value once
(OFFSET 0 keeps the subquery, so it is computed once, not for each piece)."""
_READS = {value: _READ_PIECES.format(table=value[0], column=value[1]) for value in (EVENT, BODY)}
_WITHIN = f"substring(e.d FROM s FOR $2 + {SHA256_SPAN})"
_HASH_PIECES = (f"SELECT {_WITHIN} {_CUT.format(table=EVENT[0], column=EVENT[1])} "
                f"WHERE position('\\x{SHA256_MARK.hex()}'::bytea IN {_WITHIN}) > 0")
"""The pieces of an event's data (of $2 bytes, each with the SHA256_SPAN bytes after it, so that a sha256 beginning
in one is whole in it) that hold SHA256_MARK: the only ones retention's attachment scan needs."""


def joined_pieces(value: str, owner: str) -> str:
    """SQL for the value a statement writes: `value` (a bytea expression) itself, or, when it is STAGED, the pieces
    `owner` (the event's or delivery's id) staged, joined. A NULL value (a delivery without a body) stays NULL."""
    return (f"CASE WHEN {value} = ''::bytea THEN (SELECT string_agg(p.data, ''::bytea ORDER BY p.n) "  # noqa: S608 - the caller's SQL
            f"FROM accept_pieces AS p WHERE p.owner = {owner}) ELSE {value} END")


async def stage(conn: Any, values: Sequence[tuple[str, bytes]]) -> None:
    """Copy `values` ((owner, value)) into accept_pieces, PIECE_SEND_BYTES a row, each committed with the COPY; first
    delete what was left there longer than STAGED_KEEP_MS ago."""
    now = now_ms()
    await conn.execute(_SWEEP, now - STAGED_KEEP_MS)
    await conn.copy_records_to_table("accept_pieces", records=_pieces(values, now), columns=_STAGE_COLUMNS)


async def _pieces(values: Sequence[tuple[str, bytes]], now: int) -> AsyncIterator[tuple[str, int, int, memoryview]]:
    """The rows of `values`' pieces, the loop given a turn before each: the driver encodes and writes the rows it is
    given without one, as long as the connection takes them."""
    for owner, value in values:
        whole = memoryview(value)
        for n, start in enumerate(range(0, len(value), PIECE_SEND_BYTES)):
            await asyncio.sleep(0)
            yield owner, n, now, whole[start:start + PIECE_SEND_BYTES]


async def unstage(conn: Any, owners: Sequence[str]) -> None:
    """Delete the pieces `owners` staged."""
    await conn.execute(_UNSTAGE, list(owners))


async def read_pieces(conn: Any, key: str, value: tuple[str, str] = EVENT) -> list[bytes] | None:
    """`value` (EVENT, BODY) of the row `key` as pieces of PIECE_READ_BYTES, in order; None when there is no such
    row, or the value is NULL or empty."""
    rows = await conn.fetch(_READS[value], key, PIECE_READ_BYTES)
    if not rows:
        return None
    return [r[1] for r in sorted(rows, key=lambda r: r[0])]


async def hash_pieces(conn: Any, event_id: str) -> list[bytes]:
    """The pieces of an event's data that hold an attachment's sha256 (whole: each piece runs on SHA256_SPAN bytes
    past PIECE_READ_BYTES); none for an event that names no attachment, or is gone."""
    return [r[0] for r in await conn.fetch(_HASH_PIECES, event_id, PIECE_READ_BYTES)]
