"""The `date` filter: one date or time, in whatever common form it came, written out in one zone and format.

Read: ISO-8601 (`2024-03-05`, `2024-03-05T10:00:00Z`, with an offset or a space), epoch seconds or
milliseconds (a number or digits; above 10^11 counts as milliseconds), e-mail dates
(`Tue, 05 Mar 2024 10:00:00 +0000`), a month written as a word (`5 March 2024`, `Mar 5, 2024 10:30`),
year-first numbers (`2024/03/05`), and day-first or month-first numbers (`05/03/2024 10:30 pm`), which
are read only when the mapping says which: `date('%d %b %Y', 'Asia/Kolkata', 'dmy')`. A time without a
zone is taken to be in `tz`. A text longer than any of these could be (MAX_DATE_CHARS) is refused unread.

Written: `iso` (the default), `epoch`, `epoch_ms`, or any strftime format.
"""

from __future__ import annotations

import email.utils
import re
from datetime import UTC, datetime
from datetime import date as Date
from datetime import time as Time
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jinja2 import Undefined

from bridge.escaping import quoted_sent

ORDERS = ("dmy", "mdy")
SPECIAL_FORMATS = ("iso", "epoch", "epoch_ms")
_MS_THRESHOLD = 10**11  # 10^11 seconds is the year 5138; as milliseconds it is 1973
MAX_DATE_CHARS = 256
"""The longest text read as a date (once stripped): a longer one is refused before any form is tried, as trying them
all (fifteen worded forms, each with eight times of day) costs about 1 s per MB of text, while 256 characters cost
well under a millisecond. Dates are shorter: written out with the longest names, a worded date is 43 characters
('Wednesday, September 30th, 2024 10:30:30 PM'), an ISO-8601 time 35 (nine decimals and an offset); an e-mail date
with the zone's name in a comment, or JavaScript's `Date.toString()`, 60-75 ('Tue, 05 Mar 2024 10:00:00 +1100
(Australian Eastern Daylight Time)'), with room above for longer zone names."""

_NUMERIC = re.compile(
    r"^(\d{1,4})[/.\-](\d{1,2})[/.\-](\d{1,4})"
    r"(?:[ T,]+(\d{1,2}):(\d{2})(?::(\d{2}))?\s*([AaPp][Mm])?)?$"
)
_WORD_FORMS = ("%d %B %Y", "%d %b %Y", "%B %d %Y", "%b %d %Y", "%d-%b-%Y", "%d %B, %Y", "%d %b, %Y",
               "%B %d, %Y", "%b %d, %Y", "%A %d %B %Y", "%a %d %b %Y", "%A, %d %B %Y", "%a, %d %b %Y",
               "%A, %B %d, %Y", "%a, %b %d, %Y")
_TIME_FORMS = ("", " %H:%M", " %H:%M:%S", " %I:%M %p", " %I:%M:%S %p", " %I %p", " at %H:%M", " at %I:%M %p")


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file's (a template's tz)
        raise ValueError(f"unknown time zone {quoted_sent(name)}: use an IANA name such as UTC or "
                         "Asia/Kolkata") from None


def known_zone(name: str) -> bool:
    """Whether `name` is a time zone `date` can write in (checked when a mapping compiles)."""
    try:
        _zone(name)
    except ValueError:
        return False
    return True


def _from_epoch(number: float) -> datetime:
    seconds = number / 1000 if abs(number) >= _MS_THRESHOLD else number
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError):
        raise ValueError(f"{number!r} is out of range as epoch seconds or milliseconds") from None


def _numeric(m: re.Match[str], text: str, order: str | None) -> datetime:
    a, b, c = (int(g) for g in m.group(1, 2, 3))
    if len(m.group(1)) == 4:
        year, month, day = a, b, c
    elif order is None:
        raise ValueError(f"{quoted_sent(text)} could be day-first or month-first: say which, e.g. "
                         "date('iso', 'UTC', 'dmy')")
    else:
        day, month = (a, b) if order == "dmy" else (b, a)
        year = c + 2000 if len(m.group(3)) <= 2 else c
    hour = int(m.group(4) or 0)
    minute, second = int(m.group(5) or 0), int(m.group(6) or 0)
    ampm = (m.group(7) or "").lower()
    if ampm:
        if not 1 <= hour <= 12:
            raise ValueError(f"{quoted_sent(text)}: hour {hour} does not go with {ampm}")
        hour = hour % 12 + (12 if ampm == "pm" else 0)
    return datetime(year, month, day, hour, minute, second)  # ValueError names a bad day or month


def _words(text: str) -> datetime | None:
    cleaned = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", text)
    cleaned = re.sub(r"\s+", " ", cleaned)
    for day_form in _WORD_FORMS:
        for time_form in _TIME_FORMS:
            try:
                return datetime.strptime(cleaned, day_form + time_form)
            except ValueError:
                continue
    return None


def parse_datetime(value: Any, tz: str = "UTC", order: str | None = None) -> datetime:
    """An aware datetime for `value`; raises ValueError saying which forms are understood."""
    zone = _zone(tz)
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, Date):
        parsed = datetime.combine(value, Time())
    elif isinstance(value, bool):
        raise TypeError("a boolean is not a date")
    elif isinstance(value, int | float):
        return _from_epoch(value)
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > MAX_DATE_CHARS:
            raise ValueError(f"a text of {len(text)} characters is not a date this filter reads: "
                             f"none is longer than {MAX_DATE_CHARS}")
        # Nine digits or more is epoch time; eight is an ISO basic date (20240305).
        if re.fullmatch(r"-?\d{9,}(\.\d+)?", text):
            return _from_epoch(float(text))
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            numeric = _NUMERIC.match(text)
            if numeric:
                parsed = _numeric(numeric, text, order)
            else:
                found = _words(text)
                if found is None:
                    try:
                        found = email.utils.parsedate_to_datetime(text)
                    except (TypeError, ValueError, IndexError):
                        raise ValueError(
                            f"{quoted_sent(text)} is not a date this filter reads: ISO-8601, epoch seconds or ms, "
                            "'5 March 2024', an e-mail date, or dd/mm/yyyy with 'dmy' (mm/dd/yyyy with 'mdy')"
                        ) from None
                parsed = found
    else:
        raise TypeError(f"a {type(value).__name__} is not a date")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed


def date(value: Any, fmt: str = "iso", tz: str = "UTC", order: str | None = None) -> Any:
    """`value` read as a date or time (see the module's doc), written in zone `tz` as `fmt`."""
    if value is None or isinstance(value, Undefined):
        return value
    moment = parse_datetime(value, tz, order).astimezone(_zone(tz))
    if fmt == "iso":
        return moment.isoformat()
    if fmt == "epoch":
        return int(moment.timestamp())
    if fmt == "epoch_ms":
        return int(moment.timestamp() * 1000)
    return moment.strftime(fmt)
