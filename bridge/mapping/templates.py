"""Jinja in its immutable sandbox: no environment, no filesystem, undefined names are errors, and every
render bounded in size and time.

Templates see only the render context (payload, headers, event, vars, ticket) and a bounded `range`.
Bounds, because payloads come from strangers (limits.py holds them):
- time: the budget is checked at every loop step (the code generator wraps each `for` iterable), every
  item an iterating filter reads (`join`, `map`, `select`, `sum`, `list`, `sort`, `unique`, `batch`, …),
  every call, attribute and item look-up, and every output chunk;
- size: `*`, `+`, `~`, `%`, `join`, `replace`, `str.format` and the padding methods (`ljust`, `zfill`, …)
  are refused before they would build a string or list past MAX_RESULT_CHARS, and every filter's and
  method's result is checked after; `range` gives at most MAX_RANGE items; block `set`s and macros are
  joined under the same cap; output is counted as it streams and stops at MAX_RENDERED_CHARS;
- weight: a list of a million references to one long string is small in memory and enormous as text, and
  one C call (str, repr, JSON) writes it whatever the time budget. So a list, tuple or table is weighed (its
  text length, by a walk that stops past the cap: limits.text_weight) where it is built — by `*`, `+`, a
  literal, a filter or a method — and refused past MAX_RESULT_CHARS; and whatever writes a value as text
  (output, `~`, `%`, `format`, `join`, and every filter but those that never write their input) weighs it
  first;
- arithmetic: `**` and `*` on integers are refused before they build an integer past MAX_INT_DIGITS;
- shape: a template longer than MAX_TEMPLATE_CHARS, or nesting more than MAX_TEMPLATE_BLOCKS blocks or
  MAX_TEMPLATE_DEPTH levels in all (past which Jinja's compiler or Python's runs out of stack, indentation or
  nested blocks), is a compile error (`parse_checked`).
Jinja's padding filters (center, indent, wordwrap, format) and `random` are removed. What would take time in the
square of its input in one call no budget can stop is bounded before it runs: `strip` (filter and methods) and
`trim` with many characters to strip (filters.stripped), `pprint` of a deep and heavy value (PPRINT_COST),
`encode`/`decode` with the idna or punycode codec (refused), and `urlize` on a long word (URLIZE_WORD). Jinja's
filters that are one call no look at the clock can stop are bounded before it: a sort (`sort`, `dictsort`,
`groupby`) by its count of items (MAX_SORTED, and limits.LOOP_SORTED on the loop), `round` by its digits
(MAX_ROUND_DIGITS); and those that loop in Python without a look (`urlize`, `xmlattr`, `urlencode`, `tojson` with an
indent) run on pieces of their input, with a look and their output counted between pieces. What each built-in's
arguments must be is checked when a mapping loads (builtins.py).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.filters import do_pprint
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup, escape, soft_str

from bridge.escaping import quoted_sent
from bridge.mapping.filters import FEW_CHARS, FILTERS, stripped
from bridge.mapping.limits import (
    LOOP_SORTED,
    MAX_INT_BITS,
    MAX_INT_DIGITS,
    MAX_RESULT_CHARS,
    WEIGHED,
    Budget,
    BudgetExceeded,
    budget_iter,
    check_int,
    check_large,
    check_loop_count,
    check_size,
    check_time,
    check_weight,
    replaced_size,
    sized_iter,
    text_weight,
    too_heavy,
    too_long,
)

MAX_RANGE = 10_000
MAX_SORTED = 10_000
"""The most items `sort`, `dictsort` and `groupby` sort: Python's sort is one call no budget can stop (some 10 ms for
10,000 items; a 1 MiB payload's half a million numbers: 0.2 s of one C call, holding the interpreter)."""
MAX_ROUND_DIGITS = 100
"""The most digits `round` rounds to (or above the point, negative): its `ceil` and `floor` build 10**precision,
one call of seconds past a million digits."""
MAX_JSON_INDENT = 100
MAX_RENDERED_CHARS = MAX_RESULT_CHARS
MAX_EXPONENT = 1_000
MAX_TEMPLATE_CHARS = 100_000
# Blocks ({% for %}, {% if %}, {% macro %}, …) inside one another: Python allows 20 nested loops and 100 levels of
# indentation in the code Jinja generates. Levels of the parse tree in all: Python allows 200 nested parentheses,
# and Jinja's compiler recurses once or more per level.
MAX_TEMPLATE_BLOCKS = 16
MAX_TEMPLATE_DEPTH = 64
MAX_TEMPLATE_BRACKETS = 24  # Jinja's parser recurses a dozen calls deep per bracket
GLOBAL_NAMES = frozenset({"range"})
REMOVED_FILTERS = {
    "center": "it pads to any width in one call; a text's center method (`payload.x.center(20)`) is bounded",
    "indent": "it lays out text in one call of any size; write replace('\\n', '\\n    ')",
    "wordwrap": "it lays out text in one call of any size; leave the wrapping to the destination",
    "format": "it pads to any width in one call; write `'%s-%s' % (a, b)` or `'{}-{}'.format(a, b)`, which are "
              "bounded",
    "random": "a render must give the same result each time it runs (a replay, a test)",
}
"""Jinja's filters templates do not have, and why."""
# Filters that never write their input as text (nor copy what it holds more than once), and `join`, which weighs
# each item itself as it reads it: the others weigh their input first.
_WRITE_NOTHING = frozenset({
    "abs", "attr", "batch", "bool", "count", "d", "date", "default", "dictsort", "filesizeformat", "first", "float",
    "groupby", "html_to_text", "int", "items", "last", "length", "list", "lower", "map", "max", "min", "phone_e164",
    "reject", "rejectattr", "replace", "reverse", "round", "select", "selectattr", "slice", "sort", "split", "strip",
    "strip_quoted", "sum", "title", "truncate", "unique", "upper", "join"})
