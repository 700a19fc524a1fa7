"""`ticketbridge doctor` over real HTTP against the simulators: OK on each sandbox destination, and on each
broken setup (wrong host, wrong key, API not enabled, wrong log-in) a failure that names the fix."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from bridge.cli import main
from bridge.doctor import Finding, examine, examine_all, render
from bridge.simulators.http import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, TOKEN_PATH, HttpSimulator
from bridge.simulators.kapture import KaptureSimulator
from bridge.simulators.leadsquared import LeadSquaredSimulator
from bridge.simulators.netgroot import NO_SUBSCRIBER_TOKEN, NetgrootSimulator
from bridge.vendors.base import Adapter
from bridge.vendors.credentials import Token, TokenCredentials
from bridge.vendors.leadsquared import SANDBOX_ACCESS_KEY, SANDBOX_ORG
from bridge.vendors.registry import adapter_class, vendor_options

SANDBOXES = """\
store: {url: "sqlite:///var/bridge.db"}
destinations:
  kapture: {vendor: kapture, sandbox: true}
  lsq: {vendor: leadsquared, sandbox: true, rate_limit: leadsquared-standard}
  isp: {vendor: netgroot, sandbox: true, auth: {login: {username: sandbox, password: sandbox-password}}}
  isp-token: {vendor: netgroot, sandbox: true}
  api: {vendor: http, sandbox: true, doctor: {path: /me},
        auth: {oauth2: {token_url: /oauth/token, client_id: sandbox-client, client_secret: sandbox-secret}}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_doctor_says_ok_on_every_sandbox_destination(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every sandbox destination (each vendor, Netgroot by log-in and by token, http by OAuth2) is OK: exit 0."""
    (tmp_path / "bridge.yaml").write_text(SANDBOXES)
    assert main(["doctor", "-c", str(tmp_path / "bridge.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.count("\nOK      ") + out.startswith("OK      ") == 5, out
    assert "tickets are filed for subscriber 'sandbox'" in out
    assert out.rstrip().endswith("doctor: 5 ok, 0 failed, 0 skipped")


def test_doctor_checks_the_named_destination_and_fails_on_a_broken_one(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Naming destinations checks only those; an unreachable host fails with exit 1 and names the fix; an http
    destination without a doctor request is skipped, which is no failure."""
    port = free_port()
    (tmp_path / "bridge.yaml").write_text(SANDBOXES + f"""\
  down: {{vendor: leadsquared, base_url: "http://127.0.0.1:{port}", org_id: o, access_key: a, secret_key: s}}
  plain: {{vendor: http, sandbox: true}}
""")
    assert main(["doctor", "-c", str(tmp_path / "bridge.yaml"), "down", "plain"]) == 1
    out = capsys.readouterr().out
    assert "FAILED  down (leadsquared): the host cannot be reached" in out
    assert "fix: check base_url (host name, port, http/https)" in out
    assert "SKIPPED plain (http): no `doctor:` request is configured" in out
    assert "kapture" not in out
    assert main(["doctor", "-c", str(tmp_path / "bridge.yaml"), "plain"]) == 0


def test_doctor_refuses_an_unknown_destination(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown destination name is exit 2, listing the ones the config has."""
    (tmp_path / "bridge.yaml").write_text(SANDBOXES)
    assert main(["doctor", "-c", str(tmp_path / "bridge.yaml"), "nope"]) == 2
    assert "no destination 'nope' in the config; it has: api, isp, isp-token, kapture, lsq" in capsys.readouterr().err


async def check(aiohttp_server: Any, sim: Any, vendor: str, **options: Any) -> Finding:
    server = await aiohttp_server(sim.app())
    base = str(server.make_url("")).rstrip("/")
    config = msgspec.convert({"vendor": vendor, "base_url": base, **options}, vendor_options(vendor))
    adapter: Adapter = adapter_class(vendor)("dest", config, base)
    async with aiohttp.ClientSession() as session:
        return await examine(adapter, session, 5.0)


LSQ = {"org_id": "o", "access_key": "a", "secret_key": "s"}


async def test_leadsquared_on_the_core_host_names_the_gateway(aiohttp_server: Any) -> None:
    """A LeadSquared destination on a core API host: failed, saying so, the fix naming the gateway host and the
    API switch."""
    sim = LeadSquaredSimulator(orgs={"o"}, keys={"a": "s"})
    sim.knobs.core_host = True
    found = await check(aiohttp_server, sim, "leadsquared", **LSQ)
    assert found.state == "failed"
    assert found.said.startswith("HTTP 401: this looks like the core API host")
    assert found.fix is not None and "https://apigw.service-in.leadsquared.com" in found.fix
    assert "LeadSquared Service CRM APIs" in found.fix


async def test_leadsquared_ok_on_a_gateway_and_each_broken_key_or_switch(aiohttp_server: Any) -> None:
    """On the gateway (the sandbox counts as one; it sends the demo org and keys) the look-up is OK; a wrong secret
    names the keys, a disabled API names the switch, a wrong org names org_id."""
    sandbox = {"sandbox": True}
    ok = await check(aiohttp_server, LeadSquaredSimulator(), "leadsquared", **sandbox)
    assert (ok.state, ok.request is not None and ok.request.endswith(f"/api/tenants/{SANDBOX_ORG}/tickets/0")
            ) == ("ok", True)
    bad_key = await check(aiohttp_server, LeadSquaredSimulator(keys={SANDBOX_ACCESS_KEY: "other"}), "leadsquared",
                          **sandbox)
    assert bad_key.state == "failed" and bad_key.fix is not None and bad_key.fix.startswith("check access_key")
    disabled = LeadSquaredSimulator()
    disabled.knobs.api_disabled = True
    off = await check(aiohttp_server, disabled, "leadsquared", **sandbox)
    assert off.said.startswith("HTTP 401: the Service CRM API is not enabled")
    assert off.fix is not None and off.fix.startswith("Switch the Service CRM API on")
    wrong_org = await check(aiohttp_server, LeadSquaredSimulator(orgs={"x"}), "leadsquared", **sandbox)
    assert wrong_org.fix is not None and wrong_org.fix.startswith("org_id is the account number")


async def test_kapture_wrong_or_expired_key_and_wrong_host(aiohttp_server: Any) -> None:
    """Kapture: a wrong key and an expired one fail naming where keys are renewed; a host that does not answer
    Kapture's JSON names base_url."""
    wrong = await check(aiohttp_server, KaptureSimulator(tokens={"right"}), "kapture", token="wrong")
    assert wrong.state == "failed" and wrong.fix is not None and "API configurations" in wrong.fix
    expired_sim = KaptureSimulator(tokens={"right"})
    expired_sim.knobs.auth_key_expired = True
    expired = await check(aiohttp_server, expired_sim, "kapture", token="right")
    assert "Auth Key Expired" in expired.said
    elsewhere = await check(aiohttp_server, LeadSquaredSimulator(), "kapture", token="right")
    assert elsewhere.fix is not None and elsewhere.fix.startswith("set base_url to the account's Kapture address")
    ok = await check(aiohttp_server, KaptureSimulator(tokens={"right"}), "kapture", token="right")
    assert ok.state == "ok"


async def test_netgroot_wrong_log_in_and_missing_subscriber(aiohttp_server: Any) -> None:
    """Netgroot: a refused log-in fails naming auth.login; a token whose subscriber is gone names that."""
    login = await check(aiohttp_server, NetgrootSimulator(), "netgroot",
                        auth={"login": {"username": "sandbox", "password": "wrong"}})
    assert login.state == "failed" and "check auth.login.username and password" in login.said
    gone = await check(aiohttp_server, NetgrootSimulator(), "netgroot", auth={"token": NO_SUBSCRIBER_TOKEN})
    assert gone.state == "failed" and "does not exist in the CRM" in gone.said
    sim = NetgrootSimulator()
    ok = await check(aiohttp_server, sim, "netgroot", auth={"login": {"username": "sandbox",
                                                                      "password": "sandbox-password"}})
    assert ok.state == "ok"
    assert (sim.logins, sim.logouts) == (1, 1)  # the check logs out after itself


async def test_http_refused_client_and_refused_token(aiohttp_server: Any) -> None:
    """http: a refused OAuth2 client fails naming the client keys; an API refusing the credentials names auth."""
    sim = HttpSimulator()
    sim.knobs.oauth2 = True
    client = await check(aiohttp_server, sim, "http", doctor={"path": "/me"},
                         auth={"oauth2": {"token_url": TOKEN_PATH, "client_id": SANDBOX_CLIENT_ID,
                                          "client_secret": "wrong"}})
    assert client.state == "failed" and "check auth.oauth2.client_id, client_secret and scope" in client.said
    refused = await check(aiohttp_server, sim, "http", doctor={"path": "/me"}, auth={"bearer": "made-up"})
    assert refused.state == "failed"
    assert refused.fix is not None and refused.fix.startswith("check the destination's auth")


async def test_http_token_revoked_by_the_api_is_renewed_once(aiohttp_server: Any) -> None:
    """http: a token the API no longer honours is refused on the look-up (401), renewed once and the look-up
    made again, as a delivery would: OK."""
    sim = HttpSimulator()
    sim.knobs.oauth2 = True
    server = await aiohttp_server(sim.app())
    base = str(server.make_url("")).rstrip("/")
    config = msgspec.convert({"vendor": "http", "base_url": base, "doctor": {"path": "/me"},
                              "auth": {"oauth2": {"token_url": TOKEN_PATH, "client_id": SANDBOX_CLIENT_ID,
                                                  "client_secret": SANDBOX_CLIENT_SECRET}}}, vendor_options("http"))
    adapter: Adapter = adapter_class("http")("dest", config, base)
    assert isinstance(adapter.credentials, TokenCredentials)
    adapter.credentials.token = Token(value="revoked-by-the-api")
    async with aiohttp.ClientSession() as session:
        found = await examine(adapter, session, 5.0)
    assert found.state == "ok", found.said
    assert (sim.token_requests, sim.refused) == (1, 1)


async def test_kapture_checks_the_pull_operations_own_key(aiohttp_server: Any) -> None:
    """Kapture with `tokens: {pull: …}`: the look-up (a pull) is sent with the pull key, not the destination's
    token; a refused pull key is named `tokens.pull` in the finding and its fix."""
    keys = {"pull": {"pull-key"}}
    ok = await check(aiohttp_server, KaptureSimulator(tokens={"add-key"}, operation_tokens=keys), "kapture",
                     token="add-key", tokens={"pull": "pull-key"})
    assert ok.state == "ok", ok.said
    refused = await check(aiohttp_server, KaptureSimulator(tokens={"add-key"}, operation_tokens=keys), "kapture",
                          token="add-key", tokens={"pull": "old-pull-key"})
    assert refused.state == "failed" and "(tokens.pull) was refused" in refused.said
    assert refused.fix is not None and refused.fix.endswith("set the destination's tokens.pull")
    plain = await check(aiohttp_server, KaptureSimulator(tokens={"add-key"}, operation_tokens=keys), "kapture",
                        token="add-key")
    assert plain.state == "failed" and plain.fix is not None and plain.fix.endswith("set the destination's token")


async def test_http_quoting_its_key_back_shows_it_nowhere_in_the_finding(aiohttp_server: Any) -> None:
    """An API refusing the doctor's look-up by quoting the key it was sent: the finding, as printed, has the key
    redacted."""
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=401, text=f"unknown key {request.headers['X-Api-Key']}")

    app = web.Application()
    app.router.add_get("/me", refuse)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    config = msgspec.convert({"vendor": "http", "base_url": base, "doctor": {"path": "/me"},
                              "headers": {"X-Api-Key": "k3y-5e1f0a9b8c7d"}}, vendor_options("http"))
    adapter: Adapter = adapter_class("http")("dest", config, base)
    async with aiohttp.ClientSession() as session:
        (found,) = await examine_all([adapter], session, 5.0)
    shown = render(found)
    assert "k3y-5e1f0a9b8c7d" not in shown
    assert "the credentials were refused: unknown key [redacted]" in shown


async def test_http_with_a_secret_url_shows_its_host_only(aiohttp_server: Any) -> None:
    """An http destination whose base URL is the secret (`url_secret: true`): the finding's look-up line names the
    host and /[redacted], never the hook's path."""
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/hooks/catch/123456/abcdefgh/me", ok)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    config = msgspec.convert({"vendor": "http", "base_url": base + "/hooks/catch/123456/abcdefgh", "url_secret": True,
                              "doctor": {"path": "/me"}}, vendor_options("http"))
    adapter: Adapter = adapter_class("http")("dest", config, config.base_url)
    async with aiohttp.ClientSession() as session:
        (found,) = await examine_all([adapter], session, 5.0)
    assert found.state == "ok"
    assert found.request == f"GET {base}/[redacted]"
