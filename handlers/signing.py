"""Pieces the providers' signature schemes share: secrets in options, timestamp windows, digests."""

from __future__ import annotations

import hashlib
import hmac
from typing import Literal

from bridge.config import SourceConfig, check_duration
from bridge.durations import parse_duration
from bridge.errors import VALUE, Rejected
from bridge.yamlfile import KeyValueError, Quoted

MAX_TIMESTAMP_DIGITS = 20
"""More digits than any time in milliseconds until the year 3 billion has; a longer number is refused unread."""


def require(value: str, key: str, env: str) -> None:
    """Refuse an empty secret in the config (an unset environment variable expands to one)."""
    if not value:
        raise ValueError(f"`{key}` is empty: set it from the environment, e.g. {key}: ${{{env}}}")


class TimedOptions(SourceConfig, kw_only=True, forbid_unknown_fields=True):
    """Options of a provider that signs a timestamp: how far it may be from our clock."""

    tolerance: str = "5m"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_duration(self.tolerance, ("tolerance",))
        check_dedup_covers(self.dedup_window, 2 * self.tolerance_s, "`tolerance` {made} either way",
                           Quoted(("tolerance",), self.tolerance, quote=self.tolerance), "twice `tolerance`")

    @property
    def tolerance_s(self) -> float:
        return parse_duration(self.tolerance)


def check_dedup_covers(dedup_window: str, valid_s: float, why: str, made: Quoted, least: str) -> None:
    """Refuse a `dedup_window` shorter than the time a signed request stays valid (`valid_s`): an identical
    replay after the window, still within its timestamp's limit, would be stored again. `why` says how that time
    is made, quoting the option it is made of (`made`) as `{made}`; `least` says, in words, what the window must
    be at least: what the error says instead of the seconds where that option's value may not be shown."""
    if parse_duration(dedup_window) < valid_s:
        seconds = f"{valid_s:.0f}s"
        raise KeyValueError(("dedup_window",), f"`dedup_window` {VALUE} is shorter than {{valid}} a signed request "
                            f"stays valid ({why}): the same request sent again after it would be stored twice; make "
                            "it {least} or more", dedup_window, quote=dedup_window, quotes={
                                "made": made,
                                "valid": Quoted(made.key, made.value, quote=f"the {seconds}", hidden="the time"),
                                "least": Quoted(made.key, made.value, quote=seconds, hidden=least)})


def check_timestamp(value: str | None, now: float, tolerance_s: float, *, header: str,
                    unit: Literal["s", "ms"] = "s") -> int:
    """The signed timestamp as an int, or Rejected(401) when it is missing, malformed, or further than
    `tolerance_s` from `now` either way (a stale replay, or a clock far ahead)."""
    if not value:
        raise Rejected(401, f"timestamp {header} is missing", check="timestamp")
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise Rejected(401, f"timestamp {header} is not a whole number of {'milli' if unit == 'ms' else ''}seconds",
                       check="timestamp")
    if len(text) > MAX_TIMESTAMP_DIGITS:  # read as a number it would be ages away, and int() refuses thousands
        raise Rejected(401, f"timestamp {header} is {len(text)} digits long; a time in "
                            f"{'milli' if unit == 'ms' else ''}seconds has at most {MAX_TIMESTAMP_DIGITS}",
                       check="timestamp")
    stamp = int(text)
    seconds = stamp / 1000 if unit == "ms" else float(stamp)
    if abs(now - seconds) > tolerance_s:
        age = "old" if seconds < now else "in the future"
        raise Rejected(401, f"timestamp {header} is {abs(now - seconds):.0f}s {age}; the limit is "
                            f"{tolerance_s:.0f}s", check="timestamp")
    return stamp


def same(expected: str | bytes, given: str) -> bool:
    """Constant-time equality of an expected signature and the text a client sent (never raises)."""
    want = expected.encode() if isinstance(expected, str) else expected
    return hmac.compare_digest(want, given.strip().encode("utf-8", "replace"))


def check_token(expected: str, given: str | None, where: str) -> None:
    """Rejected(401, check "token") unless `given`, read from `where` (`header X-Token`), is the shared secret
    `expected`: no token there, or the wrong one, each said apart. Compared in constant time."""
    if not given:
        raise Rejected(401, f"no token in {where}", check="token")
    if not same(expected, given):
        raise Rejected(401, f"the token in {where} is wrong", check="token")


def key_scope(key: str) -> str:
    """The nonce scope of a signing key: `key:` and 128 bits of an HMAC under the key, so that sources sharing a
    key (Mailgun's is the account's) share their nonces, and what the store keeps tells nothing of the key."""
    return "key:" + hmac.new(key.encode("utf-8", "surrogatepass"), b"ticketbridge nonce scope",
                             hashlib.sha256).hexdigest()[:32]
