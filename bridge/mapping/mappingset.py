"""Loading a folder of mapping files into one checked, compiled, versioned set.

Every problem of every file is reported at once, each as `file:line:col: mapping.field: message`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import msgspec

from bridge.conversations import DEFAULT_REOPEN_AFTER_S
from bridge.conversions import convert_all
from bridge.durations import parse_duration
from bridge.errors import ErrorList, Located, MappingError
from bridge.mapping.compiler import CompiledField, CompiledMapping, CompileError, compile_field, compile_when
from bridge.mapping.model import (
    FOLLOW_UP_KEYS,
    MAPPING_KEYS,
    REQUIRED_MAPPING_KEYS,
    FollowUpSpec,
    MappingSpec,
    MappingTest,
)
from bridge.mapping.templatecheck import too_deep
from bridge.names import as_read, escaped, name_problem
from bridge.yamlfile import Document, KeyPath, format_mapping_path, load_yaml

MAPPING_SUFFIXES = (".yaml", ".yml")
StaticCheck = Callable[[str, list[str], Mapping[str, Any]], list[str]]
VendorBody = Callable[[str, dict[str, Any], Mapping[str, Any]], Any]


class VendorRules(Protocol):
    """What the loader needs of a destination's vendor (an adapter class fits)."""

    actions: frozenset[str]

    def static_check(self, action: str, fields: list[str], options: Mapping[str, Any]) -> list[str]: ...


@dataclass(frozen=True)
class Target:
    """A configured destination as the loader sees it: its actions, the vendor's static rules, and how
    the vendor wraps fields into the body it is sent (for mapping tests and `render`)."""

    actions: frozenset[str]
    static_check: StaticCheck | None = None
    vendor_body: VendorBody | None = None

    @classmethod
    def of(cls, given: Target | VendorRules | frozenset[str]) -> Target:
        if isinstance(given, Target):
            return given
        if isinstance(given, frozenset):
            return cls(given)
        return cls(frozenset(given.actions), given.static_check)


Destinations = Mapping[str, Any]  # name -> Target, an adapter class, or a frozenset of action names


@dataclass(frozen=True)
class MappingSet:
    """The mappings in force: swapped as a whole, never edited in place."""

    mappings: dict[str, CompiledMapping]
    version: str
    loaded_at: datetime
    by_source: dict[str, list[CompiledMapping]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # file name -> text, as loaded (kept as the last good set)

    @classmethod
    def build(cls, mappings: list[CompiledMapping], files: dict[str, str] | None = None) -> MappingSet:
        digest = hashlib.sha256()
        by_source: dict[str, list[CompiledMapping]] = {}
        for m in sorted(mappings, key=lambda m: m.name):
            digest.update(f"{m.name}\0{m.version}\0".encode())
            for src in m.sources:
                by_source.setdefault(src, []).append(m)
        return cls({m.name: m for m in mappings}, digest.hexdigest()[:12], datetime.now(UTC), by_source,
                   dict(files or {}))

    def for_source(self, source: str) -> list[CompiledMapping]:
        return self.by_source.get(source, [])


@dataclass
class LoadResult:
    """What a load found: the mappings that compiled, every error, and the files that had errors."""

    mappings: list[CompiledMapping] = field(default_factory=list)
    errors: list[Located] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # file name -> text of each file that loaded


def mapping_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in MAPPING_SUFFIXES and p.is_file()
                  and not p.name.startswith("."))


FileNamer = Callable[[Path], str]
"""How errors, test results and the mappings loaded name a mapping file (Config.mapping_file_name: never by the
value of a variable that gave its folder); `str`, its path, by default."""


def load_mapping_files(
    paths: Iterable[Path], *, sources: set[str], destinations: Destinations, vars_: Mapping[str, Any] | None = None,
    named: FileNamer = str,
) -> LoadResult:
    """Load and check each file, keeping going past broken ones; each named as `named` names it."""
    result = LoadResult()
    seen: dict[str, tuple[str, str]] = {}
    for path in paths:
        try:
            text = path.read_bytes()
        except OSError as exc:
            result.errors.append(MappingError(f"cannot read: {exc.strerror}", file=named(path)))
            result.broken.append(named(path))
            continue
        _load_one(path, text, result, seen, sources=sources, destinations=destinations, vars_=vars_, named=named)
    return result


