"""Running the tests written beside each mapping."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from bridge.errors import MappingError
from bridge.mapping.compiler import CompiledMapping
from bridge.mapping.mappingset import MappingSet
from bridge.mapping.model import MappingTest


@dataclass
class TestResult:
    mapping: str
    file: str
    name: str
    passed: bool
    message: str = ""
    expected: Any = None
    actual: Any = None


def test_context(test: MappingTest, mapping: CompiledMapping, vars_: dict[str, Any]) -> dict[str, Any]:
    given = test.input
    event: dict[str, Any] = {"id": "evt_TEST", "source": mapping.sources[0], "kind": "test", "channel": "webhook",
             "received_at": datetime(2024, 1, 1, tzinfo=UTC).isoformat(), "dedup_key": None, "meta": {}}
    event.update(given.get("event") or {})
    ctx = {"payload": given.get("payload", {}), "headers": given.get("headers", {}), "event": event,
           "vars": {**vars_, **(given.get("vars") or {})}}
    if "ticket" in given:
        ctx["ticket"] = given["ticket"]
    return ctx


def run_test(mapping: CompiledMapping, index: int, test: MappingTest, vars_: dict[str, Any]) -> TestResult:
    name = test.name or f"test {index + 1}"
    res = TestResult(mapping.name, mapping.file, name, False)
    try:
        ctx = test_context(test, mapping, vars_)
        matched = mapping.matches(ctx)
        body = mapping.render(ctx) if matched else None
    except MappingError as exc:
        if test.expect_error is not None and test.expect_error in str(exc):
            res.passed = True
            return res
        res.message = f"error: {exc}"
        res.expected = test.expect_error
        res.actual = str(exc)
        return res
    except Exception as exc:  # a bug in a filter fails this test, not the whole run (as in routing)
        res.message = f"internal error while rendering: {type(exc).__name__}: {exc}"
        return res
    if test.expect_error is not None:
        res.message = (f"expected an error containing {test.expect_error!r}, but it rendered" if matched
                       else f"expected an error containing {test.expect_error!r}, but `when` skipped the input")
        res.expected, res.actual = test.expect_error, body
        return res
    if test.expect_skip:
        res.passed = not matched
        res.message = "" if res.passed else "expected `when` to skip this input, but it matched"
        res.actual = body
        return res
    if not matched:
        res.message = "`when` skipped this input"
        return res
    actual = msgspec.to_builtins(body)
    if test.expect is not msgspec.UNSET and actual != test.expect:
        res.message = "the rendered body differs"
        res.expected, res.actual = test.expect, actual
        return res
    if test.expect_contains is not None:
        wrong = {k: v for k, v in test.expect_contains.items() if actual.get(k, msgspec.UNSET) != v}
        if wrong:
            res.message = f"fields differ: {', '.join(wrong)}"
            res.expected = test.expect_contains
            res.actual = {k: actual.get(k) for k in test.expect_contains}
            return res
    res.passed = True
    return res


def run_tests(mappings: MappingSet, vars_: dict[str, Any]) -> list[TestResult]:
    out = []
    for mapping in sorted(mappings.mappings.values(), key=lambda m: m.name):
        for i, test in enumerate(mapping.spec.tests):
            out.append(run_test(mapping, i, test, vars_))
    return out
