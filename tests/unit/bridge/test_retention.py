"""bridge/retention.py: the policy read from the config, batched purges, and attachment files kept while a
kept event names them."""

from __future__ import annotations

import errno
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from bridge.config import RetentionConfig
from bridge.events import Event
from bridge.ids import new_id
from bridge.retention import MARKER, Policy, _remove, longest_reopen_after, purge_store, sweep, sweep_attachments
from bridge.store.base import Cutoffs, NewDelivery
from bridge.store.sqlite import SqliteStore
from handlers.attachments import attachment, content_path, save_attachments

DAY = 86400


@pytest.fixture
def store(sqlite_store: SqliteStore) -> SqliteStore:
    return sqlite_store


def test_policy_defaults_keep_what_replay_needs() -> None:
    """By default events and attempts go after 30 days, dead ones after 90, attachments with events."""
    p = Policy.from_config(RetentionConfig())
    assert (p.events_s, p.dead_s, p.attempts_s, p.attachments_s, p.dedup) == (
        30 * DAY, 90 * DAY, 30 * DAY, 30 * DAY, True)
    assert Policy.from_config(RetentionConfig(events="7d")).attachments_s == 7 * DAY
    assert Policy.from_config(RetentionConfig(attachments="2d")).attachments_s == 2 * DAY


def test_a_conversation_is_kept_for_the_events_limit_or_the_longest_reopen_after_whichever_is_longer() -> None:
    """The conversations' cutoff: the longer of the events limit and the mappings' longest reopen_after (7 days
    when none is known); none while events are kept forever."""
    now = 1_000 * DAY * 1000
    p = Policy(events_s=30 * DAY, dead_s=90 * DAY, attempts_s=None, attachments_s=None)
    assert p.cutoffs(now).conversations_ms == now - 30 * DAY * 1000
    short = Policy(events_s=1 * DAY, dead_s=1 * DAY, attempts_s=None, attachments_s=None)
    assert short.cutoffs(now).conversations_ms == now - 7 * DAY * 1000
    longer = Policy(events_s=1 * DAY, dead_s=1 * DAY, attempts_s=None, attachments_s=None, reopen_after_s=60 * DAY)
    assert longer.cutoffs(now).conversations_ms == now - 60 * DAY * 1000
    assert Policy(events_s=None, dead_s=None, attempts_s=None, attachments_s=None).cutoffs(now).conversations_ms \
        is None


def test_a_conversation_holding_a_senders_ticket_is_kept_for_the_tickets_limit_too() -> None:
    """The tickets' cutoff (a conversation holding a ticket its first sender may answer by token): `tickets` (90
    days by default; the store keeps such a conversation until the conversations' cutoff too, whichever is
    later); none (kept) for a null `tickets`, and none while events are kept forever."""
    now = 1_000 * DAY * 1000
    p = Policy.from_config(RetentionConfig())
    assert p.tickets_s == 90 * DAY
    assert p.cutoffs(now).tickets_ms == now - 90 * DAY * 1000
    assert Policy.from_config(RetentionConfig(tickets="1d")).cutoffs(now).tickets_ms == now - 1 * DAY * 1000
    assert Policy.from_config(RetentionConfig(tickets=None)).cutoffs(now).tickets_ms is None
    assert Policy.from_config(RetentionConfig(events=None)).cutoffs(now).tickets_ms is None


def test_the_longest_reopen_after_counts_threaded_mappings_only() -> None:
    class Mapping:
        def __init__(self, threaded: bool, reopen_after_s: float) -> None:
            self.threaded, self.reopen_after_s = threaded, reopen_after_s

    assert longest_reopen_after([]) == 7 * DAY
    assert longest_reopen_after([Mapping(True, 2 * DAY), Mapping(False, 90 * DAY)]) == 2 * DAY  # type: ignore[list-item]


def test_disabled_or_null_limits_keep_forever() -> None:
    """`enabled: false` keeps everything; a null limit keeps that kind."""
    assert Policy.from_config(RetentionConfig(enabled=False)).keeps_everything
    p = Policy.from_config(RetentionConfig(events=None, dead=None))
    assert (p.events_s, p.dead_s, p.attachments_s, p.attempts_s) == (None, None, None, 30 * DAY)
    cut = p.cutoffs(1_000_000_000_000)
    assert cut == Cutoffs(events_ms=None, dead_ms=None, attempts_ms=1_000_000_000_000 - 30 * DAY * 1000,
                          dedup_ms=1_000_000_000_000)


