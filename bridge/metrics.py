"""`GET /metrics`: counters, gauges and histograms in the Prometheus text format, behind the admin token or a
read token (`admin.read_tokens`).

Intake outcomes and latency by source, events no mapping took and render failures, delivery attempts (and
their duration), ticket ids dropped from vendors' answers and delivery latency by destination, destinations
paused (by their circuit breaker or an operator), their backlog and its oldest delivery's age, the store's
health and failed commits, mapping reloads, lease take-overs, and the deliveries in the store by destination
and status (these, with the destinations' state, read at most every BACKLOG_SECONDS, so that scrapes never load
the store).

Written by hand rather than with prometheus_client: every figure already lives in the Runtime (the console
reads the same ones), tests build many apps in one process where that library's registry is global, and
its histograms take a lock per observation where ours, observed on the event loop only, need none.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable

from aiohttp import web

from bridge import __version__
from bridge.appkeys import RUNTIME
from bridge.console.api import error, lane_states
from bridge.console.auth import api_on, identify
from bridge.console.models import LaneState
from bridge.errors import StoreUnavailable
from bridge.histograms import HistogramFamily
from bridge.runtime import Runtime
from bridge.store.base import STATUSES

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
    "delivery.ticket_id_dropped": ("ticket_ids_dropped", ("destination",)),
    "delivery.ticket_id_missing": ("ticket_ids_missing", ("destination",)),
    "delivery.follow_up_in_doubt": ("follow_ups_in_doubt", ("destination", "handling")),
    "events.unmatched": ("unmatched", ("source", "reason")),
    "render.failed": ("render_failures", ("mapping",)),
    "render.offloaded": ("render_offloaded", ("source",)),
    "leases.taken_over": ("takeovers", ()),
    "sns.certificate_fetched": ("sns_certificate_fetches", ("source", "result")),
    "sns.certificate_refused": ("sns_certificate_refusals", ("source", "reason")),
}


def _histogram(name: str, help_text: str, family: HistogramFamily) -> list[str]:
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    for key, hist in sorted(family.by.items()):
        labels = {family.label: key}
        out += [_line(f"{name}_bucket", {**labels, "le": le}, n) for le, n in hist.cumulative()]
        out += [_line(f"{name}_sum", labels, hist.total), _line(f"{name}_count", labels, hist.n)]
    return out


def _sample(name: str, tags: dict[str, str]) -> tuple[str, dict[str, str]] | None:
    """The family a labelled counter belongs to and its labels; None for a counter /metrics does not show."""
    if name.startswith("intake."):
        labels = {"source": tags.get("source", ""), "outcome": name.removeprefix("intake.")}
        if "reason" in tags:  # why a post was ignored: a stable word, such as not_a_message:delivery
            labels["reason"] = tags["reason"]
        return "intake", labels
    if name.startswith("mappings.reload"):
        return "reloads", {"result": "ok" if name == "mappings.reloaded" else "failed"}
    if name not in LABELLED:
        return None
    family, keys = LABELLED[name]
    return family, {key: tags.get(key, "") for key in keys}


Backlog = tuple[dict[str, dict[str, int]], dict[str, int]]
"""Deliveries by destination and status, and each destination's oldest unsettled delivery (creation ms)."""


