"""`ticketbridge purge`: delete by hand what has aged out (or, with --dry-run, count it), in the batches the
server's retention sweep uses, against the store a running server may be using."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import replace
from typing import Any

import msgspec

from bridge.app import load_mappings
from bridge.cli.common import config_from, with_store
from bridge.config import RETENTION_BATCH_MOST, Config
from bridge.durations import parse_duration
from bridge.errors import ErrorList, StoreUnavailable
from bridge.retention import FileCounts, Policy, longest_reopen_after, now_ms, purge_store, sweep_attachments
from bridge.store.base import PurgeCounts, Store

KINDS = ("events", "attempts", "attachments", "dedup")
PROGRESS_SECONDS = 2.0
BUSY_WAIT_SECONDS = 60.0
PAUSE_SECONDS = 0.01


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("purge", parents=[common],
                       help="delete events, attempts, dedup keys and attachment files that have aged out")
    p.add_argument("--older-than", metavar="AGE", type=_age,
                   help="age limit for events, attempts and attachments, e.g. 30d (default: the config's "
                        "retention limits)")
    p.add_argument("--dead-older-than", metavar="AGE", type=_age,
                   help="age limit for events with a dead delivery (default: the config's `retention.dead`, "
                        "and never less than --older-than)")
    p.add_argument("--kind", action="append", choices=KINDS,
                   help="only this kind (repeat for several; default: all)")
    p.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    p.add_argument("--batch", type=int, default=None, metavar="N",
                   help="rows per transaction (default: the config's `retention.batch`)")
    p.set_defaults(run=run_purge)


def _age(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def policy_for(args: argparse.Namespace, config: Config) -> Policy:
    """The configured policy (even when the server's sweep is disabled), with the limits given overriding it,
    restricted to the kinds asked for."""
    # A purge by hand applies the configured limits even when the server's sweep is disabled.
    configured = Policy.from_config(msgspec.structs.replace(config.retention, enabled=True))
    older = args.older_than
    events = older if older is not None else configured.events_s
    attempts = older if older is not None else configured.attempts_s
    attachments = older if older is not None else configured.attachments_s
    dead = args.dead_older_than if args.dead_older_than is not None else configured.dead_s
    if args.dead_older_than is None and dead is not None and older is not None:
        dead = max(dead, older)
    kinds = set(args.kind or KINDS)
    return Policy(events_s=events if "events" in kinds else None,
                  dead_s=dead if "events" in kinds else None,
                  attempts_s=attempts if "attempts" in kinds else None,
                  attachments_s=attachments if "attachments" in kinds else None,
                  dedup="dedup" in kinds, tickets_s=configured.tickets_s)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KB", "MB", "GB"):
        value /= 1024
        if value < 1024 or unit == "GB":
            break
    return f"{value:.1f} {unit}"


def _report(counts: PurgeCounts, files: FileCounts | None, policy: Policy) -> list[str]:
    lines = []
    if policy.events_s is not None:
        lines.append(f"events       {counts.events} (with {counts.deliveries} deliveries)")
    if policy.events_s is not None or policy.attempts_s is not None:
        lines.append(f"attempts     {counts.attempts}")
    if policy.events_s is not None:
        lines.append(f"conversations {counts.conversations}")
    if policy.dedup:
        lines.append(f"dedup keys   {counts.dedup}")
    if files is not None:
        exact = f" ({files.bytes} bytes)" if files.bytes >= 1024 else ""
        lines.append(f"attachments  {files.files} files, {_size(files.bytes)}{exact}")
    return lines


def run_purge(args: argparse.Namespace) -> int:
    config = config_from(args)
    if config is None:
        return 2
    if args.batch is not None and not 1 <= args.batch <= RETENTION_BATCH_MOST:
        print(f"--batch {args.batch}: give a number of rows from 1 to {RETENTION_BATCH_MOST}", file=sys.stderr)
        return 2
    policy = policy_for(args, config)
    with contextlib.suppress(ErrorList):  # the mappings' reopen_after, where they load; else the default's
        policy = replace(policy, reopen_after_s=longest_reopen_after(load_mappings(config).mappings.values()))
    if policy.keeps_everything:
        print("nothing to purge: every kind asked for is kept forever by the config (give --older-than AGE)",
              file=sys.stderr)
        return 2
    return asyncio.run(_run(args, config, policy, args.batch or config.retention.batch))


async def _run(args: argparse.Namespace, config: Config, policy: Policy, batch: int) -> int:
    async def purge(store: Store) -> int:
        try:
            return await _purge(args, config, store, policy, batch)
        except StoreUnavailable as exc:
            print(f"the purge stopped: {exc}; what was deleted so far stays deleted, run it again to go on",
                  file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"the attachments folder {config.attachments_dir}: {exc}", file=sys.stderr)
            return 1

    # Only deletes, writing no name: it goes on past a name the store cannot keep (see with_store).
    return await with_store(config, purge)


async def _purge(args: argparse.Namespace, config: Config, store: Store, policy: Policy, batch: int) -> int:
    now = now_ms()
    cutoffs = policy.cutoffs(now)
    folder = config.attachments_dir
    attachments_cutoff = None if policy.attachments_s is None else now - int(policy.attachments_s * 1000)
    if args.dry_run:
        counts = await store.purge(cutoffs, batch, dry_run=True)
        files = None
        if attachments_cutoff is not None:
            files = await sweep_attachments(store, folder, attachments_cutoff, dry_run=True)
        print("would purge:")
        print("\n".join("  " + line for line in _report(counts, files, policy)))
        return 0

    started = last = time.monotonic()

    def progress(total: PurgeCounts) -> None:
        nonlocal last
        if time.monotonic() - last >= PROGRESS_SECONDS:
            last = time.monotonic()
            print(f"purging: {total.events} events, {total.attempts} attempts, {total.dedup} dedup keys so far "
                  f"({last - started:.0f} s)", file=sys.stderr, flush=True)

    deadline = time.monotonic() + BUSY_WAIT_SECONDS
    counts = PurgeCounts()
    while True:
        got = await purge_store(store, cutoffs, batch, pause_s=PAUSE_SECONDS, progress=progress)
        counts.add(got)
        if not got.busy:
            break
        if time.monotonic() > deadline:
            print(f"another ticketbridge process has been purging this store for over {BUSY_WAIT_SECONDS:.0f} s; "
                  "nothing was deleted here: try again later", file=sys.stderr)
            return 1
        print("another ticketbridge process is purging this store; waiting for it", file=sys.stderr, flush=True)
        await asyncio.sleep(1.0)
    files = None
    if attachments_cutoff is not None:
        files = await sweep_attachments(store, folder, attachments_cutoff)
    print(f"purged in {time.monotonic() - started:.1f} s:")
    print("\n".join("  " + line for line in _report(counts, files, policy)))
    return 0
