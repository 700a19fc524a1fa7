"""The admin API against its own OpenAPI document: schemathesis generates requests for every route from
/admin/openapi.json and sends them to the running app with the admin token; no answer is a 5xx and every
answer conforms to the document."""

from __future__ import annotations

import asyncio
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings

from bridge.app import build_app
from bridge.config import load_config
from bridge.registries import REGISTRIES

ADMIN = {"Authorization": "Bearer admin-secret"}
CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
admin: {token: admin-secret, read_tokens: {grafana: grafana-secret}}
sources:
  partner: {kind: json}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""
MAPPING = """
source: partner
destination: kapture
action: create_ticket
fields:
  title: "{{ payload.title }}"
"""
EXAMPLES = 100  # per route with inputs; routes without any have few distinct cases, and Hypothesis stops early


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The whole app on a loopback port, its event loop run in a thread between a start and a stop made in
    this one (schemathesis calls block)."""
    root: Path = tmp_path_factory.mktemp("openapi")
    (root / "bridge.yaml").write_text(CONFIG)
    (root / "mappings").mkdir()
    (root / "mappings" / "partner.yaml").write_text(textwrap.dedent(MAPPING))
    config = load_config(root / "bridge.yaml", {}, registries=REGISTRIES)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(build_app(config), access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    host, port = runner.addresses[0][:2]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    url = f"http://{host}:{port}"
    for i in range(3):  # something to read: deliveries and their event
        requests.post(f"{url}/hooks/partner", json={"title": f"t{i}"}, timeout=10).raise_for_status()
    try:
        yield url
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(runner.cleanup())  # here: the reloader's signal handler is the main thread's
        loop.close()


def test_generated_requests_never_fail_the_server_and_every_answer_conforms(server: str) -> None:
    """At least 1,000 generated requests over every admin route: no 5xx, every answer as the spec says."""
    doc = requests.get(f"{server}/admin/openapi.json", headers=ADMIN, timeout=10).json()
    schema = schemathesis.openapi.from_dict(doc)
    total = 0
    routes = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        routes += 1
        calls = 0

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(base_url=server, headers=ADMIN)

        check()
        total += calls
    assert routes == sum(len(methods) for methods in doc["paths"].values())
    print(f"schemathesis: {total} cases over {routes} routes")
    assert total >= 1000, total
