"""Mapping fields compiled to closures: constants and plain paths become direct look-ups, and Jinja
runs only where a field is a template. Each field also compiles an `explain`, which walks the same
steps recording what each did, for `render --explain`.

This module shapes a field (constant, list, object or table) and checks it; sources.py reads values,
modifiers.py applies defaults, transforms, maps and `required`, compiled.py holds whole mappings.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

import msgspec

from bridge.conversions import convert_each
from bridge.mapping.base import (
    At,
    CompiledField,
    CompileError,
    Context,
    FieldFn,
    RenderError,
    Source,
    Step,
    copier,
    then_check,
)
from bridge.mapping.compiled import CompiledMapping, compile_when
from bridge.mapping.limits import UNCHECKED_STEPS, check_slice
from bridge.mapping.model import FIELD_KEYS, FieldSpec
from bridge.mapping.modifiers import finish
from bridge.mapping.sources import jmespath_source, path_source, template_field
from bridge.mapping.templates import MAX_RENDERED_CHARS, is_template
from bridge.mapping.trace import OMIT, FieldTrace
from bridge.mapping.transforms import compile_transform
from bridge.yamlfile import did_you_mean, told_in_words

__all__ = ["MAX_RENDERED_CHARS", "OMIT", "CompileError", "CompiledField", "CompiledMapping", "Context",
           "RenderError", "compile_field", "compile_transform", "compile_when"]


def compile_field(name: str, raw: Any, vars_: Mapping[str, Any] | None = None) -> CompiledField:
    """Compile one field, as written in the mapping file, into functions of the render context. With
    `vars_` (the config's vars), references to vars that are not set are compile errors too."""
    problems: list[CompileError] = []
    compiled = _field(name, raw, (), problems, vars_)
    if problems:
        raise CompileError.collect(problems)
    assert compiled is not None
    return compiled


def _field(name: str, raw: Any, at: At, problems: list[CompileError], vars_: Mapping[str, Any] | None,
           ) -> CompiledField | None:
    if isinstance(raw, str):
        if is_template(raw):
            return template_field(name, raw, FieldSpec(template=raw), at, problems, vars_=vars_)
        return _constant(name, raw, "constant")
    if raw is None or isinstance(raw, bool | int | float | date):
        return _constant(name, raw, "constant")
    if isinstance(raw, list):
        return _list_field(name, raw, at, problems, vars_)
    if isinstance(raw, dict):
        return _table_field(name, raw, at, problems, vars_)
    problems.append(CompileError(
        f"a field must be a string, number, boolean, null, a list or a table, not {type(raw).__name__}", at))
    return None


def _constant(name: str, value: Any, source: str) -> CompiledField:
    get = copier(value)
    render: FieldFn = (lambda ctx: value) if get() is value else (lambda ctx: get())

    def explain(ctx: Context) -> FieldTrace:
        v = get()
        return FieldTrace(name, source, raw=v, value=v)

    return CompiledField(name, render, explain, constant=True)


def _list_field(name: str, raw: list[Any], at: At, problems: list[CompileError],
                vars_: Mapping[str, Any] | None) -> CompiledField | None:
    items = [_field(f"{name}[{i}]", item, (*at, i), problems, vars_) for i, item in enumerate(raw)]
    if any(item is None for item in items):
        return None
    members = [item for item in items if item is not None]
    if all(item.constant for item in members):
        return _constant(name, [item.render({}) for item in members], "constant list")
    steps = sum(item.steps for item in members)
    checked = steps > UNCHECKED_STEPS  # then each item looks at the loop slice after it
    renders = [then_check(item.render) if checked else item.render for item in members]

    def render(ctx: Context) -> Any:
        out = []
        for fn in renders:
            value = fn(ctx)
            if value is not OMIT:
                out.append(value)
        return out

    def explain(ctx: Context) -> FieldTrace:
        trace = FieldTrace(name, f"list of {len(members)} items", children=_explained(members, ctx))
        _gather(trace, [c.value for c in trace.children if c.value is not OMIT])
        return trace

    return CompiledField(name, render, explain, jinja=any(item.jinja for item in members),
                         steps=1 if checked else steps)


def _explained(members: list[CompiledField], ctx: Context) -> list[FieldTrace]:
    """Each member explained, with a look at the loop slice after each (an explanation is no hot path)."""
    out = []
    for item in members:
        out.append(item.explain(ctx))
        check_slice()
    return out


def _gather(trace: FieldTrace, value: Any) -> None:
    failed = next((c for c in trace.children if c.error is not None), None)
    if failed is not None:
        trace.error = failed.error
    else:
        trace.value = value


def _object_field(name: str, members_raw: dict[str, Any], at: At, problems: list[CompileError],
                  vars_: Mapping[str, Any] | None) -> CompiledField | None:
    compiled = [(key, _field(f"{name}.{key}", raw, (*at, key), problems, vars_)) for key, raw in members_raw.items()]
    members = [(key, item) for key, item in compiled if item is not None]
    if len(members) != len(compiled):
        return None
    if all(item.constant for _, item in members):
        return _constant(name, {key: item.render({}) for key, item in members}, "constant table")
    steps = sum(item.steps for _, item in members)
    checked = steps > UNCHECKED_STEPS  # then each member looks at the loop slice after it
    plan = [(key, then_check(item.render) if checked else item.render) for key, item in members]

    def render(ctx: Context) -> Any:
        out = {}
        for key, fn in plan:
            value = fn(ctx)
            if value is not OMIT:
                out[key] = value
        return out

    def explain(ctx: Context) -> FieldTrace:
        trace = FieldTrace(name, f"object of {len(members)} fields",
                           children=_explained([item for _, item in members], ctx))
        _gather(trace, {key: c.value for (key, _), c in zip(members, trace.children, strict=True)
                        if c.value is not OMIT})
        return trace

    return CompiledField(name, render, explain, jinja=any(item.jinja for _, item in members),
                         steps=1 if checked else steps)


def _table_field(name: str, raw: dict[str, Any], at: At, problems: list[CompileError],
                 vars_: Mapping[str, Any] | None) -> CompiledField | None:
    before = len(problems)
    for key in raw:
        if key not in FIELD_KEYS:
            problems.append(CompileError(f"unknown key {key!r}{did_you_mean(str(key), FIELD_KEYS)}: a field table "
                                         f"takes {', '.join(FIELD_KEYS)}", (*at, key)))
    def told(exc: msgspec.ValidationError, data: Any) -> CompileError:
        message, sub = told_in_words(exc, FieldSpec, data, (name,))
        return CompileError(message, (*at, *sub))

    spec, wrong = convert_each({k: v for k, v in raw.items() if k in FIELD_KEYS}, FieldSpec, told, strict=True)
    if wrong or spec is None:
        problems.extend(wrong)
        return None
    found = spec.sources()
    if len(found) != 1:
        problems.append(CompileError(
            "a field table needs exactly one of `from`, `jmespath`, `template`, `value`, `object`"
            + (f" (it has {', '.join(found)})" if found else ""), at))
        return None
    has_default = spec.default is not msgspec.UNSET
    if spec.on_missing == "default" and not has_default:
        problems.append(CompileError("on_missing: default needs a `default:` value", (*at, "on_missing")))
    if spec.map_default is not msgspec.UNSET and spec.map is None:
        problems.append(CompileError("map_default is the value for entries not in `map`, and there is no map",
                                     (*at, "map_default")))
    steps: list[Step] = []
    for i, text in enumerate(spec.transform or []):
        try:
            steps.append((text.strip(), compile_transform(text)))
        except CompileError as exc:
            problems.append(CompileError(str(exc), (*at, "transform", i)))

    kind = found[0]
    if kind == "value":
        if spec.transform or spec.map:
            problems.append(CompileError("`value` is a constant: transform and map do not apply to it", at))
        elif spec.required and spec.value in (None, ""):
            problems.append(CompileError("required, but its `value` is always empty: it can never be filled", at))
        return None if len(problems) > before else _constant(name, spec.value, "value")
    if kind == "object":
        if spec.modifiers():
            problems.append(CompileError(
                f"`object` builds a nested table: put {', '.join(spec.modifiers())} on its members", at))
        assert spec.object is not None
        built = _object_field(name, spec.object, (*at, "object"), problems, vars_)
        return None if len(problems) > before else built
    if kind == "template":
        assert spec.template is not None
        built = template_field(name, spec.template, spec, (*at, "template"), problems, vars_=vars_, steps=steps)
        return None if len(problems) > before else built

    source: Source | None = None
    described = ""
    if kind == "from":
        assert spec.from_ is not None
        source, described = path_source(spec, (*at, "from"), problems, vars_)
    else:
        assert spec.jmespath is not None
        source, described = jmespath_source(name, spec.jmespath, (*at, "jmespath"), problems)
    _check_fillable(spec, at, problems)
    if len(problems) > before or source is None:
        return None
    return finish(name, source, described, steps, spec)


def _check_fillable(spec: FieldSpec, at: At, problems: list[CompileError]) -> None:
    if not spec.required or spec.default is not msgspec.UNSET or spec.map_default is not msgspec.UNSET:
        return
    if spec.map and all(v is None or v == "" for v in spec.map.values()):
        problems.append(CompileError("required, but every entry of its map is empty and there is no default: "
                                     "it can never be filled", (*at, "map")))
