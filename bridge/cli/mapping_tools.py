"""`ticketbridge test` and `ticketbridge render`: a mapping's own tests, and one input rendered (and explained)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import yaml

from bridge.app import destination_targets
from bridge.cli.common import config_from
from bridge.cli.raw_render import run_raw_render
from bridge.config import Config
from bridge.errors import MappingError
from bridge.mapping.mappingset import MAPPING_SUFFIXES, LoadResult, MappingSet, load_mapping_files, mapping_files
from bridge.mapping.model import TestInput
from bridge.mapping.testing import context_for, describe_failure, run_tests
from bridge.mapping.trace import format_trace


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    t = sub.add_parser("test", parents=[common], help="run the tests written beside each mapping")
    t.add_argument("paths", nargs="*", metavar="PATH",
                   help="mapping files or folders (default: the config's mappings folder)")
    t.add_argument("-v", "--verbose", action="store_true", help="list the tests that pass too")
    t.set_defaults(run=run_test_command)
    r = sub.add_parser("render", parents=[common],
                       help="render one input through one mapping and print the vendor body as JSON")
    r.add_argument("mapping", metavar="MAPPING", nargs="?",
                   help="a mapping's name, or the path of a mapping file (with --raw: optional, default every "
                        "mapping of the source)")
    given = r.add_mutually_exclusive_group(required=True)
    given.add_argument("--input", metavar="FILE", help="YAML or JSON shaped like a mapping test's input: payload, "
                                                       "and optionally headers, event, vars ('-' reads stdin)")
    given.add_argument("--payload", metavar="FILE", help="a bare payload, YAML or JSON ('-' reads stdin)")
    given.add_argument("--raw", metavar="FILE", help="a provider's raw request body, run through --source's "
                                                     "handler first, as intake would ('-' reads stdin)")
    r.add_argument("--source", metavar="NAME", help="with --raw: the configured source the body was posted to")
    r.add_argument("--header", metavar="K:V", action="append",
                   help="with --raw: a request header (repeat it), e.g. 'Content-Type:application/json'")
    r.add_argument("--verify", action="store_true",
                   help="with --raw: check the source's auth and signature too (off: a saved body rarely has a "
                        "valid one)")
    r.add_argument("--explain", action="store_true",
                   help="show on stderr, per field, its source, raw value, each transform, and any default or map")
    r.add_argument("--fields", action="store_true", help="print the mapping's fields, not the vendor's body")
    r.set_defaults(run=run_render)


def load_report(config: Config, paths: list[Path] | None = None) -> LoadResult:
    """Load the given mapping files (default: the config's folder), keeping going past broken ones."""
    files = mapping_files(config.mappings_dir) if paths is None else paths
    return load_mapping_files(files, sources=set(config.sources), destinations=destination_targets(config),
                              vars_=config.vars, named=config.mapping_file_name)


def _expand(paths: list[str]) -> tuple[list[Path], list[str]]:
    files: list[Path] = []
    problems: list[str] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files.extend(mapping_files(path))
        elif path.is_file():
            files.append(path)
        else:
            problems.append(f"{given}: no such mapping file or folder")
    return list(dict.fromkeys(files)), problems


def run_test_command(args: argparse.Namespace) -> int:
    config = config_from(args)
    if config is None:
        return 2
    files, problems = _expand(args.paths) if args.paths else (mapping_files(config.mappings_dir), [])
    for problem in problems:
        print(problem)
    report = load_report(config, files)
    for error in report.errors:
        print(error.render())
    results = run_tests(MappingSet.build(report.mappings), config.vars)
    passed = 0
    for result in results:
        if result.passed:
            passed += 1
            if args.verbose:
                print(f"ok   {result.mapping}: {result.name}")
        else:
            print(describe_failure(result))
    failed = len(results) - passed + len(report.broken) + len(problems)
    if report.broken:
        print(f"{len(report.broken)} mapping files did not load: {', '.join(report.broken)}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


def _read(path: str) -> Any:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML or JSON: {exc}") from None


def _input(args: argparse.Namespace) -> TestInput:
    if args.payload is not None:
        payload = _read(args.payload)
        if not isinstance(payload, dict):
            raise ValueError(f"{args.payload}: a payload must be a table (a JSON object)")
        return TestInput(payload=payload)
    data = _read(args.input)
    if not isinstance(data, dict):
        raise ValueError(f"{args.input}: the input must be a table with payload (and optionally headers, event, "
                         "vars)")
    try:
        return msgspec.convert(data, TestInput)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{args.input}: {exc}; an input takes payload, headers, event, vars, ticket") from None


def _find(config: Config, wanted: str) -> tuple[Any, LoadResult]:
    as_path = Path(wanted)
    if as_path.suffix in MAPPING_SUFFIXES and as_path.is_file():
        report = load_report(config, [as_path])
        return (report.mappings[0] if report.mappings else None), report
    report = load_report(config)
    found = next((m for m in report.mappings if m.name == wanted), None)
    if found is None:
        # Errors of other files do not matter for this one; of its own file (by stem), they explain why.
        report.errors = [e for e in report.errors if e.file is not None and Path(e.file).stem == wanted]
    return found, report


def _dump(value: Any) -> str:
    return json.dumps(msgspec.to_builtins(value), indent=2, ensure_ascii=False)


def run_render(args: argparse.Namespace) -> int:
    if (args.raw is None) != (args.source is None) or (args.raw is None and (args.header or args.verify)):
        print("--raw and --source go together (and --header, --verify need them): "
              "render --source NAME --raw body.json [--header K:V]", file=sys.stderr)
        return 2
    if args.raw is None and args.mapping is None:
        print("render needs a MAPPING with --input or --payload", file=sys.stderr)
        return 2
    config = config_from(args)
    if config is None:
        return 2
    if args.raw is not None:
        return run_raw_render(args, config)
    try:
        given = _input(args)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    mapping, report = _find(config, args.mapping)
    if mapping is None:
        for error in report.errors:
            print(error.render(), file=sys.stderr)
        if not report.errors:
            known = ", ".join(sorted(m.name for m in report.mappings)) or "(none)"
            print(f"no mapping named {args.mapping!r} in {config.shown_setting(('mappings',), config.mappings_dir)}; "
                  f"known: {known}", file=sys.stderr)
        return 2
    if given.ticket is not None and mapping.follow_up_skip:
        print(f"{mapping.name}: its follow_up says skip; nothing would be sent for a follow-up", file=sys.stderr)
        return 1
    if given.ticket is not None and mapping.follow_up is not None:
        mapping = mapping.follow_up  # an input with a ticket is a conversation's follow-up
    ctx = context_for(given, mapping, config.vars)
    if args.explain:
        trace = mapping.explain(ctx)
        print(format_trace(trace), file=sys.stderr)
        if trace.error is not None:
            return 1
        if not trace.matched:
            print(f"{mapping.name}: `when` skipped this input; nothing would be sent", file=sys.stderr)
            return 1
        print(_dump(trace.body if args.fields else trace.vendor_body))
        return 0
    try:
        if not mapping.matches(ctx):
            print(f"{mapping.name}: `when` skipped this input ({mapping.when_text}); nothing would be sent",
                  file=sys.stderr)
            return 1
        fields = mapping.render(ctx)
        body = fields if args.fields else mapping.body(fields)
    except MappingError as exc:
        print(f"{mapping.name}: {exc}" if not exc.path else str(exc), file=sys.stderr)
        return 1
    print(_dump(body))
    return 0
