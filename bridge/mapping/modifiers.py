"""A field's modifiers: what stands in for a missing value, the transforms, the map and `required`; and the
same steps again, recorded, for `explain`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from bridge.mapping.base import (
    FILTER_ERRORS,
    CompiledField,
    Context,
    LimitExceeded,
    RenderError,
    Source,
    Step,
    copier,
    describe,
    out_of,
    said,
)
from bridge.mapping.filters import GROWING, STR_METHODS
from bridge.mapping.limits import SMALL_CHARS, UNCHECKED_STEPS, BudgetExceeded, after_large, looking, text_weight
from bridge.mapping.model import FieldSpec
from bridge.mapping.paths import MISSING, Absent
from bridge.mapping.trace import OMIT, FieldTrace


class Modifiers:
    """A field's modifiers: what stands in for a missing value, the transforms, the map, `required`."""

    def __init__(self, name: str, spec: FieldSpec) -> None:
        self.name = name
        self.spec = spec
        self.table = spec.map
        # Each entry as a copier, so that a list or table entry is handed out fresh to every render.
        self.entries = {k: copier(v) for k, v in spec.map.items()} if spec.map else {}
        self.folded = {str(k).casefold(): get for k, get in self.entries.items()}
        # No text longer than this is an entry's key, nor folds to one (folding never shortens a text): a longer
        # value is not looked up, so that a large one costs no fold nor hash.
        self.longest = max(map(len, self.folded), default=0)
        self.default_of = copier(spec.default)
        has_default = spec.default is not msgspec.UNSET
        self.map_fallback = "map_default" if spec.map_default is not msgspec.UNSET else "default" if has_default \
            else None
        self.map_default_of = copier(spec.map_default if spec.map_default is not msgspec.UNSET else spec.default)
        self.required = spec.required
        self.on_missing = spec.on_missing or ("default" if has_default else "error" if spec.required else "null")
        self.fixed, self.stand_in = self._stand_in()

    def _stand_in(self) -> tuple[Any, Callable[[Absent, Context], Any]]:
        """`missing` decided once for this field's `on_missing`: the value that stands in when it is always the
        same (else UNSET), and the function giving it otherwise."""
        if self.on_missing == "default" and not isinstance(self.spec.default, list | dict):
            return self.spec.default, self._missing
        if self.on_missing == "omit":
            return OMIT, self._missing
        if self.on_missing == "null":
            return None, self._missing
        return msgspec.UNSET, self._missing

    def _missing(self, absent: Absent, ctx: Context) -> Any:
        return self.missing(absent.why(ctx)) if self.on_missing == "error" else self.missing("")

    def missing(self, why: object) -> Any:
        if self.on_missing == "default":
            return self.default_of()
        if self.on_missing == "omit":
            return OMIT
        if self.on_missing == "null":
            return None
        raise RenderError(f"required ({why})" if self.required else f"missing ({why})", path=self.name)

    def apply(self, value: Any, label: str, fn: Callable[[Any], Any]) -> Any:
        """`fn(value)` as a render's step (see `finish`), for an explanation: not begun on the loop on a value too
        large for it, and followed by a look at the clock."""
        try:
            return after_large(fn, value)
        except BudgetExceeded as exc:
            raise LimitExceeded(f"transform {label}: {exc} in field {self.name}", path=self.name) from None
        except (MemoryError, RecursionError) as exc:
            raise LimitExceeded(f"transform {label}: {out_of(exc, 'it')} in field {self.name}",
                                path=self.name) from None
        except FILTER_ERRORS as exc:
            raise RenderError(f"transform {label} failed on {describe(value)}: {said(exc)}", path=self.name) from None

    def look_up(self, value: Any) -> tuple[Any, bool]:
        """The map's entry for `value` (an exact key, else one that differs only in case), and whether the
        map's default stood in."""
        if isinstance(value, str):
            key: str | None = value
        else:  # written as text only when it may be short enough (its weight never exceeds its text's length)
            key = str(value) if text_weight(value, self.longest) <= self.longest else None
        if key is not None and len(key) <= self.longest:
            get = self.entries.get(key) or self.folded.get(key.casefold())
            if get is not None:
                return get(), False
        if self.map_fallback is not None:
            return self.map_default_of(), True
        raise RenderError(f"{describe(value)} is not in the map (known: {', '.join(self.entries)}) "
                          "and the field has no default", path=self.name)

    def check_required(self, value: Any) -> Any:
        if self.required and (value is None or value == ""):
            raise RenderError(f"required ({'is null' if value is None else 'is empty'} after transforms)",
                              path=self.name)
        return value


