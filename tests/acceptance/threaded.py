"""The whole app on a loopback port, its event loop run in a thread, for clients that block (schemathesis,
the CLI's `--url`): started and stopped in the calling thread, where the reloader's signal handler lives."""

from __future__ import annotations

import asyncio
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

from bridge.app import build_app
from bridge.config import load_config
from bridge.registries import REGISTRIES


@contextmanager
def serve_in_thread(root: Path, config_yaml: str, mappings: dict[str, str]) -> Iterator[str]:
    """Yield the server's base URL."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "bridge.yaml").write_text(textwrap.dedent(config_yaml))
    (root / "mappings").mkdir(exist_ok=True)
    for name, text in mappings.items():
        (root / "mappings" / f"{name}.yaml").write_text(textwrap.dedent(text))
    config = load_config(root / "bridge.yaml", {}, registries=REGISTRIES)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(build_app(config), access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    host, port = runner.addresses[0][:2]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(runner.cleanup())
        loop.close()
