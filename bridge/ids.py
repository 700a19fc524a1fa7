"""Sortable unique ids: a millisecond timestamp and randomness, in Crockford base32 (ULID layout)."""

from __future__ import annotations

import os
import random
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0
_head: tuple[int, int, str] = (-1, -1, "")  # (ms, random part >> 10) of the last id, and its first 24 characters
# Seeded once from the OS, not per id: os.urandom costs tens of microseconds on some VMs, and these ids
# need uniqueness, not secrecy. A forked child reseeds so that it cannot repeat its parent's sequence.
_rng = random.Random(os.urandom(32))  # noqa: S311 - ids need uniqueness, not secrecy


def _reseed() -> None:
    _rng.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)


_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # every 10-bit value as two characters


def _encode(value: int, length: int) -> str:
    """`value` as `length` base32 characters (length even), most significant first."""
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in range(5 * length - 10, -1, -10)])


def new_ulid() -> str:
    """A 26-character id that sorts by creation time, monotonic within this process: the millisecond in 10
    characters (50 bits), then 80 bits of randomness in 16. Ids made in one millisecond (under load, most are)
    count up from the first one's random part, so all but its last two characters are kept from the id before
    (until those two carry over): such an id costs one lookup of its last 10 bits."""
    global _last_ms, _last_rand, _head  # noqa: PLW0603 - one process-wide sequence, under _lock
    with _lock:
        now = time.time_ns() // 1_000_000
        if now <= _last_ms:
            now = _last_ms
            rand = (_last_rand + 1) & ((1 << 80) - 1)
        else:
            rand = _rng.getrandbits(80)
        _last_ms, _last_rand = now, rand
        high = rand >> 10
        if _head[0] != now or _head[1] != high:
            _head = (now, high, _encode((now << 70) | high, 24))
        head = _head[2]
    return head + _PAIRS[rand & 1023]


def new_id(prefix: str) -> str:
    """A prefixed id (`evt_…`, `dlv_…`), readable in logs and CLI output."""
    return f"{prefix}_{new_ulid()}"


_AS_DIGITS = bytes.maketrans(_ALPHABET.encode(), b"0123456789ABCDEFGHIJKLMNOPQRSTUV")
"""Crockford's base32 characters as the digits int(…, 32) reads."""


def timestamp_ms(ulid_id: str) -> int:
    """The creation time, in epoch milliseconds, encoded in an id from `new_id`/`new_ulid`."""
    start = ulid_id.rfind("_") + 1
    body = ulid_id[start:start + 10]
    if body and not body.strip(_ALPHABET):  # Crockford's characters alone: read in C (6k instructions, the loop 17k)
        return int(body.encode().translate(_AS_DIGITS), 32)
    value = 0
    for ch in body:
        value = value * 32 + _ALPHABET.index(ch)  # ValueError at the first character that is not one of them
    return value


def id_floor(prefix: str, ms: int) -> str:
    """The lowest id `new_id(prefix)` could give at `ms`: ids below it were made earlier (for time ranges)."""
    return f"{prefix}_{_encode(max(0, ms) << 80, 26)}"
