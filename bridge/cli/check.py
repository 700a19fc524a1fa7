"""`ticketbridge check`: the config, every mapping, and every mapping's tests; as text for people, or as JSON or
JUnit XML for CI."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any

from bridge.cli.check_formats import as_json, as_junit
from bridge.cli.common import attachments_problem, config_error, config_file_problem
from bridge.cli.mapping_tools import load_report
from bridge.config import Config, load_config, resolve_config_path
from bridge.errors import ConfigError, ErrorList, Located
from bridge.eventloop import LoopUnavailable, choose
from bridge.mapping.mappingset import MappingSet
from bridge.mapping.testing import TestResult, describe_failure, run_tests
from bridge.registries import REGISTRIES
from bridge.tracing import tracing_problem


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("check", parents=[common], help="validate the config and mappings, and run mapping tests")
    p.add_argument("--format", choices=["text", "json", "junit"], default="text",
                   help="text for people (default); json or junit (JUnit XML) on stdout for CI")
    p.set_defaults(run=run_check)


@dataclass
class CheckReport:
    """What `check` found: errors by where they are, the mapping tests' results, warnings and the summary."""

    config_file: str | None
    config_errors: list[Located] = field(default_factory=list)
    mapping_errors: list[Located] = field(default_factory=list)
    results: list[TestResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: str = ""
    config_loaded: bool = True
    """False when the config did not load (nothing else was checked): `check` then exits 2, as every verb does."""

    @property
    def failed_tests(self) -> list[TestResult]:
        return [r for r in self.results if not r.passed]

    @property
    def ok(self) -> bool:
        return not self.config_errors and not self.mapping_errors and not self.failed_tests


def _load(args: argparse.Namespace) -> tuple[Config | None, str | None, list[Located]]:
    path = resolve_config_path(args.config)
    name = None if path is None else str(path)
    problem = None if path is None else config_file_problem(path)
    if problem is not None:
        return None, name, [ConfigError(problem, file=name)]
    try:
        return load_config(path, registries=REGISTRIES), name, []
    except ErrorList as exc:
        return None, name, exc.errors


def missing_extras(config: Config) -> list[Located]:
    """What `serve` refuses to start without, as it says it, at the key that asks for it: uvloop for
    `server.event_loop: uvloop`, OpenTelemetry for `tracing.enabled: true`."""
    errors = []
    try:
        choose(config.server.event_loop)
    except LoopUnavailable as exc:
        errors.append(config_error(config, ("server", "event_loop"), str(exc)))
    tracing = tracing_problem(config.tracing)
    if tracing is not None:
        errors.append(config_error(config, ("tracing", "enabled"), tracing.message))
    return errors


SIGNED_URL_KINDS = {"twilio": "Twilio", "mandrill": "Mandrill"}
"""Source kinds whose provider signs the URL it calls (handlers/twilio.py `signed_url`)."""


def signed_url_warnings(config: Config) -> list[str]:
    """A source whose provider signs the URL it calls, with no `public_url` and no `server.public_url`: its
    signatures are checked against the URL the request arrived at, which behind a TLS proxy (http, another host
    or port) is not the one signed, so every post would be a 401. Said as a warning: served directly, the
    request's URL is the one the provider called."""
    if config.server.public_url:
        return []
    out = []
    for name, source in sorted(config.sources.items()):
        vendor = SIGNED_URL_KINDS.get(source.kind)
        if vendor is not None and not getattr(source, "public_url", None):
            out.append(config_error(config, ("sources", name), (
                f"warning: {vendor} signs the URL it calls, and this source has no public_url (nor the server a "
                f"public_url): signatures are checked against the URL each request arrives at, so behind a TLS "
                f"proxy or load balancer every post gets 401; set public_url to the webhook URL exactly as "
                f"configured in {vendor}, e.g. https://bridge.example.com/hooks/{name}")).render())
    return out


def build_report(args: argparse.Namespace) -> CheckReport:
    config, name, errors = _load(args)
    report = CheckReport(config_file=name, config_errors=errors)
    if config is None:
        report.config_loaded = False
        report.summary = f"check FAILED: the config does not load ({counted(len(errors), 'error')})"
        return report
    report.config_errors.extend(missing_extras(config))
    if not config.mappings_dir.is_dir():
        report.config_errors.append(config.mappings_missing(ConfigError))
        report.summary = "check FAILED: the mappings folder does not exist"
        return report
    loaded = load_report(config)
    report.mapping_errors = list(loaded.errors)
    mappings = MappingSet.build(loaded.mappings)
    report.results = run_tests(mappings, config.vars)
    report.warnings = [f"{m.file}: {m.name}: warning: this mapping has no tests"
                       for m in sorted(loaded.mappings, key=lambda m: m.name) if not m.spec.tests]
    report.warnings[:0] = signed_url_warnings(config)
    unwritable = attachments_problem(config, warning=True)
    if unwritable is not None:
        report.warnings.insert(0, unwritable.render())
    failed = len(report.failed_tests)
    files = counted(len(loaded.mappings), "mapping") + (f", {counted(len(loaded.broken), 'broken file')}"
                                                       if loaded.broken else "")
    verdict = "check FAILED: " if not report.ok else "config ok: "
    report.summary = (verdict + f"{counted(len(config.sources), 'source')}, "
                      f"{counted(len(config.destinations), 'destination')}; {files}"
                      + (f" (version {mappings.version})" if not loaded.broken else "")
                      + f"; {len(report.results) - failed} passed, {failed} failed"
                      + (f"; {counted(len(loaded.errors), 'mapping error')}" if loaded.errors else ""))
    return report


def counted(n: int, what: str) -> str:
    """`1 error`, `2 errors`."""
    return f"{n} {what}{'' if n == 1 else 's'}"


def run_check(args: argparse.Namespace) -> int:
    report = build_report(args)
    if args.format == "json":
        print(as_json(report))
    elif args.format == "junit":
        print(as_junit(report))
    else:
        for error in (*report.config_errors, *report.mapping_errors):
            print(error.render(), file=sys.stderr)
        for r in report.failed_tests:
            print(describe_failure(r), file=sys.stderr)
        for warning in report.warnings:
            print(warning, file=sys.stderr)
        print(report.summary)
    if not report.config_loaded:
        return 2  # README: 2 is a config that does not load, for `check` as for every other verb
    return 0 if report.ok else 1
