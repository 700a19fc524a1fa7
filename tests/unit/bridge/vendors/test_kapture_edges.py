"""Kapture's edges: a key per operation, mapping options, a pull that wants an object, the shapes of the
pull's `message`, both callback names, and reconciliation's look-up against the simulator."""

from __future__ import annotations

import json
import threading
import tracemalloc
from datetime import datetime
from typing import Any

import aiohttp
import msgspec
import pytest

from bridge.simulators.kapture import KaptureSimulator
from bridge.vendors.base import LOOKUP_MAX_CONTAINERS, CannotReconcile, SearchStopped, VendorAuthFailed, VendorRequest
from bridge.vendors.kapture import KaptureAdapter, KaptureKeys, KaptureOptions
from bridge.vendors.kapture_pull import find_created, parse_pull, pull_request, reference_at
from tests.allocations import peak_of

BASE = "https://acme.kapturecrm.com"
NOW = datetime(2024, 4, 19, 14, 19, 11)


def adapter(base: str = BASE, **options: Any) -> KaptureAdapter:
    options.setdefault("token", "tok")
    return KaptureAdapter("kapture", KaptureOptions(vendor="kapture", base_url=base, **options), base)


def test_each_operation_uses_its_own_key_else_the_token() -> None:
    """`tokens.add|update|pull` give each API its own Auth Key; an operation without one uses `token`."""
    a = adapter(tokens=KaptureKeys(add="k-add", pull="k-pull"))
    create = a.build_request("create_ticket", {"title": "t"}, {})
    update = a.build_request("update_ticket", {"ticket_id": "1", "sub_status": "P"}, {})
    assert create.headers["Authorization"] == "Basic k-add"
    assert update.headers["Authorization"] == "Basic tok"
    assert pull_request(a, NOW.date()).headers["Authorization"] == "Basic k-pull"


def test_keys_per_operation_may_replace_the_token() -> None:
    """With a key for every operation no `token` is needed; with some missing the error names them."""
    adapter(token="", tokens=KaptureKeys(add="a", update="u", pull="p", get="g"))
    with pytest.raises(ValueError, match="pull, get has none"):
        adapter(token="", tokens=KaptureKeys(add="a", update="u"))


def test_unknown_mapping_options_are_refused_with_the_known_ones() -> None:
    """A mapping option Kapture does not take is a static error listing the known ones; a bad value too."""
    assert KaptureAdapter.static_check("create_ticket", ["title"], {"TypeId": 1}) == [
        "options.TypeId: unknown Kapture option; known: body"]
    assert KaptureAdapter.static_check("create_ticket", ["title"], {"body": "xml"}) == [
        "options.body: 'xml' is not one of array, object"]
    assert KaptureAdapter.static_check("create_ticket", ["title"], {"body": "object"}) == []


def test_body_option_sends_a_bare_object() -> None:
    """`options: {body: object}` sends the item as an object; the default is the documented array."""
    a = adapter()
    assert json.loads(a.build_request("create_ticket", {"title": "t"}, {"body": "object"}).body) == {"title": "t"}
    assert json.loads(a.build_request("create_ticket", {"title": "t"}, {}).body) == [{"title": "t"}]


@pytest.mark.parametrize(("message", "count"), [
    ([{"ticketId": "1"}, {"ticketId": "2"}], 2), ({"ticketId": "1"}, 1), ("No ticket found", 0), (None, 0)])
def test_pull_message_may_be_a_list_one_ticket_or_a_text(message: Any, count: int) -> None:
    """The pull answer's `message` is read as a list of tickets, one ticket alone, or nothing (a text)."""
    page = parse_pull(200, {}, json.dumps({"status": "success", "message": message, "totalCount": None}).encode())
    assert page.outcome.classification == "success" and len(page.tickets) == count


