"""`ticketbridge purge`: what has aged out is counted with --dry-run and deleted otherwise, against a real
SQLite store file and attachments folder."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import msgspec
import pytest

from bridge.cli import main
from bridge.config import load_config
from bridge.events import Event
from bridge.registries import REGISTRIES
from bridge.store.base import AttemptResult, NewDelivery
from bridge.store.sqlite import SqliteStore
from handlers.attachments import attachment, content_path, save_attachments
from tests.acceptance.cli_store import run

CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
attachments: {dir: var/files}
sources:
  partner: {kind: json}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""
DAY_MS = 86_400_000


def delivery(ident: str) -> NewDelivery:
    return NewDelivery(id=ident, mapping="partner", mapping_version="v1", destination="kapture",
                       action="create_ticket", body={"title": ident})


async def seed(db: Path, files: Path) -> None:
    """Events evt_* aged by their suffix in days: succeeded (ok), dead, pending, and one with no delivery;
    two attachment files, one named by the old succeeded event and one named by nothing."""
    named, unnamed = attachment("a.pdf", "application/pdf", b"A" * 300), attachment("b.pdf", None, b"B" * 700)
    save_attachments([named, unnamed], files, 10_000)
    store = SqliteStore(db)
    await store.open()
    try:
        for ident, payload, outcome in [
            ("ok40", {"attachments": [named.meta]}, "succeeded"), ("ok10", {}, "succeeded"),
            ("dead40", {}, "dead"), ("dead100", {}, "dead"), ("pending40", {}, None),
        ]:
            event = Event.new(source="partner", kind="json", channel="webhook", payload=payload)
            await store.accept(msgspec.structs.replace(event, id=f"evt_{ident}"), [delivery(f"dlv_{ident}")], 0)
            if outcome is not None:
                assert len((await store.claim("kapture", 10, "t", 60)).items) == 1
                await store.record(AttemptResult(
                    delivery_id=f"dlv_{ident}", started_at_ms=1, duration_ms=3.0, http_status=200, response_excerpt="",
                    classification="success", error=None, next_status=outcome))  # type: ignore[arg-type]
        bare = Event.new(source="partner", kind="json", channel="webhook", payload={}, dedup_key="m-1")
        await store.accept(msgspec.structs.replace(bare, id="evt_bare40"), [], 0)
    finally:
        await store.close()
    now = time.time_ns() // 1_000_000
    with closing(sqlite3.connect(db)) as conn, conn:
        for ident in ("ok40", "ok10", "dead40", "dead100", "pending40", "bare40"):
            days = int("".join(c for c in ident if c.isdigit()))
            conn.execute("UPDATE events SET received_at = ? WHERE id = ?", (now - days * DAY_MS, f"evt_{ident}"))
            conn.execute("UPDATE deliveries SET updated_at = ? WHERE event_id = ?",
                         (now - days * DAY_MS, f"evt_{ident}"))
    old = time.time() - 40 * 86400
    for item in (named, unnamed):
        os.utime(content_path(files, item.meta["sha256"]), (old, old))
    (files / ".retention").write_text("")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    (tmp_path / "bridge.yaml").write_text(CONFIG)
    (tmp_path / "mappings").mkdir()
    cfg = load_config(tmp_path / "bridge.yaml", {}, registries=REGISTRIES)
    assert cfg.store_url.path is not None
    asyncio.run(seed(cfg.store_url.path, cfg.attachments_dir))
    return tmp_path / "bridge.yaml"



def events(config_file: Path) -> list[str]:
    with closing(sqlite3.connect(config_file.parent / "var" / "bridge.db")) as conn:
        return sorted(r[0].removeprefix("evt_") for r in conn.execute("SELECT id FROM events"))


def files(config_file: Path) -> list[int]:
    return sorted(p.stat().st_size for p in (config_file.parent / "var" / "files").glob("*/*"))


def test_dry_run_reports_what_would_go_and_deletes_nothing(config_file: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run counts the events (settled ones past the age, dead ones past the dead limit), their
    deliveries and attempts, expired dedup keys, and unnamed old files with their bytes; nothing goes."""
    code, out, _ = run(capsys, "purge", "--older-than", "30d", "--dry-run", "-c", str(config_file))
    assert code == 0
    assert out.splitlines() == [
        "would purge:",
        "  events       3 (with 2 deliveries)",
        "  attempts     2",
        "  conversations 0",
        "  dedup keys   1",
        "  attachments  1 files, 700 bytes",
    ]
    assert events(config_file) == ["bare40", "dead100", "dead40", "ok10", "ok40", "pending40"]
    assert files(config_file) == [300, 700]


