"""A `sandbox: true` destination with a `base_url` delivers to the simulator there (one `ticketbridge sandbox` that
several processes share) with the sandbox's demo credentials, and runs none of its own; one without a `base_url`
on a PostgreSQL store (which other processes may share) is named by a warning at start: its tickets are the
process's alone."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiohttp.typedefs import Handler
from structlog.testing import capture_logs

from bridge.app import load_mappings, per_process_sandboxes
from bridge.cli import main
from bridge.cli import serve as serve_cli
from bridge.config import Config
from bridge.errors import ErrorList, Located
from bridge.eventloop import run
from bridge.simulators import serving
from bridge.store.base import DeliveryFilter
from bridge.store.memory import MemoryStore
from bridge.vendors.kapture import CREATE_PATH as KAPTURE_CREATE
from bridge.vendors.kapture import SANDBOX_TOKEN as KAPTURE_DEMO
from bridge.vendors.leadsquared import SANDBOX_ACCESS_KEY, SANDBOX_ORG, SANDBOX_SECRET_KEY
from bridge.vendors.netgroot import CREATE_PATH as NETGROOT_CREATE
from bridge.vendors.netgroot import SANDBOX_TOKEN as NETGROOT_DEMO
from tests.conftest import AppClient, ConfigFactory, eventually, runtime
from tests.integration.processes import free_port

MAPPINGS = {
    "web": """
        source: contact
        destination: demo-kapture
        action: create_ticket
        fields:
          title: "{{ payload.subject }}"
    """,
    "mail": """
        source: mail
        destination: demo-kapture
        action: create_ticket
        conversation: "{{ payload.thread }}"
        fields:
          title: "{{ payload.subject }}"
        follow_up:
          action: update_ticket
          fields:
            ticket_id: "{{ ticket.id }}"
            sub_status: P
            comment: "{{ payload.text }}"
    """,
}


def config_text(store: str, kapture: str, leadsquared: str = "{vendor: leadsquared, sandbox: true}") -> str:
    return f"""
        store: {{url: "{store}"}}
        sources:
          contact: {{kind: form}}
          mail: {{kind: json}}
        destinations:
          demo-kapture: {kapture}
          demo-lsq: {leadsquared}
    """


@pytest.fixture
async def shared() -> AsyncIterator[str]:
    """A standalone sandbox as `ticketbridge sandbox` serves it (every vendor under /{vendor}/): its address."""
    server = TestServer(serving(["kapture", "leadsquared"]), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def tickets(session: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    async with session.get(url) as resp:
        assert resp.status == 200
        found: list[dict[str, Any]] = (await resp.json())["tickets"]
        return found


async def test_a_sandbox_with_a_base_url_delivers_to_the_shared_simulator_there(
        write_config: ConfigFactory, bridge_client: AppClient, shared: str) -> None:
    """Two apps (as two processes) whose Kapture sandbox names one shared simulator: each thread's first message
    and its reply land on one ticket there, whichever app sends which, with the demo key (no `token` given). Neither
    app runs a Kapture simulator of its own nor mounts /sandbox/kapture/; the sandbox without a base_url still runs
    in-process. Before, the base_url was ignored: each app's own simulator numbered its tickets from the same start,
    and a reply sent by the other app commented on that app's ticket of the same number."""
    config = write_config(config_text("sqlite:///var/bridge.db",
                                      f'{{vendor: kapture, sandbox: true, base_url: "{shared}/kapture"}}'), MAPPINGS)
    store = MemoryStore()  # one store, two apps: the PostgreSQL kit's shape in little
    one, two = await bridge_client(config, store=store), await bridge_client(config, store=store)
    for app in (one, two):
        assert sorted(runtime(app).simulators) == ["leadsquared"]
        assert (await app.get("/sandbox/kapture/tickets")).status == 404
    for n in range(3):
        resp = await one.post("/hooks/mail", json={"thread": f"t{n}", "subject": f"thread {n}", "text": "first"})
        assert resp.status == 202, await resp.text()
    async with aiohttp.ClientSession() as session:

        async def created() -> bool:
            return len(await tickets(session, f"{shared}/kapture/tickets")) == 3

        await eventually(created)
        for n in range(3):
            resp = await two.post("/hooks/mail", json={"thread": f"t{n}", "subject": "re", "text": f"reply {n}"})
            assert resp.status == 202, await resp.text()

        async def replied() -> bool:
            return sum(len(t["comments"]) for t in await tickets(session, f"{shared}/kapture/tickets")) == 3

        await eventually(replied)
        held = await tickets(session, f"{shared}/kapture/tickets")
    assert sorted((t["taskTitle"], t["comments"]) for t in held) == [
        (f"thread {n}", [f"reply {n}"]) for n in range(3)]