def test_reference_is_found_through_lists_and_objects() -> None:
    """A dotted reference path walks objects and any lists (Kapture's `"section": [{…}]` custom fields)."""
    assert reference_at({"ref": [{"bridge_ref": "evt_1"}]}, ["ref", "bridge_ref"]) == ["evt_1"]
    assert reference_at({"ref": {"bridge_ref": 7}}, ["ref", "bridge_ref"]) == ["7"]
    assert reference_at({"ref": "flat"}, ["ref", "bridge_ref"]) == []


async def serve(aiohttp_server: Any, sim: KaptureSimulator) -> tuple[Any, str]:
    server = await aiohttp_server(sim.app())
    return server, str(server.make_url("")).rstrip("/")


def caller(session: aiohttp.ClientSession) -> Any:
    async def call(request: VendorRequest) -> tuple[int, bytes]:
        async with session.request(request.method, request.url, headers=request.headers, data=request.body) as r:
            return r.status, await r.read()
    return call


async def test_find_created_matches_the_reference_and_learns_the_object_body(aiohttp_server: Any) -> None:
    """Against an account that refuses the array body of a pull, the look-up asks again with an object (and
    keeps doing so), then finds the ticket whose `additional_info` carries the reference; another reference
    finds nothing."""
    sim = KaptureSimulator(tokens={"tok"}, pull_refuses_array=True, clock=lambda: NOW)
    sim.seed("other", NOW, ref=[{"bridge_ref": "evt_other"}])
    made = sim.seed("mine", NOW, ref=[{"bridge_ref": "evt_mine"}])
    _, base = await serve(aiohttp_server, sim)
    a = adapter(base, reference_field="ref.bridge_ref")
    since = int(NOW.timestamp() * 1000)
    async with aiohttp.ClientSession() as session:
        found = await find_created(a, {"title": "mine", "ref": [{"bridge_ref": "evt_mine"}]}, since, caller(session),
                                   now_ms=since)
        assert found is not None and found.ticket_id == made["ticketId"]
        assert a.pull_as_object is True
        assert await find_created(a, {"title": "x", "ref": [{"bridge_ref": "evt_none"}]}, since, caller(session),
                                  now_ms=since) is None
    assert [type(p).__name__ for p in sim.pulls] == ["dict"] * len(sim.pulls)  # only objects were served


async def test_find_created_without_a_reference_in_the_body_cannot_tell() -> None:
    """A body without the reference field cannot be looked up: CannotReconcile, naming the field."""
    a = adapter(reference_field="ref.bridge_ref")

    async def never(request: VendorRequest) -> tuple[int, bytes]:
        raise AssertionError("no call expected")

    with pytest.raises(CannotReconcile, match=r"ref\.bridge_ref"):
        await find_created(a, {"title": "t"}, 0, never)


async def test_find_created_with_a_refused_key_is_an_auth_failure(aiohttp_server: Any) -> None:
    """A pull refused for its key (a separate pull key that expired) is VendorAuthFailed, not 'not found'."""
    sim = KaptureSimulator(tokens={"tok"}, operation_tokens={"pull": {"k-pull"}}, clock=lambda: NOW)
    _, base = await serve(aiohttp_server, sim)
    a = adapter(base, reference_field="ref", tokens=KaptureKeys(pull="expired"))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(VendorAuthFailed, match="Invalid Auth Key"):
            await find_created(a, {"title": "t", "ref": "x"}, 0, caller(session), now_ms=int(NOW.timestamp() * 1000))


