"""bridge/delivery/ratelimit.py: per-destination rate limits that are never exceeded."""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left, bisect_right
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.config import RateLimit
from bridge.delivery.ratelimit import (
    MARGIN_SHARE,
    SlidingWindowLimiter,
    Unlimited,
    acquire,
    make_limiter,
    slot_of_request,
)

EPS = 1e-9


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def max_in_any_window(slots: list[float], width: float) -> int:
    """The most slots that fall in one closed window `[t, t + width]`, over every start `t`."""
    ordered = sorted(slots)
    return max(bisect_right(ordered, t + width) - bisect_left(ordered, t) for t in ordered)


def reserve_slots(limiter: SlidingWindowLimiter, clock: FakeClock, n: int) -> list[float]:
    """Reserve `n` slots at the clock's current time; returns the absolute send times."""
    return [clock.now + limiter.reserve() for _ in range(n)]


def test_helper_counts_windows() -> None:
    """The window counter used below sees a burst that a naive limiter would let through."""
    assert max_in_any_window([0.0, 1.0, 2.0, 5.0], 5.0) == 4
    assert max_in_any_window([0.0, 1.0, 2.0, 5.01], 5.0) == 3


def test_first_requests_go_at_once() -> None:
    """Up to `requests` reservations in an empty window need no wait."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(25, 5.0, clock=clock)
    assert [limiter.reserve() for _ in range(25)] == [0.0] * 25


def test_next_request_waits_a_full_window_plus_margin() -> None:
    """The request after a full window waits until the oldest send is a window (plus margin) old."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 5.0, margin=0.02, clock=clock)
    reserve_slots(limiter, clock, 3)
    assert limiter.reserve() == pytest.approx(5.1)
    assert limiter.window == pytest.approx(5.1)


def test_burst_after_backlog_never_exceeds_the_limit() -> None:
    """500 reservations at once with 25 per 5 s never put more than 25 sends in any 5 s window."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(25, 5.0, clock=clock)
    slots = reserve_slots(limiter, clock, 500)
    assert max_in_any_window(slots, 5.0) == 25
    # Not slower than it must be: 20 windows of 25, the last starting 19 windows after the first.
    assert slots[-1] - slots[0] == pytest.approx(19 * 5.0 * (1 + MARGIN_SHARE))


def test_burst_after_backlog_with_real_waits_never_exceeds_the_limit() -> None:
    """A lane that sleeps until each slot and then reserves the next stays under the limit too."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(25, 5.0, clock=clock)
    sends = []
    for _ in range(500):
        delay = limiter.reserve()
        clock.advance(delay)
        sends.append(clock.now)
    assert max_in_any_window(sends, 5.0) == 25
    assert sends[-1] - sends[0] == pytest.approx(19 * 5.0 * (1 + MARGIN_SHARE))


