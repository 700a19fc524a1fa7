"""The Kapture simulator: the documented create, update and pull answers and failures, over HTTP."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient

from bridge.simulators.kapture import KaptureSimulator
from bridge.vendors.kapture import CREATE_PATH, GET_PATH, PULL_PATH, SANDBOX_TOKEN, UPDATE_PATH
from tests.fixtures.watched_tickets import hold_watched, reads

AUTH = {"Authorization": f"Basic {SANDBOX_TOKEN}"}
Client = TestClient[Any, Any]


async def start(aiohttp_client: Any, sim: KaptureSimulator | None = None) -> tuple[KaptureSimulator, Client]:
    sim = sim or KaptureSimulator(clock=lambda: datetime(2024, 4, 19, 14, 19, 11))
    return sim, await aiohttp_client(sim.app())


async def call(client: Client, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    resp = await client.post(path, json=body, headers=AUTH if headers is None else headers)
    return resp.status, await resp.json()


async def test_create_answers_as_documented(aiohttp_client: Any) -> None:
    """A created ticket is answered with `ticket`, `ticket_id`, `Ticket Id` and status success, and listed."""
    sim, client = await start(aiohttp_client)
    status, body = await call(client, CREATE_PATH, [{"title": "TEST 1", "email_id": "a@b.io"}])
    assert status == 200
    assert body["status"] == "success"
    assert body["ticket_id"] == body["Ticket Id"] == body["ticket"]["ticketId"] == "713516551148"
    assert body["ticket"]["id"] == 530348198
    assert body["ticket"]["date"] == "2024-04-19 14:19:11"
    assert (body["ticket"]["substatus"], body["ticket"]["substatusName"]) == ("US", "Unattended")
    listing = await (await client.get("/tickets")).json()
    assert listing["count"] == 1
    assert listing["tickets"][0]["fields"] == {"title": "TEST 1", "email_id": "a@b.io"}
    assert listing["tickets"] == sim.tickets


@pytest.mark.parametrize(("body", "headers", "message"), [
    ([{"title": ""}], None, "title is missing"),
    ([{"ticket_details": "x"}], None, "title is missing"),
    ([{"title": "t"}], {"Authorization": "Basic wrong"}, "Invalid Auth Key"),
    ([{"title": "t"}], {}, "Invalid Auth Key"),
    ("not an array", None, "Invalid Json."),
    ([], None, "Invalid Json."),
])
async def test_create_failures_are_the_documented_bodies_with_http_200(
    aiohttp_client: Any, body: Any, headers: dict[str, str] | None, message: str,
) -> None:
    """Each documented create failure is `{"message", "status": "failed"}` inside an HTTP 200, creating nothing."""
    sim, client = await start(aiohttp_client)
    assert await call(client, CREATE_PATH, body, headers) == (200, {"message": message, "status": "failed"})
    assert sim.tickets == []


async def test_failure_status_is_a_knob(aiohttp_client: Any) -> None:
    """`failure_http_status` makes failures come with another HTTP status, for the other reading of the docs."""
    _, client = await start(aiohttp_client, KaptureSimulator(failure_http_status=400))
    assert (await call(client, CREATE_PATH, [{"title": ""}]))[0] == 400


async def test_update_changes_the_ticket_and_answers_as_documented(aiohttp_client: Any) -> None:
    """An update sets the sub-status, queue, disposition and callback, keeps the comment, and says so."""
    sim, client = await start(aiohttp_client)
    await call(client, CREATE_PATH, [{"title": "TEST 1"}])
    status, body = await call(client, UPDATE_PATH, [{"comment": "Replaced", "ticket_id": "713516551148",
                                                     "callback_time": "2024-04-22 14:31:33", "sub_status": "PS",
                                                     "queue": "L2", "disposition": "Inbox"}])
    assert status == 200
    assert body["status"] == "success"
    assert body["message"] == "Status and Comment have been updated.\n"
    assert (body["ticket"]["ticketId"], body["ticket"]["substatus"]) == ("713516551148", "PS")
    [ticket] = sim.tickets
    assert (ticket["substatus"], ticket["queue"], ticket["disposition"]) == ("PS", "L2", "Inbox")
    assert ticket["callback_time"] == "2024-04-22 14:31:33"
    assert ticket["comments"] == ["Replaced"]


@pytest.mark.parametrize(("item", "message"), [
    ({"ticket_id": "999", "sub_status": "P"}, "No Data found/ticket_id is missing"),
    ({"ticket_id": "", "sub_status": "P"}, "No Data found/ticket_id is missing"),
    ({"sub_status": "P"}, "No Data found/ticket_id is missing"),
    ({"ticket_id": "713516551148", "sub_status": "P", "callback_time": "22/04/2024 14:31"},
     "Invalid Format.callback_date should be yyyy-MM-dd hh:mm:ss."),
    ({"ticket_id": "713516551148", "sub_status": ""}, "sub_status is missing"),
])
async def test_update_failures(aiohttp_client: Any, item: dict[str, Any], message: str) -> None:
    """An unknown or missing ticket id and a wrongly formatted callback get the update page's failures."""
    sim, client = await start(aiohttp_client)
    await call(client, CREATE_PATH, [{"title": "TEST 1"}])
    assert await call(client, UPDATE_PATH, [item]) == (200, {"message": message, "status": "failed"})
    assert sim.tickets[0]["substatus"] == "US"


