"""Simple templates and `when` expressions compiled to direct calls instead of run through Jinja.

Every Jinja call builds a new context; most mapping templates are a path or two with a filter, and
most `when`s a comparison or two. Those are read from Jinja's own parse tree (so the grammar is
Jinja's) and turned into path look-ups, the same filter functions Jinja would call, and Python's
operators, which are what Jinja's compiled code uses. A missing path behaves as StrictUndefined
does: it may be tested (`is defined`) or defaulted, and anything else fails. Whatever else a
template or expression uses is left to Jinja.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from jinja2 import UndefinedError, nodes

from bridge.mapping.filters import FILTERS, GROWING, STR_METHODS
from bridge.mapping.limits import SMALL_CHARS, UNCHECKED_STEPS, as_text, check_large, check_time, looking
from bridge.mapping.paths import MISSING, ROOTS, Absent, Path, compile_lookup
from bridge.mapping.templates import ENV

Source = Callable[[dict[str, Any]], tuple[Any, str]]

# Jinja resolves `x.items` (or `s.upper`) to the method, not a key: such names stay with Jinja.
_ATTRIBUTE_NAMES = frozenset(dir(dict)) | frozenset(dir(str)) | frozenset(dir(list))
_DEFAULT = object()


class _Unsupported(Exception):
    pass


def _path(node: nodes.Node) -> Path:
    keys: list[str | int] = []
    while True:
        if isinstance(node, nodes.Getattr):
            if node.attr in _ATTRIBUTE_NAMES:
                raise _Unsupported
            keys.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) \
                and type(node.arg.value) in (str, int):
            keys.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Name) and node.name in ROOTS:
            keys.append(node.name)
            break
        else:
            raise _Unsupported
    keys.reverse()
    return Path(".".join(str(k) for k in keys), tuple(keys))


def _const(node: nodes.Node) -> Any:
    if not isinstance(node, nodes.Const):
        raise _Unsupported
    return node.value


def _expression(node: nodes.Node) -> tuple[Path, list[tuple[Any, tuple[Any, ...]]]]:
    chain: list[tuple[Any, tuple[Any, ...]]] = []
    while isinstance(node, nodes.Filter):
        if node.node is None or node.dyn_args is not None or node.dyn_kwargs is not None:
            raise _Unsupported
        args = tuple(_const(a) for a in node.args)
        kwargs: dict[str, Any] = {str(kw.key): _const(kw.value) for kw in node.kwargs}
        if node.name in ("default", "d"):
            if set(kwargs) - {"default_value", "boolean"} or len(args) > 2:
                raise _Unsupported
            value = kwargs.get("default_value", args[0] if args else "")
            boolean = kwargs.get("boolean", args[1] if len(args) > 1 else False)
            chain.append((_DEFAULT, (value, bool(boolean))))
        elif node.name in FILTERS and not kwargs:
            chain.append((FILTERS[node.name], args))
        else:
            raise _Unsupported
        node = node.node
    chain.reverse()
    return _path(node), chain


Lookup = Callable[[dict[str, Any]], Any]


def _piece(path: Path, chain: list[tuple[Any, tuple[Any, ...]]]) -> Lookup:
    """A path and its filters as one function of the context: the value, or MISSING. The filters run as Jinja
    would run them: `default` replaces a missing (or null) value, and any other filter leaves a missing value
    missing."""
    get = compile_lookup(path)
    if not chain:
        return get
    # As a transform's steps (modifiers.finish): on a value that is not small, or in a chain that may make one, each
    # filter on a value that is not small looks at the clock after it.
    looked: list[tuple[Any, tuple[Any, ...]]] = [(fn if fn is _DEFAULT else looking(fn), args) for fn, args in chain]
    small = -1 if any(fn is FILTERS[name] for name in GROWING for fn, _ in chain) else SMALL_CHARS
    quick = _str_methods(chain)

    def filtered(ctx: dict[str, Any]) -> Any:
        value = get(ctx)
        for fn, args in quick if type(value) is str and len(value) <= small else looked:
            if fn is _DEFAULT:
                if value is MISSING or value is None or (args[1] and not value):
                    value = args[0]
            elif value is MISSING:
                return MISSING
            else:
                value = fn(value, *args)
        return value

    return filtered


def _str_methods(chain: list[tuple[Any, tuple[Any, ...]]]) -> list[tuple[Any, tuple[Any, ...]]]:
    """`chain` as run on a str: its first filters that are str methods (filters.STR_METHODS) called as those methods,
    in C, as a `default` of a str keeps the value a str; from the first other step on, the steps themselves."""
    out = []
    methods = True
    for fn, args in chain:
        if fn is _DEFAULT:
            methods = methods and type(args[0]) is str
            out.append((fn, args))
            continue
        method = STR_METHODS.get(fn) if methods else None
        methods = method is not None
        out.append((method or fn, args))
    return out


def fast_steps(text: str) -> int:
    """At most how many steps on small values a fast-path render of `text` takes without a look at the clock: its
    filters (counted, more than once at worst, as the `|`s of its text)."""
    return text.count("|")


def compile_fast_source(text: str) -> Lookup | None:
    """A direct renderer for `text`, or None when the template needs Jinja (which looks at the clock before each
    filter: so do templates of more than limits.UNCHECKED_STEPS filters). It gives the text, or the Absent of the
    first missing path."""
    if fast_steps(text) > UNCHECKED_STEPS:
        return None
    try:
        tree = ENV.parse(text)
    except Exception:  # the Jinja path reports syntax errors with their line
        return None
    pieces: list[str | tuple[Absent, Lookup]] = []
    try:
        for stmt in tree.body:
            if not isinstance(stmt, nodes.Output):
                raise _Unsupported
            for item in stmt.nodes:
                if isinstance(item, nodes.TemplateData):
                    pieces.append(item.data)
                else:
                    path, chain = _expression(item)
                    pieces.append((Absent("template: ", path), _piece(path, chain)))
    except _Unsupported:
        return None
    found = [i for i, p in enumerate(pieces) if not isinstance(p, str)]
    if not found:
        return None
    if len(found) == 1:
        return _one_piece(pieces, found[0])

    def render(ctx: dict[str, Any]) -> Any:
        out: list[str] = []
        for piece in pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            absent, get = piece
            value = get(ctx)
            if value is MISSING:
                return absent
            out.append(value if type(value) is str else _text(value))
        text = "".join(out)
        if len(text) > SMALL_CHARS:
            check_time()
        return text

    return render


def _text(value: Any) -> str:
    """A value that is not a string, written as the template's text (not begun on the loop when too large for it)."""
    check_large(value)
    return as_text(value)