def test_doctor_checks_a_sandbox_with_a_base_url_at_that_url(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """`ticketbridge doctor` asks the shared simulator a sandbox's base_url names (here nothing listens there: it
    fails naming that address), not one it starts for itself as for a sandbox without one."""
    port = free_port()
    (tmp_path / "bridge.yaml").write_text(config_text(
        "sqlite:///var/bridge.db", f'{{vendor: kapture, sandbox: true, base_url: "http://127.0.0.1:{port}/kapture"}}'))
    assert main(["doctor", "-c", str(tmp_path / "bridge.yaml")]) == 1
    out = capsys.readouterr().out
    assert f"127.0.0.1:{port}/kapture" in out
    assert out.rstrip().endswith("doctor: 1 ok, 1 failed, 0 skipped"), out


@pytest.fixture
async def impostor() -> AsyncIterator[tuple[str, list[str], list[bool]]]:
    """A standalone sandbox behind a switch: while `posing[0]` is true it is not one (it answers every request 200
    `{"ok": true}`, as a vendor or any web server might), then it is. Its address, the paths it was asked, the
    switch."""
    asked: list[str] = []
    posing = [True]

    @web.middleware
    async def pose(request: web.Request, handler: Handler) -> web.StreamResponse:
        asked.append(request.path)
        return web.json_response({"ok": True}) if posing[0] else await handler(request)

    app = serving(["kapture", "leadsquared"])
    app.middlewares.append(pose)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/"), asked, posing
    finally:
        await server.close()


async def test_a_base_url_that_is_no_sandbox_is_sent_nothing_until_it_answers_as_one(
        write_config: ConfigFactory, bridge_client: AppClient,
        impostor: tuple[str, list[str], list[bool]]) -> None:
    """A sandbox's base_url that does not answer as a `ticketbridge sandbox` (a typo naming a real vendor or any
    other server) is sent no delivery: the start and intake go on, the lane logs `sandbox.unverified` with what the
    URL answered, and the delivery waits, pending, with no attempt. Once the URL answers as a sandbox, it is sent
    there. Before, the demo body went to whatever the base_url named."""
    base, asked, posing = impostor
    config = write_config(config_text("sqlite:///var/bridge.db",
                                      f'{{vendor: kapture, sandbox: true, base_url: "{base}/kapture"}}'), MAPPINGS)
    with capture_logs() as logs:
        client = await bridge_client(config)
        assert (await client.post("/hooks/contact", data={"subject": "held"})).status == 202
        await eventually(lambda: any(e["event"] == "sandbox.unverified" for e in logs))
        store = runtime(client).store
        assert store is not None
        [row] = await store.list_deliveries(DeliveryFilter(limit=10))
        assert (row.status, row.attempts) == ("pending", 0)
        assert set(asked) == {"/kapture/_sandbox"}, asked  # asked what it is, sent nothing
        [unverified] = [e for e in logs if e["event"] == "sandbox.unverified"][:1]
        assert unverified["log_level"] == "error" and unverified["destination"] == "demo-kapture"
        assert f"GET {base}/kapture/_sandbox answered 200 but not" in unverified["error"]
        assert "ticketbridge sandbox" in unverified["note"]
        posing[0] = False

        async def delivered() -> bool:
            [row] = await store.list_deliveries(DeliveryFilter(limit=10))
            return row.status == "succeeded"

        await eventually(delivered, timeout=20)
    assert any(e["event"] == "sandbox.verified" for e in logs)
    async with aiohttp.ClientSession() as session:
        assert [t["taskTitle"] for t in await tickets(session, f"{base}/kapture/tickets")] == ["held"]


async def test_doctor_fails_a_sandbox_whose_base_url_is_no_sandbox(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], impostor: tuple[str, list[str], list[bool]]) -> None:
    """`ticketbridge doctor` fails a sandbox whose base_url does not answer as a `ticketbridge sandbox`, saying
    so and how to fix it, before any log-in or look-up there."""
    base, asked, _ = impostor
    (tmp_path / "bridge.yaml").write_text(config_text(
        "sqlite:///var/bridge.db", f'{{vendor: kapture, sandbox: true, base_url: "{base}/kapture"}}'))
    assert await asyncio.to_thread(main, ["doctor", "-c", str(tmp_path / "bridge.yaml")]) == 1
    out = capsys.readouterr().out
    assert "FAILED  demo-kapture (kapture): base_url is not a ticketbridge sandbox: " in out, out
    assert "point base_url at a `ticketbridge sandbox`" in out
    assert asked == ["/kapture/_sandbox"]