async def seeded(aiohttp_client: Any, **kwargs: Any) -> tuple[KaptureSimulator, Client]:
    sim = KaptureSimulator(**kwargs)
    for day, hour in ((18, 23), (19, 0), (19, 14), (19, 23), (20, 9)):
        sim.seed(f"ticket {day}-{hour}", datetime(2024, 4, day, hour, 19, 11), email_id="a@b.io")
    return sim, await aiohttp_client(sim.app())


async def test_pull_one_day_answers_as_documented(aiohttp_client: Any) -> None:
    """start_date = end_date gives that day's tickets in the documented shape, totalCount null."""
    sim, client = await seeded(aiohttp_client)
    status, body = await call(client, PULL_PATH, [{"start_date": "2024-04-19", "end_date": "2024-04-19"}])
    assert (status, body["status"], body["totalCount"]) == (200, "success", None)
    assert [t["taskTitle"] for t in body["message"]] == ["ticket 19-0", "ticket 19-14", "ticket 19-23"]
    first = body["message"][0]
    assert first["date"] == "19-04-2024 00:19"
    assert (first["substatusKey"], first["substatus"], first["email"]) == ("US", "Unattended", "a@b.io")
    assert sim.pulls == [{"start_date": "2024-04-19", "end_date": "2024-04-19"}]


async def test_pull_takes_an_object_too(aiohttp_client: Any) -> None:
    """A bare object (the page's "Invalid Json." hint reads that way) is taken like the one-item array."""
    _, client = await seeded(aiohttp_client)
    _, body = await call(client, PULL_PATH, {"start_date": "2024-04-20", "end_date": "2024-04-20"})
    assert [t["taskTitle"] for t in body["message"]] == ["ticket 20-9"]


@pytest.mark.parametrize(("start", "end", "message"), [
    ("2024-04-19", "2024-04-20", "At one hit we can pull a data of max 24 hours."),
    ("2024-04-01", "2024-04-30", "At one hit we can pull a data of max 24 hours."),
    ("2024-04-20", "2024-04-19", "end_date is before start_date."),
    ("19-04-2024", "19-04-2024", "Date should be in YYYY-MM-DD format."),
    ("2024-04-19", None, "Date should be in YYYY-MM-DD format."),
])
async def test_pull_refuses_more_than_24_hours_and_bad_dates(aiohttp_client: Any, start: str, end: str | None,
                                                             message: str) -> None:
    """A range over 24 hours, backwards, or not in YYYY-MM-DD is a failed answer."""
    _, client = await seeded(aiohttp_client)
    body = {"start_date": start, **({"end_date": end} if end else {})}
    assert await call(client, PULL_PATH, [body]) == (200, {"message": message, "status": "failed"})


async def test_pull_with_exclusive_end_date(aiohttp_client: Any) -> None:
    """Read the other way, end_date is the day after; the same day as start is an empty range, two days too many."""
    _, client = await seeded(aiohttp_client, end_date_inclusive=False)
    _, body = await call(client, PULL_PATH, [{"start_date": "2024-04-19", "end_date": "2024-04-20"}])
    assert len(body["message"]) == 3
    _, empty = await call(client, PULL_PATH, [{"start_date": "2024-04-19", "end_date": "2024-04-19"}])
    assert empty["message"] == []
    _, over = await call(client, PULL_PATH, [{"start_date": "2024-04-19", "end_date": "2024-04-21"}])
    assert over["status"] == "failed"


