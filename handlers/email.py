"""The email channel's shape, shared by every mail provider: addresses, message ids, the reply without its
quoted history, and raw MIME. One mapping then serves Mailgun, Postmark, SendGrid, SES and Cloudmailin."""

from __future__ import annotations

import base64
import binascii
import math
import mimetypes
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.utils import collapse_rfc2231_value, getaddresses, parsedate_to_datetime, unquote
from typing import Any, NamedTuple

from bridge.errors import Rejected
from bridge.escaping import encodable
from bridge.offload import spend_on_loop, spend_raw_on_loop
from bridge.replies import strip_reply
from handlers.attachments import Attachment, attachment
from handlers.charsets import text_codec
from handlers.limits import (
    MAX_ADDRESS_FIELD_CHARS,
    MAX_ADDRESSES,
    MAX_ATTACHMENTS,
    MAX_FROM_CHARS,
    MAX_HEADER_BYTES,
    MAX_MESSAGE_IDS,
    check_chars,
    check_count,
    check_header_block,
    check_mime_shape,
    check_parts,
)
from handlers.simple_mailboxes import simple_mailbox, simple_mailboxes

AddressInput = str | Iterable[str] | None

# RFC 2047: an encoded word holds no whitespace and no "?" inside its parts, so a match ends at the next "?"
# and the scan stays linear (the standard library's pattern is lazy and rescans to the line's end).
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")


def _decode_word(charset: str, encoding: str, text: str) -> str | None:
    codec = text_codec(charset.partition("*")[0])  # RFC 2231 adds a language: utf-8*en
    if codec is None:
        return None
    try:
        if encoding in "bB":
            data = base64.b64decode(text + "=" * (-len(text) % 4))
        else:
            data = binascii.a2b_qp(text.encode("ascii"), header=True)
        return data.decode(codec)
    except ValueError:
        return None


def decode_words(value: str) -> str:
    """A header value with RFC 2047 encoded words (`=?utf-8?q?…?=`) decoded; a broken word is left as it is.
    Whitespace between two encoded words is dropped, as the RFC says."""
    if "=?" not in value:
        return value
    out: list[str] = []
    pos = 0
    after_word = False
    for match in _ENCODED_WORD.finditer(value):
        between = value[pos:match.start()]
        decoded = _decode_word(*match.groups())
        if not (after_word and decoded is not None and (not between or between.isspace())):
            out.append(between)
        out.append(match.group() if decoded is None else decoded)
        after_word = decoded is not None
        pos = match.end()
    out.append(value[pos:])
    return "".join(out)


# A value's parts as an address list parse meets them, for `_shield_encoded_words`: a quoted string, an angle-addr,
# a comment's "(", an encoded word (group 4: `_ENCODED_WORD`, as `decode_words` reads one), a run of anything
# else, or a lone "=".
_SHIELD_PART = re.compile(r'("(?:[^"\\]++|\\[\s\S])*+"?)|(<[^<>"]*+>?)|(\()|(' + _ENCODED_WORD.pattern
                          + r')|[^"<(=]++|=')
_WORD_SPECIALS = frozenset('()<>@,;:\\".[]')
_BEFORE_WORD = frozenset(" \t\r\n,:;")
_AFTER_WORD = frozenset(" \t\r\n<,;(")


