"""YAML loading that remembers where every value came from, so errors can name file:line:col."""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import msgspec.inspect
import yaml

from bridge.delivery.exchange import secret_name
from bridge.errors import SHOWN_CHARS, ConfigError, Located, ValueProblem, quoted

Key = str | int
T = TypeVar("T")
KeyPath = tuple[Key, ...]

_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def format_path(path: KeyPath, prefix: str = "") -> str:
    """`sources.website-contact.hmac` / `fields["LeadDetail.Email"]` / `tests[0].input`, after `prefix`."""
    out = prefix
    for key in path:
        if isinstance(key, int):
            out += f"[{key}]"
        elif _SIMPLE_KEY.match(key):
            out += f".{key}" if out else key
        else:
            out += f"[{json.dumps(key, ensure_ascii=False)}]"
    return out


def format_mapping_path(mapping: str, path: KeyPath) -> str:
    """Where in a mapping an error is, as `mapping.field`: `contact.LeadDetail.EmailAddress.transform[1]`,
    `contact.source[1]`, `contact.tests[0].expect`. A field's name is shown as written, dots and all."""
    if len(path) >= 2 and path[0] == "fields":
        return format_path(path[2:], f"{mapping}.{path[1]}")
    return format_path(path, mapping)


PathFormat = Callable[[KeyPath], str]


_NOTHING: Any = object()
"""No data given (None is a value: YAML's null)."""


@dataclass(frozen=True)
class Quoted:
    """A value an error quotes: the one at `key` (a key path inside the struct that checks it). `quote`: how to
    quote it where it may be quoted (else `quoted`); `hidden`: what to say where it may not be (a value from an
    environment variable, a secret) instead of what `shown_value` says: for a number worked out from the value,
    which would tell it."""

    key: KeyPath
    value: Any
    quote: str | None = None
    hidden: str | None = None


class KeyValueError(ValueError):
    """A struct's own check (`__post_init__`) that is about one of its keys. msgspec reports it at the
    struct; the loader places it at `key` (a key path inside the struct), line and all. A message that quotes
    values holds `{name}` for each, given in `quotes` by name (`value`: the one at `key`, with its `quote`): the
    loader shows each as `shown_value` does, never one from an environment variable nor a secret. Told without
    a loader (`str`), each is shown as one written at its key would be."""

    def __init__(self, key: KeyPath, message: str, value: Any = _NOTHING, *, quote: str | None = None,
                 quotes: Mapping[str, Quoted] | None = None) -> None:
        self.key = key
        self.template = message
        self.quotes = dict(quotes or {})
        if value is not _NOTHING:
            self.quotes["value"] = Quoted(key, value, quote)
        super().__init__(self.told(lambda q: shown_quoted(q, q.key)))

    @classmethod
    def of(cls, key: KeyPath, problem: ValueProblem, before: str = "") -> KeyValueError:
        """`problem`, about the value at `key`, as an error at that key; `before`: words put before its message."""
        return cls(key, before + problem.template, problem.value, quote=problem.quote)

    def told(self, show: Callable[[Quoted], str]) -> str:
        """The message with each value it quotes as `show` says it."""
        text = self.template
        for name, quote in self.quotes.items():
            text = text.replace(f"{{{name}}}", show(quote))
        return text