def load_mapping_texts(
    folder: Path, files: Mapping[str, str], *, sources: set[str], destinations: Destinations,
    vars_: Mapping[str, Any] | None = None, named: FileNamer = str,
) -> MappingSet:
    """Compile `files` (file name → text, as a folder held them) exactly as `load_mapping_folder` would
    compile those files in `folder`; raise ErrorList with every error of every file."""
    result = LoadResult()
    seen: dict[str, tuple[str, str]] = {}
    for name in sorted(files):
        _load_one(folder / name, files[name].encode("utf-8"), result, seen, sources=sources,
                  destinations=destinations, vars_=vars_, named=named)
    if result.errors:
        raise ErrorList(result.errors)
    return MappingSet.build(result.mappings, result.files)


def _load_one(path: Path, text: bytes, result: LoadResult, seen: dict[str, tuple[str, str]], *, sources: set[str],
              destinations: Destinations, vars_: Mapping[str, Any] | None, named: FileNamer) -> None:
    shown = named(path)
    try:
        doc = load_yaml(text.decode("utf-8"), shown)
    except Located as exc:
        result.errors.append(MappingError(exc.message, file=exc.file, line=exc.line, col=exc.col, path=exc.path))
        result.broken.append(shown)
        return
    except UnicodeDecodeError as exc:
        result.errors.append(MappingError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=shown))
        result.broken.append(shown)
        return
    version = hashlib.sha256(text).hexdigest()[:12]
    try:
        mapping, file_errors = compile_document(doc, path.stem, version, sources, destinations, vars_=vars_)
    except (RecursionError, MemoryError) as exc:  # a file no field-level check caught: an error, never a crash
        result.errors.append(MappingError(too_deep("mapping", exc), file=shown))
        result.broken.append(shown)
        return
    if mapping is not None and (earlier := seen.get(as_read(mapping.name))) is not None:
        other, where = earlier
        file_errors.append(_Checker(doc, mapping.name).error(
            ("name",), f"mapping name {mapping.name!r} is already used by {where}" if other == mapping.name else
            f"mapping name {escaped(mapping.name)} reads as the mapping name {escaped(other)} of {where}: they "
            "differ only in a no-break space; give them names that read apart"))
    if file_errors:
        result.errors.extend(file_errors)
        result.broken.append(shown)
        return
    assert mapping is not None
    seen[as_read(mapping.name)] = (mapping.name, shown)
    result.mappings.append(mapping)
    result.files[path.name] = text.decode("utf-8")


def load_mapping_folder(
    folder: Path, *, sources: set[str], destinations: Destinations, vars_: Mapping[str, Any] | None = None,
    named: FileNamer = str,
) -> MappingSet:
    """Load every mapping file under `folder`; raise ErrorList with every error of every file."""
    if not folder.is_dir():
        raise ErrorList([MappingError("the mappings folder does not exist", file=str(folder))])
    result = load_mapping_files(mapping_files(folder), sources=sources, destinations=destinations, vars_=vars_,
                                named=named)
    if result.errors:
        raise ErrorList(result.errors)
    return MappingSet.build(result.mappings, result.files)


class _Checker:
    """Errors of one file, placed at their line and named `mapping.field`."""

    def __init__(self, doc: Document, name: str) -> None:
        self.doc = doc
        self.name = name
        self.errors: list[Located] = []

    def fmt(self, path: KeyPath) -> str:
        return format_mapping_path(self.name, path)

    def error(self, path: KeyPath, message: str) -> Located:
        return self.doc.error(path, message, MappingError, self.fmt)

    def add(self, path: KeyPath, message: str) -> None:
        self.errors.append(self.error(path, message))

    def convert(self, data: Any, typ: Any, path: KeyPath) -> Any:
        """`data` (at `path`) as a `typ`, or UNSET after adding each of its problems to the errors."""
        value, problems = convert_all(self.doc, data, typ, path, cls=MappingError, fmt=self.fmt,
                                      key_hint=True, show_value=True)
        self.errors.extend(problems)
        return msgspec.UNSET if problems else value


_MAPPING_TYPES = {f.encode_name: f.type for f in msgspec.structs.fields(MappingSpec)}