def _shield_encoded_words(text: str) -> str:
    """`text` with each encoded word of a display name that holds a special (`=?utf-8?q?M=C3=BCller,_J=C3=B6rg?=
    <j@b.example>`: mailers write a name's comma, parentheses or colon in a Q word unencoded) made a quoted string,
    so that the list parse reads it as one word, as RFC 2047 readers (the email package's header parser) do, rather
    than splitting the mailbox at its comma or reading an address in it; `decode_words` then decodes the name's
    text. Words inside quoted strings, comments and angle-addrs, and words run into other text, are left as they
    are. One pass: each part is matched once, and an encoded word ends at its third "?"."""
    if "=?" not in text:
        return text
    out: list[str] = []
    at, end = 0, len(text)
    while at < end:
        part = _SHIELD_PART.match(text, at)
        assert part is not None  # the last alternatives take any character
        if part[3] is not None:  # a comment, to its ")" (an open one is left as it is, to its end)
            close = _comment_end(text, part.end())
            stop = end if close is None else close
            out.append(text[at:stop])
            at = stop
            continue
        word = part[4]
        if (word is not None and not _WORD_SPECIALS.isdisjoint(word)
                and (at == 0 or text[at - 1] in _BEFORE_WORD)
                and (part.end() == end or text[part.end()] in _AFTER_WORD)):
            out.append('"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            out.append(part[0])
        at = part.end()
    return "".join(out)


def _texts(value: object) -> list[str]:
    """The strings in a header value or a list of them. Providers' JSON is read as it comes: anything else in
    its place (a number, an object) counts as absent rather than failing the request."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []


def _outside_quotes(text: str) -> str:
    return "".join(text.split('"')[::2])


def _mailboxes(texts: list[str], field: str, *, encoded_addresses: bool = True) -> list[tuple[str, str]]:
    """(display name, address) pairs of address header values, split before encoded words are decoded (a
    decoded name may hold a comma or an "@"); Rejected(413/400) over the caps or when it cannot be read.
    `encoded_addresses=False`: a value that holds an address only once decoded has none (a From's sender)."""
    # An address has its "@" outside quotes: counting those bounds a real list before the (costlier) parse;
    # the addresses parsed are counted again after it.
    estimate = sum(_outside_quotes(t).count("@") for t in texts)
    check_count(f"{field} addresses", estimate, MAX_ADDRESSES)
    check_chars(f"the {field} field", sum(len(t) for t in texts), MAX_ADDRESS_FIELD_CHARS)
    pairs = simple_mailboxes(texts)
    if pairs is None:
        # The standard library's parser reads a character in microseconds: on the loop, a few KiB of it is
        # handed to the parser thread.
        spend_on_loop(sum(len(t) for t in texts), f"the {field} field is read by the full address parser")
        try:
            pairs = getaddresses([_shield_encoded_words(t) for t in texts])
        except RecursionError:  # comments nested a thousand deep
            raise Rejected(400, f"{field} is not an address list: comments are nested too deep",
                           check="email") from None
    # Decoded after the split (RFC 2047): a word may decode to a comma, a line break or a whole `Bcc: x@y`
    # and must stay part of its display name. A list that holds an address only once decoded (a sender that
    # encoded it all) is parsed decoded, unless it is read for a sender, which a decoded text never names.
    decoded = [(" ".join(decode_words(name).split()), addr) for name, addr in pairs]
    if encoded_addresses and not any("@" in addr for _name, addr in decoded) and any("=?" in t for t in texts):
        again = [decode_words(t) for t in texts]
        spend_on_loop(sum(len(t) for t in again), f"the {field} field is read by the full address parser")
        decoded = getaddresses(again)
    return decoded


def address_list(*values: AddressInput, field: str = "email") -> list[str]:
    """The bare, lower-cased addresses in header values or lists of them, each once, in order. `field` names
    the header in the 413 when there are more than MAX_ADDRESSES."""
    seen: dict[str, None] = {}
    for _name, raw in _mailboxes([t for v in values for t in _texts(v)], field):
        addr = raw.strip().lower()
        if "@" in addr:
            seen[addr] = None
    check_count(f"{field} addresses", len(seen), MAX_ADDRESSES)
    return list(seen)


# A From value's tokens as RFC 5322 reads them (each read once, possessive): whitespace; a quoted string whole,
# with its backslash escapes; an atom (any run of characters but whitespace and the specials, so an encoded word
# and non-ASCII text are atoms); a domain literal; else one character (a special, or a quote or bracket left
# open). A comment is read by _COMMENT_PAREN, up to each of its parentheses in turn: ctext and escapes.
_FROM_TOKEN = re.compile(r'(\s++)|("(?:[^"\\]++|\\[\s\S])*+")|([^\s"(),.:;<>@\[\]\\]++)'
                         r"|(\[(?:[^\[\]\\]++|\\[\s\S])*+\])|([\s\S])")
_COMMENT_PAREN = re.compile(r"(?:[^()\\]++|\\[\s\S])*+([()])")
_ATOM_CHAR = re.compile(r'[^\s"(),.:;<>@\[\]\\]')
_DOT_ATOM = re.compile(r"[^\s\"(),.:;<>@\[\]\\]++(?:\.[^\s\"(),.:;<>@\[\]\\]++)*+")
_QUOTED_PAIR = re.compile(r"\\([\s\S])")
_CFWS, _WORD, _TEXT = "cfws", "word", "text"  # token kinds beside the specials and "<" (an angle-addr)


class _Token(NamedTuple):
    kind: str  # _CFWS, _WORD (an atom or a quoted string), "[" (a domain literal), _TEXT, "<" or a special
    text: str  # as written; for "<", the angle-addr's address or "" when it holds no "@"
    tainted: bool = False  # a comment holding "<", ">" or "@" (read otherwise by a parser that skips no comment)


def _comment_end(text: str, at: int) -> int | None:
    """The end of the comment whose "(" is just before `at` (nested, escapes honoured), or None if left open."""
    depth = 1
    while depth:
        paren = _COMMENT_PAREN.match(text, at)
        if paren is None:
            return None
        depth += 1 if paren[1] == "(" else -1
        at = paren.end()
    return at


def _from_tokens(text: str, at: int, angle: bool) -> tuple[list[_Token], int] | None:
    """The tokens of a From value from `at`, up to the end or, in an angle-addr (`angle`), up to its ">"; with
    where they end. None when the value cannot be read exactly: a quote, comment, literal or bracket left open,
    a ">" or "]" outside them; in an angle-addr, a "<", ";", backslash or stray ")". Outside one, a backslash
    before an atom's character and a stray ")" (`CORP\\asha`, `Asha :)`) are display text."""
    tokens: list[_Token] = []
    end = len(text)
    while at < end:
        token = _FROM_TOKEN.match(text, at)
        assert token is not None  # the last alternative takes any character
        at = token.end()
        char = token[5]
        if char is None:
            kind = _CFWS if token[1] else _WORD if token[2] or token[3] else "["
            tokens.append(_Token(kind, token[0]))
        elif char == "(":
            start = at
            at_end = _comment_end(text, at)
            if at_end is None:
                return None
            at = at_end
            tokens.append(_Token(_CFWS, "", any(c in text[start:at] for c in "<>@")))
        elif char == ">" and angle:
            return tokens, at
        elif char == "<" and not angle:
            inner = _from_tokens(text, at, True)
            if inner is None:
                return None
            content, at = inner
            address = _angle_address(content)
            if address is None:
                return None
            tokens.append(_Token("<", address))
        elif char in ",.:;@" and not (angle and char == ";"):
            tokens.append(_Token(char, char))
        elif not angle and (char == ")" or (char == "\\" and _ATOM_CHAR.match(text, at))):
            tokens.append(_Token(_TEXT, char))
        else:  # a quote, "[" or "<" left open, a stray ">" or "]"; in an angle-addr, ";", "\\" or ")"
            return None
    return (None if angle else (tokens, at))


def _local_part(word: str) -> str:
    """A local part as one form: a quoted string whose text needs no quotes (`"asha.rao"`) unquoted, any other
    quoted string with only `\\` and `"` escaped, as the standard library's list parse writes it."""
    if not word.startswith('"'):
        return word
    inner = _QUOTED_PAIR.sub(r"\1", word[1:-1])
    if _DOT_ATOM.fullmatch(inner):
        return inner
    return '"' + inner.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _addr_spec(tokens: list[_Token]) -> str | None:
    """The lower-cased address `tokens` are (obsolete folding whitespace and comments between them allowed), or
    None when they are not one addr-spec: `local@domain`, the local part words joined by dots, the domain atoms
    joined by dots (a final dot kept) or one domain literal."""
    words = [t for t in tokens if t.kind != _CFWS]
    if [t.kind for t in words].count("@") != 1:
        return None
    at = next(i for i, t in enumerate(words) if t.kind == "@")
    local, domain = words[:at], words[at + 1:]
    if not local or len(local) % 2 == 0 or not domain:
        return None
    if any(t.kind != (_WORD if i % 2 == 0 else ".") for i, t in enumerate(local)):
        return None
    if [t.kind for t in domain] != ["["]:
        if domain[-1].kind == "." and len(domain) > 1:
            domain = domain[:-1]
        if len(domain) % 2 == 0 or any(t.kind != (_WORD if i % 2 == 0 else ".") or t.text.startswith('"')
                                       for i, t in enumerate(domain)):
            return None
    text = ".".join(_local_part(t.text) for t in local[::2]) + "@" + "".join(t.text for t in words[at + 1:])
    return text.lower()


def _angle_address(tokens: list[_Token]) -> str | None:
    """The address an angle-addr's content is ("" for one with no "@" at all: `<>`, `<Support>`), after an
    obsolete route (`<@relay.example:asha@corp.example>`); None when it is not exactly one addr-spec, or when
    a comment or a quoted string in it holds "<", ">" or "@" (which a parser reading no comment or quote
    inside brackets would read otherwise)."""
    if all(t.kind != "@" for t in tokens):
        return ""
    if any(t.tainted or (t.text.startswith('"') and any(c in t.text for c in "<>@")) for t in tokens):
        return None
    colons = [i for i, t in enumerate(tokens) if t.kind == ":"]
    if colons:  # the obsolete route: "@" domain, then any more after commas, then ":"
        route = [t for t in tokens[:colons[0]] if t.kind not in (_CFWS, ",")]
        if len(colons) > 1 or not route or route[0].kind != "@" or any(t.text.startswith('"') for t in route):
            return None
        tokens = tokens[colons[0] + 1:]
    return _addr_spec(tokens)


def _mailbox(tokens: list[_Token]) -> tuple[set[str], set[str]] | None:
    """(addresses, in_name) of one mailbox's tokens: its angle-addr's address, or a bare addr-spec that is the
    whole mailbox; and, beside an angle-addr, the addr-spec its display text is (`'john@x.example'
    <john@x.example>`: a list parse reads that text as a mailbox of its own). Neither for display text alone
    (a name's unquoted comma, a quoted string, an encoded word). None when it cannot be read as one of those."""
    words = [t for t in tokens if t.kind != _CFWS]
    angles = [i for i, t in enumerate(words) if t.kind == "<" and t.text]
    if len(angles) > 1 or (angles and angles[0] != len(words) - 1):
        return None  # two addresses in brackets, or text after one
    name = words[:-1] if angles else words
    if not any(t.kind == "@" for t in name):
        return {words[-1].text} if angles else set(), set()
    address = _addr_spec(name)  # a "<Support>" or display text in it: not an addr-spec
    if address is None:
        return None
    return ({words[-1].text}, {address}) if angles else ({address}, set())


class _FromRead(NamedTuple):
    addresses: set[str]  # the mailboxes' addresses
    in_name: set[str]  # a lone mailbox's display text that is its own angle-addr: a mailbox to a list parse


def _unquoted(address: str) -> str:
    """An addr-spec read from display text without the single quotes Outlook writes around it."""
    return address[1:-1] if len(address) > 2 and address[0] == address[-1] == "'" else address


def _from_addresses(text: str) -> _FromRead | None:
    """The addresses of a From value read outside its quoted strings, comments and groups' display names: each
    a real addr-spec, in angle brackets or a whole mailbox; never a name's text, a comment's, or an encoded
    word's (RFC 2047 5). Mailboxes are told apart by the commas outside those and outside angle brackets: a
    value of one mailbox with an angle-addr whose display text is an addr-spec is that address only when the
    text is the same one (Outlook's `'john@x.example' <john@x.example>`; the text is then `in_name`), and
    otherwise that text counts as an address too, as it does in a value of several mailboxes: a lenient
    parse (`email.utils.parseaddr`) reads it as the From, so a provider's DMARC check may have been for its
    domain. None when the value cannot be read exactly (`_from_tokens`, `_mailbox`)."""
    read = _from_tokens(text, 0, False)
    if read is None:
        return None
    found: set[str] = set()
    in_names: set[str] = set()
    mailboxes = 0
    mailbox: list[_Token] = []
    for token in [*read[0], _Token(";", ";")]:
        if token.kind == ":":  # what came before is a group's display name: text, unless it holds a mailbox
            if any(t.kind == "<" and t.text for t in mailbox):
                return None
            mailbox = []
            mailboxes += 1  # a group is never one lone mailbox
        elif token.kind in (",", ";"):
            addresses = _mailbox(mailbox)
            if addresses is None:
                return None
            found |= addresses[0]
            in_names |= addresses[1]
            mailbox = []
            mailboxes += 1
        else:
            mailbox.append(token)
    if mailboxes > 1 or any(_unquoted(a) not in found for a in in_names):
        return _FromRead(found | in_names, set())
    return _FromRead(found, in_names - found)


def sender(value: AddressInput, field: str = "From") -> tuple[str | None, str | None]:
    """(display name, bare lower-cased address) of a From value: the mailbox it is, as a provider's DMARC check
    reads it, or no address when that cannot be told (conversations trust a message's sender: docs/security.md).

    The address is taken only from a real addr-spec (`_from_addresses`): an angle-addr's (after an obsolete
    route, with comments or folding whitespace in it, a quoted local part written in one form), or a bare one
    that is the whole mailbox. Text inside a quoted string, a comment, a group's display name or an encoded
    word (RFC 2047 5) is never an address: `"ceo@corp.example"`, `ceo@corp.example:;` and
    `=?utf-8?q?ceo=40corp.example?=` name none. A value that cannot be read exactly (a quote left open, as in a
    name built without escaping) names none, and so does one the list parse (the standard library's reading,
    or the fast path's of the forms it reads exactly) reads as another address: both must read the same one.
    Mailboxes are counted by the commas outside quoted strings, comments, angle brackets and groups. A From of
    one mailbox with an angle-addr whose display text is an addr-spec names that address only when the text
    is the same address, case aside (`'john@x.example' <john@x.example>`, as Outlook writes it); otherwise
    (`attacker@evil.example <victim@corp.example>`, or the reverse) it names none: `email.utils.parseaddr`
    and `policy.default`'s `From.addresses` read the display text's address, so a provider's DMARC check
    that parsed that way passed for the attacker's domain, and the angle-addr may be a victim's. A From of
    mailboxes of more than one address (which no ordinary mail has) names no address: which one a provider's
    DMARC check read cannot be told, and the one in angle brackets may be a victim's (`x@evil.example,
    <ceo@corp.example>`). A mailbox without an address does not count:
    `John Doe, Support <john@x.example>` (a display name's unquoted comma) is john@x.example. The display name
    is the list parse's. Over MAX_FROM_CHARS, Rejected(413) naming `field`.

    A provider's JSON field may hold line breaks a header's value never keeps: unfolded first (RFC 5322 2.2.3),
    as the standard library's parser would otherwise end a quoted string or a comment at a CR the scan reads
    on through.

    A From that is one mailbox in a simple form (`simple_mailbox`: `a@b.example`, `<a@b.example>`,
    `Plain Name <a@b.example>`, `"Any Name" <a@b.example>`, no comment, escape or line break), as nearly every
    one is, is read by that one match: both readings above give its address and name, and reading them costs
    some 170,000 instructions, most of a threaded message's intake (every threaded message's `from` is read
    again for its conversation: bridge/conversations.py `message_sender`)."""
    if isinstance(value, str) and len(value) <= MAX_FROM_CHARS and (simple := simple_mailbox(value)) is not None:
        name, address = simple
        return " ".join(decode_words(name).split()) or None, address.lower()
    return _read_sender(value, field)


def _read_sender(value: AddressInput, field: str) -> tuple[str | None, str | None]:
    """`sender` of any value: the list parse's and the addr-spec reading's, which must agree."""
    texts = [_FOLD.sub("", t) for t in _texts(value)]
    if not texts:
        return None, None
    check_chars(f"the {field} field", sum(len(t) for t in texts), MAX_FROM_CHARS)
    pairs = _mailboxes(texts, field, encoded_addresses=False)
    reads = [_from_addresses(text) for text in texts]
    if any(r is None for r in reads):
        return None, None
    read = {a for r in reads if r is not None for a in r.addresses}
    # a lone mailbox's display text that is its own angle-addr is a mailbox to a list parse, but no other address
    in_name = reads[0].in_name if len(reads) == 1 and reads[0] is not None else set()
    listed = {_address_form(a) for _n, a in pairs if "@" in a} - in_name
    if len(listed) > 1:
        return None, None
    if read and read != listed:
        return None, None
    if read:  # one: the name beside it (an `<x>` holding no address is no mailbox)
        addr = read.pop()
        return next((n.strip() or None for n, a in pairs if _address_form(a) == addr), None), addr
    return ((pairs[0][0].strip() or None) if pairs else None), None


def _address_form(address: str) -> str:
    """A list parse's address as `_addr_spec` writes one: lower-cased, a quoted local part in one form."""
    address = address.strip().lower()
    quoted = _FROM_TOKEN.match(address) if address.startswith('"') else None
    if quoted is None or quoted[2] is None:
        return address
    return _local_part(quoted[2]) + address[quoted.end():]


_MSG_ID = re.compile(r"<[^<>\s]+>")


def message_ids(value: str | Iterable[str] | None, field: str = "References") -> list[str]:
    """The message ids in a Message-ID, In-Reply-To or References value, each as `<id@host>`, each once;
    Rejected(413) past MAX_MESSAGE_IDS, naming `field`."""
    seen: dict[str, None] = {}
    for text in _texts(value):
        found = _MSG_ID.findall(text)
        if not found:  # some providers strip the brackets
            found = [f"<{t}>" for t in re.split(r"[\s,]+", text.strip()) if t and "<" not in t and ">" not in t]
        seen.update(dict.fromkeys(found))
        check_count(f"{field} message ids", len(seen), MAX_MESSAGE_IDS)
    return list(seen)


def message_id(value: str | Iterable[str] | None, field: str = "Message-ID") -> str | None:
    """The first message id in a header value, as `<id@host>`, or None."""
    ids = message_ids(value, field)
    return ids[0] if ids else None


def newlines(text: Any) -> str | None:
    """Text with CRLF and CR line ends made LF, so every provider's copy of a body compares equal."""
    if not isinstance(text, str):
        return None
    return text.replace("\r\n", "\n").replace("\r", "\n")


# -- headers and MIME --------------------------------------------------------------------------------


ADDRESS_HEADERS = frozenset({"from", "to", "cc", "bcc", "reply-to", "sender", "resent-from", "resent-to",
                             "resent-cc", "resent-bcc", "resent-sender"})
_FOLD = re.compile(r"\r\n|\r|\n")


def raw_utf8(value: str) -> str:
    """A header value the byte parser read, with its 8-bit bytes (kept as surrogates) read as UTF-8."""
    return value if value.isascii() else value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _header_value(name: str, raw: str) -> str:
    """A raw header value as text: unfolded, 8-bit bytes read as UTF-8, encoded words decoded except in
    address headers, whose encoded display names are decoded only once the addresses are split."""
    value = raw_utf8(_FOLD.sub("", raw))
    return value if name.lower() in ADDRESS_HEADERS else decode_words(value)


# A header of a header block as the email package's parser reads it: a line with a name (email.feedparser's
# headerRE less the `From ` envelope line and a line starting with a colon) and the continuation lines below it,
# which start with a blank; the name, then the value as the compat32 policy's `header_source_parse` gives it:
# less the blanks after the colon and the last line end. Possessive: nothing given back, each character read once.
_BLOCK_FIELD = re.compile(r"([\x21-\x39\x3b-\x7e]++):[ \t]*+([^\r\n]*+(?:(?:\r\n|\r|\n)[\t ][^\r\n]*+)*+)"
                          r"(?:\r\n|\r|\n|\Z)")
_HEADER_LINE = re.compile(r"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")  # email.feedparser's headerRE


def _block_fields(block: str) -> list[tuple[str, str]] | None:
    """The (name, raw value) pairs `HeaderParser` reads from a header block, read without the parser: the
    headers end at the end of the block or at the first line that is not a header line (a blank line, or
    the first line of a body). None when the parser would read a line otherwise: an envelope (`From `) line,
    a line starting with a colon, or a continuation line with no header above it; and when the block holds
    a byte kept as a surrogate: the parser reads the Content-Type of the headers it made, and a value with
    such a byte becomes a `Header`, which raises UnicodeEncodeError when the value also holds other text that
    is not ASCII (so from_block did, and does)."""
    if not encodable(block):
        return None
    pairs = []
    at = 0
    while (field := _BLOCK_FIELD.match(block, at)) is not None:
        pairs.append((field[1], field[2]))
        at = field.end()
    return None if _HEADER_LINE.match(block, at) else pairs


class Headers:
    """Header fields by case-insensitive name, keeping repeats in order; at most MAX_HEADER_FIELDS of them."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = (), what: str = "the email") -> None:
        self._fields: dict[str, list[str]] = {}
        listed = list(pairs)
        check_header_block(listed, what)
        for name, value in listed:
            self._fields.setdefault(name.lower(), []).append(value)

    @classmethod
    def from_message(cls, message: Message, what: str = "the email") -> Headers:
        """The headers of a parsed message, read from their raw text: parsing them structurally costs more than
        linear time on a long header, and the addresses and ids are read by this module's own parsers."""
        return cls([(name, _header_value(name, str(value))) for name, value in message.raw_items()], what)

    @classmethod
    def from_block(cls, block: str) -> Headers:
        """Headers from a raw header block (`Name: value` lines, folded lines joined, encoded words decoded)."""
        check_chars("the header block", len(block), MAX_HEADER_BYTES)
        pairs = _block_fields(block)
        if pairs is None:
            return cls.from_message(HeaderParser().parsestr(block), "the header block")
        return cls([(name, _header_value(name, raw)) for name, raw in pairs], "the header block")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any], underscores: bool = False) -> Headers:
        """Headers from a JSON object of name to value (or list of values)."""
        pairs: list[tuple[str, str]] = []
        for name, value in mapping.items():
            key = name.replace("_", "-") if underscores else name
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, str | int | float):
                    pairs.append((key, str(v)))
        return cls(pairs)

    def get(self, name: str) -> str | None:
        values = self._fields.get(name.lower())
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        return list(self._fields.get(name.lower(), []))