def start_and_stop(config: Config) -> list[dict[str, Any]]:
    """`serve` started on `config` (on a free loopback port, a memory store standing in for the one it names) and
    stopped: its log."""
    server = msgspec.structs.replace(config.server, host="127.0.0.1", port=free_port())
    config = dataclasses.replace(config, server=server)

    async def started_and_stopped() -> int:
        stop = asyncio.Event()
        server = asyncio.create_task(serve_cli.serve(config, workers=False, stop=stop, store=MemoryStore()))
        await eventually(lambda: any(e["event"] == "server.started" for e in logs))
        stop.set()
        return await server

    threshold = gc.get_threshold()
    try:
        with capture_logs() as logs:
            assert run(started_and_stopped, "asyncio") == 0
    finally:  # serve tunes the collector for the process it runs in: not for the tests after this one
        gc.unfreeze()
        gc.set_threshold(*threshold)
    return logs


def test_serve_warns_of_its_own_sandboxes_on_a_postgresql_store(write_config: ConfigFactory) -> None:
    """On a PostgreSQL store, which other processes may share, each destination this process's own simulator
    serves is named by a warning at start, with the mappings that thread into it and what to do; a sandbox with a
    base_url (a shared one) is not named."""
    shared_url = '{vendor: kapture, sandbox: true, base_url: "http://sandbox.example:9090/kapture"}'
    config = write_config(config_text("postgresql://u@127.0.0.1:1/db", "{vendor: kapture, sandbox: true}"), MAPPINGS)
    logs = start_and_stop(config)
    warned = {e["destination"]: e for e in logs if e["event"] == "sandbox.per_process"}
    assert sorted(warned) == ["demo-kapture", "demo-lsq"]
    assert (warned["demo-kapture"]["threaded_mappings"], warned["demo-lsq"]["threaded_mappings"]) == (["mail"], [])
    assert warned["demo-kapture"]["log_level"] == "warning"
    assert "ticketbridge sandbox" in warned["demo-kapture"]["note"]
    assert "base_url" in warned["demo-kapture"]["note"]
    shared_config = write_config(config_text("postgresql://u@127.0.0.1:1/db", shared_url), MAPPINGS)
    assert list(per_process_sandboxes(shared_config, load_mappings(shared_config))) == ["demo-lsq"]


def test_serve_on_sqlite_says_nothing_of_its_sandboxes(write_config: ConfigFactory) -> None:
    """An SQLite store is one process's: its own sandboxes are no warning."""
    config = write_config(config_text("sqlite:///var/bridge.db", "{vendor: kapture, sandbox: true}"), MAPPINGS)
    assert per_process_sandboxes(config, load_mappings(config)) == {}
    logs = start_and_stop(config)
    assert [e for e in logs if e["event"] == "sandbox.per_process"] == []