@dataclass
class Document:
    """A parsed YAML file: the plain data, and the position of each key path in it."""

    file: str
    data: Any
    positions: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    digest: str | None = None
    """The sha256 of the bytes the file was read from (`load_yaml_file`); None for text given as it is."""
    written: dict[KeyPath, str] = field(default_factory=dict)
    """Each scalar the scalar hook changed, as written in the file (`${PORT}`), by its key path."""

    def where(self, path: KeyPath) -> tuple[int | None, int | None]:
        """The line and column of `path`, or of its nearest known parent."""
        for end in range(len(path), -1, -1):
            pos = self.positions.get(path[:end])
            if pos is not None:
                return pos
        return None, None

    def error(self, path: KeyPath, message: str, cls: type[Located] = ConfigError,
              fmt: PathFormat = format_path) -> Located:
        line, col = self.where(path)
        return cls(message, file=self.file, line=line, col=col, path=fmt(path) or None)

    def convert(
        self, data: Any, typ: type[T], path: KeyPath = (), cls: type[Located] = ConfigError,
        fmt: PathFormat = format_path, *, key_hint: bool = False, show_value: bool = False,
    ) -> T:
        """`msgspec.convert` whose errors name the file, line and full key path (and, with `key_hint`, the keys
        a table takes after an unknown one; with `show_value`, a value of the wrong type or out of range as
        `got …, expected …`, and one that is not one of the choices: see `wrong_value`, `not_a_choice`). The values
        a struct's own check quotes (KeyValueError) are shown as `shown_value` does, knowing how each was written."""
        try:
            return msgspec.convert(data, typ, strict=False)
        except msgspec.ValidationError as exc:
            raise self.translate(exc, path, cls, fmt, typ, key_hint=key_hint,
                                  data=data if show_value else _NOTHING) from None

    def translate(self, exc: msgspec.ValidationError, base: KeyPath, cls: type[Located],
                  fmt: PathFormat = format_path, typ: Any = None, *, key_hint: bool = False,
                  data: Any = _NOTHING) -> Located:
        """msgspec's error converting `data` (at `base`) to `typ` as an error at its file, line and key path, told
        as `convert` tells it."""
        message, sub = split_validation_error(exc, typ, key_hint=key_hint)
        path = (*base, *sub)
        cause = exc.__cause__
        if isinstance(cause, KeyValueError) and cause.quotes:
            at = path[: len(path) - len(cause.key)]  # the struct that raised it
            message = cause.told(lambda q: self.shown((*at, *q.key), q))
        elif isinstance(cause, ValueProblem):  # no key to tell where the value came from: never quoted
            message = cause.told(f"{_kind(cause.value)} (not shown)")
        elif data is not _NOTHING and message.startswith("Expected `") and "[...]" not in str(exc):
            message = self.wrong_value(message, data, base, sub, typ)
        elif data is not _NOTHING and str(exc).startswith("Invalid enum value") and typ is not None:
            message = self.not_a_choice(message, data, path, sub, typ)
        return self.error(path, message, cls, fmt)

    def shown(self, path: KeyPath, item: Quoted) -> str:
        """The value `item` is about, at `path`, as an error may show it (`shown_quoted`), knowing how it was
        written."""
        return shown_quoted(item, path, self.written.get(path))

    def not_a_choice(self, message: str, data: Any, path: KeyPath, sub: KeyPath, typ: Any) -> str:
        """msgspec's `Invalid enum value 'x'` about the value at `sub` inside `data` as `'x' is not one of: a, b
        (did you mean 'a'?)`, the value shown as `shown_value` does; where it may not be quoted, the nearest choice,
        which would tell it, is left out."""
        found, value = _value_at(data, sub)
        choices = _choices(msgspec.inspect.type_info(typ), sub)
        if not found or not choices:
            return message
        near = did_you_mean(value, choices) if isinstance(value, str) else ""
        return self.shown(path, Quoted((), value)) + f" is not one of: {', '.join(choices)}" + self.shown(
            path, Quoted((), value, quote=near, hidden=""))

    def wrong_value(self, message: str, data: Any, base: KeyPath, sub: KeyPath, typ: Any) -> str:
        """`wrong_value`, knowing how each value was written."""
        return wrong_value(message, data, base, sub, typ, written=self.written)


def wrong_value(message: str, data: Any, base: KeyPath, sub: KeyPath, typ: Any, *,
                written: Mapping[KeyPath, str] | None = None) -> str:
    """msgspec's `Expected `int`, got `str`` (or `Expected `int` <= 65535`) about the value at `sub` inside `data`
    (itself at `base`) as `got 'four', expected a whole number from 1 to 1000`: the value as written (`written`, by
    key path; bounded), never one from a `${VAR}` nor a secret's (`shown_value`), and what the key takes, its bounds
    included."""
    found, value = _value_at(data, sub)
    if not found:
        return message
    path = (*base, *sub)
    info = _type_at(msgspec.inspect.type_info(typ), sub) if typ is not None else None
    keys = [k for k in path if isinstance(k, str)]
    key = keys[-1] if keys else ""
    expected = _described(info, key) if info is not None else None
    if expected is None:
        expected = re.sub(r"^Expected |, got `[^`]*`$", "", message)
    hint = ""
    if isinstance(value, str) and isinstance(info, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        if key.endswith("_bytes"):
            hint = " (such as 10485760 for 10 MiB: units such as MB are not read)"
        elif key.endswith("_seconds"):
            hint = " (such as 30 or 0.5: units such as s are not read)"
    return f"got {shown_value(value, path, (written or {}).get(path))}, expected {expected}{hint}"


def told_in_words(exc: msgspec.ValidationError, typ: Any, data: Any, base: KeyPath = ()) -> tuple[str, KeyPath]:
    """`split_validation_error` of converting `data` (at `base`) to `typ`, with a value of the wrong type or out of
    range told as `wrong_value` tells it (`got 'yes please', expected true or false`), not as msgspec's `Expected
    `bool`, got `str``: for what is converted outside a Document (a mapping's field table)."""
    message, sub = split_validation_error(exc, typ)
    if message.startswith("Expected `") and "[...]" not in str(exc):
        message = wrong_value(message, data, base, sub, typ)
    return message, sub


def _value_at(data: Any, path: KeyPath) -> tuple[bool, Any]:
    """Whether `path` leads somewhere inside `data`, and the value there."""
    for key in path:
        inside = ((isinstance(data, dict) and key in data)
                  or (isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data)))
        if not inside:
            return False, None
        data = data[key]
    return True, data


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def written_text(written: str) -> str:
    """The text a value was written as (the file's own, `${VAR}` and all, never a variable's value), as a message
    shows it: cut, and quoted when it holds what does not print."""
    return _cut(written) if written.isprintable() else quoted(written)


