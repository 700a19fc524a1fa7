"""The `http` vendor's `auth:` block: fixed header, basic, bearer, and OAuth2 client credentials against the
simulator's local token endpoint (the token cached, obtained again on expiry and once on a 401)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from bridge.delivery.sender import send_once
from bridge.offload import LOOP_ANSWER_BYTES
from bridge.simulators.faults import Faults
from bridge.simulators.http import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, TOKEN_PATH, HttpKnobs, HttpSimulator
from bridge.store.base import Claimed
from bridge.vendors.base import VendorAuthFailed, VendorUnavailable
from bridge.vendors.credentials import StaticCredentials, TokenCredentials
from bridge.vendors.http import HttpAdapter, HttpOptions
from bridge.vendors.http_auth import OAuth2ClientCredentials, OAuth2Credentials
from bridge.vendors.netgroot import LOGIN_PATH, NetgrootLogin, NetgrootLoginCredentials
from tests.fixtures.clocks import ManualClock
from tests.lenient_threads import lenient_threads


def options(auth: dict[str, Any], base_url: str = "https://api.example") -> HttpOptions:
    return msgspec.convert({"vendor": "http", "base_url": base_url, "path": "/tickets",
                            "ticket_id_path": "data.id", "auth": auth}, HttpOptions)


@pytest.mark.parametrize(("auth", "headers"), [
    ({"header": {"name": "X-Api-Key", "value": "k1"}}, {"X-Api-Key": "k1"}),
    ({"basic": {"username": "ann", "password": "pw"}}, {"Authorization": "Basic YW5uOnB3"}),
    ({"bearer": "t0k"}, {"Authorization": "Bearer t0k"}),
])
async def test_fixed_auth_gives_its_header(auth: dict[str, Any], headers: dict[str, str]) -> None:
    """`header`, `basic` and `bearer` each give the one header they describe, never renewed."""
    made = HttpAdapter("api", options(auth), "https://api.example")
    assert isinstance(made.credentials, StaticCredentials)
    async with aiohttp.ClientSession() as session:
        assert await made.credentials.headers(session) == headers


@pytest.mark.parametrize(("auth", "message"), [
    ({}, "give exactly one of"),
    ({"bearer": "a", "basic": {"username": "u", "password": "p"}}, "got basic, bearer"),
    ({"bearer": " "}, "`bearer` is empty"),
    ({"header": {"name": "X-Key", "value": ""}}, "`value` is empty"),
    ({"oauth2": {"token_url": "token", "client_id": "c", "client_secret": "s"}}, "must be a URL"),
    ({"oauth2": {"token_url": "/t", "client_id": "c", "client_secret": ""}}, "`client_secret` is empty"),
    ({"oauth2": {"token_url": "/t", "client_id": "c", "client_secret": "s", "grant": "x"}}, "unknown field"),
])
def test_bad_auth_blocks_are_refused(auth: dict[str, Any], message: str) -> None:
    """An auth block with none or two kinds, an empty secret, a token_url that is no URL or an unknown key is
    refused when the config is read."""
    with pytest.raises(msgspec.ValidationError, match=message):
        options(auth)


async def oauth(aiohttp_server: Any, secret: str = SANDBOX_CLIENT_SECRET, client_auth: str = "basic"
                ) -> tuple[HttpSimulator, HttpAdapter, OAuth2Credentials, ManualClock]:
    clock = ManualClock(1_800_000_000.0)
    sim = HttpSimulator(clock=clock)
    sim.knobs = HttpKnobs(oauth2=True, token_lifetime_seconds=300)
    server = await aiohttp_server(sim.app())
    base = str(server.make_url("")).rstrip("/")
    made = HttpAdapter("api", options({"oauth2": {"token_url": TOKEN_PATH, "client_id": SANDBOX_CLIENT_ID,
                                                  "client_secret": secret, "scope": "tickets:write",
                                                  "client_auth": client_auth}}, base), base)
    creds = made.credentials
    assert isinstance(creds, OAuth2Credentials)
    creds.clock = clock
    return sim, made, creds, clock


def item(n: int) -> Claimed:
    return Claimed(id=f"dlv_{n}", event_id=f"evt_{n}", mapping="m", destination="api", action="create_ticket",
                   body={"title": f"t{n}"}, options={}, tries=0, attempts=0)


@pytest.mark.parametrize("client_auth", ["basic", "body"])
async def test_oauth2_token_is_cached_and_obtained_again_on_expiry(aiohttp_server: Any, client_auth: str) -> None:
    """Many sends share one token until 30 s (a tenth of 300 s) before its expiry; then one more is obtained;
    the client id and secret go as HTTP Basic or in the form, as configured."""
    sim, made, _, clock = await oauth(aiohttp_server, client_auth=client_auth)
    async with aiohttp.ClientSession() as session:
        for n in range(5):
            sent = await send_once(session, made, item(n), 5.0)
            assert sent.outcome.classification == "success", sent.outcome.error
        assert sim.token_requests == 1
        clock.now += 270
        sent = await send_once(session, made, item(5), 5.0)
        assert sent.outcome.classification == "success"
    assert (sim.token_requests, sim.refused, len(sim.tickets)) == (2, 0, 6)
    assert sent.exchange is not None and sent.exchange["request"]["headers"]["Authorization"] == "[redacted]"


async def test_oauth2_token_refused_early_is_renewed_once(aiohttp_server: Any) -> None:
    """A token the API stops honouring before its expiry gets a 401: a new token is obtained and the request
    is sent once more, in the same attempt."""
    sim, made, _, _ = await oauth(aiohttp_server)
    async with aiohttp.ClientSession() as session:
        assert (await send_once(session, made, item(0), 5.0)).outcome.classification == "success"
        sim.issued.clear()  # the API revokes every token
        sent = await send_once(session, made, item(1), 5.0)
    assert (sent.outcome.classification, sent.http_status) == ("success", 201)
    assert (sim.token_requests, sim.refused, len(sim.tickets)) == (2, 1, 2)


async def test_a_second_refusal_is_auth(aiohttp_server: Any) -> None:
    """When the fresh token is refused too, the attempt is `auth`: the renewal happens once, not in a loop."""
    sim, made, _, _ = await oauth(aiohttp_server)
    sim.knobs = HttpKnobs(oauth2=True, token_lifetime_seconds=0.5)
    ticks = iter(range(1_800_000_000, 1_900_000_000))
    sim.clock = lambda: float(next(ticks))  # the API's clock moves a second per look: every token is dead on use
    async with aiohttp.ClientSession() as session:
        sent = await send_once(session, made, item(0), 5.0)
    assert (sent.outcome.classification, sent.http_status) == ("auth", 401)
    assert (sim.token_requests, sim.refused) == (2, 2)


async def test_a_refused_client_is_auth_and_names_the_keys(aiohttp_server: Any) -> None:
    """A wrong client secret is `auth` before anything is sent, naming the endpoint's error and the keys."""
    sim, made, creds, _ = await oauth(aiohttp_server, secret="wrong")
    async with aiohttp.ClientSession() as session:
        sent = await send_once(session, made, item(0), 5.0)
        with pytest.raises(VendorAuthFailed, match="invalid_client"):
            await creds.headers(session)
    assert sent.outcome.classification == "auth"
    assert "check auth.oauth2.client_id, client_secret and scope" in (sent.outcome.error or "")
    assert "wrong" not in (sent.outcome.error or "")
    assert sim.tickets == []


