"""Latency histograms for /metrics: fixed buckets, one per label value, observed in constant time.

Observed on the event loop only (intake and the delivery lanes run there), so no lock: an observe is a
bisect over a dozen bounds and two additions. Counts are kept per bucket and made cumulative when
/metrics renders them, as Prometheus wants them.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field

# Seconds. Intake answers in a millisecond or two when idle; a vendor answers in tens to thousands of
# milliseconds; a delivery waiting out its retry schedule takes hours.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ATTEMPT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DELIVERY_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 7200.0, 21600.0,
                    86400.0)


@dataclass
class Histogram:
    """Counts of observations by bucket (the last one is +Inf), their sum and their number."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        # `le` is inclusive: a value equal to a bound falls in that bound's bucket.
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def cumulative(self) -> Iterator[tuple[str, int]]:
        """(le, observations ≤ le) for each bound and +Inf, as the exposition format lists them."""
        running = 0
        for bound, count in zip((*(repr(b) for b in self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            yield bound, running


@dataclass
class HistogramFamily:
    """One histogram per value of a single label (a source, a destination): only configured names are
    observed, so the number of series is bounded by the config."""

    label: str
    bounds: tuple[float, ...]
    by: dict[str, Histogram] = field(default_factory=dict)

    def observe(self, key: str, value: float) -> None:
        found = self.by.get(key)
        if found is None:
            found = self.by[key] = Histogram(self.bounds)
        found.observe(value)


@dataclass
class Latencies:
    """The histograms /metrics shows."""

    intake: HistogramFamily = field(default_factory=lambda: HistogramFamily("source", REQUEST_BUCKETS))
    attempt: HistogramFamily = field(default_factory=lambda: HistogramFamily("destination", ATTEMPT_BUCKETS))
    delivery: HistogramFamily = field(default_factory=lambda: HistogramFamily("destination", DELIVERY_BUCKETS))
