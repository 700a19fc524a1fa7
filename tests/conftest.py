"""Fixtures shared by the test tiers: configs written to disk, and the whole app on a test server."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.app import build_app
from bridge.appkeys import RUNTIME
from bridge.config import Config, load_config
from bridge.registries import REGISTRIES
from bridge.runtime import Runtime
from bridge.store.sqlite import SqliteStore

ConfigFactory = Callable[..., Config]


@pytest.fixture
def write_config(tmp_path: Path) -> ConfigFactory:
    """Write bridge.yaml and mapping files under tmp_path and load them."""

    def make(config_yaml: str, mappings: dict[str, str] | None = None,
             environ: dict[str, str] | None = None) -> Config:
        (tmp_path / "bridge.yaml").write_text(textwrap.dedent(config_yaml))
        folder = tmp_path / "mappings"
        folder.mkdir(exist_ok=True)
        for name, text in (mappings or {}).items():
            (folder / f"{name}.yaml").write_text(textwrap.dedent(text))
        return load_config(tmp_path / "bridge.yaml", environ or {}, registries=REGISTRIES)

    return make


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    """An opened SQLite store, its file `s.db` in the test's folder, closed after the test."""
    opened = SqliteStore(tmp_path / "s.db")
    await opened.open()
    yield opened
    await opened.close()


AppClient = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def bridge_client(aiohttp_client: Any) -> AppClient:
    """Start the whole app on a test server, its sandboxes reachable over real HTTP."""

    async def start(config: Config, **kwargs: Any) -> TestClient[web.Request, web.Application]:
        app = build_app(config, **kwargs)
        client: TestClient[web.Request, web.Application] = await aiohttp_client(app)
        return client

    return start


def runtime(client: TestClient[web.Request, web.Application]) -> Runtime:
    return client.server.app[RUNTIME]  # type: ignore[union-attr]


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0,
                     interval: float = 0.02) -> None:
    """Wait until `check()` is true, failing the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
