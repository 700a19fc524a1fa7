"""bridge/delivery/dispatcher.py: what a destination's `on_unknown` does with a send whose outcome is unknown,
and with a delivery found in doubt (resend, reconcile, hold)."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import date, timedelta
from typing import Any, ClassVar

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aioresponses import aioresponses

from bridge.config import RetryConfig
from bridge.delivery.coordination import Admission, LocalGate
from bridge.delivery.dispatcher import Destination
from bridge.delivery.ratelimit import Unlimited
from bridge.simulators.http import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, TOKEN_PATH, HttpKnobs, HttpSimulator
from bridge.store.base import Claimed
from bridge.vendors.base import Call, CannotReconcile, Found, VendorAuthFailed, VendorRequest, VendorUnavailable
from bridge.vendors.credentials import Token
from bridge.vendors.http import HttpOptions
from bridge.vendors.http_auth import OAuth2Credentials
from bridge.vendors.kapture import PULL_PATH, KaptureAdapter, KaptureOptions
from tests.unit.bridge.delivery.test_dispatcher import (
    FAST,
    MockResponse,
    RecordingStore,
    eventually,
    mock_vendor,
    requests_to,
    running,
)


class FindingKapture(KaptureAdapter):
    """Kapture whose look-up answers from a list: a Found, None (no ticket), or an exception to raise."""

    answers: ClassVar[list[Found | Exception | None]] = []
    asked: ClassVar[list[tuple[str, int]]] = []

    async def find(self, action: str, fields: dict[str, Any], since_ms: int, call: Call) -> Found | None:
        self.asked.append((fields["title"], since_ms))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def destination(on_unknown: str | None, reference: str | None = "bridge_ref") -> Destination:
    cfg = KaptureOptions(vendor="kapture", base_url=FAST, token="t", timeout_seconds=5.0, reference_field=reference,
                         on_unknown=on_unknown,  # type: ignore[arg-type]
                         retry=RetryConfig(schedule=["30s", "5m"], jitter=0))
    dest = Destination.from_config("kapture", cfg, FAST)
    dest.adapter = FindingKapture("kapture", cfg, FAST)
    return dest


@pytest.fixture(autouse=True)
def fresh_answers() -> None:
    FindingKapture.answers = []
    FindingKapture.asked = []


async def in_doubt(store: RecordingStore, since_ms: int = 1_700_000_000_000, to: str = "kapture",
                   body: dict[str, Any] | None = None) -> str:
    """A delivery to `to` whose earlier send's outcome is unknown, due now."""
    delivery_id = await store.add(to, body)
    kept = store.deliveries[delivery_id]
    kept.row = msgspec.structs.replace(kept.row, in_doubt_since_ms=since_ms, unknowns=1)
    return delivery_id


async def settle_in_doubt(on_unknown: str, since_ms: int = 1_700_000_000_000) -> tuple[RecordingStore, str, int]:
    """Run one delivery in doubt through a Kapture lane under `on_unknown` until its attempt is recorded:
    the store, the delivery's id, and how many requests the vendor got."""
    store = RecordingStore()
    delivery_id = await in_doubt(store, since_ms)
    with aioresponses() as m:
        mock_vendor(m)
        async with running(store, destination(on_unknown)):
            await eventually(lambda: len(store.records) == 1)
        return store, delivery_id, requests_to(m)


@pytest.mark.parametrize(("on_unknown", "status"), [("hold", "dead"), ("resend", "pending"),
                                                    ("reconcile", "pending")])
async def test_an_unknown_outcome_is_held_or_scheduled_by_on_unknown(on_unknown: str, status: str) -> None:
    """A timeout is recorded `unknown`: with hold the delivery is dead, in doubt, its error saying what to do;
    with resend or reconcile it is pending on the retry schedule, in doubt."""
    store = RecordingStore()
    delivery_id = await store.add("kapture")
    with aioresponses() as m:
        mock_vendor(m, exception=TimeoutError())
        async with running(store, destination(on_unknown)):
            await eventually(lambda: len(store.records) == 1)
    [result] = store.records
    assert (result.classification, result.next_status) == ("unknown", status)
    row = store.deliveries[delivery_id].row
    assert row.in_doubt_since_ms == result.started_at_ms and row.unknowns == 1
    if on_unknown == "hold":
        assert "held:" in (result.error or "") and "mark-succeeded" in (result.error or "")