@pytest.mark.parametrize("name", ["callback_time", "callback_date"])
async def test_simulator_takes_both_callback_names(aiohttp_server: Any, name: str) -> None:
    """The update page names the field `callback_time` in its body and `callback_date` in its error text: the
    simulator keeps either, and refuses a bad value under either name with the documented message."""
    sim = KaptureSimulator(tokens={"tok"}, clock=lambda: NOW)
    ticket = sim.seed("t", NOW)
    _, base = await serve(aiohttp_server, sim)
    a = adapter(base)
    async with aiohttp.ClientSession() as session:
        call = caller(session)
        fields = {"ticket_id": ticket["ticketId"], "sub_status": "P"}
        request = a.build_request("update_ticket", fields, {})
        body = msgspec.json.encode([{**fields, name: "2024-04-20 10:00:00"}])
        status, answer = await call(msgspec.structs.replace(request, body=body))
        assert a.classify("update_ticket", status, {}, answer).classification == "success"
        assert ticket["callback_time"] == "2024-04-20 10:00:00"
        bad = msgspec.json.encode([{**fields, name: "tomorrow"}])
        status, answer = await call(msgspec.structs.replace(request, body=bad))
        assert "callback_date should be yyyy-MM-dd" in (a.classify("update_ticket", status, {}, answer).error or "")


async def test_get_by_ticket_id_sends_an_object_and_reads_the_top_level_array(aiohttp_server: Any) -> None:
    """The get call is an object with `ticket_ids` comma-separated under the get key; its answer, a top-level
    array of {additional_info, history, task_details}, gives the tickets held (none for an unknown id)."""
    sim = KaptureSimulator(tokens={"tok"}, operation_tokens={"get": {"k-get"}}, clock=lambda: NOW)
    one, two = sim.seed("one", NOW, ref="a"), sim.seed("two", NOW)
    _, base = await serve(aiohttp_server, sim)
    a = adapter(base, tokens=KaptureKeys(get="k-get"))
    request = a.get_request([one["ticketId"], two["ticketId"]])
    assert json.loads(request.body) == {"ticket_ids": f"{one['ticketId']},{two['ticketId']}"}
    assert request.headers["Authorization"] == "Basic k-get"
    async with aiohttp.ClientSession() as session:
        found = await a.get_tickets([one["ticketId"], "999"], caller(session))
        assert [(t["task_details"]["ticket_id"], t["additional_info"]) for t in found] == [(one["ticketId"],
                                                                                           {"ref": "a"})]
        assert set(found[0]) == {"additional_info", "history", "task_details"}
        assert await a.ticket_exists(one["ticketId"], caller(session)) is None  # check_ticket is off
        checking = adapter(base, tokens=KaptureKeys(get="k-get"), check_ticket=True)
        assert await checking.ticket_exists(one["ticketId"], caller(session)) is True
        assert await checking.ticket_exists("999", caller(session)) is False
    assert sim.gets == [[one["ticketId"], "999"], [one["ticketId"]], ["999"]]


async def test_simulator_get_refuses_an_array(aiohttp_server: Any) -> None:
    """As documented, an array sent to get by id answers "Invalid Json"."""
    sim = KaptureSimulator(tokens={"tok"}, clock=lambda: NOW)
    _, base = await serve(aiohttp_server, sim)
    a = adapter(base)
    request = a.get_request(["1"])
    async with aiohttp.ClientSession() as session:
        status, body = await caller(session)(msgspec.structs.replace(request, body=b'[{"ticket_ids": "1"}]'))
    assert json.loads(body)["message"].startswith("Invalid Json")
    assert status == 200


@pytest.mark.parametrize("semantics", ["page", "size"])
async def test_find_created_pages_whichever_way_the_account_reads_limit(aiohttp_server: Any,
                                                                        semantics: str) -> None:
    """On an account that asks for `limit`, the look-up pages: by page number, or (seen from a page that
    repeats and grows) by `offset`, remembered; either way it reaches the ticket on a later page."""
    sim = KaptureSimulator(tokens={"tok"}, pagination_enabled=True, page_size=2, clock=lambda: NOW,
                           limit_semantics=semantics)  # type: ignore[arg-type]
    for n in range(4):
        sim.seed(f"t{n}", NOW, ref=f"evt_{n}")
    _, base = await serve(aiohttp_server, sim)
    a = adapter(base, reference_field="ref")
    since = int(NOW.timestamp() * 1000)
    async with aiohttp.ClientSession() as session:
        found = await find_created(a, {"title": "t3", "ref": "evt_3"}, since, caller(session), now_ms=since)
    assert found is not None and found.ticket_id == sim.tickets[3]["ticketId"]
    assert a.limit_is_size is (semantics == "size")


