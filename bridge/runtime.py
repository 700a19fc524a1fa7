"""What the running server holds: config, store, the mapping set in force, handlers and the dispatcher."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from bridge.config import Config
from bridge.connections import ConnectionStats
from bridge.delivery.dispatcher import Dispatcher
from bridge.durations import parse_duration
from bridge.histograms import Latencies
from bridge.mapping.mappingset import MappingSet
from bridge.mapping.paths import Path, compile_path
from bridge.store.base import Store
from handlers.base import Handler

if TYPE_CHECKING:
    from bridge.otel import Tracing
    from bridge.reload import MappingReloader


CountKey = tuple[str, tuple[tuple[str, str], ...]]
"""A count's name and its labels, sorted: its key in `Runtime.labelled`, as /metrics shows it."""


def count_key(name: str, **labels: str) -> CountKey:
    return (name, tuple(sorted(labels.items())))


INTAKE_OUTCOMES = ("intake.accepted", "intake.duplicate", "intake.spam")


@dataclass
class Source:
    """A configured source, ready to take requests."""

    name: str
    handler: Handler
    dedup_path: Path | None
    dedup_window_s: float
    outcomes: dict[str, CountKey] = field(init=False, repr=False)
    """The count key of each of INTAKE_OUTCOMES for this source, made once: counted per event with `Runtime.add`."""

    def __post_init__(self) -> None:
        self.outcomes = {name: count_key(name, source=self.name) for name in INTAKE_OUTCOMES}

    @classmethod
    def build(cls, name: str, handler: Handler) -> Source:
        opts = handler.options
        path = compile_path(opts.dedup, frozenset({"payload", "headers"})) if opts.dedup else None
        return cls(name, handler, path, parse_duration(opts.dedup_window))


@dataclass
class MappingStatus:
    """How hot reload is going: what the admin API shows beside the set in force."""

    reloads: int = 0
    failures: int = 0
    last_attempt_at: datetime | None = None
    last_result: Literal["ok", "failed"] | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    # Where the set in force came from: the folder, or (after a start with a broken folder) the last good
    # set kept in the store; with the latter, `folder_error` says what is wrong with the folder.
    source: Literal["folder", "last_good"] = "folder"
    folder_error: str | None = None
    stored_version: str | None = None
    stored_files: dict[str, str] | None = None
    stored_at: datetime | None = None
    config_changed_at: datetime | None = None  # bridge.yaml differs from the one the server started with


@dataclass
class Runtime:
    config: Config
    sources: dict[str, Source]
    mappings: MappingSet
    store: Store | None = None
    dispatcher: Dispatcher | None = None
    simulators: dict[str, Any] = field(default_factory=dict)
    sandbox_urls: dict[str, str] = field(default_factory=dict)
    labelled: dict[CountKey, int] = field(default_factory=dict)
    # for /metrics: (when, (destination → status → count, destination → oldest unsettled delivery's creation
    # ms) or None when the store did not say, each destination's state)
    backlog_cache: tuple[float, tuple[dict[str, dict[str, int]], dict[str, int]] | None, list[Any]] | None = None
    mapping_status: MappingStatus = field(default_factory=MappingStatus)
    reloader: MappingReloader | None = None
    fatal: str | None = None  # why the server stops by itself (the store was lost): it then exits non-zero
    on_fatal: Callable[[], None] | None = None  # how to stop it
    connections: ConnectionStats = field(default_factory=ConnectionStats)
    latencies: Latencies = field(default_factory=Latencies)  # for /metrics
    tracing: Tracing | None = None  # OpenTelemetry spans, while tracing.enabled
    # each call site's (name, *labels in its order) -> its key in `labelled`
    _label_keys: dict[tuple[Any, ...], CountKey] = field(default_factory=dict, repr=False)

    def count(self, name: str, n: int = 1, **labels: str) -> None:
        """Count `name` by its labels (source, destination, …), as /metrics shows it."""
        given = (name, *labels.items())
        key = self._label_keys.get(given)
        if key is None:  # a call site's first call: its labels come in its own order, sorted once
            key = self._label_keys[given] = count_key(name, **labels)
        self.labelled[key] = self.labelled.get(key, 0) + n

    def add(self, key: CountKey, n: int = 1) -> None:
        """`count` under a key made once (`count_key`): a count on every request, without its labels gathered and
        looked up on each."""
        self.labelled[key] = self.labelled.get(key, 0) + n

    @property
    def counters(self) -> dict[str, int]:
        """Each name's count summed over its labels."""
        totals: dict[str, int] = {}
        for (name, _labels), n in self.labelled.items():
            totals[name] = totals.get(name, 0) + n
        return totals

    def sandbox_url(self, vendor: str) -> str:
        """Where the sandbox simulator of `vendor` listens (its own loopback port, open while deliveries run)."""
        try:
            return self.sandbox_urls[vendor]
        except KeyError:
            raise RuntimeError(f"the {vendor} sandbox is not running") from None
