"""The web console end to end in Debian's Chromium (driven by Playwright, no browser download): sign in,
find a dead delivery, open it, replay it and see it succeed; pause and resume a destination; run a body
through the playground. Each view's screenshot is saved: under docs/console/ with UPDATE_SCREENSHOTS=1 (how the
committed ones are made), else in the test's own folder."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from bridge.simulators.faults import Faults
from bridge.simulators.kapture import KaptureSimulator
from bridge.store.base import DeliveryFilter
from tests.acceptance.console_app import ADMIN, NO_ID_CONFIG, console_app, threaded_mapping
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.fixtures.threads import commented_thread

CHROMIUM = "/usr/bin/chromium"
DASH = "\N{EN DASH}"  # between the first and last numbers of a page the console lists
DOCS_SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"

CONFIG, MAPPINGS = console_app("website")

if TYPE_CHECKING:
    from playwright.async_api import Locator, Page


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
        await sign_in(page, "wrong")
        await expect(page.get_by_role("alert")).to_contain_text("not known")
        await shot("sign-in")
        await sign_in_to_overview(page, "admin-secret")
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
        await page.goto(base)
        await sign_in_to_overview(page, "grafana-secret")
        await page.get_by_role("link", name="Deliveries").click()
        await expect(page.locator("tbody tr")).to_have_count(1)
        await expect(page.locator("tbody tr")).to_contain_text("in doubt")
        await page.locator("tbody tr").get_by_role("link").click()
        await expect(page.locator("#in-doubt")).to_contain_text("the vendor may hold its ticket")
        await expect(page.get_by_role("button", name="Mark succeeded")).to_be_disabled()
        await expect(page.locator("#read-only")).to_be_visible()

        await page.get_by_role("button", name="Sign out").click()
        await sign_in_to_overview(page, "admin-secret")
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
        await expect(page.locator("#status")).to_have_text(f"Marked succeeded with ticket {ticket['ticketId']}.")
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


async def test_a_create_whose_answer_named_no_ticket_is_given_one_and_its_thread_follows_up(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """In Chromium: a conversation's create whose answer named no ticket shows "No ticket id" and a Set ticket
    button (disabled for a read-only token); the admin sets the ticket found at the vendor, after a dialog asking
    for it, and the page shows the ticket and no longer the warning; the thread's next message follows up on it."""
    from playwright.async_api import expect

    assert os.access(CHROMIUM, os.X_OK), f"these tests drive Debian's Chromium: apt-get install chromium ({CHROMIUM})"
    client = await bridge_client(write_config(NO_ID_CONFIG, {"thread": commented_thread("events")}))
    store = runtime(client).store
    assert store is not None
    assert (await client.post("/hooks/events", json={"case": "c-1", "text": "Router down"})).status == 202

    async def answered() -> bool:
        rows = await store.list_deliveries(DeliveryFilter())
        return len(rows) == 1 and rows[0].ticket_missing

    await eventually(answered)
    [row] = await store.list_deliveries(DeliveryFilter())
    base = str(client.make_url("/admin/"))
    async with chromium_page(tmp_path) as (page, errors, shots):
        await page.goto(base)
        await sign_in_to_overview(page, "grafana-secret")
        await page.goto(f"{base}#/delivery/{row.id}")
        await expect(page.locator("#ticket-missing")).to_contain_text("named no ticket")
        await expect(page.get_by_role("button", name="Set ticket")).to_be_disabled()
        await expect(page.get_by_role("button", name="Mark succeeded")).to_have_count(0)
        await page.get_by_role("button", name="Sign out").click()
        await sign_in_to_overview(page, "admin-secret")
        await page.goto(f"{base}#/delivery/{row.id}")
        await page.get_by_role("button", name="Set ticket").click()
        dialog = page.get_by_role("dialog")
        await expect(dialog).to_contain_text(f"Which ticket did delivery {row.id} make at api?")
        await dialog.get_by_label("Ticket id at the vendor").fill("T-5")
        await dialog.get_by_label("Note (optional, kept in the audit log)").fill("found in the vendor's inbox")
        await dialog.get_by_role("button", name="Set ticket").click()
        await expect(page.locator("#status")).to_have_text("Ticket T-5 set.")
        await expect(page.locator("main")).to_contain_text("ticket T-5")
        await expect(page.locator("#ticket-missing")).to_have_count(0)
        await expect(page.get_by_role("button", name="Set ticket")).to_have_count(0)
        await page.screenshot(path=str(shots / "delivery-ticket-set.png"), full_page=True)
        assert errors == []
    [entry] = [e for e in await store.list_audit(limit=10) if e.action == "delivery.set_ticket"]
    assert (entry.actor, entry.target, entry.detail["note"]) == ("admin", row.id, "found in the vendor's inbox")
    assert (await client.post("/hooks/events", json={"case": "c-1", "text": "Still down"})).status == 202

    async def followed_up() -> bool:
        rows = await store.list_deliveries(DeliveryFilter())
        return len(rows) == 2 and rows[0].status == "succeeded"

    await eventually(followed_up)
    later = await store.get_delivery((await store.list_deliveries(DeliveryFilter()))[0].id)
    assert later.delivery.role == "follow_up"
    assert (later.attempts[-1].exchange or {})["request"]["url"].endswith("/tickets/T-5/comments")


