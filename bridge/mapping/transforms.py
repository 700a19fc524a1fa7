"""`transform:` entries compiled: a filter name and literal arguments, checked when the mapping loads."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from typing import Any

from bridge.mapping.arguments import argument_problems
from bridge.mapping.base import CompileError
from bridge.mapping.filters import FILTERS
from bridge.yamlfile import did_you_mean

_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\((.*)\))?\s*$", re.S)


def compile_transform(text: str) -> Callable[[Any], Any]:
    """`strip`, `truncate(100)`, `join(", ")`: a filter name and literal arguments."""
    m = _CALL.match(text)
    if not m:
        raise CompileError(f"bad transform {text!r}: write a filter name, optionally with arguments: truncate(100)")
    name, args_text = m.group(1), m.group(2)
    fn = FILTERS.get(name)
    if fn is None:
        raise CompileError(f"unknown filter {name!r}{did_you_mean(name, FILTERS)}; known filters: "
                           f"{', '.join(sorted(FILTERS))}")
    args: tuple[Any, ...] = ()
    if args_text and args_text.strip():
        try:
            args = _literals(args_text)
        except (ValueError, SyntaxError, TypeError):
            raise CompileError(
                f"bad arguments in {text!r}: arguments must be literals (numbers, 'strings', true/false/null)"
            ) from None
    problems = argument_problems(name, args)
    if problems:
        raise CompileError(f"bad arguments in {text.strip()!r}: {'; '.join(problems)}")
    if not args:
        return fn
    return lambda value: fn(value, *args)


_YAML_WORDS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}


class _Words(ast.NodeTransformer):
    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in _YAML_WORDS:
            return ast.copy_location(ast.Constant(_YAML_WORDS[node.id]), node)
        raise ValueError(node.id)


def _literals(text: str) -> tuple[Any, ...]:
    """`5, 'x', true` as a tuple of values; YAML's true/false/null are taken as well as Python's."""
    tree = _Words().visit(ast.parse(f"({text},)", mode="eval"))
    value = ast.literal_eval(tree)
    assert isinstance(value, tuple)
    return value
