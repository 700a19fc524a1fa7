"""What the CLI's store tests share: a config folder whose SQLite store file is seeded, and a run of `main`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from bridge.cli import main
from bridge.config import load_config
from bridge.registries import REGISTRIES


def seeded_config(folder: Path, config: str, mapping: str,
                  seed: Callable[[Path], Coroutine[Any, Any, None]]) -> Path:
    """bridge.yaml and mappings/partner.yaml written to `folder`, the store the config names seeded by `seed`;
    the config file's path."""
    (folder / "bridge.yaml").write_text(config)
    (folder / "mappings").mkdir()
    (folder / "mappings" / "partner.yaml").write_text(mapping)
    cfg = load_config(folder / "bridge.yaml", {}, registries=REGISTRIES)
    assert cfg.store_url.path is not None
    asyncio.run(seed(cfg.store_url.path))
    return folder / "bridge.yaml"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`ticketbridge <args>`: its exit code, stdout and stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err