# Filters that read their whole input: it is handed to them through a budget-checking iterator.
_ITERATING = frozenset({"map", "select", "reject", "selectattr", "rejectattr", "list", "sort", "unique",
                        "batch", "slice", "groupby", "min", "max"})
_CONCATENATING = frozenset({"sum"})
_SORTING = frozenset({"sort", "dictsort", "groupby"})  # their input read whole and counted first (_to_sort)
_PADDING_METHODS = frozenset({"ljust", "rjust", "center", "zfill"})
_REFUSED_METHODS = frozenset({"translate", "maketrans"})  # a table can map each character to a long text
_STRIPPING_METHODS = frozenset({"strip", "lstrip", "rstrip"})
_SLOW_CODECS = frozenset({"idna", "punycode"})
"""Codecs that `encode` and `decode` refuse: Python's own, written in Python, take time in the square of the text's
length (punycode's 16,000 distinct characters: 30 s in one call, which no budget stops; idna runs it on each label).
Names are compared by their ASCII letters and digits alone, lower-cased: no spelling Python's codec look-up accepts
slips past."""
PPRINT_ITEMS = 2_000
"""The most items (in all its lists and tables) a value `pprint` lays out may hold: it is Python's pprint, one call
no look at the clock stops, some 15 µs an item of a table (a 3,600-key table held the loop 57 ms; 87,000 keys took
1.8 s)."""
LOOP_PPRINT_ITEMS = 256
"""The most items a `pprint` may begin on under a loop slice (some 4 ms): more end the slice."""
PPRINT_COST = 64 * MAX_RESULT_CHARS
"""`pprint` lays a nested value out by writing, at each level, all that lies below it (to see whether it fits a
line), and building each of those texts from the level below: its cost grows with the value's weight times the
square of its depth (a 1 MB string 128 lists deep: some 2 s in one call). A value whose weight times its depth
squared passes this is refused; one this costly takes some 50 ms."""
_NUMBER = re.compile(r"\d+")
_FIELD_ROOT = re.compile(r"[^.\[]*")  # what a format field names: `0` of `0.x`, `k` of `k[1]`
_PERCENT_KEY = re.compile(r"%\(([^)]*)\)")

__all__ = ["MAX_INT_DIGITS", "MAX_RANGE", "MAX_RENDERED_CHARS", "MAX_TEMPLATE_BLOCKS", "MAX_TEMPLATE_CHARS",
           "MAX_TEMPLATE_DEPTH", "BudgetExceeded", "TemplateShapeError", "bounded", "parse_checked", "render_bounded"]


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


def _sized(value: Any) -> bool:
    return isinstance(value, str | list | tuple | bytes)


