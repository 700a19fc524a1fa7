"""A full disk between a send and its record, on a real SQLite store: the answer is recorded once the disk has
room again, and the vendor is sent the delivery once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioresponses import CallbackResult, aioresponses
from structlog.testing import capture_logs
from yarl import URL

from bridge.config import RetryConfig
from bridge.delivery.dispatcher import Destination, Dispatcher, Timings
from bridge.store.sqlite import SqliteStore
from bridge.vendors.kapture import CREATE_PATH, KaptureOptions
from tests.faults import fill, tiny_disk
from tests.integration.store.contract import accept_one, make_delivery, row
from tests.unit.bridge.delivery.test_dispatcher_faults import MockResponse

pytestmark = pytest.mark.integration

BASE = "http://kapture.test"


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.005)


async def test_a_result_recorded_after_a_full_disk_is_recorded_once_and_sent_once(tmp_path: Path) -> None:
    """The disk fills while the vendor answers: the record fails, is retried from memory, and lands once space
    is freed; the delivery is succeeded with one attempt and one request."""
    with tiny_disk(tmp_path / "tiny") as disk:
        store = SqliteStore(disk / "s.db")
        await store.open()
        filler: list[Path] = []

        def vendor(url: URL, **kwargs: Any) -> CallbackResult:
            filler.append(fill(disk))  # the disk fills while the request is out
            return CallbackResult(status=200, payload={"status": "success", "ticket_id": "T-9"},
                                  response_class=MockResponse)

        cfg = KaptureOptions(vendor="kapture", base_url=BASE, token="t", timeout_seconds=5.0,
                             retry=RetryConfig(schedule=["1h"], jitter=0))
        dest = Destination.from_config("kapture-support", cfg, BASE)
        try:
            _, [delivery_id] = await accept_one(store, make_delivery())
            with capture_logs() as logs, aioresponses() as m:
                m.post(BASE + CREATE_PATH, callback=vendor, repeat=True, response_class=MockResponse)
                async with aiohttp.ClientSession() as session:
                    d = Dispatcher(store, session, {dest.name: dest},
                                   timings=Timings(store_retry_s=0.01, record_retry_max_s=0.05, poll_s=0.05))
                    d.start()
                    try:
                        await eventually(lambda: any(e["event"] == "delivery.record_retrying" for e in logs))
                        filler[0].unlink()
                        await eventually(lambda: any(e["event"] == "delivery.recorded_late" for e in logs))
                    finally:
                        await d.stop(1.0)
                requests = len(m.requests[("POST", URL(BASE + CREATE_PATH))])
            stored = await row(store, delivery_id)
        finally:
            await store.close()
    assert requests == 1
    assert (stored.status, stored.attempts, stored.ticket_id) == ("succeeded", 1, "T-9")
    assert not [e for e in logs if e["event"] == "delivery.record_failed"]
