"""What `render --explain` shows: per field, where its value came from and what happened to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from bridge.mapping.paths import MISSING


class _Omit:
    def __repr__(self) -> str:
        return "OMIT"


OMIT: Final = _Omit()


@dataclass
class FieldTrace:
    """One field's story: its source, the raw value, each transform step, the map look-up, and whether
    a default (or omit/null) stood in for a missing or unmapped value, and why."""

    name: str
    source: str
    raw: Any = MISSING
    why_missing: str = ""
    steps: list[tuple[str, Any]] = field(default_factory=list)
    mapped: str = ""
    fallback: str = ""
    reason: str = ""
    value: Any = MISSING
    error: str | None = None
    children: list[FieldTrace] = field(default_factory=list)


@dataclass
class MappingTrace:
    """A whole render explained: the `when`, every field, the fields and the vendor body (or the error)."""

    mapping: str
    version: str
    destination: str
    action: str
    when: str | None = None
    matched: bool = True
    fields: list[FieldTrace] = field(default_factory=list)
    body: dict[str, Any] | None = None
    vendor_body: Any = None
    error: str | None = None


def _show(value: Any, limit: int = 100) -> str:
    if value is MISSING:
        return "(missing)"
    if value is OMIT:
        return "(left out)"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _lines(t: FieldTrace, indent: str) -> list[str]:
    out = [f"{indent}{t.name}  <- {t.source}"]
    pad = indent + "    "
    if t.children:
        for child in t.children:
            out.extend(_lines(child, pad))
    else:
        out.append(f"{pad}raw:      {_show(t.raw)}" + (f"  ({t.why_missing})" if t.raw is MISSING and t.why_missing
                                                         else ""))
        for label, value in t.steps:
            out.append(f"{pad}{label:<10}-> {_show(value)}")
        if t.mapped:
            out.append(f"{pad}map:      {t.mapped}")
        if t.fallback:
            used = f"{_show(t.value)} used" if t.fallback in ("default", "map_default") else "used"
            out.append(f"{pad}{t.fallback + ':':<10}{used}, because {t.reason}")
    if t.error is not None:
        out.append(f"{pad}ERROR:    {t.error}")
    else:
        out.append(f"{pad}value:    {_show(t.value, 300)}")
    return out


def format_trace(trace: MappingTrace) -> str:
    """The trace as text for a terminal."""
    out = [f"mapping {trace.mapping} (version {trace.version}) -> {trace.destination} {trace.action}"]
    if trace.when is not None:
        out.append(f"when: {trace.when}  -> {'matched' if trace.matched else 'skipped'}")
    for t in trace.fields:
        out.extend(_lines(t, "  "))
    if trace.error is not None:
        out.append(f"error: {trace.error}")
    return "\n".join(out)