def render(rt: Runtime, backlog: Backlog | None, lanes: list[LaneState]) -> str:
    """The exposition text for the runtime's counters and state; `backlog` is the store's deliveries by
    destination and status and each destination's oldest unsettled delivery (None: the store did not say);
    `lanes` each destination's state as every process on the store sees it (`lane_states`)."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for (name, labels), value in sorted(rt.labelled.items()):
        sample = _sample(name, dict(labels))
        if sample is not None:
            samples[sample[0]].append((sample[1], value))
    intake, reloads, attempts = samples["intake"], samples["reloads"], samples["attempts"]
    escaped, handler_errors, purged = samples["escaped"], samples["handler_errors"], samples["purged"]
    latencies = rt.latencies
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
    out += _family("ticketbridge_sns_certificate_fetches_total", "counter",
                   "SNS signing certificate fetches for SES sources, by source and result (ok, failed): the "
                   "requests this machine sent to AWS's SNS hosts.", samples["sns_certificate_fetches"])
    out += _family("ticketbridge_sns_certificate_refusals_total", "counter",
                   "SES requests answered without fetching the SNS certificate they named, by reason: remembered "
                   "(the URL, or its host, failed just now), rate (requests from the client's public address asked "
                   "for more certificates not yet kept than an address is allowed a second; a private or loopback "
                   "address, such as a reverse proxy's, has no such budget), busy (as many fetches under way and "
                   "waiting as allowed: behind a proxy, the bound on a flood).",
                   samples["sns_certificate_refusals"])
    out += _histogram("ticketbridge_intake_duration_seconds",
                      "Time from a request to /hooks/{source} to its answer, by source.", latencies.intake)
    out += _family("ticketbridge_events_unmatched_total", "counter",
                   "Events stored that no mapping took, by source and reason (skipped: every mapping's `when` "
                   "was false; no_mapping: no mapping takes the source).", samples["unmatched"])
    out += _family("ticketbridge_render_failures_total", "counter",
                   "Deliveries dead at intake because their mapping did not render the event, by mapping.",
                   samples["render_failures"])
    out += _family("ticketbridge_render_offloaded_total", "counter",
                   "Requests whose mappings' render ran past its slice of the event loop and was done again in the "
                   "parser thread, by source: templates that loop over large payloads.", samples["render_offloaded"])
    out += _family("ticketbridge_delivery_attempts_total", "counter",
                   "Delivery attempts by destination and classification (success, retry, permanent, auth; "
                   "unknown, reconciled, held).", attempts)
    out += _family("ticketbridge_delivery_ticket_ids_dropped_total", "counter",
                   "Successes whose ticket id was not kept, by destination: the answer's was no id (an object, an "
                   "array, a boolean, a fraction, empty text, text or a number over 256 characters), or a minimal "
                   "record left out one not every store takes. A conversation's create so answered leaves its "
                   "thread without a ticket, and its next message creates another.", samples["ticket_ids_dropped"])
    out += _family("ticketbridge_delivery_ticket_ids_missing_total", "counter",
                   "Successes whose answer named no ticket (no id where the vendor gives one: a create's), by "
                   "destination: the vendor made a ticket the delivery cannot name. A conversation's create so "
                   "answered leaves its thread without a ticket, and its next message is sent as a new ticket.",
                   samples["ticket_ids_missing"])
    out += _family("ticketbridge_delivery_follow_ups_in_doubt_total", "counter",
                   "Follow-ups (replies, updates) whose earlier send's outcome was unknown, by destination and what "
                   "was done: held (for an operator: on_unknown hold or reconcile, as no vendor lets a reply be "
                   "found again) or resent (on_unknown resend: a possible duplicate on the ticket).",
                   samples["follow_ups_in_doubt"])
    out += _histogram("ticketbridge_delivery_attempt_duration_seconds",
                      "How long each request to a destination took, by destination.", latencies.attempt)
    out += _histogram("ticketbridge_delivery_latency_seconds",
                      "Time from a delivery's creation to its success, retries included, by destination.",
                      latencies.delivery)
    out += _family("ticketbridge_destination_paused", "gauge",
                   "1 while a destination's deliveries are held back: its circuit breaker is open or half-open, "
                   "or an operator paused it.",
                   [({"destination": lane.name}, 1 if lane.paused or lane.breaker != "closed" else 0)
                    for lane in lanes if lane.running])
    if backlog is not None:
        out += _family("ticketbridge_destination_backlog", "gauge",
                       "Deliveries not yet settled (pending or in flight), by destination.",
                       [({"destination": lane.name}, lane.backlog) for lane in lanes])
        out += _family("ticketbridge_destination_oldest_pending_age_seconds", "gauge",
                       "Age of the destination's oldest delivery not yet settled (0 with none).",
                       [({"destination": lane.name}, round(lane.oldest_pending_age_s or 0.0, 3)) for lane in lanes])
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
    out += _family("ticketbridge_mapping_reload_failing", "gauge",
                   "1 while the last reload of the mappings folder failed (the set loaded before still serves).",
                   [({}, 1 if rt.mapping_status.last_result == "failed" else 0)])
    out += _family("ticketbridge_lease_takeovers_total", "counter",
                   "Deliveries given back to the queue, in doubt, from a sender that died or stalled: those an "
                   "earlier process left in flight, given back at start, and those whose lease ran out; another "
                   "sender takes them over.", samples["takeovers"] or [({}, 0)])
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
        # Every status of every destination, 0 when the store has none: an alert comparing with a while ago
        # (a first dead delivery) needs the series to exist before its first row does.
        counts = backlog[0]
        out += _family("ticketbridge_deliveries", "gauge", "Deliveries in the store by destination and status.",
                       [({"destination": dest, "status": status}, counts.get(dest, {}).get(status, 0))
                        for dest in sorted(set(counts) | set(rt.config.destinations))
                        for status in sorted(set(STATUSES) | set(counts.get(dest, {})))])
    return "\n".join(out) + "\n"


async def _store_view(rt: Runtime) -> tuple[Backlog | None, list[LaneState]]:
    """The store's deliveries by destination and status with each destination's oldest unsettled one, and each
    destination's state (its gate, shared through the store on PostgreSQL): read at most every
    BACKLOG_SECONDS; while the store fails, the last reading (or none)."""
    cached = rt.backlog_cache
    if cached is not None and time.monotonic() - cached[0] < BACKLOG_SECONDS:
        return cached[1], cached[2]
    backlog: Backlog | None = None
    if rt.store is not None:
        try:
            backlog = await rt.store.counts(), await rt.store.oldest_pending()
        except StoreUnavailable:
            return (cached[1], cached[2]) if cached else (None, [])
    counts, oldest = backlog if backlog is not None else ({}, {})
    try:
        lanes = await lane_states(rt, counts, oldest)
    except StoreUnavailable:  # the shared gates live in the store: without it, no destination state to show
        return (cached[1], cached[2]) if cached else (backlog, [])
    rt.backlog_cache = (time.monotonic(), backlog, lanes)
    return backlog, lanes


async def metrics(request: web.Request) -> web.Response:
    rt = request.app[RUNTIME]
    admin = rt.config.admin
    if not api_on(admin):
        return error(404, "/metrics is off: set admin.token (or admin.read_tokens) in the config")
    if identify(request.headers.get("Authorization", ""), admin) is None:
        return error(401, "/metrics needs a token: Authorization: Bearer <admin.token or a read token>")
    backlog, lanes = await _store_view(rt)
    return web.Response(text=render(rt, backlog, lanes), content_type="text/plain",
                        headers={"X-Content-Type-Options": "nosniff"})
