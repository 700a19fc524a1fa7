"""Slow and idle connections against a real server process: each is closed within its deadline, the
cap answers 503 past it, and normal requests are served all the while."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bridge.fdlimit import HEADROOM
from tests.integration.processes import free_port, spawn, stop, wait_http, write_partner_config

pytestmark = pytest.mark.integration

TOKEN = "metrics-token"
DEADLINE = 5.0  # every read deadline of the server under test, seconds
SLACK = 15.0  # how late a close may be seen on a loaded 2-core machine with 1,500 sockets in play
OUTER = 90.0


def config(folder: Path, port: int, **server: float) -> Path:
    cfg = write_partner_config(folder, port, free_port(), dedup=False)
    options = "".join(f", {key}: {value}" for key, value in server.items())
    text = cfg.read_text().replace("shutdown_grace_seconds: 1.0}", f"shutdown_grace_seconds: 1.0{options}}}")
    cfg.write_text(text + f"admin: {{token: {TOKEN}}}\n")
    return cfg


@contextlib.contextmanager
def nofile_at_least(n: int) -> Iterator[None]:
    """This test process may hold `n` sockets (the soft limit raised towards the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.fail(f"this test needs {n} open files; the hard limit is {hard} (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def spawn_with_nofile(nofile: int, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`spawn`, with the process's open-file limit (soft and hard) set to `nofile`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            ["sh", "-c", f'ulimit -Sn {nofile} && ulimit -Hn {nofile} && exec "$0" "$@"', sys.executable, "-m",
             "bridge", *args],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)


async def metric(session: aiohttp.ClientSession, base: str, name: str) -> dict[str, float]:
    """The samples of one metric family, by their label text."""
    async with session.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        text = await resp.text()
    return {m.group(1) or "": float(m.group(2))
            for m in re.finditer(rf"^{name}(\{{[^}}]*\}})? (\S+)$", text, re.MULTILINE)}


async def eof(reader: asyncio.StreamReader) -> bytes:
    """All the server sends until it closes (a reset, when it closes on bytes it did not read, is a close)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := await reader.read(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class Ready:
    """Counts the slow clients in position; `all` is set once every one is."""

    def __init__(self, n: int) -> None:
        self.n, self.all = n, asyncio.Event()

    def __call__(self) -> None:
        self.n -= 1
        if self.n == 0:
            self.all.set()


async def slow_head(port: int, ready: Ready) -> tuple[float, bytes]:
    """A head sent one header line every 0.5 s: the seconds until the server closed, and what it sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        started = time.monotonic()
        writer.write(b"POST /hooks/partner HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n")
        ready()
        closed = asyncio.ensure_future(eof(reader))
        n = 0
        while not closed.done():
            writer.write(f"X-Slow-{n}: a\r\n".encode())
            n += 1
            await asyncio.wait([closed], timeout=0.5)  # the slow client's pace
        return time.monotonic() - started, await closed
    finally:
        writer.close()


async def slow_body(port: int, ready: Ready) -> tuple[float, bytes]:
    """A body sent a byte every 0.5 s after a whole head."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /hooks/partner HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"id\": \"")
        started = time.monotonic()
        ready()
        closed = asyncio.ensure_future(eof(reader))
        while not closed.done():
            writer.write(b"x")
            await asyncio.wait([closed], timeout=0.5)
        return time.monotonic() - started, await closed
    finally:
        writer.close()


async def idle(port: int, ready: Ready) -> tuple[float, bytes]:
    """A kept-alive connection that asks once, then says nothing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"Content-Length: (\d+)", head, re.IGNORECASE)
        assert length is not None
        await reader.readexactly(int(length.group(1)))
        started = time.monotonic()
        ready()
        rest = await eof(reader)
        return time.monotonic() - started, rest
    finally:
        writer.close()


async def test_1500_slow_connections_are_closed_in_time_while_normal_requests_are_served(tmp_path: Path) -> None:
    """500 slow heads, 500 slow bodies and 500 idle keep-alives are all closed by the server within its
    deadlines, a slow body is answered 408, and a normal POST gets its 202 and /healthz answers meanwhile."""
    port = free_port()
    cfg = config(tmp_path, port, header_timeout_seconds=DEADLINE, body_timeout_seconds=DEADLINE,
                 keepalive_timeout_seconds=DEADLINE, max_connections=4000)
    server = spawn(["serve", "-c", str(cfg), "--no-workers"], tmp_path / "server.log")
    base = f"http://127.0.0.1:{port}"
    with nofile_at_least(4000):
        try:
            await wait_http(f"{base}/readyz", server)
            kinds = [slow_head] * 500 + [slow_body] * 500 + [idle] * 500
            async with asyncio.timeout(OUTER):
                ready = Ready(len(kinds))
                clients = [asyncio.ensure_future(kind(port, ready)) for kind in kinds]
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
                    await ready.all.wait()
                    async with session.post(f"{base}/hooks/partner", json={"id": "during"}) as resp:
                        assert resp.status == 202
                    async with session.get(f"{base}/healthz") as resp:
                        assert resp.status == 200
                    still_open = sum(not c.done() for c in clients)
                    results = await asyncio.gather(*clients)
                    timed_out = await metric(session, base, "ticketbridge_connections_timed_out_total")
                    opened = (await metric(session, base, "ticketbridge_connections_open"))[""]
        finally:
            stop(server)
    assert still_open >= 1000, "the normal requests were served while the slow connections were open"
    seconds = [s for s, _ in results]
    print(f"\nclosed after (s, max per kind): heads {max(seconds[:500]):.2f}, bodies {max(seconds[500:1000]):.2f}, "
          f"idle {max(seconds[1000:]):.2f}; deadline {DEADLINE} s; open when the POST was served: {still_open}")
    assert max(seconds) < DEADLINE + SLACK, f"slowest close after {max(seconds):.1f} s"
    assert all(sent == b"" for _, sent in results[:500]), "a slow head is closed without an answer"
    assert all(b" 408 " in sent and b"body_timeout" in sent for _, sent in results[500:1000])
    assert all(sent == b"" for _, sent in results[1000:])
    assert timed_out == {'{reason="body"}': 500, '{reason="header"}': 500, '{reason="idle"}': 500}
    assert opened == 1  # the scrape's own