def test_purge_deletes_what_aged_out_and_keeps_the_rest(config_file: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Without --dry-run the same rows and files go; recent, pending and recently dead events stay, and a
    file goes once the event naming it is gone."""
    code, out, _ = run(capsys, "purge", "--older-than", "30d", "-c", str(config_file))
    assert code == 0
    assert out.splitlines()[0].startswith("purged in ")
    assert out.splitlines()[1:] == [
        "  events       3 (with 2 deliveries)",
        "  attempts     2",
        "  conversations 0",
        "  dedup keys   1",
        "  attachments  2 files, 1000 bytes",
    ]
    assert events(config_file) == ["dead40", "ok10", "pending40"]
    assert files(config_file) == []
    code, out, _ = run(capsys, "purge", "--older-than", "30d", "--dry-run", "-c", str(config_file))
    assert "events       0 (with 0 deliveries)" in out


def test_kind_and_dead_limit_narrow_the_purge(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--kind purges only the kinds named; --dead-older-than overrides the configured dead limit."""
    code, out, _ = run(capsys, "purge", "--kind", "dedup", "-c", str(config_file))
    assert code == 0 and out.splitlines()[1:] == ["  dedup keys   1"]
    assert len(events(config_file)) == 6 and files(config_file) == [300, 700]
    code, out, _ = run(capsys, "purge", "--kind", "events", "--older-than", "30d", "--dead-older-than", "20d",
                       "-c", str(config_file))
    assert code == 0
    assert events(config_file) == ["ok10", "pending40"]
    assert files(config_file) == [300, 700]


def test_an_age_that_is_not_a_duration_is_refused(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad --older-than exits 2 naming the value and what would be right; nothing is deleted."""
    with pytest.raises(SystemExit) as exc:
        main(["purge", "--older-than", "soon", "-c", str(config_file)])
    assert exc.value.code == 2
    assert "'soon' is not a duration: write 250ms, 5s, 5m, 2h, 1d" in capsys.readouterr().err
    assert len(events(config_file)) == 6


def test_a_config_that_keeps_everything_asked_for_is_refused(config_file: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """With every kind asked for kept forever by the config and no --older-than, purge says so and exits 2."""
    config_file.write_text(CONFIG + "retention: {events: null, dead: null}\n")
    code, _, err = run(capsys, "purge", "--kind", "events", "-c", str(config_file))
    assert code == 2 and "kept forever by the config" in err
    assert len(events(config_file)) == 6


def test_a_long_purge_shows_its_progress(config_file: Path, capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """While it runs, purge prints a progress line (every 2 s; here after every batch) to stderr."""
    monkeypatch.setattr("bridge.cli.purge.PROGRESS_SECONDS", 0.0)
    code, _, err = run(capsys, "purge", "--older-than", "30d", "--batch", "1", "-c", str(config_file))
    assert code == 0
    lines = [line for line in err.splitlines() if line.startswith("purging: ")]
    assert len(lines) >= 3 and lines[-1].startswith("purging: 3 events, 2 attempts, 1 dedup keys so far")


async def _threads(db: Path) -> None:
    """Two chats 40 days quiet (keys: the customers' phone numbers), one whose only message succeeded then (its
    event goes at 30 days), one whose message is dead (its event kept for the 90-day dead limit); and a chat
    whose last message came 3 days ago, its deliveries already gone."""
    store = SqliteStore(db)
    await store.open()
    try:
        for ident, outcome in (("t1", "succeeded"), ("t2", "dead")):
            d = msgspec.structs.replace(delivery(f"dlv_{ident}"), conversation=f"partner|chat:+9100000{ident}",
                                        conversation_key=f"chat:+9100000{ident}")
            event = Event.new(source="partner", kind="json", channel="webhook", payload={})
            await store.accept(msgspec.structs.replace(event, id=f"evt_{ident}"), [d], 0)
            claimed = [c.id for c in (await store.claim("kapture", 10, "t", 60)).items]
            assert f"dlv_{ident}" in claimed
            await store.release([i for i in claimed if i != f"dlv_{ident}"])  # the seed's pending one
            await store.record(AttemptResult(
                delivery_id=f"dlv_{ident}", started_at_ms=1, duration_ms=3.0, http_status=200, response_excerpt="",
                classification="success", error=None, next_status=outcome, role="create"))  # type: ignore[arg-type]
        recent = msgspec.structs.replace(delivery("dlv_t3"), conversation="partner|chat:+91000003",
                                         conversation_key="chat:+91000003")
        await store.accept(Event.new(source="partner", kind="json", channel="webhook", payload={}), [recent], 0)
    finally:
        await store.close()
    now = time.time_ns() // 1_000_000
    with closing(sqlite3.connect(db)) as conn, conn:
        for ident in ("t1", "t2"):
            conn.execute("UPDATE events SET received_at = ? WHERE id = ?", (now - 40 * DAY_MS, f"evt_{ident}"))
            conn.execute("UPDATE deliveries SET updated_at = ? WHERE id = ?", (now - 40 * DAY_MS, f"dlv_{ident}"))
        conn.execute("UPDATE conversations SET last_message_at = ? WHERE key <> 'chat:+91000003'",
                     (now - 40 * DAY_MS,))
        conn.execute("UPDATE conversations SET last_message_at = ? WHERE key = 'chat:+91000003'", (now - 3 * DAY_MS,))
        conn.execute("DELETE FROM deliveries WHERE id = 'dlv_t3'")


def conversations(config_file: Path) -> list[str]:
    with closing(sqlite3.connect(config_file.parent / "var" / "bridge.db")) as conn:
        return sorted(r[0] for r in conn.execute("SELECT key FROM conversations"))


def test_a_conversation_goes_once_none_of_its_messages_is_kept_and_it_is_past_the_limits(
        config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A conversation whose messages are all purged and whose last message is older than the events limit (and
    than reopen_after) goes with them: its key (a phone number) is not kept past its messages. One whose dead
    message is kept stays, and so does one quiet for less than reopen_after (7 days by default) though its
    deliveries are gone, as its next message would still follow up on its ticket."""
    asyncio.run(_threads(config_file.parent / "var" / "bridge.db"))
    code, out, _ = run(capsys, "purge", "--older-than", "30d", "--dry-run", "-c", str(config_file))
    assert code == 0 and "  conversations 0" in out.splitlines()  # its event goes first: counted next time
    code, out, _ = run(capsys, "purge", "--older-than", "30d", "-c", str(config_file))
    assert code == 0 and "  conversations 1" in out.splitlines(), out
    assert conversations(config_file) == ["chat:+91000003", "chat:+9100000t2"]
    code, out, _ = run(capsys, "purge", "--older-than", "1d", "--dead-older-than", "90d", "-c", str(config_file))
    assert code == 0 and "  conversations 0" in out.splitlines(), out
    assert conversations(config_file) == ["chat:+91000003", "chat:+9100000t2"]
    code, out, _ = run(capsys, "purge", "--older-than", "10d", "--dead-older-than", "30d", "-c", str(config_file))
    assert code == 0 and "  conversations 1" in out.splitlines(), out
    assert conversations(config_file) == ["chat:+91000003"]
