"""Netgroot's subscriber log-in as credentials, against the simulator over HTTP: a JWT obtained, renewed before
its `exp`, refused log-ins named, and Logout at close."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from bridge.app import close_adapters
from bridge.delivery.dispatcher import Destination
from bridge.delivery.retry import RetryPolicy
from bridge.simulators.faults import Faults
from bridge.simulators.netgroot import SANDBOX_PASSWORD, SANDBOX_USERNAME, NetgrootSimulator
from bridge.vendors.base import VendorAuthFailed, VendorUnavailable
from bridge.vendors.credentials import StaticCredentials
from bridge.vendors.netgroot import (
    LOGIN_PATH,
    LOGOUT_PATH,
    NetgrootAdapter,
    NetgrootLogin,
    NetgrootLoginCredentials,
    NetgrootOptions,
)
from tests.fixtures.clocks import ManualClock


async def login_against(aiohttp_server: Any, password: str = SANDBOX_PASSWORD
                        ) -> tuple[NetgrootSimulator, NetgrootLoginCredentials, ManualClock]:
    clock = ManualClock(1_800_000_000.0)
    sim = NetgrootSimulator(clock=clock)
    server = await aiohttp_server(sim.app())
    creds = NetgrootLoginCredentials("isp", NetgrootLogin(username=SANDBOX_USERNAME, password=password),
                                     lambda: str(server.make_url("")).rstrip("/"), 5.0, clock=clock)
    return sim, creds, clock


async def test_the_jwt_is_renewed_before_its_exp(aiohttp_server: Any) -> None:
    """The Login's token is used until a tenth of its life before `exp`, then a new Login is made."""
    sim, creds, clock = await login_against(aiohttp_server)
    sim.knobs.token_lifetime_seconds = 100
    async with aiohttp.ClientSession() as session:
        first = await creds.headers(session)
        clock.now += 89
        assert await creds.headers(session) == first
        clock.now += 1
        assert await creds.headers(session) != first
    assert (sim.logins, creds.subscriber) == (2, SANDBOX_USERNAME)


async def test_a_refused_log_in_is_auth_and_names_the_keys(aiohttp_server: Any) -> None:
    """A wrong password is VendorAuthFailed naming the config keys to fix, never the password (nor the
    username, often an email address)."""
    _, creds, _ = await login_against(aiohttp_server, password="wrong-pass")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(VendorAuthFailed) as info:
            await creds.headers(session)
    assert str(info.value) == ("netgroot: Login: HTTP 401: Invalid credentials: check "
                               "auth.login.username and password (the subscriber's portal log-in)")
    assert "wrong-pass" not in str(info.value)


async def test_a_log_in_outage_is_unavailable(aiohttp_server: Any) -> None:
    """A 503 from Login means try later (VendorUnavailable), not a refusal."""
    sim, creds, _ = await login_against(aiohttp_server)
    sim.faults = Faults(fail_count=1, fail_status=503)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(VendorUnavailable, match="Login: HTTP 503"):
            await creds.headers(session)


async def test_close_logs_out(aiohttp_server: Any) -> None:
    """Closing the credentials calls Logout with the token, which the CRM then refuses."""
    sim, creds, _ = await login_against(aiohttp_server)
    async with aiohttp.ClientSession() as session:
        await creds.headers(session)
        await creds.close(session)
    assert (sim.logouts, sim.jwts) == (1, {})


async def test_a_logout_that_gets_no_rate_limit_slot_is_not_sent(aiohttp_server: Any) -> None:
    """At shutdown the Logout waits for its slot at the destination's gate, within the time shutdown gives it: a
    gate that lets nothing out in that time leaves the token unrevoked (`vendor.close_timed_out`), no request
    sent, and shutdown goes on; a gate that lets it out sends it."""
    sim, creds, _ = await login_against(aiohttp_server)
    options = NetgrootOptions(vendor="netgroot", sandbox=True, type_id=1, status_id=1, priority_id=2,
                              group_id=1)
    adapter = NetgrootAdapter("isp", options, "http://unused")
    adapter.credentials = creds
    destination = Destination(name="isp", config=options, adapter=adapter, policy=RetryPolicy(delays=()))
    closed = asyncio.Event()

    async def never() -> None:
        await closed.wait()

    async with aiohttp.ClientSession() as session:
        await creds.headers(session)
        with capture_logs() as logs:
            await close_adapters({"isp": destination}, session, timeout_s=0.05, admits={"isp": never})
        assert sim.logouts == 0 and len(sim.jwts) == 1
        assert [(e["destination"], e["log_level"]) for e in logs if e["event"] == "vendor.close_timed_out"] == [
            ("isp", "warning")]
        admitted: list[int] = []

        async def gate() -> None:
            admitted.append(sim.logouts)

        creds.token = creds.replaced  # as if still held: the first close gave it up unrevoked
        await close_adapters({"isp": destination}, session, admits={"isp": gate})
    assert (admitted, sim.logouts, sim.jwts) == ([0], 1, {})