def _dead() -> Any:
    from bridge.store.base import DeliveryFilter

    return DeliveryFilter(status="dead")


CHAT_CONFIG = CONFIG.replace("  website: {kind: json}\n", "  website: {kind: json}\n  chat: {kind: json}\n")
CHAT_MAPPINGS = {**MAPPINGS, "chat": threaded_mapping("chat")}
THREAD = "C0123/1700000000.000100"  # a Slack channel and thread


@dataclass
class PausedThread:
    """A chat thread (THREAD) whose messages wait, unsent: its destination is paused."""

    client: Any
    id: str = f"chat|chat:{THREAD}"

    async def say(self, text: str) -> None:
        resp = await self.client.post("/hooks/chat", json={"conversation_id": THREAD, "text": text})
        assert resp.status == 202, await resp.text()

    async def in_order(self) -> list[str]:
        """The ids of the thread's deliveries, in their order in the conversation, as the store lists them."""
        store = runtime(self.client).store
        assert store is not None
        [thread] = await store.get_conversations(self.id)
        return [d.id for d in thread.deliveries]

    def page(self, limit: int) -> str:
        """The address of the console's list of the thread, `limit` a page."""
        query = urlencode({"conversation": self.id, "limit": str(limit)})
        return f"{self.client.make_url('/admin/')}#/deliveries?{query}"