def _as_written(written: str) -> str:
    """` (written …)`: the text a value was written as, cut, and quoted when it holds what does not print."""
    return f" (written {written_text(written)})"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "a table"


def from_variable(written: str | None) -> bool:
    """Whether a scalar written as `written` (as the file has it; None: as its value) takes its value, or part of
    it, from an environment variable."""
    return bool(_variables(written))


def _variables(written: str | None) -> list[str]:
    """The names of the environment variables `written` (a scalar as the file has it) takes a value from, in
    order, each once: `${NAME}`, `${NAME:-default}`, `${NAME-default}`, never an escaped `$${NAME}`."""
    found = (m.group(1) for m in _VAR.finditer(written or "") if m.group(1) is not None)
    return list(dict.fromkeys(found))


def _secret(path: KeyPath, variables: list[str]) -> bool:
    """Whether a value at `path`, written with `variables`, is a secret: see `shown_value`."""
    names = [k for k in path if isinstance(k, str)]
    return any(secret_name(k) for k in names) or "headers" in names or any(secret_name(v) for v in variables)


def shown_value(value: Any, path: KeyPath, written: str | None = None, quote: str | None = None) -> str:
    """`value` as an error about the key at `path` may show it: a scalar quoted and cut at SHOWN_CHARS (or as
    `quote` says, when given), a list or a table by its kind, with the text it was written as when that differs
    (`$$` for `$`). A value that came from an environment variable is never quoted, whatever the variable's name
    (`${DATABASE_URL}`, `${SLACK_HOOK}` hold credentials under plain names): its kind and length and the
    variable's name are given instead. A secret written in the file is shown by its kind alone: the value of a key
    named like a credential (token, secret, password, key, auth, ...: the names an attempt's record redacts,
    bridge/delivery/exchange.py, on the way to it too), or of a configured header."""
    variables = _variables(written)
    where = f" from {', '.join(f'${{{v}}}' for v in variables)}" if variables else ""
    if _secret(path, variables):
        return f"{_kind(value)}{where} (not shown: a secret)"
    if written is not None and variables:
        size = f" of {len(value)} character{'' if len(value) == 1 else 's'}" if isinstance(value, str) else ""
        if not _ONE_VARIABLE.fullmatch(written):  # `https://${HOST}/x`: the rest is the file's own text
            where += _as_written(written)
        return f"{_kind(value)}{size}{where}"
    if quote is not None:
        shown = quote
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        shown = quoted(value)
    else:
        shown = _kind(value)
    if written is not None and written != value:
        shown += _as_written(written)
    return shown


def shown_quoted(item: Quoted, path: KeyPath, written: str | None = None) -> str:
    """The value `item` is about, at `path` and written as `written`, as an error may show it: as `shown_value`
    does, or as its `hidden` says where the value may not be quoted."""
    if item.hidden is not None and (_variables(written) or _secret(path, [])):
        return item.hidden
    return shown_value(item.value, path, written, item.quote)