class MimeContent(NamedTuple):
    """What a raw RFC 5322 message holds, decoded."""

    headers: Headers
    text: str | None
    html: str | None
    attachments: list[Attachment]


def _rfc2231_mixed(header: str) -> Rejected:
    """The 400 for a header that gives an RFC 2231 parameter both whole (`name*=`) and in numbered sections
    (`name*0=`): the standard library's reader fails sorting the two forms together (TypeError)."""
    return Rejected(400, f"the {header} header of a MIME part gives a parameter both whole (name*=) and in numbered "
                         f"sections (name*0=, name*1=…); RFC 2231 allows one form or the other", check="email")


class OpaqueMessage(Message):
    """A part whose attached message (message/rfc822, message/global) the parser keeps as the bytes it was
    sent as, instead of parsing it as a nested message: what is stored is the attached message exactly, and
    its headers cost nothing to parse. The parser asks the main type to decide whether to nest.

    Its parameters are read as the standard library reads them, except that an RFC 2231 parameter
    (`name*=charset'lang'text`) is decoded in the codec `text_codec` gives for its character set, and as
    UTF-8 when it gives none: the sender's name never reaches Python's codec registry (the boundary, the
    charset and the file name are all read through here). A parameter given in both of RFC 2231's forms is a
    Rejected(400) naming the header (the parser reads the boundary this way)."""

    def get_content_maintype(self) -> str:
        maintype = super().get_content_maintype()
        return "application" if maintype == "message" else maintype

    def _get_params_preserve(self, failobj: Any, header: str) -> Any:
        # Every reader of a parameter (get_param, get_content_charset, get_boundary, get_filename) parses the
        # whole header again, in time that grows with its length times its semicolons: read once per value.
        value = self.get(header)
        if not isinstance(value, str):
            return super()._get_params_preserve(failobj, header)  # type: ignore[misc]
        read: dict[str, tuple[str, Any]] = self.__dict__.setdefault("_params_read", {})
        key = header.lower()
        cached = read.get(key)
        if cached is None or cached[0] != value:
            cached = read[key] = (value, super()._get_params_preserve(failobj, header))  # type: ignore[misc]
        params = cached[1]
        return list(params) if isinstance(params, list) else params

    def get_param(self, param: str, failobj: Any = None, header: str = "content-type",
                  unquote: bool = True) -> Any:
        try:
            value = super().get_param(param, failobj, header, unquote)
        except TypeError:  # email.utils.decode_params sorts (None, …) and (0, …) sections of one name
            raise _rfc2231_mixed(header) from None
        if isinstance(value, tuple):  # (charset, language, text), which the standard readers decode in charset
            charset, language, text = value
            return text_codec(charset) or "utf_8", language, text
        return value


