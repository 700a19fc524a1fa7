"""Durable storage of events, deliveries and attempts."""

from __future__ import annotations

from bridge.config import Config
from bridge.store.base import Store


def open_store(config: Config, *, owner: bool = True) -> Store:
    """The store the config's `store.url` names (not yet opened); `owner=False` for CLI inspection."""
    url = config.store_url
    if url.scheme == "sqlite":
        from bridge.store.sqlite import SqliteStore  # noqa: PLC0415 - keep optional backends lazy

        assert url.path is not None
        shown = config.shown_store_file
        return SqliteStore(url.path, group_commit_max=config.store.group_commit_max, owner=owner,
                           shown=None if shown == str(url.path) else shown)
    from bridge.store.postgres import PostgresStore, split_schema  # noqa: PLC0415

    dsn, schema = split_schema(url.dsn)
    return PostgresStore(dsn, schema=schema, min_size=config.store.pool_min, max_size=config.store.pool_max,
                         group_commit_max=config.store.group_commit_max)
