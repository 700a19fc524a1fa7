"""The open-file limit, the connection cap under it, and accept errors logged once per interval."""

from __future__ import annotations

import asyncio
import errno
import gc
import resource
import subprocess
import sys
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge.cli import serve as serve_cli
from bridge.config import ServerConfig
from bridge.connections import REFUSED_LINGERING, ConnectionStats, ThrottledWarning
from bridge.eventloop import run
from bridge.fdlimit import (
    ACCEPT_BATCH,
    HEADROOM,
    POOL_CONNECTIONS,
    AcceptErrorHandler,
    connection_limits,
    headroom,
    needed,
)
from tests.conftest import ConfigFactory, eventually
from tests.fixtures.clocks import ManualClock
from tests.integration.processes import free_port


def test_a_repeated_warning_is_logged_once_per_interval_with_the_repeats_counted() -> None:
    """Within an interval repeats are only counted; the next line says how many were not logged."""
    clock = ManualClock(0.0)
    warn = ThrottledWarning("thing.failed", 10.0, clock)
    with capture_logs() as logs:
        for t in (0.0, 1.0, 2.0, 9.9, 10.0, 11.0, 25.0):
            clock.now = t
            warn(n=t)
    assert [(e["n"], e["suppressed"]) for e in logs] == [(0.0, 0), (10.0, 3), (25.0, 1)]
    assert {e["event"] for e in logs} == {"thing.failed"}


def _accept_context(code: int) -> dict[str, Any]:
    return {"message": "socket.accept() out of system resource", "exception": OSError(code, "Too many open files")}


def test_accept_errors_are_counted_and_logged_once_per_interval() -> None:
    """A thousand EMFILE accept errors in one interval make one warning, all of them counted."""
    stats, clock = ConnectionStats(), ManualClock(0.0)
    handler = AcceptErrorHandler(stats, 10.0, clock)
    loop = asyncio.new_event_loop()
    try:
        with capture_logs() as logs:
            for _ in range(1000):
                handler(loop, _accept_context(errno.EMFILE))
            clock.now = 10.0
            handler(loop, _accept_context(errno.ENFILE))
    finally:
        loop.close()
    assert stats.accept_errors == 1001
    assert [(e["event"], e["error"], e["suppressed"]) for e in logs] == [
        ("server.accept_failed", "EMFILE", 0), ("server.accept_failed", "ENFILE", 999)]


def test_accept_retries_after_the_listener_closed_are_throttled_too() -> None:
    """asyncio's pending accept retries failing on a closed listener at shutdown join the same throttle."""
    stats, clock = ConnectionStats(), ManualClock(0.0)
    handler = AcceptErrorHandler(stats, 10.0, clock)
    context = {"message": "Exception in callback BaseSelectorEventLoop._start_serving(<function Server>, ...)",
               "exception": ValueError("Invalid file descriptor: -1")}
    loop = asyncio.new_event_loop()
    try:
        with capture_logs() as logs:
            for _ in range(500):
                handler(loop, context)
    finally:
        loop.close()
    assert [(e["event"], e["error"]) for e in logs] == [("server.accept_failed", "retry_after_close")]


def test_other_loop_errors_go_to_the_handler_that_was_there_before() -> None:
    """Only accept errors are throttled; any other context reaches the previous handler untouched."""
    seen: list[dict[str, Any]] = []
    stats = ConnectionStats()
    handler = AcceptErrorHandler(stats, previous=lambda loop, context: seen.append(context))
    other = {"message": "Task exception was never retrieved", "exception": OSError(errno.EMFILE, "x")}
    loop = asyncio.new_event_loop()
    try:
        handler(loop, other)
    finally:
        loop.close()
    assert seen == [other]
    assert stats.accept_errors == 0


