"""A PostgreSQL gate's admit as the process sees it (no database): what it makes of the common admit's answer, and
when a send it granted counts as late for its slot."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from bridge.config import RateLimit
from bridge.store import pg_coordination
from bridge.store.pg_coordination import PgGate
from tests.fixtures.clocks import ManualClock


class Database:
    """Answers the gate's round trips: the common admit (`gate_admit`) with `row`, after `round_trip` seconds of the
    gate's clock (a wait on the gate row's lock, a commit); a slot moved as its send starts (`_reslot`) with no
    wait, noting the slot."""

    def __init__(self, clock: ManualClock, row: tuple[Any, Any], round_trip: float = 0.0) -> None:
        self.clock, self.row, self.round_trip = clock, row, round_trip
        self.moved: list[int | None] = []

    async def __call__(self, op: Callable[..., Any], **kwargs: Any) -> Any:
        if isinstance(op, functools.partial):  # PgGate._reslot
            self.moved.append(op.args[0])
            return 0.0
        self.clock.now += self.round_trip
        return self.row


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """The gate's monotonic clock, which moves only when the test (or its database) moves it."""
    manual = ManualClock(100.0)
    monkeypatch.setattr(pg_coordination, "time", SimpleNamespace(monotonic=manual, time=time.time))
    return manual


RATE = RateLimit(requests=20, per_seconds=1)


async def test_a_full_window_whose_wait_is_unknown_is_asked_again_soon(clock: ManualClock) -> None:
    """A full window answered without a wait (NULL: 0016's function, a slot given back between its two reads) holds
    the lane for a moment, rather than crash it."""
    gate = PgGate(Database(clock, row=([], None)), "lsq", RATE)
    admission = await gate.admit(3)
    assert (admission.granted, admission.held, admission.wait_s) == (0, True, 0.001)