def _one_piece(pieces: list[str | tuple[Absent, Lookup]], at: int) -> Lookup:
    """The renderer of a template with one expression: its text before and after, joined to the value."""
    one = pieces[at]
    assert not isinstance(one, str)
    absent, get = one
    prefix = "".join(p for p in pieces[:at] if isinstance(p, str))
    suffix = "".join(p for p in pieces[at + 1:] if isinstance(p, str))

    if not prefix and not suffix:  # the value itself: no copy made

        def alone(ctx: dict[str, Any]) -> Any:
            value = get(ctx)
            if type(value) is str:
                return value
            if value is MISSING:
                return absent
            return _text(value)

        return alone

    def render(ctx: dict[str, Any]) -> Any:
        value = get(ctx)
        if type(value) is str:
            if len(value) <= SMALL_CHARS:
                return prefix + value + suffix
            text = prefix + value + suffix  # a copy: a look at the clock after it
            check_time()
            return text
        if value is MISSING:
            return absent
        return "".join([prefix, _text(value), suffix])

    return render


def compile_fast(text: str) -> Source | None:
    """A direct renderer for `text` giving (text, "") or (MISSING, why), or None when the template needs Jinja."""
    render = compile_fast_source(text)
    if render is None:
        return None

    def pair(ctx: dict[str, Any]) -> tuple[Any, str]:
        value = render(ctx)
        return (MISSING, value.why(ctx)) if type(value) is Absent else (value, "")

    return pair


_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "lteq": operator.le, "gt": operator.gt,
    "gteq": operator.ge, "in": lambda a, b: a in b, "notin": lambda a, b: a not in b,
}
Expr = Callable[[dict[str, Any]], Any]


class _Missing(UndefinedError):
    """A missing path used where StrictUndefined would fail."""


