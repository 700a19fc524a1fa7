"""bridge/delivery/coordination.py: the gate a lane asks before it claims, kept in this process."""

from __future__ import annotations

import math
import time

from bridge.config import RateLimit
from bridge.delivery.breaker import Breaker
from bridge.delivery.coordination import LocalCoordination, LocalGate
from bridge.delivery.ratelimit import SlidingWindowLimiter, Unlimited
from tests.unit.bridge.delivery.test_ratelimit import FakeClock


def gate(requests: int = 3, per_seconds: float = 10.0) -> tuple[LocalGate, FakeClock]:
    clock = FakeClock()
    breaker = Breaker(threshold=2, base_cooldown=5.0, clock=clock)
    return LocalGate(SlidingWindowLimiter(requests, per_seconds, clock=clock), breaker), clock


async def test_admit_grants_only_the_slots_free_now_and_says_when_the_next_frees() -> None:
    """With 3 per 10 s, a lane asking for 5 is granted 3, then none until a window (plus margin) has passed."""
    g, clock = gate()
    first = await g.admit(5)
    assert first.granted == 3
    for i in range(3):
        await g.start(first, i)
    held = await g.admit(5)
    assert (held.granted, held.held) == (0, True)
    assert 10.0 < held.wait_s <= 10.6  # 10 s and the margin (5 %)
    clock.advance(held.wait_s)
    assert (await g.admit(5)).granted == 3


async def test_unused_slots_are_given_back() -> None:
    """Slots granted for work that was not there do not count against the limit."""
    g, _ = gate()
    admission = await g.admit(3)
    await g.unused(admission, 2)
    await g.start(admission, 0)
    assert (await g.admit(5)).granted == 2


async def test_a_pause_holds_every_grant() -> None:
    """After pause(s) (a 429), nothing is granted for s seconds."""
    g, clock = gate()
    await g.pause(7.0)
    held = await g.admit(1)
    assert (held.granted, held.wait_s) == (0, 7.0)
    clock.advance(7.0)
    assert (await g.admit(1)).granted == 1


async def test_an_open_breaker_grants_nothing_then_one_probe() -> None:
    """Open: nothing for the cooldown; half-open: exactly one send, the probe; an unused probe goes back."""
    g, clock = gate(requests=100)
    await g.outcome("retry")
    assert await g.outcome("retry") == "opened"
    held = await g.admit(4)
    assert (held.granted, held.held, held.wait_s) == (0, True, 5.0)
    clock.advance(5.0)
    probe = await g.admit(4)
    assert (probe.granted, probe.probe) == (1, True)
    assert (await g.admit(4)).granted == 0  # the probe is out
    await g.unused(probe, 1)
    assert (await g.admit(4)).probe


async def test_one_local_coordination_gives_every_dispatcher_the_same_gate() -> None:
    """Dispatchers sharing one LocalCoordination (as on one in-memory store) share each destination's limit."""
    shared = LocalCoordination()
    a = shared.gate("lsq", RateLimit(requests=2, per_seconds=60))
    b = shared.gate("lsq", RateLimit(requests=2, per_seconds=60))
    assert a is b
    assert (await a.admit(2)).granted == 2
    assert (await b.admit(2)).granted == 0
    assert isinstance(shared.gate("other", None), LocalGate)
    assert isinstance(shared.gates["other"].limiter, Unlimited)


async def test_an_operators_hold_grants_nothing_until_it_ends_or_is_lifted() -> None:
    """hold(None) grants nothing and says so until unhold; hold(s) shows its end in the view; sends in the
    window are counted there."""
    g, _ = gate()
    first = await g.admit(2)
    for i in range(2):
        await g.start(first, i)
    await g.hold(None)
    held = await g.admit(1)
    assert (held.granted, held.held, held.wait_s) == (0, True, math.inf)
    view = await g.view()
    assert (view.held_until_s, view.rate_used, view.breaker) == (math.inf, 2, "closed")
    await g.unhold()
    assert (await g.admit(1)).granted == 1
    await g.hold(60)
    until = (await g.view()).held_until_s
    assert until is not None and abs(until - (time.time() + 60)) < 1
    assert (await g.admit(1)).granted == 0