def _raw_header(part: Message, name: str) -> str | None:
    raw = next((v for n, v in part.raw_items() if n.lower() == name), None)
    return None if raw is None else raw_utf8(_FOLD.sub("", str(raw)))


def raw_param(part: Message, header: str, param: str) -> str | None:
    r"""A parameter of a part's header read from its raw text: a quoted value keeps its backslashes (the
    standard parser reads them as escapes and turns `C:\Users\asha\report.pdf` into `C:Usersashareport.pdf`);
    RFC 2231 values (`filename*=utf-8''%C3%BC…`, continuations) are decoded; RFC 2047 words are left to
    `basename`."""
    raw = _raw_header(part, header)
    if raw is None:
        return None
    if isinstance(part, OpaqueMessage) and part.get(header) == raw:
        probe = part  # the part holds the header as read here: its parameters, read once, serve every reader
    else:
        # A folded header is read here unfolded (and its 8-bit bytes as UTF-8), as the part's own readers never
        # see it: their parse keeps a line break inside a quoted value, so it cannot serve here, and the header
        # is parsed once more.
        probe = OpaqueMessage()
        probe[header] = raw
    value = probe.get_param(param, header=header, unquote=False)
    if isinstance(value, tuple):  # the parser quoted (and escaped) the percent-decoded value: undone exactly
        charset, language, quoted = value
        return collapse_rfc2231_value((charset, language, unquote(quoted)))
    if not isinstance(value, str):
        return None
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"')
    return value


