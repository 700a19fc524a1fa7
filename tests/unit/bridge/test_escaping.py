"""Text that cannot be encoded as UTF-8 (lone surrogates) written out as visible escapes, everywhere in a value."""

from __future__ import annotations

import copy
import re
import sys
from typing import Any

import msgspec
import pytest

from bridge import escaping
from bridge.escaping import encodable, escape_text, escape_tree, escape_values, quoted_sent


def test_bytes_read_with_surrogateescape_are_written_as_hex_escapes() -> None:
    """Each byte aiohttp could not read as UTF-8 becomes `\\xNN`; valid text around it is left as it is."""
    header = b"caf\xc3\xa9 \xff\xfe".decode("utf-8", "surrogateescape")
    assert escape_text(header) == "café \\xff\\xfe"


def test_other_lone_surrogates_are_written_as_unicode_escapes() -> None:
    """A lone surrogate that is not an escaped byte (a UTF-7 decode, a JSON `\\ud800`) becomes `\\uNNNN`."""
    assert escape_text("a\ud800b\udbff") == "a\\ud800b\\udbff"


def test_text_that_encodes_is_returned_unchanged() -> None:
    """Ordinary text, ASCII or not, is the very same object: the check costs no copy."""
    for text in ("plain", "café 🚀", ""):
        assert encodable(text)
        assert escape_text(text) is text
    assert not encodable("x\udcff")


def test_escape_values_changes_only_what_does_not_encode() -> None:
    """A flat mapping (kept headers) is escaped in place, non-text values untouched, and the changes counted."""
    headers = {"user-agent": "ok", "referer": "r\udce9", "x-request-id": "\udcff", "port": 8080}
    assert escape_values(headers) == 2
    assert headers == {"user-agent": "ok", "referer": "r\\xe9", "x-request-id": "\\xff", "port": 8080}


def test_escape_tree_reaches_every_string_and_key_however_deep() -> None:
    """Values and keys in nested objects and arrays are escaped, nesting far past Python's recursion limit is
    walked, and the result encodes as JSON."""
    deep: object = "bottom\udcff"
    for i in range(5000):
        deep = [deep] if i % 2 else {"k": deep}
    value = {"a\udcff": ["x\ud800", {"n": 1, "ok": "fine"}], "deep": deep}
    fixed, changed = escape_tree(value)
    assert changed == 3
    assert fixed["a\\xff"] == ["x\\ud800", {"n": 1, "ok": "fine"}]
    node = fixed["deep"]
    for i in reversed(range(5000)):
        node = node[0] if i % 2 else node["k"]
    assert node == "bottom\\xff"
    assert msgspec.json.encode({"a\\xff": fixed["a\\xff"]})


def test_escape_tree_leaves_encodable_values_alone() -> None:
    """A value with nothing to escape is returned as it is, with nothing counted."""
    value = {"a": ["b", 1, None, {"c": "d"}]}
    assert escape_tree(value) == ({"a": ["b", 1, None, {"c": "d"}]}, 0)
    assert escape_tree("x\udcff") == ("x\\xff", 1)


def test_a_senders_text_is_quoted_cut_with_its_length_and_its_bytes_written_out() -> None:
    """`quoted`: the text's repr up to `limit` characters; past it, the first `limit`, `…` and the length."""
    assert quoted_sent("a'b\n") == '"a\'b\\n"'
    assert quoted_sent("x" * 80) == repr("x" * 80)
    assert quoted_sent("x" * 81) == repr("x" * 80) + "… (81 characters)"
    assert quoted_sent("envelope[a]", 8) == "'envelope'… (11 characters)"
    assert quoted_sent(b"caf\xff".decode("utf-8", "surrogateescape")) == "'caf\\\\xff'"


def test_a_long_text_is_looked_at_and_escaped_a_slice_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """`re` holds the GIL for all of one call (some 50 ms on a 20 MiB mail's text): a text longer than SLICE_CHARS
    is searched and escaped a slice at a time, to what it gives at once, wherever its surrogates fall (a slice's
    first or last character included); a text that encodes comes back as it is."""
    text = "\udce9caf\udce9 ok, " * 10 + "\ud800"
    once = escaping.escape_text(text)
    tree = {"t": text, "l": [text, "fine " * 5], text: 1}
    once_tree = escaping.escape_tree(copy.deepcopy(tree))
    headers = {"h": text}
    escaping.escape_values(once_headers := dict(headers))
    monkeypatch.setattr(escaping, "SLICE_CHARS", 8)
    pattern = escaping._SURROGATE
    seen: list[int] = []

    class Noted:
        def search(self, text: str, pos: int = 0, endpos: int = sys.maxsize) -> re.Match[str] | None:
            seen.append(min(endpos, len(text)) - pos)
            return pattern.search(text, pos, endpos)

        def sub(self, repl: Any, text: str) -> str:
            seen.append(len(text))
            return pattern.sub(repl, text)

    monkeypatch.setattr(escaping, "_SURROGATE", Noted())
    assert escaping.escape_text(text) == once
    assert escaping.escape_tree(copy.deepcopy(tree)) == once_tree
    escaping.escape_values(headers)
    assert headers == once_headers
    long_fine = "\u00e9t\u00e9 " * 10
    assert escaping.escape_text(long_fine) is long_fine
    assert max(seen) <= 8
