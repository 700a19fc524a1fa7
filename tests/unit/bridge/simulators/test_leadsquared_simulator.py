"""The LeadSquared simulator: the ticket envelope it takes, its answers, and its 25-per-window limit."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient

from bridge.simulators.leadsquared import MAX_FIELDS, LeadSquaredSimulator, _merged
from bridge.simulators.weights import weigh
from bridge.vendors.base import VendorRequest
from bridge.vendors.leadsquared import (
    SANDBOX_ACCESS_KEY,
    SANDBOX_ORG,
    SANDBOX_SECRET_KEY,
    LeadSquaredAdapter,
    LeadSquaredOptions,
)
from handlers.attachments import attachment, save_attachments
from tests.fixtures.watched_tickets import hold_watched, reads

URL = f"/api/tenants/{SANDBOX_ORG}/tickets"
KEYS = {"X-LSQ-ACCESS-KEY": SANDBOX_ACCESS_KEY, "X-LSQ-SECRET-KEY": SANDBOX_SECRET_KEY}
TICKET = {"TypeId": "1", "Id": None, "LeadId": None, "RelatedTicketTypeId": 1,
          "Fields": [{"SchemaName": "LeadDetail.EmailAddress", "Value": "a@b.io"},
                     {"SchemaName": "Title", "Value": "Router down"}]}
Client = TestClient[Any, Any]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def start(aiohttp_client: Any, **kwargs: Any) -> tuple[LeadSquaredSimulator, Client]:
    sim = LeadSquaredSimulator(**kwargs)
    return sim, await aiohttp_client(sim.app())


async def post(client: Client, body: Any = TICKET, url: str = URL, headers: dict[str, str] | None = None,
               ) -> tuple[int, Any]:
    resp = await client.post(url, json=body, headers=KEYS if headers is None else headers)
    return resp.status, await resp.json()


async def test_a_ticket_is_created_with_the_documented_answer(aiohttp_client: Any) -> None:
    """A valid ticket gets Status Success, Id, TicketId and Key, and is listed with its envelope."""
    sim, client = await start(aiohttp_client)
    status, body = await post(client)
    assert status == 200
    assert list(body) == ["Status", "ReasonForFailure", "Id", "Message", "TicketId", "Key"]
    assert (body["Status"], body["Id"], body["Key"], body["ReasonForFailure"]) == ("Success", "1", "#001", None)
    assert len(body["TicketId"]) == 36
    listing = await (await client.get("/tickets")).json()
    assert listing["tickets"][0]["Fields"] == TICKET["Fields"]
    assert listing["tickets"][0]["TicketId"] == body["TicketId"]
    assert listing["tickets"] == sim.tickets


@pytest.mark.parametrize(("change", "status", "kind"), [
    ({"headers": {"X-LSQ-ACCESS-KEY": SANDBOX_ACCESS_KEY, "X-LSQ-SECRET-KEY": "wrong"}}, 401,
     "MXUnAuthorizedAccessException"),
    ({"headers": {}}, 401, "MXUnAuthorizedAccessException"),
    ({"url": "/api/tenants/other-org/tickets"}, 404, "MXNotFoundException"),
    ({"body": {"TypeId": "1", "Fields": "Title=x", "RelatedTicketTypeId": 1}}, 400, "MXInvalidInputException"),
    ({"body": {"Fields": []}}, 400, "MXInvalidInputException"),
    ({"body": [TICKET]}, 400, "MXInvalidInputException"),
    ({"body": {**TICKET, "Fields": [{"SchemaName": "Title", "Value": "x"}]}}, 500, "MXInvalidInputException"),
])
async def test_failures(aiohttp_client: Any, change: dict[str, Any], status: int, kind: str) -> None:
    """Bad keys 401, unknown org 404, a body not shaped as documented 400, no lead field 500; nothing created."""
    sim, client = await start(aiohttp_client)
    got, body = await post(client, **change)
    assert (got, body["Status"], body["ExceptionType"]) == (status, "Error", kind)
    assert sim.tickets == []


async def test_a_lead_id_alone_is_enough(aiohttp_client: Any) -> None:
    """A LeadId in the envelope satisfies the one-of-three lead rule."""
    _, client = await start(aiohttp_client)
    body = {**TICKET, "LeadId": "45b5fded", "Fields": [{"SchemaName": "Title", "Value": "x"}]}
    assert (await post(client, body))[0] == 200


async def test_mandatory_fields_are_a_knob(aiohttp_client: Any) -> None:
    """Fields the account marks mandatory are refused when missing, naming them."""
    _, client = await start(aiohttp_client, mandatory_fields=("Title", "Priority"))
    status, body = await post(client)
    assert status == 500
    assert body["ExceptionMessage"] == "Mandatory field(s) missing: Priority"


async def test_the_26th_call_in_5_seconds_gets_429(aiohttp_client: Any) -> None:
    """25 calls within 5 s are served; the 26th gets the documented 429 message; calls refused do not count."""
    clock = FakeClock()
    sim, client = await start(aiohttp_client, clock=clock)
    for n in range(25):
        clock.now += 0.1
        assert (await post(client))[0] == 200, n
    status, body = await post(client)
    assert status == 429
    assert body["ExceptionMessage"] == "API calls exceeded the limit of 25 in 5 second(s)"
    clock.now = 100.1 + 5.0  # the first call is now a full window old
    assert (await post(client))[0] == 200
    assert (await post(client))[0] == 429
    assert [e["status"] for e in sim.received.entries].count(429) == 2
    assert len(sim.tickets) == 26


async def test_the_window_is_configurable(aiohttp_client: Any) -> None:
    """With 2 per 0.5 s, the third call inside half a second is refused, and its message says so."""
    clock = FakeClock()
    _, client = await start(aiohttp_client, limit=2, window_seconds=0.5, clock=clock)
    assert [(await post(client))[0] for _ in range(3)] == [200, 200, 429]
    clock.now += 0.5
    assert [(await post(client))[0] for _ in range(2)] == [200, 200]
    status, body = await post(client)
    assert (status, body["ExceptionMessage"]) == (429, "API calls exceeded the limit of 2 in 0.5 second(s)")


# -- follow-ups and files, driven by the adapter's own requests ---------------------------------------

SANDBOX = "http://sandbox"


def lsq_adapter(folder: Path | None = None) -> LeadSquaredAdapter:
    opts = msgspec.convert({"vendor": "leadsquared", "sandbox": True}, LeadSquaredOptions)
    return LeadSquaredAdapter("lsq", opts, SANDBOX, attachments_dir=folder)


async def send(client: Client, request: VendorRequest) -> tuple[int, Any]:
    resp = await client.request(request.method, request.url.removeprefix(SANDBOX), data=request.body,
                                headers=request.headers)
    return resp.status, await resp.json()


async def no_fetch(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    raise AssertionError("no look-up expected")


async def create_with_files(client: Client, folder: Path, *contents: tuple[str, bytes]) -> tuple[int, Any]:
    made = lsq_adapter(folder)
    metas = []
    for name, content in contents:
        item = attachment(name, "application/pdf", content)
        save_attachments([item], folder, 10_000_000)
        metas.append(item.meta)
    fields = await made.prepare("create_ticket", {"LeadDetail.EmailAddress": "a@b.io", "Title": "t", "files": metas},
                                no_fetch)
    return await send(client, made.build_request("create_ticket", fields, {}))


async def test_multipart_create_keeps_each_files_name_size_and_digest(aiohttp_client: Any, tmp_path: Path) -> None:
    """A multipart create is a ticket whose files (name, size, sha256 of the bytes) show on it and in /_received."""
    sim, client = await start(aiohttp_client)
    status, answer = await create_with_files(client, tmp_path, ("a.pdf", b"%PDF-a"), ("b.pdf", b"%PDF-bb"))
    assert (status, answer["Id"], answer["Key"]) == (200, "1", "#001")
    expected = [{"name": "a.pdf", "content_type": "application/pdf", "size": 6,
                 "sha256": hashlib.sha256(b"%PDF-a").hexdigest()},
                {"name": "b.pdf", "content_type": "application/pdf", "size": 7,
                 "sha256": hashlib.sha256(b"%PDF-bb").hexdigest()}]
    assert sim.tickets[0]["Files"] == expected
    received = (await (await client.get("/_received")).json())["received"]
    assert received[0]["files"] == expected


async def test_activity_note_and_update_land_on_the_ticket_by_its_numeric_id(aiohttp_client: Any) -> None:
    """Portal activity, internal note and multipart update, addressed by the create's Id, are kept on the ticket."""
    sim, client = await start(aiohttp_client)
    made = lsq_adapter()
    status, answer = await send(client, made.build_request("create_ticket", {"LeadDetail.EmailAddress": "a@b.io",
                                                                             "Status": "Open"}, {}))
    outcome = made.classify("create_ticket", status, {}, json.dumps(answer).encode())
    ticket = {"id": outcome.ticket_id, "key": outcome.ticket_key}
    assert ticket == {"id": "1", "key": "#001"}
    answers = [await send(client, made.build_request(action, fields, {}, ticket=ticket)) for action, fields in (
        ("add_activity", {"Text": "Still down"}), ("add_note", {"TextPart": "Called the customer"}),
        ("update_ticket", {"Status": "Reopened"}))]
    assert [made.classify(a, s, {}, json.dumps(b).encode()).classification
            for a, (s, b) in zip(("add_activity", "add_note", "update_ticket"), answers, strict=True)] == \
        ["success"] * 3
    held = sim.tickets[0]
    assert held["Activities"] == [{"Text": "Still down", "Direction": "INBOUND"}]
    assert held["Notes"] == ["Called the customer"]
    assert {f["SchemaName"]: f["Value"] for f in held["Fields"]}["Status"] == "Reopened"
    listed = (await (await client.get("/tickets")).json())["tickets"][0]
    assert (listed["Activities"], listed["Notes"]) == (held["Activities"], held["Notes"])


