"""Vendor simulators: in-process stand-ins for sandbox destinations, tests and benchmarks.

The registry maps a vendor name to its simulator; `sandbox: true` destinations of that vendor are
served by it, and `ticketbridge sandbox` serves every registered one under /{vendor}/.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web


class Simulator(Protocol):
    """What the server and the tests use of a simulator."""

    faults: Any

    def app(self) -> web.Application:
        """A new aiohttp application serving the vendor's API (each call builds a fresh one)."""


def registry() -> dict[str, Callable[[], Simulator]]:
    from bridge.simulators.kapture import KaptureSimulator  # noqa: PLC0415 - simulators import vendors

    return {"kapture": KaptureSimulator}
