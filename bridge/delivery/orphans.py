"""Deliveries whose destination is no longer in bridge.yaml: no lane claims them, so they would wait for ever.
They are logged at start (`deliveries.orphaned`), listed by the admin API's destinations (not configured), and
an operator can mark them dead with a reason (`deliveries mark-dead`), to be replayed later or purged by
retention like any dead delivery."""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from bridge.errors import StoreUnavailable
from bridge.store.base import Store

log = structlog.get_logger("ticketbridge.delivery")

MARK_CHUNK = 500
"""Deliveries marked dead per write, so that no one write holds the store long."""


def unconfigured(configured: Iterable[str], counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Of the store's counts (destination → status → count), those of destinations not configured."""
    known = set(configured)
    return {name: by_status for name, by_status in sorted(counts.items()) if name not in known}


async def log_orphaned(configured: Iterable[str], store: Store) -> None:
    """Log `deliveries.orphaned` (a warning) for each destination not configured that has deliveries pending, in
    flight or dead, with its counts by status; a store that cannot be asked is logged and passed over."""
    try:
        counts = await store.counts()
    except StoreUnavailable as exc:
        log.warning("deliveries.orphans_unchecked", error=str(exc))
        return
    for name, by_status in unconfigured(configured, counts).items():
        if not any(by_status.get(s) for s in ("pending", "in_flight", "dead")):
            continue  # only history: retention takes it in its time
        log.warning("deliveries.orphaned", destination=name, counts=by_status,
                    note="this destination is no longer configured: nothing sends its deliveries. Put it back in "
                         "bridge.yaml, or mark them dead with `ticketbridge deliveries mark-dead --destination "
                         f"{name} --reason WHY` (retention then purges them after its `dead` limit)")


def dead_reason(by: str, reason: str) -> str:
    return f"marked dead by {by}: {reason}"


async def mark_dead(store: Store, destination: str, *, by: str, reason: str) -> int:
    """Every pending delivery of `destination` made dead with the operator's reason; how many."""
    error = dead_reason(by, reason)
    total = 0
    while True:
        marked = await store.mark_dead(destination, error, MARK_CHUNK)
        total += marked
        if marked < MARK_CHUNK:
            return total
