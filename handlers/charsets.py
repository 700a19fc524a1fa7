"""The character set a sender names, resolved to the codec that reads it, or to none.

Forms, multipart parts and MIME messages name their own character set, and that name is the sender's to
choose. Handing it to Python as it came costs twice: the codec registry remembers every name it failed to
find, for the life of the process (a request per fresh name grows the heap, and each miss tries an import),
and some of the codecs it does find are not character sets at all. `unicode_escape` reads backslash escapes
(an invalid one is a DeprecationWarning, an error wherever warnings are), `idna` and `punycode` read host
names, and `undefined` refuses everything.

`text_codec` answers from the name's spelling, the way the registry's own search normalizes it, and asks
the registry only about the codec modules Python ships. Only those canonical names ever reach a lookup, so
what the registry and this module remember is bounded by that list, whatever senders send.
"""

from __future__ import annotations

import codecs
import encodings
import functools
import importlib
import pkgutil
from encodings.aliases import aliases

MAX_NAME = 64
"""Longer than any registered character set's name (IANA's are at most 40 characters)."""

_MODULES = frozenset(module.name for module in pkgutil.iter_modules(encodings.__path__))
_NOT_CHARSETS = frozenset({"unicode_escape", "raw_unicode_escape", "idna", "punycode", "undefined"})
_resolved: dict[str, str | None] = {}  # by canonical module name: at most one entry per module in _MODULES
SPELLINGS_KEPT = 256
# The answers for the first SPELLINGS_KEPT names asked, as they were spelt: a look-up instead of a normalisation
# (a microsecond). Names asked later are resolved each time; what is kept never grows past the bound.
_spellings: dict[str, str | None] = {}


def text_codec(name: str | None) -> str | None:
    """The canonical name of the codec that reads text in character set `name` (`"UTF-8"` → `"utf_8"`,
    `"latin1"` → `"latin_1"`), or None when `name` is empty, no printable ASCII of at most MAX_NAME
    characters, unknown to Python, or a codec that is no character set (unicode_escape, idna, punycode,
    undefined, and the bytes-to-bytes ones such as base64 and zlib)."""
    if not name:
        return None
    try:
        return _spellings[name]  # the same few spellings come in every request: "UTF-8", "utf-8", "iso-8859-1"
    except KeyError:
        pass
    if len(name) > MAX_NAME or not (name.isascii() and name.isprintable()):
        return None
    codec = _resolve(name)
    if len(_spellings) < SPELLINGS_KEPT:
        _spellings[name] = codec
    return codec


def _resolve(name: str) -> str | None:
    """`text_codec`'s answer for a name of printable ASCII, found as the registry's search finds it."""
    normalized = encodings.normalize_encoding(name.lower())
    canonical = aliases.get(normalized) or aliases.get(normalized.replace(".", "_")) or normalized
    if canonical not in _MODULES:
        return None
    try:
        return _resolved[canonical]
    except KeyError:
        pass
    try:
        info = codecs.lookup(canonical)
    except LookupError:  # a module of the package that is no codec here (aliases, mbcs and oem off Windows)
        codec = None
    else:
        codec = canonical if info._is_text_encoding and canonical not in _NOT_CHARSETS else None
    _resolved[canonical] = codec
    return codec



ASCII_MULTIBYTE = frozenset({"shift_jis", "cp932", "euc_jp", "euc_jis_2004", "euc_jisx0213", "gb2312", "gbk",
                             "gb18030", "big5", "big5hkscs", "cp950", "cp949", "euc_kr", "johab"})
"""Codecs of multi-byte character sets that read ASCII as ASCII, keep no state between characters, and never
read a byte under 0x30 (`%`, NUL) as part of a longer character: a NUL after text ends its last character, or
shows it unfinished. (Shift_JIS-2004 and JIS X 0213 read `\\` and `~` as `¥` and `‾`; HZ and ISO-2022 shift
state with ASCII bytes.) tests/unit/handlers/test_charsets.py holds each to it."""


@functools.cache  # one entry per codec `text_codec` names, at most
def byte_table(codec: str) -> dict[int, int | str] | None:
    """For a codec `text_codec` named that reads text a byte at a time (latin-1, and those whose codec is a table of
    256 characters: cp1252, the ISO 8859, KOI8 and EBCDIC sets, …): a `str.translate` table that writes each
    character it reads from a byte back as that byte, in latin-1: a byte over 0x7f as its latin-1 character, one
    under it as its %-escape (an EBCDIC set reads some of those as characters that are not ASCII). ASCII characters
    are left as they are. Any other character of U+0080 to U+00FF is written U+0100, which latin-1 refuses. None for
    any other codec (UTF-8, UTF-16, the multi-byte sets)."""
    if codec == "latin_1":
        return {}
    if text_codec(codec) != codec:  # not a codec's own name: nothing is imported for it
        return None
    decoding = getattr(importlib.import_module(f"encodings.{codec}"), "decoding_table", None)
    if not (isinstance(decoding, str) and len(decoding) == 256):
        return None
    table: dict[int, int | str] = dict.fromkeys(range(0x80, 0x100), 0x100)
    for byte, char in enumerate(decoding):
        if "\x7f" < char < "\ufffe":  # read as a character that is not ASCII (U+FFFE: the byte is read as none)
            table[ord(char)] = byte if byte > 0x7F else f"%{byte:02X}"
    return table