async def test_purge_store_goes_batch_by_batch_until_nothing_is_left(store: SqliteStore) -> None:
    """The batched purge deletes everything aged out, in batches of the size given, reporting progress."""
    for _ in range(12):
        await store.accept(Event.new(source="s", kind="json", channel="webhook", payload={}), [], 0)
    seen: list[int] = []
    total = await purge_store(store, Cutoffs(events_ms=time.time_ns() // 1_000_000 + 1000), 5, pause_s=0,
                              progress=lambda c: seen.append(c.events))
    assert total.events == 12 and seen == [5, 10, 12]


def _aged(path: Path, days: float) -> None:
    when = time.time() - days * DAY
    os.utime(path, (when, when))


def _old_event(files: list[dict[str, object]], days: float) -> Event:
    ev = Event.new(source="mail", kind="email", channel="email", payload={"attachments": files})
    return msgspec.structs.replace(ev, received_at=datetime.fromtimestamp(time.time() - days * DAY, UTC))


async def test_attachment_files_go_once_no_kept_event_names_them(store: SqliteStore, tmp_path: Path) -> None:
    """Old files named only by purged events, or by none, go; files a kept event names, shared files named
    again since, and recent files stay; a dry run counts files and bytes and deletes nothing."""
    folder = tmp_path / "attachments"
    folder.mkdir()
    (folder / MARKER).write_text("")
    kinds = ("kept", "purged", "none", "new", "shared")
    items = {k: attachment(f"{k}.txt", "text/plain", k.encode() * 10) for k in kinds}
    save_attachments(list(items.values()), folder, 1000)
    paths = {k: content_path(folder, v.meta["sha256"]) for k, v in items.items()}
    for k in ("kept", "purged", "none", "shared"):
        _aged(paths[k], 40)
    pending = NewDelivery(id=new_id("dlv"), mapping="m", mapping_version="v1", destination="d",
                          action="create_ticket", body={})
    await store.accept(_old_event([items["kept"].meta], 40), [pending], 0)
    await store.accept(_old_event([items["purged"].meta, items["shared"].meta], 40), [], 0)
    again = attachment("again.txt", "text/plain", b"shared" * 10)  # a new email carrying the same file
    save_attachments([again], folder, 1000)
    await store.accept(_old_event([again.meta], 0), [], 0)

    cutoff = time.time_ns() // 1_000_000 - 30 * DAY * 1000
    dry = await sweep_attachments(store, folder, cutoff, dry_run=True)
    assert (dry.files, dry.bytes) == (1, 40)  # only "none": "purged" is still named by its stored event
    assert all(p.exists() for p in paths.values())

    policy = Policy(events_s=30 * DAY, dead_s=90 * DAY, attempts_s=30 * DAY, attachments_s=30 * DAY)
    done = await sweep(store, policy, folder, 500, pause_s=0)
    assert done.store.events == 1 and (done.attachments.files, done.attachments.bytes) == (2, 100)
    assert {k for k, p in paths.items() if p.exists()} == {"kept", "new", "shared"}


async def test_the_first_sweep_keeps_files_any_stored_event_names(store: SqliteStore, tmp_path: Path) -> None:
    """Before intake kept file times (no marker yet), a file named by a recent event may look old: the first
    sweep reads every event, touches the files they name, writes the marker, and deletes only the rest."""
    folder = tmp_path / "attachments"
    named, unnamed = attachment("a.txt", "text/plain", b"aaaa"), attachment("b.txt", "text/plain", b"bbbb")
    save_attachments([named, unnamed], folder, 1000)
    for item in (named, unnamed):
        _aged(content_path(folder, item.meta["sha256"]), 40)
    await store.accept(_old_event([named.meta], 0), [], 0)
    cutoff = time.time_ns() // 1_000_000 - 30 * DAY * 1000
    got = await sweep_attachments(store, folder, cutoff)
    assert got.files == 1 and (folder / MARKER).exists()
    assert content_path(folder, named.meta["sha256"]).stat().st_mtime > time.time() - DAY
    assert not content_path(folder, unnamed.meta["sha256"]).exists()


async def test_a_sweep_makes_no_attachments_folder(store: SqliteStore, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment whose sources carry no files has no attachments folder, and may be unable to make one
    (systemd's ProtectSystem=strict): the sweep finds nothing to delete or mark there, and reports the store's
    purge as usual rather than failing every time."""
    await store.accept(_old_event([], 40), [], 0)

    def read_only(self: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    folder = tmp_path / "attachments"
    policy = Policy(events_s=30 * DAY, dead_s=90 * DAY, attempts_s=30 * DAY, attachments_s=30 * DAY)
    done = await sweep(store, policy, folder, 500, pause_s=0)
    assert done.store.events == 1 and (done.attachments.files, done.attachments.bytes) == (0, 0)
    assert not folder.exists()


async def test_a_sweep_leaves_an_attachments_folder_it_cannot_write(store: SqliteStore, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An attachments folder that exists but cannot be written (a read-only file system; made by an earlier
    version, under a config whose sources carry no files): the sweep writes no marker there and deletes nothing,
    and reports the store's purge as usual rather than failing every time."""
    await store.accept(_old_event([], 40), [], 0)
    folder = tmp_path / "attachments"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == folder else real(path, mode))
    policy = Policy(events_s=30 * DAY, dead_s=90 * DAY, attempts_s=30 * DAY, attachments_s=30 * DAY)
    done = await sweep(store, policy, folder, 500, pause_s=0)
    assert done.store.events == 1 and (done.attachments.files, done.attachments.bytes) == (0, 0)
    assert list(folder.iterdir()) == []


def test_a_file_named_again_while_being_removed_is_put_back(tmp_path: Path) -> None:
    """A file chosen for removal but touched by intake before it goes is put back where it was."""
    item = attachment("a.txt", "text/plain", b"hello")
    save_attachments([item], tmp_path, 100)
    path = content_path(tmp_path, item.meta["sha256"])
    cutoff = time.time_ns() // 1_000_000 - DAY * 1000  # the file's time (now) is past it: named again
    assert _remove(path, cutoff) is None
    assert path.read_bytes() == b"hello" and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    _aged(path, 2)
    assert _remove(path, cutoff) == 5 and list(path.parent.iterdir()) == []
