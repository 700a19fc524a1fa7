"""bridge/ids.py: sortable, monotonic, prefixed ids (ULID layout)."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from bridge import ids
from bridge.ids import id_floor, new_id, new_ulid, timestamp_ms

CROCKFORD = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """A settable millisecond clock, with the module's monotonic state reset (and restored afterwards)."""
    monkeypatch.setattr(ids, "_last_ms", 0)
    monkeypatch.setattr(ids, "_last_rand", 0)
    now = [0]
    monkeypatch.setattr(ids, "time", SimpleNamespace(time_ns=lambda: now[0] * 1_000_000 + 123_456))

    def set_ms(ms: int) -> None:
        now[0] = ms

    return set_ms


def test_ulid_shape() -> None:
    """An id is 26 characters of Crockford base32 (no I, L, O or U)."""
    for _ in range(100):
        assert CROCKFORD.match(new_ulid())


def test_prefix() -> None:
    """`new_id` puts the prefix and an underscore before a ULID."""
    value = new_id("evt")
    prefix, _, body = value.partition("_")
    assert prefix == "evt"
    assert CROCKFORD.match(body)


def test_known_ulid_timestamp() -> None:
    """The timestamp is read from the first 10 characters as in the ULID spec's example."""
    assert timestamp_ms("01ARYZ6S41TSV4RRFFQ69G5FAV") == 1469918176385


def test_timestamp_round_trip(clock: Callable[[int], None]) -> None:
    """The creation millisecond is recovered exactly from ids with and without a prefix."""
    for ms in (0, 1, 1469918176385, 1_900_000_000_123, 2**48 - 1):
        clock(ms)
        assert timestamp_ms(new_ulid()) == ms
        assert timestamp_ms(new_id("dlv")) == ms


def test_timestamp_with_an_underscored_prefix(clock: Callable[[int], None]) -> None:
    """A prefix that itself contains underscores does not confuse `timestamp_ms`."""
    clock(1_700_000_000_000)
    assert timestamp_ms(new_id("my_long_prefix")) == 1_700_000_000_000


def test_timestamp_is_the_wall_clock() -> None:
    """Without a fake clock, the encoded time is the current time in epoch milliseconds."""
    before = time.time_ns() // 1_000_000
    value = new_id("evt")
    after = time.time_ns() // 1_000_000
    assert before <= timestamp_ms(value) <= after


def test_sortable_across_milliseconds(clock: Callable[[int], None]) -> None:
    """Ids made at later milliseconds sort after earlier ones as plain strings."""
    made = []
    for ms in (1_000, 1_001, 1_032, 5_000_000, 1_700_000_000_000, 2**47):
        clock(ms)
        made.append(new_ulid())
    assert sorted(made) == made
    assert len(set(made)) == len(made)


def test_monotonic_within_a_millisecond(clock: Callable[[int], None]) -> None:
    """Many ids in the same millisecond are unique and strictly increasing, with that millisecond."""
    clock(1_700_000_000_000)
    made = [new_ulid() for _ in range(2000)]
    assert all(a < b for a, b in itertools.pairwise(made))
    assert {timestamp_ms(m) for m in made} == {1_700_000_000_000}


def test_prefixed_ids_are_monotonic_too(clock: Callable[[int], None]) -> None:
    """Ids with the same prefix made in one millisecond sort in creation order."""
    clock(1_700_000_000_000)
    made = [new_id("evt") for _ in range(100)]
    assert made == sorted(made)


def test_monotonic_when_the_clock_steps_back(clock: Callable[[int], None]) -> None:
    """If the wall clock goes backwards, ids keep increasing instead of sorting before older ones."""
    clock(1_700_000_000_500)
    first = new_ulid()
    clock(1_700_000_000_000)
    second = new_ulid()
    assert second > first


def test_random_part_differs_between_milliseconds(clock: Callable[[int], None]) -> None:
    """A new millisecond starts from fresh randomness, so ids are not guessable from the previous one."""
    tails = set()
    for ms in range(1_000, 1_050):
        clock(ms)
        tails.add(new_ulid()[10:])
    assert len(tails) == 50


def test_unique_across_threads() -> None:
    """Ids made concurrently by many threads never collide."""
    out: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        made = [new_ulid() for _ in range(500)]
        with lock:
            out.extend(made)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 4000
    assert len(set(out)) == 4000


def test_id_floor_sorts_between_ids_made_before_and_at_its_time() -> None:
    """`id_floor(prefix, ms)` sorts above every id made before `ms` and not above any made at or after it."""
    made = new_id("dlv")
    at = timestamp_ms(made)
    assert id_floor("dlv", at) <= made < id_floor("dlv", at + 1)
    assert timestamp_ms(id_floor("dlv", at)) == at


def test_same_layout_as_one_130_bit_number(clock: Callable[[int], None]) -> None:
    """An id is its millisecond and random part written as one 130-bit number, whether or not the millisecond's
    characters were kept from the id before."""
    for ms in (1_700_000_000_000, 1_700_000_000_000, 1_700_000_000_001, 2**48 - 1):
        clock(ms)
        made = new_ulid()
        assert made == ids._encode((ms << 80) | ids._last_rand, 26)


def test_the_kept_head_is_typed_as_its_millisecond_random_part_and_characters() -> None:
    """Under mypy --strict, the kept head reads as (int, int, str), not as a list of any of them. (mypy runs in a
    process of its own: in this one it would raise the recursion limit for every later test.)"""
    use = "from bridge.ids import _head\nms: int = _head[0]\nhigh: int = _head[1]\nchars: str = _head[2]\n"
    checked = subprocess.run([sys.executable, "-m", "mypy", "--config-file=", "--strict", "--python-version=3.11",
                              "--no-incremental", f"--cache-dir={os.devnull}", "-c", use],
                             cwd=Path(__file__).resolve().parents[3], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("text", ["dlv_01ARYZ6S4I", "01arYZ6S41TSV4RRFFQ69G5FAV", "evt_01ARY Z6S41", "01ARYZ6S4é"])
def test_a_timestamp_outside_crockfords_alphabet_is_refused(text: str) -> None:
    """A character that is not one of Crockford's (an I, L, O or U, lower case, a space) is refused, not read
    as the digit Python's base 32 would make of it."""
    with pytest.raises(ValueError, match="substring not found"):
        timestamp_ms(text)


def test_a_short_timestamp_is_read_as_far_as_it_goes() -> None:
    assert timestamp_ms("dlv_") == 0
    assert timestamp_ms("dlv_0Z") == 31
    assert timestamp_ms("1_10") == 32
