"""What a name the stores keep may hold: the names of sources, destinations, mappings and read tokens, and the keys
of a mapping's fields, checked where they are loaded so that no store refuses one at run time."""

from __future__ import annotations

NAME_MAX_CHARS = 200
"""As long as the admin API takes a name to filter by."""
ALLOWED = (f"1 to {NAME_MAX_CHARS} printable characters (letters, digits, punctuation, symbols and spaces; no NUL, "
           "tab, newline or other control or format character)")


def escaped(text: str) -> str:
    """`text` as it can be shown in an error: quoted, each character that is not printable ASCII written out
    (`'a\\x00b'`)."""
    return ascii(text)


def name_problem(name: str, what: str, *, bounded: bool = True) -> str | None:
    """Why `name` cannot be a `what` (`source name`, `field key`…) the stores keep, naming it escaped and saying
    what is allowed; None when it can. PostgreSQL refuses NUL in text; SQLite takes no lone surrogate (which YAML's
    `"\\ud800"` makes); control and format characters make names that read alike and print badly; `bounded`: at
    most NAME_MAX_CHARS."""
    bad = next((c for c in name if not c.isprintable()), None)
    if bad is not None:
        why = f"holds {escaped(bad)[1:-1]} (U+{ord(bad):04X})"
    elif not name.strip():
        why = "is empty" if not name else "is only spaces"
    elif bounded and len(name) > NAME_MAX_CHARS:
        why = f"is {len(name)} characters long"
    else:
        return None
    allowed = ALLOWED if bounded else ALLOWED.replace(f"1 to {NAME_MAX_CHARS} ", "")
    return f"{what} {escaped(name)} {why}: a {what} is {allowed}"
