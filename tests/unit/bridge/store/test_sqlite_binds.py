"""NullsWritten: a statement with each None written NULL in it, and only the other values bound."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest

from bridge.store.sqlite_binds import NullsWritten

STATEMENT = NullsWritten("SELECT ?1, COALESCE({0}, 'x'), ?2, {1}, {2}, {1}")


@pytest.mark.parametrize(("nullable", "sql", "bound"), [
    ((None, None, None), "SELECT ?1, COALESCE(NULL, 'x'), ?2, NULL, NULL, NULL", ()),
    (("a", None, None), "SELECT ?1, COALESCE(?3, 'x'), ?2, NULL, NULL, NULL", ("a",)),
    ((None, "b", None), "SELECT ?1, COALESCE(NULL, 'x'), ?2, ?3, NULL, ?3", ("b",)),
    (("a", "b", 3), "SELECT ?1, COALESCE(?3, 'x'), ?2, ?4, ?5, ?4", ("a", "b", 3)),
])
def test_each_none_is_written_null_and_the_rest_numbered_after_the_fixed_values(
        nullable: tuple[object, ...], sql: str, bound: tuple[object, ...]) -> None:
    assert STATEMENT.bind((1, 2), nullable) == (sql, (1, 2, *bound))
    with closing(sqlite3.connect(":memory:")) as conn:
        assert conn.execute(*STATEMENT.bind((1, 2), nullable)).fetchone() == (
            1, nullable[0] or "x", 2, nullable[1], nullable[2], nullable[1])


def test_values_that_do_not_fit_the_statement_are_refused() -> None:
    with pytest.raises(ValueError, match="values for a statement of 2 and 3"):
        STATEMENT.bind((1, 2), (None, None))
    with pytest.raises(ValueError, match="values for a statement of 2 and 3"):
        STATEMENT.bind((1,), (None, None, None))
