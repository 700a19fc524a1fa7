"""OpenTelemetry traces: off unless configured; a span per intake request and per delivery attempt carrying the
ids, recorded with the SDK's in-memory exporter; and, when enabled, sent over OTLP/HTTP."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bridge.otel import Tracing
from bridge.simulators.faults import Faults
from bridge.store.base import DeliveryFilter
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

CONFIG = """
store: {{url: "sqlite:///var/bridge.db"}}
{tracing}
sources:
  contact: {{kind: form}}
destinations:
  kapture: {{vendor: kapture, sandbox: true, retry: {{schedule: [20ms, 20ms], jitter: 0}}}}
"""
MAPPINGS = {
    "contact": """
        source: contact
        destination: kapture
        action: create_ticket
        fields:
          title: "{{ payload.subject }}"
    """,
}


def in_memory(client: Any) -> InMemorySpanExporter:
    """Record the app's spans in memory from now on."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runtime(client).tracing = Tracing(provider)
    return exporter


async def test_tracing_is_off_unless_configured(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """Without a `tracing:` block the runtime has no tracing at all (the intake path pays nothing for it)."""
    client: Any = await bridge_client(write_config(CONFIG.format(tracing=""), MAPPINGS), workers=False)
    assert runtime(client).tracing is None


async def test_a_span_per_intake_and_per_attempt_carries_the_ids(write_config: ConfigFactory,
                                                                  bridge_client: AppClient) -> None:
    """A form that is refused once by the vendor then delivered gives an intake span with its event and delivery
    ids and two attempt spans for that delivery: the failed one marked as an error, the other a success."""
    client: Any = await bridge_client(write_config(CONFIG.format(tracing=""), MAPPINGS))
    exporter = in_memory(client)
    sim = runtime(client).simulators["kapture"]
    sim.faults = Faults(fail_count=1, fail_status=503)
    resp = await client.post("/hooks/contact", data={"subject": "hello"}, headers={"Accept": "application/json"})
    assert resp.status == 202
    event_id = (await resp.json())["event_id"]
    await eventually(lambda: len([s for s in exporter.get_finished_spans() if s.name == "deliver kapture"]) == 2)
    [delivery] = await runtime(client).store.list_deliveries(DeliveryFilter())
    spans = exporter.get_finished_spans()
    [intake] = [s for s in spans if s.name == "intake contact"]
    assert intake.kind == SpanKind.SERVER
    assert intake.attributes is not None
    assert intake.attributes["http.response.status_code"] == 202
    assert list(intake.attributes["ticketbridge.event_ids"]) == [event_id]  # type: ignore[arg-type]
    assert list(intake.attributes["ticketbridge.delivery_ids"]) == [delivery.id]  # type: ignore[arg-type]
    assert intake.end_time is not None and intake.start_time is not None and intake.end_time > intake.start_time
    attempts = sorted((s for s in spans if s.name == "deliver kapture"), key=lambda s: s.start_time or 0)
    assert [s.attributes["ticketbridge.classification"] for s in attempts if s.attributes] == ["retry", "success"]
    assert [s.attributes["http.response.status_code"] for s in attempts if s.attributes] == [503, 200]
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR, StatusCode.UNSET]
    for span in attempts:
        assert span.kind == SpanKind.CLIENT and span.attributes is not None
        assert (span.attributes["ticketbridge.delivery_id"], span.attributes["ticketbridge.event_id"],
                span.attributes["ticketbridge.mapping"]) == (delivery.id, event_id, "contact")


async def test_enabled_tracing_sends_spans_over_otlp(write_config: ConfigFactory, bridge_client: AppClient,
                                                     aiohttp_server: Any) -> None:
    """With `tracing.enabled` and an endpoint, the spans reach an OTLP/HTTP collector (here a stand-in that
    decodes what it receives) by the time the server has shut down."""
    received: list[ExportTraceServiceRequest] = []

    async def collect(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(body=b"", content_type="application/x-protobuf")

    collector = web.Application()
    collector.router.add_post("/v1/traces", collect)
    server = await aiohttp_server(collector)
    tracing = f'tracing: {{enabled: true, endpoint: "http://127.0.0.1:{server.port}/v1/traces", service_name: tb-test}}'
    client: Any = await bridge_client(write_config(CONFIG.format(tracing=tracing), MAPPINGS), workers=False)
    assert runtime(client).tracing is not None
    resp = await client.post("/hooks/contact", data={"subject": "hello"}, headers={"Accept": "application/json"})
    assert resp.status == 202
    await client.close()  # shutdown sends what is batched
    spans = [span for message in received for rs in message.resource_spans for ss in rs.scope_spans
             for span in ss.spans]
    services = {a.value.string_value for m in received for rs in m.resource_spans for a in rs.resource.attributes
                if a.key == "service.name"}
    assert [s.name for s in spans] == ["intake contact"]
    assert services == {"tb-test"}
