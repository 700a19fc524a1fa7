"""`check --format json|junit`: what `check` found, as a CI system reads it."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree as ET  # builds XML from our own values; nothing is parsed here

from bridge.errors import Located
from bridge.mapping.testing import TestResult, describe_failure

if TYPE_CHECKING:
    from bridge.cli.check import CheckReport


def _error(error: Located) -> dict[str, Any]:
    return {"file": error.file, "line": error.line, "column": error.col, "path": error.path,
            "message": error.message, "text": error.render()}


def _test(result: TestResult) -> dict[str, Any]:
    out: dict[str, Any] = {"mapping": result.mapping, "name": result.name, "file": result.file,
                           "line": result.line, "passed": result.passed}
    if not result.passed:
        out["message"] = result.message
        out["text"] = describe_failure(result)
    return out


def as_json(report: CheckReport) -> str:
    """One JSON document: ok, the summary line, errors with file/line/column, every test, and warnings."""
    failed = len(report.failed_tests)
    return json.dumps({
        "ok": report.ok,
        "summary": report.summary,
        "config": report.config_file,
        "errors": [{"kind": "config", **_error(e)} for e in report.config_errors]
        + [{"kind": "mapping", **_error(e)} for e in report.mapping_errors],
        "tests": [_test(r) for r in report.results],
        "passed": len(report.results) - failed,
        "failed": failed,
        "warnings": report.warnings,
    }, indent=2, default=str)


def as_junit(report: CheckReport) -> str:
    """JUnit XML: a suite of load errors (one failed case per config or mapping error; one passing case when
    there is none) and a suite per mapping of its tests."""
    root = ET.Element("testsuites", name="ticketbridge check")
    errors = [*report.config_errors, *report.mapping_errors]
    load = ET.SubElement(root, "testsuite", name="load", tests=str(max(1, len(errors))),
                         failures=str(len(errors)), errors="0", skipped="0")
    for error in errors:
        case = ET.SubElement(load, "testcase", classname="load", name=error.render(),
                             file=error.file or "", line=str(error.line or ""))
        ET.SubElement(case, "failure", message=error.message, type="error").text = error.render()
    if not errors:
        ET.SubElement(load, "testcase", classname="load", name="config and mappings load")
    by_mapping: dict[str, list[TestResult]] = {}
    for result in report.results:
        by_mapping.setdefault(result.mapping, []).append(result)
    for mapping, results in sorted(by_mapping.items()):
        failed = [r for r in results if not r.passed]
        suite = ET.SubElement(root, "testsuite", name=mapping, tests=str(len(results)), failures=str(len(failed)),
                              errors="0", skipped="0")
        for r in results:
            case = ET.SubElement(suite, "testcase", classname=mapping, name=r.name, file=r.file,
                                 line=str(r.line or ""))
            if not r.passed:
                ET.SubElement(case, "failure", message=r.message, type="assertion").text = describe_failure(r)
    if report.warnings:
        ET.SubElement(load, "system-err").text = "\n".join(report.warnings)
    root.set("tests", str(sum(int(s.get("tests", "0")) for s in root)))
    root.set("failures", str(sum(int(s.get("failures", "0")) for s in root)))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode")