def _value(fn: Expr, label: str) -> Expr:
    def need(ctx: dict[str, Any]) -> Any:
        value = fn(ctx)
        if value is MISSING:
            raise _Missing(f"{label} is undefined")
        return value

    return need


def _filtered(node: nodes.Node) -> tuple[Expr, str]:
    path, chain = _expression(node)
    return _piece(path, chain), path.text


def _expr(node: nodes.Node) -> Expr:
    """A function of the context; raises _Missing where StrictUndefined would raise."""
    if isinstance(node, nodes.Const):
        value = node.value
        return lambda ctx: value
    if isinstance(node, nodes.List | nodes.Tuple):
        items = [_expr(item) for item in node.items]
        return lambda ctx: [item(ctx) for item in items]
    if isinstance(node, nodes.Test):
        return _test(node)
    if isinstance(node, nodes.Not):
        if isinstance(node.node, nodes.Test) and node.node.name in ("defined", "undefined"):
            return _test(node.node, negated=True)  # `x is not defined`: `x is undefined`, one call the fewer
        inner = _expr(node.node)
        return lambda ctx: not inner(ctx)
    if isinstance(node, nodes.And):
        left, right = _expr(node.left), _expr(node.right)
        return lambda ctx: left(ctx) and right(ctx)
    if isinstance(node, nodes.Or):
        left, right = _expr(node.left), _expr(node.right)
        return lambda ctx: left(ctx) or right(ctx)
    if isinstance(node, nodes.Compare):
        first = _expr(node.expr)
        steps = []
        for step in node.ops:
            if step.op not in _COMPARE:
                raise _Unsupported
            steps.append((_COMPARE[step.op], _expr(step.expr)))
        if len(steps) == 1:
            [(op, right_fn)] = steps
            right_node = node.ops[0].expr
            if isinstance(right_node, nodes.Const) and not isinstance(node.expr, _NOT_PATHS):
                return _compare_to_constant(node.expr, op, right_node.value)
            return lambda ctx: bool(op(first(ctx), right_fn(ctx)))

        def compare(ctx: dict[str, Any]) -> bool:
            left = first(ctx)
            for op, right_fn in steps:
                right = right_fn(ctx)
                if not op(left, right):
                    return False
                left = right
            return True

        return compare
    fn, label = _filtered(node)
    return _value(fn, label)


def _test(node: nodes.Test, negated: bool = False) -> Expr:
    """`is defined`, `is undefined` (the other when `negated`), `is none`."""
    if node.name not in ("defined", "undefined", "none") or node.args or node.kwargs or node.dyn_args \
            or node.dyn_kwargs:
        raise _Unsupported
    inner, label = _filtered(node.node)
    if node.name != "none" and (node.name == "defined") != negated:
        return lambda ctx: inner(ctx) is not MISSING
    if node.name != "none":
        return lambda ctx: inner(ctx) is MISSING
    need = _value(inner, label)
    return lambda ctx: need(ctx) is None


_NOT_PATHS = (nodes.Const, nodes.List, nodes.Tuple, nodes.Test, nodes.Not, nodes.And, nodes.Or, nodes.Compare)


def _compare_to_constant(node: nodes.Node, op: Callable[[Any, Any], Any], right: Any) -> Expr:
    """`path op constant` (the commonest `when`) as one call: `_value` and the compare folded together."""
    get, label = _filtered(node)

    def compare(ctx: dict[str, Any]) -> bool:
        value = get(ctx)
        if value is MISSING:
            raise _Missing(f"{label} is undefined")
        return bool(op(value, right))

    return compare


def compile_fast_expression(text: str) -> Expr | None:
    """A direct evaluator for the expression `text`, or None when it needs Jinja. The evaluator raises
    jinja2's UndefinedError where Jinja with StrictUndefined would."""
    if fast_steps(text) > UNCHECKED_STEPS:
        return None  # Jinja looks at the clock before each filter
    try:
        expr = ENV.parse(f"{{{{ {text} }}}}")
        [output] = expr.body
        assert isinstance(output, nodes.Output)
        [node] = output.nodes
        return _expr(node)
    except (_Unsupported, ValueError, AssertionError):
        return None
    except Exception:  # the Jinja path reports syntax errors
        return None
