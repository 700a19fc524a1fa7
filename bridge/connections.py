"""Client connections: a read deadline for each phase of a request, and a cap on how many are open.

A connection is always in one of four phases, and one timer per connection holds its deadline:

- header: a fresh connection, or a kept-alive one whose next request has begun, must deliver the whole
  request head within `header_timeout` (of the accept, or of the request's first byte);
- body: once the head is in, the body must arrive within `body_timeout`; a handler reading it then gets
  `BodyTimeout` (a 408) and the connection is closed after the answer;
- idle: after an answer, a kept-alive connection may wait `keepalive_timeout` for its next request;
- busy: a request is being handled; no read deadline (the handler's own work is not timed here).

The timer is re-armed lazily, as aiohttp does for its keep-alive: moving to a later deadline only
writes a number, so a busy keep-alive connection costs one timer callback per deadline, not one per
request. Past `max_connections`, a new connection is answered a fixed 503 without being parsed.

A request body is never inflated here: aiohttp's parser would unpack `Content-Encoding: gzip`, `deflate`, `br` or
`zstd` on the event loop as the bytes arrive, before any route, limit or handler has seen the request (194 KB of
gzip posted to any path, even one answered 404, held the loop over a second inflating to 200 MB). The body is
given to the handler as it was sent; `content_encoding` names the encoding a request declares, which intake and
the admin API refuse with a 415 (no inbound provider compresses its webhooks).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import SINGLETON_HEADERS
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from bridge.server_name import SERVER

log = structlog.get_logger("ticketbridge.server")

_IDLE, _HEADER, _BODY, _BUSY = range(4)
_REASONS = {_IDLE: "idle", _HEADER: "header", _BODY: "body"}

REFUSAL_BODY = b"too many open connections; try again shortly\n"
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Length: %d\r\nRetry-After: 5\r\nConnection: close\r\nServer: %s\r\n\r\n%s"
           % (len(REFUSAL_BODY), SERVER.encode(), REFUSAL_BODY))
# A refused client gets this long to read the answer and close first (a close with its request still
# unread would reset the connection and could lose the 503); at most REFUSED_LINGERING do so at once.
REFUSED_LINGER_SECONDS = 1.0
REFUSED_LINGERING = 64
ACCEPT_BATCH = 1024
"""How many connections asyncio accepts in one loop turn (it is also the listen backlog)."""


# Text the parser quotes from the request (`b'POST /hooks/x?token=…'`, `'Bearer …'`), to its end when cut.
_QUOTED = re.compile(r"""b?'(?:[^'\\]|\\.)*(?:'|$)|b?"(?:[^"\\]|\\.)*(?:"|$)""")
_NAMES = frozenset(SINGLETON_HEADERS | {"host"})


def _unquoted(found: re.Match[str]) -> str:
    text = found.group()
    # A header name the parser checks itself ("Duplicate 'Host' header found."), never a value.
    return text if text[1:-1].lower() in _NAMES and text[0] == "'" else "<request text>"


def refusal_reason(message: str) -> str:
    """The parser's reason for refusing a request, fit to log: its first line (the lines after it show the
    refused bytes), with any request text it quotes left out: a query string or a header holds tokens."""
    first = message.split("\n", 1)[0].strip()
    return _QUOTED.sub(_unquoted, first)[:200].rstrip(": ") or "malformed request"


IDENTITY = frozenset({"", "identity"})


def content_encoding(request: BaseRequest) -> str | None:
    """The Content-Encoding a request's body declares, as sent (all its headers' values, joined), when it is
    anything but `identity` (or empty); None for a body sent as it is. The server hands such a body over still
    encoded (see the module docstring), so whoever reads it refuses it rather than read the encoded bytes."""
    values = request.headers.getall("Content-Encoding", ())
    if all(coding.strip().lower() in IDENTITY for value in values for coding in value.split(",")):
        return None
    return ", ".join(values)


@dataclass(frozen=True)
class ConnectionLimits:
    """The read deadlines (seconds) and the cap on open connections, from `server:` in bridge.yaml."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 15.0
    max_connections: int = 1000
    accept_batch: int = ACCEPT_BATCH


@dataclass
class ConnectionStats:
    """What /metrics shows about client connections."""

    open: int = 0
    refused: int = 0
    lingering: int = 0
    timed_out: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("idle", "header", "body"), 0))
    accept_errors: int = 0


class BodyTimeout(web.HTTPRequestTimeout):
    """The request's body did not arrive within server.body_timeout_seconds of its head."""


@dataclass
class ThrottledWarning:
    """One warning per `interval` seconds for a repeated condition, with how many repeats were not logged."""

    event: str
    interval: float = 10.0
    clock: Any = time.monotonic
    _last: float | None = None
    _suppressed: int = 0

    def __call__(self, **fields: Any) -> bool:
        """Log now, or count the repeat; True when a line was written."""
        now = self.clock()
        if self._last is not None and now - self._last < self.interval:
            self._suppressed += 1
            return False
        log.warning(self.event, suppressed=self._suppressed, interval_seconds=self.interval, **fields)
        self._last, self._suppressed = now, 0
        return True


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection protocol with a read deadline for each phase (see the module docstring).

    It reads RequestHandler's own state (`_messages`, `_request_count`, `_waiter`, `_request_in_progress`,
    `_lingering_time`) as aiohttp 3.14 keeps it; tests/unit/bridge/test_connections.py pins each phase's
    behaviour, so an aiohttp upgrade that changes them fails there first.
    """

    __slots__ = ("_bad_requests", "_body", "_counted", "_deadline", "_limits", "_phase", "_quiet", "_stats", "_timer",
                 "_timer_at")

    def __init__(self, manager: web.Server, *, limits: ConnectionLimits, stats: ConnectionStats,
                 loop: asyncio.AbstractEventLoop, bad_requests: ThrottledWarning, **kwargs: Any) -> None:
        # aiohttp's own keep-alive timer closes a connection whose next head is not complete in time,
        # counted from the previous answer; ours counts the head from its first byte, so aiohttp's
        # must never fire before ours would.
        kwargs["keepalive_timeout"] = limits.keepalive_timeout + limits.header_timeout + 1.0
        kwargs["auto_decompress"] = False  # see the module docstring: a body is never inflated on the loop
        super().__init__(manager, loop=loop, **kwargs)
        self._limits = limits
        self._stats = stats
        self._phase = _HEADER
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the timer fires: its `when()`, kept rather than asked for on each arming
        self._body: Any = None
        self._counted = True  # GuardedServer counted it open when it made it
        self._bad_requests = bad_requests  # the server's, shared by its connections: one warning per interval in all
        self._quiet = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm(_HEADER, self._limits.header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._counted = False
            self._stats.open -= 1
        self._body = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == _IDLE:
            self._arm(_HEADER, self._limits.header_timeout)
        parsed = self._request_count
        # Twice a request (its bytes; aiohttp's own b"" as its body is read): called by name, no super() made.
        RequestHandler.data_received(self, data)
        if self._request_count != parsed and self._messages:
            # New heads are in (pipelined ones too, behind a request still being handled): the last
            # one's body, if it is still to come, has its own deadline.
            payload = self._messages[-1][1]
            if not payload.is_eof():
                self._body = payload
                self._arm(_BODY, self._limits.body_timeout)
            elif self._phase != _BUSY:
                self._body = None
                self._phase = _BUSY

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> StreamResponse:
        """aiohttp answers a request its parser refuses (no Host header, two, a malformed header line) with a
        400, and logs it at error level with a traceback: any client could fill the error log. Such a request
        is the client's fault, so it is one `server.bad_request` warning per interval, with aiohttp's reason
        and no traceback; a 5xx (a handler's own failure) is logged by aiohttp as before."""
        if status >= 500 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        peer = self.peername
        self._bad_requests(status=status, error=refusal_reason(str(exc.message)),
                           remote=peer[0] if isinstance(peer, tuple) else str(peer))
        self._quiet = True
        try:
            return super().handle_error(request, status, exc, message)
        finally:
            self._quiet = False

    def log_exception(self, *args: Any, **kw: Any) -> None:
        if not self._quiet:
            super().log_exception(*args, **kw)

    def log_access(self, request: BaseRequest, response: StreamResponse, time: float | None) -> None:
        # Called once each answer is written: the connection now waits for its next request, unless a
        # pipelined request's body is still due (its deadline stands).
        RequestHandler.log_access(self, request, response, time)
        body = self._body
        if body is not None and not body.is_eof():
            return
        self._body = None
        self._arm(_IDLE, self._limits.keepalive_timeout)

    def _arm(self, phase: int, seconds: float) -> None:
        self._phase = phase
        loop = self._loop
        deadline = loop.time() + seconds
        self._deadline = deadline
        timer = self._timer
        if timer is None:
            self._timer = loop.call_at(deadline, self._expire)
            self._timer_at = deadline
        elif self._timer_at > deadline:
            timer.cancel()
            self._timer = loop.call_at(deadline, self._expire)
            self._timer_at = deadline

    def _expire(self) -> None:
        self._timer = None
        if self.transport is None or self._phase == _BUSY:
            return
        loop = self._loop
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._expire)
            self._timer_at = self._deadline
            return
        phase = self._phase
        if phase == _BODY:
            self._body_expired()
            return
        waiter = self._waiter
        if waiter is None or waiter.done():
            # A request (pipelined behind the last answer) is being handled: not idle, not reading a head.
            self._phase = _BUSY
            return
        self._timed_out(phase)
        self.force_close()

    def _body_expired(self) -> None:
        body = self._body
        self._body = None
        if body is None or body.is_eof():
            self._phase = _BUSY
            return
        self._timed_out(_BODY)
        # No lingering read of the rest after the answer: the connection closes once the 408 is written.
        self._lingering_time = 0.0
        if self._request_in_progress:
            body.set_exception(BodyTimeout(
                text=f"the request body did not arrive within {self._limits.body_timeout:g} s of its head"))
        else:
            self.force_close()

    def _timed_out(self, phase: int) -> None:
        reason = _REASONS[phase]
        self._stats.timed_out[reason] += 1
        peer = self.peername
        log.debug("connection.timed_out", reason=reason, remote=peer[0] if isinstance(peer, tuple) else str(peer))


