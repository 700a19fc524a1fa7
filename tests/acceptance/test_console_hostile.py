"""The web console in Chromium against hostile sites: no page on another origin can frame the console."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.acceptance.test_console_ui import CHROMIUM, chromium_page
from tests.conftest import AppClient, ConfigFactory

XSS = "<img src=x onerror=\"window.__pwned='img'\"><script>window.__pwned='script'</script>" \
      "\"><svg onload=\"window.__pwned='svg'\">"
ATTR = "javascript:window.__pwned='href'"

CONFIG = """
store: {{url: "sqlite:///var/bridge.db"}}
admin: {{token: admin-secret, read_tokens: {{grafana: grafana-secret}}}}
sources:
  partner: {{kind: json}}
destinations:
  crm:
    vendor: http
    base_url: "{vendor}"
    path: /tickets
    error_path: error
    retry: {{schedule: ["0s"]}}
"""
MAPPINGS = {"partner": """
    source: partner
    destination: crm
    action: create_ticket
    fields:
      title: "{{ payload.subject }}"
      name: "{{ payload.name }}"
"""}


async def hostile_vendor(aiohttp_server: Any) -> str:
    """A vendor that refuses every ticket with script in its error body and in a header."""

    async def refuse(request: web.Request) -> web.Response:
        return web.json_response({"error": f"vendor says {XSS}"}, status=500, headers={"X-Note": XSS})

    app = web.Application()
    app.router.add_post("/tickets", refuse)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def test_no_page_on_another_origin_can_frame_the_console(
        write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, tmp_path: Path) -> None:
    """A page served from another origin that frames the console, by its page or by the same file under its
    static folder, gets nothing: Chromium refuses to show either (clickjacking needs a frame)."""
    assert os.access(CHROMIUM, os.X_OK), f"these tests drive Debian's Chromium: apt-get install chromium ({CHROMIUM})"
    vendor = await hostile_vendor(aiohttp_server)
    client = await bridge_client(write_config(CONFIG.format(vendor=vendor), MAPPINGS), workers=False)
    targets = [str(client.make_url("/admin/")), str(client.make_url("/admin/static/index.html"))]

    async def framing(request: web.Request) -> web.Response:
        frames = "".join(f'<iframe src="{url}" width="600" height="300"></iframe>' for url in targets)
        return web.Response(text=f"<!doctype html><title>elsewhere</title>{frames}", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", framing)
    attacker = await aiohttp_server(app)
    async with chromium_page(tmp_path) as (page, _errors, _shots):
        await page.goto(str(attacker.make_url("/")), wait_until="load")
        children = page.main_frame.child_frames
        assert len(children) == len(targets)
        for frame in children:
            assert await frame.locator("#main").count() == 0, f"{frame.url} was shown in another site's frame"

