"""`ticketbridge deliveries list|show` and `replay` with `--url`: through a running server's admin API,
with only the admin token in the environment (no config, store or source secrets here)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.cli import deliveries as deliveries_cli
from bridge.cli import main
from bridge.cli.remote import AdminClient
from bridge.console.models import ReplayBody, ReplayResult
from bridge.events import Event
from bridge.ids import new_id
from bridge.store.base import NewDelivery
from bridge.store.sqlite import SqliteStore
from tests.acceptance.console_app import ADMIN, console_app, threaded_mapping
from tests.acceptance.threaded import serve_in_thread


def settled(url: str, delivery_id: str) -> None:
    """Wait until the server has sent the delivery (its sandbox answers within milliseconds)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        view = requests.get(f"{url}/admin/api/deliveries/{delivery_id}",
                            headers=ADMIN, timeout=10).json()
        if view["delivery"]["status"] == "succeeded":
            return
        time.sleep(0.02)
    raise AssertionError(f"{delivery_id} was not sent within 10 s")


def rows(out: str) -> list[str]:
    """The CLI's JSON lines (the server, in this process, logs to the same stdout)."""
    return [line for line in out.splitlines() if line.startswith("{")]


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with serve_in_thread(tmp_path / "server", *console_app()) as url:
        for title in ("one", "two"):
            requests.post(f"{url}/hooks/partner", json={"title": title}, timeout=10).raise_for_status()
        empty = tmp_path / "elsewhere"
        empty.mkdir()
        monkeypatch.chdir(empty)  # no bridge.yaml here: the CLI must not need one
        monkeypatch.delenv("BRIDGE_ADMIN_TOKEN", raising=False)
        yield url


def test_list_and_show_need_only_the_token(server: str, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """With a read token in the environment, `deliveries list --url` lists the server's deliveries and
    `show --url` one of them, its body included."""
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "grafana-secret")
    assert main(["deliveries", "list", "--url", server, "--json"]) == 0
    lines = rows(capsys.readouterr().out)
    assert len(lines) == 2
    first = lines[0].split('"id":"')[1].split('"')[0]
    assert main(["deliveries", "show", "--url", server, first]) == 0
    out = capsys.readouterr().out
    assert f"delivery  {first}" in out and '"title": "two"' in out
    assert main(["deliveries", "show", "--url", server, "dlv_nope"]) == 1
    assert "no delivery 'dlv_nope'" in capsys.readouterr().err


def test_replay_goes_through_the_server_and_a_read_token_is_refused(
        server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`replay --url` asks the server to replay (dry run first); a read token gets the server's 403."""
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "admin-secret")
    assert main(["deliveries", "list", "--url", server, "--json"]) == 0
    ids = [line.split('"id":"')[1].split('"')[0] for line in rows(capsys.readouterr().out)]
    settled(server, ids[0])
    assert main(["replay", "--url", server, ids[0], "--dry-run"]) == 0
    assert [w for w in capsys.readouterr().out.split() if w.startswith("dlv_")] == [ids[0]]
    assert main(["replay", "--url", server, ids[0]]) == 0
    assert "replayed 1 of 1 deliveries" in capsys.readouterr().out
    audit = requests.get(f"{server}/admin/api/audit", headers=ADMIN, timeout=10)
    assert [(e["actor"], e["target"]) for e in audit.json()["items"]] == [("admin", ids[0])]
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "grafana-secret")
    assert main(["replay", "--url", server, ids[0]]) == 2
    assert "403" in capsys.readouterr().err