@pytest.mark.parametrize(("action", "fields"), [("add_activity", {"Text": "x"}), ("add_note", {"TextPart": "x"}),
                                                ("update_ticket", {"Status": "Open"})])
async def test_an_unknown_ticket_id_is_a_404_the_adapter_calls_permanent(aiohttp_client: Any, action: str,
                                                                         fields: dict[str, Any]) -> None:
    """Each follow-up call for an Id the simulator never made is a 404 with an MX exception; not retried."""
    _, client = await start(aiohttp_client)
    made = lsq_adapter()
    status, body = await send(client, made.build_request(action, fields, {}, ticket={"id": "999"}))
    assert (status, body["ExceptionType"]) == (404, "MXTicketNotFoundException")
    assert body["ExceptionMessage"] == "Ticket '999' was not found"
    assert made.classify(action, status, {}, json.dumps(body).encode()).classification == "permanent"


async def test_follow_up_calls_check_the_keys(aiohttp_client: Any) -> None:
    """A follow-up call with a wrong secret key is a 401, as every Service CRM call."""
    _, client = await start(aiohttp_client)
    request = lsq_adapter().build_request("add_activity", {"Text": "x"}, {}, ticket={"id": "1"})
    request.headers["X-LSQ-SECRET-KEY"] = "wrong"
    assert (await send(client, request))[0] == 401