def basename(name: str | None) -> str:
    r"""The file name of a path a sender's client left in it, Windows or POSIX (`C:\Users\asha\report.pdf`,
    `\\share\mail\forwarded.msg`, `../x/y.txt`): the part after the last backslash or slash, RFC 2047 words
    decoded (once: `raw_param` leaves them)."""
    if not name:
        return ""
    return decode_words(name).replace("\\", "/").rsplit("/", 1)[-1].strip()


def part_filename(part: Message) -> str:
    """A MIME or form part's file name: Content-Disposition `filename`, else Content-Type `name`, as a base
    name; empty when the part names none."""
    for header, param in (("content-disposition", "filename"), ("content-type", "name")):
        name = basename(raw_param(part, header, param))
        if name:
            return name
    return ""


def part_bytes(part: Message) -> bytes:
    """A leaf part's content, transfer encoding undone; an attached message (kept opaque by OpaqueMessage) is
    its exact bytes; a delivery status (which the parser always reads as blocks of fields) its blocks."""
    if part.is_multipart():  # get_payload() without decode would decode text with the part's own charset
        return b"".join(block.as_bytes() for block in part.get_payload() if isinstance(block, Message))
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _leaves(message: Message) -> Iterator[Message]:
    """The message's parts that hold content, in order: the leaves of its multipart tree, a message/* part
    (an attached message, a delivery status) counting as one leaf."""
    stack: list[Message] = [message]
    while stack:
        part = stack.pop()
        if part.is_multipart() and part.get_content_type().split("/")[0] != "message":
            stack.extend(reversed([p for p in part.get_payload() if isinstance(p, Message)]))
        else:
            yield part


