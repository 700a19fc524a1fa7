"""The shipped default config and example mappings, run whole against the built-in sandboxes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_config
from bridge.registries import REGISTRIES
from bridge.store.base import DeliveryFilter
from tests.conftest import AppClient, eventually, runtime


async def test_each_example_mapping_delivers_to_its_sandbox(bridge_client: AppClient, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A web form, an email, a chat message and a status change each become a ticket (or update) in its sandbox."""
    monkeypatch.chdir(tmp_path)
    client = await bridge_client(load_config(None, environ={}, cwd=tmp_path, registries=REGISTRIES))
    sims: dict[str, Any] = runtime(client).simulators
    assert set(sims) == {"kapture", "leadsquared", "netgroot"}

    async def post(source: str, **kwargs: Any) -> None:
        resp = await client.post(f"/hooks/{source}", **kwargs)
        assert resp.status == 202, await resp.text()
        assert (await resp.json())["deliveries"] == 1

    await post("service-request", data={"email": "asha@example.com", "subject": "Router down", "message": "Help"})
    await post("support-mail", json={"from": "asha@example.com", "subject": "Invoice", "text": "Hi",
                                     "message_id": "<m1@x>"})
    await post("chat", json={"from": "+919876543210", "text": "My bill is wrong", "message_id": "c1"})
    await eventually(lambda: len(sims["kapture"].tickets) == 1)
    ticket = sims["kapture"].tickets[0]
    await post("status-changes", json={"ticket_id": ticket["ticketId"], "status": "closed", "note": "done"})

    async def all_succeeded() -> bool:
        rows = await runtime(client).store.list_deliveries(DeliveryFilter())
        return len(rows) == 4 and {r.status for r in rows} == {"succeeded"}

    await eventually(all_succeeded)
    assert sims["leadsquared"].tickets[0]["Fields"][0] == {"SchemaName": "LeadDetail.EmailAddress",
                                                           "Value": "asha@example.com"}
    assert sims["netgroot"].tickets[0]["subject"] == "Billing Issue"
    assert (ticket["substatus"], ticket["comments"]) == ("CL", ["done"])


async def test_the_readmes_two_emails_make_one_ticket_and_a_comment(bridge_client: AppClient, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped support-mail route threads: the README's first email creates a Kapture ticket, its reply
    becomes a comment on it."""
    monkeypatch.chdir(tmp_path)
    client = await bridge_client(load_config(None, environ={}, cwd=tmp_path, registries=REGISTRIES))
    for payload in ({"from": "asha@example.com", "subject": "Router down", "message_id": "<m1@example.com>",
                     "stripped_text": "No internet since morning"},
                    {"from": "asha@example.com", "subject": "Re: Router down", "message_id": "<m2@example.com>",
                     "in_reply_to": "<m1@example.com>", "references": ["<m1@example.com>"],
                     "stripped_text": "Still down"}):
        resp = await client.post("/hooks/support-mail", json=payload)
        assert resp.status == 202, await resp.text()
    kapture = runtime(client).simulators["kapture"]
    await eventually(lambda: len(kapture.tickets) == 1 and kapture.tickets[0]["comments"] == ["Still down"])
    assert kapture.tickets[0]["fields"]["ticket_details"] == "No internet since morning"
