"""Real processes: a restart with a broken mapping on disk serves the last good set kept in the store (or
refuses to start, as configured), and a reload whose tests run too long fails without wedging shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.processes import PARTNER_MAPPING, free_port, spawn, stop, wait_http, write_partner_config

pytestmark = pytest.mark.integration

TOKEN = "admin-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# Line 7 of the broken file holds the unknown filter.
BROKEN = PARTNER_MAPPING.replace('"{{ payload.id }}"', '"{{ payload.id | no_such_filter }}"')


def config(tmp_path: Path, port: int, sandbox_port: int, extra: str = "") -> Path:
    cfg = write_partner_config(tmp_path, port, sandbox_port)
    cfg.write_text(cfg.read_text() + f"admin: {{token: {TOKEN}}}\n" + extra)
    return cfg


async def admin(port: int, path: str = "/admin/mappings") -> Any:
    async with aiohttp.ClientSession() as session, \
            session.get(f"http://127.0.0.1:{port}{path}", headers=AUTH) as resp:
        assert resp.status == 200
        return await resp.json() if path == "/admin/mappings" else await resp.text()


async def until(check: Any, timeout: float = 20.0) -> Any:
    """Poll the coroutine function `check` until it gives something true; that value."""
    async with asyncio.timeout(timeout):
        while not (value := await check()):
            await asyncio.sleep(0.05)
    return value


async def exit_code(proc: subprocess.Popen[bytes], timeout: float) -> int:
    return await asyncio.to_thread(proc.wait, timeout)


async def start_good_and_stop(tmp_path: Path, cfg: Path, port: int) -> str:
    """Run the server on the good mapping until it has kept the set in the store; its version."""
    log = tmp_path / "first.log"
    server = spawn(["serve", "-c", str(cfg)], log)
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz", server)
        body = await until(lambda: _kept(port))
        server.send_signal(signal.SIGTERM)
        assert await exit_code(server, 10) == 0
        return str(body["version"])
    finally:
        stop(server)


async def _kept(port: int) -> Any:
    body = await admin(port)
    return body if body["last_good"] and body["last_good"]["version"] == body["version"] else None


async def test_a_restart_with_a_broken_mapping_serves_the_last_good_set(tmp_path: Path) -> None:
    """After a good run, a broken file on disk at restart: the kept set serves (a post is delivered with the
    old mapping), the error is logged and shown with file:line, /metrics says degraded, `check` fails."""
    port, sandbox_port = free_port(), free_port()
    cfg = config(tmp_path, port, sandbox_port)
    log = tmp_path / "processes.log"
    sandbox = spawn(["sandbox", "--port", str(sandbox_port)], log)
    try:
        await wait_http(f"http://127.0.0.1:{sandbox_port}/kapture/tickets", sandbox)
        version = await start_good_and_stop(tmp_path, cfg, port)
        (tmp_path / "mappings" / "partner.yaml").write_text(BROKEN)

        server = spawn(["serve", "-c", str(cfg)], log)
        try:
            await wait_http(f"http://127.0.0.1:{port}/readyz", server)
            body = await admin(port)
            assert (body["source"], body["degraded"], body["version"]) == ("last_good", True, version)
            assert f"{tmp_path / 'mappings' / 'partner.yaml'}:7:" in body["folder_error"]
            assert "no_such_filter" in body["folder_error"]
            assert "ticketbridge_mappings_degraded 1" in await admin(port, "/metrics")
            async with aiohttp.ClientSession() as session:
                async with session.post(f"http://127.0.0.1:{port}/hooks/partner", json={"id": "e-1"}) as resp:
                    assert resp.status == 202

                async def delivered() -> Any:
                    async with session.get(f"http://127.0.0.1:{sandbox_port}/kapture/tickets") as r:
                        return (await r.json())["tickets"]

                tickets = await until(delivered)
            assert [t["taskTitle"] for t in tickets] == ["Partner ticket e-1"]
            server.send_signal(signal.SIGTERM)
            assert await exit_code(server, 10) == 0
        finally:
            stop(server)
        logged = log.read_text()
        assert "mappings.folder_broken" in logged and "partner.yaml:7:" in logged

        check = await asyncio.create_subprocess_exec(sys.executable, "-m", "bridge", "check", "-c", str(cfg),
                                                     stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(check.communicate(), 60)
        assert check.returncode != 0 and "partner.yaml:7:" in err.decode()
    finally:
        stop(sandbox)


async def test_with_fail_a_broken_mapping_at_restart_refuses_to_start(tmp_path: Path) -> None:
    """`mappings_on_start_error: fail` keeps the old behaviour: exit 2 naming file:line, even with a set kept."""
    port, sandbox_port = free_port(), free_port()
    cfg = config(tmp_path, port, sandbox_port)
    await start_good_and_stop(tmp_path, cfg, port)
    (tmp_path / "mappings" / "partner.yaml").write_text(BROKEN)
    cfg.write_text(cfg.read_text() + "mappings_on_start_error: fail\n")
    server = spawn(["serve", "-c", str(cfg)], tmp_path / "second.log")
    try:
        assert await exit_code(server, 30) == 2
    finally:
        stop(server)
    assert "partner.yaml:7:" in (tmp_path / "second.log").read_text()


async def test_a_fresh_store_and_a_broken_folder_refuse_to_start(tmp_path: Path) -> None:
    """With no set kept in the store, a broken folder at start is an exit 2 naming file:line, as before."""
    port, sandbox_port = free_port(), free_port()
    cfg = config(tmp_path, port, sandbox_port)
    (tmp_path / "mappings" / "partner.yaml").write_text(BROKEN)
    server = spawn(["serve", "-c", str(cfg)], tmp_path / "serve.log")
    try:
        assert await exit_code(server, 30) == 2
    finally:
        stop(server)
    out = (tmp_path / "serve.log").read_text()
    assert "partner.yaml:7:" in out
    assert "no last good mapping set is kept in the store" in out


# Line 7 holds a template nesting 400 blocks deep, past what Jinja's parser and Python's compiler can follow.
DEEP = PARTNER_MAPPING.replace('"{{ payload.id }}"', '"' + "{% if true %}" * 400 + "x" + "{% endif %}" * 400 + '"')


async def test_a_restart_with_a_template_nesting_too_deeply_serves_the_last_good_set(tmp_path: Path) -> None:
    """A template nesting too deeply to compile at restart is a mapping error like any other: the last good set
    serves, and the folder's error names file, line, field and the limit."""
    port, sandbox_port = free_port(), free_port()
    cfg = config(tmp_path, port, sandbox_port)
    version = await start_good_and_stop(tmp_path, cfg, port)
    (tmp_path / "mappings" / "partner.yaml").write_text(DEEP)
    log = tmp_path / "second.log"
    server = spawn(["serve", "-c", str(cfg)], log)
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz", server)
        body = await admin(port)
        assert (body["source"], body["degraded"], body["version"]) == ("last_good", True, version)
        assert f"{tmp_path / 'mappings' / 'partner.yaml'}:7:3: partner.source_ref: template nests too deeply: " \
               "400 blocks" in body["folder_error"]
        server.send_signal(signal.SIGTERM)
        assert await exit_code(server, 10) == 0
    finally:
        stop(server)
    assert "Traceback" not in log.read_text()