def finish(name: str, source: Source, described: str, steps: list[Step], spec: FieldSpec, *,
           source_steps: int = 0) -> CompiledField:
    """The field that reads `source` (itself `source_steps` steps on small values: a fast-path template's filters),
    then applies the modifiers. A value that is not small (limits.SMALL_CHARS) makes each filter on a value that is
    not small look at the clock after it (`looking`), as does a chain that may make a large value of a small one
    (`GROWING`); a chain longer than UNCHECKED_STEPS looks after each filter. Filters on a small value, the common
    case, take no look and cost one test for the whole chain."""
    mods = Modifiers(name, spec)
    fixed, missing, look_up, check_required = mods.fixed, mods.stand_in, mods.look_up, mods.check_required
    mapped = mods.table is not None
    required = mods.required
    unset = msgspec.UNSET
    every = len(steps) > UNCHECKED_STEPS
    looked = [(label, looking(fn, every)) for label, fn in steps]
    quick = str_methods(steps)
    small = -1 if every or any(_filter_name(label) in GROWING for label, _ in steps) else SMALL_CHARS  # -1: none

    def run(ctx: Context) -> Any:
        value = source(ctx)
        if type(value) is Absent:
            return missing(value, ctx) if fixed is unset else fixed
        if steps:
            for label, fn in quick if type(value) is str and len(value) <= small else looked:
                try:
                    value = fn(value)
                except BudgetExceeded as exc:
                    raise LimitExceeded(f"transform {label}: {exc} in field {name}", path=name) from None
                except (MemoryError, RecursionError) as exc:
                    raise LimitExceeded(f"transform {label}: {out_of(exc, 'it')} in field {name}",
                                        path=name) from None
                except FILTER_ERRORS as exc:
                    raise RenderError(f"transform {label} failed on {describe(value)}: {said(exc)}",
                                      path=name) from None
        if mapped:
            value = look_up(value)[0]
        if required and (value is None or value == ""):
            check_required(value)
        return value

    unchecked = 1 + source_steps + (0 if every else len(steps)) + (1 if mapped else 0)
    return CompiledField(name, run, _explainer(mods, source, described, steps), steps=unchecked)


def str_methods(steps: list[Step]) -> list[Step]:
    """`steps` as run on a str: the first steps that are str methods without arguments (`strip`, `lower`, `upper`,
    `title`, each giving a str of a str) called as those methods, in C, rather than through the filter that first
    tests its value's type; from the first other step on, the filters themselves."""
    out: list[Step] = []
    methods = True
    for label, fn in steps:
        method = STR_METHODS.get(fn) if methods else None
        methods = method is not None
        out.append((label, method or fn))
    return out


def _filter_name(label: str) -> str:
    """The filter a `transform:` entry names: `replace` of `replace('a', 'b')`."""
    return label.split("(", 1)[0].strip()


def _explainer(mods: Modifiers, source: Source, described: str, steps: list[Step],
               ) -> Callable[[Context], FieldTrace]:
    """`run`'s steps again, each one recorded."""

    def explain(ctx: Context) -> FieldTrace:
        trace = FieldTrace(mods.name, described)
        try:
            value = source(ctx)
            if type(value) is Absent:
                trace.raw, trace.why_missing = MISSING, value.why(ctx)
                trace.value = mods.missing(trace.why_missing)
                trace.fallback = {"default": "default", "omit": "omit", "null": "null"}[mods.on_missing]
                implied = "" if mods.spec.on_missing else ", implied by `default:`" if mods.on_missing == "default" \
                    else ", the field being optional"
                trace.reason = f"{trace.why_missing} (on_missing: {mods.on_missing}{implied})"
                return trace
            trace.raw = value
            for label, fn in steps:
                value = mods.apply(value, label, fn)
                trace.steps.append((label, value))
            if mods.table is not None:
                found, fell_back = mods.look_up(value)
                if fell_back:
                    trace.mapped = f"{describe(value)} is not in the map"
                    trace.fallback, trace.reason = mods.map_fallback or "", f"{describe(value)} is not in the map"
                else:
                    trace.mapped = f"{describe(value)} -> {describe(found)}"
                value = found
            trace.value = mods.check_required(value)
        except RenderError as exc:
            trace.error = str(exc)
        return trace

    return explain