def _part_text(part: Message) -> str | None:
    """A body part's text, in the codec `text_codec` gives for its charset, else UTF-8 (a superset of the
    ASCII that RFC 2045 assumes when a part names none), any bytes the codec cannot read replaced."""
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return None
    return raw.decode(text_codec(part.get_content_charset()) or "utf-8", "replace")


def _body(part: Message, subtype: str) -> Message | None:
    """The text/`subtype` body `EmailMessage.get_body(preferencelist=(subtype,))` picks: the first such part
    depth first, attachments skipped, and of a multipart/related only its root (the part its `start` names,
    else the first). The standard library's search asks whether the message it was called on is multipart,
    not the part it is in, so a multipart part without a boundary (its content left as text) had a character
    of that text taken for its root and raised AttributeError; here such a part is a leaf, as `_leaves` counts
    it, and is kept as a file."""
    if part.get_content_disposition() == "attachment":
        return None
    maintype, _, sub = part.get_content_type().partition("/")
    if maintype == "text":
        return part if sub == subtype else None
    if maintype != "multipart" or not part.is_multipart():
        return None
    subparts = [p for p in part.get_payload() if isinstance(p, Message)]
    if sub == "related" and subparts:
        start = part.get_param("start")
        root = next((p for p in subparts if start and p["content-id"] == start), subparts[0])
        subparts = [root]
    for subpart in subparts:
        if (found := _body(subpart, subtype)) is not None:
            return found
    return None