def _bounds(info: Any) -> str:
    """` from 1 to 1000`, `, above 0`, `, 0 or more`: a number's constraints (msgspec.inspect's), or nothing."""
    if info.ge is not None and info.le is not None:
        return f" from {info.ge} to {info.le}"
    low = f"{info.ge} or more" if info.ge is not None else f"above {info.gt}" if info.gt is not None else None
    high = f"at most {info.le}" if info.le is not None else f"below {info.lt}" if info.lt is not None else None
    parts = [part for part in (low, high) if part is not None]
    return f", {' and '.join(parts)}" if parts else ""


def _described(info: Any, key: str) -> str | None:
    """What a value of the type `info` (msgspec.inspect's) is, in words, for the key `key`; None when it has
    none to give."""
    i = msgspec.inspect
    if isinstance(info, i.UnionType):
        parts = [_described(t, key) for t in info.types]
        return None if None in parts else " or ".join(dict.fromkeys(p for p in parts if p is not None))
    unit = " of bytes" if key.endswith("_bytes") else " of seconds" if key.endswith("_seconds") else ""
    if isinstance(info, i.IntType):
        return f"a whole number{unit}{_bounds(info)}"
    if isinstance(info, i.FloatType):
        return f"a number{unit}{_bounds(info)}"
    if isinstance(info, i.BoolType):
        return "true or false"
    if isinstance(info, i.StrType):
        return "text"
    if isinstance(info, i.NoneType):
        return "null"
    if isinstance(info, i.LiteralType):
        return "one of: " + ", ".join(str(v) for v in info.values)
    if isinstance(info, i.ListType | i.SetType | i.FrozenSetType | i.VarTupleType | i.TupleType):
        return "a list"
    if isinstance(info, i.StructType | i.DictType | i.TypedDictType | i.DataclassType):
        return "a table of keys"
    return None


def split_validation_error(exc: msgspec.ValidationError, typ: Any = None, *,
                           key_hint: bool = False) -> tuple[str, KeyPath]:
    """msgspec's message in our words (`unknown key 'x'`, `missing required key 'y'`, an enum's allowed
    values when `typ`, the type converted to, is given), and the key path inside the converted value that
    it is about. With `key_hint` (and `typ`), an unknown key also gets the nearest known one and the keys
    its table takes."""
    message = str(exc)
    sub: KeyPath = ()
    m = re.search(r" - at `\$(.*)`$", message)
    if m:
        message = message[: m.start()]
        sub = _parse_msgspec_path(m.group(1))
    if isinstance(exc.__cause__, KeyValueError):
        sub = (*sub, *exc.__cause__.key)
    unknown = re.match(r"Object contains unknown field `(.+)`", message)
    if unknown:
        key = unknown.group(1)
        allowed = _keys(msgspec.inspect.type_info(typ), sub) if typ is not None and key_hint else []
        sub = (*sub, key)
        message = f"unknown key {key!r}"
        if allowed:
            message += f"{did_you_mean(key, allowed)}; it takes {', '.join(allowed)}"
    missing = re.match(r"Object missing required field `(.+)`", message)
    if missing:
        message = f"missing required key {missing.group(1)!r}"
    enum = re.match(r"Invalid enum value (.+)", message)
    if enum and typ is not None:
        choices = _choices(msgspec.inspect.type_info(typ), sub)
        if choices:
            message = f"{enum.group(1)} is not one of: {', '.join(choices)}"
            message += did_you_mean(enum.group(1).strip("'\""), choices)
    return message, sub


