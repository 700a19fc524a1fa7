"""The `date` filter: the forms it reads, the zone and format it writes, and what it refuses."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.mapping.dates import date, parse_datetime

UTC_10 = "2024-03-05T10:00:00+00:00"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-03-05T10:00:00Z", UTC_10),
        ("2024-03-05 10:00:00+00:00", UTC_10),
        ("2024-03-05T15:30:00+05:30", UTC_10),
        ("2024-03-05", "2024-03-05T00:00:00+00:00"),
        ("20240305", "2024-03-05T00:00:00+00:00"),
        (1709632800, UTC_10),
        (1709632800.0, UTC_10),
        (1709632800000, UTC_10),
        ("1709632800", UTC_10),
        ("1709632800000", UTC_10),
        ("Tue, 05 Mar 2024 10:00:00 +0000", UTC_10),
        ("5 March 2024 10:00", UTC_10),
        ("5th Mar 2024", "2024-03-05T00:00:00+00:00"),
        ("March 5, 2024 10:00 AM", UTC_10),
        ("2024/03/05 10:00", UTC_10),
    ],
)
def test_reads_iso_epoch_email_and_worded_dates(value: Any, expected: str) -> None:
    """ISO-8601, epoch seconds and milliseconds, e-mail dates, worded months and year-first numbers are read."""
    assert date(value) == expected


@pytest.mark.parametrize(
    ("value", "order", "expected"),
    [
        ("05/03/2024", "dmy", "2024-03-05T00:00:00+00:00"),
        ("05/03/2024", "mdy", "2024-05-03T00:00:00+00:00"),
        ("05.03.24 10:30 pm", "dmy", "2024-03-05T22:30:00+00:00"),
        ("3-5-2024 12:05 am", "mdy", "2024-03-05T00:05:00+00:00"),
    ],
)
def test_day_first_and_month_first_follow_the_given_order(value: str, order: str, expected: str) -> None:
    """Numeric day/month dates are read in the order the mapping names."""
    assert date(value, "iso", "UTC", order) == expected


def test_numeric_day_month_without_an_order_is_refused() -> None:
    """05/03/2024 is never guessed: without 'dmy' or 'mdy' it is an error saying how to choose."""
    with pytest.raises(ValueError, match=r"could be day-first or month-first: say which"):
        date("05/03/2024")


def test_writes_in_the_zone_and_format_given() -> None:
    """The result is converted to `tz` and written with strftime, or as epoch seconds or milliseconds."""
    assert date("2024-03-05T10:00:00Z", "%Y-%m-%d %H:%M", "Asia/Kolkata") == "2024-03-05 15:30"
    assert date("2024-03-05T10:00:00Z", "epoch") == 1709632800
    assert date("2024-03-05T10:00:00Z", "epoch_ms") == 1709632800000


def test_a_time_without_zone_is_taken_in_tz() -> None:
    """A naive time is read as local time of `tz`, not as UTC."""
    assert date("2024-03-05 10:00", "iso", "Asia/Kolkata") == "2024-03-05T10:00:00+05:30"
    assert parse_datetime("2024-03-05 10:00", "Asia/Kolkata").utcoffset() is not None


@pytest.mark.parametrize(
    ("value", "message"),
    [("yesterday", "is not a date this filter reads"), ("31/02/2024", "day is out of range"),
     ("2024-13-01", "month must be in 1..12"), (True, "a boolean is not a date"),
     ([2024], "a list is not a date"), (10**20, "out of range")],
)
def test_what_is_not_a_date_is_refused(value: Any, message: str) -> None:
    """Text that is no date, impossible dates and other types are refused with a reason."""
    with pytest.raises((ValueError, TypeError), match=message):
        date(value, "iso", "UTC", "dmy")
