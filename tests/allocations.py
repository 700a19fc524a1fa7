"""The most memory a call holds at once: how the tests measure what a reader or a decoder keeps, in bytes allocated
rather than time."""

from __future__ import annotations

import tracemalloc
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def peak_of(call: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """What `call()` returns, and the most memory allocated at once while it was made and awaited, in bytes
    (`tracemalloc`, started for it: what was held before it is not counted)."""
    tracemalloc.start()
    try:
        got = await call()
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return got, peak