async def test_update_must_be_multipart(aiohttp_client: Any) -> None:
    """The update takes multipart/form-data only, as documented; JSON is a 400 saying so."""
    _, client = await start(aiohttp_client)
    await post(client)
    resp = await client.put(f"/api/tenants/{SANDBOX_ORG}/tickets/1/update", json=TICKET, headers=KEYS)
    assert (resp.status, (await resp.json())["ExceptionMessage"]) == (
        400, "this call takes multipart/form-data with a ticketDTO part")


async def test_the_core_host_knob_refuses_every_call_naming_the_host(aiohttp_client: Any) -> None:
    """With `core_host` every call is a 401 saying this is the core API host, even with good keys."""
    _, client = await start(aiohttp_client)
    assert (await client.put("/_knobs", json={"core_host": True})).status == 200
    resp = await client.post(URL, json=TICKET, headers=KEYS)
    body = await resp.json()
    assert (resp.status, body["ExceptionType"]) == (401, "MXUnAuthorizedAccessException")
    assert "core API host" in body["ExceptionMessage"]


async def test_the_api_disabled_knob_refuses_good_keys_only(aiohttp_client: Any) -> None:
    """With `api_disabled` good keys get a 401 saying the Service CRM API is off; bad keys still get theirs."""
    sim, client = await start(aiohttp_client)
    await client.put("/_knobs", json={"api_disabled": True})
    resp = await client.get(f"{URL}/1", headers=KEYS)
    assert (resp.status, (await resp.json())["ExceptionMessage"]) == (401, "Service CRM APIs are not enabled for "
                                                                           "this account")
    resp = await client.get(f"{URL}/1", headers={**KEYS, "X-LSQ-SECRET-KEY": "bad"})
    assert (await resp.json())["ExceptionMessage"] == "Invalid AccessKey or SecretKey"
    assert sim.tickets == []


