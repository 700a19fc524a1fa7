"""A burst of 500 events for LeadSquared, through the whole app to the simulator in a process of its own (as the
vendor is: `leadsquared_vendor`): every window of the limit's length sees at most 25 requests at the vendor, none is
refused with 429, and all 500 arrive."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.integration.leadsquared_vendor import ACCESS_KEY, ORG, SECRET_KEY
from tests.integration.processes import ROOT, free_port, spawn, stop, wait_http

EVENTS = 500
LIMIT = 25

MAPPING = {
    "burst": """
        source: burst
        destination: lsq
        action: create_ticket
        fields:
          LeadDetail.EmailAddress: "{{ payload.email }}"
          Title: "ticket {{ payload.n }}"
    """,
}


def max_in_any_window(times: list[float], width: float) -> int:
    """The most arrivals in one closed window `[t, t + width]`, over every start `t`."""
    ordered = sorted(times)
    return max(bisect_right(ordered, t + width) - bisect_left(ordered, t) for t in ordered)


async def run_burst(write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path,
                    per_seconds: float, rate_limit: str) -> dict[str, Any]:
    port = free_port()
    vendor = spawn([str(port), str(LIMIT), str(per_seconds)], tmp_path / "vendor.log",
                   module="tests.integration.leadsquared_vendor", cwd=ROOT)
    try:
        base = f"http://127.0.0.1:{port}"
        await wait_http(f"{base}/tickets", vendor)
        cfg = f"""
        server: {{shutdown_grace_seconds: 1}}
        store: {{url: "sqlite:///var/bridge.db"}}
        sources:
          burst: {{kind: json}}
        destinations:
          lsq: {{vendor: leadsquared, base_url: "{base}/", org_id: {ORG}, access_key: {ACCESS_KEY},
                 secret_key: {SECRET_KEY}, max_in_flight: 16, {rate_limit}
                 retry: {{schedule: [1s, 1s, 1s], jitter: 0}}}}
        """
        client = await bridge_client(write_config(cfg, MAPPING))
        for n in range(EVENTS):
            resp = await client.post("/hooks/burst", json={"n": n, "email": f"user{n}@example.com"})
            assert resp.status == 202
        windows = EVENTS / LIMIT
        async with aiohttp.ClientSession() as session:

            async def vendor_json(path: str) -> Any:
                async with session.get(base + path) as resp:
                    assert resp.status == 200
                    return await resp.json()

            async def all_arrived() -> bool:
                return bool((await vendor_json("/tickets"))["count"] == EVENTS)

            await eventually(all_arrived, timeout=windows * per_seconds * 3 + 30, interval=0.1)
            tickets = (await vendor_json("/tickets"))["tickets"]
            entries = (await vendor_json("/_received"))["received"]
        assert runtime(client).dispatcher is not None
    finally:
        stop(vendor)
    times = [e["t"] for e in entries if e["path"].endswith("/tickets")]
    gaps = [later - earlier for earlier, later in zip(times, times[LIMIT:], strict=False)]
    statuses = {e["status"] for e in entries}
    titles = sorted(int(next(f["Value"] for f in t["Fields"] if f["SchemaName"] == "Title").split()[1])
                    for t in tickets)
    return {"times": times, "gaps": gaps, "statuses": statuses, "titles": titles,
            "busiest": max_in_any_window(times, per_seconds), "span": times[-1] - times[0]}


def check(result: dict[str, Any], per_seconds: float) -> None:
    assert result["statuses"] == {200}, "some request was refused: the limit was exceeded or a send failed"
    assert len(result["times"]) == EVENTS
    assert result["titles"] == list(range(EVENTS))
    assert result["busiest"] <= LIMIT
    assert min(result["gaps"]) > per_seconds  # the 26th request after any one comes a full window later
    # Not slower than it must be: 20 windows of 25 take 19 window lengths (plus margins) at the least.
    assert result["span"] < (EVENTS / LIMIT) * per_seconds * 1.5
    assert all(b >= a for a, b in pairwise(result["times"]))


@pytest.mark.integration
async def test_burst_of_500_never_exceeds_25_per_half_second(write_config: ConfigFactory, bridge_client: AppClient,
                                                              tmp_path: Path) -> None:
    """500 events at once reach a simulator limiting 25 per 0.5 s with never more than 25 in any 0.5 s, all 200."""
    result = await run_burst(write_config, bridge_client, tmp_path, 0.5,
                             "rate_limit: {requests: 25, per_seconds: 0.5},")
    print(f"\n25/0.5s: busiest window {result['busiest']}, min gap over 25 requests "
          f"{min(result['gaps']):.4f}s, span {result['span']:.2f}s")
    check(result, 0.5)


@pytest.mark.integration
@pytest.mark.slow
async def test_burst_of_500_never_exceeds_leadsquareds_25_per_5_seconds(
    write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path,
) -> None:
    """With LeadSquared's default limit (no rate_limit given), 500 events arrive at no more than 25 in any 5 s."""
    result = await run_burst(write_config, bridge_client, tmp_path, 5.0, "")
    print(f"\n25/5s: busiest window {result['busiest']}, min gap over 25 requests "
          f"{min(result['gaps']):.4f}s, span {result['span']:.2f}s")
    check(result, 5.0)
