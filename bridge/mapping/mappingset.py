"""Loading a folder of mapping files into one checked, compiled, versioned set."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bridge.errors import ErrorList, Located, MappingError
from bridge.mapping.compiler import CompiledMapping, CompileError, compile_field, compile_when
from bridge.mapping.model import MappingSpec
from bridge.yamlfile import Document, load_yaml

MAPPING_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class MappingSet:
    """The mappings in force: swapped as a whole, never edited in place."""

    mappings: dict[str, CompiledMapping]
    version: str
    loaded_at: datetime
    by_source: dict[str, list[CompiledMapping]] = field(default_factory=dict)

    @classmethod
    def build(cls, mappings: list[CompiledMapping]) -> MappingSet:
        digest = hashlib.sha256()
        for m in sorted(mappings, key=lambda m: m.name):
            digest.update(f"{m.name}\0{m.version}\0".encode())
        by_source: dict[str, list[CompiledMapping]] = {}
        for m in sorted(mappings, key=lambda m: m.name):
            for src in m.sources:
                by_source.setdefault(src, []).append(m)
        return cls({m.name: m for m in mappings}, digest.hexdigest()[:12], datetime.now(UTC), by_source)

    def for_source(self, source: str) -> list[CompiledMapping]:
        return self.by_source.get(source, [])


def mapping_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in MAPPING_SUFFIXES and p.is_file()
                  and not p.name.startswith("."))


def load_mapping_folder(
    folder: Path, *, sources: set[str], destinations: Mapping[str, frozenset[str]],
) -> MappingSet:
    """Load every mapping file under `folder`; raise ErrorList with every error of every file."""
    if not folder.is_dir():
        raise ErrorList([MappingError("the mappings folder does not exist", file=str(folder))])
    errors: list[Located] = []
    compiled: list[CompiledMapping] = []
    seen: dict[str, str] = {}
    for path in mapping_files(folder):
        try:
            text = path.read_bytes()
            doc = load_yaml(text.decode("utf-8"), str(path))
        except Located as exc:
            errors.append(MappingError(exc.message, file=exc.file, line=exc.line, col=exc.col, path=exc.path))
            continue
        except UnicodeDecodeError as exc:
            errors.append(MappingError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=str(path)))
            continue
        version = hashlib.sha256(text).hexdigest()[:12]
        mapping, file_errors = compile_document(doc, path.stem, version, sources, destinations)
        errors.extend(file_errors)
        if mapping is None:
            continue
        if mapping.name in seen:
            errors.append(doc.error(("name",), f"mapping name {mapping.name!r} is already used by "
                                               f"{seen[mapping.name]}", MappingError))
            continue
        seen[mapping.name] = str(path)
        compiled.append(mapping)
    if errors:
        raise ErrorList(errors)
    return MappingSet.build(compiled)


def compile_document(
    doc: Document, stem: str, version: str, sources: set[str], destinations: Mapping[str, frozenset[str]],
) -> tuple[CompiledMapping | None, list[Located]]:
    """Check and compile one parsed mapping file, collecting every error rather than the first."""
    errors: list[Located] = []
    if not isinstance(doc.data, dict):
        return None, [doc.error((), "a mapping file must be a table with source, destination, action "
                                    "and fields", MappingError)]
    try:
        spec = doc.convert(doc.data, MappingSpec, (), MappingError)
    except Located as exc:
        return None, [exc]
    name = spec.name or stem
    for i, src in enumerate(spec.source_names()):
        if src not in sources:
            at = ("source",) if isinstance(spec.source, str) else ("source", i)
            errors.append(doc.error(at, f"unknown source {src!r}; configured sources: "
                                        f"{', '.join(sorted(sources)) or '(none)'}", MappingError))
    actions = destinations.get(spec.destination)
    if actions is None:
        errors.append(doc.error(("destination",), f"unknown destination {spec.destination!r}; configured "
                                f"destinations: {', '.join(sorted(destinations)) or '(none)'}", MappingError))
    elif spec.action not in actions:
        errors.append(doc.error(("action",), f"destination {spec.destination!r} has no action {spec.action!r}; "
                                f"it takes: {', '.join(sorted(actions))}", MappingError))
    when = None
    if spec.when is not None:
        try:
            when = compile_when(spec.when)
        except CompileError as exc:
            errors.append(doc.error(("when",), str(exc), MappingError))
    fields = []
    if not spec.fields:
        errors.append(doc.error(("fields",), "a mapping needs at least one field", MappingError))
    for field_name, raw in spec.fields.items():
        try:
            fields.append((field_name, compile_field(field_name, raw)))
        except CompileError as exc:
            errors.append(doc.error(("fields", field_name, *exc.subpath), str(exc), MappingError))
    if errors:
        return None, errors
    return CompiledMapping(
        name=name, file=doc.file, version=version, sources=tuple(spec.source_names()),
        destination=spec.destination, action=spec.action, options=spec.options, spec=spec,
        fields=fields, when=when, when_text=spec.when,
    ), []
