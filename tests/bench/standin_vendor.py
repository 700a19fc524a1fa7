"""A local stand-in vendor for benchmarks: answers like Kapture's create-ticket API and records when
each ticket arrived (wall clock, comparable across processes on one machine).

GET /stats → {"count", "unique", "arrivals": {source_ref: [epoch seconds of the first arrival, the
ticket's `accepted_at` field as sent]}}; GET /count → {"count", "unique"} (cheap to poll under load).
"""

from __future__ import annotations

import itertools
import json
import sys
import time

from aiohttp import web

arrivals: dict[str, tuple[float, str | None]] = {}
count = 0
ids = itertools.count(1)


async def create(request: web.Request) -> web.Response:
    global count  # noqa: PLW0603 - a benchmark's stand-in keeps its tally in module state
    now = time.time()
    body = await request.json()
    ref = str(body[0].get("source_ref"))
    count += 1
    arrivals.setdefault(ref, (now, body[0].get("accepted_at")))
    ticket = str(next(ids))
    return web.json_response({"status": "success", "ticket_id": ticket, "ticket": {"ticketId": ticket}})


async def stats(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps({"count": count, "unique": len(arrivals), "arrivals": arrivals}),
                        content_type="application/json")


async def counts(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps({"count": count, "unique": len(arrivals)}), content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/add-ticket-from-other-source.html/v.2.0", create)
    app.router.add_get("/stats", stats)
    app.router.add_get("/count", counts)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)


if __name__ == "__main__":
    main()
