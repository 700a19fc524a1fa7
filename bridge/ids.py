"""Sortable unique ids: a millisecond timestamp and randomness, in Crockford base32 (ULID layout)."""

from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_ulid() -> str:
    """A 26-character id that sorts by creation time, monotonic within this process."""
    global _last_ms, _last_rand
    with _lock:
        now = time.time_ns() // 1_000_000
        if now <= _last_ms:
            now = _last_ms
            rand = (_last_rand + 1) & ((1 << 80) - 1)
        else:
            rand = int.from_bytes(os.urandom(10), "big")
        _last_ms, _last_rand = now, rand
    return _encode(now, 10) + _encode(rand, 16)


def new_id(prefix: str) -> str:
    """A prefixed id (`evt_…`, `dlv_…`), readable in logs and CLI output."""
    return f"{prefix}_{new_ulid()}"


def timestamp_ms(ulid_id: str) -> int:
    """The creation time, in epoch milliseconds, encoded in an id from `new_id`/`new_ulid`."""
    body = ulid_id.rsplit("_", 1)[-1][:10]
    value = 0
    for ch in body:
        value = value * 32 + _ALPHABET.index(ch)
    return value