async def test_the_exception_knob_answers_that_exception_for_its_count(aiohttp_client: Any) -> None:
    """`exception` answers the next `exception_count` calls with its type and status (here a rate-limit
    exception inside HTTP 200), then the API serves normally."""
    sim, client = await start(aiohttp_client)
    await client.put("/_knobs", json={"exception": "MXAPIRateLimitExceededException", "exception_status": 200,
                                      "exception_count": 1})
    resp = await client.post(URL, json=TICKET, headers=KEYS)
    assert (resp.status, (await resp.json())["ExceptionType"]) == (200, "MXAPIRateLimitExceededException")
    resp = await client.post(URL, json=TICKET, headers=KEYS)
    assert (resp.status, (await resp.json())["Status"]) == (200, "Success")
    assert len(sim.tickets) == 1


async def test_ticket_details_by_numeric_id(aiohttp_client: Any) -> None:
    """`GET …/tickets/{Id}` answers the ticket's Id, TicketId, LeadId and Fields; an unknown Id is a 404."""
    _, client = await start(aiohttp_client)
    created = await (await client.post(URL, json=TICKET, headers=KEYS)).json()
    resp = await client.get(f"{URL}/{created['Id']}", headers=KEYS)
    body = await resp.json()
    assert (resp.status, body["Id"], body["TicketId"], body["Fields"]) == (200, created["Id"], created["TicketId"],
                                                                           TICKET["Fields"])
    resp = await client.get(f"{URL}/999", headers=KEYS)
    assert (resp.status, (await resp.json())["ExceptionType"]) == (404, "MXTicketNotFoundException")


async def test_trash_deletes_known_ids_and_lists_the_rest_as_failed(aiohttp_client: Any) -> None:
    """`PUT …/tickets/trash` deletes the known Ids and answers the documented SuccessfulIds/FailedIds."""
    sim, client = await start(aiohttp_client)
    created = await (await client.post(URL, json=TICKET, headers=KEYS)).json()
    resp = await client.put(f"{URL}/trash", json={"TicketIds": [created["Id"], "999"]}, headers=KEYS)
    assert (resp.status, await resp.json()) == (200, {"SuccessfulIds": [int(created["Id"])], "FailedIds": ["999"]})
    assert (sim.tickets, sim.deleted) == ([], [created["Id"]])


async def follow_ups(client: Client, ticket_id: str) -> list[tuple[int, Any]]:
    """Activity, note, update, details and trash of `ticket_id`: each call's status and answer."""
    made = lsq_adapter()
    ticket = {"id": ticket_id, "key": f"#{ticket_id}"}
    answers = [await send(client, made.build_request(action, fields, {}, ticket=ticket)) for action, fields in (
        ("add_activity", {"Text": "Still down"}), ("add_note", {"TextPart": "Called"}),
        ("update_ticket", {"Status": "Reopened"}))]
    resp = await client.get(f"{URL}/{ticket_id}", headers=KEYS)
    answers.append((resp.status, await resp.json()))
    resp = await client.put(f"{URL}/trash", json={"TicketIds": [ticket_id]}, headers=KEYS)
    return [*answers, (resp.status, await resp.json())]


async def test_follow_ups_find_their_ticket_without_reading_the_others(aiohttp_client: Any) -> None:
    """Activity, note, update, details and trash look their ticket up by Id: no other ticket held is read."""
    sim, client = await start(aiohttp_client)
    others = hold_watched(sim, "Id", 50)
    created = (await post(client))[1]
    answers = await follow_ups(client, created["Id"])
    assert [status for status, _ in answers] == [200] * 5
    assert answers[-1][1] == {"SuccessfulIds": [int(created["Id"])], "FailedIds": []}
    assert reads(others) == 0


async def test_a_dropped_ticket_is_not_found_by_any_follow_up(aiohttp_client: Any) -> None:
    """Past `max_tickets` the oldest ticket is dropped: each follow-up on it is the 404 of an unknown Id and
    its trash lists it as failed, while the tickets still held answer."""
    sim, client = await start(aiohttp_client)
    sim.max_tickets = 2
    ids = [(await post(client))[1]["Id"] for _ in range(3)]
    assert [t["Id"] for t in sim.tickets] == ids[1:]
    dropped = await follow_ups(client, ids[0])
    assert [(s, b.get("ExceptionType")) for s, b in dropped[:4]] == [(404, "MXTicketNotFoundException")] * 4
    assert dropped[4] == (200, {"SuccessfulIds": [], "FailedIds": [ids[0]]})
    assert [status for status, _ in await follow_ups(client, ids[2])] == [200] * 5
    assert ([t["Id"] for t in sim.tickets], sim.deleted) == ([ids[1]], [ids[2]])