def did_you_mean(given: str, known: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the nearest of `known` to a misspelt `given`, or nothing."""
    close = difflib.get_close_matches(given, list(known), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _choices(info: Any, path: KeyPath) -> list[str]:
    """The literal values allowed at `path` inside a type (as msgspec.inspect describes it), or none."""
    info = _type_at(info, path)
    options = info.types if isinstance(info, msgspec.inspect.UnionType) else (info,)
    return [str(v) for o in options if isinstance(o, msgspec.inspect.LiteralType) for v in o.values]


def _keys(info: Any, path: KeyPath) -> list[str]:
    """The keys a table at `path` inside a type takes, when it is a struct (as msgspec.inspect describes it)."""
    info = _type_at(info, path)
    options = info.types if isinstance(info, msgspec.inspect.UnionType) else (info,)
    return [f.encode_name for o in options if isinstance(o, msgspec.inspect.StructType) for f in o.fields]


def _type_at(info: Any, path: KeyPath) -> Any:
    """The type at `path` inside a type (a msgspec.inspect description), or None when the path leaves it."""
    for key in path:
        options = info.types if isinstance(info, msgspec.inspect.UnionType) else (info,)
        for option in options:
            if isinstance(option, msgspec.inspect.StructType):
                found = [f.type for f in option.fields if f.encode_name == key]
                if found:
                    info = found[0]
                    break
            elif isinstance(option, msgspec.inspect.DictType):
                info = option.value_type
                break
            elif isinstance(option, msgspec.inspect.ListType | msgspec.inspect.TupleType):
                info = option.item_type if isinstance(option, msgspec.inspect.ListType) else option.item_types[0]
                break
        else:
            return None
    return info


def _parse_msgspec_path(text: str) -> KeyPath:
    out: list[Key] = []
    for m in re.finditer(r"\.([^.\[]+)|\[(\d+)\]|\[\.\.\.\]", text):
        if m.group(1) is None and m.group(2) is None:
            break  # `[...]`: msgspec does not say which dict key; stop at the last known parent
        out.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
    return tuple(out)


class _Builder:
    def __init__(self, file: str, scalar_hook: Callable[[Any, KeyPath, yaml.Node], Any] | None) -> None:
        self.file = file
        self.hook = scalar_hook
        self.constructor = yaml.constructor.SafeConstructor()
        self.positions: dict[KeyPath, tuple[int, int]] = {}
        self.written: dict[KeyPath, str] = {}
        self.errors: list[Located] = []

    def construct(self, node: yaml.Node) -> Any:
        """The scalar's value; an unknown tag or a bad tagged value (`!!int x`) is an error at its place."""
        try:
            return self.constructor.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else str(exc)
            raise ConfigError(f"cannot read value {node.tag!r}: {problem}", file=self.file,
                              line=node.start_mark.line + 1, col=node.start_mark.column + 1) from None

    def build(self, node: yaml.Node, path: KeyPath) -> Any:
        self.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise ConfigError("YAML merge keys (<<) are not supported", file=self.file,
                                      line=key_node.start_mark.line + 1, col=key_node.start_mark.column + 1)
                key = self.construct(key_node)
                if not isinstance(key, str | int | float | bool) and key is not None:
                    raise ConfigError(f"a key must be a scalar, not {type(key).__name__}", file=self.file,
                                      line=key_node.start_mark.line + 1, col=key_node.start_mark.column + 1)
                key = str(key) if not isinstance(key, str) else key
                if key in out:
                    raise ConfigError(
                        f"duplicate key {key!r} (first at line {self.positions[(*path, key)][0]})",
                        file=self.file, line=key_node.start_mark.line + 1, col=key_node.start_mark.column + 1,
                        path=format_path(path) or None,
                    )
                self.positions[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                out[key] = self.build(value_node, (*path, key))
                self.positions[(*path, key)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        value = self.construct(node)
        if self.hook is not None:
            given, value = value, self.hook(value, path, node)
            if isinstance(given, str) and given != value:
                self.written[path] = given
        return value


def _likely(exc: yaml.MarkedYAMLError) -> str:
    """What is most often wrong for this parser message, as a hint after it."""
    problem = exc.problem or ""
    if "'\\t'" in problem or "\t" in problem:
        return "; likely a tab: indent YAML with spaces only"
    if "mapping values are not allowed" in problem:
        return ("; likely an unquoted `:` inside a value (quote the whole value: \"a: b\") or a key indented "
                "under a value")
    if "expected <block end>" in problem or "could not find expected ':'" in problem:
        return "; likely a wrong indentation on this line or the one above (keys of one map line up)"
    if "found undefined alias" in problem or "found character '@'" in problem or "'`'" in problem:
        return "; likely a value starting with * @ or ` that needs quotes"
    return ""


MAX_DEPTH = 64
"""How deep collections may nest in a file: far past any config or mapping, well short of the recursion the
parser and the builder would run out of."""
MAX_ALIASED_VALUES = 100_000
"""How many values all of a file's aliases (`*name`) may stand for together: an alias repeats a block, but
aliases of aliases multiply it (a few hundred bytes can stand for a billion values)."""

_OPENS = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSES = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _check_shape(text: str, file: str) -> None:
    """Refuse, at the place it happens, nesting past MAX_DEPTH, an alias inside the block it names (a structure
    that contains itself), and aliases standing for more than MAX_ALIASED_VALUES values: each would make the
    build below fail deep in recursion, or run for hours and take all memory, on a reload or a check. One
    pass over the parser's events, counting each block's values as it closes."""
    sizes: dict[str, int] = {}  # an anchor's values, its aliases expanded, once its block has closed
    stack: list[tuple[str | None, list[int]]] = []  # the open blocks: anchor, values so far
    aliased = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        mark = event.start_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        if isinstance(event, _OPENS):
            if len(stack) >= MAX_DEPTH:
                raise ConfigError(f"nested more than {MAX_DEPTH} levels deep; a config or mapping file needs a few",
                                  file=file, line=line, col=col)
            stack.append((event.anchor, [1]))
            continue
        if isinstance(event, _CLOSES):
            anchor, (count,) = stack.pop()
            if anchor is not None:
                sizes[anchor] = count
        elif isinstance(event, yaml.ScalarEvent):
            count = 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:
                if any(anchor == event.anchor for anchor, _ in stack):
                    raise ConfigError(f"alias *{event.anchor} is inside the block &{event.anchor} names: a block "
                                      f"cannot contain itself", file=file, line=line, col=col)
                continue  # an alias without its anchor: the composer reports it
            count = sizes[event.anchor]
            aliased += count
            if aliased > MAX_ALIASED_VALUES:
                raise ConfigError(f"aliases stand for more than {MAX_ALIASED_VALUES:,} values by here (*{event.anchor}"
                                  f" is {count:,}): an alias may repeat a block, not multiply it through aliases of "
                                  f"aliases", file=file, line=line, col=col)
        else:
            continue
        if stack:
            stack[-1][1][0] += count


def load_yaml(
    text: str, file: str, scalar_hook: Callable[[Any, KeyPath, yaml.Node], Any] | None = None,
) -> Document:
    """Parse one YAML document; a syntax error becomes a `ConfigError` at its line, and so do nesting past
    MAX_DEPTH and aliases past MAX_ALIASED_VALUES."""
    try:
        _check_shape(text, file)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(
            f"YAML syntax error: {exc.problem}" + (f" ({exc.context})" if exc.context else "") + _likely(exc),
            file=file, line=mark.line + 1 if mark else None, col=mark.column + 1 if mark else None,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML error: {exc}", file=file) from None
    if node is None:
        return Document(file, None)
    builder = _Builder(file, scalar_hook)
    data = builder.build(node, ())
    return Document(file, data, builder.positions, written=builder.written)


def load_yaml_file(
    path: Path, scalar_hook: Callable[[Any, KeyPath, yaml.Node], Any] | None = None,
) -> Document:
    """Read and parse `path` once: the document keeps the digest of the very bytes it was parsed from, which a
    second read (to fingerprint the file later) would not be when the file changed in between."""
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text's newlines
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=str(path)) from None
    doc = load_yaml(text, str(path), scalar_hook)
    doc.digest = hashlib.sha256(raw).hexdigest()
    return doc


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}|\$\{([^}]*)\}?")
_ONE_VARIABLE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-[^}]*)?\}")
"""A scalar written as one variable reference and nothing else: `${PORT}`, `${PORT:-8080}`."""


