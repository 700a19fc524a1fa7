"""Host name look-ups in threads of their own: names whose name servers do not answer hold one thread each, never
the event loop's default executor, and leave a healthy name's look-up free."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.delivery.sender import CONNECT_TIMEOUT_S
from bridge.resolver import JOIN_FOR_S, BoundedResolver, Lookups
from tests.conftest import eventually

HANGING = ".hang.test"


class HangingNames:
    """socket.getaddrinfo as the system resolver is when some names' name servers do not answer: a look-up of a
    name ending in .hang.test blocks until `release` is set, then fails (EAI_AGAIN); any other name ending in .test
    is 127.0.0.1; the rest are resolved as usual."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.blocked = 0

    def __call__(self, host: Any, port: Any, family: int = 0, type: int = 0,
                 proto: int = 0, flags: int = 0) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        with self._lock:
            self.calls[name] += 1
        if name.endswith(HANGING):
            with self._lock:
                self.blocked += 1
            try:
                self.release.wait(60)
            finally:
                with self._lock:
                    self.blocked -= 1
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        if name.endswith(".test"):
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", int(port or 0)))]
        return self._real(host, port, family, type, proto, flags)


def hang_names(monkeypatch: pytest.MonkeyPatch) -> Iterator[HangingNames]:
    """socket.getaddrinfo replaced by HangingNames for the test; its hanging look-ups released at the end."""
    fake = HangingNames(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    try:
        yield fake
    finally:
        fake.release.set()  # the blocked threads end, and the loop's executors can be shut down


@pytest.fixture
def hanging_names(monkeypatch: pytest.MonkeyPatch) -> Iterator[HangingNames]:
    yield from hang_names(monkeypatch)


@pytest.fixture
async def small_default_executor() -> ThreadPoolExecutor:
    """The event loop's default executor with 2 threads (fewer than the names that hang in the tests)."""
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="default")
    asyncio.get_running_loop().set_default_executor(pool)
    return pool


async def test_hanging_names_leave_the_default_executor_and_a_healthy_name_free(
    hanging_names: HangingNames, small_default_executor: ThreadPoolExecutor,
) -> None:
    """Five names hanging, each looked up three times (more look-ups than the default executor's and the look-ups'
    own threads): each name holds one thread; a healthy name resolves at once, and work on the default executor
    runs."""
    resolver = BoundedResolver(Lookups(8, "test-dns"))
    names = [f"v{i}{HANGING}" for i in range(5)]
    waiting = [asyncio.ensure_future(resolver.resolve(name, 443, socket.AF_UNSPEC)) for name in names * 3]
    await eventually(lambda: hanging_names.blocked == len(names))
    [found] = await asyncio.wait_for(resolver.resolve("vendor.test", 443, socket.AF_UNSPEC), 5)
    assert (found["hostname"], found["host"], found["port"]) == ("vendor.test", "127.0.0.1", 443)
    assert await asyncio.wait_for(asyncio.to_thread(lambda: "ran"), 5) == "ran"
    assert {name: hanging_names.calls[name] for name in names} == dict.fromkeys(names, 1)
    pool = [t for t in threading.enumerate() if t.name.startswith("test-dns_")]
    assert len(pool) == len(names) + 1 and all(t.daemon for t in pool)  # the hanging names' and the healthy one's
    hanging_names.release.set()
    failed = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(exc, socket.gaierror) for exc in failed)


class CountedLookups(Lookups):
    """Lookups counting the look-ups asked of it."""

    asked = 0

    def getaddrinfo(self, host: str, port: int, family: int, flags: int) -> Future[list[tuple[Any, ...]]]:
        self.asked += 1
        return super().getaddrinfo(host, port, family, flags)


