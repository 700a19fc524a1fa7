"""Each vendor through the whole app over real HTTP, against its simulator: every action succeeds, and every
documented failure is classified right (a failure inside HTTP 200 is no success; a bad key is auth, not retried)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
import structlog

from bridge.simulators.faults import Faults
from bridge.simulators.kapture import KaptureSimulator
from bridge.simulators.leadsquared import LeadSquaredSimulator
from bridge.simulators.netgroot import NetgrootSimulator
from bridge.store.base import DeliveryDetail, DeliveryFilter
from bridge.vendors.kapture import UPDATE_PATH, KaptureAdapter, KaptureOptions
from bridge.vendors.leadsquared import SANDBOX_ACCESS_KEY
from bridge.vendors.netgroot import CREATE_PATH as NETGROOT_CREATE
from bridge.vendors.netgroot import SANDBOX_TOKEN as NETGROOT_DEMO
from bridge.vendors.netgroot import SUBJECTS_PATH
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

FAST_RETRY = "retry: {schedule: [50ms, 50ms, 50ms], jitter: 0}"


def config(destination: str) -> str:
    return f"""
    server: {{shutdown_grace_seconds: 1}}
    store: {{url: "sqlite:///var/bridge.db"}}
    sources:
      events: {{kind: json}}
    destinations:
      dest: {destination}
    """


def mapping(action: str, fields: str, options: str = "") -> dict[str, str]:
    return {"m": f"""
        source: events
        destination: dest
        action: {action}
        {options}
        fields:
        {fields}
    """}


async def start(write_config: ConfigFactory, bridge_client: AppClient, destination: str,
                mappings: dict[str, str]) -> Any:
    return await bridge_client(write_config(config(destination), mappings))


async def post(client: Any, payload: dict[str, Any]) -> None:
    resp = await client.post("/hooks/events", json=payload)
    assert resp.status == 202, await resp.text()


async def deliveries(client: Any) -> list[DeliveryDetail]:
    store = runtime(client).store
    rows = await store.list_deliveries(DeliveryFilter(limit=100))
    return [await store.get_delivery(r.id) for r in reversed(rows)]


async def settle(client: Any, n: int = 1) -> list[DeliveryDetail]:
    """Wait until `n` deliveries are succeeded or dead, then give them (oldest first)."""

    async def done() -> bool:
        found = await deliveries(client)
        return len(found) == n and all(d.delivery.status in ("succeeded", "dead") for d in found)

    await eventually(done)
    # Succeeded and dead are final: no claim hands such a delivery out again, so no attempt can follow.
    return await deliveries(client)


def summary(detail: DeliveryDetail) -> tuple[str, list[tuple[str, int | None]]]:
    return detail.delivery.status, [(a.classification, a.http_status) for a in detail.attempts]


# -- Kapture ------------------------------------------------------------------------------------

KAPTURE = f"{{vendor: kapture, sandbox: true, {FAST_RETRY}}}"
UPDATE_FIELDS = """
          ticket_id: {from: payload.ticket_id}
          sub_status: {from: payload.status}
          comment: {from: payload.note, default: ""}
          callback_time: {from: payload.callback, on_missing: omit}
"""


async def test_kapture_update_succeeds(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """A status change updates the Kapture ticket: sub-status, comment and callback set, the ticket id stored."""
    client = await start(write_config, bridge_client, KAPTURE, mapping("update_ticket", UPDATE_FIELDS))
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    ticket = sim.seed("Router down", sim.clock())
    await post(client, {"ticket_id": ticket["ticketId"], "status": "CL", "note": "Replaced",
                        "callback": "2024-04-22 14:31:33"})
    [detail] = await settle(client)
    assert summary(detail) == ("succeeded", [("success", 200)])
    assert detail.delivery.ticket_id == ticket["ticketId"]
    assert (ticket["substatus"], ticket["comments"], ticket["callback_time"]) == ("CL", ["Replaced"],
                                                                                 "2024-04-22 14:31:33")


async def test_kapture_update_of_an_unknown_ticket_is_permanent_despite_http_200(
    write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """Kapture's "No Data found/ticket_id is missing" inside an HTTP 200 is a permanent failure, not a success."""
    client = await start(write_config, bridge_client, KAPTURE, mapping("update_ticket", UPDATE_FIELDS))
    await post(client, {"ticket_id": "999", "status": "CL"})
    [detail] = await settle(client)
    assert summary(detail) == ("dead", [("permanent", 200)])
    assert detail.delivery.last_error == "kapture: HTTP 200: No Data found/ticket_id is missing"


