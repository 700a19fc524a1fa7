"""`GET /admin/mappings`: off while no token is set, refused without a known one, and with the admin token or a
read token, the set in force and how hot reload is going."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.conftest import AppClient, ConfigFactory, runtime

CONFIG = """
store: {{url: "sqlite:///var/bridge.db"}}
admin: {{token: "{token}"}}
sources:
  partner: {{kind: json}}
destinations:
  kapture: {{vendor: kapture, sandbox: true}}
"""
MAPPINGS = {
    "partner": """
        source: partner
        destination: kapture
        action: create_ticket
        fields:
          title: "{{ payload.title }}"
        tests:
          - input: {payload: {title: x}}
            expect: {title: x}
    """,
}


async def test_the_admin_api_is_off_while_the_token_is_empty(write_config: ConfigFactory,
                                                              bridge_client: AppClient) -> None:
    """With no admin.token, the admin API answers 404 and says how to turn it on, whatever is sent."""
    client = await bridge_client(write_config(CONFIG.format(token=""), MAPPINGS), workers=False)
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
        resp = await client.get("/admin/mappings", headers=headers)
        assert resp.status == 404
        said = (await resp.json())["error"]
        assert said == "the admin API is off: set admin.token (or admin.read_tokens) in the config"


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic c2VjcmV0", "Bearer", "secret", "Bearer secret2"])
async def test_the_admin_api_refuses_requests_without_the_token(write_config: ConfigFactory,
                                                                 bridge_client: AppClient, header: str | None) -> None:
    """Without `Authorization: Bearer <admin.token>`, the answer is 401 with a bearer challenge and no data."""
    client = await bridge_client(write_config(CONFIG.format(token="secret"), MAPPINGS), workers=False)
    resp = await client.get("/admin/mappings", headers={"Authorization": header} if header else {})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="ticketbridge admin"'
    assert "mappings" not in await resp.json()


async def test_the_admin_api_shows_the_set_in_force(write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """With the token: the mapping names and versions, the set's version hash and load time, and reload status."""
    client = await bridge_client(write_config(CONFIG.format(token="secret"), MAPPINGS), workers=False)
    rt = runtime(client)
    resp = await client.get("/admin/mappings", headers={"Authorization": "Bearer secret"})
    assert resp.status == 200
    body = await resp.json()
    assert body["version"] == rt.mappings.version
    assert datetime.fromisoformat(body["loaded_at"]) == rt.mappings.loaded_at
    assert body["folder"] == str(rt.config.mappings_dir)
    [partner] = body["mappings"]
    assert partner == {"name": "partner", "file": str(rt.config.mappings_dir / "partner.yaml"),
                       "version": rt.mappings.mappings["partner"].version, "sources": ["partner"],
                       "destination": "kapture", "action": "create_ticket", "tests": 1}
    assert body["reload"] == {"watching": True, "reloads": 0, "failures": 0, "last_attempt_at": None,
                              "last_result": None, "last_error": None, "last_error_at": None}


@pytest.mark.parametrize("token", ["secret", ""])
async def test_a_read_token_sees_the_set_in_force(write_config: ConfigFactory, bridge_client: AppClient,
                                                  token: str) -> None:
    """A read token (admin.read_tokens) reads the status as the admin token does, also when it is the only token
    configured: it changes nothing."""
    config = CONFIG.format(token=token).replace("admin: {token: ", "admin: {read_tokens: {grafana: gr-token}, token: ")
    client = await bridge_client(write_config(config, MAPPINGS), workers=False)
    resp = await client.get("/admin/mappings", headers={"Authorization": "Bearer gr-token"})
    assert resp.status == 200
    assert (await resp.json())["version"] == runtime(client).mappings.version
    assert (await client.get("/admin/mappings", headers={"Authorization": "Bearer gr-tokenx"})).status == 401


async def test_folders_and_files_taken_from_variables_are_named_by_them(write_config: ConfigFactory,
                                                                        bridge_client: AppClient,
                                                                        tmp_path: Path) -> None:
    """With `mappings: ${MAPS}` and the store's file from `${BRIDGE_DB}`, the answers (`/admin/mappings`,
    `/admin/api/mappings`) name the folder and each mapping's file by the variable, and the `store.opened` line the
    store's file: never their paths, which the variables' values are."""
    secret = tmp_path / "hunter2-secret"
    config = CONFIG.format(token="secret").replace(
        'store: {url: "sqlite:///var/bridge.db"}', 'store: {url: "sqlite:///${BRIDGE_DB}"}\nmappings: ${MAPS}')
    loaded = write_config(config, MAPPINGS, {"MAPS": str(tmp_path / "mappings"), "BRIDGE_DB": str(secret / "b.db")})
    with capture_logs() as logs:
        client = await bridge_client(loaded, workers=False)
    [opened] = [e for e in logs if e["event"] == "store.opened"]
    assert opened["path"] == "the file named by ${BRIDGE_DB}"
    for path in ("/admin/mappings", "/admin/api/mappings"):
        resp = await client.get(path, headers={"Authorization": "Bearer secret"})
        assert resp.status == 200
        body = await resp.json()
        assert body["folder"] == "the folder named by ${MAPS}"
        assert [m["file"] for m in body["mappings"]] == ["partner.yaml in the folder named by ${MAPS}"]
        assert str(tmp_path / "mappings") not in await resp.text()