def parse_mime(raw: bytes) -> MimeContent:
    """Parse a whole message: its headers, plain and HTML bodies, and attachments with their content. An
    attached message is kept as its exact bytes; a part with a Content-ID is marked `inline`."""
    check_mime_shape(raw, "the message")
    spend_raw_on_loop(raw)  # a raw message the body held encoded (base64, URL-encoded), which a look did not see
    # The compat32 policy: headers stay raw text, read by this module's own parsers and `Message`'s light
    # parameter reader; the default policy's structured parse costs some ten times more per part, and decodes
    # parameters and encoded words in whatever character set the sender names.
    message = BytesParser(_class=OpaqueMessage).parsebytes(raw)
    check_parts(message, "the message")
    headers = Headers.from_message(message)
    text_part = _body(message, "plain")
    html_part = _body(message, "html")
    files = []
    # Every leaf part but the two bodies: attachments, and the inline images of a multipart/related body. An
    # attached message is one leaf: it is kept opaque.
    for part in _leaves(message):
        if part is text_part or part is html_part:
            continue
        files.append(attachment(part_filename(part), _raw_header(part, "content-type") or part.get_content_type(),
                                part_bytes(part), inline=_raw_header(part, "content-id") is not None))
    check_count("attachments", len(files), MAX_ATTACHMENTS)
    return MimeContent(
        headers=headers,
        text=None if text_part is None else _part_text(text_part),
        html=None if html_part is None else _part_text(html_part),
        attachments=files,
    )


