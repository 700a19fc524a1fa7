"""Address header values in the forms most mail carries, read without the email package's address parser.

`email.utils.getaddresses` reads a value character by character in Python: some 10 µs per address, five times
per message (From, To, Cc, Reply-To and the envelope), most of the cost of an ordinary inbound mail's parse. Most
values are one of a few simple forms: `a@b.example`, `<a@b.example>`, `"Any Name" <a@b.example>` and
`Plain Name <a@b.example>` (a provider's parsed addresses, written back as header text, always are), or a list of
them. `simple_mailboxes` reads those with one regular expression, giving exactly what `getaddresses` gives for
them, and None for any other value, which the caller then hands to `getaddresses` (comments, groups, routes,
quoted local parts, escapes, encoded words, dots in a bare display name, anything malformed)."""

from __future__ import annotations

import re

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDRESS = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
# A quoted display name without escapes or line breaks, whose text `getaddresses` keeps as it is; a bare one of
# atoms separated by single spaces, which it keeps joined by single spaces.
_MAILBOX = (rf'(?:"(?P<quoted>[^"\\\r\n\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*)" <(?P<in_quoted>{_ADDRESS})>'
            rf"|(?P<bare>{_ATOM}(?: {_ATOM})*) <(?P<in_bare>{_ADDRESS})>"
            rf"|<(?P<angled>{_ADDRESS})>"
            rf"|(?P<plain>{_ADDRESS}))")
_MAILBOX_AT = re.compile(_MAILBOX)
_ONE_MAILBOX = re.compile(rf"(?:{_MAILBOX})\Z")


def simple_mailboxes(texts: list[str]) -> list[tuple[str, str]] | None:
    """(display name, address) pairs of `texts`, as `getaddresses(texts)` gives them, when every text is a list of
    mailboxes in the simple forms separated by `, `; else None."""
    pairs: list[tuple[str, str]] = []
    for text in texts:
        at, end = 0, len(text)
        while True:
            m = _MAILBOX_AT.match(text, at)
            if m is None:
                return None
            if (address := m["plain"] or m["angled"]) is not None:
                pairs.append(("", address))
            elif m["in_quoted"] is not None:
                pairs.append((m["quoted"], m["in_quoted"]))
            else:
                pairs.append((m["bare"], m["in_bare"]))
            at = m.end()
            if at == end:
                break
            if not text.startswith(", ", at):
                return None
            at += 2
    return pairs


def simple_mailbox(text: str) -> tuple[str, str] | None:
    """(display name, address) of `text` when it is one mailbox in a simple form, as `getaddresses([text])` gives
    it; else None. One match, for the sender of a message (handlers/email.py `sender`), whose From nearly always is
    `a@b.example` (the address a provider's JSON or an email's payload holds) or a named angle-addr."""
    m = _ONE_MAILBOX.match(text)
    if m is None:
        return None
    if (address := m["plain"] or m["angled"]) is not None:
        return "", address
    if m["in_quoted"] is not None:
        return m["quoted"], m["in_quoted"]
    return m["bare"], m["in_bare"]
