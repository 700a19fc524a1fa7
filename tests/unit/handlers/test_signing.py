"""handlers/signing.py: timestamp windows, secrets in options, constant-time comparison."""

from __future__ import annotations

import hmac
from typing import Any

import msgspec
import pytest

from bridge.errors import Rejected
from handlers.signing import TimedOptions, check_timestamp, check_token, require, same

NOW = 1_700_000_000.0


@pytest.mark.parametrize("stamp", [NOW, NOW - 300, NOW + 300])
def test_timestamp_within_the_window_passes(stamp: float) -> None:
    """A timestamp up to the tolerance away, either way, is accepted and returned."""
    assert check_timestamp(str(int(stamp)), NOW, 300, header="X-Ts") == int(stamp)


@pytest.mark.parametrize(("stamp", "word"), [(NOW - 301, "old"), (NOW + 301, "in the future")])
def test_timestamp_outside_the_window_is_401(stamp: float, word: str) -> None:
    """A stale (replayed) or far-future timestamp is a 401 from the timestamp check saying which."""
    with pytest.raises(Rejected) as info:
        check_timestamp(str(int(stamp)), NOW, 300, header="X-Ts")
    assert (info.value.status, info.value.check) == (401, "timestamp")
    assert word in str(info.value)


@pytest.mark.parametrize("value", [None, "", "abc", "12.5", "-5", "١٢٣"])
def test_malformed_timestamp_is_401(value: str | None) -> None:
    """A missing or non-numeric timestamp (including non-ASCII digits) is a 401, not a crash."""
    with pytest.raises(Rejected) as info:
        check_timestamp(value, NOW, 300, header="X-Ts")
    assert info.value.check == "timestamp"


def test_millisecond_timestamps() -> None:
    """With unit ms, the value is read as milliseconds."""
    assert check_timestamp(str(int(NOW * 1000)), NOW, 300, header="X-Ts", unit="ms") == int(NOW * 1000)
    with pytest.raises(Rejected):
        check_timestamp(str(int(NOW)), NOW, 300, header="X-Ts", unit="ms")


def test_require_names_the_key_and_never_a_value() -> None:
    """An empty secret is refused with a hint to set it from the environment."""
    require("set", "secret", "ENV")
    with pytest.raises(ValueError, match=r"`signing_key` is empty: set it from the environment, e\.g\. "
                                         r"signing_key: \$\{MAILGUN\}"):
        require("", "signing_key", "MAILGUN")


def test_tolerance_is_a_duration() -> None:
    """`tolerance` takes a duration and defaults to 5 minutes."""
    assert msgspec.convert({"kind": "x"}, TimedOptions).tolerance_s == 300
    assert msgspec.convert({"kind": "x", "tolerance": "90s"}, TimedOptions).tolerance_s == 90
    with pytest.raises(msgspec.ValidationError, match="not a duration"):
        msgspec.convert({"kind": "x", "tolerance": "soon"}, TimedOptions)


def test_same_is_constant_time_and_tolerates_odd_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """`same` goes through hmac.compare_digest and treats undecodable header text as a mismatch."""
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert same("abc", " abc ")
    assert not same(b"abc", "ab\udcff")
    assert len(calls) == 2


@pytest.mark.parametrize("digits", [21, 5_000])
def test_timestamp_of_too_many_digits_is_refused_unread(digits: int) -> None:
    """A timestamp longer than any time in milliseconds is refused with 401 naming its length, before int()
    (which refuses 4,300 digits or more) ever sees it."""
    with pytest.raises(Rejected) as info:
        check_timestamp("9" * digits, NOW, 300, header="X-Ts", unit="ms")
    assert (info.value.status, info.value.check) == (401, "timestamp")
    assert f"is {digits} digits long" in str(info.value)


@pytest.mark.parametrize(("given", "reason"), [
    (None, "no token in header X-Token"),
    ("", "no token in header X-Token"),
    ("guess", "the token in header X-Token is wrong"),
])
def test_check_token_refuses_a_missing_or_wrong_token_saying_which(given: str | None, reason: str) -> None:
    """A shared-secret token that is absent or wrong is a 401 (check `token`) naming where it was looked for."""
    with pytest.raises(Rejected) as info:
        check_token("tok", given, "header X-Token")
    assert (info.value.status, info.value.check, str(info.value)) == (401, "token", reason)


def test_check_token_passes_the_token() -> None:
    """The expected token passes, surrounding blanks aside as `same` takes them."""
    check_token("tok", " tok ", "header X-Token")