async def test_past_max_connections_new_ones_get_503_until_others_close(tmp_path: Path) -> None:
    """With max_connections open, a new connection is answered 503 with Retry-After; once some close,
    a normal POST gets its 202."""
    port = free_port()
    cfg = config(tmp_path, port, header_timeout_seconds=60, keepalive_timeout_seconds=60, max_connections=50)
    server = spawn(["serve", "-c", str(cfg), "--no-workers"], tmp_path / "server.log")
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_http(f"{base}/readyz", server)
        async with asyncio.timeout(OUTER):
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(50)]
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
                with contextlib.suppress(aiohttp.ClientError):  # refused or not: only the count matters
                    await metric(session, base, "ticketbridge_connections_open")
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /hooks/partner HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
                refusal = await reader.read()
                writer.close()
                assert refusal.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
                assert b"Retry-After: 5\r\n" in refusal and b"Connection: close\r\n" in refusal
                for _, w in held[:10]:
                    w.close()
                deadline = time.monotonic() + 30
                while True:
                    assert time.monotonic() < deadline, "no request was taken within 30 s of the clients closing"
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.post(f"{base}/hooks/partner", json={"id": "after"}) as resp:
                            if resp.status == 202:
                                break
                            assert resp.status == 503
                    await asyncio.sleep(0.05)
                refused = await metric(session, base, "ticketbridge_connections_refused_total")
            for _, w in held[10:]:
                w.close()
    finally:
        stop(server)
    assert refused[""] >= 1


async def test_1100_connections_under_a_1024_file_limit_are_refused_not_failed(tmp_path: Path) -> None:
    """The measured outage: with 1,024 descriptors and 1,100 silent connections, the server lowers its cap
    to fit, answers the excess 503 at once (never failing to accept), and takes POSTs again once the
    silent ones time out."""
    port = free_port()
    cfg = config(tmp_path, port, header_timeout_seconds=20, max_connections=1000)
    log = tmp_path / "server.log"
    server = spawn_with_nofile(1024, ["serve", "-c", str(cfg), "--no-workers"], log)
    base = f"http://127.0.0.1:{port}"
    with nofile_at_least(4000):
        try:
            await wait_http(f"{base}/readyz", server)
            async with asyncio.timeout(OUTER):
                silent = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(1100)))
                # Each sends the start of a head and stalls. A connection that never sends a byte can be left
                # half-known: past the listen backlog the kernel may complete the client's handshake (SYN
                # cookies) yet hold no socket for the server to accept until data arrives.
                for _, writer in silent:
                    writer.write(b"POST /hooks/partner HTTP/1.1\r\n")
                async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
                    async with session.post(f"{base}/hooks/partner", json={"id": "during"}) as resp:
                        during = resp.status
                    closed = await asyncio.gather(*(eof(reader) for reader, _ in silent))
                    for _, writer in silent:
                        writer.close()
                    async with session.post(f"{base}/hooks/partner", json={"id": "after"}) as resp:
                        after = resp.status
                    refused = (await metric(session, base, "ticketbridge_connections_refused_total"))[""]
                    accept_errors = (await metric(session, base, "ticketbridge_accept_errors_total"))[""]
        finally:
            stop(server)
    text = log.read_text()
    assert during == 503
    assert after == 202
    # Every silent connection was closed by the server: refused ones after a 503 (which a client that had
    # sent bytes may see as a reset instead), the others at their header deadline, with nothing sent.
    assert all(c == b"" or c.startswith(b"HTTP/1.1 503 ") for c in closed)
    assert 1 <= sum(c.startswith(b"HTTP/1.1 503 ") for c in closed) <= refused - 1  # and the POST's
    assert refused >= 1100 - (1024 - HEADROOM)
    assert accept_errors == 0
    assert "server.max_connections_lowered" in text
    assert "Traceback" not in text and "out of system resource" not in text
