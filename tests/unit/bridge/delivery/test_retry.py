"""bridge/delivery/retry.py: the retry policy as a value."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bridge.config import DEFAULT_RETRY_SCHEDULE, RetryConfig
from bridge.delivery.retry import RetryDecision, RetryPolicy

SCHEDULE = (5.0, 300.0, 1800.0)


def fixed(value: float) -> Callable[[], float]:
    """A `rand` that always draws `value`."""
    return lambda: value


def policy(jitter: float = 0.0, max_retry_after: float = 3600.0) -> RetryPolicy:
    return RetryPolicy(SCHEDULE, jitter=jitter, max_retry_after=max_retry_after)


@pytest.mark.parametrize("classification", ["permanent", "auth"])
@pytest.mark.parametrize("tries", [1, 2, 10])
def test_permanent_and_auth_are_dead_at_once(classification: str, tries: int) -> None:
    """A permanent or auth failure is dead on any try, with a reason naming the classification."""
    decision = policy().decide(tries, classification, retry_after=10.0)
    assert decision.action == "dead"
    assert decision.delay_s == 0.0
    assert classification in decision.reason
    assert "not retried" in decision.reason


@pytest.mark.parametrize("classification", ["success", "bogus", ""])
def test_other_classifications_are_refused(classification: str) -> None:
    """Asking for a decision on a success or an unknown classification is a ValueError naming it."""
    with pytest.raises(ValueError, match=repr(classification)):
        policy().decide(1, classification)


@pytest.mark.parametrize(("tries", "delay"), [(1, 5.0), (2, 300.0), (3, 1800.0)])
def test_retry_follows_the_schedule_by_tries(tries: int, delay: float) -> None:
    """Without jitter, the n-th failed try waits exactly the n-th delay of the schedule."""
    decision = policy().decide(tries, "retry", rand=fixed(0.9))
    assert decision == RetryDecision("retry", delay)


@pytest.mark.parametrize("tries", [4, 5, 100])
def test_spent_schedule_is_dead_with_a_reason(tries: int) -> None:
    """Once every delay of the schedule has been used, a retryable failure is dead and says why."""
    decision = policy().decide(tries, "retry", retry_after=1.0)
    assert decision.action == "dead"
    assert f"gave up after {tries} attempts" in decision.reason
    assert "schedule is spent" in decision.reason


def test_empty_schedule_gives_up_on_the_first_failure() -> None:
    """A destination with no retry delays never retries."""
    decision = RetryPolicy(()).decide(1, "retry")
    assert decision.action == "dead"
    assert "gave up after 1 attempts" in decision.reason


@pytest.mark.parametrize(
    ("rand", "expected"),
    [(0.0, 5.0 * 0.8), (0.5, 5.0), (0.75, 5.0 * 1.1), (0.999999, 5.0 * 1.2)],
)
def test_jitter_spreads_the_delay_by_plus_or_minus_jitter(rand: float, expected: float) -> None:
    """With jitter 0.2, rand 0 gives -20 %, rand 0.5 the exact delay and rand near 1 nearly +20 %."""
    decision = policy(jitter=0.2).decide(1, "retry", rand=fixed(rand))
    assert decision.action == "retry"
    assert decision.delay_s == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("tries", [1, 2, 3])
def test_jitter_stays_within_bounds(tries: int) -> None:
    """Over the whole range of rand, every delay stays within ±jitter of the scheduled one."""
    base = SCHEDULE[tries - 1]
    p = policy(jitter=0.3)
    delays = [p.decide(tries, "retry", rand=fixed(i / 100)).delay_s for i in range(100)]
    assert min(delays) == pytest.approx(base * 0.7)
    assert max(delays) <= base * 1.3
    assert max(delays) > base * 1.29
    assert delays == sorted(delays)


def test_default_rand_is_used_when_none_is_given() -> None:
    """Without a `rand`, delays are spread over the jitter range and stay within its bounds."""
    p = policy(jitter=0.5)
    delays = [p.decide(1, "retry").delay_s for _ in range(200)]
    assert all(2.5 <= delay <= 7.5 for delay in delays)
    # 200 uniform draws all landing within ±10 % of the delay has a chance of 0.2**200: jitter must spread them.
    assert min(delays) < 4.5
    assert max(delays) > 5.5


def test_retry_after_raises_the_delay() -> None:
    """A Retry-After longer than the scheduled delay replaces it."""
    decision = policy(jitter=0.2).decide(1, "retry", retry_after=60.0, rand=fixed(0.5))
    assert decision == RetryDecision("retry", 60.0)


def test_retry_after_never_shortens_the_delay() -> None:
    """A Retry-After shorter than the scheduled delay leaves the schedule's delay."""
    decision = policy().decide(2, "retry", retry_after=1.0)
    assert decision.delay_s == 300.0


def test_retry_after_is_capped_at_max_retry_after() -> None:
    """A huge Retry-After is honoured only up to max_retry_after."""
    decision = policy(max_retry_after=120.0).decide(1, "retry", retry_after=86400.0)
    assert decision == RetryDecision("retry", 120.0)


def test_cap_does_not_shorten_the_schedule() -> None:
    """The cap limits Retry-After only: a scheduled delay above it is kept."""
    decision = policy(max_retry_after=10.0).decide(3, "retry", retry_after=86400.0)
    assert decision.delay_s == 1800.0


def test_zero_retry_after_keeps_the_schedule() -> None:
    """`Retry-After: 0` does not turn the scheduled wait into an immediate retry."""
    decision = policy().decide(1, "retry", retry_after=0.0)
    assert decision.delay_s == 5.0


def test_delay_is_never_negative() -> None:
    """Even with jitter of 1 and the lowest rand, the delay is not below zero."""
    decision = RetryPolicy((5.0,), jitter=1.0).decide(1, "retry", rand=fixed(0.0))
    assert decision.action == "retry"
    assert decision.delay_s == 0.0


def test_from_config_parses_durations() -> None:
    """Schedule entries and max_retry_after in duration syntax become seconds; jitter is kept."""
    cfg = RetryConfig(schedule=["250ms", "5s", "1m30s", 7, "2h"], jitter=0.1, max_retry_after="15m")
    p = RetryPolicy.from_config(cfg)
    assert p.delays == (0.25, 5.0, 90.0, 7.0, 7200.0)
    assert p.jitter == 0.1
    assert p.max_retry_after == 900.0


def test_from_default_config() -> None:
    """The default config gives the default schedule, 20 % jitter and a one-hour cap."""
    p = RetryPolicy.from_config(RetryConfig())
    assert len(p.delays) == len(DEFAULT_RETRY_SCHEDULE)
    assert p.delays[:3] == (5.0, 300.0, 1800.0)
    assert p.delays[-1] == 36000.0
    assert p.jitter == 0.2
    assert p.max_retry_after == 3600.0


def test_from_config_schedule_drives_decisions() -> None:
    """A policy built from config gives up after as many retries as the schedule has entries."""
    p = RetryPolicy.from_config(RetryConfig(schedule=["1s", "2s"], jitter=0))
    assert p.decide(1, "retry").delay_s == 1.0
    assert p.decide(2, "retry").delay_s == 2.0
    assert p.decide(3, "retry").action == "dead"


def test_policy_is_immutable() -> None:
    """A policy is a frozen value: its schedule cannot be changed after it is built."""
    p = policy()
    with pytest.raises(AttributeError):
        p.jitter = 0.5  # type: ignore[misc]