async def test_a_ticket_keeps_its_newest_follow_ups_and_activity_ids_stay_unique(aiohttp_client: Any) -> None:
    """Activities, notes, updates and files past `max_history` drop the ticket's oldest; each activity's Id is
    one never answered before, on this ticket or another."""
    sim, client = await start(aiohttp_client)
    sim.max_history = 2
    made = lsq_adapter()

    async def act(action: str, fields: dict[str, Any], ticket: dict[str, Any]) -> Any:
        return (await send(client, made.build_request(action, fields, {}, ticket=ticket)))[1]

    first, second = [{"id": (await post(client))[1]["Id"]} for _ in range(2)]
    ids = []
    for n in range(3):
        ids.append((await act("add_activity", {"Text": f"a{n}"}, first))["Id"])
        await act("add_note", {"TextPart": f"n{n}"}, first)
        await act("update_ticket", {"Status": f"s{n}"}, first)
    ids.append((await act("add_activity", {"Text": "b"}, second))["Id"])
    held = sim.ticket(first["id"])
    assert held is not None
    assert [a["Text"] for a in held["Activities"]] == ["a1", "a2"]
    assert held["Notes"] == ["n1", "n2"]
    assert [u["Fields"] for u in held["Updates"]] == [[{"SchemaName": "Status", "Value": f"s{n}"}] for n in (1, 2)]
    assert ids == ["1", "2", "3", "4"]


async def test_trashed_ids_keep_as_many_as_calls_received(aiohttp_client: Any) -> None:
    """The trashed Ids a test may read are kept as the calls are, the newest `received.max_entries`."""
    sim, client = await start(aiohttp_client)
    sim.received.max_entries = 2
    ids = [(await post(client))[1]["Id"] for _ in range(3)]
    for ticket_id in ids:
        await client.put(f"{URL}/trash", json={"TicketIds": [ticket_id]}, headers=KEYS)
    assert (sim.tickets, sim.deleted) == ([], ids[1:])


async def test_trashed_ids_are_bounded_in_bytes_too(aiohttp_client: Any) -> None:
    """Trashed Ids weighing more than `received.max_bytes` in all drop the oldest first, the newest kept; the
    weight kept is theirs."""
    sim, client = await start(aiohttp_client)
    sim.received.max_bytes = 10  # three Ids of one digit (`"1"`: 3 bytes each)
    ids = [(await post(client))[1]["Id"] for _ in range(6)]
    await client.put(f"{URL}/trash", json={"TicketIds": ids[:5]}, headers=KEYS)
    assert sim.deleted == ids[2:5] and sim.deleted.held_bytes == sum(weigh(i) for i in sim.deleted) == 9
    await client.put(f"{URL}/trash", json={"TicketIds": ids[5:]}, headers=KEYS)
    assert sim.deleted == ids[3:]


async def test_a_ticket_holds_at_most_max_fields(aiohttp_client: Any) -> None:
    """A create or an update that would leave a ticket with more than MAX_FIELDS distinct fields is a 400 naming
    the bound, and changes nothing; an update of fields it holds is taken."""
    sim, client = await start(aiohttp_client)
    many = [{"SchemaName": f"F{n}", "Value": "x"} for n in range(MAX_FIELDS)]
    status, body = await post(client, {**TICKET, "Fields": many + TICKET["Fields"]})
    assert (status, body["ExceptionType"]) == (400, "MXInvalidInputException")
    assert body["ExceptionMessage"] == (f"a ticket holds at most {MAX_FIELDS:,} fields (distinct SchemaNames); "
                                        f"this one would hold {MAX_FIELDS + 2:,}")
    status, created = await post(client, {**TICKET, "Fields": many[:-2] + TICKET["Fields"]})
    assert status == 200
    made = lsq_adapter()
    ticket = {"id": created["Id"], "key": created["Key"]}
    refused = await send(client, made.build_request("update_ticket", {"New": "x"}, {}, ticket=ticket))
    taken = await send(client, made.build_request("update_ticket", {"F0": "y"}, {}, ticket=ticket))
    assert (refused[0], taken[0]) == (400, 200)
    fields = {f["SchemaName"]: f["Value"] for f in sim.tickets[0]["Fields"]}
    assert (len(fields), fields["F0"], "New" in fields) == (MAX_FIELDS, "y", False)


