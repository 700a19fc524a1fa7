"""Host name look-ups for the HTTP clients (deliveries, the inbound providers' fetches), in threads of their own.

aiohttp's default resolver runs getaddrinfo() on the event loop's default executor, a handful of threads
(min(32, cpus + 4)). A vendor's name servers that do not answer hold a thread for as long as the system resolver
waits (seconds, tens of them), and every send to that vendor, each retry, starts another: a few such names took
every thread, and whatever else queued there (a store's reads, intake's file work) waited behind them. Here a
look-up runs in LOOKUPS (LOOKUP_THREADS threads, used by nothing else), and look-ups of one name share one thread:
a second look-up of a name still being resolved waits for the first one's answer instead of taking another
thread, whoever asked, whether the first asker is still waiting or has given up (its send timed out), as long as
that look-up is younger than JOIN_FOR_S: one older than a send waits to connect is taken for stuck (a getaddrinfo
that never returns), and the next asker starts a fresh one, which it and later askers join; the stuck one keeps its
thread until it ends. A hanging name thus holds one thread however many sends wait on it, one more each JOIN_FOR_S
while it hangs for longer (the system resolver gives up after some seconds), and it takes LOOKUP_THREADS look-ups
hanging at once to make the look-up of a healthy name wait for a thread. The threads are daemon threads
(DaemonPool): a stop does not wait for a look-up that hangs.

Not aiodns (c-ares): it is another native dependency, and it reads /etc/hosts and resolv.conf only, not what the
system's resolver is configured to use (nsswitch: mDNS, LDAP, a container's or a cluster's own rules), so a host
the operator can reach with curl could fail here.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, TypeVar

from aiohttp.abc import AbstractResolver, ResolveResult

LOOKUP_THREADS = 32
"""How many different host names may be resolving at once; each more waits for a thread."""
JOIN_FOR_S = 10.0
"""How long a look-up under way is joined by the next look-up of its name: as long as a send waits to connect
(delivery/sender.py's CONNECT_TIMEOUT_S), the look-up included. One still running after that is taken for stuck,
and a fresh one is started: otherwise a getaddrinfo that never returned would hold its name, process-wide, for
good."""

T = TypeVar("T")
_Key = tuple[str, int, int, int]
_Infos = list[tuple[Any, ...]]


class DaemonPool(Executor):
    """Up to `threads` daemon threads, started as work comes and kept. A ThreadPoolExecutor's threads are joined
    when the interpreter exits, after what they run: a stop would wait until every hanging look-up gave up (20 s
    and more). A look-up holds nothing to clean up, so these are left behind at exit."""

    def __init__(self, threads: int, name: str) -> None:
        self._max = threads
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._started = 0

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((future, functools.partial(fn, **kwargs) if kwargs else fn, args))
        if self._idle.acquire(blocking=False):
            return future  # a thread waits for work: it takes this
        with self._lock:
            if self._started < self._max:
                self._started += 1
                threading.Thread(target=self._work, name=f"{self._name}_{self._started}", daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            future, fn, args = self._queue.get()
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to whoever awaits the future
                    future.set_exception(exc)
            del future, fn, args
            self._idle.release()


class Lookups:
    """getaddrinfo() calls in a pool of their own, one at a time per name (host, port, family, flags)."""

    def __init__(self, threads: int, name: str, join_for_s: float = JOIN_FOR_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pool = DaemonPool(threads, name)
        self._lock = threading.Lock()
        self._running: dict[_Key, tuple[Future[_Infos], float]] = {}
        self._join_for_s = join_for_s
        self._clock = clock

    def getaddrinfo(self, host: str, port: int, family: int, flags: int) -> Future[_Infos]:
        """The look-up of `host` under way, joined while it is younger than `join_for_s`, or one begun (which
        takes the place of one older: that one is left to end by itself)."""
        key = (host, port, family, flags)
        now = self._clock()
        with self._lock:
            running = self._running.get(key)
            if running is not None and now - running[1] < self._join_for_s:
                return running[0]
            future = self._pool.submit(socket.getaddrinfo, host, port, family, socket.SOCK_STREAM, 0, flags)
            self._running[key] = (future, now)
        future.add_done_callback(lambda done: self._forget(key, done))
        return future

    def getnameinfo(self, address: tuple[Any, ...], flags: int) -> Future[tuple[str, str]]:
        return self._pool.submit(socket.getnameinfo, address, flags)

    def _forget(self, key: _Key, done: Future[_Infos]) -> None:
        with self._lock:
            running = self._running.get(key)
            if running is not None and running[0] is done:
                del self._running[key]

    def in_flight(self) -> int:
        """How many names are being resolved (or wait for a thread) now."""
        with self._lock:
            return len(self._running)


LOOKUPS = Lookups(LOOKUP_THREADS, "ticketbridge-dns")

_NAME_FLAGS = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
_NUMERIC_FLAGS = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
_ADDRCONFIG = socket.AI_ADDRCONFIG


async def _wait(future: Future[Any]) -> Any:
    """`future`'s result; a caller cancelled (its send timed out) leaves the look-up to whoever else waits on it."""
    waited = asyncio.wrap_future(future)
    waited.add_done_callback(_retrieved)
    return await asyncio.shield(waited)


def _retrieved(waited: asyncio.Future[Any]) -> None:
    """A look-up's failure read, so that one whose caller gave up is not reported as never retrieved."""
    if not waited.cancelled():
        waited.exception()


class BoundedResolver(AbstractResolver):
    """aiohttp's ThreadedResolver, its getaddrinfo() calls made in `lookups` (LOOKUPS) instead of the event loop's
    default executor."""

    def __init__(self, lookups: Lookups | None = None) -> None:
        self._lookups = LOOKUPS if lookups is None else lookups

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        infos: _Infos = await _wait(self._lookups.getaddrinfo(host, port, family, _ADDRCONFIG))
        hosts: list[ResolveResult] = []
        for found_family, _, proto, _, address in infos:
            if found_family == socket.AF_INET6:
                if len(address) < 3:
                    continue  # IPv6 is not supported by this Python build, or not enabled on the host
                if address[3]:  # a link-local address: its scope id named
                    resolved, _port = await _wait(self._lookups.getnameinfo(address, _NAME_FLAGS))
                    port_found = int(_port)
                else:
                    resolved, port_found = address[0], address[1]
            else:
                assert found_family == socket.AF_INET
                resolved, port_found = address[0], address[1]
            hosts.append(ResolveResult(hostname=host, host=resolved, port=port_found, family=found_family,
                                       proto=proto, flags=_NUMERIC_FLAGS))
        return hosts

    async def close(self) -> None:
        """Nothing of its own to close: LOOKUPS is shared by every client, for the life of the process."""
