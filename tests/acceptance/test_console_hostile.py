"""The web console in Chromium against hostile data and hostile sites: HTML and script in every field it shows
(subjects, names, attachment names, a vendor's error body and headers, audit notes, ticket ids, an id in the
URL, the playground) is shown as text and never runs; no page on another origin can frame the console."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.acceptance.console_app import ADMIN
from tests.acceptance.test_console_ui import CHROMIUM, chromium_page
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

XSS = "<img src=x onerror=\"window.__pwned='img'\"><script>window.__pwned='script'</script>" \
      "\"><svg onload=\"window.__pwned='svg'\">"
ATTR = "javascript:window.__pwned='href'"

WATCH = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(e.violatedDirective));
"""

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


async def test_script_in_every_field_the_console_shows_is_text_and_never_runs(
        write_config: ConfigFactory, bridge_client: AppClient, aiohttp_server: Any, tmp_path: Path) -> None:
    """Each view of a dead delivery whose every field holds HTML and script (and of its audit entries, its
    event, the playground and a hostile id in the URL) shows the markup as text: no element is made of it, no
    script runs, and the page's policy never had to block one."""
    from playwright.async_api import Page, expect

    assert os.access(CHROMIUM, os.X_OK), f"these tests drive Debian's Chromium: apt-get install chromium ({CHROMIUM})"
    vendor = await hostile_vendor(aiohttp_server)
    client = await bridge_client(write_config(CONFIG.format(vendor=vendor), MAPPINGS))
    payload = {"subject": XSS, "name": ATTR, "attachments": [{"name": f"{XSS}.pdf", "url": ATTR}]}
    assert (await client.post("/hooks/partner", json=payload, headers={"User-Agent": XSS})).status == 202
    store = runtime(client).store
    assert store is not None

    async def dead() -> bool:
        return [r.status for r in await store.list_deliveries(_all())] == ["dead"]

    await eventually(dead)
    [row] = await store.list_deliveries(_all())
    resp = await client.post(f"/admin/api/deliveries/{row.id}/mark-succeeded", headers=ADMIN,
                             json={"ticket_id": XSS[:200], "ticket_key": ATTR, "note": XSS})
    assert resp.status == 200, await resp.text()
    resp = await client.post("/admin/api/destinations/crm/pause", headers=ADMIN, json={"reason": XSS})
    assert resp.status == 200, await resp.text()
    base = str(client.make_url("/admin/"))

    async with chromium_page(tmp_path) as (page, errors, _shots):
        await page.add_init_script(WATCH)

        async def harmless(view: str, shown: str = "img src=x") -> None:
            main = page.locator("main")
            await expect(main).to_contain_text(shown)
            assert await main.locator("img, svg, script, iframe, object, embed").count() == 0, view
            assert await page.evaluate("window.__pwned") is None, view
            assert await page.evaluate("window.__violations") == [], view
            hrefs = await main.locator("a").evaluate_all("links => links.map((a) => a.getAttribute('href'))")
            assert not [h for h in hrefs if not h.startswith("#/")], (view, hrefs)

        async def open_view(p: Page, hash_: str) -> None:
            await p.goto(f"{base}{hash_}")
            await p.reload()  # the hash route again, now signed in, with the init script in place

        await page.goto(base)
        await page.get_by_label("Admin token").fill("admin-secret")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Overview")).to_be_visible()

        await open_view(page, f"#/deliveries?q={row.id}")
        await expect(page.locator("tbody tr")).to_have_count(1)
        await page.get_by_label("Text").fill(XSS[:200])
        await harmless("deliveries", shown=row.id)

        await open_view(page, f"#/delivery/{row.id}")
        await expect(page.locator(".timeline li")).to_have_count(3)  # two refused, then marked succeeded
        for details in await page.locator("details").all():
            await details.locator("summary").click()
        await harmless("delivery")
        await expect(page.locator("main")).to_contain_text("vendor says <img")
        await expect(page.locator("main")).to_contain_text(ATTR)

        await open_view(page, f"#/event/{row.event_id}")
        await harmless("event")

        await open_view(page, "#/audit")
        await expect(page.locator("tbody tr")).to_have_count(2)
        await harmless("audit")

        await open_view(page, "#/destinations")
        await harmless("destinations", shown="crm")

        await open_view(page, f"#/delivery/{XSS}")
        await harmless("a hostile id in the URL")

        await open_view(page, "#/playground")
        await page.get_by_label("Raw provider body").fill(
            '{"subject": "<img src=x onerror=\\"window.__pwned=1\\">", "name": "x"}')
        await page.get_by_role("button", name="Run").click()
        await expect(page.locator("#pg-result")).to_contain_text("nothing was stored or sent")
        await harmless("playground")
        assert errors == []


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


def _all() -> Any:
    from bridge.store.base import DeliveryFilter

    return DeliveryFilter()
