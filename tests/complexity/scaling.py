"""Measure how a parser's cost grows: the CPU time of n and of 8n hostile inputs, in one run, each the best of
several repetitions. A linear (or n log n) parser costs about 8x more on the larger input; a quadratic one
about 64x. The bound sits between, wide enough for the noise of a shared machine.

The time is the process's CPU time, not the wall clock's: on a machine busy with other work, the time the
process waits for a core is noise, and it falls on the longer run more often. The garbage collector is off
while a run is timed: its full collections walk the whole test process's heap, so a larger input, which
allocates more, pays for collections whose cost is the test runner's, not the parser's (the reading of a
vendor's large answer runs with it paused too)."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable
from typing import Any

from bridge.errors import Rejected

GROWTH = 8
BOUND = 16.0
REPEAT = 5
ATTEMPTS = 3


def cost(run: Callable[[Any], object], arg: Any, clock: Callable[[], float] = time.process_time) -> float:
    """The best of REPEAT timings of `run(arg)` on `clock`, the collector off for all of them; an input refused with
    Rejected counts as parsed. No collection is asked for before them: one walks the whole test process's heap (in
    the whole suite, 100 ms and more each), and none can fall in a timing with the collector off."""
    best = float("inf")
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _ in range(REPEAT):
            start = clock()
            with contextlib.suppress(Rejected):
                run(arg)
            best = min(best, clock() - start)
    finally:
        if collecting:
            gc.enable()
    return best


def growth(run: Callable[[Any], object], make: Callable[[int], Any], n: int) -> float:
    """How many times more `run` costs on `make(GROWTH * n)` than on `make(n)`."""
    small, large = make(n), make(GROWTH * n)  # built before anything is timed
    return cost(run, large) / max(cost(run, small), 1e-6)


def assert_linear(run: Callable[[Any], object], make: Callable[[int], Any], n: int) -> None:
    """`run` on 8n inputs from `make` costs at most BOUND times its cost on n. Noise from other work on the
    machine only ever inflates a ratio, so it is measured up to ATTEMPTS times and the lowest one counts."""
    ratios = []
    for _ in range(ATTEMPTS):
        ratios.append(growth(run, make, n))
        if ratios[-1] <= BOUND:
            return
    raise AssertionError(f"{GROWTH}x the input cost {min(ratios):.1f}x the time (at most {BOUND:g}x); "
                         f"ratios measured: {', '.join(f'{r:.1f}' for r in ratios)}")
