"""Hot reload of the mappings folder.

The folder is polled (names, sizes and modification times, a few times a second: no dependency, and it
works on every filesystem, container mounts included). Once a change has settled (nothing moved for
SETTLE_S), the whole folder is loaded, checked, compiled and its tests run, off the event loop; only
if all of that passes is the new set swapped in, as one assignment, so an event renders with either the
old set or the new one, never a mix; a set naming a mapping the store cannot keep (kept_names: a
character a LATIN1 database lacks) is refused too. A bad edit leaves the last good set in force: it is logged
(`mappings.reload_failed`), counted, and kept for the admin API. SIGHUP forces a reload at once.

The load and its tests run in a daemon thread under a deadline (`mappings_reload_timeout`): a reload
that runs past it is reported as failed, the thread is told to stop at the next test, and shutdown never
waits for it. Each set that loads and passes its tests is saved in the store as the last good set, which
`serve` falls back on when it starts with a broken folder (`mappings_on_start_error: last_good`).

A change to bridge.yaml (sources, destinations, vars) needs a restart: the watch notices it and logs
`config.changed` once per change, and the admin API shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog
from aiohttp import web

from bridge.errors import BridgeError, ErrorList, MappingError, StoreUnavailable
from bridge.kept_names import mapping_names, unheld_names
from bridge.mapping.mappingset import MAPPING_SUFFIXES, MappingSet
from bridge.mapping.testing import TestResult, run_tests
from bridge.runtime import MappingStatus, Runtime
from bridge.store.base import Store, StoredMappingSet

log = structlog.get_logger("ticketbridge.reload")

POLL_S = 0.2
SETTLE_S = 0.4
Snapshot = tuple[tuple[str, int, int], ...]
T = TypeVar("T")


class ReloadFailed(BridgeError):
    """The changed mappings did not load, or their tests failed; the last good set stays."""


class Stopped(BridgeError):
    """A load-and-test told to stop (its deadline passed, or the server is stopping)."""


async def in_daemon_thread(fn: Callable[[], T], timeout_s: float, name: str) -> T:
    """`fn()` in a daemon thread, awaited for at most `timeout_s` (TimeoutError past it). A thread cannot
    be killed: past the deadline it is left to finish on its own, and, being a daemon, it never holds the
    process open at exit (the loop's default executor would)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def target() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task as it is
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed while this ran: nobody is waiting
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await asyncio.wait_for(done, timeout_s)


def file_digest(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def file_state(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def snapshot(folder: Path) -> Snapshot:
    """What the folder's mapping files look like now: (name, size, mtime_ns) of each."""
    out = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return (("", -1, -1),)
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(MAPPING_SUFFIXES):
            continue
        try:
            st = entry.stat()
        except OSError:
            continue  # removed between the listing and the stat: the next poll sees it gone
        out.append((entry.name, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


class MappingReloader:
    """Watches `rt.config.mappings_dir` and swaps `rt.mappings` when a checked, tested set is ready."""

    def __init__(self, rt: Runtime, load: Callable[[], MappingSet], *, poll_s: float = POLL_S,
                 settle_s: float = SETTLE_S) -> None:
        self.rt = rt
        self.load = load
        self.poll_s = poll_s
        self.settle_s = settle_s
        self.folder = rt.config.mappings_dir
        self.seen = snapshot(self.folder)
        self.timeout_s = rt.config.mappings_reload_timeout_s
        self._forced = asyncio.Event()
        self._lock = asyncio.Lock()
        self._stop_test = threading.Event()
        self._worker: asyncio.Future[Any] | None = None
        self.config_file = rt.config.file
        # The server runs on the bytes it loaded, not on what the file holds now: an edit made between the load
        # and this watch (a slow start) is a change too. A state no file has: the first check reads the file.
        loaded = rt.config.file_digest
        self._config_state: tuple[int, int] | None = file_state(self.config_file) if loaded is None else (-1, -1)
        self._config_digest = self._config_at_start = loaded if loaded is not None else file_digest(self.config_file)

    def request(self) -> None:
        """Reload now, whatever the folder looks like (SIGHUP)."""
        self._forced.set()

    async def run(self) -> None:
        """Poll until cancelled; a failure inside one round is logged and the watch goes on."""
        pending: Snapshot | None = None
        since = 0.0
        while True:
            try:
                self.check_config()
                try:
                    await asyncio.wait_for(self._forced.wait(), self.poll_s)
                    self._forced.clear()
                    pending = None
                    self.seen = snapshot(self.folder)
                    await self.reload("signal")
                    continue
                except TimeoutError:
                    pass
                current = snapshot(self.folder)
                now = time.monotonic()
                if current == self.seen:
                    pending = None
                elif current != pending:
                    pending, since = current, now
                elif now - since >= self.settle_s:
                    self.seen, pending = current, None
                    await self.reload("change")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("mappings.watch_crashed", folder=self.rt.config.shown_mappings_dir)
                await asyncio.sleep(self.poll_s)

    def check_config(self) -> None:
        """Log `config.changed` (once per change) when bridge.yaml differs from the one the server started
        with: what it sets (sources, destinations, vars) is read only at start."""
        state = file_state(self.config_file)
        if state == self._config_state:
            return
        self._config_state = state
        digest = file_digest(self.config_file)
        if digest == self._config_digest:
            return  # touched, not changed
        self._config_digest = digest
        status = self.rt.mapping_status
        if digest == self._config_at_start:
            status.config_changed_at = None
            log.info("config.restored", file=str(self.config_file), note="the config is as the server started with")
            return
        status.config_changed_at = datetime.now(UTC)
        log.warning("config.changed", file=str(self.config_file),
                    note="restart needed: the running server keeps the config it started with")

    def _load_and_test(self) -> MappingSet:
        try:
            mappings = self.load()
        except BridgeError as exc:
            raise ReloadFailed(str(exc)) from None
        failed = [r for r in self.test(mappings) if not r.passed]
        if failed:
            raise ReloadFailed("\n".join([f"{len(failed)} mapping tests failed:"] + [
                f"{r.where}: {r.mapping}: {r.name}: {r.message}" for r in failed]))
        return mappings

    def test(self, mappings: MappingSet) -> list[TestResult]:
        """Every test of every mapping, stopping between tests when told to (`Stopped`)."""
        return run_tests(mappings, self.rt.config.vars, before_each=self._stop_if_told)

    def _stop_if_told(self) -> None:
        if self._stop_test.is_set():
            raise Stopped

    async def _off_loop(self, fn: Callable[[], T], what: str) -> T:
        """`fn` in a daemon thread under the reload deadline; ReloadFailed past it."""
        if self._worker is not None and not self._worker.done():
            raise ReloadFailed(f"the previous {what} is still running past its deadline")
        self._stop_test.clear()
        self._worker = asyncio.ensure_future(in_daemon_thread(fn, self.timeout_s, f"mappings-{what}"))
        try:
            return await asyncio.shield(self._worker)
        except TimeoutError:
            self._stop_test.set()
            raise ReloadFailed(f"the {what} of the mappings ran past its deadline of {self.timeout_s:g} s "
                               "(mappings_reload_timeout); a mapping test may loop or render too slowly") from None
        except asyncio.CancelledError:
            self._stop_test.set()  # the server is stopping: the thread stops at its next test, unawaited
            self._worker.cancel()
            raise

    async def reload(self, reason: str) -> bool:
        """Load, check, compile and test the folder; swap it in if all passed. True when it did (or
        nothing had changed)."""
        async with self._lock:
            status = self.rt.mapping_status
            status.last_attempt_at = datetime.now(UTC)
            try:
                try:
                    new = await self._off_loop(self._load_and_test, "reload")
                except ReloadFailed:
                    raise
                except Exception as exc:  # a bug while loading must not stop the watch, nor pass for success
                    log.exception("mappings.reload_crashed", folder=self.rt.config.shown_mappings_dir)
                    raise ReloadFailed(f"internal error while loading: {type(exc).__name__}: {exc}") from exc
                self._check_not_emptied(new)
                await self._check_names(new)
            except ReloadFailed as exc:
                status.failures += 1
                status.last_result = "failed"
                status.last_error, status.last_error_at = str(exc), status.last_attempt_at
                if status.source == "last_good":
                    status.folder_error = str(exc)
                self.rt.count("mappings.reload_failed")
                log.error("mappings.reload_failed", reason=reason, folder=self.rt.config.shown_mappings_dir,
                          error=str(exc), kept_version=self.rt.mappings.version)
                return False
            old = self.rt.mappings
            if new.version != old.version:
                self.rt.mappings = new  # swapped before anything else reads the status, or awaits
                status.reloads += 1
                self.rt.count("mappings.reloaded")
            status.last_result = "ok"
            status.source, status.folder_error = "folder", None
            if new.version == old.version:
                log.info("mappings.unchanged", reason=reason, version=old.version)
            else:
                log.info("mappings.reloaded", reason=reason, version=new.version, previous=old.version,
                         mappings=sorted(new.mappings))
            await self._warn_stranded(old, new)
            await self.save(new)
            return True

    async def _warn_stranded(self, old: MappingSet, new: MappingSet) -> None:
        """Log `mappings.removed_with_work` (a warning) for each mapping `new` no longer has whose deliveries are
        pending, in flight or dead, or whose conversations are open: the reload stands (a removal or a rename may
        be meant), but its follow-ups go dead when claimed and its dead deliveries cannot be re-rendered with it."""
        removed = sorted(set(old.mappings) - set(new.mappings))
        store = self.rt.store
        if not removed or store is None:
            return
        now = time.time_ns() // 1_000_000
        try:
            backlog = await store.mapping_backlog(
                {name: now - int(old.mappings[name].reopen_after_s * 1000) for name in removed})
        except StoreUnavailable as exc:
            log.warning("mappings.removed_unchecked", mappings=removed, error=str(exc),
                        note="the store could not say whether the removed mappings have deliveries left")
            return
        for name in removed:
            counts = backlog.get(name)
            if not counts:
                continue
            log.warning("mappings.removed_with_work", mapping=name, pending=counts.get("pending", 0),
                        in_flight=counts.get("in_flight", 0), dead=counts.get("dead", 0),
                        conversations=counts.get("conversations", 0), mappings=sorted(new.mappings),
                        note=f"mapping {name!r} is no longer loaded: its pending creates go as rendered, but its "
                             "conversations' follow-ups go dead when claimed, and its dead deliveries cannot be "
                             "re-rendered with it. Renamed? Put the old name back, or replay them with `ticketbridge "
                             f"replay --rerender --mapping NEW` (`deliveries list --mapping {name}` lists them)")

    def _check_not_emptied(self, new: MappingSet) -> None:
        """ReloadFailed when the folder now loads to no mapping while the set in force has some, unless
        `mappings_allow_empty`: a deploy or an `rsync --delete` that moved every file away must not leave every
        event unmatched."""
        in_force = sorted(self.rt.mappings.mappings)
        if new.mappings or not in_force or self.rt.config.mappings_allow_empty:
            return
        raise ReloadFailed(
            f"the mappings folder {self.rt.config.shown_mappings_dir} holds no mapping file (*.yaml, *.yml) while "
            f"{len(in_force)} mapping(s) are in force ({_names(in_force)}): refused, the set in force is kept. Put the "
            "mapping files back (a deploy or `rsync --delete` may have moved them away); to run with no mappings, set "
            "`mappings_allow_empty: true` in bridge.yaml and restart")

    async def _check_names(self, mappings: MappingSet) -> None:
        """ReloadFailed when the store cannot keep the name of one of `mappings` (kept_names), or cannot be asked."""
        store = self.rt.store
        if store is None:
            return
        try:
            unheld = await unheld_names(store, mapping_names(mappings))
        except StoreUnavailable as exc:
            raise ReloadFailed(f"the database could not be asked whether it can keep the mapping names "
                               f"({exc}); save a mapping again or send SIGHUP once it answers") from None
        if unheld:
            raise ReloadFailed(str(ErrorList(unheld)))

    async def save(self, mappings: MappingSet) -> None:
        """Keep `mappings` (loaded, and its tests passed) in the store as the last good set."""
        store = self.rt.store
        status = self.rt.mapping_status
        if store is None or _is_kept(status, mappings):
            return
        if not mappings.mappings and not self.rt.config.mappings_allow_empty:
            log.info("mappings.not_saved", version=mappings.version,
                     error="an empty set is not kept as the last good one (mappings_allow_empty is false)")
            return
        try:
            await store.save_mapping_set(mappings.files, mappings.version)
        except StoreUnavailable as exc:
            log.warning("mappings.save_failed", version=mappings.version, error=str(exc))
            return
        status.stored_version, status.stored_files = mappings.version, dict(mappings.files)
        status.stored_at = datetime.now(UTC)
        log.info("mappings.saved", version=mappings.version, files=sorted(mappings.files))

    async def keep_initial(self) -> None:
        """At start, with the folder's set in force: run its tests, and keep it as the last good set if
        they pass (a set whose tests fail is served, as before, but never kept)."""
        try:
            await self._keep_initial()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("mappings.keep_crashed")

    async def _keep_initial(self) -> None:
        store = self.rt.store
        if store is None or self.rt.mapping_status.source != "folder":
            return
        try:
            stored = await store.load_mapping_set()
        except StoreUnavailable:
            stored = None
        status = self.rt.mapping_status
        if stored is not None:
            _note_kept(status, stored)
        current = self.rt.mappings
        if _is_kept(status, current):
            return
        async with self._lock:
            try:
                failed = [r for r in await self._off_loop(lambda: self.test(current), "start-up test")
                          if not r.passed]
            except ReloadFailed as exc:
                log.warning("mappings.not_saved", version=current.version, error=str(exc))
                return
            if failed:
                log.warning("mappings.not_saved", version=current.version,
                            error=f"{len(failed)} mapping tests failed, so this set is not kept as the last good one")
                return
            if self.rt.mappings is current:
                await self.save(current)


def _note_kept(status: MappingStatus, kept: StoredMappingSet) -> datetime:
    """Note `kept` as the last good set the store holds; returns when it was saved."""
    status.stored_version, status.stored_files = kept.version, kept.files
    status.stored_at = datetime.fromtimestamp(kept.saved_at_ms / 1000, UTC)
    return status.stored_at


def _is_kept(status: MappingStatus, mappings: MappingSet) -> bool:
    """Whether `mappings` is the last good set the store holds, as far as this process knows."""
    return status.stored_version == mappings.version and status.stored_files == mappings.files


async def serve_last_good(rt: Runtime, store: Store, folder_errors: ErrorList,
                          compile_files: Callable[[dict[str, str]], MappingSet]) -> None:
    """After a start with a broken mappings folder: put the last good set kept in `store` in force, and
    say what is wrong with the folder. Raises ErrorList (the folder's errors) when no set is kept, or
    when the kept one does not load with this config either."""
    stored = await store.load_mapping_set()
    if stored is None:
        raise ErrorList([*folder_errors.errors, rt.config.mappings_error(
            "no last good mapping set is kept in the store to serve instead (one is kept once a set loads "
            "and passes its tests); fix the files above", MappingError)])
    try:
        mappings = compile_files(stored.files)
    except ErrorList as exc:
        raise ErrorList([*folder_errors.errors, rt.config.mappings_error(
            f"the last good mapping set kept in the store (version {stored.version}) does not load with this "
            f"config either: {exc.errors[0].render()}", MappingError)]) from None
    status = rt.mapping_status
    rt.mappings = mappings
    status.source, status.folder_error = "last_good", str(folder_errors)
    saved_at = _note_kept(status, stored)
    rt.count("mappings.started_degraded")
    log.error("mappings.folder_broken", folder=rt.config.shown_mappings_dir,
              errors=[e.render() for e in folder_errors.errors], serving="last_good", version=mappings.version,
              saved_at=saved_at.isoformat(),
              note="the folder's mappings did not load: serving the last good set kept in the store")


async def serve_last_good_if_empty(rt: Runtime, store: Store,
                                   compile_files: Callable[[dict[str, str]], MappingSet]) -> None:
    """At start, with a mappings folder that loads to no mapping (and `mappings_allow_empty` false): when the
    store keeps a last good set that has mappings, serve it instead, degraded, as after a broken folder (with
    `mappings_on_start_error: fail`, raise ErrorList). A store that keeps none (a first start) serves the
    empty folder, with a warning."""
    try:
        stored = await store.load_mapping_set()
    except StoreUnavailable as exc:
        raise ErrorList([rt.config.mappings_error(
            f"the mappings folder holds no mapping file, and the store could not be asked for the last good set "
            f"({exc})", MappingError)]) from None
    if stored is None or not stored.files:
        log.warning("mappings.none", folder=rt.config.shown_mappings_dir,
                    note="the mappings folder holds no mapping file: every event is stored unmatched")
        return
    names = sorted(stored.files)
    problem = ErrorList([rt.config.mappings_error(
        f"the mappings folder holds no mapping file (*.yaml, *.yml), while the last good set kept in the store "
        f"(version {stored.version}) has {len(names)} ({_names(names)}); put the mapping files back, or, to run "
        "with no mappings, set `mappings_allow_empty: true` in bridge.yaml", MappingError)])
    if rt.config.mappings_on_start_error == "fail":
        raise problem
    await serve_last_good(rt, store, problem, compile_files)


def _names(names: list[str], most: int = 10) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def reload_context(reloader: MappingReloader) -> Callable[[web.Application], AsyncIterator[None]]:
    """The watcher as a named background task, with SIGHUP wired to it, for as long as the app runs."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        rt = reloader.rt
        rt.reloader = reloader
        task = asyncio.create_task(reloader.run(), name="mappings-reload")
        keep = asyncio.create_task(reloader.keep_initial(), name="mappings-keep")
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, reloader.request)
            hup = True
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP here
            hup = False
        try:
            yield
        finally:
            if hup:
                loop.remove_signal_handler(signal.SIGHUP)
            for t in (keep, task):
                t.cancel()
            for t in (keep, task):
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            rt.reloader = None

    return ctx