def parse_mime_text(raw: object, what: str) -> MimeContent | None:
    """A raw message a provider sent as a JSON or form string (Mailgun `body-mime`, Postmark `RawEmail`,
    Cloudmailin `message`), parsed; None when there is none. The text's characters are the message's bytes
    (8-bit ones as UTF-8)."""
    if raw is None:
        return None
    if not isinstance(raw, str | bytes):
        raise Rejected(400, f"{what} is not a string holding the raw message", check="email")
    if not raw.strip():
        return None
    return parse_mime(raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogateescape"))


def message_files(mime: MimeContent | None, files: list[Attachment]) -> list[Attachment]:
    """The attachments an email event carries: the raw message's when the provider sent it (it wins over the
    provider's own copies), else the provider's."""
    return mime.attachments if mime is not None else files


# -- the payload -------------------------------------------------------------------------------------

_EXTENSIONS = mimetypes.MimeTypes()  # the standard table only: the same names on every machine


def _name_blanks(attachments: list[Attachment]) -> None:
    """Give a file the sender left unnamed `attachment-N.ext`, N its place among the message's files and the
    extension from its content type."""
    for i, item in enumerate(attachments, 1):
        if not item.meta.get("name"):
            ext = _EXTENSIONS.guess_extension(str(item.meta.get("content_type")), strict=False) or ".bin"
            item.meta["name"] = f"attachment-{i}{ext}"


def _named(values: tuple[AddressInput, ...], field: str) -> tuple[list[str], list[str]]:
    """The bare addresses of address values, each once, and beside each its display name ("" when none)."""
    seen: dict[str, str] = {}
    for name, raw in _mailboxes([t for v in values for t in _texts(v)], field):
        addr = raw.strip().lower()
        if "@" in addr and addr not in seen:
            seen[addr] = name.strip()
    check_count(f"{field} addresses", len(seen), MAX_ADDRESSES)
    return list(seen), list(seen.values())


def utc_date(value: object) -> str | None:
    """A Date header (RFC 5322) or an ISO 8601 time as UTC ISO 8601 (`2024-06-03T10:03:20+00:00`); None when
    absent or unreadable. A date without a zone is read as UTC."""
    if not isinstance(value, str) or not value.strip() or len(value) > 200:
        return None
    try:
        stamp = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        try:
            stamp = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    try:
        return stamp.astimezone(UTC).isoformat()
    except OverflowError:  # year 9999 west of UTC, or year 1 east of it
        return None


class Spam(NamedTuple):
    """A provider's spam filtering result: `verdict` is "spam", "ham" or "unknown", `score` its number."""

    verdict: str
    score: float | None = None


def spam_score(value: object) -> float | None:
    """A spam score as the provider wrote it (a number, or one in a string); None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        score = value
    elif isinstance(value, int):
        try:
            score = float(value)
        except OverflowError:  # JSON allows an integer of any size; past a float's range it is no score
            return None
    elif isinstance(value, str) and len(value) <= 32:
        try:
            score = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return score if math.isfinite(score) else None


def header_spam(headers: Headers, flag: str = "X-Spam-Status", score: str = "X-Spam-Score") -> Spam | None:
    """The verdict of a spam filter's headers: `flag` reading Yes/No (SpamAssassin's `X-Spam-Status: Yes,
    score=…`, Mailgun's `X-Mailgun-Sflag: Yes`), `score` a number. None when neither is there."""
    status, number = headers.get(flag), spam_score(headers.get(score))
    if status is None and number is None:
        return None
    word = (status or "").strip().split(",")[0].strip().lower()
    verdict = {"yes": "spam", "no": "ham"}.get(word, "unknown")
    if number is None and status is not None:
        found = re.search(r"score=(-?[0-9]+(?:\.[0-9]+)?)", status)
        number = float(found.group(1)) if found else None
    return Spam(verdict, number)


def email_payload(
    *, from_: AddressInput, to: AddressInput, cc: AddressInput, subject: str | None, text: str | None,
    html: str | None, stripped_text: str | None, message_id_: str | Iterable[str] | None,
    in_reply_to: str | Iterable[str] | None, references: str | Iterable[str] | None,
    attachments: list[Attachment], provider: dict[str, Any],
    mime: MimeContent | None = None, reply_to: AddressInput = None, date: str | None = None,
    envelope_from: AddressInput = None, envelope_to: AddressInput = None, spam: Spam | None = None,
) -> dict[str, Any]:
    """The email channel's payload, the same keys for every provider (docs/architecture.md, "The canonical event").

    `mime`, the raw message when the provider sent it, wins over the provider's pre-parsed fields: its headers,
    bodies and attachments are used wherever it has them, the pre-parsed fields only where it has not. Pass
    `attachments=message_files(mime, files)` so the event's files are the ones the payload lists."""
    if mime is not None:
        h = mime.headers
        from_ = h.get("From") or from_
        to, cc = h.get_all("To") or to, h.get_all("Cc") or cc
        reply_to = h.get_all("Reply-To") or reply_to
        envelope_from = envelope_from or h.get("Return-Path")
        subject = h.get("Subject") if h.get("Subject") is not None else subject
        date = h.get("Date") or date
        message_id_ = h.get("Message-ID") or message_id_
        in_reply_to = h.get("In-Reply-To") or in_reply_to
        references = h.get_all("References") or references
        text = mime.text if mime.text is not None else text
        html = mime.html if mime.html is not None else html
    check_count("attachments", len(attachments), MAX_ATTACHMENTS)
    _name_blanks(attachments)
    from_name, from_addr = sender(from_)
    to_addrs, to_names = _named((to,), "To")
    cc_addrs, cc_names = _named((cc,), "Cc")
    body = newlines(text)
    given = (newlines(stripped_text) or "").strip()
    decoded_subject = decode_words(subject) if isinstance(subject, str) else None
    return {
        "from": from_addr,
        "from_name": from_name,
        "to": to_addrs,
        "to_names": to_names,
        "cc": cc_addrs,
        "cc_names": cc_names,
        "reply_to": address_list(reply_to, field="Reply-To"),
        "subject": decoded_subject,
        "date": utc_date(date),
        "text": body,
        "html": newlines(html),
        "stripped_text": given or strip_reply(body, decoded_subject),
        "message_id": message_id(message_id_),
        "in_reply_to": message_id(in_reply_to, "In-Reply-To"),
        "references": message_ids(references),
        "envelope_from": sender(envelope_from, "envelope From")[1],
        "envelope_to": address_list(envelope_to, field="envelope To"),
        "spam": None if spam is None else {"verdict": spam.verdict, "score": spam.score},
        "attachments": [a.meta for a in attachments],
        "provider": provider,
    }
