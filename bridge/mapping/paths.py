"""Dotted paths (`payload.items[0].name`, `payload["odd.key"]`) compiled to direct look-ups."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

ROOTS: Final = frozenset({"payload", "headers", "event", "vars", "ticket"})


class _Missing:
    """Marks a key that is absent, as distinct from one that holds null."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()

_TOKEN = re.compile(r"""\.?([A-Za-z_$@][\w$@-]*)|\[(-?\d+)\]|\[\s*(["'])(.*?)\3\s*\]""")
_BARE = re.compile(r"[A-Za-z_$@][\w$@-]*")


class PathSyntaxError(ValueError):
    """A path that cannot be parsed."""


class Path:
    """A compiled path; `get` returns the value or MISSING, `missing_at` names the first absent part."""

    __slots__ = ("keys", "text")

    def __init__(self, text: str, keys: tuple[str | int, ...]) -> None:
        self.text = text
        self.keys = keys

    def get(self, root: Any) -> Any:
        value = root
        for key in self.keys:
            if type(value) is dict and type(key) is str:  # JSON's case, without the ABC checks below
                value = value.get(key, MISSING)
                if value is MISSING:
                    return MISSING
                continue
            if isinstance(key, str):
                if isinstance(value, Mapping):
                    if key not in value:
                        return MISSING
                    value = value[key]
                else:
                    return MISSING
            elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
                try:
                    value = value[key]
                except IndexError:
                    return MISSING
            else:
                return MISSING
        return value

    def missing_at(self, root: Any) -> str:
        """The prefix of this path that is absent (or not a container) in `root`."""
        value = root
        shown = ""
        for key in self.keys:
            if isinstance(key, int):
                shown += f"[{key}]"
            elif not _BARE.fullmatch(key):
                shown += f'["{key}"]'
            else:
                shown += f".{key}" if shown else key
            nxt = Path(shown, (key,)).get(value)
            if nxt is MISSING:
                return shown
            value = nxt
        return shown

    def __repr__(self) -> str:
        return f"Path({self.text!r})"


class Absent:
    """A value that is missing, standing where the value would be; `why(ctx)` says why, worked out only when
    asked (most missing values are defaulted, and nobody asks). Never a value itself: no payload holds one."""

    __slots__ = ("path", "prefix")

    def __init__(self, prefix: str, path: Path | None = None) -> None:
        self.prefix = prefix
        self.path = path

    def why(self, ctx: Any) -> str:
        if self.path is None:
            return self.prefix
        return f"{self.prefix}{self.path.missing_at(ctx)} is missing"


def compile_lookup(path: Path, absent: Any = MISSING) -> Callable[[Any], Any]:
    """`path.get` as one call: a path of one to three names reads plain dicts directly, and anything else (an
    index, a non-dict mapping, a list on the way) goes the general way, so the answer is always `path.get`'s,
    with `absent` where that gives MISSING."""
    general = path.get
    slow: Callable[[Any], Any] = general
    if absent is not MISSING:
        def slow(root: Any) -> Any:
            value = general(root)
            return absent if value is MISSING else value

    keys = path.keys
    if not all(type(k) is str for k in keys) or not 1 <= len(keys) <= 3:
        return slow
    if len(keys) == 1:
        [k0] = keys

        def get1(root: Any) -> Any:
            if type(root) is dict:
                value = root.get(k0, MISSING)
                return absent if value is MISSING else value
            return slow(root)

        return get1
    if len(keys) == 2:
        k0, k1 = keys

        def get2(root: Any) -> Any:
            if type(root) is dict:
                value = root.get(k0, MISSING)
                if type(value) is dict:
                    value = value.get(k1, MISSING)
                    return absent if value is MISSING else value
                if value is MISSING:
                    return absent
            return slow(root)

        return get2
    k0, k1, k2 = keys

    def get3(root: Any) -> Any:
        if type(root) is dict:
            value = root.get(k0, MISSING)
            if type(value) is dict:
                value = value.get(k1, MISSING)
                if type(value) is dict:
                    value = value.get(k2, MISSING)
                    return absent if value is MISSING else value
            if value is MISSING:
                return absent
        return slow(root)

    return get3


def compile_path(text: str, roots: frozenset[str] = ROOTS) -> Path:
    """Parse `text`; its first part must be one of `roots`. Raises PathSyntaxError saying what is wrong."""
    src = text.strip()
    keys: list[str | int] = []
    pos = 0
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        # A bare name takes a dot before it everywhere but at the start: `items[0]name` is a typo.
        if not m or (m.group(1) is not None and (pos == 0) == (src[pos] == ".")):
            raise PathSyntaxError(
                f"bad path {text!r} at character {pos + 1}: write parts like payload.items[0].name "
                'or payload["key.with.dots"]'
            )
        if m.group(1) is not None:
            keys.append(m.group(1))
        elif m.group(2) is not None:
            keys.append(int(m.group(2)))
        else:
            keys.append(m.group(4))
        pos = m.end()
    if not keys:
        raise PathSyntaxError("empty path: write something like payload.email")
    if not isinstance(keys[0], str) or keys[0] not in roots:
        raise PathSyntaxError(
            f"path {text!r} must start with one of {', '.join(sorted(roots))} (e.g. payload.{keys[0]})"
        )
    return Path(src, tuple(keys))