SENDS = {
    "k": """
        source: contact
        destination: demo-kapture
        action: create_ticket
        fields:
          title: "{{ payload.subject }}"
    """,
    "l": """
        source: contact
        destination: demo-lsq
        action: create_ticket
        fields:
          LeadDetail.EmailAddress: a@b.io
          Title: "{{ payload.subject }}"
    """,
    "n": """
        source: contact
        destination: demo-isp
        action: create_ticket
        fields:
          subject_id: 1
          message: "{{ payload.subject }}"
    """,
}
REAL = {"KAPTURE_TOKEN": "real-kapture-key", "LSQ_ORG": "real-org", "LSQ_ACCESS": "real-access",
        "LSQ_SECRET": "real-secret", "ISP_TOKEN": "real-isp-token"}
ISP_IDS = "type_id: 1, status_id: 1, priority_id: 2, group_id: 1"


def three_sandboxes(base: str, credentials: bool) -> str:
    """A config whose three destinations are `sandbox: true` with a base_url; with `credentials`, each also keeps
    the real account's keys (a production config copied to staging with `sandbox: true` added)."""
    kapture, lsq, isp = (', token: "${KAPTURE_TOKEN}"',
                         ', org_id: "${LSQ_ORG}", access_key: "${LSQ_ACCESS}", secret_key: "${LSQ_SECRET}"',
                         ', auth: {token: "${ISP_TOKEN}"}') if credentials else ("", "", "")
    return f"""
        sources:
          contact: {{kind: form}}
        destinations:
          demo-kapture: {{vendor: kapture, sandbox: true, base_url: "{base}/kapture"{kapture}}}
          demo-lsq: {{vendor: leadsquared, sandbox: true, base_url: "{base}/leadsquared"{lsq}}}
          demo-isp: {{vendor: netgroot, sandbox: true, base_url: "{base}/netgroot", {ISP_IDS}{isp}}}
    """


async def test_a_sandbox_never_sends_configured_credentials(write_config: ConfigFactory, bridge_client: AppClient
                                                            ) -> None:
    """`sandbox: true` beside a credential (a production config with the flag added) is refused at load, each
    destination at its credential's key, saying what to do and never quoting the value: before, the real keys
    (and the customers' data) went to whatever `base_url` said. Without them, what reaches the server at
    `base_url` carries the simulators' demo credentials only."""
    received: list[tuple[str, dict[str, str]]] = []

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        received.append((request.path, dict(request.headers)))
        return await handler(request)

    app = serving(["kapture", "leadsquared", "netgroot"])
    app.middlewares.append(record)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        base = str(server.make_url("")).rstrip("/")
        with pytest.raises(ErrorList) as refused:
            write_config(three_sandboxes(base, credentials=True), SENDS, environ=REAL)
        errors = refused.value.errors
        assert sorted(e.path for e in errors if isinstance(e, Located)) == [
            "destinations.demo-isp.auth.token", "destinations.demo-kapture.token", "destinations.demo-lsq.access_key",
            "destinations.demo-lsq.org_id", "destinations.demo-lsq.secret_key"]
        shown = "\n".join(e.render() for e in errors)
        assert shown.count("remove `") == 5 and shown.count("drop `sandbox: true`") == 5, shown
        assert not [value for value in REAL.values() if value in shown], shown

        client = await bridge_client(write_config(three_sandboxes(base, credentials=False), SENDS, environ=REAL))
        assert (await client.post("/hooks/contact", data={"subject": "hello"})).status == 202
        created = {"/kapture" + KAPTURE_CREATE, f"/leadsquared/api/tenants/{SANDBOX_ORG}/tickets",
                   "/netgroot" + NETGROOT_CREATE}
        await eventually(lambda: created <= {path for path, _ in received})
    finally:
        await server.close()
    sent = {path: headers for path, headers in received if path in created}
    assert sent["/kapture" + KAPTURE_CREATE]["Authorization"] == f"Basic {KAPTURE_DEMO}"
    lsq = sent[f"/leadsquared/api/tenants/{SANDBOX_ORG}/tickets"]
    assert (lsq["X-LSQ-ACCESS-KEY"], lsq["X-LSQ-SECRET-KEY"]) == (SANDBOX_ACCESS_KEY, SANDBOX_SECRET_KEY)
    assert sent["/netgroot" + NETGROOT_CREATE]["Authorization"] == f"Bearer {NETGROOT_DEMO}"
    every = repr(received)
    assert not [value for value in REAL.values() if value in every]
