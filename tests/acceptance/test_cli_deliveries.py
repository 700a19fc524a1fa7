"""The `ticketbridge` verbs ops use on deliveries, against a real SQLite store file."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest

from bridge.cli import main
from bridge.cli.deliveries import LIST_MOST, UNMATCHED_PAGE
from bridge.delivery import replay as replay_module
from bridge.errors import StoreUnavailable
from bridge.events import Event
from bridge.store.base import AttemptResult, NewDelivery
from bridge.store.sqlite import SqliteStore
from tests.acceptance.cli_store import run, seeded_config
from tests.spies import calls_through

CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
sources:
  partner: {kind: json}
destinations:
  kapture: {vendor: kapture, sandbox: true}
  other: {vendor: kapture, sandbox: true}
"""
MAPPING = """
source: partner
destination: kapture
action: create_ticket
fields:
  title: {from: payload.title, required: true}
"""


def delivery(ident: str, destination: str = "kapture", body: dict[str, str] | None = None,
             status: str = "pending") -> NewDelivery:
    return NewDelivery(id=ident, mapping="partner", mapping_version="v1", destination=destination,
                       action="create_ticket", body=body, status=status,  # type: ignore[arg-type]
                       error=None if body is not None else "title: required (payload.title is missing)")


async def seed(db: Path) -> None:
    """One delivery succeeded, one dead after a 500, one dead unrendered, one pending elsewhere."""
    store = SqliteStore(db)
    await store.open()
    try:
        for ident, dest, body, status in [
            ("dlv_1", "kapture", {"title": "ok"}, "pending"),
            ("dlv_2", "kapture", {"title": "down"}, "pending"),
            ("dlv_3", "kapture", None, "dead"),
            ("dlv_4", "other", {"title": "later"}, "pending"),
        ]:
            event = Event.new(source="partner", kind="json", channel="webhook", payload={"title": ident})
            await store.accept(event, [delivery(ident, dest, body, status)], 0)
        await store.claim("kapture", 10, "test", 60)
        await store.record(AttemptResult(delivery_id="dlv_1", started_at_ms=1, duration_ms=3.0, http_status=200,
                                         response_excerpt='{"status": "success"}', classification="success",
                                         error=None, ticket_id="713516551148", next_status="succeeded"))
        await store.record(AttemptResult(delivery_id="dlv_2", started_at_ms=2, duration_ms=4.0, http_status=500,
                                         response_excerpt="oops", classification="retry", error="HTTP 500",
                                         next_status="dead"))
    finally:
        await store.close()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return seeded_config(tmp_path, CONFIG, MAPPING, seed)


