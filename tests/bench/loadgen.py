"""A closed-loop HTTP load generator: N connections posting the same body for a fixed time.

Prints one JSON line: requests, errors, seconds, rate and latency percentiles (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


async def run(url: str, body: bytes, content_type: str, seconds: float, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"Content-Type": content_type, "Accept": "application/json"}

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                    if resp.status >= 300:
                        errors += 1
                        continue
            except (aiohttp.ClientError, OSError):
                errors += 1
                continue
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2) if latencies else 0.0

    return {"requests": len(latencies), "errors": errors, "seconds": round(elapsed, 3),
            "rate": round(len(latencies) / elapsed, 1), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "statuses": statuses}  # type: ignore[dict-item]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--body", default="name=Asha&email=asha%40example.com&subject=Router+down&message=No+internet")
    parser.add_argument("--content-type", default="application/x-www-form-urlencoded")
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.body.encode(), args.content_type, args.seconds, args.concurrency))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