async def test_kapture_update_with_a_bad_date_is_refused_before_sending(
    write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """A callback time not in yyyy-MM-dd HH:mm:ss is a dead delivery naming the field and value; nothing is sent."""
    client = await start(write_config, bridge_client, KAPTURE, mapping("update_ticket", UPDATE_FIELDS))
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    ticket = sim.seed("Router down", sim.clock())
    await post(client, {"ticket_id": ticket["ticketId"], "status": "CL", "callback": "22/04/2024 2pm"})
    [detail] = await settle(client)
    assert summary(detail) == ("dead", [("permanent", None)])
    assert detail.delivery.last_error == ("not sent: callback_time: '22/04/2024 2pm' is not a date and time in "
                                          "Kapture's format yyyy-MM-dd HH:mm:ss (e.g. '2024-04-19 14:19:11')")
    assert sim.received.times(UPDATE_PATH) == []


async def test_kapture_simulator_refuses_a_bad_date_the_adapter_would_catch(aiohttp_server: Any) -> None:
    """Sent anyway, the bad date gets Kapture's documented "Invalid Format." answer, which classifies permanent."""
    sim = KaptureSimulator()
    ticket = sim.seed("t", sim.clock())
    server = await aiohttp_server(sim.app())
    adapter = KaptureAdapter("k", KaptureOptions(vendor="kapture", sandbox=True), str(server.make_url("")))
    request = adapter.build_request("update_ticket", {"ticket_id": ticket["ticketId"], "sub_status": "CL"}, {})
    body = request.body.replace(b'"sub_status"', b'"callback_time":"2024/04/22","sub_status"')
    async with aiohttp.ClientSession() as session, session.post(request.url, data=body,
                                                                headers=request.headers) as resp:
        outcome = adapter.classify("update_ticket", resp.status, resp.headers, await resp.read())
    assert (outcome.classification, outcome.error) == (
        "permanent", "kapture: HTTP 200: Invalid Format.callback_date should be yyyy-MM-dd hh:mm:ss.")


async def test_kapture_update_with_a_bad_key_is_auth_and_not_retried(write_config: ConfigFactory,
                                                                     bridge_client: AppClient) -> None:
    """"Invalid Auth Key" on an update is auth: one attempt, dead, even with retries left in the schedule."""
    dest = f"{{vendor: kapture, sandbox: true, {FAST_RETRY}}}"
    client = await start(write_config, bridge_client, dest, mapping("update_ticket", UPDATE_FIELDS))
    runtime(client).simulators["kapture"].tokens = set()  # the sandbox's demo key no longer valid
    await post(client, {"ticket_id": "1", "status": "CL"})
    [detail] = await settle(client)
    assert summary(detail) == ("dead", [("auth", 200)])
    assert detail.delivery.last_error == "kapture: Invalid Auth Key"


# -- LeadSquared --------------------------------------------------------------------------------

LSQ_FIELDS = """
          LeadDetail.EmailAddress: {from: payload.email, on_missing: omit}
          Title: {from: payload.title}
          Priority: High
"""


async def test_leadsquared_create_succeeds_with_ticket_id_and_key(write_config: ConfigFactory,
                                                                  bridge_client: AppClient) -> None:
    """A ticket reaches LeadSquared in its envelope (fields in order, options applied); its numeric Id (what
    follow-ups take) is stored as the ticket id, its Key and TicketId UUID beside it."""
    dest = f"{{vendor: leadsquared, sandbox: true, {FAST_RETRY}}}"
    client = await start(write_config, bridge_client, dest,
                         mapping("create_ticket", LSQ_FIELDS, "options: {TypeId: '2', RelatedTicketTypeId: 2}"))
    sim: LeadSquaredSimulator = runtime(client).simulators["leadsquared"]
    with structlog.testing.capture_logs() as logs:
        await post(client, {"email": "a@b.io", "title": "Router down"})
        [detail] = await settle(client)
    assert summary(detail) == ("succeeded", [("success", 200)])
    [ticket] = sim.tickets
    [sent] = [e for e in logs if e["event"] == "delivery.sent"]
    assert (sent["ticket_id"], sent["ticket_key"]) == ("1", "#001")
    assert (detail.delivery.ticket_id, detail.delivery.ticket_key) == ("1", "#001")
    assert ticket["Key"] == "#001"
    assert detail.delivery.ticket_uuid == ticket["TicketId"]
    assert '"Key": "#001"' in (detail.attempts[0].response_excerpt or "")
    assert (ticket["TypeId"], ticket["RelatedTicketTypeId"], ticket["LeadId"]) == ("2", 2, None)
    assert [f["SchemaName"] for f in ticket["Fields"]] == ["LeadDetail.EmailAddress", "Title", "Priority"]


async def test_leadsquared_bad_keys_are_auth_and_not_retried(write_config: ConfigFactory,
                                                             bridge_client: AppClient) -> None:
    """A 401 for a wrong secret key is auth: one attempt, dead."""
    dest = f"{{vendor: leadsquared, sandbox: true, {FAST_RETRY}}}"
    client = await start(write_config, bridge_client, dest, mapping("create_ticket", LSQ_FIELDS))
    sim: LeadSquaredSimulator = runtime(client).simulators["leadsquared"]
    sim.keys = {SANDBOX_ACCESS_KEY: "another-secret"}  # the sandbox's demo secret key no longer valid
    await post(client, {"email": "a@b.io", "title": "t"})
    [detail] = await settle(client)
    assert summary(detail) == ("dead", [("auth", 401)])


async def test_leadsquared_without_a_lead_field_is_refused_before_sending(write_config: ConfigFactory,
                                                                          bridge_client: AppClient) -> None:
    """An event without an email (the mapping's only lead field) is dead before sending, naming the rule."""
    dest = f"{{vendor: leadsquared, sandbox: true, {FAST_RETRY}}}"
    client = await start(write_config, bridge_client, dest, mapping("create_ticket", LSQ_FIELDS))
    sim: LeadSquaredSimulator = runtime(client).simulators["leadsquared"]
    await post(client, {"title": "t"})
    [detail] = await settle(client)
    assert summary(detail) == ("dead", [("permanent", None)])
    assert "leadsquared needs one of LeadId, LeadDetail.EmailAddress, LeadDetail.Phone" in (
        detail.delivery.last_error or "")
    assert sim.received.entries == []


async def test_leadsquared_refusal_as_http_500_is_permanent(write_config: ConfigFactory, bridge_client: AppClient,
                                                            aiohttp_server: Any) -> None:
    """A ticket the account refuses (a mandatory field missing: Status Error with HTTP 500) is not retried."""
    sim = LeadSquaredSimulator(orgs={"o"}, keys={"a": "s"}, mandatory_fields=("Description",))
    server = await aiohttp_server(sim.app())
    dest = (f"{{vendor: leadsquared, base_url: \"{server.make_url('')}\", org_id: o, access_key: a, "
            f"secret_key: s, {FAST_RETRY}}}")
    client = await start(write_config, bridge_client, dest, mapping("create_ticket", LSQ_FIELDS))
    await post(client, {"email": "a@b.io", "title": "t"})
    [detail] = await settle(client)
    assert summary(detail) == ("dead", [("permanent", 500)])
    assert detail.delivery.last_error == ("leadsquared: HTTP 500: MXInvalidInputException: Mandatory field(s) "
                                          "missing: Description")


async def test_leadsquared_429_backs_the_destination_off_for_a_window(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any,
) -> None:
    """A 429 without Retry-After holds every send of the destination for at least the limiter's window,
    then the refused delivery is sent again and succeeds."""
    sim = LeadSquaredSimulator(orgs={"o"}, keys={"a": "s"}, limit=2, window_seconds=1.0)
    server = await aiohttp_server(sim.app())
    # The destination allows more than the vendor: the vendor's 429 is what must hold it back.
    dest = (f"{{vendor: leadsquared, base_url: \"{server.make_url('')}\", org_id: o, access_key: a, "
            f"secret_key: s, rate_limit: {{requests: 50, per_seconds: 1}}, max_in_flight: 1, "
            f"retry: {{schedule: [100ms, 100ms, 100ms], jitter: 0}}}}")
    client = await start(write_config, bridge_client, dest, mapping("create_ticket", LSQ_FIELDS))
    for n in range(3):
        await post(client, {"email": f"u{n}@b.io", "title": f"t{n}"})
    found = await settle(client, 3)
    assert all(d.delivery.status == "succeeded" for d in found)
    entries = sim.received.entries
    statuses = [e["status"] for e in entries]
    assert statuses[:3] == [200, 200, 429]
    assert statuses[3:] == [200]
    limiter_window = 1.05  # 1 s plus the 50 ms margin
    assert entries[3]["t"] - entries[2]["t"] >= limiter_window - 0.01


async def test_a_429_with_retry_after_is_honoured(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """A 429 with Retry-After holds the destination for that long (here longer than its window)."""
    dest = "{vendor: leadsquared, sandbox: true, rate_limit: {requests: 50, per_seconds: 0.1}, " \
           "retry: {schedule: [10ms, 10ms], jitter: 0}}"
    client = await start(write_config, bridge_client, dest, mapping("create_ticket", LSQ_FIELDS))
    sim: LeadSquaredSimulator = runtime(client).simulators["leadsquared"]
    sim.faults = Faults(fail_count=1, fail_status=429, retry_after="1")
    await post(client, {"email": "a@b.io", "title": "t"})
    [detail] = await settle(client)
    assert summary(detail) == ("succeeded", [("retry", 429), ("success", 200)])
    first, second = sim.received.entries
    assert second["t"] - first["t"] >= 0.99


# -- Netgroot ISP CRM ---------------------------------------------------------------------------

ISP = "vendor: netgroot, sandbox: true, type_id: 1, status_id: 1, priority_id: 2, group_id: 1"
ISP_FIELDS = """
          subject: {from: payload.subject}
          message: {from: payload.text}
"""


async def test_netgroot_create_by_subject_name_succeeds_with_one_look_up(write_config: ConfigFactory,
                                                                         bridge_client: AppClient) -> None:
    """Tickets naming their subject are created with its id and the destination's ids; the list is fetched once."""
    client = await start(write_config, bridge_client, f"{{{ISP}, {FAST_RETRY}}}", mapping("create_ticket",
                                                                                         ISP_FIELDS))
    sim: NetgrootSimulator = runtime(client).simulators["netgroot"]
    for n in range(3):
        await post(client, {"subject": "billing issue", "text": f"bill {n} is wrong"})
    found = await settle(client, 3)
    assert [summary(d) for d in found] == [("succeeded", [("success", 200)])] * 3
    assert sorted(d.delivery.ticket_id or "" for d in found) == ["101", "102", "103"]
    assert {(t["subject_id"], t["type_id"], t["status_id"], t["priority_id"], t["group_id"]) for t in sim.tickets} \
        == {(2, 1, 1, 2, 1)}
    assert sim.subject_requests == 1


async def test_netgroot_create_by_subject_id_needs_no_look_up(write_config: ConfigFactory,
                                                              bridge_client: AppClient) -> None:
    """A mapping that gives `subject_id` creates the ticket without calling getSubjects."""
    fields = "  subject_id: 1\n          message: {from: payload.text}\n"
    client = await start(write_config, bridge_client, f"{{{ISP}}}", mapping("create_ticket", fields))
    sim: NetgrootSimulator = runtime(client).simulators["netgroot"]
    await post(client, {"text": "down"})
    [detail] = await settle(client)
    assert summary(detail) == ("succeeded", [("success", 200)])
    assert sim.subject_requests == 0


async def test_netgroot_unknown_subject_is_permanent_and_lists_the_names(write_config: ConfigFactory,
                                                                         bridge_client: AppClient) -> None:
    """An unknown subject name is dead without creating anything, its error listing the CRM's subjects."""
    client = await start(write_config, bridge_client, f"{{{ISP}, {FAST_RETRY}}}", mapping("create_ticket",
                                                                                         ISP_FIELDS))
    sim: NetgrootSimulator = runtime(client).simulators["netgroot"]
    await post(client, {"subject": "Router", "text": "x"})
    [detail] = await settle(client)
    assert summary(detail) == ("dead", [("permanent", None)])
    assert detail.delivery.last_error == ("not sent: subject: unknown subject 'Router'; the ISP CRM knows: "
                                          "'Technical Support', 'Billing Issue', 'New Connection', 'Relocation'")
    assert sim.received.times(NETGROOT_CREATE) == []


async def test_netgroot_unknown_subscriber_is_permanent(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """The documented 404 "Subscriber not found" is permanent."""
    dest = f"{{{ISP}, {FAST_RETRY}}}"
    client = await start(write_config, bridge_client, dest, mapping("create_ticket", ISP_FIELDS))
    sim: NetgrootSimulator = runtime(client).simulators["netgroot"]
    sim.tokens[NETGROOT_DEMO] = None  # the demo token's subscriber no longer exists
    await post(client, {"subject": "Technical Support", "text": "x"})
    [detail] = await settle(client)
    assert summary(detail) == ("dead", [("permanent", 404)])
    assert detail.delivery.last_error == "netgroot: HTTP 404: Subscriber not found"


async def test_netgroot_invalid_data_is_permanent(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """The documented 400 "Invalid request data" (here an unknown subject id) is permanent."""
    fields = "  subject_id: 99\n          message: {from: payload.text}\n"
    client = await start(write_config, bridge_client, f"{{{ISP}, {FAST_RETRY}}}", mapping("create_ticket", fields))
    await post(client, {"text": "x"})
    [detail] = await settle(client)
    assert summary(detail) == ("dead", [("permanent", 400)])


@pytest.mark.parametrize(("fields", "http_status", "subject_calls"), [
    (ISP_FIELDS, None, 1),
    ("  subject_id: 1\n          message: {from: payload.text}\n", 401, 0),
])
async def test_netgroot_bad_token_is_auth_and_not_retried(write_config: ConfigFactory, bridge_client: AppClient,
                                                          fields: str, http_status: int | None,
                                                          subject_calls: int) -> None:
    """A refused token is auth, one attempt, whether the look-up or the create found it out."""
    client = await start(write_config, bridge_client, f"{{{ISP}, {FAST_RETRY}}}", mapping("create_ticket", fields))
    sim: NetgrootSimulator = runtime(client).simulators["netgroot"]
    sim.tokens.clear()  # the sandbox's demo token no longer valid
    await post(client, {"subject": "Technical Support", "text": "x"})
    [detail] = await settle(client)
    assert summary(detail) == ("dead", [("auth", http_status)])
    assert sim.subject_requests == subject_calls
    assert sim.tickets == []


async def test_netgroot_look_up_outage_is_retried(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """When getSubjects fails past its own three tries, the delivery is retried and lands once the CRM is back."""
    client = await start(write_config, bridge_client, f"{{{ISP}, {FAST_RETRY}}}", mapping("create_ticket",
                                                                                         ISP_FIELDS))
    sim: NetgrootSimulator = runtime(client).simulators["netgroot"]
    sim.faults = Faults(fail_count=3, fail_status=503)
    await post(client, {"subject": "Technical Support", "text": "x"})
    [detail] = await settle(client)
    assert summary(detail) == ("succeeded", [("retry", None), ("success", 200)])
    assert len(sim.received.times(SUBJECTS_PATH)) == 4


async def test_netgroot_look_up_hiccup_costs_no_attempt(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """A single 503 from getSubjects is tried again at once: the delivery succeeds on its first attempt."""
    client = await start(write_config, bridge_client, f"{{{ISP}, {FAST_RETRY}}}", mapping("create_ticket",
                                                                                         ISP_FIELDS))
    sim: NetgrootSimulator = runtime(client).simulators["netgroot"]
    sim.faults = Faults(fail_count=1, fail_status=503)
    await post(client, {"subject": "Technical Support", "text": "x"})
    [detail] = await settle(client)
    assert summary(detail) == ("succeeded", [("success", 200)])
    assert len(sim.received.times(SUBJECTS_PATH)) == 2


# -- the generic http vendor --------------------------------------------------------------------


async def test_http_vendor_create_and_update(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """A generic destination posts the fields as JSON to its path, and a mapping's options route an update."""
    dest = "{vendor: http, sandbox: true, path: /v1/tickets, ticket_id_path: data.id, success_path: success}"
    mappings = {
        "create": "source: events\ndestination: dest\naction: create_ticket\n"
                  "when: \"payload.kind == 'new'\"\nfields: {title: '{{ payload.title }}'}\n",
        "update": "source: events\ndestination: dest\naction: update_ticket\n"
                  "when: \"payload.kind == 'change'\"\noptions: {method: PATCH, path: '/v1/tickets/{id}'}\n"
                  "fields: {id: '{{ payload.id }}', status: closed}\n",
    }
    client = await bridge_client(write_config(config(dest), mappings))
    sim = runtime(client).simulators["http"]
    await post(client, {"kind": "new", "title": "Router down"})
    await post(client, {"kind": "change", "id": "T-1"})
    found = await settle(client, 2)
    assert [summary(d) for d in found] == [("succeeded", [("success", 201)])] * 2
    assert [d.delivery.ticket_id for d in found] == ["T-1", "T-2"]
    assert [(t["method"], t["path"], t["body"]) for t in sim.tickets] == [
        ("POST", "/v1/tickets", {"title": "Router down"}), ("PATCH", "/v1/tickets/T-1", {"id": "T-1",
                                                                                          "status": "closed"})]
