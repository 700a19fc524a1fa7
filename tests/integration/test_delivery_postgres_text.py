"""Text a store refuses, sent by a vendor, through the whole app on PostgreSQL: a NUL (which PostgreSQL's `text`
refuses) or a header byte that is not UTF-8 (which no store takes). Each attempt is recorded with it written out
(`\\x00`, `\\xe9`), never a record the store refuses on every try while the delivery stays in flight, /readyz
flaps, and the answer is lost."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from bridge.store.base import DeliveryDetail
from bridge.store.postgres import PostgresStore
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.fixtures.kapture_answering import Answer
from tests.fixtures.kapture_answering import delivered as answering
from tests.integration.processes import DSN

pytestmark = pytest.mark.integration


async def delivered(write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, pg_schema: str,
                    answer: Answer) -> tuple[Any, DeliveryDetail]:
    """One event through an app on PostgreSQL whose Kapture answers with `answer`, once it is settled."""
    return await answering(write_config, bridge_client, aiohttp_server, PostgresStore(DSN, schema=pg_schema), answer)


async def test_a_ticket_id_holding_a_nul_is_a_success_without_that_id(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, pg_schema: str,
) -> None:
    """Kapture answers a success whose ticket id holds `\\u0000`: the success is recorded at once, without that
    id (no follow-up could name the ticket with it), the error saying why; the store stays ready."""
    async def answer(request: web.Request) -> web.Response:
        return web.json_response([{"status": "success", "ticket_id": "71\u00003"}])

    client, detail = await delivered(write_config, bridge_client, aiohttp_server, pg_schema, answer)
    assert (detail.delivery.status, detail.delivery.ticket_id) == ("succeeded", None)
    (attempt,) = detail.attempts
    assert attempt.classification == "success"
    assert attempt.error == ("the answer's ticket id at `ticket_id` is text holding a NUL character (\\x00), not kept "
                             "(an id is a whole number or non-blank text of at most 256 characters, no NUL); the "
                             "delivery keeps no ticket id")
    assert runtime(client).store.problem() is None
    assert (await client.get("/readyz")).status == 200


async def test_a_failure_message_holding_a_nul_is_kept_written_out(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, pg_schema: str,
) -> None:
    """Kapture refuses the ticket with a message holding `\\u0000`: the delivery is dead at once, its error and
    its attempt's error keeping the message written out (`\\0~`, the NUL `\\x00`); the store stays ready."""
    async def answer(request: web.Request) -> web.Response:
        return web.json_response([{"status": "failed", "message": "bad\u0000field"}])

    client, detail = await delivered(write_config, bridge_client, aiohttp_server, pg_schema, answer)
    assert detail.delivery.status == "dead"
    assert detail.delivery.last_error == "\\0~kapture: HTTP 200: bad\\x00field"
    (attempt,) = detail.attempts
    assert (attempt.classification, attempt.error) == ("permanent", "\\0~kapture: HTTP 200: bad\\x00field")
    assert runtime(client).store.problem() is None


async def test_an_answer_holding_a_nul_byte_is_kept_written_out(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, pg_schema: str,
) -> None:
    """Kapture answers 400 with a body holding a NUL byte (not JSON): the delivery is dead, the attempt's excerpt
    and error keeping that body written out (`\\0~`, the NUL `\\x00`); the store stays ready."""
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=400, body=b"no\x00pe", content_type="text/plain")

    client, detail = await delivered(write_config, bridge_client, aiohttp_server, pg_schema, answer)
    assert detail.delivery.status == "dead"
    (attempt,) = detail.attempts
    assert attempt.response_excerpt == "\\0~no\\x00pe"
    assert attempt.error is not None and attempt.error.startswith("\\0~") and attempt.error.endswith("no\\x00pe")
    assert runtime(client).store.problem() is None


async def test_an_answer_header_holding_a_byte_that_is_not_utf8_is_kept_written_out(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, pg_schema: str,
) -> None:
    """Kapture answers with a header value holding a byte that is not UTF-8 (aiohttp reads it as a lone
    surrogate, which no store takes): the attempt is recorded, the header kept with the byte written `\\\\xe9`."""
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        transport = request.transport
        assert transport is not None
        body = b'[{"status": "success", "ticket_id": 7}]'
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Note: caf\xe9\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        transport.close()
        return web.StreamResponse()

    client, detail = await delivered(write_config, bridge_client, aiohttp_server, pg_schema, answer)
    assert (detail.delivery.status, detail.delivery.ticket_id) == ("succeeded", "7")
    (attempt,) = detail.attempts
    assert attempt.exchange is not None and attempt.exchange["response_headers"]["X-Note"] == "caf\\xe9"
    assert runtime(client).store.problem() is None
