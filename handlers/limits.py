"""Caps on what one request may hold, so that parsing a hostile body costs time in proportion to its size,
and a request over a cap gets a 413 that names what it had and what is allowed. The values are generous for
real mail and forms: each is many times what a provider sends."""

from __future__ import annotations

import re
from email.message import Message

from bridge.errors import Rejected

MAX_ADDRESSES = 1_000
"""Addresses in one address field (To, Cc) of an email."""
MAX_ADDRESS_FIELD_CHARS = 256 * 1024
"""Characters in one address field: 1,000 addresses of 256 characters each."""
MAX_FROM_CHARS = 8 * 1024
"""Characters in a From (or the envelope's sender): one mailbox, whose address SMTP caps at 254 characters and
whose display name is a few words (a few hundred characters as RFC 2047 encoded words); Postfix, Exim and
Exchange pass no longer one either. Bounds the full address parse of a hostile one to some 30 ms of the parser
thread, where 256 KiB took a second."""
MAX_MESSAGE_IDS = 500
"""Message ids in References (or Message-ID, In-Reply-To); a thread of 500 messages."""
MAX_FORM_FIELDS = 1_000
"""Fields of a urlencoded form, or parts of a multipart one."""
MAX_FORM_RUNS = 4_096
"""Runs of ASCII text (escapes and the characters between them) that the fields of a urlencoded form in a character
set neither read a byte at a time nor ASCII-compatible multi-byte (UTF-16, UTF-32, UTF-7, HZ, ISO-2022) may hold
between other characters, over the whole form: each such run is decoded on its own, a call into the codec each
(1-2 µs), as `urllib.parse.unquote` decodes it. No browser sends a form in these (WHATWG sends a UTF-16 page's
form as UTF-8); a UTF-7 field of text and escapes holds a few dozen."""
MAX_HEADER_FIELDS = 1_000
"""Header fields of an email (or of one MIME part)."""
MAX_HEADER_BYTES = 256 * 1024
"""Characters in the header block of an email (or of one MIME part)."""
MAX_CONTENT_HEADER_CHARS = 8 * 1024
"""Characters in one Content-* header of a MIME part: these are parsed structurally, costlier per character."""
MAX_HEADER_PARAMS = 100
"""Semicolons (parameters) in one Content-Type or Content-Disposition of a MIME part: the email package reads a
header's parameters in time that grows with its length times its semicolons, again at each read. A browser's
form part has one or two (RFC 7578: `form-data; name="x"; filename="y"`), a mail client's attachment up to
five (size, dates); a long file name split in RFC 2231 continuations (`filename*0*=…; filename*1*=…`) some forty."""
MAX_BODY_PARAMS = 8_000
"""Semicolons in all the Content-Type and Content-Disposition headers of one MIME body: MAX_ATTACHMENTS
attachments, each with a long non-ASCII file name (RFC 2231 continuations, some forty a name) in both its
Content-Type and its Content-Disposition, as mail clients write them; eight a part over MAX_FORM_FIELDS parts (a
browser's text field has one, its file field two). Python's EmailMessage writes 70 PDFs with 200-character
Japanese names with 2,032. Reading one costs 3 to 15 µs (an RFC 2231 continuation the most), once per header:
8,000 some 120 ms at most, which a body holding more than LOOP_PARAMS spends in the parser thread."""
LOOP_PARAMS = 200
"""Semicolons a body parsed on the event loop may hold (raw, or URL-encoded as %3B): past it, what the body
holds is verified, parsed and rendered in the parser thread (bridge/intake.py `offloaded`), so that reading MIME
header parameters holds the loop for a few milliseconds at most (19 form parts of 99 RFC 2231 continuations,
under 64 KB, held it for 30 ms). A form, a JSON webhook or a mail of a few parts has a few dozen."""
MAX_MIME_PARTS = 250
"""Parts of one email, all sections together: bodies, attachments, inline images, forwarded messages."""
MAX_ATTACHMENTS = 100
"""Attachments of one email."""
MAX_MIME_SECTIONS = 32
"""Multipart sections (boundaries) in one MIME body: mixed, alternative, related, forwarded messages."""
MIME_LINE_CHECKS = 250_000
"""Lines times multipart sections in one MIME body: the parser checks every line against each open section's
boundary. A real message of 1 MiB (base64 lines of 76 characters) has about 14,000 lines."""

