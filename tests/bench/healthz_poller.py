"""Poll a URL with GET every few milliseconds for a fixed time, one request at a time, in its own process so
that the load beside it cannot delay its own loop. Prints one JSON line: count, p50_ms, p99_ms, max_ms."""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


async def run(url: str, seconds: float, interval: float) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    async with aiohttp.ClientSession() as session:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            async with session.get(url) as resp:
                await resp.read()
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(interval)
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2)

    return {"count": len(latencies), "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=0.005)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.url, args.seconds, args.interval))))


if __name__ == "__main__":
    main()