async def paused_thread(write_config: ConfigFactory, bridge_client: AppClient, messages: int) -> PausedThread:
    """The app with the chat source, its destination paused, and a thread of `messages` messages posted to it."""
    assert os.access(CHROMIUM, os.X_OK), f"these tests drive Debian's Chromium: apt-get install chromium ({CHROMIUM})"
    client = await bridge_client(write_config(CHAT_CONFIG, CHAT_MAPPINGS))
    resp = await client.post("/admin/api/destinations/kapture/pause", json={}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    thread = PausedThread(client)
    for n in range(messages):
        await thread.say(f"message {n}")
    return thread


async def sign_in(page: Page, token: str = "admin-secret") -> None:
    """Sign in with `token` on the page's sign-in form (the admin's, unless told)."""
    await page.get_by_label("Admin token").fill(token)
    await page.get_by_role("button", name="Sign in").click()


async def sign_in_at(page: Page, url: str) -> None:
    """Go to `url` and sign in there as the admin."""
    await page.goto(url)
    await sign_in(page)


async def sign_in_to_overview(page: Page, token: str) -> None:
    """Sign in with `token`, and wait for the Overview it shows."""
    from playwright.async_api import expect

    await sign_in(page, token)
    await expect(page.get_by_role("heading", name="Overview")).to_be_visible()


async def listed(rows: Locator) -> list[tuple[str, str]]:
    """The first two cells of each of `rows`: a conversation's place of each message, and its delivery's id."""
    return [(await r.locator("td").nth(0).inner_text(), await r.locator("td").nth(1).inner_text())
            for r in await rows.all()]


# A chat id as a sender may write it: markup that would run if parsed, and every character a URL gives a meaning.
HOSTILE_CHAT = ("<img src=x onerror=\"window.__pwned='img'\"><script>window.__pwned='script'</script>"
                " a&b=c?d#e/f|g'h%41+i")
WATCH_POLICY = """
window.__violations = [];
document.addEventListener('securitypolicyviolation', (e) => window.__violations.push(e.violatedDirective));
"""


async def test_a_conversation_is_filtered_to_by_its_id_in_order_with_its_ticket_and_kept_in_the_url(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """In Chromium: the deliveries list names each delivery's conversation; clicking one lists only that
    conversation's messages, in the order they are sent in, with no ticket while its create waits and the ticket's id
    once it is made (live refresh). The filter is in the address (a reload or a shared link shows the same; back and
    forward move between it and the full list), in the Conversation field (typed there, by id or by key, it filters
    alike), and cleared with one click. The id, from a sender, is shown as text and never runs."""
    from playwright.async_api import expect

    assert os.access(CHROMIUM, os.X_OK), f"these tests drive Debian's Chromium: apt-get install chromium ({CHROMIUM})"
    client = await bridge_client(write_config(CHAT_CONFIG, CHAT_MAPPINGS))
    rt = runtime(client)
    sim: KaptureSimulator = rt.simulators["kapture"]
    store = rt.store
    assert store is not None
    resp = await client.post("/admin/api/destinations/kapture/pause", json={}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    for chat, text in ((THREAD, "Router down"), (HOSTILE_CHAT, "Hello"), (THREAD, "Still down")):
        resp = await client.post("/hooks/chat", json={"conversation_id": chat, "text": text})
        assert resp.status == 202, await resp.text()
    assert (await client.post("/hooks/website", json={"title": "Printer on fire"})).status == 202
    thread_id, other = f"chat|chat:{THREAD}", f"chat|chat:{HOSTILE_CHAT}"
    [thread] = await store.get_conversations(thread_id)
    in_order = [d.id for d in thread.deliveries]
    assert len(in_order) == 2
    base = str(client.make_url("/admin/"))
    async with chromium_page(tmp_path) as (page, errors, shots):
        await page.add_init_script(WATCH_POLICY)
        rows = page.locator("tbody tr")
        field = page.get_by_label("Conversation", exact=True)

        async def harmless() -> None:
            main = page.locator("main")
            assert await main.locator("img, svg, script, iframe, object, embed").count() == 0
            assert await page.evaluate("window.__pwned") is None
            assert await page.evaluate("window.__violations") == []
            hrefs = await main.locator("a").evaluate_all("links => links.map((a) => a.getAttribute('href'))")
            assert not [h for h in hrefs if not h.startswith("#/")], hrefs

        async def filtered_to_the_thread() -> None:
            section = page.locator("section.conversation")
            await expect(section).to_have_count(1)
            await expect(section.locator("h2")).to_have_text(f"Conversation {thread_id}")
            await expect(rows).to_have_count(2)
            await expect(field).to_have_value(thread_id)

        await sign_in_at(page, base)
        await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        await page.get_by_role("link", name="Deliveries").click()
        await expect(rows).to_have_count(4)
        await expect(page.get_by_title(f"Only conversation {other}")).to_have_count(1)
        await harmless()

        await page.get_by_title(f"Only conversation {thread_id}").first.click()
        await filtered_to_the_thread()
        assert [await r.locator("td").nth(1).inner_text() for r in await rows.all()] == in_order
        assert [await r.locator("td").nth(3).inner_text() for r in await rows.all()] == ["queued", "waiting"]
        await expect(page.locator(".conversation .ticket")).to_contain_text("No ticket yet")
        await harmless()
        shared = page.url
        assert "conversation=" in shared

        resp = await client.post("/admin/api/destinations/kapture/resume", json={}, headers=ADMIN)
        assert resp.status == 200, await resp.text()
        await expect(page.locator(".conversation .ticket")).to_contain_text("Ticket ", timeout=15_000)
        await expect(rows.nth(1)).to_contain_text("follow up", timeout=15_000)
        [ticket] = [t for t in sim.tickets if t["taskTitle"] == "Router down"]
        await expect(page.locator(".conversation .ticket")).to_contain_text(f"Ticket {ticket['ticketId']}")
        assert [await r.locator("td").nth(3).inner_text() for r in await rows.all()] == ["create", "follow up"]
        await page.screenshot(path=str(shots / "deliveries-conversation.png"), full_page=True)

        await page.go_back()
        await expect(rows).to_have_count(4)
        await expect(field).to_have_value("")
        await page.go_forward()
        await filtered_to_the_thread()
        await page.reload()
        await filtered_to_the_thread()
        await harmless()
        browser = page.context.browser
        assert browser is not None
        tab = await browser.new_page()  # a link shared: another tab signs in, then shows the same
        await sign_in_at(tab, shared)
        await expect(tab.locator("section.conversation h2")).to_have_text(f"Conversation {thread_id}")
        await expect(tab.locator("tbody tr")).to_have_count(2)
        await tab.close()

        await page.get_by_role("link", name="Clear conversation filter").click()
        await expect(rows).to_have_count(4)
        await expect(page.locator("section.conversation")).to_have_count(0)
        assert "conversation=" not in page.url

        await field.fill(f"  {other} ")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("section.conversation h2")).to_have_text(f"Conversation {other}")
        await expect(rows).to_have_count(1)
        await harmless()
        await page.reload()
        await expect(page.locator("section.conversation h2")).to_have_text(f"Conversation {other}")
        await expect(field).to_have_value(other)
        await harmless()
        await field.fill(f"chat:{HOSTILE_CHAT}")  # the key alone: each mapping's conversation with that key
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("section.conversation h2")).to_have_text(f"Conversation {other}")
        await page.get_by_label("Status").select_option("dead")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("section.conversation")).to_contain_text("0 of the 1 listed match the other filters")
        await field.fill("chat|nothing")
        await page.get_by_role("button", name="Filter").click()
        await expect(page.locator("#no-conversation")).to_be_visible()
        await page.get_by_role("link", name="Clear filters").click()
        await expect(rows).to_have_count(4)

        await page.goto(f"{base}#/delivery/{in_order[1]}")
        await expect(page.locator("#conversation")).to_contain_text("follow up")
        await page.locator("#conversation").get_by_role("link").click()
        await filtered_to_the_thread()
        await harmless()
        await page.set_viewport_size({"width": 390, "height": 844})
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the conversation's page scrolls sideways on a phone: {width}px"
        assert errors == []
        assert "null" not in await page.locator("main").inner_text()


