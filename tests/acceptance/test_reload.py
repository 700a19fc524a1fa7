"""Hot reload on a running server: an edit changes the next event's render within two seconds; a bad edit
changes nothing and is shown by the admin API; SIGHUP forces a reload."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge import reload as reload_module
from bridge.store.base import DeliveryFilter
from tests.acceptance.test_metrics import samples
from tests.conftest import AppClient, ConfigFactory, eventually, runtime

TOKEN = "admin-secret"
CONFIG = f"""
store: {{url: "sqlite:///var/bridge.db"}}
admin: {{token: {TOKEN}}}
sources:
  partner: {{kind: json}}
destinations:
  kapture: {{vendor: kapture, sandbox: true}}
"""

PARTNER = """
    source: partner
    destination: kapture
    action: create_ticket
    fields:
      title: "Partner: {{ payload.title }}"
      source_ref: "{{ payload.id }}"
    tests:
      - input: {payload: {id: p-1, title: x}}
        expect_contains: {title: "Partner: x"}
"""
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def write_mapping(folder: Path, name: str, text: str) -> None:
    """Write as an editor saving in place would."""
    (folder / f"{name}.yaml").write_text(textwrap.dedent(text), encoding="utf-8")


async def titles(client: Any) -> list[str]:
    store = runtime(client).store
    rows = await store.list_deliveries(DeliveryFilter(limit=100))
    out = []
    for row in reversed(rows):
        body = (await store.get_delivery(row.id)).body
        out.append(body["title"] if body else f"(dead: {row.last_error})")
    return out


async def post(client: Any, ident: str) -> None:
    resp = await client.post("/hooks/partner", json={"id": ident, "title": "Router down"})
    assert resp.status == 202, await resp.text()


async def test_an_edit_changes_what_the_next_event_renders_to(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """After a mapping file is edited on a running server, the next events render with the new version."""
    client = await bridge_client(write_config(CONFIG, {"partner": PARTNER}), workers=False)
    rt = runtime(client)
    before = rt.mappings.version
    await post(client, "a")
    write_mapping(tmp_path / "mappings", "partner", PARTNER.replace("Partner: ", "Partner ticket: "))
    await eventually(lambda: rt.mappings.version != before)
    await post(client, "b")
    assert await titles(client) == ["Partner: Router down", "Partner ticket: Router down"]
    rows = await rt.store.list_deliveries(DeliveryFilter(limit=10))  # type: ignore[union-attr]
    assert rows[0].mapping_version == rt.mappings.mappings["partner"].version != rows[1].mapping_version


async def test_a_broken_edit_changes_nothing_and_the_admin_api_shows_why(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """Saving a broken mapping leaves the last good set in force; the error is logged, counted and shown."""
    client = await bridge_client(write_config(CONFIG, {"partner": PARTNER}), workers=False)
    rt = runtime(client)
    good = rt.mappings
    path = tmp_path / "mappings" / "partner.yaml"
    with capture_logs() as logs:
        write_mapping(tmp_path / "mappings", "partner", PARTNER.replace("{{ payload.title }}", "{{ payload.title "))
        await eventually(lambda: rt.mapping_status.failures == 1)
    assert rt.mappings is good
    await post(client, "c")
    assert await titles(client) == ["Partner: Router down"]
    failed = [e for e in logs if e["event"] == "mappings.reload_failed"]
    assert len(failed) == 1
    assert failed[0]["log_level"] == "error"
    assert f"{path}:6:3: partner.title: template syntax error" in failed[0]["error"]
    assert failed[0]["kept_version"] == good.version
    assert rt.counters["mappings.reload_failed"] == 1

    resp = await client.get("/admin/mappings", headers=AUTH)
    assert resp.status == 200
    status = await resp.json()
    assert status["version"] == good.version
    assert [m["name"] for m in status["mappings"]] == ["partner"]
    assert status["reload"]["failures"] == 1
    assert status["reload"]["last_result"] == "failed"
    assert status["reload"]["last_error"].startswith(f"{path}:6:3: partner.title: template syntax error")
    metrics = samples(await (await client.get("/metrics", headers=AUTH)).text())
    assert metrics["ticketbridge_mapping_reload_failing"] == 1  # what the reload alert watches
    assert metrics['ticketbridge_mapping_reloads_total{result="failed"}'] == 1

    # Fixing the file brings the same content back: nothing to swap, and the watch reports it healthy.
    write_mapping(tmp_path / "mappings", "partner", PARTNER)
    await eventually(lambda: rt.mapping_status.last_result == "ok")
    assert rt.mappings is good
    metrics = samples(await (await client.get("/metrics", headers=AUTH)).text())
    assert metrics["ticketbridge_mapping_reload_failing"] == 0


async def test_an_edit_naming_a_field_with_a_nul_is_refused_and_the_set_in_force_kept(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """A mapping edited to hold a field key with a NUL (YAML's "\\0"), which PostgreSQL would refuse at run time: a
    failed reload naming file, line and the key escaped; the set in force keeps serving."""
    client = await bridge_client(write_config(CONFIG, {"partner": PARTNER}), workers=False)
    rt = runtime(client)
    good = rt.mappings
    write_mapping(tmp_path / "mappings", "partner", PARTNER.replace("  source_ref:", '  "source\\0ref":'))
    await eventually(lambda: rt.mapping_status.failures == 1)
    assert rt.mappings is good
    assert rt.mapping_status.last_error is not None and rt.mapping_status.last_error.startswith(
        f"{tmp_path / 'mappings' / 'partner.yaml'}:7:3: partner.fields: field key 'source\\x00ref' holds \\x00 "
        "(U+0000)")
    await post(client, "e")
    assert await titles(client) == ["Partner: Router down"]


async def test_an_edit_whose_aliases_multiply_a_block_is_refused_at_its_line_and_serving_goes_on(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """A mapping whose YAML aliases stand for a billion values (a few hundred bytes) is a failed reload at the
    alias that passes the limit, found before anything is built: the server keeps its set and serves."""
    client = await bridge_client(write_config(CONFIG, {"partner": PARTNER}), workers=False)
    rt = runtime(client)
    good = rt.mappings
    laughs = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    laughs += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "mappings" / "partner.yaml"
    path.write_text(textwrap.dedent(PARTNER) + "\n".join(laughs) + "\n", encoding="utf-8")
    await eventually(lambda: rt.mapping_status.failures == 1)
    assert rt.mappings is good
    assert rt.mapping_status.last_error is not None and rt.mapping_status.last_error.startswith(f"{path}:")
    assert "more than 100,000 values" in rt.mapping_status.last_error
    await post(client, "d")
    assert await titles(client) == ["Partner: Router down"]


async def test_an_edit_nesting_a_template_too_deeply_is_refused_at_its_line_and_serving_goes_on(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """A template nesting deeper than Jinja and Python can compile (400 `{% if %}`, 3,000 `+`) is a failed reload
    naming file, line, field and the limit, not an internal error; the set in force keeps serving."""
    client = await bridge_client(write_config(CONFIG, {"partner": PARTNER}), workers=False)
    rt = runtime(client)
    good = rt.mappings
    path = tmp_path / "mappings" / "partner.yaml"
    for deep, message in [("{% if true %}" * 400 + "x" + "{% endif %}" * 400, "400 blocks"),
                          ("{{ " + " + ".join(["1"] * 3000) + " }}", "3001 levels")]:
        wanted = rt.mapping_status.failures + 1
        write_mapping(tmp_path / "mappings", "partner", PARTNER.replace("{{ payload.id }}", deep))
        await eventually(lambda wanted=wanted: rt.mapping_status.failures == wanted)
        assert rt.mappings is good
        assert rt.mapping_status.last_error is not None and rt.mapping_status.last_error.startswith(
            f"{path}:7:3: partner.source_ref: template nests too deeply: {message}")
    await post(client, "f")
    assert await titles(client) == ["Partner: Router down"]


async def test_a_broken_edit_in_a_folder_from_a_variable_names_its_file_by_the_variable(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """With `mappings: ${MAPS}`, a failed reload (a file that does not load, then one whose test fails) names the
    file relative to the variable in its log line, the admin API's reload answer and its status: never the folder's
    path, the variable's value."""
    folder = tmp_path / "mappings"
    loaded = write_config(CONFIG + "mappings: ${MAPS}\n", {"partner": PARTNER}, {"MAPS": str(folder)})
    client = await bridge_client(loaded, workers=False)
    rt = runtime(client)
    with capture_logs() as logs:
        write_mapping(folder, "partner", PARTNER.replace("{{ payload.title }}", "{{ payload.title "))
        await eventually(lambda: rt.mapping_status.failures == 1)
        write_mapping(folder, "partner", PARTNER.replace('"Partner: {{', '"Ticket: {{'))
        await eventually(lambda: rt.mapping_status.failures == 2)
    errors = [e["error"] for e in logs if e["event"] == "mappings.reload_failed"]
    assert errors[0].startswith("${MAPS}/partner.yaml:6:3: partner.title: template syntax error"), errors
    assert "${MAPS}/partner.yaml:" in errors[1] and "partner: test 1: fields differ: title" in errors[1], errors
    for path in ("/admin/mappings", "/admin/api/mappings"):
        resp = await client.get(path, headers=AUTH)
        assert resp.status == 200 and str(folder) not in await resp.text()
        assert "${MAPS}/partner.yaml:" in (await resp.json())["reload"]["last_error"]
    assert all(str(folder) not in repr(e) for e in logs)


async def test_an_edit_whose_own_tests_fail_is_refused(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """A change that loads but fails its mapping tests is not swapped in, and its failing test is named."""
    client = await bridge_client(write_config(CONFIG, {"partner": PARTNER}), workers=False)
    rt = runtime(client)
    good = rt.mappings
    write_mapping(tmp_path / "mappings", "partner", PARTNER.replace('"Partner: {{', '"Ticket: {{'))
    await eventually(lambda: rt.mapping_status.failures == 1)
    assert rt.mappings is good
    error = rt.mapping_status.last_error or ""
    assert error.startswith("1 mapping tests failed:")
    assert "partner: test 1: fields differ: title" in error


async def test_adding_and_removing_files_is_seen(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """A new mapping file starts taking events, and a removed one stops, each swapped in as a whole set."""
    client = await bridge_client(write_config(CONFIG, {"partner": PARTNER}), workers=False)
    rt = runtime(client)
    write_mapping(tmp_path / "mappings", "second", PARTNER.replace("Partner: ", "Second: "))
    await eventually(lambda: "second" in rt.mappings.mappings)
    await post(client, "d")
    assert sorted(await titles(client)) == ["Partner: Router down", "Second: Router down"]
    (tmp_path / "mappings" / "partner.yaml").unlink()
    await eventually(lambda: "partner" not in rt.mappings.mappings)
    assert list(rt.mappings.mappings) == ["second"]
    assert rt.mapping_status.reloads == 2


async def test_sighup_forces_a_reload(write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGHUP reloads at once, even a change the folder watch cannot see (same size and time)."""
    looks: list[float] = []

    def counted_snapshot(folder: Path) -> reload_module.Snapshot:
        looks.append(time.monotonic())
        return real_snapshot(folder)

    real_snapshot = reload_module.snapshot
    monkeypatch.setattr(reload_module, "snapshot", counted_snapshot)  # a spy: what the watch looked at, when
    client = await bridge_client(write_config(CONFIG, {"partner": PARTNER}), workers=False)
    rt = runtime(client)
    before = rt.mappings.version
    path = tmp_path / "mappings" / "partner.yaml"
    stat = path.stat()
    write_mapping(tmp_path / "mappings", "partner", PARTNER.replace("Partner: ", "Partner! "))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    changed_at = time.monotonic()
    # A change the watch can see is loaded at the first look a settle period (two polls) after the look that
    # saw it; four looks after the change leave a poll to spare, and this change is still not loaded.
    await eventually(lambda: len([t for t in looks if t > changed_at]) >= 4)
    assert rt.mappings.version == before
    assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)  # the app's handler
    os.kill(os.getpid(), signal.SIGHUP)
    await eventually(lambda: rt.mappings.version != before)
    await post(client, "e")
    assert await titles(client) == ["Partner! Router down"]


async def test_the_watch_stops_with_the_app(write_config: ConfigFactory, aiohttp_client: Any) -> None:
    """Shutting the app down cancels the watch task and gives SIGHUP back."""
    from bridge.app import build_app

    app = build_app(write_config(CONFIG, {"partner": PARTNER}), workers=False)
    client = await aiohttp_client(app)
    assert any(t.get_name() == "mappings-reload" for t in asyncio.all_tasks())
    await client.close()
    assert not any(t.get_name() == "mappings-reload" and not t.done() for t in asyncio.all_tasks())
    assert signal.getsignal(signal.SIGHUP) in (signal.SIG_DFL, None)


async def test_a_crash_while_loading_is_a_failed_reload_and_the_watch_goes_on(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """An unexpected exception inside a load counts as a failed reload; the next edit still reloads."""
    client = await bridge_client(write_config(CONFIG, {"partner": PARTNER}), workers=False)
    rt = runtime(client)
    reloader = rt.reloader
    assert reloader is not None
    load = reloader.load

    def crash() -> Any:
        raise RuntimeError("disk on fire")

    reloader.load = crash
    assert await reloader.reload("test") is False
    assert rt.mapping_status.last_error == "internal error while loading: RuntimeError: disk on fire"
    reloader.load = load
    before = rt.mappings.version
    write_mapping(tmp_path / "mappings", "partner", PARTNER.replace("Partner: ", "After: "))
    await eventually(lambda: rt.mappings.version != before)
    assert rt.mapping_status.last_result == "ok"


async def test_each_set_that_loads_and_passes_its_tests_is_kept_in_the_store(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """The set in force at start and each reloaded set are kept, file by file, as the last good set."""
    client = await bridge_client(write_config(CONFIG, {"partner": PARTNER}), workers=False)
    rt = runtime(client)
    store = rt.store
    assert store is not None
    await eventually(lambda: rt.mapping_status.stored_version == rt.mappings.version, timeout=10.0)
    stored = await store.load_mapping_set()
    assert stored is not None
    assert (stored.version, stored.files) == (rt.mappings.version, {"partner.yaml": textwrap.dedent(PARTNER)})
    edited = PARTNER.replace("Partner: ", "Edited: ")
    write_mapping(tmp_path / "mappings", "partner", edited)
    await eventually(lambda: rt.mapping_status.stored_version == rt.mappings.version != stored.version, timeout=10.0)
    again = await store.load_mapping_set()
    assert again is not None and again.files == {"partner.yaml": textwrap.dedent(edited)}
    body = await (await client.get("/admin/mappings", headers=AUTH)).json()
    assert body["last_good"]["version"] == again.version
    assert (body["source"], body["degraded"], body["folder_error"]) == ("folder", False, None)


async def test_a_set_whose_tests_fail_at_start_is_served_but_not_kept(
        write_config: ConfigFactory, bridge_client: AppClient) -> None:
    """A folder that loads but fails its own tests at start still serves, and is never kept as the last good set."""
    failing = PARTNER.replace('"Partner: {{', '"Ticket: {{')
    with capture_logs() as logs:
        client = await bridge_client(write_config(CONFIG, {"partner": failing}), workers=False)
        await eventually(lambda: any(e["event"] == "mappings.not_saved" for e in logs), timeout=10.0)
    store = runtime(client).store
    assert store is not None and await store.load_mapping_set() is None


async def test_after_a_degraded_start_fixing_the_folder_serves_it_again(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """Started on the kept set because the folder was broken, the server goes back to the folder once it is fixed."""
    config = write_config(CONFIG, {"partner": PARTNER})
    first = await bridge_client(config, workers=False)
    await eventually(lambda: runtime(first).mapping_status.stored_version is not None, timeout=10.0)
    good = runtime(first).mappings.version
    await first.close()
    path = tmp_path / "mappings" / "partner.yaml"
    write_mapping(tmp_path / "mappings", "partner", PARTNER.replace("{{ payload.title }}", "{{ payload.title "))

    client = await bridge_client(config, workers=False)
    rt = runtime(client)
    assert (rt.mapping_status.source, rt.mappings.version) == ("last_good", good)
    assert f"{path}:6:3: partner.title: template syntax error" in (rt.mapping_status.folder_error or "")
    await post(client, "f")
    assert await titles(client) == ["Partner: Router down"]

    write_mapping(tmp_path / "mappings", "partner", PARTNER.replace("Partner: ", "Fixed: "))
    await eventually(lambda: rt.mapping_status.source == "folder", timeout=10.0)
    assert rt.mapping_status.folder_error is None
    metrics = await (await client.get("/metrics", headers=AUTH)).text()
    assert "ticketbridge_mappings_degraded 0" in metrics
    await post(client, "g")
    assert await titles(client) == ["Partner: Router down", "Fixed: Router down"]


async def test_a_changed_config_is_logged_once_as_needing_a_restart(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """Editing bridge.yaml logs `config.changed` once per change and shows `restart_needed`; undoing it clears it."""
    client = await bridge_client(write_config(CONFIG, {"partner": PARTNER}), workers=False)
    rt = runtime(client)
    path = tmp_path / "bridge.yaml"
    original = path.read_text()
    with capture_logs() as logs:
        path.write_text(original + "vars: {brand: Acme}\n")
        await eventually(lambda: rt.mapping_status.config_changed_at is not None, timeout=10.0)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched, not changed
        reloader = rt.reloader
        assert reloader is not None
        reloader.check_config()
        changed = [e for e in logs if e["event"] == "config.changed"]
        assert len(changed) == 1
        assert changed[0]["log_level"] == "warning" and "restart needed" in changed[0]["note"]
        body = await (await client.get("/admin/mappings", headers=AUTH)).json()
        assert body["config"]["restart_needed"] is True and body["config"]["file"] == str(path)
        assert "ticketbridge_config_restart_needed 1" in await (await client.get("/metrics", headers=AUTH)).text()
        path.write_text(original)
        await eventually(lambda: rt.mapping_status.config_changed_at is None, timeout=10.0)
    assert [e["event"] for e in logs if e["event"].startswith("config.")] == ["config.changed", "config.restored"]


async def test_a_config_edited_while_the_server_starts_is_flagged_as_needing_a_restart(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """bridge.yaml edited after it was read but before the watch began (a slow start) is a change: the server
    runs on the bytes it loaded, not on what the file holds once it watches."""
    config = write_config(CONFIG, {"partner": PARTNER})
    path = tmp_path / "bridge.yaml"
    path.write_text(path.read_text() + "vars: {brand: Acme}\n")  # after the load, before the app is built
    with capture_logs() as logs:
        client = await bridge_client(config, workers=False)
        rt = runtime(client)
        reloader = rt.reloader
        assert reloader is not None
        reloader.check_config()
    assert rt.mapping_status.config_changed_at is not None
    assert [e["event"] for e in logs if e["event"].startswith("config.")] == ["config.changed"]
    body = await (await client.get("/admin/mappings", headers=AUTH)).json()
    assert body["config"]["restart_needed"] is True


async def test_a_reload_past_its_deadline_is_a_failed_reload(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """A load-and-test that outlasts mappings_reload_timeout fails the reload, names the deadline, keeps the set."""
    client = await bridge_client(write_config(CONFIG + "mappings_reload_timeout: 0.2s\n", {"partner": PARTNER}),
                                 workers=False)
    rt = runtime(client)
    good = rt.mappings
    spin = "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}x"
    cases = "".join(f"  - input: {{payload: {{id: s-{i}}}}}\n    expect_contains: {{title: x}}\n" for i in range(20))
    (tmp_path / "mappings" / "slow.yaml").write_text(
        f"source: partner\ndestination: kapture\naction: create_ticket\nfields:\n  title: \"{spin}\"\n"
        f"tests:\n{cases}")
    await eventually(lambda: rt.mapping_status.failures == 1, timeout=10.0)
    assert "ran past its deadline of 0.2 s (mappings_reload_timeout)" in (rt.mapping_status.last_error or "")
    assert rt.mappings is good


async def test_emptying_the_folder_is_refused_and_the_set_in_force_kept(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """Moving every mapping file out of the folder (a deploy, `rsync --delete`) is a failed reload: the set in
    force keeps taking events, the error names the folder and what to do, and the kept last good set stays."""
    client = await bridge_client(write_config(CONFIG, {"partner": PARTNER}), workers=False)
    rt = runtime(client)
    store = rt.store
    assert store is not None
    await eventually(lambda: rt.mapping_status.stored_version == rt.mappings.version, timeout=10.0)
    good = rt.mappings
    folder = tmp_path / "mappings"
    with capture_logs() as logs:
        (folder / "partner.yaml").rename(tmp_path / "partner.yaml.away")
        await eventually(lambda: rt.mapping_status.failures == 1)
    assert rt.mappings is good
    [failed] = [e for e in logs if e["event"] == "mappings.reload_failed"]
    assert str(folder) in failed["error"] and "mappings_allow_empty: true" in failed["error"]
    assert "partner" in failed["error"]
    resp = await client.post("/hooks/partner", json={"id": "e", "title": "Router down"})
    assert (await resp.json())["deliveries"] == 1
    kept = await store.load_mapping_set()
    assert kept is not None and kept.version == good.version


async def test_with_an_empty_folder_at_restart_the_last_good_set_serves(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """A start whose folder holds no mapping file, while the store keeps a last good set with some, serves that
    set, degraded, the folder's problem shown; the empty set is never kept over it."""
    config = write_config(CONFIG, {"partner": PARTNER})
    first = await bridge_client(config, workers=False)
    await eventually(lambda: runtime(first).mapping_status.stored_version is not None, timeout=10.0)
    good = runtime(first).mappings.version
    await first.close()
    (tmp_path / "mappings" / "partner.yaml").unlink()

    with capture_logs() as logs:
        client = await bridge_client(config, workers=False)
    rt = runtime(client)
    assert (rt.mapping_status.source, rt.mappings.version) == ("last_good", good)
    assert "holds no mapping file" in (rt.mapping_status.folder_error or "")
    assert any(e["event"] == "mappings.folder_broken" for e in logs)
    await post(client, "h")
    assert await titles(client) == ["Partner: Router down"]
    body = await (await client.get("/admin/mappings", headers=AUTH)).json()
    assert (body["source"], body["degraded"]) == ("last_good", True)
    store = rt.store
    assert store is not None
    kept = await store.load_mapping_set()
    assert kept is not None and kept.version == good


async def test_mappings_allow_empty_takes_an_emptied_folder(
        write_config: ConfigFactory, bridge_client: AppClient, tmp_path: Path) -> None:
    """With `mappings_allow_empty: true`, emptying the folder is a reload like any other: no mapping in force."""
    client = await bridge_client(write_config(CONFIG + "mappings_allow_empty: true\n", {"partner": PARTNER}),
                                 workers=False)
    rt = runtime(client)
    (tmp_path / "mappings" / "partner.yaml").unlink()
    await eventually(lambda: not rt.mappings.mappings)
    assert rt.mapping_status.last_result == "ok"
    resp = await client.post("/hooks/partner", json={"id": "e", "title": "Router down"})
    assert (await resp.json())["deliveries"] == 0
