"""Which database errors are a statement refused for its data (the data's problem: StoreRefused, the store not
failing) and which are the store's failure (StoreUnavailable, /readyz down until a commit succeeds): each SQLSTATE
class for PostgreSQL, each exception for SQLite (no database)."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest

from bridge.store import pg_batch, sqlite

REFUSED_FOR_DATA = [
    asyncpg.DataError("invalid input for query argument $2: 2**70 (value out of int64 range)"),  # 22000
    asyncpg.exceptions.NumericValueOutOfRangeError("bigint out of range"),  # 22003
    asyncpg.exceptions.UntranslatableCharacterError(
        'character with byte sequence 0xf0 0x9f 0x98 0x80 in encoding "UTF8" has no equivalent in "LATIN1"'),  # 22P05
    asyncpg.exceptions.CharacterNotInRepertoireError("invalid byte sequence for encoding"),  # 22021
    asyncpg.exceptions.StringDataRightTruncationError("value too long for type character varying(8)"),  # 22001
    asyncpg.exceptions.InvalidTextRepresentationError("invalid input syntax for type integer"),  # 22P02
    asyncpg.exceptions.IntegrityConstraintViolationError("integrity"),  # 23000
    asyncpg.exceptions.UniqueViolationError("duplicate key value violates unique constraint"),  # 23505
    asyncpg.exceptions.ForeignKeyViolationError("violates foreign key constraint"),  # 23503
    asyncpg.exceptions.CheckViolationError("violates check constraint"),  # 23514
    asyncpg.exceptions.NotNullViolationError("null value in column"),  # 23502
    asyncpg.exceptions.ProgramLimitExceededError(
        "index row size 2720 exceeds btree version 4 maximum 2704"),  # 54000
    asyncpg.exceptions.StatementTooComplexError("stack depth limit exceeded"),  # 54001
]
STORE_FAILURES = [
    asyncpg.exceptions.DiskFullError("could not extend file: No space left on device"),  # 53100
    asyncpg.exceptions.OutOfMemoryError("out of memory"),  # 53200
    asyncpg.exceptions.SerializationError("could not serialize access"),  # 40001: retried
    asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),  # 40P01: retried
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),  # 57P01
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),  # 57P03
    asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),  # 57014
    asyncpg.exceptions.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),  # 25006
    asyncpg.exceptions.ConnectionFailureError("connection failure"),  # 08006
    asyncpg.exceptions.UndefinedTableError('relation "events" does not exist'),  # 42P01
    asyncpg.exceptions.InternalServerError("could not read block"),  # XX000
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    ConnectionResetError("reset by peer"),
    TimeoutError(),
]


@pytest.mark.parametrize("exc", REFUSED_FOR_DATA, ids=lambda e: f"{e.sqlstate}-{type(e).__name__}")
def test_postgresql_data_exceptions_integrity_violations_and_limits_are_refusals(exc: BaseException) -> None:
    """SQLSTATE classes 22 (data exception), 23 (integrity constraint violation: the code expects none, handling
    duplicates with ON CONFLICT) and 54 (program limit exceeded): the same data meets them on every try."""
    assert pg_batch.refused(exc)
    assert not pg_batch.lost_connection(exc)
    refusal = pg_batch.refusal(exc)
    assert refusal.reason == f"{exc} (SQLSTATE {exc.sqlstate})"  # type: ignore[attr-defined]


@pytest.mark.parametrize("exc", STORE_FAILURES, ids=lambda e: getattr(e, "sqlstate", None) or type(e).__name__)
def test_postgresql_connection_server_resource_and_retried_errors_are_the_stores(exc: BaseException) -> None:
    """A lost connection, a server shutting down, a full disk, a serialization failure or deadlock (which a retry
    gets past), a schema the code does not match: the store's failure, never the data's."""
    assert not pg_batch.refused(exc)


@pytest.mark.parametrize("exc", [
    asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"),  # 57014
    asyncpg.exceptions.QueryCanceledError("canceling statement due to user request"),  # 57014
    asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),  # 40P01
    asyncpg.DataError("invalid input for query argument $2: 2**70 (value out of int64 range)"),
    asyncpg.exceptions.OutdatedSchemaCacheError("cached statement plan is invalid"),
], ids=lambda e: f"{getattr(e, 'sqlstate', None) or type(e).__name__}-{e}")
def test_postgresql_a_statement_cut_off_or_refused_leaves_its_connection(exc: BaseException) -> None:
    """A statement cancelled (a statement_timeout, an operator's pg_cancel_backend: 57014, though class 57 is also
    a server shutting down), a deadlock, a value the driver cannot send: the statement failed, not the connection,
    so a group is run again item by item on it."""
    assert not pg_batch.lost_connection(exc)


@pytest.mark.parametrize("exc", [
    asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),  # 57P01
    asyncpg.exceptions.CrashShutdownError("terminating connection because of crash of another server process"),
    asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),  # 57P03
    asyncpg.exceptions.IdleSessionTimeoutError("terminating connection due to idle-session timeout"),  # 57P05
    asyncpg.exceptions.ConnectionFailureError("connection failure"),  # 08006
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.InterfaceError("cannot perform operation: connection is closed"),
    ConnectionResetError("reset by peer"),
    TimeoutError(),
], ids=lambda e: getattr(e, "sqlstate", None) or type(e).__name__)
def test_postgresql_a_connection_ended_or_unanswered_is_lost(exc: BaseException) -> None:
    """The server ending the session, the network failing, no answer in time (whether the statement committed is
    unknown): the group fails as a whole, and the pool replaces its connections."""
    assert pg_batch.lost_connection(exc)


@pytest.mark.parametrize("exc", [
    sqlite3.DataError("string or blob too big"),
    sqlite3.IntegrityError("CHECK constraint failed: status IN ('pending', 'in_flight', 'succeeded', 'dead')"),
    OverflowError("Python int too large to convert to SQLite INTEGER"),
], ids=lambda e: type(e).__name__)
def test_sqlite_data_errors_constraints_and_overflow_are_refusals(exc: BaseException) -> None:
    """SQLite's equivalents: a value past SQLITE_LIMIT_LENGTH, a constraint the row breaks, an int past 64 bits."""
    assert sqlite.refused(exc)


@pytest.mark.parametrize("exc", [
    sqlite3.OperationalError("database or disk is full"),
    sqlite3.OperationalError("disk I/O error"),
    sqlite3.OperationalError("database is locked"),
    sqlite3.DatabaseError("database disk image is malformed"),
    OSError("No space left on device"),
], ids=str)
def test_sqlite_disk_lock_and_corruption_errors_are_the_stores(exc: BaseException) -> None:
    assert not sqlite.refused(exc)
