"""The admin API through the whole app: tokens (401, 403), deliveries read, filtered and paged, replayed
and audited, destinations paused and resumed, events explained, and the playground storing nothing."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from bridge.console.api import ROUTES
from bridge.console.models import REPLAY_MOST
from bridge.console.openapi import spec
from bridge.delivery import replay as replay_module
from bridge.errors import StoreRefused, StoreUnavailable
from bridge.events import Event
from bridge.simulators.faults import Faults
from bridge.simulators.kapture import KaptureSimulator
from bridge.store.base import NewDelivery
from tests.acceptance.console_app import ADMIN, READ, console_app, threaded_mapping
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.integration.store.contract import result

CONFIG, PARTNER = console_app()
MAPPINGS = {
    **PARTNER,
    "urgent": """
        source: partner
        destination: kapture
        action: create_ticket
        when: "payload.urgent is defined and payload.urgent"
        fields:
          title: "URGENT {{ payload.title }}"
    """,
}

Client = TestClient[Any, Any]


async def start(write_config: ConfigFactory, bridge_client: AppClient, **kw: Any) -> Client:
    return await bridge_client(write_config(CONFIG, MAPPINGS), **kw)


async def get(client: Client, path: str, **params: Any) -> Any:
    resp = await client.get(path, params=params, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def post(client: Client, path: str, body: dict[str, Any], headers: dict[str, str] = ADMIN) -> Any:
    resp = await client.post(path, json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def deliveries(client: Client, **params: Any) -> list[dict[str, Any]]:
    return list((await get(client, "/admin/api/deliveries", **params))["items"])


def concrete(path: str) -> str:
    return (path.replace("{delivery_id}", "dlv_x").replace("{event_id}", "evt_x").replace("{destination}", "kapture")
            .replace("{key}", "chat:x"))


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.method} {r.path}" for r in ROUTES])
async def test_every_route_refuses_a_request_without_a_known_token(write_config: ConfigFactory,
                                                                    bridge_client: AppClient, route: Any) -> None:
    """Without a token, or with an unknown one, every admin route answers 401 with a bearer challenge."""
    client = await start(write_config, bridge_client, workers=False)
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic YWRtaW4="}):
        resp = await client.request(route.method, concrete(route.path), headers=headers, json={})
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="ticketbridge admin"'
    resp = await client.get("/admin/openapi.json")
    assert resp.status == 401


@pytest.mark.parametrize("route", [r for r in ROUTES if r.change], ids=[r.path for r in ROUTES if r.change])
async def test_a_read_token_cannot_change_anything(write_config: ConfigFactory, bridge_client: AppClient,
                                                    route: Any) -> None:
    """A read-only token on a change answers 403 naming the token, and writes no audit entry."""
    client = await start(write_config, bridge_client, workers=False)
    resp = await client.request(route.method, concrete(route.path), headers=READ, json={"ids": ["dlv_x"]})
    assert resp.status == 403
    assert "'grafana' is read-only" in (await resp.json())["error"]
    assert (await get(client, "/admin/api/audit"))["items"] == []


BODIES: dict[str, tuple[bytes, int]] = {
    # each change route and the playground: a body it takes, and what that body answers when sent as JSON (a pause
    # or resume: 409, as the app of this test runs no delivery workers)
    "/admin/api/destinations/{destination}/pause": (b'{"reason": "maintenance"}', 409),
    "/admin/api/destinations/{destination}/resume": (b"{}", 409),
    "/admin/api/destinations/{destination}/mark-dead": (b'{"reason": "retired"}', 409),  # a configured destination
    "/admin/api/replay": (b'{"ids": ["dlv_x"], "dry_run": true}', 200),
    "/admin/api/deliveries/{delivery_id}/mark-succeeded": (b'{"ticket_id": "T-1"}', 404),
    "/admin/api/deliveries/{delivery_id}/set-ticket": (b'{"ticket_id": "T-1"}', 404),
    "/admin/api/playground": (b'{"source": "partner", "body": "{}"}', 200),
    "/admin/api/conversations/{key}/reset": (b'{"reason": "merged"}', 404),  # no such conversation
}
NOT_JSON = ["text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", "multipart/form-data",
            "application/json; charset=latin-1", "text/json", "application/jsonx", "json",
            "application/json; x=;+*"]  # a header aiohttp's parser raises on: a 415 too, not a 500


@pytest.mark.parametrize("route", [r for r in ROUTES if r.method != "GET"], ids=[r.path for r in ROUTES
                                                                                  if r.method != "GET"])
async def test_a_body_not_sent_as_json_is_a_415_naming_both_types(write_config: ConfigFactory,
                                                                   bridge_client: AppClient, route: Any) -> None:
    """A POST whose body is not sent as `application/json` (UTF-8), or has no Content-Type, answers 415 naming
    what came and what is expected, and changes nothing; the same body as JSON answers as it always did."""
    client = await start(write_config, bridge_client, workers=False)
    body, as_json = BODIES[route.path]
    for sent in NOT_JSON:
        resp = await client.post(concrete(route.path), data=body, headers={**ADMIN, "Content-Type": sent})
        assert resp.status == 415, (sent, await resp.text())
        said = (await resp.json())["error"]
        assert repr(sent) in said and "application/json" in said and route.path in said, said
    bare = await client.post(concrete(route.path), data=body, headers=ADMIN, skip_auto_headers=["Content-Type"])
    assert bare.status == 415 and "no Content-Type" in (await bare.json())["error"]
    assert (await get(client, "/admin/api/audit"))["items"] == []
    assert (await get(client, "/admin/api/destinations"))["items"][0]["paused"] is False
    for sent in ("application/json", "application/json; charset=utf-8", "Application/JSON; charset=UTF-8"):
        resp = await client.post(concrete(route.path), data=body, headers={**ADMIN, "Content-Type": sent})
        assert resp.status == as_json, (sent, await resp.text())


async def test_a_route_without_a_body_takes_an_empty_post_of_any_type(write_config: ConfigFactory,
                                                                     bridge_client: AppClient) -> None:
    """`resume` takes no body: an empty POST answers 200 with or without a Content-Type, as a body in
    another type than JSON answers 415; every route that takes a body wants JSON even when it is empty."""
    client = await start(write_config, bridge_client)
    resume = "/admin/api/destinations/kapture/resume"
    for headers in ({}, {"Content-Type": "text/plain"}):
        resp = await client.post(resume, headers={**ADMIN, **headers}, skip_auto_headers=["Content-Type"])
        assert resp.status == 200, await resp.text()
    resp = await client.post(resume, data=b"x", headers={**ADMIN, "Content-Type": "text/plain"})
    assert resp.status == 415 and "takes no body" in (await resp.json())["error"]
    pause = "/admin/api/destinations/kapture/pause"
    resp = await client.post(pause, headers=ADMIN, skip_auto_headers=["Content-Type"])
    assert resp.status == 415
    resp = await client.post(pause, headers={**ADMIN, "Content-Type": "application/json"})
    assert resp.status == 200 and (await resp.json())["paused"] is True


async def test_a_read_token_reads(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """A read-only token reads every read route."""
    client = await start(write_config, bridge_client, workers=False)
    for path in ("/admin/api/overview", "/admin/api/deliveries", "/admin/api/destinations", "/admin/api/mappings",
                 "/admin/api/audit", "/admin/openapi.json"):
        assert (await client.get(path, headers=READ)).status == 200


async def test_the_overview_names_the_caller_and_its_role(write_config: ConfigFactory,
                                                         bridge_client: AppClient) -> None:
    """The overview says which token asked and whether it may change things, so a client offers only that."""
    client = await start(write_config, bridge_client, workers=False)
    assert (await get(client, "/admin/api/overview"))["caller"] == {"name": "admin", "role": "admin"}
    read = await (await client.get("/admin/api/overview", headers=READ)).json()
    assert read["caller"] == {"name": "grafana", "role": "read"}


async def test_a_dead_delivery_is_found_replayed_and_the_change_audited(write_config: ConfigFactory,
                                                                         bridge_client: AppClient) -> None:
    """A delivery the vendor refused is listed as dead with its attempts; replayed through the API after the
    vendor recovers it succeeds, and the audit log says who replayed what."""
    client = await start(write_config, bridge_client)
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    sim.faults = Faults(fail_count=-1, fail_status=500)
    assert (await client.post("/hooks/partner", json={"title": "Router down"})).status == 202
    await eventually(lambda: _has(client, status="dead"))
    [dead] = await deliveries(client, status="dead")
    view = await get(client, f"/admin/api/deliveries/{dead['id']}")
    assert view["body"] == {"title": "Router down"} and view["event"]["payload"] == {"title": "Router down"}
    assert [a["classification"] for a in view["attempts"]] == ["retry", "retry"]
    assert view["attempts"][0]["http_status"] == 500
    sent = view["attempts"][0]["exchange"]
    assert sent["request"]["method"] == "POST" and "Router down" in sent["request"]["body"]
    assert sent["response_headers"]["Content-Type"].startswith("application/json")

    dry = await post(client, "/admin/api/replay", {"status": "dead", "destination": "kapture", "dry_run": True})
    assert (dry["matched"], dry["replayed"]) == ([dead["id"]], [])
    both = await post(client, "/admin/api/replay", {"ids": [dead["id"]], "status": "dead", "dry_run": True})
    assert both["matched"] == [dead["id"]]  # named and matched by the filter: once
    assert (await get(client, "/admin/api/audit"))["items"] == []

    sim.faults = Faults()
    done = await post(client, "/admin/api/replay", {"ids": [dead["id"]]})
    assert done["replayed"] == [dead["id"]] and done["refused"] == []
    await eventually(lambda: _has(client, status="succeeded"))
    [entry] = (await get(client, "/admin/api/audit"))["items"]
    assert (entry["actor"], entry["action"], entry["target"]) == ("admin", "deliveries.replay", dead["id"])
    again = await post(client, "/admin/api/replay", {"ids": [dead["id"], "dlv_missing"], "dry_run": True})
    assert again["refused"] == [{"id": "dlv_missing", "reason": "no such delivery"}]


async def _replay_stopped_on_second_part(write_config: ConfigFactory, bridge_client: AppClient,
                                        monkeypatch: pytest.MonkeyPatch,
                                        error: Exception) -> tuple[Client, Any, list[list[str]]]:
    """Two dead deliveries replayed re-rendered, a part for each body, the store's `replay` raising `error` on the
    second part: the client, the answer and the parts the store was handed."""
    client = await start(write_config, bridge_client)
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    sim.faults = Faults(fail_count=-1, fail_status=500)
    for title in ("one", "two"):
        assert (await client.post("/hooks/partner", json={"title": title})).status == 202
    await eventually(lambda: _count(client, 2, status="dead"))
    dead = sorted(d["id"] for d in await deliveries(client, status="dead"))
    monkeypatch.setattr(replay_module, "REPLAY_RENDERED_CHARS", 1)  # a part for each body
    store = runtime(client).store
    assert store is not None
    original = store.replay
    parts: list[list[str]] = []

    async def failing_second(part: list[str], *args: Any, **kwargs: Any) -> list[str]:
        parts.append(list(part))
        if len(parts) == 2:
            raise error
        moved: list[str] = await original(part, *args, **kwargs)
        return moved

    monkeypatch.setattr(store, "replay", failing_second)
    resp = await client.post("/admin/api/replay", json={"ids": dead, "rerender": True}, headers=ADMIN)
    return client, resp, parts


async def test_a_replay_an_error_stops_after_a_part_audits_what_it_moved(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-rendered replay is handed to the store a part at a time, each its own change: when the store fails on
    the second part, the first part's delivery stays replayed, and the audit log says so (and what stopped it)
    before the error is answered (503). The audit was written only once every part was in, so this one went
    unrecorded."""
    client, resp, parts = await _replay_stopped_on_second_part(write_config, bridge_client, monkeypatch,
                                                               StoreUnavailable("the disk is full"))
    assert resp.status == 503, await resp.text()
    said = (await resp.json())["error"]
    assert "after 1 of its deliveries were replayed, which stay replayed" in said and parts[0][0] in said
    assert "the disk is full" in said
    [entry] = (await get(client, "/admin/api/audit"))["items"]
    assert (entry["action"], entry["target"]) == ("deliveries.rerender", parts[0][0])
    assert entry["detail"]["ids"] == parts[0]
    assert entry["detail"]["stopped_by"] == "StoreUnavailable"