def env_expander(environ: Mapping[str, str], file: str,
                 unset: list[Located] | None = None) -> Callable[[Any, KeyPath, yaml.Node], Any]:
    """A scalar hook expanding `${VAR}`, `${VAR:-default}` (unset or empty), `${VAR-default}` (unset). With
    `unset`, a variable that is not set is appended there (and expands to "") rather than raised, so that one
    run names every missing variable."""

    def expand(value: Any, path: KeyPath, node: yaml.Node) -> Any:
        if not isinstance(value, str) or "$" not in value:
            return value

        def repl(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name = m.group(1)
            if name is None:
                raise ConfigError(
                    f"bad variable reference {m.group(0)!r}: write ${{NAME}} or ${{NAME:-default}}",
                    file=file, line=node.start_mark.line + 1, col=node.start_mark.column + 1,
                    path=format_path(path) or None,
                )
            op, default = m.group(2), m.group(3)
            current = environ.get(name)
            if op == ":-" and not current:
                return default or ""
            if op == "-" and current is None:
                return default or ""
            if current is None:
                error = ConfigError(
                    f"environment variable {name} is not set (give a default with ${{{name}:-…}})",
                    file=file, line=node.start_mark.line + 1, col=node.start_mark.column + 1,
                    path=format_path(path) or None,
                )
                if unset is None:
                    raise error
                unset.append(error)
                return ""
            return current

        return _VAR.sub(repl, value)

    return expand