def test_delays_grow_in_order() -> None:
    """Reservations made at the same moment get non-decreasing delays, one window step per batch."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, 1.0, margin=0.0, min_margin_s=0.0, clock=clock)
    delays = [limiter.reserve() for _ in range(7)]
    assert delays == sorted(delays)
    assert delays == pytest.approx([0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0])


def test_slots_free_up_as_time_passes() -> None:
    """After a whole window has passed, a full limiter grants slots at once again."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 2.0, clock=clock)
    reserve_slots(limiter, clock, 3)
    clock.advance(2.5)
    assert [limiter.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.reserve() > 0


def test_pause_delays_the_next_slot() -> None:
    """After pause(s), the next reservation waits s seconds even though the window has room."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(100, 1.0, clock=clock)
    assert limiter.reserve() == 0.0
    limiter.pause(7.0)
    assert limiter.reserve() == pytest.approx(7.0)
    clock.advance(3.0)
    assert limiter.reserve() == pytest.approx(4.0)
    clock.advance(4.0)
    assert limiter.reserve() == 0.0


def test_shorter_pause_does_not_shorten_a_longer_one() -> None:
    """A second, shorter pause leaves the longer pause in force."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(10, 1.0, clock=clock)
    limiter.pause(30.0)
    limiter.pause(1.0)
    assert limiter.reserve() == pytest.approx(30.0)


def test_pause_counts_toward_the_window() -> None:
    """Slots granted after a pause still respect the window: a pause cannot cause a burst over the limit."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(5, 5.0, clock=clock)
    slots = reserve_slots(limiter, clock, 5)
    limiter.pause(1.0)
    slots += reserve_slots(limiter, clock, 20)
    assert max_in_any_window(slots, 5.0) <= 5
    assert min(slots[5:]) >= clock.now + 1.0


@pytest.mark.parametrize(("requests", "per_seconds"), [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -5.0)])
def test_rejects_bad_limits(requests: int, per_seconds: float) -> None:
    """A limit without at least one request per positive window is refused."""
    with pytest.raises(ValueError, match="requests >= 1 and per_seconds > 0"):
        SlidingWindowLimiter(requests, per_seconds)


# too_slow: a loaded CI machine must not fail the test for its own slowness; nothing is stored in the repo.
@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.integers(min_value=1, max_value=12),
    per_seconds=st.floats(min_value=0.05, max_value=30.0),
    steps=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=10.0),  # how far the clock moves first
            st.integers(min_value=1, max_value=30),  # how many reservations then
            st.one_of(st.none(), st.floats(min_value=0.0, max_value=20.0)),  # an optional pause
        ),
        min_size=1, max_size=25,
    ),
)
def test_window_guarantee_holds_for_any_arrivals(
    requests: int, per_seconds: float, steps: list[tuple[float, int, float | None]],
) -> None:
    """Whatever the arrival pattern and pauses, no window of per_seconds holds more than `requests` slots."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(requests, per_seconds, clock=clock)
    slots: list[float] = []
    for gap, count, pause in steps:
        clock.advance(gap)
        if pause is not None:
            limiter.pause(pause)
            paused_until = clock.now + pause
        else:
            paused_until = clock.now
        new = reserve_slots(limiter, clock, count)
        assert all(slot >= clock.now for slot in new)
        assert all(slot >= paused_until - EPS for slot in new)
        slots += new
    # `now + delay` may be one float ulp off the slot the limiter stored; order is checked to that precision.
    assert all(later >= earlier - EPS for earlier, later in pairwise(slots))
    assert max_in_any_window(slots, per_seconds) <= requests


def test_margin_has_a_floor_in_seconds() -> None:
    """A short window gets at least 50 ms of margin: network jitter is seconds, not a share of the window."""
    assert SlidingWindowLimiter(25, 0.5).window == pytest.approx(0.55)
    assert SlidingWindowLimiter(25, 5.0).window == pytest.approx(5.25)
    assert SlidingWindowLimiter(25, 0.5, min_margin_s=0.0).window == pytest.approx(0.525)


def test_a_late_send_counts_from_when_it_started() -> None:
    """Slots used late move the window: the next one waits a full window after the late sends, not the plan."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, 1.0, margin=0.0, min_margin_s=0.0, clock=clock)
    assert [limiter.reserve(), limiter.reserve()] == [0.0, 0.0]
    clock.advance(0.3)  # both sends start 0.3 s after their slot (a busy event loop)
    limiter.sent()
    limiter.sent()
    assert limiter.reserve() == pytest.approx(1.0)


def test_without_sent_the_plan_is_trusted() -> None:
    """Reservations never marked sent keep their planned time (the limiter cannot know better)."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, 1.0, margin=0.0, min_margin_s=0.0, clock=clock)
    limiter.reserve()
    limiter.reserve()
    clock.advance(0.3)
    assert limiter.reserve() == pytest.approx(0.7)


def test_sent_never_moves_a_slot_earlier() -> None:
    """A send marked before its slot leaves the slot where it was, and extra sent() calls change nothing."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 1.0, margin=0.0, min_margin_s=0.0, clock=clock)
    limiter.reserve()
    assert limiter.reserve() == pytest.approx(1.0)
    limiter.sent()
    limiter.sent()
    limiter.sent()
    assert limiter.reserve() == pytest.approx(2.0)


def test_a_late_send_pushes_the_slots_reserved_after_it() -> None:
    """When the oldest reserved slot is used late, the later ones, not yet used, cannot be earlier than it."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 1.0, margin=0.0, min_margin_s=0.0, clock=clock)
    assert [limiter.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    clock.advance(0.5)
    limiter.sent()  # only the first has started; the other two will start later still
    assert limiter.reserve() == pytest.approx(1.0)



def test_a_send_given_back_frees_its_own_slot_and_only_while_the_log_holds_it() -> None:
    """`unsend` takes out the send `sent` numbered, leaving the reservations after it; once the log has let that
    send go (a window's worth of sends after it), it takes out nothing."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, 1.0, margin=0.0, min_margin_s=0.0, clock=clock)
    limiter.reserve()
    handle = limiter.sent()
    assert handle is not None
    assert limiter.reserve() == 0.0  # the second slot, reserved, its send not started
    limiter.unsend(handle)
    assert limiter.reserve() == 0.0  # the given-back slot is free again; the reservation still holds the other
    assert limiter.reserve() == pytest.approx(1.0)
    clock.advance(5.0)
    limiter = SlidingWindowLimiter(1, 1.0, margin=0.0, min_margin_s=0.0, clock=clock)
    limiter.reserve()
    gone = limiter.sent()
    assert limiter.reserve() == pytest.approx(1.0)
    clock.advance(1.0)
    limiter.sent()  # the first leaves the log of one
    assert gone is not None
    limiter.unsend(gone)
    assert limiter.reserve() == pytest.approx(1.0)


# too_slow: as above.
@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.integers(min_value=1, max_value=12),
    per_seconds=st.floats(min_value=0.05, max_value=30.0),
    steps=st.lists(st.tuples(st.floats(min_value=0.0, max_value=10.0), st.floats(min_value=0.0, max_value=3.0)),
                   min_size=1, max_size=80),
)
def test_actual_send_times_keep_the_guarantee_whatever_the_lateness(
    requests: int, per_seconds: float, steps: list[tuple[float, float]],
) -> None:
    """Sends that each start any time after their slot, and before the next slot is reserved, never put more
    than `requests` actual starts in one window (the planned slots alone would)."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(requests, per_seconds, margin=0.0, min_margin_s=0.0, clock=clock)
    started: list[float] = []
    for idle, lag in steps:
        clock.advance(idle)
        clock.advance(limiter.reserve() + lag)
        limiter.sent()
        started.append(clock.now)
    assert max_in_any_window(started, per_seconds - EPS) <= requests


def test_a_send_counts_from_when_its_request_is_written() -> None:
    """A send whose request is written after its start (a connect, a busy loop) counts from the write: the next
    window's slot is a window after it, not after the start."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, 1.0, margin=0.0, min_margin_s=0.0, clock=clock)
    limiter.reserve()
    late = limiter.sent()
    limiter.reserve()
    on_time = limiter.sent()
    assert late is not None and on_time is not None
    clock.advance(0.3)
    limiter.written(late)
    limiter.written(on_time)  # written 0.3 s after their start, at once
    assert limiter.reserve() == pytest.approx(1.0)


def test_a_late_write_keeps_the_log_in_time_order_and_never_moves_a_send_earlier() -> None:
    """The oldest of three sends written last becomes the newest: the next slot is a window after the oldest of the
    others; a write before the send's own time (marked early) moves nothing, nor does a handle the log let go."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 1.0, margin=0.0, min_margin_s=0.0, clock=clock)
    handles = []
    for _ in range(3):
        limiter.reserve()
        handles.append(limiter.sent())
        clock.advance(0.1)
    assert all(h is not None for h in handles)
    clock.advance(0.2)  # 0.5 s after the first send: written now
    limiter.written(handles[0])  # type: ignore[arg-type]
    assert limiter.reserve() == pytest.approx(0.6)  # a window after the second send (0.1 s)
    limiter.unreserve()
    limiter.written(handles[0])  # type: ignore[arg-type]  # no later than it was: nothing moves
    limiter.written(10_000)
    assert limiter.reserve() == pytest.approx(0.6)
    # A send marked before its slot keeps the slot's time, later than a write now: the write goes before it.
    limiter = SlidingWindowLimiter(2, 1.0, margin=0.0, min_margin_s=0.0, clock=clock)
    start = clock.now
    limiter.reserve()
    first = limiter.sent()
    assert [limiter.reserve(), limiter.reserve()] == [0.0, pytest.approx(1.0)]
    limiter.sent()
    limiter.sent()  # marked early: it keeps its slot, a window after the first
    clock.advance(0.2)
    assert first is not None
    limiter.written(first)
    assert list(limiter._sends) == [start, pytest.approx(start + 0.2), pytest.approx(start + 1.0)]
    assert limiter.reserve() == pytest.approx(1.0)  # a window after the write, the second newest


def test_a_write_pushes_the_reservations_after_the_sends() -> None:
    """Reservations made before a send's late write cannot be earlier than it (the log stays in order)."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 1.0, margin=0.0, min_margin_s=0.0, clock=clock)
    limiter.reserve()
    handle = limiter.sent()
    assert [limiter.reserve(), limiter.reserve()] == [0.0, 0.0]  # reserved, not started
    clock.advance(0.4)
    assert handle is not None
    limiter.written(handle)
    assert list(limiter._sends) == [pytest.approx(clock.now)] * 3
    assert limiter.reserve() == pytest.approx(1.0)


# too_slow: as above.
@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.integers(min_value=1, max_value=8),
    per_seconds=st.floats(min_value=0.05, max_value=30.0),
    steps=st.lists(st.tuples(st.booleans(), st.floats(min_value=0.0, max_value=0.999),
                             st.floats(min_value=0.0, max_value=2.0)), min_size=1, max_size=60),
)
def test_written_requests_keep_the_guarantee_when_written_within_a_window_of_their_start(
    requests: int, per_seconds: float, steps: list[tuple[bool, float, float]],
) -> None:
    """Requests started as `use_slot` starts them, several in flight at once, each written any time up to a window
    after its start (in any order), never put more than `requests` writes in one window; counted from their starts
    they would."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(requests, per_seconds, margin=0.0, min_margin_s=0.0, clock=clock)
    unwritten: list[tuple[float, int]] = []  # when each request in flight is written, and its handle
    written: list[float] = []

    def advance_to(at: float) -> None:
        """Move the clock to `at`, writing on the way each request due by then, in time order."""
        unwritten.sort()
        while unwritten and unwritten[0][0] <= at:
            due, handle = unwritten.pop(0)
            clock.now = max(clock.now, due)
            limiter.written(handle)
            written.append(clock.now)
        clock.now = max(clock.now, at)

    for start, lag, idle in steps:
        advance_to(clock.now + idle * per_seconds)
        if not start:
            continue
        advance_to(clock.now + limiter.reserve())
        while (delay := limiter.start_delay()) > 0:
            advance_to(clock.now + delay)
        handle = limiter.sent()
        assert handle is not None
        unwritten.append((clock.now + lag * per_seconds, handle))
    advance_to(float("inf"))
    if written:
        assert max_in_any_window(written, per_seconds - EPS) <= requests


def test_a_send_passed_by_requests_reserved_after_it_waits_for_room() -> None:
    """Two slots reserved for sends, then two look-ups reserved behind them that start first (each takes the
    oldest reserved slot): the sends may no longer go at once, `start_delay` says until when; a send on time
    need not wait."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(2, 1.0, margin=0.0, min_margin_s=0.0, clock=clock)
    assert [limiter.reserve() for _ in range(2)] == [0.0, 0.0]
    assert limiter.start_delay() == 0.0
    assert [limiter.reserve() for _ in range(2)] == [pytest.approx(1.0)] * 2
    clock.advance(1.0)
    for _ in range(2):  # the look-ups
        assert limiter.start_delay() == 0.0
        limiter.sent()
    assert limiter.start_delay() == pytest.approx(1.0)
    clock.advance(1.0)
    assert limiter.start_delay() == 0.0
    limiter.sent()
    assert limiter.start_delay() == 0.0


# too_slow: as above.
@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    requests=st.integers(min_value=1, max_value=6),
    per_seconds=st.floats(min_value=0.05, max_value=30.0),
    steps=st.lists(st.tuples(st.integers(min_value=0, max_value=3), st.integers(min_value=0, max_value=3),
                             st.floats(min_value=0.0, max_value=3.0)), min_size=1, max_size=60),
)
def test_starts_that_wait_for_room_keep_the_guarantee_in_any_order(
    requests: int, per_seconds: float, steps: list[tuple[int, int, float]],
) -> None:
    """Slots reserved in batches and used in any order, late or on time, each start waiting for `start_delay`
    (as `use_slot` does), never put more than `requests` starts in one window."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(requests, per_seconds, margin=0.0, min_margin_s=0.0, clock=clock)
    ready: list[float] = []  # when each reserved slot's wait ends
    started: list[float] = []
    for reserve, start, lag in steps:
        ready += [clock.now + limiter.reserve() for _ in range(reserve)]
        for _ in range(min(start, len(ready))):
            clock.now = max(clock.now, ready.pop()) + lag  # the newest reservation's request starts first
            while (delay := limiter.start_delay()) > 0:
                clock.advance(delay)
            limiter.sent()
            started.append(clock.now)
    if started:
        assert max_in_any_window(started, per_seconds - EPS) <= requests


def test_unlimited_never_waits() -> None:
    """Unlimited grants every slot at once."""
    assert [Unlimited().reserve() for _ in range(1000)] == [0.0] * 1000


def test_unlimited_honours_pause() -> None:
    """Unlimited still honours a pause after a 429, and forgets it once it has passed."""
    clock = FakeClock()
    limiter = Unlimited(clock=clock)
    limiter.pause(10.0)
    limiter.pause(2.0)
    assert limiter.reserve() == pytest.approx(10.0)
    clock.advance(4.0)
    assert limiter.reserve() == pytest.approx(6.0)
    clock.advance(6.0)
    assert limiter.reserve() == 0.0
    assert limiter.window == 1.0


def test_make_limiter_without_rate_is_unlimited() -> None:
    """No `rate_limit` in the config gives an Unlimited limiter."""
    assert isinstance(make_limiter(None), Unlimited)


def test_make_limiter_with_rate_is_a_sliding_window() -> None:
    """A `rate_limit` gives a sliding window with its requests and period."""
    limiter = make_limiter(RateLimit(requests=25, per_seconds=5.0))
    assert isinstance(limiter, SlidingWindowLimiter)
    assert limiter.requests == 25
    assert limiter.per_seconds == 5.0
    assert limiter.window >= 5.0
    assert [limiter.reserve() for _ in range(25)] == [0.0] * 25
    assert limiter.reserve() > 4.0


async def test_acquire_sleeps_for_the_reserved_delay() -> None:
    """acquire() waits out the reservation's delay before returning."""
    limiter = SlidingWindowLimiter(1, 0.2, margin=0.0)
    await acquire(limiter)
    started = time.monotonic()
    await asyncio.wait_for(acquire(limiter), timeout=5.0)
    assert time.monotonic() - started >= 0.15


def test_acquire_does_not_sleep_when_free() -> None:
    """acquire() on a free limiter returns without waiting: its coroutine finishes in its first step."""
    step = acquire(Unlimited())
    with pytest.raises(StopIteration):
        step.send(None)


def test_used_counts_the_sends_of_the_current_window_and_reserves_nothing() -> None:
    """`used` counts the sends within `per_seconds` back from now (a slot reserved for later is not yet one),
    drops them as the window moves on, and leaves the next delay as it was."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 10.0, clock=clock)
    for _ in range(2):
        limiter.reserve()
        limiter.sent()
    clock.advance(6.0)
    limiter.reserve()
    limiter.sent()
    limiter.reserve()  # the fourth slot is a window later: not used yet
    delay = limiter.next_delay()
    assert limiter.used() == 3
    assert limiter.next_delay() == delay
    clock.advance(4.1)  # the first two are out of the window; the reserved slot is not due yet
    assert limiter.used() == 1


async def test_an_acquire_cancelled_while_it_waits_gives_its_slot_back() -> None:
    """A wait for a slot cut short (a reconciliation's deadline, a stop) leaves the log as it was: a reservation
    kept would count as one more request in every window, and each such cut would slow the lane for good."""
    limiter = SlidingWindowLimiter(3, 60.0)
    for _ in range(3):
        await acquire(limiter)  # the window is full: the next slot is a minute away
    for _ in range(3):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await acquire(limiter)
    assert (limiter._pending, len(limiter._sends)) == (0, 3)


async def test_the_slot_of_a_request_is_its_own_tasks_last_once() -> None:
    """`slot_of_request` hands over the slot the task last took (`acquire`), once, to be counted from when it is
    called; another task (one started from it too) gets none, nor does a second request of the same task."""
    clock = FakeClock()
    limiter = SlidingWindowLimiter(1, 1.0, margin=0.0, min_margin_s=0.0, clock=clock)
    await acquire(limiter)
    assert await asyncio.create_task(_slot_elsewhere()) is None
    clock.advance(0.25)
    assert limiter.next_delay() == pytest.approx(0.75)
    slot = slot_of_request()
    assert slot is not None and slot_of_request() is None
    assert limiter.next_delay() == pytest.approx(0.75)  # counted from the call, not the hand-over
    clock.advance(0.25)
    slot()
    assert limiter.next_delay() == pytest.approx(1.0)


async def _slot_elsewhere() -> object:
    return slot_of_request()