def test_a_merge_weighs_what_it_adds_and_drops_as_the_merged_list_is_encoded() -> None:
    """Seeded random held lists (a create may repeat a SchemaName) and changes: the merge keeps the last of each
    name in the place of its first, and what it says the list grew by is what encoding both finds."""
    rng = random.Random(20240419)

    def fields() -> list[dict[str, Any]]:
        return [{"SchemaName": f"F{rng.randrange(6)}", "Value": "v" * rng.randrange(40)}
                for _ in range(rng.randrange(6))]

    for _ in range(500):
        held, changes = fields(), fields()
        merged, grown = _merged(held, changes)
        expected = {f["SchemaName"]: f for f in [*held, *changes]}
        assert merged == list(expected.values())
        assert grown == len(msgspec.json.encode(merged)) - len(msgspec.json.encode(held))


async def test_follow_ups_keep_the_weight_of_what_a_ticket_holds(aiohttp_client: Any) -> None:
    """Creates (one repeating a field), updates merging fields and files, activities and notes: the weight the
    simulator keeps is the held tickets encoded afresh after each."""
    sim, client = await start(aiohttp_client)
    repeated = {**TICKET, "Fields": [*TICKET["Fields"], {"SchemaName": "Title", "Value": "Again"}]}
    made = lsq_adapter()
    for body in (TICKET, repeated):
        ticket = {"id": (await post(client, body))[1]["Id"]}
        for n in range(3):
            for action, fields in (("update_ticket", {"Status": f"s{n}", "Title": "t" * n}),
                                   ("add_activity", {"Text": f"a{n}"}), ("add_note", {"TextPart": f"n{n}"})):
                assert (await send(client, made.build_request(action, fields, {}, ticket=ticket)))[0] == 200
                assert sim.held_bytes == sum(len(msgspec.json.encode(t)) for t in sim.tickets)
    assert [f["Value"] for f in sim.tickets[1]["Fields"]] == ["a@b.io", "tt", "s2"]


def update_form(dto: dict[str, Any], files: int) -> aiohttp.FormData:
    """An update's multipart body: `ticketDTO` and `files` small files."""
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("ticketDTO", json.dumps(dto))
    for i in range(files):
        form.add_field("files", b"x" * 10, filename=f"f{i}.bin", content_type="application/octet-stream")
    return form


async def test_a_creates_noted_files_stay_as_sent_while_its_ticket_gains_files(aiohttp_client: Any) -> None:
    """The create's entry in the received log keeps the files it was sent, and the log's weight stays that of its
    entries, while updates add files to the ticket."""
    sim, client = await start(aiohttp_client)
    resp = await client.post(URL, data=update_form(TICKET, 1), headers=KEYS)
    assert resp.status == 200
    for _ in range(5):
        resp = await client.put(f"{URL}/1/update", data=update_form({**TICKET, "Id": "1"}, 3), headers=KEYS)
        assert resp.status == 200
    assert len(sim.tickets[0]["Files"]) == 16
    assert len(sim.received.entries[0]["files"]) == 1
    assert sim.received.held_bytes == sum(weigh(entry) for entry in sim.received.entries)


async def test_a_lone_ticket_its_updates_grow_past_the_budget_is_dropped(aiohttp_client: Any) -> None:
    """Updates adding fields make a ticket held alone heavier than the byte budget, which trimming its histories
    cannot cure: it is dropped, as the oldest tickets are, and the budget holds."""
    sim, client = await start(aiohttp_client)
    sim.max_ticket_bytes = 1_000_000
    assert (await post(client))[0] == 200
    for i in range(12):
        dto = {**TICKET, "Id": "1", "Fields": [{"SchemaName": f"F{i}", "Value": "v" * 100_000}]}
        resp = await client.put(f"{URL}/1/update", data=update_form(dto, 0), headers=KEYS)
        if resp.status != 200:
            break
        assert sim.held_bytes <= sim.max_ticket_bytes
    assert (resp.status, sim.tickets, sim.held_bytes) == (404, [], 0)
