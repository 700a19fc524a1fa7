"""Text that cannot be encoded as UTF-8 (lone surrogates) written out as visible escapes, everywhere in a value; and
text holding a NUL written out for a text column, unambiguously and readable back."""

from __future__ import annotations

import copy
import re
import sys
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import escaping
from bridge.escaping import (
    NUL_MARK,
    encodable,
    escape_text,
    escape_tree,
    escape_values,
    legacy_nul,
    lookup_forms,
    quoted_sent,
    read_nul,
    write_nul,
)

# Text made mostly of what the write-out is about: NUL, backslashes, the mark's characters, `x00`.
TRICKY = st.text(alphabet=st.sampled_from(["\x00", "\\", "0", "~", "x", "a", "\u00e9"]), max_size=40)
TRICKY_OR_MARKED = st.one_of(TRICKY, TRICKY.map(lambda t: NUL_MARK + t), st.text(max_size=40))


def written_out_one_at_a_time(text: str) -> str:
    """The write-out as it is defined: each lone surrogate, found by a pattern, written `\\xNN` when it is a byte
    read with surrogateescape (U+DC80 to U+DCFF), else `\\uNNNN`; everything else as it is."""
    def one(match: re.Match[str]) -> str:
        code = ord(match.group())
        return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"
    return re.sub("[\ud800-\udfff]", one, text)


# Text made mostly of lone surrogates (escaped bytes that may read together as UTF-8: U+DCC3 U+DCA9 is `é`'s
# bytes; escaped continuation bytes after a valid letter), valid letters and backslashes.
SURROGATE_HEAVY = st.text(alphabet=st.one_of(
    st.sampled_from(["\udcc3", "\udca9", "\udce2", "\udc82", "\udcac", "\udcf0", "\udc9f", "\udc80",
                     "\udcff", "\udc7f", "\udd00", "\ud83d", "\ude00", "\ud800", "\udfff", "\\", "x", "é",
                     "€", "\U0001f600", "\x00", "\u00c3"]),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.characters()), max_size=60)


@settings(max_examples=2000, deadline=None)
@given(SURROGATE_HEAVY)
def test_the_write_out_in_c_is_the_write_out_one_surrogate_at_a_time(text: str) -> None:
    """`escape_text` writes lone surrogates out with a table in C: exactly what writing each out
    one at a time gives, whatever sits beside them, and a long text escaped a slice at a time the same."""
    assert escape_text(text) == written_out_one_at_a_time(text)
    long = text * (escaping.SLICE_CHARS // max(len(text), 1) + 2)
    assert escape_text(long) == written_out_one_at_a_time(long)


@pytest.mark.parametrize(("codes", "written"), [
    ([0xDCC3, 0xDCA9], "\\xc3\\xa9"),  # é's two bytes, each escaped: not é
    ([0xDCE2, 0xDC82, 0xDCAC], "\\xe2\\x82\\xac"),  # €'s three
    ([0xDCF0, 0xDC9F, 0xDC98, 0xDC80], "\\xf0\\x9f\\x98\\x80"),  # 😀's four
    ([0xE9, 0xDCA9], "é\\xa9"),
    ([0x5C, 0xDCE9], "\\\\xe9"),
    ([0xD83D, 0xDE00, 0xDC80, 0xDCFF, 0xD800, 0xDFFF], "\\ud83d\\ude00\\x80\\xff\\ud800\\udfff"),
])
def test_escaped_bytes_that_read_together_as_utf8_stay_bytes(codes: list[int], written: str) -> None:
    """Bytes read with surrogateescape were not UTF-8 where they came from: they are written out each, even when
    side by side they would read as a letter."""
    text = "".join(map(chr, codes))
    assert escape_text(text) == written == written_out_one_at_a_time(text)
    assert escape_text(text * 1000) == written * 1000


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


@settings(max_examples=500, deadline=None)
@given(TRICKY_OR_MARKED)
def test_text_written_out_reads_back_the_same_and_holds_no_nul(text: str) -> None:
    """Any text, written out, holds no NUL, reads back as it was, and is what a look-up by the text or by that form
    (the one the store shows) matches."""
    written = write_nul(text)
    assert "\x00" not in written
    assert read_nul(written) == text
    assert written in lookup_forms(text)
    assert written in lookup_forms(written)


@given(TRICKY_OR_MARKED)
def test_a_written_key_also_matches_the_form_kept_before_the_mark(text: str) -> None:
    """A key's written form gives the form a row kept before NUL_MARK holds (each NUL `\\x00`, nothing else
    changed), and only when the two differ; an operator's look-up by the key as it came matches the written form,
    that earlier form and, when it holds no NUL, the key itself."""
    written = write_nul(text)
    legacy = text.replace("\x00", "\\x00")
    assert legacy_nul(written) == (None if written == text else legacy)
    forms = lookup_forms(text)
    assert written in forms and legacy in forms and "\x00" not in "".join(forms)
    assert len(forms) == len(set(forms)) <= 2


def test_a_key_beginning_with_the_mark_is_looked_up_as_it_came_and_as_kept() -> None:
    """A raw key that begins with `\\0~` (anyone may send one) is kept written out; a look-up by it as it came
    finds that row, and the row it may name as shown; a key holding a NUL finds its row kept before the mark."""
    assert lookup_forms("\\0~abc") == ("\\0~\\\\0~abc", "\\0~abc")
    assert lookup_forms("thread\x00A") == ("\\0~thread\\x00A", "thread\\x00A")
    assert lookup_forms("thread-B") == ("thread-B",)


@settings(max_examples=500, deadline=None)
@given(TRICKY_OR_MARKED, TRICKY_OR_MARKED)
def test_two_texts_are_never_written_out_alike(a: str, b: str) -> None:
    """The write-out is one to one: a NUL and the text `\\x00` (or any two texts) never share a written form."""
    if a != b:
        assert write_nul(a) != write_nul(b)


def test_a_nul_and_its_old_written_form_are_kept_apart() -> None:
    """The case the mark is for: `a<NUL>b` and the text `a\\x00b` were both kept as `a\\x00b`; now the first is
    kept marked, its backslashes doubled, and the second as it is."""
    assert (write_nul("a\x00b"), write_nul("a\\x00b")) == ("\\0~a\\x00b", "a\\x00b")
    assert (write_nul("a\\b\x00"), write_nul("\\0~b")) == ("\\0~a\\\\b\\x00", "\\0~\\\\0~b")


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=40).filter(lambda t: not t.startswith(NUL_MARK)))
def test_a_row_kept_before_the_mark_reads_as_it_always_did(original: str) -> None:
    """A row written before the mark (each NUL written `\\x00`, nothing else changed) reads back as the very text it
    was kept as: nothing stored changes meaning."""
    old = original.replace("\x00", "\\x00")
    assert read_nul(old) == old



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
