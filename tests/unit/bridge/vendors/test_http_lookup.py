"""bridge/vendors/http.py: the configured look-up that reconciles a create of unknown outcome."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.vendors.base import ID_CHARS, CannotReconcile, VendorAuthFailed, VendorRequest, VendorUnavailable
from bridge.vendors.http import HttpAdapter, HttpLookup, HttpOptions


def adapter(base: str, lookup: HttpLookup | None) -> HttpAdapter:
    options = HttpOptions(vendor="http", base_url=base, path="/tickets", headers={"X-Key": "k"}, lookup=lookup)
    return HttpAdapter("crm", options, base)


async def target(aiohttp_server: Any, status: int = 200) -> str:
    """A target whose GET /tickets?ref= answers the ticket made with that reference (404 when none)."""
    held = {"evt_1": "T-9"}

    async def find(request: web.Request) -> web.Response:
        assert request.headers["X-Key"] == "k"
        if status != 200:
            return web.json_response({"error": "no"}, status=status)
        ref = request.query.get("ref", "")
        if ref not in held:
            return web.json_response({"items": []}, status=404)
        return web.json_response({"items": [{"id": held[ref]}]})

    app = web.Application()
    app.router.add_get("/tickets", find)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def look(a: HttpAdapter, fields: dict[str, Any]) -> Any:
    async with aiohttp.ClientSession() as session:
        async def call(request: VendorRequest) -> tuple[int, bytes]:
            async with session.request(request.method, request.url, headers=request.headers) as resp:
                return resp.status, await resp.read()
        return await a.find("create_ticket", fields, 0, call)


LOOKUP = HttpLookup(path="/tickets?ref={ref}", ticket_id_path="items[0].id")


async def test_lookup_finds_the_ticket_its_reference_names(aiohttp_server: Any) -> None:
    """The look-up GETs the configured path filled from the create's fields and reads the ticket id; a 404
    (or nothing at the id path) is no ticket."""
    a = adapter(await target(aiohttp_server), LOOKUP)
    found = await look(a, {"title": "t", "ref": "evt_1"})
    assert found is not None and found.ticket_id == "T-9"
    assert await look(a, {"title": "t", "ref": "evt_2"}) is None
    assert a.reconciles("create_ticket") and not a.reconciles("update_ticket")


@pytest.mark.parametrize(("status", "error"), [(503, VendorUnavailable), (401, VendorAuthFailed),
                                               (400, CannotReconcile)])
async def test_a_failed_lookup_says_why(aiohttp_server: Any, status: int, error: type[Exception]) -> None:
    """A passing failure retries later, refused credentials are auth, any other answer cannot tell (held)."""
    a = adapter(await target(aiohttp_server, status), LOOKUP)
    with pytest.raises(error):
        await look(a, {"title": "t", "ref": "evt_1"})


@pytest.mark.parametrize(("found", "said"), [
    ({"number": 9}, r"an object \(\{\"number\":9\}\)"),
    (int("7" * (ID_CHARS + 1)), f"a whole number of {ID_CHARS + 1} characters"),
], ids=["object", "long-number"])
async def test_a_found_ticket_whose_id_is_no_id_cannot_tell(aiohttp_server: Any, found: Any, said: str) -> None:
    """A look-up answering a ticket whose id is an object, or a number longer than an id may be, names a ticket it
    cannot give: not "none found" (which would send the create again, a second ticket) but CannotReconcile (held
    for an operator), saying what it was."""

    async def find(request: web.Request) -> web.Response:
        return web.json_response({"items": [{"id": found}]})

    app = web.Application()
    app.router.add_get("/tickets", find)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    with pytest.raises(CannotReconcile, match=r"HTTP 200, but the answer's ticket id at `items\[0\]\.id` is "
                                              f"{said}, not kept"):
        await look(adapter(base, LOOKUP), {"title": "t", "ref": "evt_1"})


async def test_a_reference_missing_from_the_fields_cannot_tell() -> None:
    """A create whose fields lack the path's placeholder cannot be looked up: CannotReconcile."""
    with pytest.raises(CannotReconcile, match="cannot be filled"):
        await look(adapter("http://unused.test", LOOKUP), {"title": "t"})


def test_reconcile_needs_a_lookup_and_defaults_follow_it() -> None:
    """Without `lookup` reconcile is refused (naming it) and the default is hold; with one, reconcile."""
    assert adapter("http://x.test", None).config.unknown_policy == "hold"
    assert adapter("http://x.test", LOOKUP).config.unknown_policy == "reconcile"
    with pytest.raises(ValueError, match="lookup"):
        HttpOptions(vendor="http", base_url="http://x.test", on_unknown="reconcile")
