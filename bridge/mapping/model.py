"""The mapping file format, as ops write it."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

OnMissing = Literal["omit", "null", "default", "error"]
SOURCE_KEYS = ("from", "jmespath", "template", "value", "object")


class FieldSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, rename={"from_": "from"}):
    """A field written as a table: one source (`from`, `jmespath`, `template`, `value`, `object`) and
    its modifiers."""

    from_: str | None = None
    jmespath: str | None = None
    template: str | None = None
    value: Any = msgspec.UNSET
    object: dict[str, Any] | None = None
    required: bool = False
    default: Any = msgspec.UNSET
    on_missing: OnMissing | None = None
    map: dict[str, Any] | None = None
    map_default: Any = msgspec.UNSET
    transform: list[str] | None = None

    def sources(self) -> list[str]:
        given = {"from": self.from_ is not None, "jmespath": self.jmespath is not None,
                 "template": self.template is not None, "value": self.value is not msgspec.UNSET,
                 "object": self.object is not None}
        return [name for name in SOURCE_KEYS if given[name]]

    def modifiers(self) -> list[str]:
        """The modifiers given, by their names in the file."""
        out = [name for name in ("required", "on_missing", "map", "transform") if getattr(self, name)]
        out += [name for name in ("default", "map_default") if getattr(self, name) is not msgspec.UNSET]
        return out


def _keys(struct: type[msgspec.Struct], *, required_only: bool = False) -> tuple[str, ...]:
    """A struct's keys as written in the file, in declaration order (read off the struct, so never stale)."""
    return tuple(f.encode_name for f in msgspec.structs.fields(struct) if f.required or not required_only)


FIELD_KEYS = _keys(FieldSpec)


class TestInput(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a mapping test renders: the event's payload, and optionally its headers, event fields, vars
    (over the config's) and, for follow-ups, the ticket."""

    payload: dict[str, Any] = {}
    headers: dict[str, Any] = {}
    event: dict[str, Any] = {}
    vars: dict[str, Any] = {}
    ticket: dict[str, Any] | None = None


class MappingTest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A test written beside a mapping: an input and exactly one expectation."""

    name: str | None = None
    input: TestInput
    expect: Any = msgspec.UNSET
    expect_contains: dict[str, Any] | None = None
    expect_error: str | None = None
    expect_skip: bool = False

    def expectations(self) -> list[str]:
        found = ["expect"] if self.expect is not msgspec.UNSET else []
        found += [name for name in ("expect_contains", "expect_error") if getattr(self, name) is not None]
        return found + (["expect_skip"] if self.expect_skip else [])


class FollowUpSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a later message of a conversation does once its ticket exists: its own action and fields
    (rendered at send time, with `ticket` known), an optional `when`, or `skip: true` (nothing is sent)."""

    action: str | None = None
    when: str | None = None
    options: dict[str, Any] | None = None
    fields: dict[str, Any] = {}
    skip: bool = False


FOLLOW_UP_KEYS = tuple(f.encode_name for f in msgspec.structs.fields(FollowUpSpec))


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
    conversation: str | None = None
    """An expression giving the conversation key (over the channel's own: email thread, chat id)."""
    reopen_after: str | None = None
    """A quiet period (`7d`) after which a conversation's next message starts a new ticket."""
    follow_up: FollowUpSpec | None = None
    tests: list[Any] = []

    def source_names(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) else list(self.source)


MAPPING_KEYS = _keys(MappingSpec)
REQUIRED_MAPPING_KEYS = _keys(MappingSpec, required_only=True)
