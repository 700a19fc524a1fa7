"""Hot reload of the mappings folder.

The folder is polled (names, sizes and modification times, a few times a second: no dependency, and it
works on every filesystem, container mounts included). Once a change has settled (nothing moved for
SETTLE_S), the whole folder is loaded, checked, compiled and its tests run, off the event loop; only
if all of that passes is the new set swapped in, as one assignment, so an event renders with either the
old set or the new one, never a mix. A bad edit leaves the last good set in force: it is logged
(`mappings.reload_failed`), counted, and kept for the admin API. SIGHUP forces a reload at once.
Only the mappings folder is watched: a change to bridge.yaml (sources, destinations, vars) needs a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import structlog
from aiohttp import web

from bridge.errors import BridgeError
from bridge.mapping.mappingset import MAPPING_SUFFIXES, MappingSet
from bridge.mapping.testing import run_tests
from bridge.runtime import Runtime

log = structlog.get_logger("ticketbridge.reload")

POLL_S = 0.2
SETTLE_S = 0.4
Snapshot = tuple[tuple[str, int, int], ...]


class ReloadFailed(BridgeError):
    """The changed mappings did not load, or their tests failed; the last good set stays."""


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
        self._forced = asyncio.Event()
        self._lock = asyncio.Lock()

    def request(self) -> None:
        """Reload now, whatever the folder looks like (SIGHUP)."""
        self._forced.set()

    async def run(self) -> None:
        """Poll until cancelled; a failure inside one round is logged and the watch goes on."""
        pending: Snapshot | None = None
        since = 0.0
        while True:
            try:
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
                log.exception("mappings.watch_crashed", folder=str(self.folder))
                await asyncio.sleep(self.poll_s)

    def _load_and_test(self) -> MappingSet:
        try:
            mappings = self.load()
        except BridgeError as exc:
            raise ReloadFailed(str(exc)) from None
        failed = [r for r in run_tests(mappings, self.rt.config.vars) if not r.passed]
        if failed:
            raise ReloadFailed("\n".join([f"{len(failed)} mapping tests failed:"] + [
                f"{r.where}: {r.mapping}: {r.name}: {r.message}" for r in failed]))
        return mappings

    async def reload(self, reason: str) -> bool:
        """Load, check, compile and test the folder; swap it in if all passed. True when it did (or
        nothing had changed)."""
        async with self._lock:
            status = self.rt.mapping_status
            status.last_attempt_at = datetime.now(UTC)
            try:
                try:
                    new = await asyncio.to_thread(self._load_and_test)
                except ReloadFailed:
                    raise
                except Exception as exc:  # a bug while loading must not stop the watch, nor pass for success
                    log.exception("mappings.reload_crashed", folder=str(self.folder))
                    raise ReloadFailed(f"internal error while loading: {type(exc).__name__}: {exc}") from exc
            except ReloadFailed as exc:
                status.failures += 1
                status.last_result = "failed"
                status.last_error, status.last_error_at = str(exc), status.last_attempt_at
                self.rt.count("mappings.reload_failed")
                log.error("mappings.reload_failed", reason=reason, folder=str(self.folder),
                          error=str(exc), kept_version=self.rt.mappings.version)
                return False
            status.last_result = "ok"
            old = self.rt.mappings
            if new.version == old.version:
                log.info("mappings.unchanged", reason=reason, version=old.version)
                return True
            self.rt.mappings = new
            status.reloads += 1
            self.rt.count("mappings.reloaded")
            log.info("mappings.reloaded", reason=reason, version=new.version, previous=old.version,
                     mappings=sorted(new.mappings))
            return True


def reload_context(reloader: MappingReloader) -> Callable[[web.Application], AsyncIterator[None]]:
    """The watcher as a named background task, with SIGHUP wired to it, for as long as the app runs."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        rt = reloader.rt
        rt.reloader = reloader
        task = asyncio.create_task(reloader.run(), name="mappings-reload")
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
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            rt.reloader = None

    return ctx