async def test_a_redirected_logout_is_not_followed(aiohttp_server: Any) -> None:
    """A Logout the CRM answers with a redirect is not followed (the token's header is not taken to another
    page, nor another page read): the log-out is logged as failed, naming the status."""
    followed: list[dict[str, str]] = []
    app = web.Application()

    async def login(request: web.Request) -> web.Response:
        return web.json_response({"success": True, "token": "tok-1"})

    async def logout(request: web.Request) -> web.Response:
        raise web.HTTPFound("/landing")

    async def landing(request: web.Request) -> web.Response:
        followed.append(dict(request.headers))
        return web.Response(text="landing")

    app.router.add_post(LOGIN_PATH, login)
    app.router.add_post(LOGOUT_PATH, logout)
    app.router.add_get("/landing", landing)
    server = await aiohttp_server(app)
    creds = NetgrootLoginCredentials("isp", NetgrootLogin(username="u", password="p"),
                                     lambda: str(server.make_url("")).rstrip("/"), 5.0)
    async with aiohttp.ClientSession() as session:
        await creds.headers(session)
        with capture_logs() as logs:
            await creds.close(session)
    assert followed == []
    assert [e["error"] for e in logs if e["event"] == "vendor.logout_failed"] == ["HTTP 302"]


async def test_a_log_in_token_no_header_can_carry_is_refused_naming_it(aiohttp_server: Any) -> None:
    """A Login answering a token with CR/LF in it is refused as the credentials' failure (VendorAuthFailed), the
    error naming the answer's token and never its value: no request could be sent with it."""
    app = web.Application()

    async def login(request: web.Request) -> web.Response:
        return web.json_response({"success": True, "token": "tok-1\r\nX-Injected: 1"})

    app.router.add_post(LOGIN_PATH, login)
    server = await aiohttp_server(app)
    creds = NetgrootLoginCredentials("isp", NetgrootLogin(username="u", password="p"),
                                     lambda: str(server.make_url("")).rstrip("/"), 5.0)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(VendorAuthFailed) as info:
            await creds.headers(session)
    assert str(info.value) == ("netgroot: Login: the answer's token holds a control character ('\\r'): no request "
                               "can carry it, so it is not used")


def options(auth: dict[str, Any] | None = None, **kwargs: Any) -> NetgrootOptions:
    table: dict[str, Any] = {"vendor": "netgroot", "base_url": "https://crm.example", **kwargs}
    if auth is not None:
        table["auth"] = auth
    return msgspec.convert(table, NetgrootOptions)


def test_auth_takes_a_login_or_a_token() -> None:
    """`auth` holds `login` or `token`; both, neither, an empty one, or `auth` beside `token` are refused."""
    made = NetgrootAdapter("isp", options({"login": {"username": "u", "password": "p"}}), "https://crm.example")
    assert isinstance(made.credentials, NetgrootLoginCredentials)
    made = NetgrootAdapter("isp", options({"token": "admin-made"}), "https://crm.example")
    assert isinstance(made.credentials, StaticCredentials)
    for auth, kwargs, message in [
        ({"login": {"username": "u", "password": "p"}, "token": "t"}, {}, "give one of"),
        ({}, {}, "give one of"),
        ({"login": {"username": " ", "password": "p"}}, {}, "`username` is empty"),
        ({"token": ""}, {}, "`token` is empty"),
        ({"token": "t"}, {"token": "t"}, "give `auth` or `token`, not both"),
    ]:
        with pytest.raises(msgspec.ValidationError, match=message):
            options(auth, **kwargs)


def test_unknown_mapping_options_are_refused() -> None:
    """Netgroot's create takes no mapping `options:`; each one given is named."""
    problems = NetgrootAdapter.static_check("create_ticket", ["subject_id", "message"], {"TypeId": 1})
    assert problems == ["options.TypeId: unknown netgroot option; netgroot create_ticket takes no options"]
