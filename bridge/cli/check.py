"""`ticketbridge check`: the config, every mapping, and every mapping's tests."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bridge.app import load_mappings
from bridge.cli.common import config_from, print_errors
from bridge.errors import ErrorList
from bridge.mapping.testing import run_tests


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("check", parents=[common], help="validate the config and mappings, and run mapping tests")
    p.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    config = config_from(args)
    if config is None:
        return 1
    try:
        mappings = load_mappings(config)
    except ErrorList as exc:
        print_errors(exc)
        return 1
    results = run_tests(mappings, config.vars)
    failed = [r for r in results if not r.passed]
    for r in failed:
        print(f"{r.file}: {r.mapping}: {r.name}: {r.message}", file=sys.stderr)
        if r.expected is not None or r.actual is not None:
            print(f"  expected: {r.expected!r}\n  actual:   {r.actual!r}", file=sys.stderr)
    print(f"config ok: {len(config.sources)} sources, {len(config.destinations)} destinations; "
          f"{len(mappings.mappings)} mappings (version {mappings.version}); "
          f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
