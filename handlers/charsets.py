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