async def test_hold_settles_a_delivery_found_in_doubt_without_a_request() -> None:
    """A delivery in doubt (e.g. taken back after a crash) under hold is recorded `held`, dead, unsent."""
    store, delivery_id, requests = await settle_in_doubt("hold")
    assert requests == 0
    [result] = store.records
    assert (result.classification, result.next_status) == ("held", "dead")
    assert store.deliveries[delivery_id].row.in_doubt_since_ms is not None


async def test_reconcile_records_the_ticket_found_without_sending() -> None:
    """Under reconcile, a delivery in doubt is looked up from the time of its doubt; the ticket found is
    recorded `reconciled` and succeeded, the doubt cleared, and nothing is sent."""
    FindingKapture.answers = [Found(ticket_id="T-42", detail="bridge_ref = 'x'")]
    store, delivery_id, requests = await settle_in_doubt("reconcile", since_ms=1_700_000_000_123)
    assert requests == 0
    [result] = store.records
    assert (result.classification, result.next_status, result.ticket_id) == ("reconciled", "succeeded", "T-42")
    assert FindingKapture.asked == [(f"ticket {delivery_id}", 1_700_000_000_123)]
    row = store.deliveries[delivery_id].row
    assert (row.status, row.ticket_id, row.in_doubt_since_ms, row.duplicates) == ("succeeded", "T-42", None, 0)


async def test_reconcile_sends_when_nothing_is_found_and_counts_no_duplicate() -> None:
    """Under reconcile, a look-up that finds nothing lets the send go; its success is no duplicate."""
    FindingKapture.answers = [None]
    store, delivery_id, requests = await settle_in_doubt("reconcile")
    assert requests == 1
    assert [(r.classification, r.duplicate) for r in store.records] == [("success", False)]
    assert store.deliveries[delivery_id].row.duplicates == 0


@pytest.mark.parametrize(("failure", "classification", "status"), [
    (VendorUnavailable("pull answered 503"), "retry", "pending"),
    (CannotReconcile("the body has no `bridge_ref`"), "held", "dead"),
])
async def test_a_look_up_that_cannot_tell_retries_or_holds(failure: Exception, classification: str,
                                                            status: str) -> None:
    """A look-up that fails in passing is retried later, still in doubt; one that can never tell (no reference
    in the body) holds the delivery for an operator. Neither sends."""
    FindingKapture.answers = [failure]
    store, delivery_id, requests = await settle_in_doubt("reconcile")
    assert requests == 0
    [result] = store.records
    assert (result.classification, result.next_status) == (classification, status)
    assert str(failure) in (result.error or "")
    assert store.deliveries[delivery_id].row.in_doubt_since_ms is not None


async def test_resend_sends_again_and_counts_a_possible_duplicate() -> None:
    """Under resend, a delivery in doubt is sent without a look-up; its success counts one possible duplicate."""
    store, delivery_id, requests = await settle_in_doubt("resend")
    assert requests == 1
    assert FindingKapture.asked == []
    assert [(r.classification, r.duplicate) for r in store.records] == [("success", True)]
    row = store.deliveries[delivery_id].row
    assert (row.status, row.in_doubt_since_ms, row.duplicates) == ("succeeded", None, 1)


def test_defaults_follow_what_the_vendor_can_look_up() -> None:
    """Kapture reconciles by default with a reference field and resends without one; reconcile without a
    reference is refused, naming the key to set."""
    assert destination(None).config.unknown_policy == "reconcile"
    assert destination(None, reference=None).config.unknown_policy == "resend"
    with pytest.raises(ValueError, match="reference_field"):
        destination("reconcile", reference=None)


