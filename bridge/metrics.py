"""`GET /metrics`: counters and gauges in the Prometheus text format, behind the admin token.

Intake outcomes by source, delivery attempts by destination and classification, destinations paused by
their circuit breaker, the store's health and failed commits, mapping reloads, and the deliveries
waiting in the store by destination and status (read at most every BACKLOG_SECONDS, so that scrapes
never load the store).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable

from aiohttp import web

from bridge import __version__
from bridge.admin import refuse
from bridge.appkeys import RUNTIME
from bridge.errors import StoreUnavailable
from bridge.runtime import Runtime

BACKLOG_SECONDS = 10.0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _line(name: str, labels: dict[str, str], value: float) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    text = str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))  # in full
    return f"{name}{{{inner}}} {text}" if inner else f"{name} {text}"


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *(_line(name, labels, v) for labels, v in samples)]


# A labelled counter's family in render() and the labels it keeps, by counter name; intake.* and mappings.reload*
# counters take theirs from the name (see _sample).
LABELLED: dict[str, tuple[str, tuple[str, ...]]] = {
    "escaped": ("escaped", ("source", "where")),
    "handler_error": ("handler_errors", ("source",)),
    "retention.purged": ("purged", ("kind",)),
    "delivery.attempt": ("attempts", ("destination", "classification")),
}


def _sample(name: str, tags: dict[str, str]) -> tuple[str, dict[str, str]] | None:
    """The family a labelled counter belongs to and its labels; None for a counter /metrics does not show."""
    if name.startswith("intake."):
        return "intake", {"source": tags.get("source", ""), "outcome": name.removeprefix("intake.")}
    if name.startswith("mappings.reload"):
        return "reloads", {"result": "ok" if name == "mappings.reloaded" else "failed"}
    if name not in LABELLED:
        return None
    family, keys = LABELLED[name]
    return family, {key: tags.get(key, "") for key in keys}


def render(rt: Runtime, backlog: dict[str, dict[str, int]] | None) -> str:
    """The exposition text for the runtime's counters and state."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for (name, labels), value in sorted(rt.labelled.items()):
        sample = _sample(name, dict(labels))
        if sample is not None:
            samples[sample[0]].append((sample[1], value))
    intake, reloads, attempts = samples["intake"], samples["reloads"], samples["attempts"]
    escaped, handler_errors, purged = samples["escaped"], samples["handler_errors"], samples["purged"]
    out = _family("ticketbridge_info", "gauge", "The running version.", [({"version": __version__}, 1)])
    out += _family("ticketbridge_intake_requests_total", "counter",
                   "Requests to /hooks by source and outcome (accepted, duplicate, spam, rejected.<status>, ...).",
                   intake)
    out += _family("ticketbridge_intake_escaped_total", "counter",
                   "Requests stored with text that was not UTF-8 kept as escapes, by source and where it was "
                   "(headers, payload).", escaped)
    out += _family("ticketbridge_intake_handler_errors_total", "counter",
                   "Requests a handler failed on unexpectedly, answered 400 and logged with the traceback: a bug "
                   "to report.", handler_errors)
    out += _family("ticketbridge_delivery_attempts_total", "counter",
                   "Delivery attempts by destination and classification (success, retry, permanent, auth; "
                   "unknown, reconciled, held).", attempts)
    lanes = rt.dispatcher.lanes if rt.dispatcher is not None else {}
    out += _family("ticketbridge_destination_paused", "gauge",
                   "1 while a destination's circuit breaker holds its deliveries back.",
                   [({"destination": name}, 0 if lane.breaker.state == "closed" else 1)
                    for name, lane in sorted(lanes.items())])
    if rt.store is not None:
        problem = rt.store.problem()
        out += _family("ticketbridge_store_up", "gauge",
                       "1 while the store commits; 0 with problem=lost (its file is gone: restart) or "
                       "problem=failing (commits fail, e.g. a full disk).",
                       [({"problem": problem.kind if problem else ""}, 0 if problem else 1)])
        out += _family("ticketbridge_store_commit_failures_total", "counter",
                       "Commits the store could not make.", [({}, rt.store.commit_failures)])
    out += _family("ticketbridge_retention_purged_total", "counter",
                   "Rows (events, deliveries, attempts, dedup) and attachment files deleted by the retention sweep.",
                   purged)
    out += _family("ticketbridge_mapping_reloads_total", "counter", "Hot reloads of the mappings folder.", reloads)
    out += _family("ticketbridge_mappings_loaded_timestamp_seconds", "gauge",
                   "When the mapping set in force was loaded.", [({"version": rt.mappings.version},
                                                                 rt.mappings.loaded_at.timestamp())])
    out += _family("ticketbridge_mappings_degraded", "gauge",
                   "1 while the mappings folder does not load and the last good set kept in the store serves.",
                   [({}, 1 if rt.mapping_status.source == "last_good" else 0)])
    out += _family("ticketbridge_config_restart_needed", "gauge",
                   "1 when bridge.yaml has changed since the server started (its changes need a restart).",
                   [({}, 0 if rt.mapping_status.config_changed_at is None else 1)])
    conns = rt.connections
    out += _family("ticketbridge_connections_open", "gauge", "Client connections open now.", [({}, conns.open)])
    out += _family("ticketbridge_connections_refused_total", "counter",
                   "Connections answered 503 at once because server.max_connections were open.",
                   [({}, conns.refused)])
    out += _family("ticketbridge_connections_timed_out_total", "counter",
                   "Connections closed for reading too slowly, by phase (idle, header, body).",
                   [({"reason": reason}, n) for reason, n in sorted(conns.timed_out.items())])
    out += _family("ticketbridge_accept_errors_total", "counter",
                   "Connections the OS could not accept (out of file descriptors or memory).",
                   [({}, conns.accept_errors)])
    if backlog is not None:
        out += _family("ticketbridge_deliveries", "gauge", "Deliveries in the store by destination and status.",
                       [({"destination": dest, "status": status}, n)
                        for dest, by in sorted(backlog.items()) for status, n in sorted(by.items())])
    return "\n".join(out) + "\n"


async def _backlog(rt: Runtime) -> dict[str, dict[str, int]] | None:
    if rt.store is None:
        return None
    cached = rt.backlog_cache
    if cached is not None and time.monotonic() - cached[0] < BACKLOG_SECONDS:
        return cached[1]
    try:
        counts = await rt.store.counts()
    except StoreUnavailable:
        return cached[1] if cached else None
    rt.backlog_cache = (time.monotonic(), counts)
    return counts


async def metrics(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    refused = refuse(request, rt.config.admin.token)
    if refused is not None:
        return refused
    return web.Response(text=render(rt, await _backlog(rt)), content_type="text/plain",
                        headers={"X-Content-Type-Options": "nosniff"})