def test_the_cap_is_kept_under_the_open_file_limit_with_a_warning() -> None:
    """The cap, the process's other descriptors and sockets being accepted must fit the limit; else the cap
    and the accept batch are lowered until they do."""
    server = ServerConfig(max_connections=1000)
    with capture_logs() as logs:
        plenty = connection_limits(server, 65536, POOL_CONNECTIONS)
        assert (plenty.max_connections, plenty.accept_batch) == (1000, ACCEPT_BATCH)
        assert logs == []
        low = connection_limits(server, 1024, POOL_CONNECTIONS)
    assert low.max_connections + HEADROOM + REFUSED_LINGERING + 3 * low.accept_batch <= 1024
    assert low.max_connections >= 300
    assert [(e["event"], e["used"], e["nofile_limit"]) for e in logs] == [
        ("server.max_connections_lowered", low.max_connections, 1024)]
    assert "LimitNOFILE=65536" in logs[0]["fix"]
    assert needed(1000, ACCEPT_BATCH, POOL_CONNECTIONS) <= 65536


def test_the_deadlines_come_from_the_server_config() -> None:
    """Each configured timeout reaches the connection limits unchanged."""
    server = ServerConfig(header_timeout_seconds=1.5, body_timeout_seconds=2.5, keepalive_timeout_seconds=3.5)
    limits = connection_limits(server, 65536, POOL_CONNECTIONS)
    assert (limits.header_timeout, limits.body_timeout, limits.keepalive_timeout) == (1.5, 2.5, 3.5)


def test_the_soft_open_file_limit_is_raised_to_the_hard_one() -> None:
    """A process started with a low soft limit runs with the hard limit once serve has raised it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    code = ("import resource; from bridge.fdlimit import raise_nofile_limit; "
            f"resource.setrlimit(resource.RLIMIT_NOFILE, ({low}, {hard})); "
            "print(raise_nofile_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{(hard, hard)} {(hard, hard)}"


def test_the_headroom_holds_the_delivery_pool_the_destinations_need(write_config: ConfigFactory,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` with destinations whose max_in_flight add up to 3,000 (the delivery pool then holds 3,000
    connections, not 256) under an open-file limit of 4,500: the start-up check counts that pool, lowers the cap
    with a warning naming the pool and the limit that holds it all, and what it keeps fits the limit. Counting
    256, it found room for all 1,000 connections and said nothing."""
    nofile = 4500
    monkeypatch.setattr(serve_cli, "raise_nofile_limit", lambda: (nofile, nofile))
    dests = ", ".join(f"k{n}: {{vendor: kapture, sandbox: true, max_in_flight: 1000}}" for n in range(3))
    config = write_config(f"""
        server: {{host: 127.0.0.1, port: {free_port()}, max_connections: 1000}}
        store: {{url: "sqlite:///var/bridge.db"}}
        sources: {{contact: {{kind: form}}}}
        destinations: {{{dests}}}
    """)

    async def started_and_stopped() -> int:
        stop = asyncio.Event()
        server = asyncio.create_task(serve_cli.serve(config, workers=False, stop=stop))
        await eventually(lambda: any(e["event"] == "server.started" for e in logs))
        stop.set()
        return await server

    threshold = gc.get_threshold()
    try:
        with capture_logs() as logs:
            assert run(started_and_stopped, "asyncio") == 0
    finally:  # serve tunes the collector for the process it runs in: not for the tests after this one
        gc.unfreeze()
        gc.set_threshold(*threshold)
    [lowered] = [e for e in logs if e["event"] == "server.max_connections_lowered"]
    [started] = [e for e in logs if e["event"] == "server.started"]
    assert (lowered["delivery_pool"], lowered["nofile_limit"]) == (3000, nofile)
    assert started["max_connections"] == lowered["used"] < 1000
    assert lowered["used"] + headroom(3000) + REFUSED_LINGERING + 3 * lowered["accept_batch"] <= nofile
    assert f"to at least {needed(1000, ACCEPT_BATCH, 3000)}, or lower server.max_connections, or the " \
           "destinations' max_in_flight" in lowered["fix"]