def compile_document(
    doc: Document, stem: str, version: str, sources: set[str], destinations: Destinations, *,
    vars_: Mapping[str, Any] | None = None,
) -> tuple[CompiledMapping | None, list[Located]]:
    """Check and compile one parsed mapping file, collecting every error rather than the first."""
    data = doc.data
    raw_name = data.get("name") if isinstance(data, dict) else None
    shown = raw_name if isinstance(raw_name, str) and raw_name else stem
    check = _Checker(doc, shown if shown.isprintable() else escaped(shown))
    if not isinstance(data, dict):
        check.add((), "a mapping file must be a table with source, destination, action and fields")
        return None, check.errors
    for key in data:
        if key not in MAPPING_KEYS:
            check.add((key,), f"unknown key {key!r}; a mapping takes {', '.join(MAPPING_KEYS)}")
    for key in REQUIRED_MAPPING_KEYS:
        if key not in data:
            check.add((), f"missing required key {key!r}")
    typed = {key: check.convert(value, _MAPPING_TYPES[key], (key,)) for key, value in data.items()
             if key in _MAPPING_TYPES}
    if check.errors:
        return None, check.errors
    spec = MappingSpec(**typed)
    name = spec.name or stem
    problem = name_problem(name, "mapping name")
    if problem is not None:  # kept on every delivery it makes
        check.add(("name",) if spec.name else (), problem if spec.name else f"{problem} (the file's name, without "
                                                                             "its extension, when it has no `name:`)")

    for i, src in enumerate(spec.source_names()):
        if src not in sources:
            check.add(("source",) if isinstance(spec.source, str) else ("source", i),
                      f"unknown source {src!r}; configured sources: {', '.join(sorted(sources)) or '(none)'}")
    given = destinations.get(spec.destination)
    target = None if given is None else Target.of(given)
    if target is None:
        check.add(("destination",), f"unknown destination {spec.destination!r}; configured destinations: "
                                    f"{', '.join(sorted(destinations)) or '(none)'}")
    elif spec.action not in target.actions:
        check.add(("action",), f"destination {spec.destination!r} has no action {spec.action!r}; "
                               f"it takes: {', '.join(sorted(target.actions))}")
    if not spec.fields:
        check.add(("fields",), "a mapping needs at least one field")
    when, fields = _compile_body(check, (), spec.when, spec.fields, target=target, action=spec.action,
                                 options=spec.options, vars_=vars_)
    conversation, reopen_after_s = _conversation_keys(check, spec, vars_)
    follow_up = None
    if spec.follow_up is not None:
        follow_up = _compile_follow_up(check, spec, spec.follow_up, name=name, file=doc.file, version=version,
                                       target=target, vars_=vars_)
    tests = _check_tests(check, spec)
    if check.errors:
        return None, check.errors
    spec.tests = tests
    return CompiledMapping(
        name=name, file=doc.file, version=version, sources=tuple(spec.source_names()),
        destination=spec.destination, action=spec.action, options=spec.options, spec=spec,
        fields=fields, when=when, when_text=spec.when, vendor_body=_vendor_body(target, spec.action, spec.options),
        test_lines=[doc.where(("tests", i))[0] for i in range(len(tests))],
        follow_up=follow_up, follow_up_skip=spec.follow_up is not None and spec.follow_up.skip,
        conversation=conversation, reopen_after_s=reopen_after_s,
    ), []


def _conversation_keys(check: _Checker, spec: MappingSpec, vars_: Mapping[str, Any] | None,
                       ) -> tuple[CompiledField | None, float]:
    """`conversation:` compiled and `reopen_after:` in seconds."""
    conversation = None
    if spec.conversation is not None:
        try:
            conversation = compile_field("conversation", spec.conversation, vars_)
        except CompileError as exc:
            for err in exc.errors:
                check.add(("conversation", *err.subpath), str(err))
    reopen_after_s = DEFAULT_REOPEN_AFTER_S
    if spec.reopen_after is not None:
        try:
            reopen_after_s = parse_duration(spec.reopen_after)
        except ValueError as exc:
            check.add(("reopen_after",), f"{exc}")
        else:
            if reopen_after_s <= 0:
                check.add(("reopen_after",), f"{spec.reopen_after!r} must be longer than zero: write e.g. 12h or 7d")
    return conversation, reopen_after_s


def _vendor_body(target: Target | None, action: str, options: dict[str, Any]) -> Callable[[dict[str, Any]], Any] | None:
    if target is None or target.vendor_body is None:
        return None
    build = target.vendor_body

    def vendor_body(fields: dict[str, Any]) -> Any:
        return build(action, fields, options)

    return vendor_body


