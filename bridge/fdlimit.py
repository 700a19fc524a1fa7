"""File descriptors: the process's limit raised as far as allowed, the connection cap kept under it, and
asyncio's accept errors (EMFILE and its kin) logged once per interval instead of once per attempt."""

from __future__ import annotations

import asyncio
import errno
import resource
from collections.abc import Mapping
from typing import Any

import structlog

from bridge.config import DestinationConfig, ServerConfig
from bridge.connections import ACCEPT_BATCH, REFUSED_LINGERING, ConnectionLimits, ConnectionStats, ThrottledWarning

log = structlog.get_logger("ticketbridge.server")

POOL_CONNECTIONS = 256  # the delivery client's connections, at least
OWN_DESCRIPTORS = 64  # the store's files, listening sockets, sandboxes, attachments and logs
HEADROOM = POOL_CONNECTIONS + OWN_DESCRIPTORS
"""Descriptors the process needs besides client connections, with the smallest delivery pool (`headroom`)."""
ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one when allowed; the (soft, hard) limits in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if resource.RLIM_INFINITY in (hard, soft) or soft >= hard:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("server.nofile_not_raised", soft=soft, hard=hard, error=str(exc))
        return soft, hard
    return hard, hard


def delivery_pool(destinations: Mapping[str, DestinationConfig]) -> int:
    """The delivery client's connections at most: POOL_CONNECTIONS, or every destination's max_in_flight in total
    where that is more (each lane holds at most its own; see app.delivery_context)."""
    return max(POOL_CONNECTIONS, sum(cfg.max_in_flight for cfg in destinations.values()))


def headroom(pool: int) -> int:
    """Descriptors the process needs besides client connections, with a delivery pool of `pool` connections."""
    return pool + OWN_DESCRIPTORS


def connection_limits(server: ServerConfig, nofile: int, pool: int) -> ConnectionLimits:
    """The configured deadlines and cap, with the cap (and the accept batch) lowered, with a warning, so
    that descriptors never run out: besides the open connections and the `headroom` of a delivery pool of
    `pool` connections, sockets accepted but not yet refused and closed take one each, up to about three of
    asyncio's accept batches (one batch per loop turn; a refused socket is closed two turns after its accept)
    and the refusals lingering."""
    wanted, batch = server.max_connections, ACCEPT_BATCH
    if nofile == resource.RLIM_INFINITY or nofile >= needed(wanted, batch, pool):
        cap = wanted
    else:
        spare = max(nofile - headroom(pool) - REFUSED_LINGERING, 16)
        batch = max(8, min(ACCEPT_BATCH, spare // 8))
        cap = max(1, min(wanted, spare - 3 * batch))
        more = "" if pool == POOL_CONNECTIONS else ", or the destinations' max_in_flight"
        log.warning("server.max_connections_lowered", max_connections=wanted, used=cap, accept_batch=batch,
                    nofile_limit=nofile, delivery_pool=pool,
                    fix="raise the process's open-file limit (systemd: LimitNOFILE=65536; docker: --ulimit "
                        f"nofile=65536) to at least {needed(wanted, ACCEPT_BATCH, pool)}, or lower "
                        f"server.max_connections{more}")
    return ConnectionLimits(header_timeout=server.header_timeout_seconds,
                            body_timeout=server.body_timeout_seconds,
                            keepalive_timeout=server.keepalive_timeout_seconds, max_connections=cap,
                            accept_batch=batch)


def needed(max_connections: int, batch: int, pool: int) -> int:
    """The open-file limit that holds `max_connections`, accepts in batches of `batch` and a delivery pool of
    `pool` connections."""
    return max_connections + headroom(pool) + REFUSED_LINGERING + 3 * batch


class AcceptErrorHandler:
    """A loop exception handler: accept errors from running out of descriptors or memory become one
    `server.accept_failed` warning per interval (asyncio would log a traceback for each failed accept,
    hundreds a second); everything else goes to the handler that was there before."""

    def __init__(self, stats: ConnectionStats, interval: float = 10.0, clock: Any = None,
                 previous: Any = None) -> None:
        self.stats = stats
        self.previous = previous
        self.warn = ThrottledWarning("server.accept_failed", interval, **({"clock": clock} if clock else {}))

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message"))
        if isinstance(exc, OSError) and exc.errno in ACCEPT_ERRNOS and "accept" in message:
            self.stats.accept_errors += 1
            self.warn(error=errno.errorcode.get(exc.errno or 0, str(exc.errno)), reason=exc.strerror,
                      open_connections=self.stats.open, accept_errors_total=self.stats.accept_errors)
            return
        if isinstance(exc, ValueError) and "_start_serving" in message:
            # asyncio retries the accept a second after each failed attempt (one retry per attempt); a
            # retry that finds the listener closed, at shutdown, fails on its file descriptor (-1).
            self.warn(error="retry_after_close", reason=str(exc), open_connections=self.stats.open,
                      accept_errors_total=self.stats.accept_errors)
            return
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)


def install_accept_error_handler(loop: asyncio.AbstractEventLoop, stats: ConnectionStats,
                                 interval: float = 10.0) -> AcceptErrorHandler:
    """Make `loop` log accept errors once per `interval` seconds (see AcceptErrorHandler)."""
    handler = AcceptErrorHandler(stats, interval, previous=loop.get_exception_handler())
    loop.set_exception_handler(handler)
    return handler
