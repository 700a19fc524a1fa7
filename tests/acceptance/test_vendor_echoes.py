"""A vendor that quotes the request's credentials back (in its error text, its answer, a header) through the whole
app: the destination's secrets are redacted by value from the attempt the admin API shows, the CLI prints and the
log lines say, whatever name the vendor gave them or none."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import structlog
from aiohttp import web

from bridge.cli import main
from bridge.config import Config
from bridge.delivery.redaction import MIN_SECRET_CHARS
from bridge.delivery.sender import ERROR_CHARS
from bridge.store.base import DeliveryFilter
from bridge.vendors.http_auth import basic
from bridge.vendors.kapture import CREATE_PATH
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

READ = {"Authorization": "Bearer grafana-secret"}
PASSWORD = "pa55-w0rd/4-psa"
API_KEY = "k3y-5e1f0a9b8c7d"
TOKEN = "kpt_9f8e7d6c5b4a3f2e1d0c"
MAPPING = {"m": """
    source: events
    destination: vendor
    action: create_ticket
    fields:
      title: {from: payload.title, required: true}
"""}


def config(destination: str) -> str:
    return f"""
    server: {{shutdown_grace_seconds: 1}}
    store: {{url: "sqlite:///var/bridge.db"}}
    admin: {{token: admin-secret, read_tokens: {{grafana: grafana-secret}}}}
    sources:
      events: {{kind: json}}
    destinations:
      vendor: {destination}
    """


async def dead_delivery(client: Any) -> str:
    """Post one event; the id of its delivery once it is dead."""
    assert (await client.post("/hooks/events", json={"title": "Router down"})).status == 202
    store = runtime(client).store

    async def dead() -> bool:
        rows = await store.list_deliveries(DeliveryFilter())
        return len(rows) == 1 and rows[0].status == "dead"

    await eventually(dead)
    (row,) = await store.list_deliveries(DeliveryFilter())
    return row.id


async def shown(client: Any, cfg: Config, delivery_id: str, capsys: pytest.CaptureFixture[str]) -> str:
    """All that shows the delivery's attempts: the admin API's answer to a read token, and `deliveries show`
    (plain and JSON) run on the store."""
    resp = await client.get(f"/admin/api/deliveries/{delivery_id}", headers=READ)
    assert resp.status == 200
    api = await resp.text()
    capsys.readouterr()
    for extra in ([], ["--json"]):
        code = await asyncio.to_thread(main, ["deliveries", "show", delivery_id, "-c", str(cfg.file), *extra])
        assert code == 0
    return api + capsys.readouterr().out


def assert_hidden(texts: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in texts, secret
    assert "[redacted]" in texts


async def test_an_http_vendor_echoing_the_basic_credentials_and_a_key_shows_none_of_them(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An API that refuses the request quoting its Authorization header, its API key (URL-encoded, in a query
    string it echoes), the password Basic encodes and the key again in a response header: the attempt's error,
    excerpt and headers show each as [redacted], in the admin API, the CLI and the log lines."""
    authorization = basic("acme-integration", PASSWORD)

    async def refuse(request: web.Request) -> web.Response:
        said = {"message": f"refused {request.headers['Authorization']} for key {request.headers['X-Api-Key']}",
                "retry_url": f"/tickets?accessKey={API_KEY}&pw={PASSWORD.replace('/', '%2F')}",
                "php": json.dumps(PASSWORD).replace("/", "\\/")}
        return web.json_response(said, status=400, headers={"X-Echo": f"key={API_KEY}"})

    app = web.Application()
    app.router.add_post("/tickets", refuse)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    cfg = write_config(config(f"""{{vendor: http, base_url: '{base}', path: /tickets,
            headers: {{X-Api-Key: "${{API_KEY}}"}},
            auth: {{basic: {{username: acme-integration, password: "${{PSA_PASSWORD}}"}}}}}}"""),
                       MAPPING, environ={"API_KEY": API_KEY, "PSA_PASSWORD": PASSWORD})
    monkeypatch.setenv("API_KEY", API_KEY)  # for the CLI, which reads the config again
    monkeypatch.setenv("PSA_PASSWORD", PASSWORD)
    client = await bridge_client(cfg)
    with structlog.testing.capture_logs() as logs:
        delivery_id = await dead_delivery(client)
    texts = await shown(client, cfg, delivery_id, capsys)
    logged = json.dumps(logs, default=str)
    secrets = (API_KEY, PASSWORD, PASSWORD.replace("/", "%2F"), authorization.split()[1])
    assert_hidden(texts, *secrets)
    assert_hidden(logged, *secrets)
    assert "refused Basic [redacted] for key [redacted]" in texts and "accessKey=[redacted]" in texts
    assert "X-Echo" in texts and "key=[redacted]" in texts
    assert any(e["event"] == "delivery.dead" and "[redacted]" in e["error"] for e in logs)


