"""The event loop's turns while a store decodes or scans a page of stored values on it, one after another.

Each value it decodes there is at most DECODE_AT_ONCE_BYTES (a longer one is read a piece at a time and decoded in
the parser thread): about 1-3 ms of CPU for a large one, 0.5-1 ms to scan for attachments. A page of them (the
unmatched list, a claim, a page of retention's attachment scan) decoded without a turn of the loop between them
held it for their sum: 50 ms for 40 events just under 1 MiB. `Turns` gives the loop a turn once the values taken
since its last one would pass TURN_BYTES: a page of small values, the usual case, costs no turn at all.

A page's rows are best taken from its end and let go one by one: the driver made their values in order, at the top
of the heap, and the allocator gives its top back to the system as it is freed. Freed from the first (or all at once,
after the last), they went back in one call as the last one was: about 4 ms per 100 MiB.
"""

from __future__ import annotations

import asyncio

TURN_BYTES = 1 << 20
"""The most bytes of stored values decoded or scanned on the loop in one of its turns (one value longer than this
alone): a few milliseconds of CPU."""


class Turns:
    """The bytes of stored values a page has decoded or scanned on the loop since the loop's last turn."""

    __slots__ = ("_taken",)

    def __init__(self) -> None:
        self._taken = 0

    def due(self, size: int) -> bool:
        """Whether the loop is to have a turn before `size` more bytes are decoded or scanned on it (they would take
        the bytes since its last turn past TURN_BYTES; never before a page's first value): counted as taken either
        way. A test, not a coroutine, for a page whose every value costs a call (a claim's)."""
        if self._taken and self._taken + size > TURN_BYTES:
            self._taken = size
            return True
        self._taken += size
        return False

    async def take(self, size: int) -> None:
        """Before `size` more bytes are decoded or scanned on the loop: a turn of the loop first when `due`."""
        if self.due(size):
            await asyncio.sleep(0)
