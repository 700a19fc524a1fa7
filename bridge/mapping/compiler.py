"""Mapping fields compiled to closures: constants and plain paths become direct look-ups, and Jinja
runs only where a field is a template."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from jinja2 import TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError, TemplateRuntimeError

from bridge.errors import MappingError
from bridge.mapping.fastpath import compile_fast, compile_fast_expression
from bridge.mapping.filters import FILTERS
from bridge.mapping.model import FieldSpec, MappingSpec
from bridge.mapping.paths import MISSING, PathSyntaxError, compile_path
from bridge.mapping.templates import ENV, is_template


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


OMIT: Final = _Omit()
MAX_RENDERED_CHARS = 1_000_000

Context = dict[str, Any]
FieldFn = Callable[[Context], Any]


class RenderError(MappingError):
    """An event that a mapping cannot turn into a vendor body."""


class CompileError(ValueError):
    """A field that cannot be compiled; the loader adds file, line and path."""

    def __init__(self, message: str, subpath: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.subpath = subpath


_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*(?:\((.*)\))?\s*$", re.S)


def compile_transform(text: str) -> Callable[[Any], Any]:
    """`strip`, `truncate(100)`, `join(", ")`: a filter name and literal arguments."""
    m = _CALL.match(text)
    if not m:
        raise CompileError(f"bad transform {text!r}: write a filter name, optionally with arguments: truncate(100)")
    name, args_text = m.group(1), m.group(2)
    fn = FILTERS.get(name)
    if fn is None:
        raise CompileError(f"unknown filter {name!r}; known filters: {', '.join(sorted(FILTERS))}")
    args: tuple[Any, ...] = ()
    if args_text and args_text.strip():
        try:
            parsed = ast.literal_eval(f"({args_text},)")
        except (ValueError, SyntaxError):
            raise CompileError(
                f"bad arguments in {text!r}: arguments must be literals (numbers, 'strings', true/false)"
            ) from None
        args = tuple(parsed)
    try:
        inspect.signature(fn).bind(None, *args)
    except TypeError as exc:
        raise CompileError(f"bad arguments in {text!r}: {exc}") from None
    if not args:
        return fn
    return lambda value: fn(value, *args)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def compile_field(name: str, raw: Any) -> FieldFn:
    """Compile one field, as written in the mapping file, into a function of the render context."""
    if isinstance(raw, str):
        if is_template(raw):
            return _template_field(name, raw, FieldSpec(template=raw), at=())
        return lambda ctx: raw
    if raw is None or isinstance(raw, bool | int | float):
        return lambda ctx: raw
    if isinstance(raw, list):
        return _constant_container(raw)
    if not isinstance(raw, dict):
        raise CompileError(f"a field must be a string, number, boolean, null or a table, not {type(raw).__name__}")
    try:
        spec = msgspec.convert(raw, FieldSpec)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        m = re.search(r"unknown field `(.+?)`", msg)
        if m:
            raise CompileError(
                f"unknown key {m.group(1)!r}: a field table takes from, template, value, required, "
                "default, on_missing, map, transform", (m.group(1),),
            ) from None
        raise CompileError(msg.replace(" - at `$", " at `")) from None
    found = spec.sources()
    if len(found) != 1:
        raise CompileError(
            "a field table needs exactly one of `from`, `template`, `value`"
            + (f" (it has {', '.join(found)})" if found else "")
        )
    if spec.on_missing == "default" and spec.default is msgspec.UNSET:
        raise CompileError("on_missing: default needs a `default:` value")
    if spec.value is not msgspec.UNSET:
        if spec.transform or spec.map:
            raise CompileError("`value` is a constant: transform and map do not apply to it")
        value = spec.value
        return lambda ctx: value
    if spec.template is not None:
        return _template_field(name, spec.template, spec)
    assert spec.from_ is not None
    try:
        path = compile_path(spec.from_)
    except PathSyntaxError as exc:
        raise CompileError(str(exc), ("from",)) from None
    getter = path.get

    def source(ctx: Context) -> tuple[Any, str]:
        value = getter(ctx)
        if value is MISSING:
            return MISSING, f"{path.missing_at(ctx)} is missing"
        return value, ""

    return _finish(name, source, spec)


def _constant_container(raw: list[Any]) -> FieldFn:
    frozen = msgspec.json.encode(raw)
    return lambda ctx: msgspec.json.decode(frozen)


def _template_field(name: str, text: str, spec: FieldSpec, at: tuple[str, ...] = ("template",)) -> FieldFn:
    try:
        template = ENV.from_string(text)
    except TemplateSyntaxError as exc:
        raise CompileError(f"template syntax error at template line {exc.lineno}: {exc.message}", at) from None
    render = template.render
    fast = compile_fast(text)

    def source(ctx: Context) -> tuple[Any, str]:
        if fast is not None:
            return fast(ctx)
        try:
            out = render(ctx)
        except UndefinedError as exc:
            return MISSING, f"template: {exc.message}"
        except (SecurityError, TemplateRuntimeError, OverflowError, TypeError, ValueError, ArithmeticError,
                LookupError, RecursionError) as exc:
            raise RenderError(f"template failed: {exc}", path=name) from None
        if len(out) > MAX_RENDERED_CHARS:
            raise RenderError(f"template output is {len(out)} characters, over {MAX_RENDERED_CHARS}", path=name)
        return out, ""

    if spec.template is not None and not (spec.required or spec.transform or spec.map or spec.on_missing
                                          or spec.default is not msgspec.UNSET):
        def plain(ctx: Context) -> Any:
            value, why = source(ctx)
            if value is MISSING:
                raise RenderError(why, path=name)
            return value

        return plain
    return _finish(name, source, spec)


def _finish(name: str, source: Callable[[Context], tuple[Any, str]], spec: FieldSpec) -> FieldFn:
    steps = [compile_transform(t) for t in (spec.transform or [])]
    table = spec.map
    folded = {str(k).casefold(): v for k, v in table.items()} if table else None
    default = spec.default
    has_default = default is not msgspec.UNSET
    required = spec.required
    on_missing = spec.on_missing or ("default" if has_default else "error" if required else "null")

    def missing(why: str) -> Any:
        if on_missing == "default":
            return default
        if on_missing == "omit":
            return OMIT
        if on_missing == "null":
            return None
        raise RenderError(f"required ({why})" if required else f"missing ({why})", path=name)

    def run(ctx: Context) -> Any:
        value, why = source(ctx)
        if value is MISSING:
            return missing(why)
        for step in steps:
            try:
                value = step(value)
            except (TypeError, ValueError, ArithmeticError) as exc:
                raise RenderError(f"transform failed on {_describe(value)}: {exc}", path=name) from None
        if table is not None:
            key = str(value) if not isinstance(value, str) else value
            if key in table:
                value = table[key]
            elif folded is not None and key.casefold() in folded:
                value = folded[key.casefold()]
            elif has_default:
                value = default
            else:
                raise RenderError(
                    f"{_describe(value)} is not in the map (known: {', '.join(map(str, table))}) "
                    "and the field has no default", path=name)
        if required and (value is None or value == ""):
            raise RenderError(f"required ({'is null' if value is None else 'is empty'} after transforms)",
                              path=name)
        return value

    return run


@dataclass
class CompiledMapping:
    """A mapping ready to render: `matches` then `render`, both pure functions of the context."""

    name: str
    file: str
    version: str
    sources: tuple[str, ...]
    destination: str
    action: str
    options: dict[str, Any]
    spec: MappingSpec
    fields: list[tuple[str, FieldFn]] = field(default_factory=list)
    when: Callable[..., Any] | None = None
    when_text: str | None = None

    def matches(self, ctx: Context) -> bool:
        if self.when is None:
            return True
        try:
            return bool(self.when(ctx))
        except UndefinedError as exc:
            raise RenderError(f"when: {exc.message} (test with `is defined`)", path=self.name) from None
        except (SecurityError, TemplateRuntimeError, TypeError, ValueError, ArithmeticError, LookupError,
                RecursionError) as exc:
            raise RenderError(f"when: {exc}", path=self.name) from None

    def render(self, ctx: Context) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, fn in self.fields:
            value = fn(ctx)
            if value is not OMIT:
                out[name] = value
        return out


def compile_when(text: str) -> Callable[..., Any]:
    try:
        # undefined_to_none=False: a bare undefined name must fail (StrictUndefined), not read as false.
        expr = ENV.compile_expression(text, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise CompileError(f"expression syntax error: {exc.message}") from None
    fast = compile_fast_expression(text)
    if fast is not None:
        return fast
    return lambda ctx: expr(**ctx)