CHECK = "limits"

# The boundary parameter, also in RFC 2231's forms (boundary*=, boundary*0=); a bare "boundary" is often in
# the delimiter lines themselves (browsers' ----WebKitFormBoundary…).
_BOUNDARY = re.compile(rb"boundary(?:\*[0-9]*)?\*?\s*[=(]", re.IGNORECASE)


def too_many(what: str, count: int, limit: int) -> Rejected:
    """The 413 for `count` of `what` over `limit`: "too many To addresses: 60000, at most 1000"."""
    return Rejected(413, f"too many {what}: {count}, at most {limit}", check=CHECK)


def check_count(what: str, count: int, limit: int) -> None:
    """Rejected(413) when `count` is over `limit`."""
    if count > limit:
        raise too_many(what, count, limit)


def check_chars(what: str, length: int, limit: int) -> None:
    """Rejected(413) when `what` is `length` characters, over `limit`."""
    if length > limit:
        raise Rejected(413, f"{what} is {length} characters, at most {limit}", check=CHECK)


def check_mime_shape(raw: bytes, what: str) -> None:
    """Refuse a MIME body before it is parsed when its shape would make the parse costly: the parser checks
    each line against the boundary of every section it is inside, so lines times sections is its cost. Sections
    are counted from the boundary parameters (every multipart section declares one), an upper bound."""
    sections = len(_BOUNDARY.findall(raw))
    check_count(f"multipart sections in {what}", sections, MAX_MIME_SECTIONS)
    if sections > 1:
        lines = raw.count(b"\n") + 1
        budget = max(MIME_LINE_CHECKS, len(raw) // 4)  # a larger body limit keeps room for real, larger mail
        if lines * sections > budget:
            raise Rejected(413, f"{what} nests {sections} multipart sections over {lines} lines; lines times sections "
                                f"may be at most {budget}", check=CHECK)


def check_header_block(pairs: list[tuple[str, str]], what: str) -> None:
    """Rejected(413) when a header block has too many fields or too many characters."""
    check_count(f"header fields in {what}", len(pairs), MAX_HEADER_FIELDS)
    check_chars(f"the header block of {what}", sum(len(n) + len(v) + 2 for n, v in pairs), MAX_HEADER_BYTES)


_PARAMETERISED = frozenset({"content-type", "content-disposition"})


def check_parts(message: Message, what: str, limit: int = MAX_MIME_PARTS) -> None:
    """Check a parsed MIME body before any of its headers is parsed structurally: the number of parts (at most
    `limit`), each part's header block and Content-* headers, and the semicolons (parameters) of its
    Content-Type and Content-Disposition, each and all together."""
    parts = list(message.walk())
    check_count(f"MIME parts in {what}", len(parts) - 1 if len(parts) > 1 else 1, limit)
    params = 0
    for i, part in enumerate(parts):
        pairs = list(part.raw_items())
        where = what if i == 0 else f"part {i} of {what}"
        check_header_block(pairs, where)
        for name, value in pairs:
            key = name.lower()
            if key.startswith("content-"):
                check_chars(f"header {name} of {where}", len(value), MAX_CONTENT_HEADER_CHARS)
                if key in _PARAMETERISED:
                    count = str(value).count(";")
                    check_count(f"parameters (semicolons) in header {name} of {where}", count, MAX_HEADER_PARAMS)
                    params += count
    check_count(f"parameters (semicolons) in the Content-Type and Content-Disposition headers of {what}", params,
                MAX_BODY_PARAMS)
