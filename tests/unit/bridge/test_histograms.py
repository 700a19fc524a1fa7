"""Latency histograms: buckets inclusive of their bound, cumulative in the exposition, one per label value."""

from __future__ import annotations

from bridge.histograms import Histogram, HistogramFamily


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    """`le` is inclusive: 0.1 observed with bounds (0.1, 1.0) is counted under le=0.1."""
    h = Histogram((0.1, 1.0))
    h.observe(0.1)
    assert dict(h.cumulative()) == {"0.1": 1, "1.0": 1, "+Inf": 1}


def test_buckets_are_cumulative_and_sum_and_count_follow() -> None:
    """Each bucket counts every observation at or under its bound; +Inf counts them all."""
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.5, 0.5, 7.0):
        h.observe(value)
    assert list(h.cumulative()) == [("0.1", 1), ("1.0", 3), ("+Inf", 4)]
    assert h.n == 4 and h.total == 8.05


def test_a_family_keeps_one_histogram_per_label_value() -> None:
    """Observations for two sources land in their own histograms."""
    family = HistogramFamily("source", (1.0,))
    family.observe("a", 0.5)
    family.observe("b", 2.0)
    family.observe("a", 3.0)
    assert {k: list(h.cumulative()) for k, h in family.by.items()} == {
        "a": [("1.0", 1), ("+Inf", 2)], "b": [("1.0", 0), ("+Inf", 1)]}
