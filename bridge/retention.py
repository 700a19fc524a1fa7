"""Retention: how long events, attempts, dedup keys and attachment files are kept, and the sweep that deletes
what has aged out, in small batches, from the server's background task or `ticketbridge purge`.

An event goes with its deliveries and attempts only once every delivery of it is settled (succeeded, or dead
for the longer `dead` limit), counted from the delivery's last change: pending and in-flight work, and
anything replayed within the limit, stay. Attachment files are content-addressed and shared between events:
intake touches a file each time an event names it, so a file older than its limit is named by no event newer
than it, and only the (few) older events still kept need to be read to know whether it may go.

A conversation (its key holds a customer's message id or phone number) goes once none of its deliveries is kept
and its last message is older than the events limit and the longest `reopen_after` of the mappings in force,
whichever is longer (7 days, the default `reopen_after`, where the mappings are not known): until then its next
message would still follow up on its ticket. An email thread's (conversations.email_keyed) that holds a
ticket and knows its first sender is kept until the `tickets` limit too, if that is longer: a `[#id]` token
joins a ticket only while a conversation of the token's sender holds it, so that the customer's reply to an old
ticket follows up on it rather than opening another, and a stranger's never joins it. A chat's, whose sender is
the customer's phone number or id, is not: no token answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from bridge.config import RetentionConfig
from bridge.conversations import DEFAULT_REOPEN_AFTER_S
from bridge.durations import parse_duration
from bridge.errors import StoreUnavailable
from bridge.mapping.compiled import CompiledMapping
from bridge.store.base import Cutoffs, PurgeCounts, PurgeMark, Store

log = structlog.get_logger("ticketbridge.retention")

PAUSE_SECONDS = 0.05
"""Between two batches when there is more: intake and delivery writes get the writer in between."""
FIRST_SWEEP_SECONDS = 60.0
REFERENCE_SLACK_MS = 600_000
"""An event is stamped just after its attachments are written: the events read to find references reach
this far past the newest file considered."""
MARKER = ".retention"
"""Written in the attachments folder once every file named by a stored event has been touched: from then on
intake keeps the files' times, and a sweep need not read every event."""


@dataclass(frozen=True)
class Policy:
    """Age limits in seconds; None keeps that kind forever. `dedup`: delete expired dedup keys."""

    events_s: float | None
    dead_s: float | None
    attempts_s: float | None
    attachments_s: float | None
    dedup: bool = True
    tickets_s: float | None = RetentionConfig().limit("tickets")
    """How long a conversation holding a ticket its first sender may answer by token is kept after its last
    message, at least (None: forever); by default `retention.tickets`' default."""
    reopen_after_s: float = DEFAULT_REOPEN_AFTER_S
    """The longest `reopen_after` of the mappings: a conversation is kept at least this long after its last
    message (its next one would follow up on its ticket), whatever the events limit."""

    @classmethod
    def from_config(cls, cfg: RetentionConfig) -> Policy:
        return cls(events_s=cfg.limit("events"), dead_s=cfg.limit("dead"), attempts_s=cfg.limit("attempts"),
                   attachments_s=cfg.limit("attachments"), dedup=cfg.enabled, tickets_s=cfg.limit("tickets"))

    def cutoffs(self, now_ms: int) -> Cutoffs:
        def before(limit: float | None) -> int | None:
            return None if limit is None else now_ms - int(limit * 1000)

        conversations = None if self.events_s is None else max(self.events_s, self.reopen_after_s)
        # A conversation holding a ticket goes once it is past both cutoffs (Cutoffs.tickets_ms): a tickets limit
        # shorter than the conversations' keeps it no shorter.
        tickets = None if conversations is None else self.tickets_s
        return Cutoffs(events_ms=before(self.events_s), dead_ms=before(self.dead_s),
                       attempts_ms=before(self.attempts_s), dedup_ms=now_ms if self.dedup else None,
                       conversations_ms=before(conversations), tickets_ms=before(tickets))

    @property
    def keeps_everything(self) -> bool:
        return (self.events_s is None and self.attempts_s is None and self.attachments_s is None
                and not self.dedup)


@dataclass
class FileCounts:
    files: int = 0
    bytes: int = 0


def longest_reopen_after(mappings: Iterable[CompiledMapping]) -> float:
    """The longest `reopen_after` of the threaded mappings: how long a conversation is kept at least (the default
    when none is threaded)."""
    return max((m.reopen_after_s for m in mappings if m.threaded), default=DEFAULT_REOPEN_AFTER_S)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def purge_store(store: Store, cutoffs: Cutoffs, batch: int, *, pause_s: float = PAUSE_SECONDS,
                      progress: Callable[[PurgeCounts], None] | None = None) -> PurgeCounts:
    """Purge in batches of `batch` until nothing more has aged out; `busy` when another process purges."""
    total = PurgeCounts()
    after: PurgeMark | None = None
    while True:
        got = await store.purge(cutoffs, batch, after=after)
        if got.busy:
            total.busy = True
            return total
        total.add(got)
        after = got.after
        if progress is not None:
            progress(total)
        if not got.more:
            return total
        await asyncio.sleep(pause_s)


