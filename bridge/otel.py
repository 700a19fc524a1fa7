"""The spans of bridge.tracing, recorded with the OpenTelemetry SDK (the `otel` extra; imported only while
tracing is enabled)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from bridge import __version__
from bridge.config import TracingConfig

if TYPE_CHECKING:
    from bridge.delivery.dispatcher import Attempted

ERROR = Status(StatusCode.ERROR)


class Tracing:
    """Records the spans on a provider (the SDK's, with whatever processors and exporters it was given)."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("ticketbridge", __version__)

    def intake(self, source: str, elapsed_s: float, status: int, ids: tuple[list[str], list[str]] | None) -> None:
        """A request to /hooks/{source} that took `elapsed_s` and was answered `status`; `ids`: the events
        stored (or found duplicate) and the deliveries made."""
        end = time.time_ns()
        attributes: dict[str, Any] = {"ticketbridge.source": source, "http.request.method": "POST",
                                      "http.route": "/hooks/{source}", "http.response.status_code": status}
        if ids is not None:
            attributes["ticketbridge.event_ids"] = ids[0]
            attributes["ticketbridge.delivery_ids"] = ids[1]
        span = self.tracer.start_span(f"intake {source}", kind=SpanKind.SERVER,
                                      start_time=end - int(elapsed_s * 1e9), attributes=attributes)
        if status >= 500:
            span.set_status(ERROR)
        span.end(end_time=end)

    def attempt(self, attempt: Attempted) -> None:
        """One delivery attempt, from its start for its duration (a follow-up settled unsent: no time)."""
        start = attempt.started_at_ms * 1_000_000
        attributes: dict[str, Any] = {
            "ticketbridge.delivery_id": attempt.delivery_id, "ticketbridge.event_id": attempt.event_id,
            "ticketbridge.mapping": attempt.mapping, "ticketbridge.destination": attempt.destination,
            "ticketbridge.classification": attempt.classification}
        if attempt.http_status is not None:
            attributes["http.response.status_code"] = attempt.http_status
        span = self.tracer.start_span(f"deliver {attempt.destination}", kind=SpanKind.CLIENT, start_time=start,
                                      attributes=attributes)
        if attempt.classification not in {"success", "skipped"}:
            span.set_status(ERROR)
        span.end(end_time=start + int((attempt.duration_s or 0.0) * 1e9))

    def shutdown(self) -> None:
        """Send what is batched and stop (at server shutdown)."""
        self.provider.shutdown()



def exporting(config: TracingConfig) -> Tracing:
    """Tracing that sends its spans over OTLP/HTTP, batched on the SDK's own thread."""
    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name,
                                                        "service.version": __version__}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=config.endpoint)))
    return Tracing(provider)
