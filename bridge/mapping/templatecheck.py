"""What can be known about a template before any event: syntax, names, filters and their arguments, and
vars that the config does not set."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from jinja2 import TemplateSyntaxError, meta, nodes

from bridge.mapping.arguments import UNKNOWN
from bridge.mapping.builtins import filter_problems, jinja_test_problems, known_tests
from bridge.mapping.filters import FILTERS
from bridge.mapping.paths import ROOTS
from bridge.mapping.templates import ENV, GLOBAL_NAMES, REMOVED_FILTERS, TemplateShapeError, parse_checked
from bridge.yamlfile import did_you_mean


def check_template(text: str, vars_: Mapping[str, Any] | None, kind: str = "template") -> list[str]:
    """Every problem of `text`, as messages; empty when it is fine. With `vars_`, a `vars.X` used
    without `default` or an `is defined` test must be set in the config."""
    try:
        tree = parse_checked(text, kind)
    except TemplateShapeError as exc:
        return [str(exc)]
    except TemplateSyntaxError as exc:
        return [f"template syntax error at template line {exc.lineno}: {exc.message}"]
    problems: list[str] = []
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        what = "filter" if isinstance(node, nodes.Filter) else "test"
        known = ENV.filters if what == "filter" else ENV.tests
        if what == "filter" and node.name in REMOVED_FILTERS:
            problems.append(f"the {node.name} filter is not available in templates: {REMOVED_FILTERS[node.name]}")
            continue
        if node.name not in known:
            problems.append(f"unknown {what} {node.name!r} in the {kind}{did_you_mean(node.name, known)}; "
                            + (f"known filters: {', '.join(sorted(FILTERS))} and Jinja's built-ins (length, list, …)"
                               if what == "filter" else f"known tests: {known_tests()}"))
            continue
        if node.dyn_args is not None or node.dyn_kwargs is not None:  # `f(*xs)`: the arguments are not known
            continue
        args = [_literal(a) for a in node.args]
        kwargs = {str(kw.key): _literal(kw.value) for kw in node.kwargs}
        found = filter_problems(node.name, args, kwargs) if what == "filter" else \
            jinja_test_problems(node.name, args, kwargs)
        if found:
            problems.append(f"bad arguments to the {node.name} {what}: {'; '.join(found)}")
    if problems:
        return problems  # the name analysis below compiles the template, which needs known filters
    try:
        names = meta.find_undeclared_variables(tree)
    except TemplateSyntaxError as exc:  # an unknown test (`is foo`), found as the template compiles
        return [f"template syntax error at template line {exc.lineno}: {exc.message}"]
    except (RecursionError, MemoryError) as exc:  # past what parse_checked foresees: deep already in the stack
        return [too_deep(kind, exc)]
    # Jinja declares `self` (the template's blocks) implicitly; mappings have no blocks to call.
    if any(n.name == "self" and n.ctx == "load" for n in tree.find_all(nodes.Name)):
        names = {*names, "self"}
    for name in sorted(names - ROOTS - GLOBAL_NAMES):
        problems.append(f"unknown name {name!r} in the {kind}: it sees {', '.join(sorted(ROOTS))} "
                        "and range()")
    if vars_ is not None:
        refs = list(_var_refs(tree))
        # A var tested or defaulted anywhere in the template is one its author knows may be absent.
        guarded = {key for key, shielded in refs if shielded}
        for key in dict.fromkeys(key for key, shielded in refs if not shielded and key not in guarded):
            if key not in vars_:
                problems.append(f"vars.{key} is not set in the config, so the {kind} would always fail "
                                f"(the config's vars: {', '.join(sorted(vars_)) or '(none)'}); "
                                f"set it, or write `vars.{key} | default(…)`")
    return problems


def _literal(node: nodes.Node) -> Any:
    """An argument's value when the template writes it as a literal (`100`, `-5`, `'x'`, `['a', 1]`, `{'k': 'v'}`),
    else UNKNOWN."""
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, nodes.Neg) and isinstance(node.node, nodes.Const) \
            and isinstance(node.node.value, int | float) and not isinstance(node.node.value, bool):
        return -node.node.value
    if isinstance(node, nodes.List | nodes.Tuple):
        items = [_literal(item) for item in node.items]
        return UNKNOWN if any(item is UNKNOWN for item in items) else (
            items if isinstance(node, nodes.List) else tuple(items))
    if isinstance(node, nodes.Dict):
        pairs = [(_literal(pair.key), _literal(pair.value)) for pair in node.items]
        if any(key is UNKNOWN or value is UNKNOWN or not _hashable(key) for key, value in pairs):
            return UNKNOWN
        return dict(pairs)
    return UNKNOWN


def _hashable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | type(None))


def too_deep(kind: str, exc: BaseException) -> str:
    """The compile error for a RecursionError, MemoryError or Python SyntaxError met compiling a template that
    passed `parse_checked` (Python's own limits on the code Jinja generates)."""
    detail = exc.msg if isinstance(exc, SyntaxError) else type(exc).__name__
    return f"{kind} nests too deeply to compile ({detail})"


def _var_key(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name == "vars":
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Name) and node.node.name == "vars" \
            and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return node.arg.value
    return None


def _var_refs(node: nodes.Node, guarded: bool = False) -> Iterator[tuple[str, bool]]:
    """Each `vars.X` reference, and whether it sits under a `default` filter or inside a test (`is defined`)."""
    key = _var_key(node)
    if key is not None:
        yield key, guarded
        return
    for child in node.iter_child_nodes():
        shielded = guarded or isinstance(node, nodes.Test) or (
            isinstance(node, nodes.Filter) and node.name in ("default", "d") and child is node.node)
        yield from _var_refs(child, shielded)