async def test_pull_pages_with_limit_when_pagination_is_enabled(aiohttp_client: Any) -> None:
    """With pagination on, `limit` numbers pages of page_size tickets, totalCount says how many in all."""
    _, client = await seeded(aiohttp_client, pagination_enabled=True, page_size=2)
    pages = []
    for page in (1, 2, 3):
        _, body = await call(client, PULL_PATH, [{"limit": page, "start_date": "2024-04-19",
                                                   "end_date": "2024-04-19"}])
        assert body["totalCount"] == 3
        pages.append([t["taskTitle"] for t in body["message"]])
    assert pages == [["ticket 19-0", "ticket 19-14"], ["ticket 19-23"], []]
    assert await call(client, PULL_PATH, [{"start_date": "2024-04-19", "end_date": "2024-04-19"}]) == (
        200, {"message": "limit is missing.", "status": "failed"})


async def test_pull_ignores_limit_when_pagination_is_off(aiohttp_client: Any) -> None:
    """Without pagination the whole day comes back whatever `limit` says."""
    _, client = await seeded(aiohttp_client)
    _, body = await call(client, PULL_PATH, [{"limit": 2, "start_date": "2024-04-19", "end_date": "2024-04-19"}])
    assert len(body["message"]) == 3


async def test_pull_needs_the_key(aiohttp_client: Any) -> None:
    """A pull with a wrong key is "Invalid Auth Key"."""
    _, client = await seeded(aiohttp_client)
    _, body = await call(client, PULL_PATH, [{"start_date": "2024-04-19", "end_date": "2024-04-19"}],
                         {"Authorization": "Basic nope"})
    assert body == {"message": "Invalid Auth Key", "status": "failed"}


async def test_received_lists_every_vendor_call_with_its_answer(aiohttp_client: Any) -> None:
    """GET /_received lists each call's path and status; the listing and knobs are not vendor calls."""
    _, client = await start(aiohttp_client)
    await call(client, CREATE_PATH, [{"title": "t"}])
    await client.get("/tickets")
    await client.put("/_faults", json={"fail_count": 1, "fail_status": 502})
    await call(client, CREATE_PATH, [{"title": "t"}])
    received = await (await client.get("/_received")).json()
    assert [(e["path"], e["status"]) for e in received["received"]] == [(CREATE_PATH, 200), (CREATE_PATH, 502)]
    assert (await client.delete("/_received")).status == 200
    assert (await (await client.get("/_received")).json())["count"] == 0


async def test_comments_are_kept_in_order_and_shown(aiohttp_client: Any) -> None:
    """Each update's comment is kept on its ticket, in order, listed by GET /tickets and noted in /_received."""
    _, client = await start(aiohttp_client)
    _, created = await call(client, CREATE_PATH, [{"title": "Router down"}])
    for comment in ("Still down", "Now it works"):
        await call(client, UPDATE_PATH, [{"ticket_id": created["ticket_id"], "sub_status": "P", "comment": comment}])
    listed = (await (await client.get("/tickets")).json())["tickets"]
    assert listed[0]["comments"] == ["Still down", "Now it works"]
    received = (await (await client.get("/_received")).json())["received"]
    assert [(e["path"], e.get("comment")) for e in received] == [
        (CREATE_PATH, None), (UPDATE_PATH, "Still down"), (UPDATE_PATH, "Now it works")]
    assert {e["ticket_id"] for e in received} == {created["ticket_id"]}


async def test_update_and_get_find_their_ticket_without_reading_the_others(aiohttp_client: Any) -> None:
    """An update or a get by ticket id looks its ticket up by id: none of the other tickets held is read."""
    sim, client = await start(aiohttp_client)
    others = hold_watched(sim, "ticketId", 50)
    _, made = await call(client, CREATE_PATH, [{"title": "TEST 1"}])
    _, updated = await call(client, UPDATE_PATH, [{"ticket_id": made["ticket_id"], "sub_status": "P", "comment": "c"}])
    _, got = await call(client, GET_PATH, {"ticket_ids": f"{made['ticket_id']},999"})
    assert (updated["status"], [g["task_details"]["ticket_id"] for g in got]) == ("success", [made["ticket_id"]])
    assert reads(others) == 0


async def test_a_dropped_ticket_is_no_data_found_and_the_held_ones_answer(aiohttp_client: Any) -> None:
    """Past `max_tickets` the oldest is dropped: its update is "No Data found", its get is empty; the tickets
    still held are updated and got, in the order they were made."""
    sim, client = await start(aiohttp_client)
    sim.max_tickets = 2
    ids = [(await call(client, CREATE_PATH, [{"title": f"t{n}"}]))[1]["ticket_id"] for n in range(3)]
    assert [t["ticketId"] for t in sim.tickets] == ids[1:]
    assert await call(client, UPDATE_PATH, [{"ticket_id": ids[0], "sub_status": "P"}]) == (
        200, {"message": "No Data found/ticket_id is missing", "status": "failed"})
    assert (await call(client, UPDATE_PATH, [{"ticket_id": ids[1], "sub_status": "P"}]))[1]["status"] == "success"
    _, got = await call(client, GET_PATH, {"ticket_ids": ",".join(reversed(ids))})
    assert [g["task_details"]["ticket_id"] for g in got] == ids[1:]