class RefusedConnection(asyncio.Protocol):
    """A connection past the cap: answered a fixed 503 at once, never parsed, closed soon after."""

    def __init__(self, stats: ConnectionStats, warn: ThrottledWarning, limit: int) -> None:
        self._stats = stats
        self._warn = warn
        self._limit = limit
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._lingering = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._stats.refused += 1
        self._warn(max_connections=self._limit, refused_total=self._stats.refused)
        transport.write(REFUSAL)
        if self._stats.lingering >= REFUSED_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        self._transport = transport
        self._lingering = True
        self._stats.lingering += 1
        transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSED_LINGER_SECONDS, transport.close)

    def data_received(self, data: bytes) -> None:
        """The request is read and dropped, so that closing does not reset the connection."""

    def eof_received(self) -> bool:
        return False  # the client has read the answer and closed its side: close ours

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._lingering:
            self._stats.lingering -= 1
            self._lingering = False
        self._transport = None


class GuardedServer(web.Server):
    """aiohttp's low-level server, making guarded protocols, or a refusal past `max_connections`."""

    def __init__(self, *args: Any, limits: ConnectionLimits, stats: ConnectionStats, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.stats = stats
        self._refusals = ThrottledWarning("server.connections_full")
        self._bad_requests = ThrottledWarning("server.bad_request")

    def __call__(self) -> Any:
        stats = self.stats
        if stats.open >= self.limits.max_connections:
            return RefusedConnection(stats, self._refusals, self.limits.max_connections)
        # Counted here, when asyncio accepts, not in connection_made: a burst of accepts in one loop
        # turn makes every protocol before any of them is connected.
        handler = GuardedRequestHandler(self, limits=self.limits, stats=stats, loop=self._loop,
                                        bad_requests=self._bad_requests, **self._kwargs)
        stats.open += 1
        return handler


class GuardedAppRunner(web.AppRunner):
    """`web.AppRunner` serving through `GuardedServer`."""

    __slots__ = ("_limits", "_stats")

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, stats: ConnectionStats,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits
        self._stats = stats

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        # The application's handler, request factory and protocol options, as aiohttp assembled them.
        return GuardedServer(plain.request_handler, request_factory=plain.request_factory,
                             handler_cancellation=plain.handler_cancellation, limits=self._limits,
                             stats=self._stats, **plain._kwargs)