class PagedDay:
    """A paged Kapture pull in process: `pages` pages a day, each of `per_page` tickets carrying `pad` characters
    of text, made as each page is asked for; the ticket whose reference is `wanted_at` (day index, page, index)
    carries "evt_wanted". `stop_after` calls, it raises what a reconciliation's call raises once its deadline
    has passed."""

    def __init__(self, pages: int, per_page: int = 50, pad: int = 0, wanted_at: tuple[int, int, int] | None = None,
                 stop_after: int | None = None) -> None:
        self.pages, self.per_page, self.pad = pages, per_page, pad
        self.wanted_at, self.stop_after = wanted_at, stop_after
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, request: VendorRequest) -> tuple[int, bytes]:
        if self.stop_after is not None and len(self.asked) >= self.stop_after:
            raise SearchStopped("its 300s (the destination's reconcile_timeout) ran out")
        item = json.loads(request.body)[0]
        day, page = item["start_date"], item.get("limit")
        if page is None:
            return 200, json.dumps({"status": "failed", "message": "limit is required"}).encode()
        self.asked.append((day, page))
        if page > self.pages:
            return 200, json.dumps({"status": "success", "message": []}).encode()
        index = sorted({d for d, _ in self.asked}).index(day)
        tickets = [{"ticketId": f"{day}-{page}-{n}", "date": f"{day[8:]}-{day[5:7]}-{day[:4]} 10:00",
                    "additional_info": {"ref": "evt_wanted" if (index, page, n) == self.wanted_at else f"evt_{n}"},
                    "detail": "d" * self.pad} for n in range(self.per_page)]
        return 200, json.dumps({"status": "success", "message": tickets}).encode()


async def test_find_created_holds_one_page_at_a_time_and_stops_at_the_match() -> None:
    """A day of 30 pages of about a megabyte each is read page by page: the look-up holds about one page (in
    bytes allocated, not the 30 the day makes), and returns at the page that matches without pulling the rest."""
    pulls = PagedDay(pages=30, per_page=100, pad=10_000, wanted_at=(0, 25, 7))
    a = adapter(reference_field="ref")
    since = int(NOW.timestamp() * 1000)
    found, peak = await peak_of(lambda: find_created(a, {"title": "t", "ref": "evt_wanted"}, since, pulls,
                                                     now_ms=since))
    page_bytes = 100 * 10_000
    assert found is not None and found.ticket_id == "2024-04-18-25-7"
    assert peak < 6 * page_bytes, f"held {peak / page_bytes:.1f} pages"
    assert pulls.asked == [("2024-04-18", n) for n in range(1, 26)]


async def test_find_created_stopped_says_what_it_searched() -> None:
    """A look-up stopped by its deadline (raised by its call) says why and what it had pulled: the days done,
    the pages and tickets of the day it was in, and the days it did not reach; it is never a "not found"."""
    pulls = PagedDay(pages=3, per_page=2, stop_after=5)
    a = adapter(reference_field="ref")
    since = int(NOW.timestamp() * 1000)
    with pytest.raises(SearchStopped) as stopped:
        await find_created(a, {"title": "t", "ref": "evt_x"}, since, pulls, now_ms=since)
    assert str(stopped.value) == (
        "its 300s (the destination's reconcile_timeout) ran out; looked for ref = 'evt_x' in the tickets of "
        "2024-04-18 (4 pages, 6 tickets), 2024-04-19 (1 page, 2 tickets, not to its end)")


