"""Running ticketbridge and the standalone simulators as real processes, for crash and load tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
DSN = os.environ.get("TICKETBRIDGE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn(args: list[str], log: Path, module: str = "bridge", cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """`python -m module args` in a session of its own, its output appended to `log` (`cwd`: from there; the
    project's root, ROOT, runs a module of the tests)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", module, *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, cwd=cwd)


async def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)



def stop_all(*procs: subprocess.Popen[bytes] | None) -> None:
    """Stop each process that was started (None stands for one that was not), ignoring those already gone."""
    for proc in procs:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                stop(proc)


async def delivered_refs(sandbox_port: int, accepted: set[str], polls: int = 600) -> set[str]:
    """The `source_ref` of every ticket the sandbox's Kapture holds, polled until it covers `accepted` (or
    `polls` polls, 0.1 s apart, have passed)."""
    delivered: set[str] = set()
    async with aiohttp.ClientSession() as session:
        for _ in range(polls):
            async with session.get(f"http://127.0.0.1:{sandbox_port}/kapture/tickets") as resp:
                delivered = {t["fields"]["source_ref"] for t in (await resp.json())["tickets"]}
            if accepted <= delivered:
                break
            await asyncio.sleep(0.1)
    return delivered

PARTNER_MAPPING = """
source: partner
destination: kapture
action: create_ticket
fields:
  title: "Partner ticket {{ payload.id }}"
  source_ref: "{{ payload.id }}"
"""


def write_partner_config(
    folder: Path, port: int, sandbox_port: int, *, name: str = "bridge", store: str = "sqlite:///var/bridge.db",
    grace: float = 1.0, max_in_flight: int = 16, dedup: bool = True, retry: str | None = None,
    rate_limit: str | None = None, lease_seconds: float | None = None,
) -> Path:
    """A config with one `partner` json source whose events become tickets in a standalone Kapture sandbox."""
    (folder / "mappings").mkdir(exist_ok=True)
    (folder / "mappings" / "partner.yaml").write_text(PARTNER_MAPPING)
    source = "{kind: json, dedup: payload.id}" if dedup else "{kind: json}"
    cfg = folder / f"{name}.yaml"
    lease = f", lease_seconds: {lease_seconds}" if lease_seconds is not None else ""
    cfg.write_text(f"""
server: {{host: 127.0.0.1, port: {port}, shutdown_grace_seconds: {grace}}}
store: {{url: "{store}"{lease}}}
log: {{level: warning}}
sources:
  partner: {source}
destinations:
  kapture:
    vendor: kapture
    base_url: "http://127.0.0.1:{sandbox_port}/kapture"
    token: sandbox-token
    max_in_flight: {max_in_flight}
""" + (f"    retry: {retry}\n" if retry else "") + (f"    rate_limit: {rate_limit}\n" if rate_limit else ""))
    return cfg