def test_replay_by_filter_pages_through_every_match(server: str, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`replay --url --destination` replays every delivery the filter matches, not only the most one call takes
    (REPLAY_MOST, here 2): it follows the server's cursor call after call, and each delivery is replayed once, though
    those of the first call have succeeded again before the last; ids beyond REPLAY_MOST go in further calls."""
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "admin-secret")
    for title in ("three", "four", "five"):
        requests.post(f"{server}/hooks/partner", json={"title": title}, timeout=10).raise_for_status()
    assert main(["deliveries", "list", "--url", server, "--json"]) == 0
    ids = [line.split('"id":"')[1].split('"')[0] for line in rows(capsys.readouterr().out)]
    assert len(ids) == 5
    for i in ids:
        settled(server, i)
    monkeypatch.setattr(deliveries_cli, "REPLAY_MOST", 2, raising=False)
    calls: list[ReplayBody] = []
    asked = AdminClient.replay

    async def replay(client: AdminClient, body: ReplayBody) -> ReplayResult:
        calls.append(body)
        answer = await asked(client, body)
        for i in answer.replayed:
            settled(server, i)
        return answer

    monkeypatch.setattr(AdminClient, "replay", replay)
    assert main(["replay", "--url", server, "--destination", "kapture", "--status", "succeeded"]) == 0
    assert "replayed 5 of 5 deliveries" in capsys.readouterr().out
    assert [(len(c.ids), c.cursor is not None) for c in calls] == [(0, False), (0, True), (0, True)]
    calls.clear()
    assert main(["replay", "--url", server, *ids[:3], "--dry-run"]) == 0
    assert [c.ids for c in calls] == [ids[:2], ids[2:3]]
    assert "3 deliveries would be replayed" in capsys.readouterr().err


def test_replay_of_a_destination_the_server_has_not_is_an_error_naming_those_it_has(
        server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`replay --url --destination` with a misspelt name: the server answers 409 naming it and its configured
    destinations, and the CLI exits 2 with that, rather than "replayed 0 of 0"."""
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "admin-secret")
    for extra in ([], ["--dry-run"]):
        assert main(["replay", "--url", server, "--destination", "kaptur", *extra]) == 2
        out, err = capsys.readouterr()
        assert "replayed" not in out
        assert "answered 409: body.destination: no destination 'kaptur' is configured" in err, err
        assert "configured: kapture" in err


def test_a_missing_token_is_named(server: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Without the token in the environment, the CLI says which variable to set, and exits 2."""
    assert main(["deliveries", "list", "--url", server]) == 2
    assert "BRIDGE_ADMIN_TOKEN" in capsys.readouterr().err


def test_mark_succeeded_goes_through_the_server(server: str, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`deliveries mark-succeeded --url` asks the server: one already sent gets the server's 409 and why (exit 1,
    as when run on the store), an unknown id its 404 (1), and a read token its 403 (2: it could not run)."""
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "admin-secret")
    assert main(["deliveries", "list", "--url", server, "--json"]) == 0
    first = rows(capsys.readouterr().out)[0].split('"id":"')[1].split('"')[0]
    settled(server, first)
    assert main(["deliveries", "mark-succeeded", "--url", server, first, "--ticket-id", "T-1"]) == 1
    err = capsys.readouterr().err
    assert "answered 409" in err and f"delivery {first} cannot be marked succeeded: it is succeeded" in err
    assert main(["deliveries", "mark-succeeded", "--url", server, "dlv_nope", "--ticket-id", "T-1"]) == 1
    assert "no delivery 'dlv_nope'" in capsys.readouterr().err
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "grafana-secret")
    assert main(["deliveries", "mark-succeeded", "--url", server, first, "--ticket-id", "T-1"]) == 2
    assert "403" in capsys.readouterr().err


