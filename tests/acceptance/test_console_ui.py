"""The web console end to end in Debian's Chromium (driven by Playwright, no browser download): sign in,
find a dead delivery, open it, replay it and see it succeed; pause and resume a destination; run a body
through the playground. Each view's screenshot is saved: under docs/console/ with UPDATE_SCREENSHOTS=1 (how the
committed ones are made), else in the test's own folder."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge.simulators.faults import Faults
from bridge.simulators.kapture import KaptureSimulator
from tests.acceptance.console_app import console_app
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

CHROMIUM = "/usr/bin/chromium"
DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"

CONFIG, MAPPINGS = console_app("website")

if TYPE_CHECKING:
    from playwright.async_api import Page


@asynccontextmanager
async def chromium_page(tmp_path: Path) -> AsyncIterator[tuple[Page, list[str], Path]]:
    """A 1280 by 800 page in Chromium, the errors its scripts raise, and the folder its screenshots go to."""
    from playwright.async_api import async_playwright

    shots = DOCS_SHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page, errors, shots
        finally:
            await browser.close()


async def test_sign_in_replay_a_dead_delivery_pause_and_use_the_playground(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """In Chromium: sign in with the admin token, filter to the dead delivery, open it, replay it with
    confirmation and see it succeed; pause and resume the destination; run a body through the playground;
    every view is usable at 1280 by 800 and on a phone, and each is saved as a screenshot."""
    from playwright.async_api import expect

    assert os.access(CHROMIUM, os.X_OK), f"these tests drive Debian's Chromium: apt-get install chromium ({CHROMIUM})"

    client = await bridge_client(write_config(CONFIG, MAPPINGS))
    sim: KaptureSimulator = runtime(client).simulators["kapture"]
    sim.faults = Faults(fail_count=-1, fail_status=500)
    for title in ("Printer on fire", "Router down"):
        assert (await client.post("/hooks/website", json={"title": title})).status == 202

    async def dead() -> bool:
        rows = await runtime(client).store.list_deliveries(_dead())  # type: ignore[union-attr]
        return len(rows) == 2

    await eventually(dead)
    base = str(client.make_url("/admin/"))
    async with chromium_page(tmp_path) as (page, errors, shots):

        async def shot(name: str) -> None:
            await page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

        await page.goto(base)
        await page.get_by_label("Admin token").fill("wrong")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("alert")).to_contain_text("not known")
        await shot("sign-in")
        await page.get_by_label("Admin token").fill("admin-secret")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        await expect(page.locator(".card").filter(has_text="dead letters")).to_contain_text("2")
        await shot("overview")

        await page.get_by_role("link", name="Deliveries").click()
        await page.get_by_label("Status").select_option("dead")
        await page.get_by_label("Text").fill("")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("tbody tr")).to_have_count(2)
        await shot("deliveries")
        await page.locator("tbody tr").first.get_by_role("link").click()
        await expect(page.get_by_role("heading", name="Attempts")).to_be_visible()
        await expect(page.locator(".timeline li")).to_have_count(2)
        await shot("delivery-dead")

        sim.faults = Faults()
        await page.get_by_role("button", name="Replay", exact=True).click()
        dialog = page.get_by_role("dialog")
        await expect(dialog).to_contain_text("Send this delivery again?")
        await dialog.get_by_role("button", name="Replay").click()
        await expect(page.locator(".row .badge").first).to_have_text("succeeded", timeout=15_000)
        await expect(page.locator(".timeline li")).to_have_count(3)
        await shot("delivery-replayed")

        await page.get_by_role("link", name="Destinations").click()
        await page.get_by_role("button", name="Pause kapture").click()
        await page.get_by_role("dialog").get_by_role("button", name="Pause").click()
        await expect(page.get_by_role("button", name="Resume kapture")).to_be_visible()
        view = await runtime(client).dispatcher.lanes["kapture"].gate.view()  # type: ignore[union-attr]
        assert view.held_until_s is not None
        await shot("destinations-paused")
        await page.get_by_role("button", name="Resume kapture").click()
        await page.get_by_role("dialog").get_by_role("button", name="Resume").click()
        await expect(page.get_by_role("button", name="Pause kapture")).to_be_visible()

        await page.get_by_role("link", name="Mappings").click()
        await expect(page.get_by_role("cell", name="website", exact=True).first).to_be_visible()
        await shot("mappings")

        await page.get_by_role("link", name="Playground").click()
        await page.get_by_label("Raw provider body").fill('{"title": "Coffee machine leaks"}')
        await page.get_by_role("button", name="Run").click()
        result = page.locator("#pg-result")
        await expect(result).to_contain_text("nothing was stored or sent")
        await expect(result.locator("pre").first).to_contain_text("Coffee machine leaks")
        await expect(result.locator(".badge")).to_have_text("taken")
        await shot("playground")

        await page.get_by_role("link", name="Audit log").click()
        await expect(page.locator("tbody tr")).to_have_count(3)
        await expect(page.locator("tbody")).to_contain_text("deliveries.replay")
        await shot("audit")

        await page.set_viewport_size({"width": 390, "height": 844})
        await page.get_by_role("link", name="Deliveries").click()
        await expect(page.locator("tbody tr")).to_have_count(2)
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the deliveries page scrolls sideways on a phone: {width}px"
        await shot("deliveries-phone")
        assert errors == []
        assert "null" not in await page.locator("main").inner_text()
    assert len(sim.tickets) == 1  # only the replayed delivery; the playground sent nothing


HELD_CONFIG = CONFIG.replace('retry: {schedule: ["0s"]}', 'retry: {schedule: ["0s"]}\n    on_unknown: hold\n'
                                                          '    timeout_seconds: 0.5')


async def test_a_held_delivery_is_flagged_and_marked_succeeded_by_the_admin_only(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """In Chromium: a send that made its ticket and then timed out is held; its delivery shows "in doubt" in the
    list and on its page; a read-only token cannot mark it succeeded; the admin marks it succeeded with the
    ticket found, after a confirmation asking for it, and the page shows it succeeded, no longer in doubt."""
    from playwright.async_api import expect

    assert os.access(CHROMIUM, os.X_OK), f"these tests drive Debian's Chromium: apt-get install chromium ({CHROMIUM})"
    assert HELD_CONFIG != CONFIG
    client = await bridge_client(write_config(HELD_CONFIG, MAPPINGS))
    rt = runtime(client)
    sim: KaptureSimulator = rt.simulators["kapture"]
    sim.faults = Faults(hang_after_count=1, hang_seconds=5)  # the ticket is made, the answer never comes in time
    assert (await client.post("/hooks/website", json={"title": "Router down"})).status == 202
    store = rt.store
    assert store is not None

    async def held() -> bool:
        rows = await store.list_deliveries(_dead())
        return len(rows) == 1 and rows[0].in_doubt_since_ms is not None

    await eventually(held)
    [row] = await store.list_deliveries(_dead())
    [ticket] = sim.tickets
    base = str(client.make_url("/admin/"))
    async with chromium_page(tmp_path) as (page, errors, shots):

        async def sign_in(token: str) -> None:
            await page.get_by_label("Admin token").fill(token)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page.get_by_role("heading", name="Overview")).to_be_visible()

        await page.goto(base)
        await sign_in("grafana-secret")
        await page.get_by_role("link", name="Deliveries").click()
        await expect(page.locator("tbody tr")).to_have_count(1)
        await expect(page.locator("tbody tr")).to_contain_text("in doubt")
        await page.locator("tbody tr").get_by_role("link").click()
        await expect(page.locator("#in-doubt")).to_contain_text("the vendor may hold its ticket")
        await expect(page.get_by_role("button", name="Mark succeeded")).to_be_disabled()
        await expect(page.locator("#read-only")).to_be_visible()

        await page.get_by_role("button", name="Sign out").click()
        await sign_in("admin-secret")
        await page.goto(f"{base}#/delivery/{row.id}")
        await expect(page.locator("#in-doubt")).to_be_visible()
        await page.screenshot(path=str(shots / "delivery-held.png"), full_page=True)
        await page.get_by_role("button", name="Mark succeeded").click()
        dialog = page.get_by_role("dialog")
        await expect(dialog).to_contain_text(f"Record that delivery {row.id} reached kapture")
        await dialog.get_by_role("button", name="Mark succeeded").click()  # the ticket id is required
        await expect(dialog).to_be_visible()
        await dialog.get_by_label("Ticket id at the vendor").fill(ticket["ticketId"])
        await dialog.get_by_label("Note (optional, kept in the audit log)").fill("found in the Kapture console")
        await dialog.get_by_role("button", name="Mark succeeded").click()
        await expect(page.locator(".row .badge").first).to_have_text("succeeded")
        await expect(page.locator("main")).to_contain_text(f"ticket {ticket['ticketId']}")
        await expect(page.locator("#in-doubt")).to_have_count(0)
        await expect(page.get_by_role("button", name="Mark succeeded")).to_have_count(0)
        await page.screenshot(path=str(shots / "delivery-marked.png"), full_page=True)
        assert errors == []
    detail = await store.get_delivery(row.id)
    assert (detail.delivery.status, detail.delivery.ticket_id, detail.delivery.in_doubt_since_ms) == (
        "succeeded", ticket["ticketId"], None)
    [entry] = [e for e in (await store.list_audit(limit=10)) if e.action == "delivery.mark_succeeded"]
    assert (entry.actor, entry.target, entry.detail["note"]) == ("admin", row.id, "found in the Kapture console")
    assert len(sim.tickets) == 1  # marked, never sent again


def _dead() -> Any:
    from bridge.store.base import DeliveryFilter

    return DeliveryFilter(status="dead")