def test_list_shows_every_delivery_newest_first(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`deliveries list` prints a table of deliveries, newest first, with status, ticket and last error."""
    code, out, _ = run(capsys, "deliveries", "list", "-c", str(config_file))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["ID", "STATUS", "DESTINATION"]
    assert [line.split()[0] for line in lines[1:]] == ["dlv_4", "dlv_3", "dlv_2", "dlv_1"]
    assert "713516551148" in lines[4]
    assert "HTTP 500" in lines[3]


def test_list_filters_by_status_and_destination(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--status and --destination narrow the list; --json gives one object per line."""
    code, out, _ = run(capsys, "deliveries", "list", "-c", str(config_file), "--status", "dead",
                       "--destination", "kapture", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in rows] == ["dlv_3", "dlv_2"]
    assert all(r["status"] == "dead" for r in rows)


@pytest.mark.parametrize("verb", [("deliveries", "list"), ("events", "unmatched")])
def test_a_limit_below_one_is_refused(config_file: Path, capsys: pytest.CaptureFixture[str],
                                      verb: tuple[str, str]) -> None:
    """--limit 0 or a negative one (which SQLite would read as no limit) is a usage error naming the value."""
    for bad in ("0", "-5"):
        with pytest.raises(SystemExit) as exit_:
            main([*verb, "-c", str(config_file), "--limit", bad])
        assert exit_.value.code == 2
        allowed = f"from 1 to {LIST_MOST}" if verb[0] == "deliveries" else ">= 1"
        assert f"argument --limit: '{bad}' is not a whole number {allowed}" in capsys.readouterr().err


def test_show_prints_event_body_and_attempts(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`deliveries show` prints the delivery, its rendered body, the event's payload and every attempt."""
    code, out, _ = run(capsys, "deliveries", "show", "dlv_2", "-c", str(config_file))
    assert code == 0
    assert "dlv_2  dead" in out
    assert '"title": "down"' in out
    assert "#1" in out
    assert "HTTP 500 retry: HTTP 500" in out


def test_show_json_is_one_object_with_the_attempts(config_file: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`deliveries show --json` prints the delivery, its body and its attempts as one JSON object on one line."""
    code, out, _ = run(capsys, "deliveries", "show", "dlv_2", "-c", str(config_file), "--json")
    assert code == 0
    [line] = out.splitlines()
    detail = json.loads(line)
    assert (detail["delivery"]["id"], detail["body"]) == ("dlv_2", {"title": "down"})
    assert [a["http_status"] for a in detail["attempts"]] == [500]


def test_show_of_an_unknown_id_fails_clearly(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown delivery id exits 1 and says so."""
    code, _, err = run(capsys, "deliveries", "show", "dlv_nope", "-c", str(config_file))
    assert code == 1
    assert "no delivery 'dlv_nope'" in err


@pytest.mark.parametrize("command", [["deliveries", "show"], ["conversations", "show"], ["conversations", "reset"]])
def test_an_unknown_long_id_is_quoted_cut(config_file: Path, capsys: pytest.CaptureFixture[str],
                                          command: list[str]) -> None:
    """An id or key that names nothing is quoted cut to 100 characters, its length said, not echoed whole."""
    given = "chat:" + "x" * 5000
    code, _, err = run(capsys, *command, given, "-c", str(config_file))
    assert code == 1
    assert "'chat:xxx" in err and "… (5005 characters in all)" in err and len(err) < 400, err


def test_replay_by_id_makes_dead_work_pending(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Replaying a dead delivery by id makes it pending again; a pending one is refused with its reason."""
    code, out, _ = run(capsys, "replay", "dlv_2", "-c", str(config_file))
    assert code == 0
    assert "replayed 1 of 1" in out
    code, out, _ = run(capsys, "deliveries", "list", "-c", str(config_file), "--status", "pending", "--json")
    assert {json.loads(line)["id"] for line in out.splitlines()} == {"dlv_2", "dlv_4"}
    code, _, err = run(capsys, "replay", "dlv_4", "-c", str(config_file))
    assert code == 1
    assert "dlv_4: not replayed: it is pending" in err


def test_replay_by_destination_takes_its_dead_deliveries(config_file: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """--destination replays that destination's dead deliveries; one that never rendered is named as such, by
    the dry run too."""
    code, out, err = run(capsys, "replay", "--destination", "kapture", "--dry-run", "-c", str(config_file))
    assert code == 0
    assert out.split() == ["dlv_3", "dlv_2"]
    assert "dlv_3: would not be replayed: it never rendered" in err
    assert "1 deliveries would be replayed" in err
    code, out, err = run(capsys, "replay", "--destination", "kapture", "-c", str(config_file))
    assert code == 1
    assert "replayed 1 of 2" in out
    assert "dlv_3: not replayed: it never rendered" in err


def test_replay_of_a_destination_neither_configured_nor_stored_is_an_error_naming_those_configured(
        config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`replay --destination` with a misspelt name matches nothing: exit 2, naming it and the configured
    destinations, rather than "replayed 0 of 0" and exit 0. A configured one with nothing to replay is no error."""
    for extra in ([], ["--dry-run"], ["--status", "succeeded"]):
        code, out, err = run(capsys, "replay", "--destination", "kaptur", *extra, "-c", str(config_file))
        assert code == 2, extra
        assert out == ""
        assert err.startswith("--destination kaptur: no destination 'kaptur' is configured"), err
        assert "configured: kapture, other" in err
    code, out, _ = run(capsys, "replay", "--destination", "other", "-c", str(config_file))
    assert code == 0 and "replayed 0 of 0" in out


def test_replay_refuses_a_delivery_whose_destination_is_no_longer_configured(
        config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With `kapture` gone from the config, its dead delivery is refused by name and stays dead, by id, by
    --destination and on a dry run: no lane would ever send it."""
    config_file.write_text(CONFIG.replace("  kapture: {vendor: kapture, sandbox: true}\n", ""))
    (config_file.parent / "mappings" / "partner.yaml").write_text(MAPPING.replace("kapture", "other"))
    reason = "its destination 'kapture' is no longer configured, so nothing would send it: restore 'kapture' under"
    for args in (["dlv_2"], ["dlv_2", "--dry-run"], ["--destination", "kapture", "--status", "dead"]):
        code, _out, err = run(capsys, "replay", *args, "-c", str(config_file))
        assert f"dlv_2: {'would not be' if '--dry-run' in args else 'not'} replayed: {reason}" in err, err
        assert code == (0 if "--dry-run" in args else 1)
    code, out, _ = run(capsys, "deliveries", "list", "-c", str(config_file), "--status", "dead", "--json")
    assert "dlv_2" in {json.loads(line)["id"] for line in out.splitlines()}


def test_replay_needs_ids_or_a_destination(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Giving both ids and --destination (or neither) is a usage error."""
    assert run(capsys, "replay", "dlv_1", "--destination", "kapture", "-c", str(config_file))[0] == 2
    assert run(capsys, "replay", "-c", str(config_file))[0] == 2


def test_a_bad_config_is_reported_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every verb reports config errors with file, line and key path, and exits non-zero."""
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(textwrap.dedent("""
        store: {url: "sqlite:///var/bridge.db"}
        sources:
          partner: {kind: jsonn}
        destinations:
          kapture: {vendor: kapture, sandbox: true, max_in_flight: 0}
    """))
    code, _, err = run(capsys, "deliveries", "list", "-c", str(cfg))
    assert code == 2
    assert f"{cfg}:4:" in err and "unknown source kind 'jsonn'" in err
    assert f"{cfg}:6:" in err and "max_in_flight" in err
    code, _, err = run(capsys, "serve", "-c", str(cfg))
    assert code == 2


def test_a_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A -c path that does not exist is named in the error."""
    code, _, err = run(capsys, "deliveries", "list", "-c", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "nope.yaml: no such config file" in err


@pytest.mark.parametrize("limit", [LIST_MOST + 1, 2**70])
def test_a_listing_past_its_most_is_refused_naming_the_flag_the_value_and_the_most(
        config_file: Path, capsys: pytest.CaptureFixture[str], limit: int) -> None:
    """`deliveries list` holds the deliveries it lists at once, and its table lines up over them all: a --limit past
    LIST_MOST (any, up to past 64 bits, which the store refused) is refused before the store is opened, naming the
    flag, its value, the most and how to list more; exit 2. (`events unmatched` asks the store for a page at a time,
    never more than UNMATCHED_PAGE: such a limit lists every event, below.)"""
    with pytest.raises(SystemExit) as exit_:
        main(["deliveries", "list", "-c", str(config_file), "--limit", str(limit)])
    out, err = capsys.readouterr()
    assert (exit_.value.code, out) == (2, "")
    assert (f"argument --limit: '{limit}' is not a whole number from 1 to {LIST_MOST}: the deliveries listed are "
            "held at once (and a table lines up over them all); list more a listing at a time, each with --before "
            "the last id the one before listed\n") in err


def test_a_listing_of_the_most_is_listed(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "deliveries", "list", "-c", str(config_file), "--limit", str(LIST_MOST), "--json")
    assert code == 0
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["dlv_4", "dlv_3", "dlv_2", "dlv_1"]


def test_a_replay_an_error_stops_after_a_part_says_what_it_replayed(
        config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-rendered replay goes to the store a part at a time, each its own change: when the store fails on the
    second part, the first part's delivery stays replayed, and the replay says so, then the error, and exits 2
    (the error alone said nothing of what was replayed)."""
    monkeypatch.setattr(replay_module, "REPLAY_RENDERED_CHARS", 1)  # a part for each body
    original = SqliteStore.replay
    parts: list[list[str]] = []

    async def failing_second(store: SqliteStore, part: list[str], *args: Any, **kwargs: Any) -> list[str]:
        parts.append(list(part))
        if len(parts) == 2:
            raise StoreUnavailable("the disk is full")
        return await original(store, part, *args, **kwargs)

    monkeypatch.setattr(SqliteStore, "replay", failing_second)
    code, out, err = run(capsys, "replay", "-c", str(config_file), "--rerender", "dlv_2", "dlv_3")
    assert parts == [["dlv_2"], ["dlv_3"]]
    assert code == 2
    assert out.startswith("replayed 1 of 2 deliveries")
    assert ("the replay stopped there: the disk is full; the other 1 deliveries were not replayed (run it again "
            "for them: those replayed above are refused as pending)\n") in err


UNMATCHED = 40


async def seed_unmatched(db: Path) -> None:
    """UNMATCHED events no mapping took."""
    store = SqliteStore(db)
    await store.open()
    try:
        for n in range(UNMATCHED):
            await store.accept(Event.new(source="partner", kind="json", channel="webhook",
                                         payload={"title": f"u{n}"}), [], 0)
    finally:
        await store.close()


@pytest.mark.parametrize("limit", [35, 2**70])
def test_unmatched_events_are_read_from_the_store_a_page_at_a_time(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    """`events unmatched` asks the store for UNMATCHED_PAGE events at most at a time, printing each page before
    it reads the next: the store holds a read's events at once (each up to 1 MiB in its rows, then decoded), and
    --limit 1000 over large mails held gigabytes. It prints the events asked for, newest first, each once; a limit
    past what the store could take (an int past 64 bits) lists them all."""
    config = seeded_config(tmp_path, CONFIG, MAPPING, seed_unmatched)
    asked: list[int] = []
    calls_through(monkeypatch, SqliteStore, "list_unmatched", lambda _store, n, _before: asked.append(n))
    code, out, err = run(capsys, "events", "unmatched", "-c", str(config), "--limit", str(limit), "--json")
    ids = [json.loads(line)["id"] for line in out.splitlines() if line.startswith("{")]  # the seed's logs before
    assert (code, err) == (0, "")
    assert ids == sorted(set(ids), reverse=True)
    assert len(ids) == min(limit, UNMATCHED)
    assert asked and max(asked) <= UNMATCHED_PAGE < UNMATCHED


@pytest.mark.parametrize("verb", [["deliveries", "show"], ["deliveries", "list", "--destination"]], ids=" ".join)
def test_an_argument_that_is_not_utf8_is_named_and_exits_2(
        config_file: Path, capsys: pytest.CaptureFixture[str], verb: list[str]) -> None:
    """Bytes that are not UTF-8 in an id or a filter (a shell's `$'\\xff'`, handed over as a lone surrogate): named,
    escaped, no traceback, exit 2."""
    code, out, err = run(capsys, *verb, "dlv_\udcff", "-c", str(config_file))
    assert (code, out) == (2, "")
    assert err == "ticketbridge: 'dlv_\\xff': not valid UTF-8; ids, filters and notes are UTF-8 text\n"


def test_a_verb_that_migrates_the_store_says_so_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A verb that opens a store whose schema is a version behind (run by the new version before its server
    restarts) brings it up to date itself and says which migrations it applied, on stderr, where stdout's listing is
    not mixed with it; the next run, on a store up to date, says nothing of it, and nor does one that makes a new
    store (nothing was there to upgrade)."""
    config = tmp_path / "bridge.yaml"
    config.write_text(CONFIG)
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "partner.yaml").write_text(MAPPING)
    note = ("the store's schema was brought up to this version by {}: {} (see docs/operations.md, \"Upgrades and "
            "migrations\", for what a server of the older version running on this store does beside it)\n")
    code, out, err = run(capsys, "deliveries", "list", "-c", str(config))
    with sqlite3.connect(tmp_path / "var" / "bridge.db") as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM schema_migrations ORDER BY version")]
        conn.execute("ALTER TABLE deliveries DROP COLUMN ticket_missing")  # as the version before 0026 left it
        conn.execute("DELETE FROM schema_migrations WHERE version = 26")
    assert (code, out, err) == (0, "", "no deliveries match\n")
    assert "0026_ticket_missing.sql" in names
    code, out, err = run(capsys, "deliveries", "list", "-c", str(config))
    assert (code, out) == (0, "")
    assert err == note.format("1 migration", "0026_ticket_missing.sql") + "no deliveries match\n"
    assert run(capsys, "deliveries", "list", "-c", str(config)) == (0, "", "no deliveries match\n")