async def test_a_long_conversation_is_read_page_by_page_older_and_newer_while_messages_arrive(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """In Chromium: a conversation longer than a page (`limit` in the address; 500 unless told) lists its first
    page, numbered from 1, with **Newer messages**; that page the next ones, numbered on, with **Older
    messages**; a message arriving meanwhile is listed once, on the last page, which has no **Newer messages**.
    The page is in the address (reload, back and forward show the same), and an edited one is refused, saying
    why."""
    from playwright.async_api import expect

    thread = await paused_thread(write_config, bridge_client, 5)
    async with chromium_page(tmp_path) as (page, errors, shots):
        rows = page.locator("section.conversation tbody tr")
        older = page.get_by_role("link", name="← Older messages")
        newer = page.get_by_role("link", name="Newer messages →")

        await sign_in_at(page, thread.page(limit=2))
        await expect(rows).to_have_count(2)
        ids = await thread.in_order()
        assert await listed(rows) == [("1", ids[0]), ("2", ids[1])]
        await expect(older).to_have_count(0)
        await expect(newer).to_have_count(2)  # above the table and below it
        await expect(page.locator("section.conversation nav").first).to_contain_text(f"Messages 1{DASH}2")

        await newer.first.click()
        await expect(page.locator("section.conversation nav").first).to_contain_text(f"Messages 3{DASH}4")
        assert await listed(rows) == [("3", ids[2]), ("4", ids[3])]
        await expect(older).to_have_count(2)
        second = page.url
        await thread.say("message 5")  # arrives while the conversation is read
        await newer.last.click()
        await expect(page.locator("section.conversation nav").first).to_contain_text(f"Messages 5{DASH}6")
        ids = await thread.in_order()
        assert len(ids) == 6 and await listed(rows) == [("5", ids[4]), ("6", ids[5])]
        await expect(newer).to_have_count(0)
        await expect(older).to_have_count(2)
        await page.screenshot(path=str(shots / "deliveries-conversation-paged.png"), full_page=True)

        await older.first.click()
        await expect(page.locator("section.conversation nav").first).to_contain_text(f"Messages 3{DASH}4")
        assert await listed(rows) == [("3", ids[2]), ("4", ids[3])]
        await expect(newer).to_have_count(2)
        await page.go_back()
        await expect(page.locator("section.conversation nav").first).to_contain_text(f"Messages 5{DASH}6")
        await page.reload()
        await expect(page.locator("section.conversation nav").first).to_contain_text(f"Messages 5{DASH}6")
        assert await listed(rows) == [("5", ids[4]), ("6", ids[5])]
        await older.first.click()
        await older.first.click()
        await expect(page.locator("section.conversation nav").first).to_contain_text(f"Messages 1{DASH}2")
        await expect(older).to_have_count(0)

        await page.goto(second.replace("from=", "from=x"))
        await expect(page.get_by_role("alert")).to_contain_text("query.cursor: not a cursor this API gave")
        assert errors == []


async def test_a_long_conversation_s_newest_page_is_one_click_away_and_kept_in_the_address(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """In Chromium: a conversation's first page links to its **Newest** page (`from=last` in the address), which
    lists its last messages numbered from their place, with **Older messages** and **Oldest** but no **Newer
    messages**; reloaded, it lists a message that arrived meanwhile; **Oldest** goes back to the first page, and
    back and forward show the same pages."""
    from playwright.async_api import expect

    thread = await paused_thread(write_config, bridge_client, 5)
    async with chromium_page(tmp_path) as (page, errors, shots):
        rows = page.locator("section.conversation tbody tr")
        nav = page.locator("section.conversation nav").first
        newest = page.get_by_role("link", name="Newest ⇥")
        oldest = page.get_by_role("link", name="⇤ Oldest")
        older = page.get_by_role("link", name="← Older messages")
        newer = page.get_by_role("link", name="Newer messages →")

        await sign_in_at(page, thread.page(limit=2))
        await expect(nav).to_contain_text(f"Messages 1{DASH}2")
        await expect(newest).to_have_count(2)  # above the table and below it
        await expect(oldest).to_have_count(0)
        first = page.url

        await newest.first.click()
        await expect(nav).to_contain_text(f"Messages 4{DASH}5")
        assert "from=last" in page.url
        ids = await thread.in_order()
        assert await listed(rows) == [("4", ids[3]), ("5", ids[4])]
        await expect(newer).to_have_count(0)
        await expect(newest).to_have_count(0)
        await expect(older).to_have_count(2)
        await expect(oldest).to_have_count(2)
        await page.screenshot(path=str(shots / "deliveries-conversation-newest.png"), full_page=True)

        await thread.say("message 5")  # arrives while the newest page is shown
        await page.reload()
        await expect(nav).to_contain_text(f"Messages 5{DASH}6")
        ids = await thread.in_order()
        assert len(ids) == 6 and await listed(rows) == [("5", ids[4]), ("6", ids[5])]
        await older.first.click()
        await expect(nav).to_contain_text(f"Messages 3{DASH}4")
        assert await listed(rows) == [("3", ids[2]), ("4", ids[3])]
        await expect(newest).to_have_count(2)

        await oldest.last.click()
        await expect(nav).to_contain_text(f"Messages 1{DASH}2")
        assert page.url == first and await listed(rows) == [("1", ids[0]), ("2", ids[1])]
        await page.go_back()
        await expect(nav).to_contain_text(f"Messages 3{DASH}4")
        await page.go_forward()
        await expect(nav).to_contain_text(f"Messages 1{DASH}2")
        assert errors == []


async def test_a_view_named_after_an_object_built_in_shows_the_overview(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """`#/constructor`, `#/toString` and `#/__proto__` are no views: each shows the Overview, as any unknown view
    does, with no script error. Before, the view table was an object literal: they found Object's built-ins, and
    after sign-in nothing rendered (or a TypeError was shown)."""
    from playwright.async_api import expect

    client = await bridge_client(write_config(CONFIG, MAPPINGS))
    base = str(client.make_url("/admin/"))
    async with chromium_page(tmp_path) as (page, errors, _):
        await sign_in_at(page, f"{base}#/constructor")
        await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        for name in ("toString", "__proto__", "hasOwnProperty"):
            await page.goto(f"{base}#/deliveries")
            await expect(page.get_by_role("heading", name="Deliveries")).to_be_visible()
            await page.goto(f"{base}#/{name}")
            await expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        assert errors == []