def test_mark_dead_of_a_configured_destination_is_refused_by_the_server(
        server: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`deliveries mark-dead --url` for a destination the server has configured gets its 409 and why: exit 1, as
    when run on the store; a read token its 403 (2: it could not run)."""
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "admin-secret")
    assert main(["deliveries", "mark-dead", "--url", server, "--destination", "kapture", "--reason", "x"]) == 1
    assert "answered 409" in capsys.readouterr().err
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "grafana-secret")
    assert main(["deliveries", "mark-dead", "--url", server, "--destination", "kapture", "--reason", "x"]) == 2
    assert "403" in capsys.readouterr().err


def test_an_id_is_one_path_segment_never_another_route(server: str, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """An id given to `show` or `mark-succeeded` with `/`, `..`, `?` or `#` in it names no delivery (404, exit 1):
    it is sent as one path segment, never read as the path of another admin route. A conversation key or a
    destination that is `.` or `..` names none either (exit 1, no request), as an unknown conversation key does."""
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "admin-secret")
    for odd in ("../overview", "../../api/overview", "x?y", "x#y", ".", ".."):
        assert main(["deliveries", "show", "--url", server, odd]) == 1, odd
        assert f"no delivery {odd!r}" in capsys.readouterr().err
    assert main(["deliveries", "mark-succeeded", "--url", server, "../replay?x=", "--ticket-id", "T-1"]) == 1
    assert "no delivery '../replay?x='" in capsys.readouterr().err
    for odd in (".", ".."):  # a key or a name that cannot be one path segment: said, not a traceback
        assert main(["conversations", "reset", "--url", server, odd]) == 1
        assert f"no conversation {odd!r}; keys look like" in capsys.readouterr().err
        assert main(["deliveries", "mark-dead", "--url", server, "--destination", odd, "--reason", "x"]) == 1
        assert f"no destination {odd!r}" in capsys.readouterr().err
    assert main(["conversations", "reset", "--url", server, "chat:nothing"]) == 1  # the server's 404
    assert "no conversation 'chat:nothing'; keys look like" in capsys.readouterr().err


async def seed_many(db: Path) -> None:
    """900 dead deliveries of one event, then one of a chat conversation."""
    store = SqliteStore(db)
    await store.open()
    try:
        def dead(**kw: Any) -> NewDelivery:
            return NewDelivery(id=new_id("dlv"), mapping="partner", mapping_version="v1", destination="kapture",
                               action="create_ticket", body={"title": "t"}, status="dead", error="seeded", **kw)

        many = Event.new(source="partner", kind="json", channel="webhook", payload={"title": "many"})
        await store.accept(many, [dead() for _ in range(900)], 0)
        chat = Event.new(source="partner", kind="json", channel="webhook", payload={"title": "chat"})
        await store.accept(chat, [dead(conversation="partner|chat:one", conversation_key="chat:one")], 0)
    finally:
        await store.close()


def test_list_through_the_server_filters_by_conversation_and_pages_to_the_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`deliveries list --url` lists as it does on the store: `--conversation` lists that conversation's
    deliveries alone, and a `--limit` past the API's page of 500 is reached by following its cursor."""
    root = tmp_path / "server"
    (root / "var").mkdir(parents=True)
    asyncio.run(seed_many(root / "var" / "bridge.db"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "grafana-secret")
    with serve_in_thread(root, *console_app()) as url:
        assert main(["deliveries", "list", "--url", url, "--conversation", "partner|chat:one", "--json"]) == 0
        [one] = [json.loads(line) for line in rows(capsys.readouterr().out)]
        assert one["conversation"] == "partner|chat:one"
        for limit, listed in ((900, 900), (2000, 901)):
            assert main(["deliveries", "list", "--url", url, "--limit", str(limit), "--json"]) == 0
            ids = [json.loads(line)["id"] for line in rows(capsys.readouterr().out)]
            assert len(ids) == len(set(ids)) == listed and ids == sorted(ids, reverse=True)


THREADED = {"chat": threaded_mapping()}


def printed(out: str) -> str:
    """The CLI's lines, without the log lines of the server (in this process, logging to the same stdout) and of the
    store the CLI opens."""
    return "".join(line for line in out.splitlines(keepends=True)
                   if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[", line))


def test_conversations_show_through_the_server_prints_what_it_prints_on_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`conversations show --url` prints what it prints on the store: the ticket, the messages and the first
    `--limit` deliveries in the order they are sent, saying when more follow and the cursor of the next page,
    which `--cursor` reads (and that page the cursor of the one before it), as text or JSON; `--all` every page;
    `--last` the last page, numbered from its place, with the cursor of the one before it; an unknown key (or one no
    path segment carries) is named, exit 1; a cursor not given for the key, exit 2."""
    root = tmp_path / "server"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BRIDGE_ADMIN_TOKEN", "grafana-secret")
    key = "chat:C1/1700.1"
    shown: dict[str, str] = {}
    forms = {"all": [], "first two": ["--limit", "2"], "json": ["--json", "--limit", "2"],
             "every page": ["--all", "--limit", "2"], "newest": ["--last", "--limit", "2"],
             "newest json": ["--last", "--json", "--limit", "2"]}
    with serve_in_thread(root, console_app()[0], THREADED) as url:
        requests.post(f"{url}/admin/api/destinations/kapture/pause", headers=ADMIN, json={},
                      timeout=10).raise_for_status()  # the deliveries stay as they are between the two reads
        for text in ("router down", "still down", "now it works"):
            requests.post(f"{url}/hooks/partner", json={"conversation_id": "C1/1700.1", "text": text},
                          timeout=10).raise_for_status()
        for form, args in forms.items():
            assert main(["conversations", "show", key, "--url", url, *args]) == 0
            shown[form] = printed(capsys.readouterr().out)
        (after,) = re.findall(r"--cursor (\S+)` \(the next 2\)", shown["first two"])
        forms["next page"] = ["--limit", "2", "--cursor", after]
        assert main(["conversations", "show", key, "--url", url, *forms["next page"]]) == 0
        shown["next page"] = printed(capsys.readouterr().out)
        (before,) = re.findall(r"earlier deliveries: `ticketbridge conversations show \S+ --cursor (\S+)`",
                               shown["next page"])
        forms["back"] = ["--limit", "2", "--cursor", before]
        assert main(["conversations", "show", key, "--url", url, *forms["back"]]) == 0
        shown["back"] = printed(capsys.readouterr().out)
        (before_newest,) = re.findall(r"earlier deliveries: `ticketbridge conversations show \S+ --cursor (\S+)`",
                                      shown["newest"])
        forms["before newest"] = ["--limit", "2", "--cursor", before_newest]
        assert main(["conversations", "show", key, "--url", url, *forms["before newest"]]) == 0
        shown["before newest"] = printed(capsys.readouterr().out)
        assert main(["conversations", "show", "chat:other", "--url", url, "--cursor", after]) == 1  # no such key
        capsys.readouterr()
        requests.post(f"{url}/hooks/partner", json={"conversation_id": "other", "text": "hi"},
                      timeout=10).raise_for_status()
        for bad, said in ((after[:-4], "query.cursor: not a cursor this API gave"),
                          (after + "x" * 500, "text of 1 to 400 characters")):
            assert main(["conversations", "show", key, "--url", url, "--cursor", bad]) == 2
            assert said in capsys.readouterr().err
        assert main(["conversations", "show", "chat:other", "--url", url, "--cursor", after]) == 2
        assert "query.cursor: a cursor of another conversation than the key names" in capsys.readouterr().err
        for missing in ("chat:nothing", ".", ".."):
            assert main(["conversations", "show", missing, "--url", url]) == 1
            assert f"no conversation {missing!r}; keys look like" in capsys.readouterr().err
        with pytest.raises(SystemExit) as refused:
            main(["conversations", "show", key, "--url", url, "--limit", "501"])
        assert refused.value.code == 2 and "'501' is not a whole number from 1 to 500" in capsys.readouterr().err
    lines = shown["all"].splitlines()
    assert lines[0] == "conversation chat|chat:C1/1700.1" and "messages     3 since" in shown["all"]
    assert [line.split()[4] for line in lines if line.startswith("dlv_")] == ["queued", "waiting", "waiting"]
    assert "more deliveries follow" not in shown["all"]
    assert "deliveries 1-3, in the order they are sent in" in shown["all"]
    ids = [line.split()[0] for line in lines if line.startswith("dlv_")]
    assert f"more deliveries follow: `ticketbridge conversations show 'chat|chat:C1/1700.1' --cursor {after}` " \
           "(the next 2), --last for the newest, or --all for every one" in shown["first two"]
    assert "earlier deliveries" not in shown["first two"]
    assert [line.split()[0] for line in shown["next page"].splitlines() if line.startswith("dlv_")] == ids[2:]
    assert "deliveries 3-3, in the order they are sent in" in shown["next page"]
    assert "more deliveries follow" not in shown["next page"]
    assert [line.split()[0] for line in shown["back"].splitlines() if line.startswith("dlv_")] == ids[:2]
    assert "deliveries 1-2," in shown["back"] and f"--cursor {after}`" in shown["back"]
    every = shown["every page"]
    assert [line.split()[0] for line in every.splitlines() if line.startswith("dlv_")] == ids
    assert "deliveries 1-2," in every and "deliveries 3-3," in every and "--cursor" not in every
    [view] = [json.loads(line) for line in rows(shown["json"])]
    assert (len(view["deliveries"]), view["more"], view["next_cursor"], view["offset"]) == (2, True, after, 0)
    assert [line.split()[0] for line in shown["newest"].splitlines() if line.startswith("dlv_")] == ids[1:]
    assert "deliveries 2-3, in the order they are sent in" in shown["newest"]
    assert "more deliveries follow" not in shown["newest"]
    assert [line.split()[0] for line in shown["before newest"].splitlines() if line.startswith("dlv_")] == ids[:1]
    assert "deliveries 1-1," in shown["before newest"] and "earlier deliveries" not in shown["before newest"]
    [newest] = [json.loads(line) for line in rows(shown["newest json"])]
    assert ([d["id"] for d in newest["deliveries"]], newest["offset"], newest["more"]) == (ids[1:], 1, False)
    with pytest.raises(SystemExit) as refused:
        main(["conversations", "show", key, "-c", str(root / "bridge.yaml"), "--last", "--cursor", after])
    assert refused.value.code == 2 and "argument --cursor: not allowed with argument --last" in capsys.readouterr().err
    assert main(["conversations", "show", key, "-c", str(root / "bridge.yaml"), "--last", "--all"]) == 2
    assert "--last lists each conversation's last page and --all every page" in capsys.readouterr().err
    for form, args in forms.items():
        assert main(["conversations", "show", key, "-c", str(root / "bridge.yaml"), *args]) == 0
        assert printed(capsys.readouterr().out) == shown[form], form
    assert main(["conversations", "show", "chat:other", "-c", str(root / "bridge.yaml"), "--cursor", after]) == 2
    assert "--cursor" in (err := capsys.readouterr().err) and "a cursor of another conversation than the key" in err
    assert main(["conversations", "show", "chat:nothing", "-c", str(root / "bridge.yaml"), "--cursor", "nope"]) == 1
    assert "no conversation 'chat:nothing'; keys look like" in capsys.readouterr().err
