"""The event loop `serve` runs on: server.event_loop's auto, asyncio and uvloop."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import Coroutine
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge.cli.serve import serve
from bridge.config import ServerConfig
from bridge.eventloop import LoopUnavailable, choose, run, running_loop_name
from tests.conftest import ConfigFactory, eventually
from tests.integration.processes import free_port


async def loop_name() -> str:
    return running_loop_name()


def test_the_default_is_asyncios_loop() -> None:
    """A config that says nothing of the loop runs on asyncio's own, uvloop installed or not."""
    assert ServerConfig().event_loop == "asyncio"
    assert choose(ServerConfig().event_loop) == ("asyncio", None)


def test_asyncio_runs_on_asyncios_own_loop() -> None:
    """`asyncio` runs the server on asyncio's default loop, uvloop installed or not."""
    assert choose("asyncio") == ("asyncio", None)
    assert run(loop_name, "asyncio") == "asyncio"


def test_auto_and_uvloop_run_on_uvloop_where_it_is_installed() -> None:
    """With uvloop installed, `auto` and `uvloop` both run the coroutine on a uvloop loop."""
    pytest.importorskip("uvloop")
    for setting in ("auto", "uvloop"):
        assert choose(setting)[0] == "uvloop"
        assert run(loop_name, setting) == "uvloop"


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where uvloop cannot be imported, `auto` runs on asyncio's loop."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # makes `import uvloop` raise ImportError
    assert choose("auto") == ("asyncio", None)
    assert run(loop_name, "auto") == "asyncio"


def test_uvloop_without_uvloop_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """`uvloop` where it cannot be imported is refused before anything runs, naming the key and the extra."""
    monkeypatch.setitem(sys.modules, "uvloop", None)
    made: list[str] = []

    def main() -> Coroutine[Any, Any, str]:
        made.append("the coroutine")
        return loop_name()

    with pytest.raises(LoopUnavailable, match=r"server\.event_loop is uvloop.*ticketbridge\[fast\].*auto or asyncio"):
        run(main, "uvloop")
    assert made == []


def test_the_start_log_names_the_loop_chosen_and_the_setting(write_config: ConfigFactory,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` run as the CLI runs it, with `auto` where uvloop cannot be imported: the start log says the loop
    it runs on (asyncio) beside the setting that chose it (auto)."""
    monkeypatch.setitem(sys.modules, "uvloop", None)
    config = write_config(f"""
        server: {{host: 127.0.0.1, port: {free_port()}, event_loop: auto}}
        store: {{url: "sqlite:///var/bridge.db"}}
        sources: {{contact: {{kind: form}}}}
        destinations: {{kapture: {{vendor: kapture, sandbox: true}}}}
    """)

    async def started_and_stopped() -> int:
        stop = asyncio.Event()
        server = asyncio.create_task(serve(config, workers=False, stop=stop))
        await eventually(lambda: any(e["event"] == "server.started" for e in logs))
        stop.set()
        return await server

    threshold = gc.get_threshold()
    try:
        with capture_logs() as logs:
            assert run(started_and_stopped, config.server.event_loop) == 0
    finally:  # serve tunes the collector for the process it runs in: not for the tests after this one
        gc.unfreeze()
        gc.set_threshold(*threshold)
    [started] = [e for e in logs if e["event"] == "server.started"]
    assert (started["event_loop"], started["event_loop_setting"]) == ("asyncio", "auto")
