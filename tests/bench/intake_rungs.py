"""The middle rungs of the intake cost ladder (test_intake_cost_bench): ticketbridge serving its shipped default
config as `serve --no-workers` does, on a store that is not a database, so that what it costs beyond the
connection guard is the handler's own work (checks, parse, mapping, event, answer).

Usage: intake_rungs.py PORT STORE, STORE being
- `memory`: the in-memory store (what storing costs in Python, without SQL or a disk);
- `none`: a store that keeps nothing and answers each accept at once, as stored (the handler alone). A bench
  instrument only: nothing it is sent is kept.
"""

from __future__ import annotations

import dataclasses
import sys

import msgspec

from bridge.cli.serve import serve
from bridge.config import load_config
from bridge.eventloop import run
from bridge.events import Event
from bridge.logs import configure_logging
from bridge.registries import REGISTRIES
from bridge.store.base import AcceptResult, NewDelivery, Nonce
from bridge.store.memory import MemoryStore


class KeepsNothing(MemoryStore):
    """Answers every accept as stored, and stores nothing."""

    async def accept(self, event: Event, deliveries: list[NewDelivery], dedup_window_s: float,
                     nonce: Nonce | None = None, *, weight: int = 0) -> AcceptResult:
        return AcceptResult(event_id=event.id, duplicate=False, deliveries=len(deliveries))


def main() -> None:
    config = load_config(None, registries=REGISTRIES)
    config = dataclasses.replace(config, server=msgspec.structs.replace(config.server, port=int(sys.argv[1])))
    configure_logging(config.log.level, config.log.format)  # as `serve` does
    store = {"memory": MemoryStore, "none": KeepsNothing}[sys.argv[2]]()
    run(lambda: serve(config, workers=False, store=store), config.server.event_loop)


if __name__ == "__main__":
    main()