def _compile_follow_up(check: _Checker, spec: MappingSpec, given: FollowUpSpec, *, name: str, file: str,
                       version: str, target: Target | None, vars_: Mapping[str, Any] | None,
                       ) -> CompiledMapping | None:
    """The `follow_up:` block, checked like a mapping of its own against the same destination."""
    if given.skip:
        if given.action is not None or given.fields or given.when is not None:
            check.add(("follow_up",), "`skip: true` sends nothing: it takes no action, fields or when")
        return None
    if given.action is None:
        check.add(("follow_up",), "a follow_up needs an action (or `skip: true`); it takes "
                                  f"{', '.join(FOLLOW_UP_KEYS)}")
        return None
    if target is not None and given.action not in target.actions:
        check.add(("follow_up", "action"), f"destination {spec.destination!r} has no action {given.action!r}; "
                                           f"it takes: {', '.join(sorted(target.actions))}")
    if not given.fields:
        check.add(("follow_up", "fields"), "a follow_up needs at least one field")
    options = spec.options if given.options is None else given.options
    when, fields = _compile_body(check, ("follow_up",), given.when, given.fields, target=target,
                                 action=given.action, options=options, vars_=vars_)
    return CompiledMapping(
        name=f"{name}.follow_up", file=file, version=version, sources=tuple(spec.source_names()),
        destination=spec.destination, action=given.action, options=options, spec=spec, fields=fields, when=when,
        when_text=given.when, vendor_body=_vendor_body(target, given.action, options))


def _compile_body(check: _Checker, at: KeyPath, when_text: str | None, raw_fields: dict[str, Any], *,
                  target: Target | None, action: str, options: dict[str, Any], vars_: Mapping[str, Any] | None,
                  ) -> tuple[Callable[..., Any] | None, list[CompiledField]]:
    """The `when` and `fields` of a mapping (`at` is ()) or of its follow_up (`at` is ("follow_up",)),
    compiled, and the vendor's static check of the fields; every problem goes to `check`, under `at`."""
    when = None
    if when_text is not None:
        try:
            when = compile_when(when_text, vars_)
        except CompileError as exc:
            for err in exc.errors:
                check.add((*at, "when"), str(err))
        except (RecursionError, MemoryError) as exc:  # past what the template checks foresee
            check.add((*at, "when"), too_deep("expression", exc))
    fields: list[CompiledField] = []
    for field_name, raw in raw_fields.items():
        problem = name_problem(field_name, "field key", bounded=False, ends=False)
        if problem is not None:  # named in the render errors kept on deliveries; placed at its line, shown escaped
            line, col = check.doc.where((*at, "fields", field_name))
            check.errors.append(MappingError(problem, file=check.doc.file, line=line, col=col,
                                             path=check.fmt((*at, "fields"))))
            continue
        try:
            fields.append(compile_field(field_name, raw, vars_))
        except CompileError as exc:
            for err in exc.errors:
                check.add((*at, "fields", field_name, *err.subpath), str(err))
        except (RecursionError, MemoryError) as exc:  # past what the template checks foresee
            check.add((*at, "fields", field_name), too_deep("field", exc))
    if target is not None and target.static_check is not None and action in target.actions:
        for problem in target.static_check(action, list(raw_fields), options):
            path, message = _vendor_problem(problem, raw_fields)
            check.add((*at, *path), message)
    return when, fields


def _vendor_problem(problem: str, fields: Mapping[str, Any]) -> tuple[KeyPath, str]:
    """A vendor's `field: message` placed at that field (or at `fields:` when the field is absent)."""
    head, sep, message = problem.partition(": ")
    if not sep:
        return ("fields",), problem
    if head == "fields" or " " in head:
        return ("fields",), message if head == "fields" else problem
    if head == "options" or (head.startswith("options.") and head not in fields):
        return tuple(head.split(".")), message
    return ("fields", head), message  # where the field is, or `fields:` when it is absent


def _check_tests(check: _Checker, spec: MappingSpec) -> list[MappingTest]:
    tests: list[MappingTest] = []
    for i, raw in enumerate(spec.tests):
        test = check.convert(raw, MappingTest, ("tests", i))
        if test is msgspec.UNSET:
            continue
        given = test.expectations()
        if len(given) != 1:
            check.add(("tests", i), "a test needs exactly one of expect, expect_contains, expect_error, expect_skip"
                      + (f" (it has {', '.join(given)})" if given else ""))
        tests.append(test)
    return tests
