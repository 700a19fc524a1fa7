"""Faults the tests cause on purpose: a small filesystem to fill up, the event loop's default executor held."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from tests.conftest import eventually


@contextmanager
def tiny_disk(folder: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `folder` (needs root: the test is skipped, saying so, where it cannot mount;
    in CI, which runs as root, it fails instead, so a lost permission cannot hide the disk-full tests)."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs to fill: {done.stderr.decode().strip()}")
        pytest.skip(f"cannot mount a tmpfs to fill: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Write a file in `folder` until its disk is full; delete the file to free the space again."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as out:
        while True:
            try:
                out.write(b"\0" * 4096)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return filler


@asynccontextmanager
async def default_executor_held() -> AsyncIterator[None]:
    """The running event loop's default executor given one thread, held busy until the block ends: what runs there
    (asyncio.to_thread, loop.getaddrinfo) waits meanwhile, as when hung host name look-ups fill it."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1, thread_name_prefix="default-held"))
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait(60)

    held = loop.run_in_executor(None, hold)
    await eventually(started.is_set)
    try:
        yield
    finally:
        release.set()
        await held
