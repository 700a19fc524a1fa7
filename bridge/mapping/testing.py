"""Running the tests written beside each mapping, and showing a failure as a readable diff."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from bridge.errors import MappingError
from bridge.events import Event
from bridge.mapping.compiler import CompiledMapping
from bridge.mapping.mappingset import MappingSet
from bridge.mapping.model import MappingTest, TestInput

_NOT_RENDERED = object()


@dataclass
class TestResult:
    """One mapping test's outcome; on failure, what was expected and what came instead."""

    __test__ = False  # not a pytest class

    mapping: str
    file: str
    name: str
    passed: bool
    message: str = ""
    expected: Any = None
    actual: Any = None
    line: int | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file


def context_for(given: TestInput, mapping: CompiledMapping, vars_: dict[str, Any]) -> dict[str, Any]:
    """The render context for a test's input: an event that looks like a real one (id, the mapping's first
    source, a fixed time), with the input's payload, headers, event fields and vars over the config's."""
    event = Event(id="evt_TEST", source=mapping.sources[0], kind="test", channel="webhook",
                  received_at=datetime(2024, 1, 1, tzinfo=UTC), payload=given.payload).context()
    event.update(given.event)
    ctx = {"payload": given.payload, "headers": given.headers, "event": event, "vars": {**vars_, **given.vars}}
    if given.ticket is not None:
        ctx["ticket"] = given.ticket
    return ctx


def _plain(value: Any) -> Any:
    return msgspec.to_builtins(value)


def same(a: Any, b: Any) -> bool:
    """JSON equality: key order does not count, but true is not 1 and "1" is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and bool(a == b)


def _closer(expected: Any, fields: Any, body: Any) -> Any:
    """The candidate (vendor body or fields) that `expected` was meant to describe, for the diff."""
    if type(expected) is not type(body):
        return fields if type(expected) is type(fields) else body
    if isinstance(expected, dict) and isinstance(body, dict) and isinstance(fields, dict):
        return fields if len(expected.keys() & fields.keys()) > len(expected.keys() & body.keys()) else body
    return body


def run_test(mapping: CompiledMapping, index: int, test: MappingTest, vars_: dict[str, Any]) -> TestResult:
    name = test.name or f"test {index + 1}"
    line = mapping.test_lines[index] if index < len(mapping.test_lines) else None
    res = TestResult(mapping.name, mapping.file, name, False, line=line)
    body: Any = _NOT_RENDERED
    threaded = mapping.threaded
    if test.input.ticket is not None and mapping.follow_up is not None:
        mapping = mapping.follow_up  # a test with a ticket exercises the follow-up
    try:
        ctx = context_for(test.input, mapping, vars_)
        matched = mapping.matches(ctx) and not (test.input.ticket is not None and threaded
                                                and mapping.follow_up_skip)
        fields = mapping.render(ctx) if matched else None
        # The vendor's envelope is built only when the test needs it: an `expect` written as the bare
        # fields passes without it (vendors that look names up at send time cannot build it offline).
        if fields is not None and (test.expect_error is not None or (
                test.expect is not msgspec.UNSET and not same(test.expect, _plain(fields)))):
            body = mapping.body(fields)
    except MappingError as exc:
        if test.expect_error is not None and test.expect_error in str(exc):
            res.passed = True
            return res
        res.message = f"error: {exc}"
        res.expected = test.expect_error
        res.actual = str(exc)
        return res
    except Exception as exc:  # a bug in a filter or an adapter fails this test, not the whole run
        res.message = f"internal error while rendering: {type(exc).__name__}: {exc}"
        return res
    if test.expect_error is not None:
        res.message = (f"expected an error containing {test.expect_error!r}, but it rendered" if matched
                       else f"expected an error containing {test.expect_error!r}, but `when` skipped the input")
        res.expected, res.actual = test.expect_error, fields
        return res
    if test.expect_skip:
        res.passed = not matched
        res.message = "" if res.passed else "expected `when` to skip this input, but it matched"
        res.actual = fields
        return res
    if not matched:
        res.message = "`when` skipped this input"
        return res
    actual_fields = _plain(fields)
    if body is not _NOT_RENDERED and not same(test.expect, _plain(body)):
        res.message = "the rendered body differs"
        res.expected, res.actual = test.expect, _closer(test.expect, actual_fields, _plain(body))
        return res
    if test.expect_contains is not None:
        wrong = {k: v for k, v in test.expect_contains.items() if not same(actual_fields.get(k, _NOT_RENDERED), v)}
        if wrong:
            res.message = f"fields differ: {', '.join(wrong)}"
            res.expected = test.expect_contains
            res.actual = {k: actual_fields.get(k) for k in test.expect_contains}
            return res
    res.passed = True
    return res


def run_tests(mappings: MappingSet, vars_: dict[str, Any],
              before_each: Callable[[], None] | None = None) -> list[TestResult]:
    """Every test of every mapping, by mapping name; `before_each` is called before each test (it may raise
    to stop the run)."""
    out = []
    for mapping in sorted(mappings.mappings.values(), key=lambda m: m.name):
        for i, test in enumerate(mapping.spec.tests):
            if before_each is not None:
                before_each()
            out.append(run_test(mapping, i, test, vars_))
    return out


def _pretty(value: Any) -> list[str]:
    # Keys sorted: key order does not count in a comparison, so it must not show in the diff either.
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str).splitlines()


def describe_failure(result: TestResult) -> str:
    """A failed test as a person reads it: where, which test, why, and a diff of expected and actual."""
    lines = [f"FAIL {result.where}: {result.mapping}: {result.name}", f"  {result.message}"]
    if isinstance(result.expected, str) or isinstance(result.actual, str) or result.expected is None:
        if result.expected is not None:
            lines.append(f"  expected: {result.expected!r}")
        if result.actual is not None:
            lines.append(f"  actual:   {result.actual!r}")
        return "\n".join(lines)
    diff = difflib.unified_diff(_pretty(result.expected), _pretty(result.actual), "expected", "actual", lineterm="",
                                n=3)
    lines.extend(f"  {line}" for line in diff)
    return "\n".join(lines)
