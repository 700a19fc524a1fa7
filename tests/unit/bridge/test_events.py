"""The event's context as mappings see it under `event`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from bridge.events import Event, utc_isoformat

_MOMENTS = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31))


@given(moments=st.lists(st.one_of(
    _MOMENTS.map(lambda m: m.replace(tzinfo=UTC)),
    _MOMENTS.map(lambda m: m.replace(tzinfo=UTC, microsecond=0)),
    _MOMENTS,
    _MOMENTS.map(lambda m: m.replace(tzinfo=timezone(timedelta(hours=5, minutes=30)))),
), min_size=1, max_size=6))
def test_utc_isoformat_is_isoformat(moments: list[datetime]) -> None:
    """Any time, aware or naive, in UTC or not, with or without microseconds, after any other: isoformat's text."""
    for moment in moments:
        assert utc_isoformat(moment) == moment.isoformat()
        assert utc_isoformat(moment.replace(microsecond=7)) == moment.replace(microsecond=7).isoformat()


def test_context_shows_received_at_as_isoformat() -> None:
    """`event.received_at` is the ISO 8601 text of the time the event was received."""
    event = Event.new(source="s", kind="form", channel="form", payload={})
    assert event.context()["received_at"] == event.received_at.isoformat()
    event.received_at = datetime(2024, 1, 1, tzinfo=UTC)
    assert event.context()["received_at"] == "2024-01-01T00:00:00+00:00"


def test_utc_isoformat_tells_neighbouring_seconds_apart() -> None:
    """The text kept for a second is reused within that second only: a microsecond before it, at its start, at its
    last microsecond and at the next second's start, in either order, and at the first and last seconds there are."""
    start = datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)
    tick = timedelta(microseconds=1)
    edges = [start - tick, start, start + timedelta(microseconds=999_999), start + timedelta(seconds=1)]
    for moment in [*edges, *reversed(edges), start, start - tick, start + timedelta(seconds=1), start]:
        assert utc_isoformat(moment) == moment.isoformat()
    first, last = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
    for moment in [first, first + tick, last, last.replace(microsecond=0), last, first]:
        assert utc_isoformat(moment) == moment.isoformat()