async def test_a_vendor_echoing_the_key_as_header_names_shows_it_nowhere(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An API refusing the request with the API key as the name of two response headers (`X-<key>: 1`,
    `<key>: 2`): the attempt the admin API and the CLI show keeps both under their own placeholder, with their
    values, and the key nowhere."""
    key = API_KEY

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"message": "no"}, status=400, headers={f"X-{key}": "1", key: "2"})

    app = web.Application()
    app.router.add_post("/tickets", refuse)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    cfg = write_config(config(f"""{{vendor: http, base_url: '{base}', path: /tickets,
            headers: {{X-Api-Key: "${{API_KEY}}"}}}}"""), MAPPING, environ={"API_KEY": key})
    monkeypatch.setenv("API_KEY", key)  # for the CLI, which reads the config again
    client = await bridge_client(cfg)
    delivery_id = await dead_delivery(client)
    texts = await shown(client, cfg, delivery_id, capsys)
    assert_hidden(texts, key)
    resp = await client.get(f"/admin/api/deliveries/{delivery_id}", headers=READ)
    (attempt,) = (await resp.json())["attempts"]
    answered = attempt["exchange"]["response_headers"]
    assert {answered["[redacted-1]"], answered["[redacted-2]"]} == {"1", "2"}
    assert attempt["exchange"]["request"]["headers"]["X-Api-Key"] == "[redacted]"


async def test_a_kapture_error_repeating_the_token_shows_it_nowhere(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    """Kapture refusing its Auth Key by quoting it ("Invalid Auth Key kpt_…"): the auth failure is recorded and
    logged with the key redacted, and so is the answer's excerpt."""

    async def refuse(request: web.Request) -> web.Response:
        key = request.headers["Authorization"].removeprefix("Basic ")
        return web.json_response([{"status": "failed", "message": f"Invalid Auth Key {key}"}])

    app = web.Application()
    app.router.add_post(CREATE_PATH, refuse)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    cfg = write_config(config(f"{{vendor: kapture, base_url: '{base}', token: '{TOKEN}'}}"), MAPPING)
    client = await bridge_client(cfg)
    with structlog.testing.capture_logs() as logs:
        delivery_id = await dead_delivery(client)
    texts = await shown(client, cfg, delivery_id, capsys)
    assert_hidden(texts, TOKEN)
    assert_hidden(json.dumps(logs, default=str), TOKEN)
    assert "Invalid Auth Key [redacted]" in texts
    assert any(e["event"] == "delivery.auth_failed" and "Invalid Auth Key [redacted]" in e["error"] for e in logs)


async def test_an_obtained_token_quoted_back_is_redacted_too(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    """An OAuth2 access token is no config value: the API quoting the one it refused, and the one obtained again
    after the refusal, shows neither; nor the client secret the token endpoint was sent."""
    tokens = iter(["at-1111aaaa2222bbbb", "at-3333cccc4444dddd"])

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": next(tokens), "expires_in": 3600})

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": f"token {request.headers['Authorization']} lacks scope"}, status=403)

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    app.router.add_post("/tickets", refuse)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    cfg = write_config(config(f"""{{vendor: http, base_url: '{base}', path: /tickets, error_path: error,
            auth: {{oauth2: {{token_url: /oauth/token, client_id: acme, client_secret: cs-77aa88bb99cc}}}}}}"""),
                       MAPPING)
    client = await bridge_client(cfg)
    with structlog.testing.capture_logs() as logs:
        delivery_id = await dead_delivery(client)
    texts = await shown(client, cfg, delivery_id, capsys)
    for where in (texts, json.dumps(logs, default=str)):
        assert_hidden(where, "at-1111aaaa2222bbbb", "at-3333cccc4444dddd", "cs-77aa88bb99cc")
    assert "token Bearer [redacted] lacks scope" in texts


async def test_a_secret_too_short_to_redact_by_value_is_named_at_start(
    write_config: ConfigFactory, bridge_client: AppClient,
) -> None:
    """A configured secret under 8 characters cannot be redacted by its value: the start's log says which key of
    which destination, not the value."""
    cfg = write_config(config("{vendor: kapture, base_url: 'https://k.example.com', token: k3y}"), MAPPING)
    with structlog.testing.capture_logs() as logs:
        await bridge_client(cfg)
    (warning,) = [e for e in logs if e["event"] == "destination.secret_too_short"]
    assert warning["destination"] == "vendor" and warning["keys"] == ["token"]
    assert "k3y" not in json.dumps(logs, default=str)


async def test_a_webhook_url_marked_secret_is_shown_without_its_path(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    """An incoming-webhook URL (Slack's /services/T…/B…/…) with `url_secret: true`: the attempt shows the URL as
    its host and /[redacted], and the path the hook quotes back in its refusal is redacted there and in the logs."""
    hook = "/services/T0001/B0002/Xa1b2c3d4e5f6g7h8i9j0"

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=400, text=f"no_service: {request.path} is not active")

    app = web.Application()
    app.router.add_post(hook + "/", refuse)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    cfg = write_config(config(f"{{vendor: http, base_url: '{base}{hook}', url_secret: true}}"), MAPPING)
    client = await bridge_client(cfg)
    with structlog.testing.capture_logs() as logs:
        delivery_id = await dead_delivery(client)
    texts = await shown(client, cfg, delivery_id, capsys)
    assert_hidden(texts, hook, "Xa1b2c3d4e5f6g7h8i9j0")
    assert_hidden(json.dumps(logs, default=str), hook, "Xa1b2c3d4e5f6g7h8i9j0")
    assert f'"url":"{base}/[redacted]"' in texts
    assert "no_service: [redacted]/ is not active" in texts


HOOK_TOKEN = "Zq7Wv3Lp9Rt2Ks8M"
HOOK_PATH = f"/services/T0001ABCD/B0002EFGH/{HOOK_TOKEN}"


@pytest.mark.parametrize("where", ["destination", "mapping"])
async def test_a_webhook_secret_written_in_the_path_is_shown_nowhere(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    """A webhook's secret written in the `path` (the destination's, or a mapping's `options.path`) rather than in
    `base_url`, with `url_secret: true`: the hook's refusal quotes the path and the token alone, and its error is
    long enough to be cut with the token across the cut (five of its characters before it). The attempt in the
    admin API and the CLI, and the log lines, show neither the path, nor the token, nor any start of it (a
    mapping's options are shown as the mapping file has them: no place for a secret)."""
    prefix = "http: HTTP 400: "  # the error is this, then what the hook said

    async def refuse(request: web.Request) -> web.Response:
        said = f"no_service: {request.path} is not active; token {HOOK_TOKEN} unknown; "
        filler = "x" * (ERROR_CHARS - 1 - 5 - len(prefix) - len(said))
        return web.json_response({"error": said + filler + HOOK_TOKEN + " (end)"}, status=400)

    app = web.Application()
    app.router.add_post(HOOK_PATH, refuse)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    path = f"path: '{HOOK_PATH}', " if where == "destination" else ""
    mapping = MAPPING["m"] + (f"    options: {{path: '{HOOK_PATH}'}}\n" if where == "mapping" else "")
    cfg = write_config(config(f"{{vendor: http, base_url: '{base}', {path}url_secret: true, error_path: error}}"),
                       {"m": mapping})
    client = await bridge_client(cfg)
    with structlog.testing.capture_logs() as logs:
        delivery_id = await dead_delivery(client)
    texts = await shown(client, cfg, delivery_id, capsys)
    if where == "mapping":  # the delivery shows its mapping's options as they are, like the mapping file itself
        options = f'"options":{{"path":"{HOOK_PATH}"}}'
        assert options in texts
        texts = texts.replace(options, "")
    logged = json.dumps(logs, default=str)
    for where_shown in (texts, logged):
        assert_hidden(where_shown, HOOK_PATH, HOOK_TOKEN, HOOK_TOKEN[:5], "T0001ABCD", "B0002EFGH")
    assert "no_service: [redacted] is not active; token [redacted] unknown" in texts
    assert f'"url":"{base}/[redacted]"' in texts
    (dead,) = [e for e in logs if e["event"] == "delivery.dead"]
    assert dead["error"].startswith(prefix + "no_service: [redacted]") and dead["error"].endswith("[redacted] (end)")


async def test_a_token_endpoint_echoing_the_secret_shows_no_part_of_it(
    write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    """A token endpoint refusing the client with a JSON answer that echoes the form it was sent: the error names
    the answer's keys alone, no value (a token may be under any name), so no part of the client secret shows, in
    the attempt or in the log lines."""
    secret = "cs-77aa88bb99cc"

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        # {"echo":" and 180 characters, then the cut: 10 characters into the secret
        page = "x" * 166 + f"client_secret={form['client_secret']}&client_id=acme"
        return web.json_response({"echo": page}, status=401)

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    base = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    cfg = write_config(config(f"""{{vendor: http, base_url: '{base}', path: /tickets,
            auth: {{oauth2: {{token_url: /oauth/token, client_id: acme, client_secret: {secret},
                              client_auth: body}}}}}}"""), MAPPING)
    client = await bridge_client(cfg)
    with structlog.testing.capture_logs() as logs:
        delivery_id = await dead_delivery(client)
    texts = await shown(client, cfg, delivery_id, capsys)
    for where in (texts, json.dumps(logs, default=str)):
        assert secret[:MIN_SECRET_CHARS] not in where
    assert "(HTTP 401: a JSON object with the keys echo, values not quoted): check auth.oauth2.client_id" in texts
    assert "client_secret=" not in texts