class BudgetCodeGenerator(CodeGenerator):
    """Jinja's code generator, with every `for` iterable run through `environment.budget_iter`, every
    `~` through `environment.tilde`, and every list, tuple and table a template writes through
    `environment.weighed`."""

    _loop_iterables: set[int] | None = None

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        if self._loop_iterables is None:
            self._loop_iterables = set()
        self._loop_iterables.add(id(node.iter))
        super().visit_For(node, frame)

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        if self._loop_iterables is None or id(node) not in self._loop_iterables:
            return super().visit(node, *args, **kwargs)
        self.write("environment.budget_iter(")
        super().visit(node, *args, **kwargs)
        self.write(")")
        return None

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.tilde((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.weighed(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.weighed(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # a target: `{% for a, b in … %}`, `{% set a, b = … %}`
            super().visit_Tuple(node, frame)
            return
        self.write("environment.weighed(")
        super().visit_Tuple(node, frame)
        self.write(")")


def _guard_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` under the budget: time checked before it runs, its input weighed first unless it never writes
    it as text, read through a checking iterator when it iterates, size arguments checked, and its result
    weighed after."""
    skip = 1 if getattr(fn, "jinja_pass_arg", None) is not None else 0
    wrap: Callable[[Iterable[Any]], Iterable[Any]] | None = (
        _to_sort if name in _SORTING else budget_iter if name in _ITERATING
        else sized_iter if name in _CONCATENATING else None)
    writes = name not in _WRITE_NOTHING

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        check_time()
        if len(args) > skip:
            check_large(args[skip])  # not begun on the loop on a value too large for it
        _check_filter_args(name, args[skip + 1:], kwargs)
        if writes and len(args) > skip:
            check_weight(args[skip], _indent_of(name, args[skip + 1:], kwargs))
        if wrap is not None and len(args) > skip and not isinstance(args[skip], StrictUndefined):
            args = (*args[:skip], wrap(args[skip]), *args[skip + 1:])
        return check_weight(fn(*args, **kwargs))

    return guarded


def _indent_of(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """What a pretty-printing filter adds to each item's line per level of nesting."""
    if name == "pprint":
        return 1
    if name == "tojson":
        indent = args[0] if args else kwargs.get("indent")
        return indent if isinstance(indent, int) and indent > 0 else len(indent) if isinstance(indent, str) else 0
    return 0


def _to_sort(value: Iterable[Any]) -> Iterable[Any]:
    """What a sorting filter sorts, read under the budget (a table as it is: `dictsort` sorts its items), refused
    past MAX_SORTED items (counted before a list is read, and an iterator read no further), and not sorted on the
    loop past limits.LOOP_SORTED."""
    if isinstance(value, Sized) and len(value) > MAX_SORTED:
        raise BudgetExceeded(f"sorting {len(value):,} items is over the limit of {MAX_SORTED:,}")
    items = value if isinstance(value, Mapping) else list(itertools.islice(budget_iter(value), MAX_SORTED + 1))
    if len(items) > MAX_SORTED:
        raise BudgetExceeded(f"sorting more than {MAX_SORTED:,} items is over the limit of {MAX_SORTED:,}")
    check_loop_count(len(items), LOOP_SORTED)
    return items


# Arguments that set how much a filter builds or how long its one call takes: batch's and slice's counts, tojson's
# indent (a number of spaces, or the text itself), round's digits.
_SIZE_ARGUMENTS = {"batch": ("linecount", MAX_RANGE), "slice": ("slices", MAX_RANGE),
                   "tojson": ("indent", MAX_JSON_INDENT), "round": ("precision", MAX_ROUND_DIGITS)}


def _check_filter_args(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if name not in _SIZE_ARGUMENTS:
        return
    key, limit = _SIZE_ARGUMENTS[name]
    value = args[0] if args else kwargs.get(key)
    size = abs(value) if isinstance(value, int) else len(value) if isinstance(value, str) else 0
    if size > limit:
        raise BudgetExceeded(f"{name}: {key} of {f'{size} characters' if isinstance(value, str) else value} is "
                             f"over the limit of {limit}")


class BridgeEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with the size guards on operators, methods and filters, and the time
    budget on every loop step, access and call."""

    code_generator_class = BudgetCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    @staticmethod
    def budget_iter(iterable: Iterable[Any]) -> Iterator[Any]:
        return budget_iter(iterable)

    @staticmethod
    def tilde(parts: tuple[Any, ...]) -> str:
        size = 0
        for part in parts:  # weighed before any is written
            size += len(part) if isinstance(part, str) else text_weight(part, MAX_RESULT_CHARS - size)
            if size > MAX_RESULT_CHARS:
                raise too_long(size)
        return "".join([p if isinstance(p, str) else str(p) for p in parts])

    @staticmethod
    def weighed(value: Any) -> Any:
        """A list, tuple or table the template writes (`[a, b]`, `(a, b)`, `{'k': a}`), refused past the cap."""
        return check_weight(value)

    @staticmethod
    def weigh_output(value: Any) -> Any:
        """The environment's `finalize`: what `{{ … }}` writes, weighed before Jinja turns it into text
        (strings are counted as they stream)."""
        if isinstance(value, str):
            return value
        check_large(value)  # written as text by one call into C
        return check_weight(value)

    @staticmethod
    def concat(parts: Iterable[str]) -> str:
        """Joins a block `set`, a macro's or a call block's output: under the same cap."""
        out = list(sized_iter(parts))
        return "".join(out)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        check_time()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if _sized(seq) and isinstance(n, int) and len(seq) * n > MAX_RESULT_CHARS:
                    raise BudgetExceeded(f"repeating {len(seq)} items {n} times is over the limit of "
                                         f"{MAX_RESULT_CHARS}")
                if isinstance(seq, list | tuple) and isinstance(n, int) and n > 1:
                    weight = text_weight(seq, MAX_RESULT_CHARS // n) * n
                    if weight > MAX_RESULT_CHARS:
                        raise too_heavy(weight, seq)
            if isinstance(left, int) and isinstance(right, int) \
                    and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
                raise BudgetExceeded(f"integer result over {MAX_INT_DIGITS} digits")
        elif operator == "**":
            if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
                raise BudgetExceeded(f"an exponent of {right} is over the limit of {MAX_EXPONENT}")
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1 \
                    and (left.bit_length() - 1) * right > MAX_INT_BITS:
                raise BudgetExceeded(f"integer result over {MAX_INT_DIGITS} digits")
        elif operator == "+":
            if _sized(left) and _sized(right) and len(left) + len(right) > MAX_RESULT_CHARS:
                raise too_long(len(left) + len(right), "string" if isinstance(left, str | bytes) else "list")
            if isinstance(left, list | tuple) and isinstance(right, list | tuple):
                weight = text_weight(left) + text_weight(right)
                if weight > MAX_RESULT_CHARS:
                    raise too_heavy(weight, left)
        elif operator == "%" and isinstance(left, str | bytes):
            _check_percent(left, right)
        return check_int(check_size(super().call_binop(context, operator, left, right)))

    def getattr(self, obj: Any, attribute: str) -> Any:
        check_time()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        check_time()
        return super().getitem(obj, argument)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        check_time()
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str | bytes):
            check_large(owner)  # a string method is one call into C
            name = __obj.__name__
            if name in _STRIPPING_METHODS and len(args) == 1 and not kwargs:
                return _strip_method(owner, name, args[0], lambda: super(BridgeEnvironment, __self).call(
                    __context, __obj, *args))
            args = _check_method(owner, name, args, kwargs)
        return check_weight(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` and `format_map` in the sandbox, with their widths bounded and their result's size
        foreseen before they run."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        run = wrapped

        def checked(*args: Any, **kwargs: Any) -> str:
            check_time()
            if value.__name__ == "format_map":
                _check_format(fmt, (), args[0] if len(args) == 1 and isinstance(args[0], Mapping) else {})
            else:
                _check_format(fmt, args, kwargs)
            return check_size(run(*args, **kwargs))  # type: ignore[no-any-return]

        return checked


def _check_format(fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """`fmt.format(*args, **kwargs)`: refused when its text, widths and the values its fields name (each as
    often as it is named, weighed) could make it longer than the cap."""
    size = len(fmt)
    auto = 0
    for _text, field, spec, _conv in string.Formatter().parse(fmt):
        if field is None:
            continue
        if spec and "{" in spec:
            raise BudgetExceeded("str.format: a width or precision taken from an argument is not allowed")
        size += sum(int(n) for n in _NUMBER.findall(spec or ""))
        root = _FIELD_ROOT.match(field)
        key = root.group() if root else ""
        if key == "":
            key, auto = str(auto), auto + 1
        value = (args[int(key)] if int(key) < len(args) else None) if key.isdigit() else kwargs.get(key)
        size += text_weight(value, MAX_RESULT_CHARS - size)
        if size > MAX_RESULT_CHARS:
            raise too_long(size)
    if size > MAX_RESULT_CHARS:
        raise too_long(size)


def _check_percent(fmt: str | bytes, args: Any) -> None:
    """`fmt % args`: refused when its widths and arguments (weighed; a table's values each as often as a
    `%(key)` names them) could make it longer than the cap."""
    text = fmt if isinstance(fmt, str) else fmt.decode("latin-1")
    if "*" in text:
        raise BudgetExceeded("`%`: a width taken from an argument (`*`) is not allowed")
    size = len(text) + sum(int(n) for n in _NUMBER.findall(text))
    if isinstance(args, Mapping):
        values: Iterable[Any] = (args.get(key) for key in _PERCENT_KEY.findall(text))
    else:
        values = args if isinstance(args, tuple) else (args,)
    for value in values:
        size += text_weight(value, MAX_RESULT_CHARS - size)
        if size > MAX_RESULT_CHARS:
            raise too_long(size)
    if size > MAX_RESULT_CHARS:
        raise too_long(size)


def _strip_method(owner: str | bytes, name: str, chars: Any, call: Callable[[], Any]) -> Any:
    """`owner.strip(chars)` (or `lstrip`, `rstrip`), in time linear in both (filters.stripped): Python's looks each
    character up in `chars` by a scan. Bytes to strip are at most 256 distinct values: those are handed over."""
    if isinstance(chars, str) and isinstance(owner, str) and len(chars) > FEW_CHARS:
        return stripped(owner, chars, left=name != "rstrip", right=name != "lstrip")
    if isinstance(chars, bytes) and isinstance(owner, bytes) and len(chars) > FEW_CHARS:
        check_time()
        distinct = bytes(set(chars))
        return owner.strip(distinct) if name == "strip" else owner.lstrip(distinct) if name == "lstrip" \
            else owner.rstrip(distinct)
    return call()


def _trim(value: Any, chars: Any = None) -> str:
    """Jinja's `trim`, on `filters.stripped` (linear in the text and the characters to strip)."""
    return stripped(soft_str(value), chars)


def _pprint(value: Any) -> str:
    """Jinja's `pprint`, refused when the value holds more than PPRINT_ITEMS items, or its weight times its depth
    squared passes PPRINT_COST; on the loop, not begun on more than LOOP_PPRINT_ITEMS items."""
    if isinstance(value, WEIGHED):
        depth, items = _shape(value)
        if items > PPRINT_ITEMS:
            raise BudgetExceeded(f"pprint: a value of more than {PPRINT_ITEMS:,} items would take too long to lay out "
                                 "(it is one call no time budget can stop); tojson writes it at once")
        check_loop_count(items, LOOP_PPRINT_ITEMS)
        weight = text_weight(value, PPRINT_COST // max(depth * depth, 1), indent=1)
        if weight * depth * depth > PPRINT_COST:
            raise BudgetExceeded(f"pprint: a value {depth} levels deep weighing at least {weight} characters would "
                                 f"take too long to lay out (its weight times its depth squared is over "
                                 f"{PPRINT_COST}); tojson writes it at once")
    return do_pprint(value)


def _shape(value: Any) -> tuple[int, int]:
    """How many lists, tuples, sets or tables deep `value` nests (1 for one that holds none), and how many items they
    hold in all, found by a walk under the time budget that stops once past PPRINT_ITEMS items."""
    deepest = items = 0
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        container, depth = todo.pop()
        deepest = max(deepest, depth)
        items += len(container)
        if items > PPRINT_ITEMS:
            break
        check_time()
        members = container.values() if isinstance(container, dict) else container
        todo += [(member, depth + 1) for member in members if isinstance(member, WEIGHED) and member]
    return deepest, items


def _check_method(owner: str | bytes, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """String methods that build something larger than their input, or take time in the square of it (`encode`
    and `decode` with _SLOW_CODECS), checked before they run; returns the arguments to call them with (`join`'s
    iterable, read once under the budget, as a list)."""
    if name in _REFUSED_METHODS:
        raise BudgetExceeded(f"str.{name} is not available in templates")
    if name in ("encode", "decode"):
        codec = args[0] if args else kwargs.get("encoding")
        if isinstance(codec, str) and "".join(c for c in codec.lower() if c.isascii() and c.isalnum()) in _SLOW_CODECS:
            raise BudgetExceeded(f"{name} with the codec {quoted_sent(codec)} is not available in templates: it takes "
                                 "time in the square of the text's length")
    if name in _PADDING_METHODS:
        width = args[0] if args else kwargs.get("width", 0)
        if isinstance(width, int) and width > MAX_RESULT_CHARS:
            raise too_long(width)
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        tab = "\t" if isinstance(owner, str) else b"\t"
        if isinstance(size, int) and len(owner) + owner.count(tab) * size > MAX_RESULT_CHARS:  # type: ignore[arg-type]
            raise too_long(len(owner) + owner.count(tab) * size)  # type: ignore[arg-type]
    elif name == "replace" and len(args) >= 2 and isinstance(owner, str) \
            and isinstance(args[0], str) and isinstance(args[1], str):
        count = args[2] if len(args) > 2 and isinstance(args[2], int) else -1
        size = replaced_size(owner, args[0], args[1], count)
        if size > MAX_RESULT_CHARS:
            raise too_long(size)
    elif name == "join" and args:
        parts = []
        size = -len(owner)
        for part in budget_iter(args[0]):  # each weighed before anything writes it
            size += len(owner) + text_weight(part, MAX_RESULT_CHARS - size)
            if size > MAX_RESULT_CHARS:
                raise too_long(size)
            parts.append(part)
        return (parts, *args[1:])
    return args


class TemplateShapeError(ValueError):
    """A template too long, or nesting too deeply, to compile; the message says which limit and by how much."""


# What nests a level of Python blocks in the code Jinja generates.
_BLOCKS = (nodes.For, nodes.If, nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.With, nodes.AssignBlock,
           nodes.Scope, nodes.ScopedEvalContextModifier, nodes.Block)


def parse_checked(text: str, kind: str = "template") -> nodes.Template:
    """Jinja's parse of `text`, refused (TemplateShapeError) when it is longer than MAX_TEMPLATE_CHARS, nests
    more than MAX_TEMPLATE_BLOCKS blocks or MAX_TEMPLATE_DEPTH levels in all, or nests too deeply for Jinja's
    parser: each past what Jinja's compiler or Python's can take (the stack, 100 levels of indentation, 20
    nested loops, 200 nested parentheses). Raises TemplateSyntaxError as Jinja does."""
    if len(text) > MAX_TEMPLATE_CHARS:
        raise TemplateShapeError(f"{kind} is {len(text):,} characters, over the limit of {MAX_TEMPLATE_CHARS:,}")
    blocks, brackets = _lexed_nesting(text)  # before the parser, which recurses on both
    if brackets > MAX_TEMPLATE_BRACKETS:
        raise TemplateShapeError(f"{kind} nests too deeply: {brackets} brackets inside one another, over the limit "
                                 f"of {MAX_TEMPLATE_BRACKETS}")
    depth = 0
    if blocks <= MAX_TEMPLATE_BLOCKS:
        try:
            tree = ENV.parse(text)
        except (RecursionError, MemoryError):
            raise TemplateShapeError(f"{kind} nests too deeply: Jinja's parser ran out of stack reading it (a chain "
                                     "of `not` or `-`, or brackets, too long)") from None
        depth, blocks = _nesting(tree)
    if blocks > MAX_TEMPLATE_BLOCKS:
        raise TemplateShapeError(f"{kind} nests too deeply: {blocks} blocks ({{% for %}}, {{% if %}}, {{% macro %}}, "
                                 f"…) inside one another, over the limit of {MAX_TEMPLATE_BLOCKS}")
    if depth > MAX_TEMPLATE_DEPTH:
        raise TemplateShapeError(f"{kind} nests too deeply: {depth} levels of operators, filters and blocks inside "
                                 f"one another, over the limit of {MAX_TEMPLATE_DEPTH}; break a long chain up "
                                 "with {% set %}")
    return tree


_OPENERS = frozenset({"for", "if", "macro", "call", "filter", "with", "block", "autoescape"})
_BRACKETS = {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}


def _lexed_nesting(text: str) -> tuple[int, int]:
    """The most blocks and the most brackets inside one another in `text`, read from Jinja's tokens (which its
    lexer finds without recursion); (0, 0) when it does not lex, which the parser then reports."""
    blocks = most_blocks = brackets = most_brackets = 0
    tag: list[str] | None = None  # the names and operators of the block tag being read
    try:
        for _line, kind, value in ENV.lex(text):
            if kind == "block_begin":
                tag = []
            elif tag is not None and kind == "block_end":
                head = tag[0] if tag else ""
                if head in _OPENERS or (head == "set" and "=" not in tag):  # a block `set` has no `=`
                    blocks += 1
                    most_blocks = max(most_blocks, blocks)
                elif head.startswith("end"):
                    blocks -= 1
                tag = None
            elif tag is not None and kind in ("name", "operator"):
                tag.append(value)
            if kind == "operator" and value in _BRACKETS:
                brackets += _BRACKETS[value]
                most_brackets = max(most_brackets, brackets)
    except TemplateSyntaxError:
        return 0, 0
    return most_blocks, most_brackets


def _nesting(tree: nodes.Node) -> tuple[int, int]:
    """The depth of `tree` and the most blocks inside one another in it, found without recursion. An `elif`
    stands level with its `if`, as Jinja compiles it."""
    deepest = most = 0
    stack: list[tuple[nodes.Node, int, int]] = [(tree, 0, 0)]
    while stack:
        node, depth, blocks = stack.pop()
        if isinstance(node, _BLOCKS):
            blocks += 1
        deepest, most = max(deepest, depth), max(most, blocks)
        elifs = {id(n) for n in node.elif_} if isinstance(node, nodes.If) else set()
        for child in node.iter_child_nodes():
            if id(child) in elifs:
                stack.append((child, depth, blocks - 1))
            else:
                stack.append((child, depth + 1, blocks))
    return deepest, most


def make_environment() -> BridgeEnvironment:
    env = BridgeEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, cache_size=0,
                            finalize=BridgeEnvironment.weigh_output)
    for name in REMOVED_FILTERS:
        env.filters.pop(name, None)
    env.filters.update(FILTERS)
    env.filters["d"] = FILTERS["default"]
    env.filters["trim"] = _trim
    env.filters["pprint"] = _pprint
    env.filters["urlize"] = _urlize_in_pieces(env.filters["urlize"])
    env.filters["xmlattr"] = _xmlattr_in_pieces(env.filters["xmlattr"])
    env.filters["urlencode"] = _urlencode_in_pieces(env.filters["urlencode"])
    env.filters["tojson"] = _tojson_in_pieces(env.filters["tojson"])
    env.filters = {name: _guard_filter(name, fn) for name, fn in env.filters.items()}
    env.globals.clear()
    env.globals.update({"range": _bounded_range})
    return env


# -- Jinja's filters that loop in Python with no look at the clock, run on pieces of their input ------------------
# Each piece is what the filter gives for it on the whole, so the result is Jinja's; the clock is looked at, and the
# result's size counted, between pieces.

_PIECE_CHARS = 16_384
_PIECE_ITEMS = 256
URLIZE_WORD = 4_096
"""The longest word (a run without whitespace) `urlize` makes a link of: longer ones, far past any real address, are
written escaped as they are. Jinja's urlize takes time in the square of a word's length on some words (`a(a(…)))`:
half a second for 480,000 characters)."""
_WHITESPACE = re.compile(r"(\s+)")  # how Jinja's urlize splits a text into words


def _urlize_in_pieces(urlize: Callable[..., Any]) -> Callable[..., Any]:
    """Jinja's `urlize` on pieces of some _PIECE_CHARS characters cut between words, a word longer than
    URLIZE_WORD left as text."""

    @functools.wraps(urlize)
    def pieces(eval_ctx: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        words = _WHITESPACE.split(escape(value))  # as Jinja's first step: it leaves the escaped text as it is
        out: list[str] = []
        size = 0
        chunk: list[str] = []
        held = 0

        def flush() -> None:
            nonlocal size, held
            if chunk:
                # Escaped text, which urlize would escape again as it begins, were it not marked so.
                out.append(str(urlize(eval_ctx, Markup("".join(chunk)), *args, **kwargs)))  # noqa: S704
                size += len(out[-1])
                chunk.clear()
                held = 0
                check_time()
                if size > MAX_RESULT_CHARS:
                    raise too_long(size)

        for word in words:
            if len(word) > URLIZE_WORD:
                flush()
                out.append(word)
                size += len(word)
            else:
                chunk.append(word)
                held += len(word)
                if held >= _PIECE_CHARS:
                    flush()
        flush()
        text = "".join(out)
        return Markup(text) if eval_ctx.autoescape else text  # noqa: S704 - escaped, as Jinja's urlize gives it

    return pieces


def _xmlattr_in_pieces(xmlattr: Callable[..., Any]) -> Callable[..., Any]:
    """Jinja's `xmlattr` on pieces of _PIECE_ITEMS items of the table."""

    @functools.wraps(xmlattr)
    def pieces(eval_ctx: Any, d: Any, autospace: bool = True) -> Any:
        if not isinstance(d, Mapping) or len(d) <= _PIECE_ITEMS:
            return xmlattr(eval_ctx, d, autospace)
        items = list(d.items())
        parts = []
        size = 0
        for at in range(0, len(items), _PIECE_ITEMS):
            part = str(xmlattr(eval_ctx, dict(items[at:at + _PIECE_ITEMS]), False))
            size += len(part) + 1
            check_time()
            if size > MAX_RESULT_CHARS:
                raise too_long(size)
            if part:
                parts.append(part)
        text = " ".join(parts)
        if autospace and text:
            text = " " + text
        return Markup(text) if eval_ctx.autoescape else text  # noqa: S704 - escaped, as Jinja's xmlattr gives it

    return pieces


def _urlencode_in_pieces(urlencode: Callable[..., Any]) -> Callable[..., Any]:
    """Jinja's `urlencode` of a table or a list of pairs on pieces of _PIECE_ITEMS pairs."""

    @functools.wraps(urlencode)
    def pieces(value: Any) -> Any:
        if isinstance(value, str) or not isinstance(value, Iterable):
            return urlencode(value)
        pairs = list(budget_iter(value.items() if isinstance(value, dict) else value))
        parts = []
        size = 0
        for at in range(0, len(pairs), _PIECE_ITEMS):
            parts.append(urlencode(pairs[at:at + _PIECE_ITEMS]))
            size += len(parts[-1]) + 1
            check_time()
            if size > MAX_RESULT_CHARS:
                raise too_long(size)
        return "&".join(parts)

    return pieces


def _tojson_in_pieces(tojson: Callable[..., Any]) -> Callable[..., Any]:
    """Jinja's `tojson`; with an indent, which Python's JSON encoder writes in Python, not in one call, written
    piece by piece, with a look at the clock every _PIECE_ITEMS pieces and refused once past the cap."""

    @functools.wraps(tojson)
    def pieces(eval_ctx: Any, value: Any, indent: Any = None) -> Any:
        policies = eval_ctx.environment.policies
        if indent is None or policies["json.dumps_function"] is not None:
            return tojson(eval_ctx, value, indent)
        encoder = json.JSONEncoder(**{**policies["json.dumps_kwargs"], "indent": indent})
        out = []
        size = 0
        for n, part in enumerate(encoder.iterencode(value), 1):
            size += len(part)
            if size > MAX_RESULT_CHARS:
                raise too_long(size)
            if not n % _PIECE_ITEMS:
                check_time()
            out.append(part)
        # As Jinja's htmlsafe_json_dumps: safe inside HTML, and in a <script>.
        text = "".join(out).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        return Markup(text.replace("'", "\\u0027"))  # noqa: S704 - JSON, with nothing HTML reads as markup

    return pieces


def _bounded_range(*args: Any) -> range:
    check_time()
    r = range(*args)
    try:
        size: int | None = len(r)
    except OverflowError:  # more items than a machine integer holds
        size = None
    if size is None or size > MAX_RANGE:
        count = "over 2**63" if size is None else size
        raise BudgetExceeded(f"range of {count} items is over the limit of {MAX_RANGE}")
    return r


def bounded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` run under the time budget (for compiled `when` expressions)."""

    def run(*args: Any, **kwargs: Any) -> Any:
        with Budget():
            return fn(*args, **kwargs)

    return run


def render_bounded(template: Template, ctx: dict[str, Any]) -> str:
    """Render `template`, counting output as it streams: stops past MAX_RENDERED_CHARS or the time budget."""
    with Budget():
        parts: list[str] = []
        size = 0
        for chunk in template.generate(ctx):
            size += len(chunk)
            if size > MAX_RENDERED_CHARS:
                raise BudgetExceeded(f"template output is over {MAX_RENDERED_CHARS} characters")
            check_time()
            parts.append(chunk)
        return "".join(parts)


ENV = make_environment()
