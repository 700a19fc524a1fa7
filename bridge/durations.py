"""Human durations in config and mappings: `250ms`, `5s`, `5m`, `2h`, `1d`, `2w`, or a bare number of seconds."""

from __future__ import annotations

import math
import re

from bridge.errors import VALUE, ValueProblem

MAX_DURATION_S = 100 * 365 * 86400.0
"""A century: past any window, timeout or schedule, and its milliseconds still fit the store's 64-bit columns."""
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: str | float) -> float:
    """Seconds in `value`; `1h30m` is allowed. Raises ValueProblem naming the bad value, and for one longer than
    MAX_DURATION_S."""
    seconds = _seconds(value)
    if seconds > MAX_DURATION_S:
        shown = repr(value) if len(str(value)) <= 40 else repr(str(value)[:40] + "…")
        raise ValueProblem(f"{VALUE} is longer than a century ({MAX_DURATION_S:.0f}s): write a duration such as 7d",
                           value, quote=shown)
    return seconds


def _seconds(value: str | float) -> float:
    if isinstance(value, bool):
        raise ValueProblem(f"{VALUE} is not a duration: write 5s, 5m, 2h or a number of seconds", value)
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueProblem(f"{VALUE} is not a duration: it must be a finite number, not negative", value)
        return float(value)
    text = value.strip().replace(" ", "")
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        try:
            return _seconds(float(text))
        except ValueError:
            raise ValueProblem(f"{VALUE} is not a duration: write 250ms, 5s, 5m, 2h, 1d, 2w or a number of seconds",
                               value) from None
    return total