async def test_a_ticket_keeps_its_newest_comments(aiohttp_client: Any) -> None:
    """Comments past `max_history` drop the ticket's oldest; the update still answers success."""
    sim, client = await start(aiohttp_client)
    sim.max_history = 2
    _, made = await call(client, CREATE_PATH, [{"title": "TEST 1"}])
    answers = [(await call(client, UPDATE_PATH, [{"ticket_id": made["ticket_id"], "sub_status": "P",
                                                  "comment": f"c{n}"}]))[1]["status"] for n in range(3)]
    assert (answers, sim.tickets[0]["comments"]) == (["success"] * 3, ["c1", "c2"])


async def test_pulls_and_gets_keep_as_many_as_calls_received(aiohttp_client: Any) -> None:
    """The pulls and gets a test may read are kept as the calls are, the newest `received.max_entries`."""
    sim, client = await start(aiohttp_client)
    sim.received.max_entries = 2
    for n in range(3):
        await call(client, PULL_PATH, [{"start_date": "2024-04-19", "end_date": "2024-04-19", "n": n}])
        await call(client, GET_PATH, {"ticket_ids": f"id{n}"})
    assert ([p["n"] for p in sim.pulls], sim.gets) == ([1, 2], [["id1"], ["id2"]])


async def test_pulls_are_bounded_in_bytes_too(aiohttp_client: Any) -> None:
    """Pulls whose bodies weigh more than `received.max_bytes` in all drop the oldest first, however few they are;
    the newest is kept however heavy, and the weight kept is theirs."""
    sim, client = await start(aiohttp_client)
    sim.received.max_bytes = 5_000
    for n in range(4):
        await call(client, PULL_PATH, [{"start_date": "2024-04-19", "end_date": "2024-04-19", "n": n,
                                        "pad": "x" * 2_000}])
    assert [p["n"] for p in sim.pulls] == [2, 3]
    assert sim.pulls.held_bytes == sum(len(msgspec.json.encode(p)) for p in sim.pulls)
    await call(client, PULL_PATH, [{"start_date": "2024-04-19", "end_date": "2024-04-19", "n": 4,
                                    "pad": "x" * 9_000}])
    assert [p["n"] for p in sim.pulls] == [4]


async def test_gets_are_bounded_in_bytes_too(aiohttp_client: Any) -> None:
    """Gets whose ticket ids weigh more than `received.max_bytes` in all drop the oldest first; the newest is kept
    however heavy."""
    sim, client = await start(aiohttp_client)
    sim.received.max_bytes = 5_000
    for n in range(4):
        await call(client, GET_PATH, {"ticket_ids": ",".join(f"{n}-{i:04}" for i in range(250))})  # ~2.2 KB
    assert [g[0] for g in sim.gets] == ["2-0000", "3-0000"] and sim.gets.held_bytes <= 5_000
    await call(client, GET_PATH, {"ticket_ids": ",".join(f"4-{i:04}" for i in range(1_000))})
    assert [g[0] for g in sim.gets] == ["4-0000"]


async def test_updates_keep_the_weight_of_what_a_ticket_holds(aiohttp_client: Any) -> None:
    """Updates setting the sub-status, queue, disposition and call-back and adding comments: the weight the
    simulator keeps is the held tickets encoded afresh after each."""
    sim, client = await start(aiohttp_client)
    _, made = await call(client, CREATE_PATH, [{"title": "TEST 1", "custom": {"k": [1, 2]}}])
    for n in range(4):
        update = {"ticket_id": made["ticket_id"], "sub_status": "P" * (n + 1), "queue": "q" * n,
                  "disposition": f"d{n}", "callback_time": "2024-04-19 10:00:00" if n % 2 else "",
                  "comment": "c" * n}
        assert (await call(client, UPDATE_PATH, [update]))[1]["status"] == "success"
        assert sim.held_bytes == sum(len(msgspec.json.encode(t)) for t in sim.tickets)
    assert (sim.tickets[0]["queue"], sim.tickets[0]["comments"]) == ("qqq", ["c", "cc", "ccc"])