async def test_a_refused_fixed_token_is_sent_once(aiohttp_server: Any) -> None:
    """Fixed credentials have nothing newer to try: a 401 is `auth` after one request."""
    sim = HttpSimulator()
    sim.knobs = HttpKnobs(oauth2=True)
    server = await aiohttp_server(sim.app())
    base = str(server.make_url("")).rstrip("/")
    made = HttpAdapter("api", options({"bearer": "made-up"}, base), base)
    async with aiohttp.ClientSession() as session:
        sent = await send_once(session, made, item(0), 5.0)
    assert (sent.outcome.classification, sim.refused) == ("auth", 1)


async def test_a_token_endpoint_down_after_a_refusal_is_a_retry(aiohttp_server: Any) -> None:
    """When the token is refused and the token endpoint then fails (503), the attempt is a retry naming both,
    not an auth failure: the credentials were not shown wrong."""
    sim, made, _, _ = await oauth(aiohttp_server)
    async with aiohttp.ClientSession() as session:
        await send_once(session, made, item(0), 5.0)
        sim.issued.clear()
        sim.faults = Faults(after=1, fail_count=1, fail_status=503)  # the send is refused, then the endpoint fails
        sent = await send_once(session, made, item(1), 5.0)
    assert sent.outcome.classification == "retry"
    assert (sent.outcome.error or "").startswith("http: HTTP 401")
    assert "a new token could not be obtained: http: the token endpoint" in (sent.outcome.error or "")


