"""LeadSquared's simulator in a process of its own, as the vendor is: it stamps each arrival by its own loop, which
nothing in the process under test holds (a collection of the test process's heap held a shared loop 100 ms and
more on a loaded machine, and arrivals stamped late by it looked like a burst). Its own collector is off, as a
vendor's edge stamps an arrival when it comes: with it on, a collection of the tickets it keeps stamped arrivals up
to 37 ms late (a test's 500 tickets weigh little).

`python -m tests.integration.leadsquared_vendor PORT LIMIT WINDOW_SECONDS`: serves org `acme`, access key `ak`,
secret `sk`, on 127.0.0.1:PORT, until stopped."""

from __future__ import annotations

import gc
import sys

from aiohttp import web

from bridge.simulators.leadsquared import LeadSquaredSimulator

ORG, ACCESS_KEY, SECRET_KEY = "acme", "ak", "sk"


def main(argv: list[str]) -> None:
    port, limit, window = int(argv[0]), int(argv[1]), float(argv[2])
    sim = LeadSquaredSimulator(orgs={ORG}, keys={ACCESS_KEY: SECRET_KEY}, limit=limit, window_seconds=window)
    gc.disable()
    web.run_app(sim.app(), host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(sys.argv[1:])
