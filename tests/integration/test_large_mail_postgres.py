"""A large text mail through the whole app over HTTP, stored on PostgreSQL: its event (the text kept as `text`,
`stripped_text` and in the provider's fields) and its delivery's body (which quotes the text) are sent to the server
a piece at a time, so that no turn of the event loop, which answers every other request, sends them whole."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from bridge.store.base import DeliveryFilter
from bridge.store.postgres import PostgresStore
from tests.acceptance.test_large_mail_store import CONFIG, ENV, MAPPINGS, large_text_mail, posted_without_stalling
from tests.conftest import AppClient, ConfigFactory, runtime
from tests.integration.processes import DSN
from tests.integration.store.large_values import LINE

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(write_config: ConfigFactory, bridge_client: AppClient, pg_schema: str) -> Any:
    store = PostgresStore(DSN, schema=pg_schema)
    return await bridge_client(write_config(CONFIG, MAPPINGS, ENV), store=store, workers=False)


async def test_a_large_text_mail_is_stored_on_postgresql_without_holding_the_event_loop(client: Any) -> None:
    """A 6 MiB text mail (about 18 MiB of event, and a body quoting the text) is answered 202 once stored, no
    callback the loop runs meanwhile taking more than a few milliseconds of its CPU (reading the body: 5-6 ms); the
    driver, given its values whole, held the loop about 60 ms. Event and body read back as they were sent, their
    non-ASCII text and a NUL included."""
    mail = large_text_mail(LINE, "a NUL: \x00.")
    text = msgspec.json.decode(mail)["TextBody"]
    event_id, _ = await posted_without_stalling(client, mail)
    store = runtime(client).store
    event = await store.get_event(event_id)
    assert event.payload["text"] == text
    (row,) = await store.list_deliveries(DeliveryFilter())
    assert (await store.get_delivery(row.id)).body["ticket_details"] == event.payload["stripped_text"]
