"""The `date` filter: the forms it reads, the zone and format it writes, and what it refuses."""

from __future__ import annotations

from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import pytest

from bridge.mapping import dates
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


def test_a_text_longer_than_any_date_is_refused_before_any_form_is_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 200 KB text that is no date was tried against every form (some 120 strptime formats, ISO-8601, the e-mail
    form), about 1 s per MB of it, in the parser thread that every large parse and render waits for. Now a text
    longer than any date the filter reads is refused as no date, with no form tried; the longest forms it reads
    still fit."""
    tried: list[str] = []

    class Counting(datetime):
        @classmethod
        def strptime(cls, text: str, fmt: str) -> Any:
            tried.append(fmt)
            return datetime.strptime(text, fmt)

        @classmethod
        def fromisoformat(cls, text: str) -> Any:
            tried.append("iso")
            return datetime.fromisoformat(text)

    def parsedate(text: str) -> Any:
        tried.append("email")
        return parsedate_to_datetime(text)

    monkeypatch.setattr(dates, "datetime", Counting)
    monkeypatch.setattr(dates.email.utils, "parsedate_to_datetime", parsedate)
    with pytest.raises(ValueError, match=r"a text of 200000 characters is not a date this filter reads: "
                                         r"none is longer than 256"):
        date(("Mar 5, 2024 " * 16_667)[:200_000])
    assert tried == []
    longest = ("Wednesday, September 25th, 2024 10:30:30 PM",
               "Mon, 30 Sep 2024 22:30:00 +0000 (Coordinated Universal Time)",
               "Tue, 05 Mar 2024 10:00:00 +1100 (Australian Eastern Daylight Time)",
               "Wednesday, 30 Sep 2024 22:30:00 +0000 (Coordinated Universal Time)")
    assert [len(text) <= dates.MAX_DATE_CHARS for text in longest] == [True] * 4
    assert [date(text) for text in longest] == ["2024-09-25T22:30:30+00:00", "2024-09-30T22:30:00+00:00",
                                                "2024-03-04T23:00:00+00:00", "2024-09-30T22:30:00+00:00"]
    assert tried  # the counting works: a date is read by trying forms