@pytest.mark.parametrize("vendor", ["oauth2", "netgroot-login"])
async def test_a_token_answer_sent_in_pieces_is_read_whole(aiohttp_server: Any, vendor: str) -> None:
    """A token endpoint (OAuth2's, Netgroot's Login) whose answer comes in two pieces, the second a moment after
    the first, as a slow or chunking server sends it, gives its token: the whole answer is read, not only the
    piece that had arrived."""
    answer = (b'{"access_token": "tok-1", "expires_in": 3600}' if vendor == "oauth2"
              else b'{"message": "Login successful", "token": "tok-1"}')
    app = web.Application()

    async def token(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(answer[:7])
        await asyncio.sleep(0.05)  # the vendor's pause between the pieces, not the test's synchronisation
        await resp.write(answer[7:])
        await resp.write_eof()
        return resp

    app.router.add_post(TOKEN_PATH if vendor == "oauth2" else LOGIN_PATH, token)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    creds: TokenCredentials = (
        OAuth2Credentials("api", OAuth2ClientCredentials(token_url=TOKEN_PATH, client_id="c", client_secret="s"),
                          lambda: base, 5.0) if vendor == "oauth2"
        else NetgrootLoginCredentials("isp", NetgrootLogin(username="u", password="p"), lambda: base, 5.0))
    async with aiohttp.ClientSession() as session:
        assert await creds.headers(session) == {"Authorization": "Bearer tok-1"}


async def test_an_access_token_no_header_can_carry_is_refused_naming_the_endpoint(aiohttp_server: Any) -> None:
    """A token endpoint answering an access_token with CR/LF in it is refused as the credentials' failure, the
    error naming the endpoint and the field, never the value."""
    app = web.Application()

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": "tok-1\r\nX-Injected: 1", "expires_in": 3600})

    app.router.add_post(TOKEN_PATH, token)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    creds = OAuth2Credentials("api", OAuth2ClientCredentials(token_url=TOKEN_PATH, client_id="c", client_secret="s"),
                              lambda: base, 5.0)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(VendorAuthFailed) as info:
            await creds.headers(session)
    assert str(info.value) == (f"http: the token endpoint {base}{TOKEN_PATH} answered an access_token that holds a "
                               "control character ('\\r'): no request can carry it, so it is not used")


@pytest.mark.parametrize(("expires_in", "lifetime"), [
    ('"' + "9" * 5000 + '"', None), ('"' + "9" * 13 + '"', None), ('"3600"', 3600.0), ('" 60 "', 60.0),
    ("true", None), ("0", None), ("-5", None), ("9" * 400, None), ("12.5", 12.5), ("3600", 3600.0),
])
async def test_a_token_lifetime_no_clock_holds_is_no_lifetime(aiohttp_server: Any, expires_in: str,
                                                              lifetime: float | None) -> None:
    """An `expires_in` of thousands of digits (more than Python reads as a number), or one no float holds, gives
    the token without a lifetime (kept until refused), not an error; a readable one sets its expiry."""
    app = web.Application()
    answer = b'{"access_token": "tok-1", "expires_in": ' + expires_in.encode() + b"}"

    async def token(request: web.Request) -> web.Response:
        return web.Response(body=answer, content_type="application/json")

    app.router.add_post(TOKEN_PATH, token)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    clock = ManualClock(1000.0)
    creds = OAuth2Credentials("api", OAuth2ClientCredentials(token_url=TOKEN_PATH, client_id="c", client_secret="s"),
                              lambda: base, 5.0, clock=clock)
    async with aiohttp.ClientSession() as session:
        got = await creds.obtain(session)
    assert got.value == "tok-1"
    assert got.expires_at == (None if lifetime is None else 1000.0 + lifetime)


@pytest.mark.parametrize("vendor", ["oauth2", "netgroot-login"])
async def test_a_token_request_is_made_once_admit_lets_it_out(aiohttp_server: Any, vendor: str) -> None:
    """A token endpoint (OAuth2's, Netgroot's Login) is asked only once `admit` (the destination's gate) lets the
    request out, as every other request to the vendor; a token kept asks neither."""
    arrived: list[str] = []
    app = web.Application()

    async def token(request: web.Request) -> web.Response:
        arrived.append(request.path)
        return web.json_response({"access_token": "tok-1", "expires_in": 3600} if vendor == "oauth2"
                                 else {"message": "Login successful", "token": "tok-1"})

    app.router.add_post(TOKEN_PATH if vendor == "oauth2" else LOGIN_PATH, token)
    server = await aiohttp_server(app)
    base = str(server.make_url("")).rstrip("/")
    creds: TokenCredentials = (
        OAuth2Credentials("api", OAuth2ClientCredentials(token_url=TOKEN_PATH, client_id="c", client_secret="s"),
                          lambda: base, 5.0) if vendor == "oauth2"
        else NetgrootLoginCredentials("isp", NetgrootLogin(username="u", password="p"), lambda: base, 5.0))
    admitted: list[int] = []  # how many token requests had arrived when each was let out

    async def admit() -> None:
        admitted.append(len(arrived))

    async with aiohttp.ClientSession() as session:
        assert await creds.headers(session, admit) == {"Authorization": "Bearer tok-1"}
        assert await creds.headers(session, admit) == {"Authorization": "Bearer tok-1"}
    assert (admitted, len(arrived)) == ([0], 1)


async def test_a_send_lets_its_token_requests_out_as_look_ups(aiohttp_server: Any) -> None:
    """`send_once` lets each token request out through `on_lookup`, as a look-up's, before the send it is for
    (`on_send`): the first token, and the one obtained after the API refused the token (then the resend)."""
    sim, made, _, _ = await oauth(aiohttp_server)
    let_out: list[str] = []

    async def on_lookup() -> None:
        let_out.append(f"look-up {sim.token_requests}")

    async def on_send() -> None:
        let_out.append("send")

    async with aiohttp.ClientSession() as session:
        first = await send_once(session, made, item(0), 5.0, on_send, on_lookup=on_lookup)
        sim.issued.clear()  # the API revokes every token
        renewed = await send_once(session, made, item(1), 5.0, on_send, on_lookup=on_lookup)
    assert (first.outcome.classification, renewed.outcome.classification) == ("success", "success")
    assert let_out == ["look-up 0", "send", "send", "look-up 1", "send"]
    assert sim.token_requests == 2


def token_creds(vendor: str, base: str) -> TokenCredentials:
    if vendor == "oauth2":
        return OAuth2Credentials("api", OAuth2ClientCredentials(token_url=TOKEN_PATH, client_id="c",
                                                                client_secret="s"), lambda: base, 5.0)
    return NetgrootLoginCredentials("isp", NetgrootLogin(username="u", password="p"), lambda: base, 5.0)


async def token_server(aiohttp_server: Any, vendor: str, status: int, body: bytes,
                       content_type: str = "application/json") -> str:
    app = web.Application()

    async def token(request: web.Request) -> web.Response:
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    app.router.add_post(TOKEN_PATH if vendor == "oauth2" else LOGIN_PATH, token)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.mark.parametrize("vendor", ["oauth2", "netgroot-login"])
@pytest.mark.parametrize("status", [200, 201, 202])
async def test_any_2xx_carrying_a_token_is_the_token_answer(aiohttp_server: Any, vendor: str, status: int) -> None:
    """RFC 6749 §5.1 answers a token with 200; a server that says 201 (or another 2xx) still gave the token, which
    is used, never refused and quoted as an answer without one."""
    key = "access_token" if vendor == "oauth2" else "token"
    base = await token_server(aiohttp_server, vendor, status, msgspec.json.encode({key: "LIVE-TOKEN-0123456789"}))
    async with aiohttp.ClientSession() as session:
        assert await token_creds(vendor, base).headers(session) == {"Authorization": "Bearer LIVE-TOKEN-0123456789"}


@pytest.mark.parametrize("vendor", ["oauth2", "netgroot-login"])
@pytest.mark.parametrize(("status", "body", "content_type", "said"), [
    # a 2xx whose token is under a name the bridge does not read: its keys named, no value quoted
    (200, b'{"token_type":"bearer","refresh_token":"LIVE-R","id_token":"LIVE-I","data":{"access_token":"LIVE-A",'
          b'"jwt_token":"LIVE-J","api_key":"LIVE-K"}}', "application/json",
     "a JSON object with the keys token_type, refresh_token, id_token, data.access_token, data.jwt_token, "
     "data.api_key, values not quoted"),
    # names no redaction knows for a token: never quoted either
    (200, b'{"jwt":"LIVE-J","sid":"LIVE-S","result":"LIVE-R","scopes":["LIVE-X"],"meta":{}}', "application/json",
     "a JSON object with the keys jwt, sid, result, scopes[…], meta, values not quoted"),
    (200, b'{}', "application/json", "a JSON object with the keys (none), values not quoted"),
    # a 5xx repeating the token: not quoted either
    (503, b'{"access_token":"LIVE-A","token":"LIVE-T","state":"busy"}', "application/json",
     "a JSON object with the keys access_token, token, state, values not quoted"),
    # not JSON: never quoted, only its type and length
    (201, b"access_token=LIVE-A&token_type=bearer", "application/x-www-form-urlencoded; charset=utf-8",
     "a body of 37 bytes (application/x-www-form-urlencoded), not quoted: not a JSON object"),
    (200, b'"LIVE-A"', "application/json", "a body of 8 bytes (application/json), not quoted: not a JSON object"),
    (500, b"<html>token LIVE-A</html>", "text/html", "a body of 25 bytes (text/html), not quoted: not a JSON object"),
])
async def test_a_token_endpoint_answer_is_never_quoted_with_a_token(
        aiohttp_server: Any, vendor: str, status: int, body: bytes, content_type: str, said: str) -> None:
    """An answer from a token endpoint that is not used as one (no token where it is read, or not a 2xx) is named
    in the error, which the attempt keeps, logs and shows, without any token it carries: the bridge's redaction of
    values knows only the tokens it holds, and this one it never took, under any name. A JSON object is named by
    its keys alone; anything else only by its content type and length."""
    base = await token_server(aiohttp_server, vendor, status, body, content_type)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(VendorUnavailable) as info:
            await token_creds(vendor, base).headers(session)
    assert "LIVE-" not in str(info.value)
    assert str(info.value).endswith(said)
    assert f"HTTP {status}" in str(info.value)


@pytest.mark.parametrize("vendor", ["oauth2", "netgroot-login"])
async def test_a_long_token_answer_msgspec_refuses_is_read_leniently_off_the_loop(
        aiohttp_server: Any, vendor: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token answer (read up to 64 KiB) longer than LOOP_ANSWER_BYTES that msgspec refuses for a byte that is not
    UTF-8 is read leniently in the look-up thread, not on the loop (up to 12 ms for 64 KiB there): its token is
    used all the same."""
    lenient = lenient_threads(monkeypatch)
    key = "access_token" if vendor == "oauth2" else "token"
    body = b'{"%s": "tok-1", "note": "' % key.encode() + b"x" * LOOP_ANSWER_BYTES + b'\xe9"}'
    base_url = await token_server(aiohttp_server, vendor, 200, body)
    async with aiohttp.ClientSession() as session:
        assert await token_creds(vendor, base_url).headers(session) == {"Authorization": "Bearer tok-1"}
    assert lenient == ["ticketbridge-lookup"]
