"""The reply stripper's cost grows linearly with the body, whatever the body holds.

Each hostile body is stripped at n and 8n bytes in one run; linear work costs ~8x, quadratic ~64x. The
bound is 16x, generous against a busy machine: the process's CPU time is measured (time other processes
take from it does not count), each size three times with the fastest kept, and each timing repeats the
call until the small body has taken a few milliseconds, so timer granularity and one-off pauses do not
decide the ratio."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from bridge.replies import strip_reply

# Both sizes stay below the allocator's mmap threshold (128 KiB), where a fresh mapping's page faults
# would add a cost per byte that is the allocator's, not the stripper's.
N = 4 * 1024
BOUND = 16.0


def fill(unit: str, size: int) -> str:
    return unit * (size // len(unit) + 1)


HOSTILE: dict[str, Callable[[int], str]] = {
    "attribution opener then repeated schrieb": lambda size: "Am " + fill("schrieb ", size),
    "attribution opener then repeated wrote": lambda size: "On " + fill("wrote ", size) + ":",
    "repeated schrieb lines ending in a colon": lambda size: fill("Am 3. Juni schrieb schrieb schrieb\n", size),
    "repeated quote lines": lambda size: fill("> \n", size),
    "repeated On x wrote lines": lambda size: fill("On x wrote:\n", size),
    "repeated On words": lambda size: fill("On ", size),
    "one huge line": lambda size: "a" * size,
    "alternating quote and text lines": lambda size: fill("> q\na\n", size),
    "lone quote lines inside paragraphs": lambda size: fill("x\n> y\n", size),
    "quote lines between blank runs": lambda size: fill("x\n> y\n\n\n\n\n", size),
    "short lines ending in a colon": lambda size: fill("a:\n", size),
    "wrapped attribution starts": lambda size: fill("On 3 Jun 2024 at 10:15 x\ny\nz:\n", size),
    "header keys without a block": lambda size: fill("From: a\nnote\n", size),
    "signature delimiters": lambda size: fill("--\n", size),
    "greater-than prose": lambda size: fill(">5\n", size),
    "undated attributions above blank runs": lambda size: fill("Asha wrote:\n\n\n\n\n\n", size),
    "attributions with addresses, no quote": lambda size: fill("On 3 Jun 2024 Asha <a@b.c> wrote:\nx\n", size),
    "plain lines with a marker line among every few": lambda size: fill("ok\nok\nok\nok\nok\n-- \n", size),
    "plain lines with a colon line among every few": lambda size: fill("ok\nok\nok\nok\nok\na:\n", size),
}


def fastest(run: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(repeat):
            run()
        best = min(best, time.process_time() - start)
    return best


@contextmanager
def collector_off() -> Iterator[None]:
    """The cyclic collector's full passes cost in proportion to the whole test process's heap, not to the
    body: with it on, the larger body crosses more of its thresholds and the ratio would measure pytest."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("name", HOSTILE)
def test_stripping_a_hostile_body_costs_time_linear_in_its_length(name: str) -> None:
    """Stripping a hostile body 8x longer costs at most ~16x the time (quadratic work would cost ~64x)."""
    small, large = HOSTILE[name](N), HOSTILE[name](8 * N)
    with collector_off():
        once = fastest(lambda: strip_reply(small), 1)
        repeat = max(1, int(0.005 / max(once, 1e-7)))
        ratio = fastest(lambda: strip_reply(large), repeat) / fastest(lambda: strip_reply(small), repeat)
    assert ratio <= BOUND, f"{name}: {8 * N} bytes cost {ratio:.1f}x the time of {N} bytes"
