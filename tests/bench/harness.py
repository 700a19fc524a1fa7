"""What the benchmarks share: server processes, ports, and HTTP load from wrk (C, Debian's `wrk` package).

The load comes from wrk, not from a Python client: an aiohttp client tops out near 10k requests/s on this kind
of machine, below what a bare aiohttp handler serves, so a ratio measured with it says more about the client
than about the server. `run_wrk` posts one body (from a file) with the given headers over a fixed number of
connections for a fixed time, through tests/bench/wrk/post.lua, and reads wrk's own summary.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.integration.processes import DSN

HERE = Path(__file__).parent
POST_LUA = HERE / "wrk" / "post.lua"
WRK = shutil.which("wrk")
needs_wrk = pytest.mark.skipif(
    WRK is None, reason="wrk is not installed: the HTTP benchmarks use it as the load (apt-get install wrk)")

CONNECTIONS = 32
FORM_BODY = b"name=Asha&email=asha%40example.com&subject=Router+down&message=No+internet"
FORM_HEADERS = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening after {timeout}s")


def spawn(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """A Python process (this interpreter) running `args` in `cwd`, its output discarded."""
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def stop(*procs: subprocess.Popen[bytes] | None) -> None:
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.terminate()
    for proc in procs:
        if proc is not None:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Load:
    """One wrk run: what it completed (a request still in flight when it stopped is not counted, though the
    server may have taken it), its rate, latency percentiles, and the answers that were not 2xx/3xx."""

    requests: int
    rate: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


@dataclass(frozen=True)
class Body:
    """A request body and its headers, written once to files wrk's script reads."""

    data: bytes
    headers: dict[str, str]
    unique: bool = False
    """Put a number of its own in place of each "bench-ID" in the body (for sources that deduplicate)."""

    def files(self, folder: Path) -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        key = f"{abs(hash((self.data, tuple(self.headers.items())))):x}"
        body, headers = folder / f"body-{key}.bin", folder / f"headers-{key}.txt"
        if not body.exists():
            body.write_bytes(self.data)
            headers.write_text("".join(f"{k}: {v}\n" for k, v in self.headers.items()))
        return body, headers


FORM = Body(FORM_BODY, FORM_HEADERS)
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(out: str, label: str) -> float:
    found = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
    return float(found.group(1)) * _UNITS[found.group(2)] if found else float("nan")


def run_wrk(url: str, body: Body = FORM, seconds: float = 3, folder: Path | None = None,
            connections: int = CONNECTIONS) -> Load:
    """Load `url` with wrk (one thread, `connections` connections) for `seconds`, posting `body` (its files
    written to `folder`, by default a folder of this process's in the temporary directory)."""
    assert WRK is not None, "wrk is not installed"
    body_file, headers_file = body.files(folder or Path(tempfile.gettempdir()) / f"ticketbridge-wrk-{os.getpid()}")
    args = [WRK, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "--timeout", "10s",
            "-s", str(POST_LUA), url, "--", str(body_file), str(headers_file)]
    if body.unique:
        args.append("unique")
    out = subprocess.run(args, capture_output=True, check=True, text=True).stdout
    requests = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert requests and rate, out
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return Load(requests=int(requests.group(1)), rate=float(rate.group(1)), p50_ms=_ms(out, "50%"),
                p99_ms=_ms(out, "99%"), non_2xx=int(bad.group(1)) if bad else 0,
                socket_errors=sum(map(int, errors.groups())) if errors else 0)


def spread(values: list[float], fmt: str = ".0f") -> str:
    """The median of `values`, with their range: "1234 (1100-1300)"."""
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


async def pg_events(schema: str, drop: bool = False) -> int:
    """The events stored in PostgreSQL schema `schema`; with `drop`, the schema is dropped after."""
    conn = await asyncpg.connect(DSN, server_settings={"search_path": schema})
    try:
        return int(await conn.fetchval("SELECT COUNT(*) FROM events"))
    finally:
        if drop:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