@pytest.mark.parametrize("stale", [False, True])
async def test_reconcile_looks_up_with_the_destinations_oauth2_token(aiohttp_server: Any, stale: bool) -> None:
    """A reconciliation's look-up carries the destination's OAuth2 token, as a send does; a token the API no
    longer honours is refused (401), renewed once, and the look-up made again: the ticket is found, none sent."""
    sim = HttpSimulator()
    sim.knobs = HttpKnobs(oauth2=True)
    sim.hold({"id": "T-7", "method": "POST", "path": "/tickets", "body": {"title": "t", "ref": "evt_7"},
              "files": [], "updates": []})
    server = await aiohttp_server(sim.app())
    base = str(server.make_url("")).rstrip("/")
    cfg = msgspec.convert({"vendor": "http", "base_url": base, "path": "/tickets", "on_unknown": "reconcile",
                           "lookup": {"path": "/search?ref={ref}", "ticket_id_path": "items[0].id"},
                           "auth": {"oauth2": {"token_url": TOKEN_PATH, "client_id": SANDBOX_CLIENT_ID,
                                               "client_secret": SANDBOX_CLIENT_SECRET}}}, HttpOptions)
    dest = Destination.from_config("api", cfg, base)
    assert isinstance(dest.adapter.credentials, OAuth2Credentials)
    if stale:
        dest.adapter.credentials.token = Token(value="revoked-by-the-api")
    store = RecordingStore()
    await in_doubt(store, to="api", body={"title": "t", "ref": "evt_7"})
    async with running(store, dest):
        await eventually(lambda: len(store.records) == 1)
    [result] = store.records
    assert (result.classification, result.ticket_id) == ("reconciled", "T-7"), result.error
    assert (sim.token_requests, sim.refused, len(sim.tickets)) == (1, int(stale), 1)


@pytest.mark.parametrize(("failure", "classification", "status", "error"), [
    (VendorAuthFailed("the key was refused"), "auth", "dead", "not sent: reconciliation: the key was refused"),
    (VendorUnavailable("pull answered 503"), "retry", "pending",
     "not sent: reconciliation could not look the ticket up: VendorUnavailable: pull answered 503"),
    (aiohttp.ClientConnectionError("gone"), "retry", "pending",
     "not sent: reconciliation could not look the ticket up: ClientConnectionError: gone"),
    (TimeoutError(), "retry", "pending", "not sent: reconciliation could not look the ticket up: TimeoutError: "),
])
async def test_a_failed_reconciliation_is_recorded_auth_or_retry_naming_it(
        failure: Exception, classification: str, status: str, error: str) -> None:
    """A reconciliation refused for its credentials is an auth failure (dead); one failing in passing is retried,
    its error naming the look-up and the failure. Neither sends."""
    FindingKapture.answers = [failure]
    store, _delivery_id, requests = await settle_in_doubt("reconcile")
    assert requests == 0
    [result] = store.records
    assert (result.classification, result.next_status, result.error) == (classification, status, error)


async def test_a_reconciliation_past_its_deadline_stays_unknown_saying_what_it_searched(aiohttp_server: Any) -> None:
    """A reconciliation whose vendor stops answering its pulls ends at the destination's reconcile_timeout, not
    after a timeout per call: the attempt is `unknown` (no guess that the ticket is there or not), nothing is
    sent, the delivery stays in doubt on the retry schedule without counting another unknown send, and the
    error says why it stopped and what it had pulled."""
    release = asyncio.Event()
    pulls: list[Any] = []

    async def pull(request: web.Request) -> web.Response:
        item = (await request.json())[0]
        pulls.append(item.get("limit"))
        if item.get("limit") is None:
            return web.json_response({"status": "failed", "message": "limit is required"})
        if item["limit"] > 2:
            await release.wait()
        tickets = [{"ticketId": f"{item['start_date']}-{item['limit']}-{n}", "additional_info": {"bridge_ref": "x"}}
                   for n in range(2)]
        return web.json_response({"status": "success", "message": tickets})

    app = web.Application()
    app.router.add_post(PULL_PATH, pull)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    cfg = KaptureOptions(vendor="kapture", base_url=base, token="t", timeout_seconds=60.0,
                         reference_field="bridge_ref", reconcile_timeout="300ms",
                         retry=RetryConfig(schedule=["30s", "5m"], jitter=0))
    store = RecordingStore()
    since_ms = int(time.time() * 1000)
    delivery_id = await in_doubt(store, since_ms, body={"title": "t", "bridge_ref": "evt_1"})
    try:
        async with running(store, Destination.from_config("kapture", cfg, base)):
            await eventually(lambda: len(store.records) == 1)
    finally:
        release.set()
    [result] = store.records
    assert (result.classification, result.next_status, result.http_status) == ("unknown", "pending", None)
    first = date.fromtimestamp(since_ms / 1000) - timedelta(days=1)
    assert result.error == (
        "not sent: reconciliation stopped before it could tell whether the vendor holds the ticket: its 0.3s (the "
        "destination's reconcile_timeout) ran out; looked for bridge_ref = 'evt_1' in the tickets of "
        f"{first.isoformat()} (2 pages, 4 tickets, not to its end); not pulled: "
        f"{(first + timedelta(days=1)).isoformat()}")
    assert pulls == [None, 1, 2, 3]
    row = store.deliveries[delivery_id].row
    assert (row.status, row.in_doubt_since_ms, row.unknowns) == ("pending", since_ms, 1)