async def test_find_created_with_endless_pages_or_a_send_older_than_its_days_cannot_tell() -> None:
    """A day whose pages do not end within RECONCILE_MAX_PAGES, and a send older than the RECONCILE_MAX_DAYS a
    look-up pulls with no match in them, stop the look-up saying so (SearchStopped): neither is "not found"."""
    a = adapter(reference_field="ref")
    since = int(NOW.timestamp() * 1000)
    with pytest.raises(SearchStopped, match=r"^the pull for 2024-04-18 still had tickets after 100 pages, the most "
                                            r"a reconciliation pulls a day; looked for ref = 'evt_x' in the "
                                            r"tickets of 2024-04-18 \(100 pages, 100 tickets, not to its end\); "
                                            r"not pulled: 2024-04-19$"):
        await find_created(a, {"title": "t", "ref": "evt_x"}, since, PagedDay(pages=1000, per_page=1), now_ms=since)
    ten_days_ago = since - 10 * 86_400_000
    with pytest.raises(SearchStopped, match=r"^the send may have made its ticket on 2024-04-08, before the 8 days a "
                                            r"reconciliation pulls; looked for ref = 'evt_x' in the tickets of "
                                            r"2024-04-12 \(2 pages, 1 ticket\), "):
        await find_created(a, {"title": "t", "ref": "evt_x"}, ten_days_ago, PagedDay(pages=1, per_page=1),
                           now_ms=since)


class OneTicket:
    """A Kapture pull answering, for every day, one page holding one ticket: `ticket` with the reference evt_1."""

    def __init__(self, ticket: dict[str, Any]) -> None:
        self.ticket = {**ticket, "additional_info": {"ref": "evt_1"}}

    async def __call__(self, request: VendorRequest) -> tuple[int, bytes]:
        page = json.loads(request.body)[0].get("limit")
        tickets = [self.ticket] if page in (None, 1) else []
        return 200, json.dumps({"status": "success", "message": tickets}).encode()


@pytest.mark.parametrize(("ticket", "kept"), [
    ({"ticketId": "713516551148"}, "713516551148"),
    ({"ticketId": 713516551148}, "713516551148"),
    ({"ticket_id": "T-9"}, "T-9"),
    ({"ticketId": {"n": 1}, "ticket_id": "T-9"}, "T-9"),
    ({"taskId": 530348198}, "taskId:530348198"),
], ids=["text", "number", "ticket_id", "no-id-then-an-id", "task-id"])
async def test_find_created_reads_the_found_ticket_s_id_as_an_answer_s(ticket: dict[str, Any], kept: str) -> None:
    """The ticket found is named by its `ticketId`, else `ticket_id`, each read as a create's answer is (a whole
    number as its decimal text); with neither, by its task id."""
    since = int(NOW.timestamp() * 1000)
    found = await find_created(adapter(reference_field="ref"), {"title": "t", "ref": "evt_1"}, since,
                               OneTicket(ticket), now_ms=since)
    assert found is not None and found.ticket_id == kept


@pytest.mark.parametrize(("value", "said"), [
    (True, "a boolean (true)"),
    (12.5, "a number with a fraction or an exponent (12.5)"),
    ({"n": 1}, 'an object ({"n":1})'),
    ("", "empty text"),
], ids=["true", "fraction", "object", "empty"])
async def test_find_created_with_a_found_ticket_whose_id_is_no_id_cannot_tell(value: Any, said: str) -> None:
    """A ticket carrying the reference whose id is no id (`true`, 12.5, an object) is not taken as "True" or
    "12.5": it names a ticket the bridge cannot keep, so the look-up cannot tell (held), not "none found" (which
    would send the create again), saying where and what the id was."""
    since = int(NOW.timestamp() * 1000)
    with pytest.raises(CannotReconcile) as info:
        await find_created(adapter(reference_field="ref"), {"title": "t", "ref": "evt_1"}, since,
                           OneTicket({"ticketId": value, "taskId": 530348198}), now_ms=since)
    assert str(info.value) == ("kapture: the ticket pulled for 2024-04-18 carrying ref = 'evt_1' has no usable id: "
                               f"the answer's ticket id at `ticketId` is {said}, not kept (an id is a whole number or "
                               "non-blank text of at most 256 characters, no NUL)")