async def test_a_started_probe_given_back_returns_its_own_slot_not_another_requests() -> None:
    """A probe whose send started, then given up for its lease (not sent), gives back the slot it took: not the
    reservation of a request still waiting for the window (a look-up's, `admit_request`), which must count once it
    goes out. With 1 per 10 s, nothing more may go out within a window of that request."""
    g, clock = gate(requests=1)
    await g.outcome("retry")
    assert await g.outcome("retry") == "opened"
    clock.advance(5.0)
    probe = await g.admit(1)
    assert probe.probe
    await g.start(probe, 0)  # the probe's send starts; its lease check then fails: not sent
    assert g.limiter.reserve() > 10  # another request's slot, waited for (as admit_request does meanwhile)
    await g.unused(probe, 1)  # the probe given back
    clock.advance(10.6)
    g.limiter.sent()  # that request goes out
    assert (await g.admit(1)).granted == 0, "a second request within the window of the one that went out"


async def test_a_send_given_back_returns_its_own_slot() -> None:
    """Of three sends granted together, the first settled unsent gives back its reservation and the second, started
    then given up before its request was written, the slot it took; the third, sent, stays counted."""
    g, _ = gate()
    admission = await g.admit(3)
    await g.start(admission, 1)
    await g.start(admission, 2)
    await g.give_back(admission, 0)
    await g.give_back(admission, 1)
    assert (g.limiter._pending, g.limiter.used()) == (0, 1)
    assert (await g.admit(5)).granted == 2


async def test_unused_after_give_back_returns_only_what_the_unused_sends_hold() -> None:
    """`unused` after `give_back` (the last sends of an admission, as a shared gate reads them: its last slots)
    gives back what each of those holds, once: the reservation of one not started, the slot of one started, and
    nothing for one given back already. Of three granted, the first settled unsent (its reservation back), the
    second started, then the last two unused: nothing stays counted, and the limit grants all three again."""
    g, _ = gate()
    admission = await g.admit(3)
    await g.give_back(admission, 0)
    await g.start(admission, 1)
    await g.unused(admission, 2)
    assert (g.limiter._pending, g.limiter.used()) == (0, 0)
    assert (await g.admit(5)).granted == 3


async def test_unused_skips_a_send_given_back_already() -> None:
    """The last send given back, then the last two unused: the second's reservation goes back, not another's
    (the first's, still held, whose send then starts and counts)."""
    g, _ = gate()
    admission = await g.admit(3)
    await g.give_back(admission, 2)
    await g.unused(admission, 2)
    assert g.limiter._pending == 1
    await g.start(admission, 0)
    assert (g.limiter._pending, g.limiter.used()) == (0, 1)
    assert (await g.admit(5)).granted == 2


async def test_a_probe_given_back_after_its_outcome_leaves_a_later_probe_out() -> None:
    """A probe settled unsent is given back after the breaker was told its outcome: if that outcome opened the
    breaker again and a new probe has gone out since, the new probe still holds every other send back."""
    g, clock = gate(requests=100)
    await g.outcome("retry")
    await g.outcome("retry")
    clock.advance(5.0)
    first = await g.admit(1)
    assert first.probe
    assert await g.outcome("retry", first) == "opened"  # its outcome (a look-up failed in passing)
    clock.advance(10.0)
    second = await g.admit(1)
    assert second.probe
    await g.give_back(first, 0)
    assert (await g.admit(4)).granted == 0, "a second probe out while the first is"
    await g.give_back(second, 0)
    assert (await g.admit(4)).probe


async def test_only_the_probes_answer_ends_the_half_open_state() -> None:
    """Sends granted before the breaker opened and answered while its probe is out (a failure, a success) are not
    the probe's answer: the probe stays out and no second one is granted; the probe's own answer closes it."""
    g, clock = gate(requests=100)
    early = await g.admit(3)  # out before the breaker opens, answered late
    await g.outcome("retry", early)
    assert await g.outcome("retry", early) == "opened"
    clock.advance(5.0)
    probe = await g.admit(1)
    assert probe.probe
    for classification in ("retry", "auth", "success"):
        assert await g.outcome(classification, early) is None
        assert (await g.admit(4)).granted == 0, f"a second probe out after a late {classification}"
    assert await g.outcome("success", probe) == "closed"
    assert (await g.admit(4)).granted == 4
