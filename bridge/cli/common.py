"""What every verb shares: loading the config and reporting its errors."""

from __future__ import annotations

import argparse
import sys

from bridge.config import Config, load_config, resolve_config_path
from bridge.errors import BridgeError, ErrorList
from bridge.registries import REGISTRIES


def config_from(args: argparse.Namespace) -> Config | None:
    """The config, or None after printing every error to stderr."""
    path = resolve_config_path(args.config)
    if path is not None and not path.is_file():
        print(f"{path}: no such config file", file=sys.stderr)
        return None
    try:
        return load_config(path, registries=REGISTRIES)
    except ErrorList as exc:
        print_errors(exc)
        return None


def print_errors(exc: BridgeError) -> None:
    errors = exc.errors if isinstance(exc, ErrorList) else [exc]
    for err in errors:
        print(str(err), file=sys.stderr)
    if len(errors) > 1:
        print(f"{len(errors)} errors", file=sys.stderr)
