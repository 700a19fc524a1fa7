"""`ticketbridge check`: the config, every mapping, and every mapping's tests."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bridge.cli.common import config_from
from bridge.cli.mapping_tools import load_report
from bridge.mapping.mappingset import MappingSet
from bridge.mapping.testing import describe_failure, run_tests


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("check", parents=[common], help="validate the config and mappings, and run mapping tests")
    p.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    config = config_from(args)
    if config is None:
        return 1
    if not config.mappings_dir.is_dir():
        print(f"{config.mappings_dir}: the mappings folder does not exist", file=sys.stderr)
        return 1
    report = load_report(config)
    for error in report.errors:
        print(error.render(), file=sys.stderr)
    mappings = MappingSet.build(report.mappings)
    results = run_tests(mappings, config.vars)
    failed = [r for r in results if not r.passed]
    for r in failed:
        print(describe_failure(r), file=sys.stderr)
    for m in sorted(report.mappings, key=lambda m: m.name):
        if not m.spec.tests:
            print(f"{m.file}: {m.name}: warning: this mapping has no tests", file=sys.stderr)
    problems = len(report.errors) + len(failed)
    files = f"{len(report.mappings)} mappings" + (f", {len(report.broken)} broken files" if report.broken else "")
    verdict = "check FAILED: " if problems else "config ok: "
    print(verdict + f"{len(config.sources)} sources, {len(config.destinations)} destinations; {files}"
          + (f" (version {mappings.version})" if not report.broken else "")
          + f"; {len(results) - len(failed)} passed, {len(failed)} failed"
          + (f"; {len(report.errors)} mapping errors" if report.errors else ""))
    return 1 if problems else 0