class PagingKapture(KaptureAdapter):
    """Kapture whose look-up reads `pages` pages from the vendor (each a request through `call`), finding nothing;
    and whose ticket check is one request."""

    pages = 2

    async def find(self, action: str, fields: dict[str, Any], since_ms: int, call: Call) -> Found | None:
        for page in range(self.pages):
            await call(VendorRequest(method="GET", url=f"{self.base_url}/look?page={page}", headers={}, body=b""))
        return None

    async def ticket_exists(self, ticket_id: str, call: Call) -> bool | None:
        status, _ = await call(VendorRequest(method="GET", url=f"{self.base_url}/look?page=0", headers={}, body=b""))
        return status == 200


class CountingGate(LocalGate):
    """A gate counting what it lets out: each send's start, each request made beside one (`admit_request`)."""

    def __init__(self) -> None:
        super().__init__(Unlimited())
        self.admitted: list[str] = []

    async def start(self, admission: Admission, index: int) -> None:
        self.admitted.append("send")
        await super().start(admission, index)

    async def admit_request(self) -> None:
        self.admitted.append("request")
        await super().admit_request()


async def test_a_reconciliations_look_ups_are_each_admitted_by_the_gate() -> None:
    """Each request a reconciliation makes waits for its slot at the destination's gate (its rate limit) as a
    send does: two pages looked up, then the send, are three requests let out by the gate."""
    store = RecordingStore()
    await in_doubt(store)
    dest = destination("reconcile")
    dest.adapter = PagingKapture("kapture", dest.config, FAST)
    counting = CountingGate()
    with aioresponses() as m:
        mock_vendor(m)
        m.get(re.compile(re.escape(FAST) + r"/look\?page=\d"), status=200, body=b"[]", repeat=True,
              response_class=MockResponse)
        async with running(store, dest) as d:
            d.lanes["kapture"].gate = counting  # before its first turn
            await eventually(lambda: len(store.records) == 1)
        assert requests_to(m) == 1
    assert [r.classification for r in store.records] == ["success"]
    assert counting.admitted == ["request", "request", "send"]


async def test_a_follow_ups_ticket_check_is_admitted_by_the_gate() -> None:
    """A follow-up's ticket check is a request to the vendor like any other: the gate lets it out."""
    dest = destination("reconcile")
    dest.adapter = PagingKapture("kapture", dest.config, FAST)
    counting = CountingGate()
    with aioresponses() as m:
        m.get(re.compile(re.escape(FAST) + r"/look\?page=\d"), status=200, body=b"[]", repeat=True,
              response_class=MockResponse)
        async with running(RecordingStore(), dest) as d:
            lane = d.lanes["kapture"]
            lane.gate = counting
            item = Claimed(id="dlv_1", event_id="evt_1", mapping="m", destination="kapture", action="create_ticket",
                           body={}, options={}, tries=0, attempts=0, ticket={"id": "T-1"})
            assert await lane._ticket_gone(item) is None
    assert counting.admitted == ["request"]
