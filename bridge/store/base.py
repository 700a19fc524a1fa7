"""The `Store` interface and the records that cross it; every backend passes one contract suite."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from bridge.events import Event

DeliveryStatus = Literal["pending", "in_flight", "succeeded", "dead"]
STATUSES: tuple[DeliveryStatus, ...] = ("pending", "in_flight", "succeeded", "dead")


class NewDelivery(msgspec.Struct, kw_only=True):
    """A delivery created with its event: rendered (`pending`) or not renderable (`dead`)."""

    id: str
    mapping: str
    mapping_version: str
    destination: str
    action: str
    body: dict[str, Any] | None
    options: dict[str, Any] = {}
    status: Literal["pending", "dead"] = "pending"
    error: str | None = None


class AcceptResult(msgspec.Struct, kw_only=True):
    event_id: str
    duplicate: bool
    deliveries: int


class Claimed(msgspec.Struct, kw_only=True):
    """A delivery leased to one sender."""

    id: str
    event_id: str
    mapping: str
    destination: str
    action: str
    body: dict[str, Any]
    options: dict[str, Any]
    tries: int
    attempts: int


class ClaimBatch(msgspec.Struct, kw_only=True):
    items: list[Claimed]
    next_due_ms: int | None = None


class AttemptResult(msgspec.Struct, kw_only=True):
    """One attempt's record and the delivery state it leads to."""

    delivery_id: str
    started_at_ms: int
    duration_ms: float
    http_status: int | None
    response_excerpt: str | None
    classification: str
    error: str | None
    ticket_id: str | None = None
    ticket_key: str | None = None
    next_status: Literal["succeeded", "pending", "dead"]
    next_attempt_at_ms: int | None = None


class DeliveryRow(msgspec.Struct, kw_only=True):
    id: str
    event_id: str
    source: str
    mapping: str
    mapping_version: str
    destination: str
    action: str
    status: DeliveryStatus
    attempts: int
    tries: int
    next_attempt_at_ms: int
    created_at_ms: int
    updated_at_ms: int
    last_error: str | None
    ticket_id: str | None
    ticket_key: str | None = None


class AttemptRow(msgspec.Struct, kw_only=True):
    n: int
    started_at_ms: int
    duration_ms: float
    http_status: int | None
    response_excerpt: str | None
    classification: str
    error: str | None


class DeliveryDetail(msgspec.Struct, kw_only=True):
    delivery: DeliveryRow
    body: dict[str, Any] | None
    options: dict[str, Any]
    event: Event
    attempts: list[AttemptRow]


class DeliveryFilter(msgspec.Struct, kw_only=True):
    status: DeliveryStatus | None = None
    destination: str | None = None
    source: str | None = None
    mapping: str | None = None
    limit: int = 50
    before_id: str | None = None


class StoredMappingSet(msgspec.Struct, kw_only=True):
    """The last mapping set that loaded and passed its tests: each file's name and text, the set's
    version, and when it was saved (ms since the epoch)."""

    files: dict[str, str]
    version: str
    saved_at_ms: int


class Store(ABC):
    """Durable events, deliveries and attempts. Every method may raise StoreUnavailable."""

    @abstractmethod
    async def open(self) -> None:
        """Connect, migrate and take whatever locks or leases the backend needs."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def accept(self, event: Event, deliveries: list[NewDelivery], dedup_window_s: float) -> AcceptResult:
        """Store the event and its deliveries in one transaction, unless its dedup key was seen in the window."""

    @abstractmethod
    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> ClaimBatch:
        """Lease up to `limit` due deliveries of `destination`; with none due, say when the next one is."""

    @abstractmethod
    async def record(self, result: AttemptResult) -> None:
        """Record an attempt and move its delivery on, in one transaction."""

    @abstractmethod
    async def release(self, delivery_ids: list[str]) -> None:
        """Give leased deliveries back, due now, without counting an attempt."""

    @abstractmethod
    async def release_expired(self) -> int:
        """Give back every delivery whose lease has run out; returns how many."""

    @abstractmethod
    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRow]: ...

    @abstractmethod
    async def get_delivery(self, delivery_id: str) -> DeliveryDetail:
        """Raises NotFound."""

    @abstractmethod
    async def get_event(self, event_id: str) -> Event:
        """Raises NotFound."""

    @abstractmethod
    async def replay(
        self, delivery_ids: list[str], bodies: dict[str, tuple[dict[str, Any], str]] | None = None,
    ) -> list[str]:
        """Make succeeded or dead deliveries pending again, due now, their schedule restarted; with
        `bodies` (id → (body, mapping version)) replace what they send. Returns the ids moved."""

    async def subscribe(self, callback: Callable[[str], None]) -> None:  # noqa: B027 - optional hook
        """Call `callback(destination)` when another process adds work for `destination` ("*": perhaps any).
        A store that serves one process needs nothing here: intake wakes the lanes itself."""

    @abstractmethod
    async def counts(self) -> dict[str, dict[str, int]]:
        """destination → status → number of deliveries."""

    @abstractmethod
    async def save_mapping_set(self, files: dict[str, str], version: str) -> None:
        """Keep `files` (file name → text) as the last good mapping set, replacing the one kept before."""

    @abstractmethod
    async def load_mapping_set(self) -> StoredMappingSet | None:
        """The last good mapping set saved, or None when none was."""
