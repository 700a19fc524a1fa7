"""The mapping file format, as ops write it."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

OnMissing = Literal["omit", "null", "default", "error"]


class FieldSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, rename={"from_": "from"}):
    """A field written as a table: one source (`from`, `template`, `value`) and its modifiers."""

    from_: str | None = None
    template: str | None = None
    value: Any = msgspec.UNSET
    required: bool = False
    default: Any = msgspec.UNSET
    on_missing: OnMissing | None = None
    map: dict[str, Any] | None = None
    transform: list[str] | None = None

    def sources(self) -> list[str]:
        named = [("from", self.from_), ("template", self.template)]
        found = [name for name, v in named if v is not None]
        if self.value is not msgspec.UNSET:
            found.append("value")
        return found


class MappingTest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A test written beside a mapping: an input and what it must render to."""

    name: str | None = None
    input: dict[str, Any]
    expect: Any = msgspec.UNSET
    expect_contains: dict[str, Any] | None = None
    expect_error: str | None = None
    expect_skip: bool = False


class MappingSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One mapping file."""

    name: str | None = None
    description: str | None = None
    source: str | list[str]
    when: str | None = None
    destination: str
    action: str
    options: dict[str, Any] = {}
    fields: dict[str, Any]
    tests: list[MappingTest] = []

    def source_names(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) else list(self.source)
