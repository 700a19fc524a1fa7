"""Where a field's value comes from: a path, a JMESPath expression, or a template (fast path or Jinja)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import jmespath
import msgspec
from jinja2 import TemplateSyntaxError, UndefinedError
from jmespath.exceptions import JMESPathError, JMESPathTypeError
from jmespath.functions import Functions, signature
from jmespath.visitor import Options, TreeInterpreter

from bridge.mapping.base import (
    FILTER_ERRORS,
    TEMPLATE_ERRORS,
    At,
    CompiledField,
    CompileError,
    Context,
    LimitExceeded,
    RenderError,
    Source,
    Step,
    describe,
    out_of,
    said,
)
from bridge.mapping.fastpath import compile_fast_source, fast_steps
from bridge.mapping.limits import (
    MAX_RESULT_CHARS,
    BudgetExceeded,
    check_large,
    check_time,
    text_weight,
    too_heavy,
    too_long,
)
from bridge.mapping.model import FieldSpec
from bridge.mapping.modifiers import finish
from bridge.mapping.paths import MISSING, Absent, PathSyntaxError, compile_lookup, compile_path
from bridge.mapping.templatecheck import check_template, too_deep
from bridge.mapping.templates import ENV, MAX_RENDERED_CHARS, render_bounded
from bridge.mapping.trace import FieldTrace

if TYPE_CHECKING:
    from jmespath.visitor import _TreeNode


def path_source(spec: FieldSpec, at: At, problems: list[CompileError], vars_: Mapping[str, Any] | None,
                ) -> tuple[Source | None, str]:
    """`from:` as a source: the value at the path, or an Absent naming the first absent part."""
    assert spec.from_ is not None
    try:
        path = compile_path(spec.from_)
    except PathSyntaxError as exc:
        problems.append(CompileError(str(exc), at))
        return None, ""
    if (vars_ is not None and spec.required and spec.default is msgspec.UNSET and len(path.keys) > 1
            and path.keys[0] == "vars" and path.keys[1] not in vars_):
        problems.append(CompileError(
            f"required, but vars.{path.keys[1]} is not set in the config, so it can never be filled "
            f"(the config's vars: {', '.join(sorted(vars_)) or '(none)'})", at))
    return compile_lookup(path, Absent("", path)), f"from {path.text}"


def jmespath_source(name: str, text: str, at: At, problems: list[CompileError]) -> tuple[Source | None, str]:
    """`jmespath:` as a source; a null result counts as missing."""
    try:
        expr = jmespath.compile(text)
    except JMESPathError as exc:
        token = getattr(exc, "token_value", None)
        reason = (getattr(exc, "message", None)  # the lexer's own words: "Unknown token $"
                  or ("the expression ends too early" if type(exc).__name__ == "IncompleteExpressionError" else None)
                  or (f"{getattr(exc, 'msg', 'invalid')} {token!r}" if token is not None else None)
                  or str(exc).splitlines()[0])
        position = getattr(exc, "lex_position", getattr(exc, "lexer_position", None))
        where = f" at character {position + 1}" if isinstance(position, int) else ""
        problems.append(CompileError(f"bad jmespath expression {text!r}{where}: {reason}", at))
        return None, ""
    parsed = expr.parsed
    nothing = Absent(f"jmespath {text!r} found nothing")
    plain = _plain(parsed)
    if plain is not None:
        def looked_up(ctx: Context) -> Any:
            value = plain(ctx)
            return nothing if value is None else value

        return looked_up, f"jmespath {text}"

    def source(ctx: Context) -> Any:
        try:
            value = _Interpreter().visit(parsed, ctx)
        except BudgetExceeded as exc:
            raise LimitExceeded(f"jmespath {text!r}: {exc} in field {name}", path=name) from None
        except (JMESPathError, *FILTER_ERRORS) as exc:
            raise RenderError(f"jmespath {text!r} failed: {_failure(exc)}", path=name) from None
        # JMESPath cannot tell an absent key from a null: both count as missing.
        return nothing if value is None else value

    return source, f"jmespath {text}"


def _plain(node: _TreeNode) -> Callable[[Any], Any] | None:
    r"""An expression made only of fields (`payload.phone`), literals and `||` (`payload.phone || \`null\``, a blank
    value read as missing), as Python giving what JMESPath's interpreter gives: each field its value's `get`, or null
    where the value has none; `||` its right side where the left is false as JMESPath reads it. Such a field costs a
    few look-ups, not an interpreter and a visit per node on every render; it needs no clock (its work is bounded by
    the expression). None for an expression of any other kind."""
    kind = node["type"]
    if kind == "field":
        return _fields((node["value"],))
    if kind == "subexpression" and all(child["type"] == "field" for child in node["children"]):
        return _fields(tuple(child["value"] for child in node["children"]))
    if kind == "literal":
        literal = node["value"]
        return lambda _value: literal
    if kind == "or_expression":
        left, right = (_plain(child) for child in node["children"])
        if left is None or right is None:
            return None
        return lambda value: right(value) if _is_false(got := left(value)) else got
    return None


def _fields(keys: tuple[str, ...]) -> Callable[[Any], Any]:
    def look_up(value: Any) -> Any:
        for key in keys:
            try:
                value = value.get(key)
            except AttributeError:  # JMESPath's field of a value that is no object: null
                return None
        return value

    return look_up


def _is_false(value: Any) -> bool:
    """False as JMESPath reads it (`TreeInterpreter._is_false`): "", [], {}, null and false; 0 is true."""
    return value in ("", [], {}) or value is None or value is False


def _failure(exc: Exception) -> str:
    """What a JMESPath expression's failure says: a function's wrong argument described in 60 characters (JMESPath's
    own message writes it whole, a list of thousands of items as well as a text of 32,000 characters)."""
    if isinstance(exc, JMESPathTypeError):
        return (f"In function {exc.function_name}(), invalid type for value: {describe(exc.current_value)}, "
                f"expected one of: {exc.expected_types}, received: \"{exc.actual_type}\"")
    return said(exc)


class _Functions(Functions):
    """JMESPath's built-in functions under the render's limits. Each is one call that runs whole (a sort of an
    array, a join), so the clock is looked at before and after it, and on the loop an argument weighing more than
    limits.LOOP_BULK_CHARS ends the loop slice before it begins (`check_large`), for the render to run off the loop,
    as a filter's. `join` and `to_string`, which may write more than they read (a long separator between many
    items; an array holding one long text many times), are refused before they would pass MAX_RESULT_CHARS."""

    def call_function(self, function_name: str, resolved_args: Iterable[Any]) -> Any:
        check_time()
        args = list(resolved_args)
        if function_name not in _CONSTANT_TIME:
            for arg in args:
                check_large(arg)
        out = super().call_function(function_name, args)
        check_time()
        return out

    @signature({"types": ["string"]}, {"types": ["array-string"]})
    def _func_join(self, separator: str, array: list[str]) -> str:
        size = len(separator) * max(len(array) - 1, 0) + sum(map(len, array))
        if size > MAX_RESULT_CHARS:
            raise too_long(size)
        return separator.join(array)

    @signature({"types": []})
    def _func_to_string(self, arg: Any) -> str:
        if isinstance(arg, str):
            return arg
        weight = text_weight(arg)
        if weight > MAX_RESULT_CHARS:
            raise too_heavy(weight, arg)
        return json.dumps(arg, separators=(",", ":"), default=str)


_CONSTANT_TIME = frozenset({"abs", "ceil", "floor", "length", "not_null", "to_array", "type"})
"""Functions whose cost does not grow with their arguments: no weighing of them before."""
_OPTIONS = Options(custom_functions=_Functions())


class _Interpreter(TreeInterpreter):
    """JMESPath's own interpreter (as `search` runs it), looking at the clock every _VISITS nodes it visits (a
    projection or filter over a large list visits nodes for each of its items), with its functions bounded
    (`_Functions`)."""

    def __init__(self) -> None:
        super().__init__(_OPTIONS)
        self._visits = 0

    def visit(self, node: _TreeNode, *args: Any, **kwargs: Any) -> Any:
        self._visits += 1
        if not self._visits % _VISITS:
            check_time()
        return super().visit(node, *args, **kwargs)


_VISITS = 64


def template_field(name: str, text: str, spec: FieldSpec, at: At, problems: list[CompileError], *,
                   vars_: Mapping[str, Any] | None, steps: list[Step] | None = None) -> CompiledField | None:
    """A template field: the fast path where Jinja's parse tree allows it, else Jinja, bounded. Without
    modifiers, an undefined name fails the render; with them, it is a missing value like any other."""
    guarded = spec.default is not msgspec.UNSET or spec.on_missing in ("omit", "null")
    messages = check_template(text, None if guarded else vars_)
    if messages:
        problems.extend(CompileError(message, at) for message in messages)
        return None
    try:
        template = ENV.from_string(text)
    except TemplateSyntaxError as exc:
        problems.append(CompileError(f"template syntax error at template line {exc.lineno}: {exc.message}", at))
        return None
    except (RecursionError, MemoryError, SyntaxError) as exc:  # Python's limits on the code Jinja generates
        problems.append(CompileError(too_deep("template", exc), at))
        return None
    fast = compile_fast_source(text)

    def rendering(strict: bool) -> Source:
        """The template's text, or an Absent for an undefined name; `strict`: a render error instead (the field
        has no modifiers to stand in), raised here rather than by one more call around it."""

        def source(ctx: Context) -> Any:
            try:
                out = render_bounded(template, ctx) if fast is None else fast(ctx)
            except UndefinedError as exc:
                out = Absent(f"template: {said(str(exc.message))}")
            except BudgetExceeded as exc:
                raise LimitExceeded(f"{exc} in field {name}", path=name) from None
            except (MemoryError, RecursionError) as exc:
                raise LimitExceeded(f"{out_of(exc)} in field {name}", path=name) from None
            except TEMPLATE_ERRORS as exc:
                raise RenderError(f"template failed: {said(exc)}", path=name) from None
            if type(out) is Absent:
                if strict:
                    raise RenderError(out.why(ctx), path=name)
                return out
            if len(out) > MAX_RENDERED_CHARS:
                raise RenderError(f"template output is {len(out)} characters, over {MAX_RENDERED_CHARS}",
                                  path=name)
            return out

        return source

    source = rendering(strict=False)
    described = f"template {text!r}"
    if not spec.modifiers():
        plain = rendering(strict=True)

        def explain_plain(ctx: Context) -> FieldTrace:
            # Rendered once: `plain` is `source` with an undefined name made the render error it is here.
            trace = FieldTrace(name, described)
            try:
                value = source(ctx)
                if type(value) is Absent:
                    trace.raw, trace.why_missing = MISSING, value.why(ctx)
                    raise RenderError(trace.why_missing, path=name)
                trace.raw = trace.value = value
            except RenderError as exc:
                trace.error = str(exc)
            return trace

        return CompiledField(name, plain, explain_plain, jinja=fast is None, steps=1 + fast_steps(text))
    field = finish(name, source, described, steps or [], spec, source_steps=fast_steps(text))
    field.jinja = fast is None
    return field
