"""The CPU time of the longest callback the event loop runs: how the tests measure a stall of the loop."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


class LoopCpu:
    """The CPU time (`time.thread_time`) of the longest callback the event loop runs while `measuring`: how long the
    loop's own work held it without a turn for anyone else, whatever else the machine runs. (A ticker's lateness, in
    wall time, would count the machine's other work too, and the worker threads' long calls into C, which hold the
    GIL: the parser's JSON decode of the body, the encoding of the event's rows.)"""

    def __init__(self) -> None:
        self.longest_ms = 0.0
        self.longest_what = ""
        self.thread = threading.get_ident()

    @contextmanager
    def measuring(self) -> Iterator[LoopCpu]:
        run = asyncio.events.Handle._run
        meter = self

        def timed(handle: asyncio.events.Handle) -> None:
            start = time.thread_time()
            try:
                run(handle)
            finally:
                spent = (time.thread_time() - start) * 1000
                if spent > meter.longest_ms:
                    meter.longest_ms, meter.longest_what = spent, repr(handle)[:300]

        # A full collection of the cyclic garbage collector, which may fall in any callback, is no part of it.
        collecting = gc.isenabled()
        gc.collect()
        gc.disable()
        asyncio.events.Handle._run = timed  # type: ignore[method-assign]
        try:
            yield self
        finally:
            asyncio.events.Handle._run = run  # type: ignore[method-assign]
            if collecting:
                gc.enable()

    async def running(self, call: Coroutine[Any, Any, T]) -> T:
        """What `call` returns, measuring each callback it runs in, its last included: run as a task of its own.
        (Awaited in the measuring block, its work after its last await would run in the callback that runs the
        block's end, which is measured only once that callback returns, after the block has read the meter.)"""
        with self.measuring():
            return await asyncio.create_task(call)


MAX_CALLBACK_CPU_MS = 20.0
"""The most CPU one callback of the loop may take while a large value (a large mail's event or body) is read,
written or decoded: an ordinary callback takes well under a millisecond, a large value handled whole 40-175 ms."""


def measured(what: str, meter: LoopCpu, most_ms: float = MAX_CALLBACK_CPU_MS) -> None:
    """Print the longest callback `meter` saw while `what` ran, and fail unless it took under `most_ms` of CPU."""
    print(f"\n{what}: longest callback on the loop {meter.longest_ms:.1f} ms of CPU ({meter.longest_what})")
    assert meter.longest_ms < most_ms, meter.longest_what