async def test_a_lookup_given_up_is_joined_by_the_next(hanging_names: HangingNames) -> None:
    """A send that gave up waiting (its timeout) leaves its look-up running; the next send to that name waits for
    the same look-up, not another thread; once it ends, a later look-up is made afresh."""
    lookups = CountedLookups(2, "test-dns")
    resolver = BoundedResolver(lookups)
    name = "slow" + HANGING
    first = asyncio.ensure_future(resolver.resolve(name, 80))
    await eventually(lambda: hanging_names.blocked == 1)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert lookups.in_flight() == 1
    second = asyncio.ensure_future(resolver.resolve(name, 80))
    await eventually(lambda: lookups.asked == 2)  # asked while the first still runs
    hanging_names.release.set()
    with pytest.raises(socket.gaierror):
        await second
    assert hanging_names.calls[name] == 1
    assert lookups.in_flight() == 0
    with pytest.raises(socket.gaierror):
        await resolver.resolve(name, 80)
    assert hanging_names.calls[name] == 2


async def test_a_lookup_that_never_returns_is_joined_only_as_long_as_a_connect_waits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A getaddrinfo that never returns (an NSS module stuck) is joined by the next look-ups of its name only while
    it is younger than a send waits to connect; after that a fresh one is started, which answers, and the stuck one
    is left to its thread. The clock is the test's."""
    stuck, calls = threading.Event(), []

    def first_hangs(host: Any, port: Any, *args: Any) -> Any:
        calls.append(host)
        if len(calls) == 1:
            stuck.wait(60)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", int(port)))]

    monkeypatch.setattr(socket, "getaddrinfo", first_hangs)
    now = [100.0]
    lookups = Lookups(4, "test-dns", clock=lambda: now[0])
    key = ("vendor.test", 443, socket.AF_INET, socket.AI_ADDRCONFIG)  # as BoundedResolver asks by default
    try:
        first = lookups.getaddrinfo(*key)
        await eventually(lambda: len(calls) == 1)
        now[0] += JOIN_FOR_S - 0.5
        assert lookups.getaddrinfo(*key) is first  # still young: joined
        now[0] += 1.0
        fresh = lookups.getaddrinfo(*key)
        assert fresh is not first
        assert (await asyncio.wait_for(asyncio.wrap_future(fresh), 5))[0][4] == ("127.0.0.1", 443)
        [found] = await asyncio.wait_for(BoundedResolver(lookups).resolve("vendor.test", 443), 5)
        assert found["host"] == "127.0.0.1" and not first.done()  # the stuck one left to its thread
    finally:
        stuck.set()
    await asyncio.wait_for(asyncio.wrap_future(first), 5)
    assert JOIN_FOR_S == CONNECT_TIMEOUT_S


async def test_real_names_resolve_as_aiohttp_wants_them() -> None:
    """The system resolver's answer, as aiohttp's ThreadedResolver gives it: numeric hosts, the port asked for."""
    found = await BoundedResolver().resolve("localhost", 8080, socket.AF_INET)
    assert found
    assert all(r["hostname"] == "localhost" and r["port"] == 8080 and r["family"] == socket.AF_INET for r in found)
    assert "127.0.0.1" in {r["host"] for r in found}
    assert all(r["flags"] == socket.AI_NUMERICHOST | socket.AI_NUMERICSERV for r in found)


async def test_a_session_sends_through_it(hanging_names: HangingNames, aiohttp_server: Any) -> None:
    """aiohttp connects to the address it gives."""
    app = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app.router.add_get("/", hello)
    server = await aiohttp_server(app)
    connector = aiohttp.TCPConnector(resolver=BoundedResolver())
    async with aiohttp.ClientSession(connector=connector) as session, \
            session.get(f"http://vendor.test:{server.port}/") as resp:
        assert await resp.text() == "hello"
    assert hanging_names.calls["vendor.test"] == 1


def test_a_process_exits_while_a_lookup_hangs() -> None:
    """The look-ups' threads are not joined at exit: a process stopping while a name's look-up hangs ends at once,
    not when the system resolver gives up."""
    script = textwrap.dedent("""
        import asyncio, socket, threading
        from bridge.resolver import LOOKUPS, BoundedResolver
        started = threading.Event()
        def hang(*args, **kwargs):
            started.set()
            threading.Event().wait()
        socket.getaddrinfo = hang
        async def main():
            lookup = asyncio.ensure_future(BoundedResolver().resolve("v1.hang.test", 443))
            await asyncio.to_thread(started.wait, 10)
            lookup.cancel()
        asyncio.run(main())
        print("stopping")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])}, check=False)
    assert (done.returncode, done.stdout.strip()) == (0, "stopping"), done.stderr
