"""A whole mapping compiled: `matches` (its `when`), `render`, the vendor's `body`, and `explain`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateSyntaxError, UndefinedError

from bridge.errors import MappingError
from bridge.mapping.base import (
    TEMPLATE_ERRORS,
    CompiledField,
    CompileError,
    Context,
    LimitExceeded,
    RenderError,
    out_of,
    said,
    then_check,
)
from bridge.mapping.fastpath import compile_fast_expression
from bridge.mapping.limits import UNCHECKED_STEPS, Budget, BudgetExceeded, check_slice, unbounded
from bridge.mapping.model import MappingSpec
from bridge.mapping.templatecheck import check_template, too_deep
from bridge.mapping.templates import ENV, TemplateShapeError, bounded, parse_checked
from bridge.mapping.trace import OMIT, FieldTrace, MappingTrace


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
    fields: list[CompiledField] = field(default_factory=list)
    when: Callable[..., Any] | None = None
    when_text: str | None = None
    vendor_body: Callable[[dict[str, Any]], Any] | None = None
    test_lines: list[int | None] = field(default_factory=list)
    follow_up: CompiledMapping | None = None
    """What a conversation's later messages do (rendered at send time, with `ticket`); None: not threaded,
    unless `conversation` is set, when every message is a create."""
    follow_up_skip: bool = False
    conversation: CompiledField | None = None
    reopen_after_s: float = 0.0

    @property
    def threaded(self) -> bool:
        """Whether this mapping's deliveries belong to conversations (ordered, one ticket each)."""
        return self.follow_up is not None or self.follow_up_skip or self.conversation is not None

    def __post_init__(self) -> None:
        # A mapping of many steps on small values looks at the loop slice after each field (limits.UNCHECKED_STEPS).
        checked = sum(f.steps for f in self.fields) > UNCHECKED_STEPS
        self._plan = [(f.name, then_check(f.render) if checked else f.render) for f in self.fields]
        # A mapping with Jinja renders under its budget everywhere. One without renders under it where nothing else
        # bounds it (limits.unbounded: the parser thread, the CLI), as a filter may be costly on a large value; on the
        # loop it takes none, as the loop slice (limits.start_slice), which its filters look at, ends first.
        self._budgeted = any(f.jinja for f in self.fields)

    def matches(self, ctx: Context) -> bool:
        if self.when is None:
            return True
        try:
            if unbounded():  # off the loop: a budget for a `when` without Jinja too
                with Budget():
                    return bool(self.when(ctx))
            return bool(self.when(ctx))  # a `when` that needs Jinja runs under its own budget (compile_when)
        except BudgetExceeded as exc:
            raise LimitExceeded(f"when: {exc}", path=self.name) from None
        except (MemoryError, RecursionError) as exc:
            raise LimitExceeded(f"when: {out_of(exc, 'expression')}", path=self.name) from None
        except UndefinedError as exc:
            raise RenderError(f"when: {said(str(exc.message))} (test with `is defined`)", path=self.name) from None
        except TEMPLATE_ERRORS as exc:
            raise RenderError(f"when: {said(exc)}", path=self.name) from None

    def render(self, ctx: Context) -> dict[str, Any]:
        """The fields for `ctx`, all rendered under one time budget (on the loop, one without Jinja under the loop
        slice alone)."""
        try:
            if self._budgeted or unbounded():
                with Budget():
                    return self._render(ctx)
            return self._render(ctx)
        except LimitExceeded as exc:
            raise LimitExceeded(exc.message, path=f"{self.name}.{exc.path}") from None

    def conversation_key(self, ctx: Context) -> Any:
        """The `conversation:` expression's value for `ctx` (a MappingError when it does not render), under a budget
        of its own where nothing else bounds it, as a render (`render`)."""
        assert self.conversation is not None
        if unbounded():
            with Budget():
                return self.conversation.render(ctx)
        return self.conversation.render(ctx)

    def _render(self, ctx: Context) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, fn in self._plan:
            value = fn(ctx)
            if value is not OMIT:
                out[name] = value
        return out

    def _explain_fields(self, ctx: Context) -> list[FieldTrace]:
        """Each field explained, with a look at the loop slice after each (an explanation is no hot path)."""
        out = []
        for f in self.fields:
            out.append(f.explain(ctx))
            check_slice()
        return out

    def body(self, fields: dict[str, Any]) -> Any:
        """What the vendor is sent for these fields (its envelope), or the fields when the destination
        cannot say. Raises MappingError when the vendor would refuse them."""
        return fields if self.vendor_body is None else self.vendor_body(fields)

    def explain(self, ctx: Context) -> MappingTrace:
        """The render of `ctx`, field by field; never raises a MappingError (it is recorded instead). The fields run
        under one time budget, as in `render`, so that an explanation costs no more than a render and fails on
        the field the render fails on."""
        trace = MappingTrace(self.name, self.version, self.destination, self.action, when=self.when_text)
        try:
            trace.matched = self.matches(ctx)
        except MappingError as exc:
            trace.error = str(exc)
            return trace
        if not trace.matched:
            return trace
        if self._budgeted or unbounded():
            with Budget():  # one budget for all the fields, as `render` has: the same field runs out of it first
                trace.fields = self._explain_fields(ctx)
        else:
            trace.fields = self._explain_fields(ctx)
        failed = next((t for t in trace.fields if t.error is not None), None)
        if failed is not None:
            trace.error = failed.error
            return trace
        trace.body = {t.name: t.value for t in trace.fields if t.value is not OMIT}
        try:
            trace.vendor_body = self.body(trace.body)
        except MappingError as exc:
            trace.error = str(exc) if exc.path else f"{self.destination}: {exc}"
        return trace


def compile_when(text: str, vars_: Mapping[str, Any] | None = None) -> Callable[..., Any]:
    """`when`, compiled: the fast path where it can, else Jinja under the time budget."""
    try:
        parse_checked(f"{{{{ {text} }}}}", "expression")
    except TemplateShapeError as exc:
        raise CompileError(str(exc)) from None
    except TemplateSyntaxError:
        pass  # said below, as Jinja's expression parser words it
    try:
        # undefined_to_none=False: a bare undefined name must fail (StrictUndefined), not read as false.
        expr = ENV.compile_expression(text, undefined_to_none=False)
    except (RecursionError, MemoryError, SyntaxError) as exc:  # Python's limits on the code Jinja generates
        raise CompileError(too_deep("expression", exc)) from None
    except TemplateSyntaxError as exc:
        # Jinja refuses an unknown filter or test here, as a syntax error; the template check names it with the
        # nearest known one and the list, as for templates.
        named = [m for m in check_template(f"{{{{ {text} }}}}", vars_, kind="expression")
                 if m.startswith(("unknown filter", "unknown test"))]
        if named:
            raise CompileError.collect([CompileError(m) for m in named]) from None
        raise CompileError(f"expression syntax error: {exc.message}") from None
    messages = check_template(f"{{{{ {text} }}}}", vars_, kind="expression")
    if messages:
        raise CompileError.collect([CompileError(m) for m in messages])
    fast = compile_fast_expression(text)
    if fast is not None:
        return fast
    run = bounded(expr)
    return lambda ctx: run(**ctx)
