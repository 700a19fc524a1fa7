"""A PostgreSQL gate's admit as the process sees it (no database): what it makes of the common admit's answer, and
when a send it granted counts as late for its slot."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from bridge.config import RateLimit
from bridge.delivery.ratelimit import slot_of_request
from bridge.store import pg_coordination
from bridge.store.pg_coordination import PgGate
from tests.conftest import eventually
from tests.fixtures.clocks import ManualClock


class Database:
    """Answers the gate's round trips: the common admit (`gate_admit`) with `row`, after `round_trip` seconds of the
    gate's clock (a wait on the gate row's lock, a commit); a slot moved as its send starts (`_reslot`) with no
    wait, noting the slot (a new one numbered 99); a slot moved as its request is written (`_move`), noting it."""

    def __init__(self, clock: ManualClock, row: tuple[Any, Any], round_trip: float = 0.0) -> None:
        self.clock, self.row, self.round_trip = clock, row, round_trip
        self.moved: list[int | None] = []
        self.written: list[int] = []

    async def __call__(self, op: Callable[..., Any], **kwargs: Any) -> Any:
        if isinstance(op, functools.partial) and op.func.__name__ == "_moved":
            self.written.append(op.args[0])
            return None
        if isinstance(op, functools.partial):  # PgGate._reslot
            self.moved.append(op.args[0])
            self.clock.now += self.round_trip
            await asyncio.sleep(0)  # a round trip lets the loop run
            return 0.0, 99 if op.args[0] is None else op.args[0]
        self.clock.now += self.round_trip
        return self.row


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualClock:
    """The gate's monotonic clock, which moves only when the test (or its database) moves it."""
    manual = ManualClock(100.0)
    monkeypatch.setattr(pg_coordination, "time", SimpleNamespace(monotonic=manual, time=time.time))
    return manual


RATE = RateLimit(requests=20, per_seconds=1)  # a window of 1.2 s: a send more than 0.1 s late is moved


async def test_a_send_whose_admit_waited_on_the_database_is_moved_to_a_slot_taken_now(clock: ManualClock) -> None:
    """The slot `gate_admit` grants is dated when it runs, which may be anywhere in its round trip (after a wait on
    the gate row's lock, before a slow commit): the admission dates its asking from before the call, so that a send
    whose admit took longer than the gate's punctuality counts as late when it starts, and is moved to a slot taken
    then, rather than reach the vendor up to a round trip after the slot it was counted in."""
    database = Database(clock, row=([7], 0), round_trip=0.3)
    gate = PgGate(database, "lsq", RATE)
    admission = await gate.admit(1)
    assert (admission.granted, admission.slots, admission.asked_at) == (1, [7], 100.0)
    await gate.start(admission, 0)
    assert database.moved == [7]


async def test_a_late_send_moved_once_starts_however_long_the_move_took(clock: ManualClock) -> None:
    """The move of a late send's slot is dated by the database when it is made: a move whose round trip itself takes
    longer than the punctuality (a database some milliseconds away, a slow commit) ends the wait, rather than count
    the send late again and move it for ever."""
    database = Database(clock, row=([7], 0), round_trip=0.3)
    gate = PgGate(database, "lsq", RATE)
    admission = await gate.admit(1)
    await asyncio.wait_for(gate.start(admission, 0), 5.0)
    assert database.moved == [7]


async def test_a_send_that_starts_in_time_keeps_its_slot(clock: ManualClock) -> None:
    """An admit answered, and its send started, within the punctuality keeps the slot granted: no round trip more."""
    database = Database(clock, row=([7, 8], 0), round_trip=0.04)
    gate = PgGate(database, "lsq", RATE)
    admission = await gate.admit(2)
    clock.now += 0.05
    await gate.start(admission, 1)
    assert database.moved == []


async def test_a_full_window_whose_wait_is_unknown_is_asked_again_soon(clock: ManualClock) -> None:
    """A full window answered without a wait (NULL: 0016's function, a slot given back between its two reads) holds
    the lane for a moment, rather than crash it."""
    gate = PgGate(Database(clock, row=([], None)), "lsq", RATE)
    admission = await gate.admit(3)
    assert (admission.granted, admission.held, admission.wait_s) == (0, True, 0.001)


async def test_a_request_written_late_for_its_slot_moves_it_and_one_written_in_time_does_not(
        clock: ManualClock) -> None:
    """A send started in time whose request is written later than the punctuality after its slot (a connect, a busy
    process) has its slot moved to the write, in a statement of its own; one written in time keeps it."""
    database = Database(clock, row=([7, 8], 0))
    gate = PgGate(database, "lsq", RATE)
    admission = await gate.admit(2)
    await gate.start(admission, 0)
    slot = slot_of_request()
    assert slot is not None and database.moved == []
    clock.now += 0.05
    slot()
    await gate.start(admission, 1)
    clock.now += 0.3  # the second request is written 0.35 s after its slot was asked for
    late = slot_of_request()
    assert late is not None
    late()
    await eventually(lambda: database.written == [8])
    assert database.moved == []


async def test_a_request_beside_a_send_written_late_moves_its_own_slot(clock: ManualClock) -> None:
    """A look-up's or a token's request (`admit_request`) takes a new slot; written late, that slot is moved."""
    database = Database(clock, row=([], 0))
    gate = PgGate(database, "lsq", RATE)
    await gate.admit_request()
    assert database.moved == [None]
    clock.now += 0.5
    late = slot_of_request()
    assert late is not None
    late()
    await eventually(lambda: database.written == [99])
