"""The event loop `serve` runs on (`server.event_loop`): uvloop, where it is installed, or asyncio's own.

uvloop (libuv under asyncio's interface) reads, writes and schedules callbacks in C: on a small intake request
the loop and the socket transports are a large share of the cost, and this is where it goes down. Everything
the server does is plain asyncio, so it runs the same on either loop; asyncio's stays the fallback when the
`fast` extra is not installed, and the choice for platforms uvloop does not support.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")
LoopName = Literal["asyncio", "uvloop"]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class LoopUnavailable(Exception):
    """`server.event_loop: uvloop` where uvloop is not installed."""


def choose(setting: str) -> tuple[LoopName, LoopFactory | None]:
    """The loop `setting` (`auto`, `asyncio` or `uvloop`) names, and its factory (None: asyncio's default)."""
    if setting == "asyncio":
        return "asyncio", None
    try:
        import uvloop  # noqa: PLC0415 - optional: the `fast` extra
    except ImportError:
        if setting == "uvloop":
            raise LoopUnavailable(
                "server.event_loop is uvloop, but uvloop is not installed: install the `fast` extra "
                "(pip install 'ticketbridge[fast]'), or set server.event_loop to auto or asyncio") from None
        return "asyncio", None
    return "uvloop", uvloop.new_event_loop


def run(main: Callable[[], Coroutine[Any, Any, T]], setting: str) -> T:
    """Run the coroutine `main()` to completion on the loop `setting` names, as asyncio.run does. (A function,
    not a coroutine: when the loop cannot be had, no coroutine is made to be left unawaited.) Which loop that
    is, `main` tells with `running_loop_name()` (the server's start log: `event_loop`, beside the setting)."""
    factory = choose(setting)[1]
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def running_loop_name() -> LoopName:
    """The name of the loop this coroutine runs on, for the start-up log line."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