def _files(folder: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every attachment file (and leftover temporary file) under `folder`, with its stat."""
    with contextlib.suppress(FileNotFoundError):
        for sub in os.scandir(folder):
            if not sub.is_dir(follow_symlinks=False) or len(sub.name) != 2:
                continue
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(sub.path):
                    with contextlib.suppress(FileNotFoundError):
                        if entry.is_file(follow_symlinks=False):
                            yield Path(entry.path), entry.stat(follow_symlinks=False)


def _candidates(folder: Path, cutoff_ms: int) -> list[tuple[Path, os.stat_result]]:
    return [(p, st) for p, st in _files(folder) if st.st_mtime_ns // 1_000_000 < cutoff_ms]


def _remove(path: Path, cutoff_ms: int) -> int | None:
    """Delete an aged-out file unless intake named it again meanwhile; its size when deleted.

    Moved aside first, then looked at again: intake touches a file it finds (so the file aside shows the
    new time, and is put back), or, finding none, writes it anew (and the one aside just goes)."""
    aside = path.with_name(f".purge-{path.name}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    st = os.stat(aside)
    if st.st_mtime_ns // 1_000_000 >= cutoff_ms and not path.name.startswith("."):
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        os.unlink(aside)
        return None
    os.unlink(aside)
    return st.st_size


def _mark(folder: Path, refs: set[str]) -> int:
    """Touch every file a stored event names, then write the marker; how many were touched."""
    touched = 0
    for path, _ in _files(folder):
        if path.name in refs:
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)
                touched += 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text("attachment times are kept by intake\n", encoding="utf-8")
    return touched


def _writable_folder(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK)


async def sweep_attachments(store: Store, folder: Path, cutoff_ms: int, *, dry_run: bool = False) -> FileCounts:
    """Delete (or count) the files under `folder` older than `cutoff_ms` that no stored event names. Nothing when
    there is no `folder` (no source carries files, or none has come yet), which is not made: it may not be
    writable (see attachments_problem), and what intake writes there later keeps its times. Nothing either when it
    cannot be written (a read-only file system, a config whose sources carry no files): nothing there can be
    deleted, nor its marker written, and the store's purge is reported as usual."""
    if not await asyncio.to_thread(_writable_folder, folder):
        return FileCounts()
    candidates = await asyncio.to_thread(_candidates, folder, cutoff_ms)
    marked = await asyncio.to_thread(os.path.exists, folder / MARKER)
    if not candidates and marked:
        return FileCounts()
    if marked:
        newest = max(st.st_mtime_ns // 1_000_000 for _, st in candidates)
        refs = await store.attachment_refs(newest + REFERENCE_SLACK_MS)
    else:  # files written before intake kept their times: any stored event may name them
        refs = await store.attachment_refs(now_ms() + REFERENCE_SLACK_MS)
        if not dry_run:
            touched = await asyncio.to_thread(_mark, folder, refs)
            log.info("retention.attachments_marked", files=touched, folder=str(folder))
    gone = [(p, st) for p, st in candidates if p.name not in refs]
    if dry_run:
        return FileCounts(files=len(gone), bytes=sum(st.st_size for _, st in gone))

    def remove_all() -> FileCounts:
        out = FileCounts()
        for path, _ in gone:
            size = _remove(path, cutoff_ms)
            if size is not None:
                out.files += 1
                out.bytes += size
        return out

    return await asyncio.to_thread(remove_all)


@dataclass
class SweepResult:
    store: PurgeCounts
    attachments: FileCounts
    seconds: float


async def sweep(store: Store, policy: Policy, folder: Path, batch: int, *, pause_s: float = PAUSE_SECONDS,
                progress: Callable[[PurgeCounts], None] | None = None) -> SweepResult:
    """One full sweep: the store in batches, then the attachment files."""
    started = time.monotonic()
    now = now_ms()
    counts = await purge_store(store, policy.cutoffs(now), batch, pause_s=pause_s, progress=progress)
    files = FileCounts()
    if policy.attachments_s is not None and not counts.busy:
        files = await sweep_attachments(store, folder, now - int(policy.attachments_s * 1000))
    return SweepResult(store=counts, attachments=files, seconds=time.monotonic() - started)


async def run_retention(store: Store, cfg: RetentionConfig, folder: Path,
                        count: Callable[[str, int, str], None],
                        reopen_after: Callable[[], float] = lambda: DEFAULT_REOPEN_AFTER_S) -> None:
    """The server's background task: a sweep every `retention.every`, logged and counted when it deletes.
    `reopen_after`: the longest `reopen_after` of the mappings in force at each sweep."""
    policy = Policy.from_config(cfg)
    if policy.keeps_everything:
        return
    every = parse_duration(cfg.every)
    await asyncio.sleep(min(every, FIRST_SWEEP_SECONDS))
    while True:
        try:
            done = await sweep(store, replace(policy, reopen_after_s=reopen_after()), folder, cfg.batch)
        except (StoreUnavailable, OSError) as exc:
            log.warning("retention.failed", error=str(exc), note="the next sweep tries again")
        else:
            c = done.store
            for kind, n in (("events", c.events), ("deliveries", c.deliveries), ("attempts", c.attempts),
                            ("dedup", c.dedup), ("conversations", c.conversations),
                            ("attachments", done.attachments.files)):
                if n:
                    count("retention.purged", n, kind)
            if c.events or c.attempts or c.dedup or c.conversations or done.attachments.files:
                log.info("retention.purged", events=c.events, deliveries=c.deliveries, attempts=c.attempts,
                         dedup=c.dedup, conversations=c.conversations, attachments=done.attachments.files,
                         attachment_bytes=done.attachments.bytes, seconds=round(done.seconds, 3))
        await asyncio.sleep(every)
