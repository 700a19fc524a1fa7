"""The per-destination circuit breaker, driven by a fake clock."""

from __future__ import annotations

import pytest

from bridge.delivery.breaker import Breaker
from tests.fixtures.clocks import ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(100.0)


def test_a_closed_breaker_allows_any_claim(clock: ManualClock) -> None:
    """With no failures the lane claims as usual."""
    assert Breaker(clock=clock).allowance() == (0.0, None)


def test_it_opens_after_the_threshold_of_consecutive_failures(clock: ManualClock) -> None:
    """Four failures keep it closed; the fifth opens it for the base cooldown."""
    b = Breaker(threshold=5, base_cooldown=2, clock=clock)
    assert [b.record("retry") for _ in range(4)] == [None] * 4
    assert b.record("retry") == "opened"
    assert b.allowance() == (2.0, None)


def test_a_success_resets_the_count(clock: ManualClock) -> None:
    """Failures must be consecutive: a success in between starts the count again."""
    b = Breaker(threshold=3, clock=clock)
    b.record("retry")
    b.record("retry")
    b.record("success")
    b.record("retry")
    b.record("retry")
    assert b.state == "closed"


def test_permanent_failures_do_not_count(clock: ManualClock) -> None:
    """A vendor rejecting one delivery's body says nothing about the destination."""
    b = Breaker(threshold=2, clock=clock)
    for _ in range(5):
        assert b.record("permanent") is None
    assert b.state == "closed"


def test_auth_failures_open_it(clock: ManualClock) -> None:
    """Bad credentials fail every delivery alike, so they open the breaker too."""
    b = Breaker(threshold=2, clock=clock)
    b.record("auth")
    assert b.record("auth") == "opened"


def test_after_the_cooldown_one_probe_is_allowed(clock: ManualClock) -> None:
    """Once the cooldown passes the lane may claim one delivery, and no more while it is out."""
    b = Breaker(threshold=1, base_cooldown=1, clock=clock)
    b.record("retry")
    clock.now += 1.0
    assert b.allowance() == (0.0, 1)
    b.probe_sent()
    wait, limit = b.allowance()
    assert wait > 0
    assert limit is None


def test_a_successful_probe_closes_it(clock: ManualClock) -> None:
    """The first success after opening closes the breaker and says so."""
    b = Breaker(threshold=1, clock=clock)
    b.record("retry")
    clock.now += 5
    b.allowance()
    b.probe_sent()
    assert b.record("success", probe=True) == "closed"
    assert b.allowance() == (0.0, None)


def test_a_failed_probe_doubles_the_cooldown_up_to_the_cap(clock: ManualClock) -> None:
    """Each failed probe opens it again for twice as long, never longer than max_cooldown."""
    b = Breaker(threshold=1, base_cooldown=1, max_cooldown=5, clock=clock)
    cooldowns = []
    b.record("retry")
    for _ in range(5):
        cooldowns.append(b.cooldown)
        clock.now = b.until
        b.allowance()
        b.probe_sent()
        assert b.record("retry", probe=True) == "opened"
    assert cooldowns == [1, 2, 4, 5, 5]


def probing(clock: ManualClock) -> Breaker:
    """A breaker opened once, its cooldown over, with its probe out."""
    b = Breaker(threshold=1, base_cooldown=1, max_cooldown=60, clock=clock)
    b.record("retry")
    clock.now = b.until
    assert b.allowance() == (0.0, 1)
    b.probe_sent()
    return b


def test_a_probe_answered_with_a_permanent_failure_closes_it(clock: ManualClock) -> None:
    """A permanent answer to the probe (the vendor is up, the body was wrong) closes the breaker."""
    b = probing(clock)
    assert b.record("permanent", probe=True) == "closed"
    assert (b.state, b.probing, b.failures) == ("closed", False, 0)
    assert b.allowance() == (0.0, None)


def test_a_probe_answered_with_success_closes_it(clock: ManualClock) -> None:
    """A successful probe closes the breaker and lets the lane claim freely."""
    b = probing(clock)
    assert b.record("success", probe=True) == "closed"
    assert (b.state, b.probing) == ("closed", False)
    assert b.allowance() == (0.0, None)


def test_a_probe_answered_with_an_auth_failure_opens_it_again(clock: ManualClock) -> None:
    """Bad credentials on the probe reopen the breaker for a doubled cooldown, the probe no longer out."""
    b = probing(clock)
    assert b.record("auth", probe=True) == "opened"
    assert (b.state, b.probing) == ("open", False)
    assert b.allowance() == (2.0, None)
    clock.now = b.until
    assert b.allowance() == (0.0, 1)


def test_a_probe_that_timed_out_opens_it_again(clock: ManualClock) -> None:
    """A timeout (a retry) on the probe reopens the breaker, and a new probe follows the cooldown."""
    b = probing(clock)
    assert b.record("retry", probe=True) == "opened"
    assert (b.state, b.probing) == ("open", False)
    clock.now = b.until
    assert b.allowance() == (0.0, 1)


def test_a_permanent_failure_while_closed_changes_nothing(clock: ManualClock) -> None:
    """Outside the half-open state a permanent answer neither opens nor resets the breaker."""
    b = Breaker(threshold=3, clock=clock)
    b.record("retry")
    assert b.record("permanent") is None
    assert (b.state, b.failures) == ("closed", 1)


@pytest.mark.parametrize("classification", ["retry", "auth", "success", "permanent"])
def test_an_answer_to_a_send_from_before_it_opened_leaves_the_probe_out(clock: ManualClock,
                                                                         classification: str) -> None:
    """Half-open with its probe out, the late answer of a send that went out before the breaker opened is not the
    probe's: the breaker stays half-open, the probe out (no second one granted), until the probe answers."""
    b = probing(clock)
    assert b.record(classification) is None
    assert (b.state, b.probing) == ("half_open", True)
    wait, limit = b.allowance()
    assert wait > 0 and limit is None, "a second probe granted while the first is out"
    assert b.record("success", probe=True) == "closed"


def test_an_answer_to_a_send_from_before_it_opened_does_not_reopen_it_before_its_probe(clock: ManualClock) -> None:
    """Open, or half-open with no probe out yet, a late failure neither reopens the breaker nor lengthens its
    cooldown: the next probe goes out when the cooldown it opened with ends."""
    b = Breaker(threshold=1, base_cooldown=1, max_cooldown=60, clock=clock)
    assert b.record("retry") == "opened"
    until = b.until
    assert b.record("retry") is None
    clock.now = until
    assert b.allowance() == (0.0, 1)
    assert b.record("retry") is None
    assert (b.state, b.until, b.allowance()) == ("half_open", until, (0.0, 1))