@pytest.mark.parametrize("depth", [700, 5000])
def test_reference_is_looked_for_in_lists_nested_however_deep(depth: int) -> None:
    """A pulled ticket whose `additional_info` nests lists hundreds deep (as a hostile account answers) is walked
    without recursion: no RecursionError, and a reference at the bottom is still found."""
    nested: Any = [{"bridge_ref": "evt_1"}]
    for _ in range(depth):
        nested = [nested]
    assert reference_at(nested, ["bridge_ref"]) == ["evt_1"]
    assert reference_at({"additional_info": nested}, ["bridge_ref"]) == []


def test_reference_keeps_the_tickets_order() -> None:
    """Texts are found in the order the ticket holds them, a list's items first to last."""
    info = {"ref": [{"bridge_ref": "a"}, [{"bridge_ref": "b"}, {"bridge_ref": None}], {"bridge_ref": {"x": 1}},
                    {"bridge_ref": "c"}]}
    assert reference_at(info, ["ref", "bridge_ref"]) == ["a", "b", "c"]


def pulls_answering(body: bytes) -> Any:
    """A `call` whose every pull is answered HTTP 200 with `body`."""

    async def call(request: VendorRequest) -> tuple[int, bytes]:
        return 200, body

    return call


async def test_a_pull_answer_of_too_many_objects_stops_the_search_before_it_is_decoded() -> None:
    """A pull answered with more objects and arrays than a look-up reads (`{"message": [{}, {}, …]}`, as a hostile
    account answers 32 MiB of them) stops the reconciliation (the outcome stays unknown) without decoding it, so
    that what decoding builds stays bounded."""
    body = b'{"status":"success","message":[' + b",".join([b"{}"] * (LOOKUP_MAX_CONTAINERS + 1)) + b"]}"
    a = adapter(reference_field="ref")
    since = int(NOW.timestamp() * 1000)
    tracemalloc.start()
    try:
        with pytest.raises(SearchStopped, match="holds more than 400,000 objects and arrays"):
            await find_created(a, {"title": "t", "ref": "evt_1"}, since, pulls_answering(body), now_ms=since)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * len(body)  # not the ~100 bytes per object a decode of them builds


async def test_a_large_pull_answer_is_read_off_the_event_loop() -> None:
    """A pull answer that is not small (here about 1 MiB) is decoded and scanned in the look-up thread, not on
    the event loop, which answers every other request meanwhile; a small one is read on the loop."""
    seen: list[str] = []
    a = adapter(reference_field="ref")
    since = int(NOW.timestamp() * 1000)

    def answer(count: int) -> bytes:
        tickets = [{"ticketId": str(n), "date": "19-04-2024 14:19", "additional_info": {"ref": f"evt_{n}"},
                    "detail": "x" * 200} for n in range(count)]
        return msgspec.json.encode({"status": "success", "message": tickets})

    import bridge.vendors.kapture_pull as pull

    scan = pull._scan_page

    def watched(*args: Any) -> Any:
        seen.append(threading.current_thread().name)
        return scan(*args)

    pull._scan_page = watched  # type: ignore[assignment]
    try:
        found = await find_created(a, {"title": "t", "ref": "evt_3999"}, since, pulls_answering(answer(4000)),
                                   now_ms=since)
        assert found is not None and found.ticket_id == "3999"
        await find_created(a, {"title": "t", "ref": "evt_1"}, since, pulls_answering(answer(3)), now_ms=since)
    finally:
        pull._scan_page = scan  # type: ignore[assignment]
    assert seen[0].startswith("ticketbridge-lookup")
    assert seen[-1] == threading.current_thread().name
