"""`server.event_loop: uvloop`: the whole server (intake, delivery, a graceful stop) on uvloop's loop."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.integration.processes import delivered_refs, free_port, spawn, stop_all, wait_http, write_partner_config

pytestmark = pytest.mark.integration


async def test_a_server_on_uvloop_accepts_delivers_and_stops(tmp_path: Path) -> None:
    """On uvloop, events are accepted and delivered, the start-up log names the loop, and SIGTERM stops it
    with exit status 0."""
    pytest.importorskip("uvloop")
    port, sandbox_port = free_port(), free_port()
    cfg = write_partner_config(tmp_path, port, sandbox_port)
    cfg.write_text(cfg.read_text().replace("shutdown_grace_seconds: 1.0}", "shutdown_grace_seconds: 1.0, "
                                                                          "event_loop: uvloop}"))
    cfg.write_text(cfg.read_text().replace("log: {level: warning}", "log: {level: info}"))
    log = tmp_path / "processes.log"
    sandbox = spawn(["sandbox", "--port", str(sandbox_port)], log)
    server = spawn(["serve", "-c", str(cfg)], log)
    try:
        await wait_http(f"http://127.0.0.1:{sandbox_port}/kapture/tickets", sandbox)
        await wait_http(f"http://127.0.0.1:{port}/readyz", server)
        async with aiohttp.ClientSession() as session:
            for i in range(20):
                async with session.post(f"http://127.0.0.1:{port}/hooks/partner", json={"id": f"u-{i}"}) as r:
                    assert r.status == 202
        accepted = {f"u-{i}" for i in range(20)}
        assert await delivered_refs(sandbox_port, accepted) >= accepted
        server.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.wait, 15) == 0
    finally:
        stop_all(server, sandbox)
    started = [json.loads(line) for line in log.read_text().splitlines()
               if line.startswith("{") and '"server.started"' in line]
    assert [line["event_loop"] for line in started] == ["uvloop"]
