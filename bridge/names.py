"""What a name the stores keep may hold: the names of sources, destinations, mappings and read tokens, and the keys
of a mapping's fields, checked where they are loaded so that no store refuses one at run time.

Printable characters, and three that Python does not count as printable but real names hold:

- the no-break space (U+00A0) and the narrow no-break space (U+202F) of French typography (`Service client`,
  `Réclamations : fibre`), taken as spaces (a name of spaces alone is still refused, and two sources or two
  destinations whose names differ only there are refused as names that read alike: `alike`);
- the zero-width non-joiner (U+200C) and joiner (U+200D), which Persian and the Indic scripts need in ordinary
  words (`می‌خواهم`, `ক্‍ষ`), allowed only where they change how letters join, as IDNA allows them (RFC 5892,
  appendix A): either after a virama (a sign of combining class 9: Devanagari, Bengali, Tamil, Malayalam…), or,
  the non-joiner alone, between two letters of a joining script (Arabic and Persian, Syriac, N'Ko, Mongolian,
  Mandaic), combining marks beside it passed over. Anywhere else (at an end, between Latin letters, two in a row,
  beside a space) it changes nothing one sees and makes a name that reads like another, and is refused, as every
  other format character is (zero-width space, soft hyphen, direction marks and overrides).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

NAME_MAX_CHARS = 200
"""As long as the admin API takes a name to filter by."""
ALLOWED = (f"1 to {NAME_MAX_CHARS} printable characters (letters, digits, punctuation, symbols and spaces, a "
           "no-break space among them, though no space at either end; a zero-width joiner or non-joiner only where "
           "it joins letters: after a virama, or between two letters of a joining script such as Arabic; no NUL, "
           "tab, newline or other control or format character)")
SPACES = frozenset("\u00a0\u202f")
"""No-break spaces, taken as spaces: the plain one and French typography's narrow one."""
ZWNJ, ZWJ = "\u200c", "\u200d"
VIRAMA = 9
"""The canonical combining class of a virama (`unicodedata.combining`)."""
JOINING_SCRIPTS = ("ARABIC ", "SYRIAC ", "NKO ", "MONGOLIAN ", "MANDAIC ")
"""How the Unicode names of the letters of the scripts whose letters join (cursive scripts) begin."""


def as_read(name: str) -> str:
    """`name` as a reader sees it: each no-break space a space. Two names the same so are two names that read
    alike (`alike`)."""
    return name if name.isascii() else name.translate(_AS_SPACE)


_AS_SPACE = dict.fromkeys(map(ord, SPACES), " ")


def alike(names: Iterable[str]) -> dict[str, str]:
    """Each of `names` that reads as an earlier one (`as_read`: they differ only in no-break spaces), and that
    earlier one."""
    first: dict[str, str] = {}
    clashes: dict[str, str] = {}
    for name in names:
        seen = first.setdefault(as_read(name), name)
        if seen != name:
            clashes[name] = seen
    return clashes


def escaped(text: str) -> str:
    """`text` as it can be shown in an error: quoted, each character that is not printable ASCII written out
    (`'a\\x00b'`)."""
    return ascii(text)


def _joining_letter(char: str) -> bool:
    """Whether `char` is a letter of a script whose letters join one another (JOINING_SCRIPTS)."""
    return unicodedata.category(char).startswith("L") and unicodedata.name(char, "").startswith(JOINING_SCRIPTS)


def _joins(name: str, at: int) -> bool:
    """Whether the joiner or non-joiner at `at` stands where it changes how letters join: after a virama, or (the
    non-joiner) between two letters of a joining script, the combining marks (Mn) on either side passed over. Each
    run of marks is passed over by at most the joiner before it and the one after it: linear in the name."""
    if at > 0 and unicodedata.combining(name[at - 1]) == VIRAMA:
        return True
    if name[at] != ZWNJ:
        return False
    before = at - 1
    while before >= 0 and unicodedata.category(name[before]) == "Mn":
        before -= 1
    after = at + 1
    while after < len(name) and unicodedata.category(name[after]) == "Mn":
        after += 1
    return before >= 0 and after < len(name) and _joining_letter(name[before]) and _joining_letter(name[after])


def _refused(name: str) -> tuple[int, str] | None:
    """The first character of `name` a name may not hold, and why; None when there is none."""
    for at, char in enumerate(name):
        if char.isprintable() or char in SPACES:
            continue
        if char in (ZWNJ, ZWJ):
            if _joins(name, at):
                continue
            return at, "where it joins no letters"
        return at, ""
    return None


def _spaced_end(name: str) -> str | None:
    """How `name` begins or ends with a space (a plain one, or a no-break one, which YAML keeps at the end of an
    unquoted key and no reader sees), or None when it does neither."""
    for side, char in (("begins", name[0]), ("ends", name[-1])):
        if char.isspace():
            kind = "a space" if char == " " else f"a no-break space (U+{ord(char):04X})" if char in SPACES else \
                f"a space character (U+{ord(char):04X})"
            return f"{side} with {kind}, which no reader sees"
    return None


def name_problem(name: str, what: str, *, bounded: bool = True, ends: bool = True) -> str | None:
    """Why `name` cannot be a `what` (`source name`, `field key`…) the stores keep, naming it escaped and saying
    what is allowed; None when it can. PostgreSQL refuses NUL in text; SQLite takes no lone surrogate (which YAML's
    `"\\ud800"` makes); control and format characters make names that read alike and print badly (see the module's
    text for the no-break spaces and joiners allowed); `ends`: no space at either end (`support` and `support`
    with a trailing no-break space would read alike); `bounded`: at most NAME_MAX_CHARS."""
    refused = _refused(name)
    if refused is not None:
        at, where = refused
        bad = name[at]
        why = f"holds {escaped(bad)[1:-1]} (U+{ord(bad):04X})" + (f" {where}" if where else "")
    elif not name.strip():
        why = "is empty" if not name else "is only spaces"
    elif ends and (end := _spaced_end(name)) is not None:
        why = end
    elif bounded and len(name) > NAME_MAX_CHARS:
        why = f"is {len(name)} characters long"
    else:
        return None
    allowed = ALLOWED if bounded else ALLOWED.replace(f"1 to {NAME_MAX_CHARS} ", "")
    if not ends:
        allowed = allowed.replace(", though no space at either end", "")
    return f"{what} {escaped(name)} {why}: a {what} is {allowed}"