async def test_a_fresh_store_and_a_template_nesting_too_deeply_refuse_to_start_with_exit_2(tmp_path: Path) -> None:
    port, sandbox_port = free_port(), free_port()
    cfg = config(tmp_path, port, sandbox_port)
    (tmp_path / "mappings" / "partner.yaml").write_text(DEEP)
    server = spawn(["serve", "-c", str(cfg)], tmp_path / "serve.log")
    try:
        assert await exit_code(server, 30) == 2
    finally:
        stop(server)
    out = (tmp_path / "serve.log").read_text()
    assert "partner.yaml:7:3: partner.source_ref: template nests too deeply" in out and "Traceback" not in out


def slow_mapping(tests: int) -> str:
    """A mapping whose every test renders a loop that only the time budget stops (about 250 ms each)."""
    spin = "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}x"
    cases = "".join(f"  - input: {{payload: {{id: s-{i}}}}}\n    expect_contains: {{title: x}}\n"
                    for i in range(tests))
    return (f"source: partner\ndestination: kapture\naction: create_ticket\nfields:\n"
            f"  title: \"{spin}\"\ntests:\n{cases}")


async def test_a_reload_past_its_deadline_fails_and_the_server_goes_on(tmp_path: Path) -> None:
    """A mapping whose tests take longer than mappings_reload_timeout is a failed reload naming the deadline;
    the server keeps serving the old set and exits promptly on SIGTERM."""
    port, sandbox_port = free_port(), free_port()
    cfg = config(tmp_path, port, sandbox_port, "mappings_reload_timeout: 1s\n")
    server = spawn(["serve", "-c", str(cfg)], tmp_path / "serve.log")
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz", server)
        version = (await admin(port))["version"]
        (tmp_path / "mappings" / "slow.yaml").write_text(slow_mapping(200))

        async def failed() -> Any:
            body = await admin(port)
            return body if body["reload"]["last_result"] == "failed" else None

        body = await until(failed)
        assert "ran past its deadline of 1 s (mappings_reload_timeout)" in body["reload"]["last_error"]
        assert body["version"] == version
        server.send_signal(signal.SIGTERM)
        assert await exit_code(server, 5) == 0
    finally:
        stop(server)


async def test_sigterm_during_a_long_reload_exits_promptly(tmp_path: Path) -> None:
    """SIGTERM while a reload is still testing (50 s of tests, a 60 s deadline) ends the process at once."""
    port, sandbox_port = free_port(), free_port()
    cfg = config(tmp_path, port, sandbox_port, "mappings_reload_timeout: 60s\n")
    server = spawn(["serve", "-c", str(cfg)], tmp_path / "serve.log")
    try:
        await wait_http(f"http://127.0.0.1:{port}/readyz", server)
        (tmp_path / "mappings" / "slow.yaml").write_text(slow_mapping(200))

        async def reloading() -> bool:
            reload = (await admin(port))["reload"]
            return reload["last_attempt_at"] is not None and reload["last_result"] is None

        await until(reloading)
        server.send_signal(signal.SIGTERM)
        assert await exit_code(server, 5) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            stop(server)