async def test_a_replay_the_store_refuses_after_a_part_says_what_stays_replayed(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value the store refuses in the second part of a re-rendered replay: the first part stays replayed, and the
    answer (422) says so and names it, where it said "nothing was changed"."""
    client, resp, parts = await _replay_stopped_on_second_part(write_config, bridge_client, monkeypatch,
                                                               StoreRefused("value too long for type", "22001"))
    assert resp.status == 422, await resp.text()
    said = (await resp.json())["error"]
    assert "nothing was changed" not in said
    assert "after 1 of its deliveries were replayed, which stay replayed" in said and parts[0][0] in said
    assert "22001" in said
    [entry] = (await get(client, "/admin/api/audit"))["items"]
    assert entry["detail"]["ids"] == parts[0]
    assert entry["detail"]["stopped_by"] == "StoreRefused"


async def _count(client: Client, n: int, **params: Any) -> bool:
    return len(await deliveries(client, **params)) == n


async def test_one_replay_call_takes_at_most_replay_most_ids_and_matches_together(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """A replay's ids and its filter's `limit` together are at most REPLAY_MOST deliveries (the work of one call):
    more is refused (400) naming both and what would do; a cursor's continuation takes no ids, so its limit alone
    counts, and ids without a filter are bounded by themselves."""
    client = await start(write_config, bridge_client, workers=False)
    ids = [f"dlv_{n}" for n in range(REPLAY_MOST - 500)]
    resp = await client.post("/admin/api/replay", json={"ids": ids, "status": "dead", "dry_run": True},
                             headers=ADMIN)
    assert resp.status == 400, await resp.text()
    assert (await resp.json())["error"] == (
        f"body.ids ({len(ids)} ids) and body.limit (1000) ask for more than one call replays: at most {REPLAY_MOST} "
        "deliveries, the ids and the filter's matches together; set body.limit to at most 500, or send some of the "
        "ids in another call")
    resp = await client.post("/admin/api/replay", json={"ids": [*ids, *ids[:500]], "source": "partner", "limit": 1},
                             headers=ADMIN)
    assert resp.status == 400 and "; send some of the ids in another call" in (await resp.json())["error"]
    done = await post(client, "/admin/api/replay", {"ids": ["dlv_1"], "status": "dead", "limit": REPLAY_MOST - 1,
                                                    "dry_run": True})
    assert done["matched"] == ["dlv_1"]


async def test_a_dry_run_names_a_delivery_still_under_way(write_config: ConfigFactory,
                                                          bridge_client: AppClient) -> None:
    """A dry-run replay of a delivery still pending refuses it as pending, and replays nothing."""
    client = await start(write_config, bridge_client, workers=False)
    assert (await client.post("/hooks/partner", json={"title": "Router down"})).status == 202
    [pending] = await deliveries(client, status="pending")
    dry = await post(client, "/admin/api/replay", {"ids": [pending["id"]], "dry_run": True})
    assert (dry["matched"], dry["replayed"]) == ([pending["id"]], [])
    assert [(r["id"], r["reason"].split(" (")[0]) for r in dry["refused"]] == [(pending["id"], "it is pending")]


async def test_on_sqlite_a_pause_lasts_until_the_process_restarts(write_config: ConfigFactory,
                                                                   bridge_client: AppClient) -> None:
    """SQLite's one process keeps a pause in memory: started again on the same store, it sends the destination's
    work (README, "Ops console and admin API"; on PostgreSQL a pause survives the restart)."""
    config = write_config(CONFIG, MAPPINGS)
    first = await bridge_client(config)
    await post(first, "/admin/api/destinations/kapture/pause", {"reason": "vendor maintenance"})
    assert (await first.post("/hooks/partner", json={"title": "held"})).status == 202
    await first.close()
    again = await bridge_client(config)
    [lane] = (await get(again, "/admin/api/destinations"))["items"]
    assert lane["paused"] is False
    await eventually(lambda: _has(again, status="succeeded"))


async def test_a_replay_filter_naming_nothing_configured_or_stored_is_a_409_naming_what_is(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """A filter whose destination, mapping or source the config does not have, and that matched no stored delivery
    (a misspelt name), is refused naming the field, the name and those configured, rather than replaying "0 of 0".
    A known name matching nothing, and an unknown one still naming stored deliveries, replay as before."""
    client = await start(write_config, bridge_client)
    for given, field, named in (({"destination": "kaptur"}, "destination", "configured: kapture"),
                                ({"mapping": "partnr", "dry_run": True}, "mapping", "loaded: partner, urgent"),
                                ({"source": "partnr", "status": "dead"}, "source", "configured: partner")):
        resp = await client.post("/admin/api/replay", json=given, headers=ADMIN)
        assert resp.status == 409, given
        error = (await resp.json())["error"]
        assert error.startswith(f"body.{field}: no {field} {given[field]!r} is "), error
        assert error.endswith(named), error
    assert (await post(client, "/admin/api/replay", {"destination": "kapture"}))["matched"] == []
    store = runtime(client).store
    assert store is not None
    event = Event.new(source="partner", kind="json", channel="webhook", payload={"title": "old"})
    await store.accept(event, [NewDelivery(id="dlv_retired", mapping="partner", mapping_version="v0",
                                           destination="retired", action="create_ticket", body={"title": "old"},
                                           status="dead", error="HTTP 500")], 0)
    out = await post(client, "/admin/api/replay", {"destination": "retired", "dry_run": True})
    assert (out["matched"], [r["id"] for r in out["refused"]]) == (["dlv_retired"], ["dlv_retired"])


async def test_a_replay_to_a_destination_no_longer_configured_is_refused(write_config: ConfigFactory,
                                                                           bridge_client: AppClient) -> None:
    """A dead delivery whose destination the config no longer names is refused by id, by filter, on a dry run and
    re-rendered, naming the destination and saying to restore it; it stays dead rather than pending for good."""
    client = await start(write_config, bridge_client)
    store = runtime(client).store
    assert store is not None
    event = Event.new(source="partner", kind="json", channel="webhook", payload={"title": "old"})
    await store.accept(event, [NewDelivery(id="dlv_retired", mapping="partner", mapping_version="v0",
                                           destination="retired", action="create_ticket", body={"title": "old"},
                                           status="dead", error="HTTP 500")], 0)
    reason = ("its destination 'retired' is no longer configured, so nothing would send it: restore 'retired' "
              "under `destinations:` in the config, then replay it")
    for given in ({"ids": ["dlv_retired"]}, {"ids": ["dlv_retired"], "dry_run": True},
                  {"ids": ["dlv_retired"], "rerender": True}, {"destination": "retired", "status": "dead"}):
        out = await post(client, "/admin/api/replay", given)
        assert (out["matched"], out["replayed"]) == (["dlv_retired"], []), given
        assert out["refused"] == [{"id": "dlv_retired", "reason": reason}], given
    assert (await get(client, "/admin/api/deliveries/dlv_retired"))["delivery"]["status"] == "dead"
    assert (await get(client, "/admin/api/audit"))["items"] == []


async def test_a_filter_matching_more_than_the_limit_is_continued_by_cursor(write_config: ConfigFactory,
                                                                              bridge_client: AppClient) -> None:
    """A filter matching more deliveries than `limit` takes says so: `next_cursor` continues with the rest, from
    dead ones on to succeeded ones (no status given), so that following it replays each delivery once, even one
    that a page before replayed and that succeeded again meanwhile; the last page answers null. Ids named are all
    taken, `limit` bounding what the filter adds to them; a cursor without the filter it continues is a 409."""
    client = await start(write_config, bridge_client, workers=False)
    store = runtime(client).store
    assert store is not None
    made = [NewDelivery(id=f"dlv_{n}", mapping="partner", mapping_version="v1", destination="kapture",
                        action="create_ticket", body={"title": str(n)}, status="succeeded" if n < 2 else "dead",
                        error=None if n < 2 else "HTTP 500") for n in range(5)]
    await store.accept(Event.new(source="partner", kind="json", channel="webhook", payload={"title": "t"}), made, 0)
    given: dict[str, Any] = {"destination": "kapture", "limit": 2}
    pages: list[tuple[list[str], str | None]] = []
    while True:
        out = await post(client, "/admin/api/replay", given)
        assert out["refused"] == []
        pages.append((out["replayed"], out["next_cursor"]))
        claimed = (await store.claim("kapture", 10, "lane", 30)).items
        assert sorted(c.id for c in claimed) == sorted(out["replayed"])
        for c in claimed:  # sent, and succeeded again, before the next page
            await store.record(result(c.id, "succeeded"), owner="lane")
        if out["next_cursor"] is None:
            break
        given = {**given, "cursor": out["next_cursor"]}
    assert pages == [(["dlv_4", "dlv_3"], "dlv_3"), (["dlv_2", "dlv_1"], "dlv_1"), (["dlv_0"], None)]
    named = await post(client, "/admin/api/replay", {"ids": ["dlv_0", "dlv_1", "dlv_2"], "status": "succeeded",
                                                      "limit": 1, "dry_run": True})
    assert (named["matched"], named["next_cursor"]) == (["dlv_0", "dlv_1", "dlv_2", "dlv_4"], "dlv_4")
    resp = await client.post("/admin/api/replay", json={"ids": ["dlv_0"], "cursor": "dlv_3"}, headers=ADMIN)
    assert resp.status == 409 and "body.cursor continues a filter's matches" in (await resp.json())["error"]
    assert [e["detail"]["count"] for e in (await get(client, "/admin/api/audit"))["items"]] == [1, 2, 2]


async def _has(client: Client, **params: Any) -> bool:
    return bool(await deliveries(client, **params))


async def test_deliveries_are_newest_first_and_page_by_cursor(write_config: ConfigFactory,
                                                              bridge_client: AppClient) -> None:
    """Pages of deliveries come newest first; following next_cursor lists each once; `q` finds by text."""
    client = await start(write_config, bridge_client, workers=False)
    for i in range(5):
        assert (await client.post("/hooks/partner", json={"title": f"t{i}"})).status == 202
    seen: list[str] = []
    cursor = None
    while True:
        page = await get(client, "/admin/api/deliveries", limit=2, **({"cursor": cursor} if cursor else {}))
        seen += [d["id"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen, reverse=True) and len(seen) == 5
    one = seen[3]
    assert [d["id"] for d in await deliveries(client, q=one[-8:].lower())] == [one]
    bad = await client.get("/admin/api/deliveries", params={"status": "lost"}, headers=ADMIN)
    assert bad.status == 400 and "status" in (await bad.json())["error"]


async def test_a_paused_destination_sends_nothing_until_resumed(write_config: ConfigFactory,
                                                                bridge_client: AppClient) -> None:
    """Paused, a destination keeps its deliveries pending and says so; resumed, it sends them; both audited."""
    client = await start(write_config, bridge_client)
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    state = await post(client, "/admin/api/destinations/kapture/pause", {"reason": "vendor maintenance"})
    assert state["paused"] is True and state["paused_until"] is None
    assert (await client.post("/hooks/partner", json={"title": "held"})).status == 202
    [lane] = (await get(client, "/admin/api/destinations"))["items"]
    assert lane["backlog"] == 1 and lane["counts"]["pending"] == 1 and lane["oldest_pending_age_s"] >= 0
    assert sim.tickets == []
    state = await post(client, "/admin/api/destinations/kapture/resume", {})
    assert state["paused"] is False
    await eventually(lambda: _has(client, status="succeeded"))
    audit = (await get(client, "/admin/api/audit"))["items"]
    assert [(e["action"], e["detail"].get("reason")) for e in audit] == [
        ("destination.resume", None), ("destination.pause", "vendor maintenance")]


async def test_an_event_shows_what_each_mapping_made_of_it(write_config: ConfigFactory,
                                                          bridge_client: AppClient) -> None:
    """An event's page says which mappings took it and which skipped it (with their `when`), explained."""
    client = await start(write_config, bridge_client, workers=False)
    resp = await client.post("/hooks/partner", json={"title": "calm"})
    view = await get(client, f"/admin/api/events/{(await resp.json())['event_id']}")
    assert view["event"]["payload"] == {"title": "calm"}
    decided = {d["mapping"]: d for d in view["decisions"]}
    assert decided["partner"]["decision"] == "taken" and decided["partner"]["fields"] == {"title": "calm"}
    assert decided["urgent"]["decision"] == "skipped" and "urgent" in decided["urgent"]["when"]


async def test_the_playground_explains_and_stores_nothing(write_config: ConfigFactory,
                                                          bridge_client: AppClient) -> None:
    """A raw body runs through the handler and every mapping, showing the vendor body; nothing is stored."""
    client = await start(write_config, bridge_client, workers=False)
    out = await post(client, "/admin/api/playground", {
        "source": "partner", "body": '{"title": "Printer on fire", "urgent": true}',
        "headers": {"Content-Type": "application/json"}}, headers=READ)
    assert out["outcome"] == "events"
    [event] = out["events"]
    decided = {d["mapping"]: d for d in event["decisions"]}
    assert decided["urgent"]["fields"] == {"title": "URGENT Printer on fire"}
    assert "Printer on fire" in decided["partner"]["explain"]
    assert decided["partner"]["vendor_body"] is not None
    assert await deliveries(client) == []
    bad = await post(client, "/admin/api/playground", {"source": "partner", "body": "{not json",
                                                       "headers": {"Content-Type": "application/json"}})
    assert bad["outcome"] == "rejected" and bad["status"] == 400
    missing = await client.post("/admin/api/playground", json={"source": "nope", "body": ""}, headers=ADMIN)
    assert missing.status == 404 and "partner" in (await missing.json())["error"]


def test_the_spec_covers_every_route_with_its_auth_and_errors() -> None:
    """The OpenAPI document names every admin route with bearer auth, 401 for all and 403 for changes, and
    every route that takes a body as taking JSON alone (415 otherwise)."""
    doc = spec()
    assert doc["openapi"] == "3.1.0"
    for route in ROUTES:
        op = doc["paths"][route.path][route.method.lower()]
        assert op["security"] == [{"bearer": []}]
        assert "401" in op["responses"] and ("403" in op["responses"]) == route.change
        assert ("415" in op["responses"]) == (route.method != "GET")
        if route.body is not None:
            assert op["requestBody"]["required"] is True
            assert list(op["requestBody"]["content"]) == ["application/json"]


async def test_deliveries_filter_by_creation_time(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """`since_ms` and `until_ms` bound the deliveries listed by when they were created, both ends included."""
    client = await start(write_config, bridge_client, workers=False)
    for i in range(2):
        assert (await client.post("/hooks/partner", json={"title": f"t{i}"})).status == 202
    rows = await deliveries(client)
    first, last = min(r["created_at_ms"] for r in rows), max(r["created_at_ms"] for r in rows)
    assert len(await deliveries(client, since_ms=first, until_ms=last)) == 2
    assert await deliveries(client, until_ms=first - 1) == []
    assert await deliveries(client, since_ms=last + 1) == []


NUL_REQUESTS: list[tuple[str, str, dict[str, Any] | None, str]] = [
    # method, path, JSON body, where the answer says the NUL is
    ("GET", "/admin/api/deliveries/dlv_%00x", None, "path.delivery_id"),
    ("GET", "/admin/api/events/evt_%00", None, "path.event_id"),
    ("GET", "/admin/api/deliveries?cursor=dlv_%00", None, "query.cursor"),
    ("GET", "/admin/api/deliveries?destination=kap%00ture", None, "query.destination"),
    ("GET", "/admin/api/audit?cursor=aud_%00", None, "query.cursor"),
    ("POST", "/admin/api/replay", {"ids": ["dlv_a", "dlv_\x00"]}, "body.ids[1]"),
    ("POST", "/admin/api/replay", {"source": "part\x00ner", "dry_run": True}, "body.source"),
    ("POST", "/admin/api/deliveries/dlv_%00/mark-succeeded", {"ticket_id": "1"}, "path.delivery_id"),
    ("POST", "/admin/api/deliveries/dlv_x/mark-succeeded", {"ticket_id": "1", "note": "a\x00b"}, "body.note"),
    ("POST", "/admin/api/deliveries/dlv_%00/set-ticket", {"ticket_id": "1"}, "path.delivery_id"),
    ("POST", "/admin/api/deliveries/dlv_x/set-ticket", {"ticket_id": "1", "note": "a\x00b"}, "body.note"),
    ("POST", "/admin/api/destinations/kapture/pause", {"reason": "\x00"}, "body.reason"),
]


async def refused_nul(client: Client, method: str, path: str, body: dict[str, Any] | None, where: str) -> None:
    resp = await client.request(method, path, headers=ADMIN, json=body)
    assert resp.status == 400, (path, body, resp.status, await resp.text())
    said = (await resp.json())["error"]
    assert said.startswith(f"{where} holds a NUL character"), said


async def test_a_nul_in_an_id_filter_cursor_or_change_is_a_400_naming_where(write_config: ConfigFactory,
                                                                             bridge_client: AppClient) -> None:
    """No id, name or text the store keeps holds a NUL: one in a path parameter, the query or a change's body is
    refused with 400 saying where it is (PostgreSQL would refuse it as an error of its own); nothing is changed
    or audited. The playground's raw provider body may hold one."""
    client = await start(write_config, bridge_client)
    for method, path, body, where in NUL_REQUESTS:
        await refused_nul(client, method, path, body, where)
    assert (await get(client, "/admin/api/audit"))["items"] == []
    assert (await get(client, "/admin/api/destinations"))["items"][0]["paused"] is False
    out = await post(client, "/admin/api/playground", {"source": "partner", "body": '{"title": "a\\u0000b"}',
                                                       "headers": {"Content-Type": "application/json"}})
    assert out["outcome"] == "events"


SECRET_HEADERS_CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
admin: {token: admin-secret, read_tokens: {grafana: grafana-secret}}
sources:
  partner: {kind: json}
destinations:
  psa:
    vendor: http
    base_url: "{vendor}"
    path: /tickets
    ticket_id_path: data.id
    headers: {X-Tenant: "${TENANT_CODE}", Accept: application/json}
    auth: {header: {name: ApiIntegrationcode, value: "${PSA_INTEGRATION_CODE}"}}
"""


async def test_an_attempt_never_shows_the_destinations_configured_secret_headers(
        write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any) -> None:
    """An http destination's `auth.header` and configured `headers` carry its secrets under any name a vendor
    chose (here none that looks like a credential): the attempt kept for the console shows them redacted, to
    every token, and the secrets appear nowhere in the answer. (A real destination, a vendor of the test's own:
    a sandbox sends no configured credentials.)"""
    async def create(request: web.Request) -> web.Response:
        return web.json_response({"data": {"id": "T-1"}}, status=201)

    vendor = web.Application()
    vendor.router.add_post("/tickets", create)
    server = await aiohttp_server(vendor)
    config = write_config(SECRET_HEADERS_CONFIG.replace("{vendor}", str(server.make_url(""))),
                          {"partner": PARTNER["partner"].replace("kapture", "psa")},
                          environ={"TENANT_CODE": "tenant-7f3a9c", "PSA_INTEGRATION_CODE": "integ-51b2e8d4"})
    client = await bridge_client(config)
    assert (await client.post("/hooks/partner", json={"title": "Printer on fire"})).status == 202
    await eventually(lambda: _has(client, status="succeeded"))
    [row] = await deliveries(client)
    resp = await client.get(f"/admin/api/deliveries/{row['id']}", headers=READ)
    text = await resp.text()
    assert resp.status == 200 and "tenant-7f3a9c" not in text and "integ-51b2e8d4" not in text
    sent = (await resp.json())["attempts"][0]["exchange"]["request"]["headers"]
    assert sent["X-Tenant"] == sent["ApiIntegrationcode"] == "[redacted]"
    assert sent["Accept"] == "application/json"


async def test_every_console_file_forbids_framing_and_every_answer_sniffing(write_config: ConfigFactory,
                                                                            bridge_client: AppClient) -> None:
    """The console's page and each of its files, by any path that serves them, say that no other site may frame
    them and only the console's own scripts run; every admin API answer (a refusal too) is JSON that no browser
    sniffs into a page and no cache keeps. Nothing else under the console's folder is served."""
    client = await start(write_config, bridge_client, workers=False)
    for path, kind in (("/admin/", "text/html"), ("/admin/static/index.html", "text/html"),
                       ("/admin/static/console.js", "text/javascript"), ("/admin/static/console.css", "text/css")):
        resp = await client.get(path)
        assert resp.status == 200 and resp.content_type == kind, (path, resp.status, resp.content_type)
        assert resp.headers["X-Frame-Options"] == "DENY", path
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"], path
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"], path
        assert resp.headers["X-Content-Type-Options"] == "nosniff", path
    for path in ("/admin/static/", "/admin/static/..%2F__init__.py", "/admin/static/%2e%2e/api.py",
                 "/admin/static/nope.js"):
        assert (await client.get(path)).status == 404, path
    for path, headers in (("/admin/api/overview", ADMIN), ("/admin/api/overview", {}), ("/admin/openapi.json", READ),
                          ("/admin/api/deliveries?limit=0", ADMIN)):
        resp = await client.get(path, headers=headers)
        assert resp.content_type == "application/json", path
        assert resp.headers["X-Content-Type-Options"] == "nosniff", path
        assert resp.headers["Cache-Control"] == "no-store", path


@pytest.mark.parametrize("path", ["/admin/api/deliveries?cursor=", "/admin/api/audit?cursor="])
async def test_an_empty_cursor_is_a_400_naming_it(write_config: ConfigFactory, bridge_client: AppClient,
                                                  path: str) -> None:
    """An empty cursor is refused, naming the parameter, rather than read as no cursor (SQLite: every item) or as
    one before everything (PostgreSQL: none)."""
    client = await start(write_config, bridge_client)
    await _audited(client)
    resp = await client.get(path, headers=ADMIN)
    assert resp.status == 400, await resp.text()
    said = (await resp.json())["error"]
    assert said.startswith("invalid query: ") and "$.cursor" in said and 'given ""' in said, said


async def _audited(client: Client) -> None:
    assert (await client.post("/hooks/partner", json={"title": "t"})).status == 202
    await post(client, "/admin/api/destinations/kapture/pause", {"reason": "r"})


@pytest.mark.parametrize(("method", "path", "body", "said"), [
    ("GET", "/admin/api/deliveries?limit=0", None,
     'at `$.limit`; given "0"; `limit` takes a whole number from 1 to 500'),
    ("GET", "/admin/api/deliveries?status=lost", None,
     'given "lost"; `status` takes one of "dead", "in_flight", "pending", "succeeded"'),
    ("POST", "/admin/api/replay", {"limit": 0}, "given 0; `limit` takes a whole number from 1 to 10000"),
    ("POST", "/admin/api/replay", {"ids": ["dlv_a", ""]}, 'at `$.ids[1]`; given ""; each item of `ids` takes text of'
                                                          " 1 to 100 characters"),
    ("POST", "/admin/api/destinations/kapture/pause", {"seconds": -5},
     "given -5; `seconds` takes a number over 0 and at most 2592000"),
    ("POST", "/admin/api/replay", {"destination": "k" * 5000},
     'given "' + "k" * 99 + "… (5002 characters in all); `destination` takes text of 1 to 200 characters"),
])
async def test_an_invalid_value_is_named_with_what_was_given_and_what_is_allowed(
        write_config: ConfigFactory, bridge_client: AppClient, method: str, path: str, body: dict[str, Any] | None,
        said: str) -> None:
    """A query or body value out of bounds is a 400 quoting the value given (a long one cut short) and saying
    what the field takes, besides msgspec's own words."""
    client = await start(write_config, bridge_client, workers=False)
    resp = await client.request(method, path, headers=ADMIN, json=body)
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert error.startswith("invalid query: " if method == "GET" else "invalid body: ") and error.endswith(said), error


async def test_a_body_over_the_size_limit_is_the_apis_json_413(write_config: ConfigFactory,
                                                              bridge_client: AppClient) -> None:
    """A body past server.max_body_bytes is refused as every admin API error is: JSON naming the setting and the
    limit, nosniff and no-store; the spec lists 413 for every route that takes a body."""
    config = CONFIG.replace("store:", "server: {max_body_bytes: 2048}\nstore:")
    client = await bridge_client(write_config(config, MAPPINGS), workers=False)
    for path in ("/admin/api/playground", "/admin/api/replay"):
        resp = await client.post(path, headers=ADMIN, json={"source": "partner", "body": "x" * 5000})
        assert resp.status == 413 and resp.content_type == "application/json", (path, await resp.text())
        assert (await resp.json())["error"] == ("the body is over the limit of 2048 bytes (server.max_body_bytes): "
                                                "send a smaller one")
        assert resp.headers["X-Content-Type-Options"] == "nosniff" and resp.headers["Cache-Control"] == "no-store"
    for route in ROUTES:
        responses = spec()["paths"][route.path][route.method.lower()]["responses"]
        assert ("413" in responses) == (route.body is not None), route.path


async def test_the_legacy_mappings_route_is_kept_in_no_cache_and_never_sniffed(write_config: ConfigFactory,
                                                                               bridge_client: AppClient) -> None:
    """GET /admin/mappings answers, a refusal too, with the admin API's nosniff and no-store."""
    client = await start(write_config, bridge_client, workers=False)
    for headers, status in ((ADMIN, 200), (READ, 200), ({}, 401)):
        resp = await client.get("/admin/mappings", headers=headers)
        assert resp.status == status
        assert resp.headers["X-Content-Type-Options"] == "nosniff" and resp.headers["Cache-Control"] == "no-store"


DEEP = 100_000  # levels: far past any recursion limit


def _malformed(field: str) -> list[tuple[bytes, str]]:
    """Bodies that are not JSON (malformed, cut short, not UTF-8, a lone surrogate escape), nest too deeply or hold
    a number no value takes, each with what the 400 says: most have a value of the wrong type for `field` before
    the fault, so that the fault is found only once the value is refused."""
    start = f'{{"{field}": '.encode()
    return [
        (start + b"[5], garbage", f"the body is not JSON: JSON is malformed: object keys must be strings (byte "
                                  f"{len(start) + 5})"),
        (start + b"[5]", f"the body is not JSON: Input data was truncated: it ends at byte {len(start) + 3} with a "
                         "value or bracket still open"),
        (start + b"[" * DEEP, "invalid body: it nests deeper than 8 levels (no body this API takes nests more than "
                              "two); "),
        (start + b"[" * DEEP + b"]" * DEEP + b"}", "invalid body: it nests deeper than 8 levels (no body this API "
                                                   "takes nests more than two); "),
        (start + b"{\"a\":" * DEEP + b"1" + b"}" * DEEP + b"}", "invalid body: it nests deeper than 8 levels (no body "
                                                               "this API takes nests more than two); "),
        (start + b"1e999}", f"invalid body: Number out of range - at `$.{field}`"),
        (start + b'"\xff"}', f"the body is not JSON: byte {len(start) + 1} (0xff) is not UTF-8 (invalid start byte)"),
        (start + b'[5], "x": "ok \xe2\x82"}', f"the body is not JSON: byte {len(start) + 14} (0xe2) is not UTF-8 "
                                              "(invalid continuation byte)"),
        (start + b'[5], "x": "\\ud800"}', f"the body is not JSON: the escape \\ud800 at byte {len(start) + 11} is a "
                                           "lone UTF-16 surrogate"),
    ]


@pytest.mark.parametrize("route", [r for r in ROUTES if r.body is not None], ids=[r.path for r in ROUTES
                                                                                   if r.body is not None])
async def test_a_body_that_is_not_json_or_nests_too_deeply_is_a_400_saying_so(write_config: ConfigFactory,
                                                                               bridge_client: AppClient,
                                                                               route: Any) -> None:
    """A body that is not JSON (malformed, cut short, bytes that are not UTF-8, a lone surrogate escape) is a 400
    with the parser's reason and the byte where it failed, even when a value of the wrong type comes before it;
    one nesting deeper than any body the API takes is refused as such, read no deeper than that (never to a
    recursion limit); a number too large for any value is named. Nothing is changed or audited."""
    client = await start(write_config, bridge_client, workers=False)
    assert route.body is not None
    field = msgspec.structs.fields(route.body)[0].name
    for body, said in _malformed(field):
        resp = await client.post(concrete(route.path), data=body, headers={**ADMIN, "Content-Type": "application/json"})
        assert resp.status == 400 and resp.content_type == "application/json", (body[:40], await resp.text())
        error = (await resp.json())["error"]
        assert error.startswith(said), (body[:40], error)
        assert "not JSON" in said or f"`$.{field}" in error, (body[:40], error)
    assert (await get(client, "/admin/api/audit"))["items"] == []
    assert (await get(client, "/admin/api/destinations"))["items"][0]["paused"] is False


async def test_a_value_of_the_wrong_type_is_named_with_what_was_given(write_config: ConfigFactory,
                                                                      bridge_client: AppClient) -> None:
    """`ids` given as a number is a 400 quoting it and saying that `ids` takes a list of delivery ids."""
    client = await start(write_config, bridge_client, workers=False)
    resp = await client.post("/admin/api/replay", headers=ADMIN, json={"ids": 5})
    assert resp.status == 400
    assert (await resp.json())["error"] == (
        "invalid body: Expected `array`, got `int` - at `$.ids`; given 5; `ids` takes a list of up to 10000 items, "
        "each text of 1 to 100 characters")


async def test_a_time_filter_reads_deliveries_in_batches_not_one_query_per_row(
        write_config: ConfigFactory, bridge_client: AppClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page under a time filter reads the store in batches of at least 200 whatever its `limit`: a `since_ms`
    past every delivery, with `limit=1`, skips 30 deliveries in one read (not 31), and pages of 7 through those
    in range list each once, one read a page."""
    client = await start(write_config, bridge_client, workers=False)
    for i in range(30):
        assert (await client.post("/hooks/partner", json={"title": f"t{i}"})).status == 202
    store = runtime(client).store
    assert store is not None
    reads: list[int] = []
    read = store.list_deliveries

    async def counted(flt: Any) -> Any:
        reads.append(flt.limit)
        return await read(flt)

    monkeypatch.setattr(store, "list_deliveries", counted)
    made = [r["created_at_ms"] for r in await deliveries(client, limit=100)]
    reads.clear()
    page = await get(client, "/admin/api/deliveries", since_ms=max(made) + 1, limit=1)
    assert (page["items"], page["next_cursor"], page["scanned"]) == ([], None, 30)
    assert len(reads) == 1 and reads[0] >= 200, reads
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    reads.clear()
    while True:
        page = await get(client, "/admin/api/deliveries", since_ms=min(made), limit=7,
                         **({"cursor": cursor} if cursor else {}))
        seen += [d["id"] for d in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 30 and seen == sorted(seen, reverse=True)
    assert len(reads) == pages, (reads, pages)


THREADED = {"chat": threaded_mapping()}


async def test_a_conversation_lists_its_ticket_and_messages_in_the_order_they_are_sent(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """`GET /admin/api/conversations/{key}` (the key, or the id `mapping|key`; a `/` in it escaped) answers the
    conversation's ticket once its create has made one, and its deliveries in the order they are sent in, the first
    `limit` of them, with `more` saying whether others follow; an unknown key is a 404 naming it."""
    client = await bridge_client(write_config(CONFIG, THREADED))
    await post(client, "/admin/api/destinations/kapture/pause", {})
    for text in ("router down", "still down", "now it works"):
        resp = await client.post("/hooks/partner", json={"conversation_id": "C1/1700.1", "text": text})
        assert resp.status == 202, await resp.text()
    [listed] = await deliveries(client, limit=1)
    conversation = listed["conversation"]
    assert conversation == "chat|chat:C1/1700.1"
    by_id = await get(client, f"/admin/api/conversations/{quote(conversation, safe='')}")
    by_key = await get(client, "/admin/api/conversations/chat%3AC1%2F1700.1")
    assert (by_id["key"], by_key["key"], by_key["items"]) == (conversation, "chat:C1/1700.1", by_id["items"])
    [view] = by_id["items"]
    assert (view["conversation"]["id"], view["conversation"]["ticket_id"], view["more"]) == (conversation, None, False)
    ids = [d["id"] for d in view["deliveries"]]
    assert ids == sorted(ids) and len(ids) == 3
    first = await get(client, f"/admin/api/conversations/{quote(conversation, safe='')}", limit=2)
    assert ([d["id"] for d in first["items"][0]["deliveries"]], first["items"][0]["more"]) == (ids[:2], True)

    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    await post(client, "/admin/api/destinations/kapture/resume", {})

    async def answered() -> bool:
        [v] = (await get(client, f"/admin/api/conversations/{quote(conversation, safe='')}"))["items"]
        return [d["status"] for d in v["deliveries"]] == ["succeeded"] * 3

    await eventually(answered)
    [view] = (await get(client, f"/admin/api/conversations/{quote(conversation, safe='')}"))["items"]
    assert view["conversation"]["ticket_id"] == sim.tickets[0]["ticketId"]
    assert [d["role"] for d in view["deliveries"]] == ["create", "follow_up", "follow_up"]
    missing = await client.get("/admin/api/conversations/chat%3Anothing", headers=ADMIN)
    assert missing.status == 404 and "no conversation \"chat:nothing\"" in (await missing.json())["error"]
    bad = await client.get("/admin/api/conversations/chat%3Anothing", params={"limit": "501"}, headers=ADMIN)
    assert bad.status == 400 and "`limit` takes a whole number from 1 to 500" in (await bad.json())["error"]


ID_ROUTES = [("GET", "/admin/api/deliveries/{}"), ("GET", "/admin/api/events/{}"),
             ("POST", "/admin/api/deliveries/{}/mark-succeeded"), ("POST", "/admin/api/deliveries/{}/set-ticket"),
             ("POST", "/admin/api/destinations/{}/pause"),
             ("POST", "/admin/api/destinations/{}/resume"), ("GET", "/admin/static/{}")]


@pytest.mark.parametrize(("method", "path"), ID_ROUTES, ids=[f"{m} {p}" for m, p in ID_ROUTES])
async def test_an_unknown_id_from_the_path_is_quoted_cut_in_the_404(write_config: ConfigFactory,
                                                                     bridge_client: AppClient, method: str,
                                                                     path: str) -> None:
    """An id (a destination, a console file's name) that names nothing, as long as a request line allows, is
    quoted in the 404 cut to 100 characters, its length said, never echoed whole."""
    client = await start(write_config, bridge_client, workers=False)
    given = "dlv_" + "x" * 6000
    body = {"ticket_id": "T-1"} if path.endswith(("mark-succeeded", "set-ticket")) else {}
    resp = await client.request(method, path.format(given), headers=ADMIN, json=body)
    assert resp.status == 404, await resp.text()
    text = await resp.text()
    message = (await resp.json())["error"] if resp.content_type == "application/json" else text
    assert "'dlv_xxx" in message and "… (6004 characters in all)" in message, message
    assert len(text) < 400


async def test_a_conversation_is_paged_by_cursor_in_arrival_order_while_messages_arrive(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """`cursor` pages one conversation of a key in the order its deliveries are sent in: `next_cursor` the page
    after, `prev_cursor` the page before (null on the first), `offset` how many come before the page, `more`
    whether others follow now. A message arriving while the pages are read is listed once, at its place; the
    last page's `next_cursor` reads what arrives later. A cursor answers its own conversation alone."""
    client = await bridge_client(write_config(CONFIG, {"chat": threaded_mapping(), "chat2": threaded_mapping()}))
    await post(client, "/admin/api/destinations/kapture/pause", {})

    async def say(text: str, chat: str = "C9") -> None:
        resp = await client.post("/hooks/partner", json={"conversation_id": chat, "text": text})
        assert resp.status == 202, await resp.text()

    for n in range(5):
        await say(f"message {n}")
    path = "/admin/api/conversations/chat%3AC9"
    first = await get(client, path, limit=2)
    assert [v["conversation"]["id"] for v in first["items"]] == ["chat2|chat:C9", "chat|chat:C9"]
    view = first["items"][1]
    assert (len(view["deliveries"]), view["more"], view["offset"], view["prev_cursor"]) == (2, True, 0, None)
    read = [d["id"] for d in view["deliveries"]]
    pages = [view]
    while view["more"]:
        page = await get(client, path, limit=2, cursor=view["next_cursor"])
        [view] = page["items"]
        assert view["conversation"]["id"] == "chat|chat:C9"
        assert view["offset"] == len(read) and view["prev_cursor"] is not None
        read += [d["id"] for d in view["deliveries"]]
        pages.append(view)
        if len(read) == 4:
            await say("message 5")  # arrives while the conversation is read
    [whole] = (await get(client, "/admin/api/conversations/chat%7Cchat%3AC9", limit=500))["items"]
    assert read == [d["id"] for d in whole["deliveries"]] and len(read) == 6
    back = await get(client, path, limit=2, cursor=pages[-1]["prev_cursor"])
    [back_view] = back["items"]
    assert [back_view[k] for k in ("deliveries", "offset", "more", "next_cursor", "prev_cursor")] == [
        pages[-2][k] for k in ("deliveries", "offset", "more", "next_cursor", "prev_cursor")]
    tail = (await get(client, path, limit=2, cursor=pages[-1]["next_cursor"]))["items"][0]
    assert (tail["deliveries"], tail["more"], tail["next_cursor"], tail["offset"]) == (
        [], False, pages[-1]["next_cursor"], 6)
    await say("message 6")
    later = (await get(client, path, limit=2, cursor=pages[-1]["next_cursor"]))["items"][0]
    assert [d["id"] for d in later["deliveries"]] == [d["id"] for d in (await get(
        client, path, limit=1, cursor=whole["next_cursor"]))["items"][0]["deliveries"]]
    assert len(later["deliveries"]) == 1 and later["offset"] == 6

    await say("hello", chat="C10")
    other = (await get(client, "/admin/api/conversations/chat%3AC10"))["items"][0]["next_cursor"]
    forged = base64.urlsafe_b64encode(b'[2,"a","0123456789abcdef",1,"dlv_x",0]').decode().rstrip("=")
    for cursor, said in (("nope", 'query.cursor: not a cursor this API gave: "nope"'),
                         ("A" * 399, 'not a cursor this API gave: "' + "A" * 99 + "… (401 characters in all)"),
                         (forged, "a cursor of version 2; this server reads version 1"),
                         (other, "a cursor of another conversation than the key names"),
                         ("", "`cursor` takes text of 1 to 400 characters")):
        resp = await client.get(path, params={"cursor": cursor}, headers=ADMIN)
        assert resp.status == 400, await resp.text()
        assert said in (await resp.json())["error"], cursor
    for cursor in (other, "nope"):  # an unknown key is what is wrong, whatever the cursor
        missing = await client.get("/admin/api/conversations/chat%3Anothing", params={"cursor": cursor},
                                   headers=ADMIN)
        assert missing.status == 404, await missing.text()
    served = await get(client, "/admin/openapi.json")
    params = {p["name"]: p for p in served["paths"]["/admin/api/conversations/{key}"]["get"]["parameters"]}
    (given, _) = params["cursor"]["schema"]["anyOf"]
    assert given["maxLength"] == 400 and "prev_cursor" in given["description"]
    assert (params["limit"]["schema"]["maximum"], params["limit"]["schema"]["default"]) == (500, 100)
    view = served["components"]["schemas"]["ConversationView"]["properties"]
    assert {"more", "offset", "next_cursor", "prev_cursor"} <= set(view)


async def test_cursor_last_answers_each_conversation_s_newest_page_and_walks_back(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """`cursor=last` answers each conversation of the key with its last page, its newest messages in the order they
    are sent in, numbered by `offset` from its first; `prev_cursor` walks back to the first page, `next_cursor`
    reads what arrives later, and `cursor=last` again lists it. A cursor that is neither `last` nor one this API
    gave is a 400 that says `last` is taken; an unknown key a 404."""
    client = await bridge_client(write_config(CONFIG, {"chat": threaded_mapping(), "chat2": threaded_mapping()}))
    await post(client, "/admin/api/destinations/kapture/pause", {})

    async def say(text: str) -> None:
        resp = await client.post("/hooks/partner", json={"conversation_id": "C9", "text": text})
        assert resp.status == 202, await resp.text()

    for n in range(7):
        await say(f"message {n}")
    path = "/admin/api/conversations/chat%3AC9"
    [whole] = (await get(client, "/admin/api/conversations/chat%7Cchat%3AC9", limit=500))["items"]
    ids = [d["id"] for d in whole["deliveries"]]
    newest = (await get(client, path, limit=3, cursor="last"))["items"]
    assert [v["conversation"]["id"] for v in newest] == ["chat2|chat:C9", "chat|chat:C9"]
    view = newest[1]
    assert ([d["id"] for d in view["deliveries"]], view["offset"], view["more"]) == (ids[4:], 4, False)
    assert view["prev_cursor"] is not None and view["next_cursor"] is not None
    read, offsets = [d["id"] for d in view["deliveries"]], [view["offset"]]
    back = view
    while back["prev_cursor"]:
        [back] = (await get(client, path, limit=3, cursor=back["prev_cursor"]))["items"]
        read[:0] = [d["id"] for d in back["deliveries"]]
        offsets.append(back["offset"])
    assert (read, offsets) == (ids, [4, 1, 0])
    await say("message 7")
    [later] = (await get(client, path, limit=3, cursor=view["next_cursor"]))["items"]
    [again] = [v for v in (await get(client, path, limit=3, cursor="last"))["items"]
               if v["conversation"]["id"] == "chat|chat:C9"]
    assert ([d["id"] for d in again["deliveries"]][-1:], again["offset"]) == ([d["id"] for d in later["deliveries"]], 5)
    for cursor in ("LAST", "newest", "last "):
        resp = await client.get(path, params={"cursor": cursor}, headers=ADMIN)
        assert resp.status == 400, await resp.text()
        said = (await resp.json())["error"]
        assert said.startswith("query.cursor: not a cursor this API gave") and "'last' for the last page" in said
    missing = await client.get("/admin/api/conversations/chat%3Anothing", params={"cursor": "last"}, headers=ADMIN)
    assert missing.status == 404, await missing.text()
    served = await get(client, "/admin/openapi.json")
    params = {p["name"]: p for p in served["paths"]["/admin/api/conversations/{key}"]["get"]["parameters"]}
    (given, _) = params["cursor"]["schema"]["anyOf"]
    assert "`last`" in given["description"] and given["examples"] == ["last"]


def forget(root: Path, where: str) -> None:
    """Delete the deliveries `where` says, their attempts and events, from the store under `root`, as retention
    does once they have aged out."""
    [db] = list(root.rglob("bridge.db"))
    with sqlite3.connect(db) as conn:
        gone = [r[0] for r in conn.execute(f"SELECT event_id FROM deliveries WHERE {where}")]
        conn.executemany("DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ?)",
                         [(e,) for e in gone])
        conn.executemany("DELETE FROM deliveries WHERE event_id = ?", [(e,) for e in gone])
        conn.executemany("DELETE FROM events WHERE id = ?", [(e,) for e in gone])
    conn.close()


@pytest.mark.parametrize("where", ["1", "rowid = (SELECT max(rowid) FROM deliveries)"],
                         ids=["table-emptied", "newest-deleted"])
async def test_a_cursor_whose_delivery_retention_deleted_is_refused_as_stale(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path, where: str) -> None:
    """SQLite gives the rowids of deleted rows again once the rows with the largest are gone (retention emptying the
    table, or deleting its newest rows): a cursor whose delivery is gone is refused (400, saying to start from the
    first page) rather than read from a place later messages may now sit before. Before, it read an empty page with
    `more` false and the messages stored since were skipped."""
    client = await bridge_client(write_config(CONFIG, {"chat": threaded_mapping()}))
    await post(client, "/admin/api/destinations/kapture/pause", {})
    path = "/admin/api/conversations/chat%3AC9"

    async def say(text: str) -> None:
        resp = await client.post("/hooks/partner", json={"conversation_id": "C9", "text": text})
        assert resp.status == 202, await resp.text()

    for n in range(3):
        await say(f"message {n}")
    kept = (await get(client, path))["items"][0]["next_cursor"]  # a reader following the conversation keeps it
    forget(tmp_path, where)
    for n in range(3, 5):
        await say(f"message {n}")
    [whole] = (await get(client, path))["items"]
    resp = await client.get(path, params={"cursor": kept}, headers=ADMIN)
    assert resp.status == 400, (await resp.text(), len(whole["deliveries"]))
    said = (await resp.json())["error"]
    assert said.startswith("query.cursor: a stale cursor: the delivery it reads from is no longer stored"), said
    assert "start again from the first page" in said
    assert len(whole["deliveries"]) == (2 if where == "1" else 4)  # the first page reads the messages stored since


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_an_unknown_conversation_key_is_quoted_cut_in_the_404(write_config: ConfigFactory,
                                                                    bridge_client: AppClient, method: str) -> None:
    """A conversation key no conversation has, as long as a request line allows, is quoted in the 404 of both the
    conversation route and its reset cut to 100 characters, its length said, not echoed whole."""
    client = await start(write_config, bridge_client)
    key = "chat:" + "x" * 6000
    path = f"/admin/api/conversations/{quote(key, safe='')}" + ("/reset" if method == "POST" else "")
    resp = await client.request(method, path, headers=ADMIN, **({"json": {}} if method == "POST" else {}))
    assert resp.status == 404, await resp.text()
    message = (await resp.json())["error"]
    assert message.startswith('path.key: no conversation "chat:xxx')
    assert "… (6007 characters in all); keys look like mail:<root message id>" in message
    assert len(message) < 400
