"""Which threads a vendor answer's lenient read ran in (`bridge.vendors.base.decode_lenient`), for the tests that
keep it off the event loop."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from bridge.vendors import base


def lenient_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads each lenient read from now on runs in, in order (the loop's is `MainThread`)."""
    threads: list[str] = []
    decode_lenient = base.decode_lenient

    def noted(body: bytes) -> Any:
        threads.append(threading.current_thread().name)
        return decode_lenient(body)

    monkeypatch.setattr(base, "decode_lenient", noted)
    return threads
