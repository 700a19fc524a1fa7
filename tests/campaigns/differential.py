"""Long differential campaigns for the parsing fast paths, out of the default suite: each fast path against the
code it replaced, on real mail from tests/fixtures mutated byte by byte and on the unit tests' generators run
for many more examples.

    python -m tests.campaigns.differential [mailboxes|multipart|split|headers|replies|all] [--examples N]
        [--seed S]
        [--hypothesis N]

Paths and their references:
- mailboxes: handlers.simple_mailboxes (when it reads a value) against email.utils.getaddresses;
- multipart: handlers.formdata.multipart_parts and parse_multipart with the split (handlers.multipart_split)
  and the strict part readers (handlers.form_part) against the same with both turned off, and each alone; the
  split against the split that cuts and parses every body (its parts built by hand turned off); and each message
  the split builds by hand against the parser's whole parse, all it holds (headers, defects, parts, texts);
- split: the same inputs, only the split's own comparisons (the last two), for many more bodies;
- headers: handlers.email.Headers.from_block against itself reading every block with the parser
  (HeaderParser), and the fields its pattern reads (handlers.email._block_fields) against the parser's;
- replies: bridge.replies.strip_reply against tests/unit/bridge/replies_by_line.

A divergence is printed with its input (repr) and written to /tmp/divergence-<path>-<n>.txt; the exit status is
the number found (capped at 100)."""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from email.parser import BytesParser, HeaderParser
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from bridge.errors import Rejected
from bridge.replies import strip_reply
from handlers import email as mail
from handlers import formdata, multipart_split
from handlers.email import Headers, OpaqueMessage
from handlers.form_part import simple_fields
from handlers.multipart_split import parse_split
from handlers.simple_mailboxes import simple_mailboxes
from tests.unit.bridge import replies_by_line

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# Bytes and pieces a mutation inserts: line ends of every kind, NUL, DEL, C1 controls, UTF-8 of U+0085, U+2028,
# U+2029 and U+3000, bytes that are not UTF-8 (surrogates once decoded), MIME and address syntax.
NASTY_BYTES = [b"\r\n", b"\n", b"\r", b"\x00", b"\x7f", b"\x85", b"\xc2\x85", b"\xe2\x80\xa8", b"\xe2\x80\xa9",
               b"\xe3\x80\x80", b"\xff", b"\xfe", b"\x80", b"\t", b" ", b"  ", b"\x0b", b"\x0c", b"\x1c", b"\x1f",
               b'"', b"\\", b";", b",", b":", b"<", b">", b"@", b"(", b")", b"[", b"]", b".", b"-", b"--", b"=",
               b"'", b"*", b"%", b"?", b"/", b"_", b"From ", b"=?utf-8?q?a=2C?=", b"=?utf-8?b?w6k=?=",
               b"utf-8''%C3%A9", b"name*0*=", b"name*1=", b"filename*=", b'; name="x"', b"; charset=utf-8",
               b"Content-Type: multipart/mixed; boundary=in\r\n", b"Content-Transfer-Encoding: base64\r\n",
               b"Content-Type: message/delivery-status\r\n", b"Content-Type: message/rfc822\r\n", b"\r\n ", b"\n\t",
               b"> ", b">", b"-- \n", b"On Mon, 3 Jun 2024, Asha <a@b.c> wrote:", b"From: a@b.c\n", b"Subject: x\n",
               b"Sent from my iPhone", b"\xef\xbc\x9a", b"above this line", b"\xed\xb2\x80"]


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)


def _json_strings() -> list[str]:
    out: list[str] = []
    for path in sorted(FIXTURES.rglob("*.json")):
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            out.extend(_strings(json.loads(path.read_text())))
    return out


def _emls() -> list[bytes]:
    return [p.read_bytes() for p in sorted(FIXTURES.rglob("*.eml"))]


def mutate(rng: random.Random, data: bytes, pool: list[bytes], extra: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    """`data` with 1 to 8 random edits: a piece inserted, bytes dropped, replaced, doubled, line ends
    swapped, or a stretch of another input spliced in."""
    pieces = NASTY_BYTES + list(extra)
    for _ in range(rng.randint(1, 8)):
        n = len(data)
        at = rng.randint(0, n)
        op = rng.randrange(8)
        if op <= 1:
            data = data[:at] + rng.choice(pieces) + data[at:]
        elif op == 2 and n:
            data = data[:at] + data[at + rng.randint(1, 4):]
        elif op == 3 and n:
            data = data[:at] + bytes([rng.randrange(256)]) + data[at + 1:]
        elif op == 4 and n:
            stop = min(n, at + rng.randint(1, 200))
            data = data[:stop] + data[at:stop] * rng.randint(1, 3) + data[stop:]
        elif op == 5:
            old, new = rng.sample([b"\r\n", b"\n", b"\r"], 2)
            data = data.replace(old, new) if rng.random() < 0.3 else data[:at] + data[at:].replace(old, new, 1)
        elif op == 6 and pool:
            other = rng.choice(pool)
            start = rng.randint(0, len(other))
            data = data[:at] + other[start:start + rng.randint(1, 300)] + data[at:]
        else:
            data = data[:at] + rng.choice(pieces) * rng.randint(1, 3) + data[at:]
    return data


class Campaign:
    def __init__(self, name: str) -> None:
        self.name, self.runs, self.found = name, 0, 0
        self.seen: set[str] = set()

    def check(self, label: str, given: object, new: Callable[[], object], old: Callable[[], object]) -> None:
        self.runs += 1
        fast, slow = _outcome(new), _outcome(old)
        if fast != slow:
            key = f"{label}:{fast!r:.80}:{slow!r:.80}"
            if key in self.seen:
                return
            self.seen.add(key)
            self.found += 1
            text = f"{self.name} {label}\ninput: {given!r}\nnew: {fast!r}\nold: {slow!r}\n"
            Path(f"/tmp/divergence-{self.name}-{self.found}.txt").write_text(text)
            print("DIVERGENCE", text[:2000], flush=True)


def _outcome(run: Callable[[], object]) -> object:
    try:
        return ("ok", run())
    except Rejected as exc:
        return ("rejected", exc.status, str(exc))
    except Exception as exc:
        return ("raised", type(exc).__name__, str(exc))


@contextlib.contextmanager
def _replaced(module: Any, **attrs: Any) -> Iterator[None]:
    saved = {k: getattr(module, k) for k in attrs}
    for k, v in attrs.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(module, k, v)


def _none(*_args: object) -> None:
    return None


# -- mailboxes ------------------------------------------------------------------------------------------------

def _mailbox_seeds() -> list[bytes]:
    seeds = [b"asha@example.com", b"<asha@example.com>", b'"Asha Rao" <asha@example.com>',
             b"Asha Rao <asha@example.com>", b"a@b.co, c@d.co", b'"Rao, Asha" <a@b.co>, "X" <x@y.example>',
             b"O'Brien <ob@x.example>", b"a.b-c+d@sub-1.example.co.uk"]
    for text in _json_strings():
        if "@" in text and len(text) < 300:
            seeds.append(text.encode("utf-8", "surrogateescape"))
    for eml in _emls():
        head = eml.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
        for line in head.splitlines():
            name, _, value = line.partition(b":")
            if name.lower() in (b"from", b"to", b"cc", b"reply-to", b"sender", b"bcc"):
                seeds.append(value.strip())
    return seeds


_ATOM = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
_ODD = ["\x00", "\x7f", "\x85", "\u2028", "\u2029", "\u3000", "\xa0", "\udcff", "\t", "\r\n ", "\n", "\r", " ",
        '"', "\\", "(", ")", "<", ">", "@", ",", ";", ":", ".", "[", "]", "=?utf-8?q?a?=", "\u0130", "\u212a", "\x0b"]


def _made_value(rng: random.Random) -> bytes:
    """A list of mailboxes in the simple forms, then at most two single-character edits."""
    def atom() -> str:
        return "".join(rng.choice(_ATOM) for _ in range(rng.randint(1, 4)))

    def address() -> str:
        local = ".".join(atom() for _ in range(rng.randint(1, 3)))
        domain = ".".join("".join(rng.choice("aZ09-") for _ in range(rng.randint(1, 4)))
                          for _ in range(rng.randint(1, 3)))
        return f"{local}@{domain}"

    boxes = []
    for _ in range(rng.randint(1, 4)):
        a = address()
        form = rng.randrange(4)
        if form == 0:
            boxes.append(a)
        elif form == 1:
            boxes.append(f"<{a}>")
        elif form == 2:
            name = "".join(rng.choice(_ATOM + ' ,;:.()<>@[]\t\xe9\u2713') for _ in range(rng.randint(0, 8)))
            boxes.append(f'"{name}" <{a}>')
        else:
            boxes.append(" ".join(atom() for _ in range(rng.randint(1, 3))) + f" <{a}>")
    text = ", ".join(boxes)
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        at = rng.randint(0, len(text))
        text = text[:at] + rng.choice(_ODD) + text[at + rng.choice([0, 0, 1]):]
    return text.encode("utf-8", "surrogateescape")


def mailboxes_campaign(rng: random.Random, examples: int) -> Campaign:
    campaign = Campaign("mailboxes")
    seeds = _mailbox_seeds()
    hits = 0
    while campaign.runs < examples:
        texts = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            raw = rng.choice(seeds) if rng.random() < 0.4 else _made_value(rng)
            if rng.random() < 0.3:
                raw = mutate(rng, raw, seeds, [b"a", b"x.y", b"b@c.d", b" <", b"> ", b", "])
            texts.append(raw.decode("utf-8", "surrogateescape") if rng.random() < 0.7 else raw.decode("latin-1"))
        read = simple_mailboxes(texts)
        if read is None:
            campaign.runs += 1
            continue
        hits += 1
        campaign.check("simple_mailboxes", texts, lambda r=read: r, lambda t=texts: getaddresses(t))  # type: ignore[misc]
    print(f"mailboxes: {campaign.runs} values, {hits} read by the fast path and compared", flush=True)
    return campaign


# -- multipart and form parts -------------------------------------------------------------------------------

B = "xYzZY"


def _multipart_seeds() -> list[tuple[bytes, str]]:
    from tests.fixtures.providers import multipart, sendgrid_multipart

    seeds = [sendgrid_multipart()]
    for path in sorted(FIXTURES.rglob("*.json")):
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data and all(isinstance(v, str) for v in data.values()):
                seeds.append(multipart(data))
    for eml in _emls():  # a mail's own multipart body, with its Content-Type
        head, _sep, body = eml.partition(b"\r\n\r\n") if b"\r\n\r\n" in eml else eml.partition(b"\n\n")
        for line in head.replace(b"\r\n", b"\n").replace(b"\n\t", b" ").replace(b"\n ", b" ").split(b"\n"):
            if line.lower().startswith(b"content-type:") and b"boundary" in line.lower():
                seeds.append((body, line.split(b":", 1)[1].strip().decode("latin-1")))
    hand = (f'--{B}\r\nContent-Disposition: form-data; name="a"\r\n\r\nx\r\n--{B}\r\nContent-Disposition: '
            f'form-data; name="f"; filename="C:\\\\x.txt"\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'
            f"\xff\r\n--{B}--\r\n").encode("latin-1")
    seeds.append((hand, f"multipart/form-data; boundary={B}"))
    return seeds


def _ctype_variants(rng: random.Random, ctype: str) -> str:
    boundary = formdata._BOUNDARY.search(ctype)
    b = boundary.group(1) if boundary else B
    return rng.choice([
        ctype, ctype, ctype, f'multipart/form-data; boundary="{b}"', f"multipart/mixed; boundary={b}",
        f"multipart/digest; boundary={b}", f"multipart/form-data; boundary={b}; charset=utf-8",
        f"multipart/form-data; boundary={b[:-1]}", f"multipart/form-data; boundary={b}; boundary=other",
        f"multipart/form-data; boundary*=utf-8''{b}", f"Multipart/Form-Data; BOUNDARY={b}",
        f"multipart/form-data; boundary={b} ", f"multipart/form-data; boundary={b}\udcff",
        f"text/plain; boundary={b}", f"multipart/form-data; boundary=({b})",
    ])


FAST = {"split": 0, "split_none": 0, "fields": 0, "fields_none": 0, "built": 0, "built_none": 0}


def _counted(name: str, fast: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        result = fast(*args)
        FAST[name if result is not None else name + "_none"] += 1
        return result
    return run


def multipart_check(campaign: Campaign, body: bytes, ctype: str) -> None:
    for read in (formdata.multipart_parts, formdata.parse_multipart):
        def new(read: Any = read) -> object:
            with _replaced(formdata, parse_split=_counted("split", parse_split),
                           simple_fields=_counted("fields", simple_fields)):
                return read(body, ctype)

        def old(read: Any = read) -> object:
            with _replaced(formdata, parse_split=_none, simple_fields=_none):
                return read(body, ctype)

        def split_only(read: Any = read) -> object:
            with _replaced(formdata, simple_fields=_none):
                return read(body, ctype)

        def fields_only(read: Any = read) -> object:
            with _replaced(formdata, parse_split=_none):
                return read(body, ctype)

        def cut_only(read: Any = read) -> object:  # the split before it built parts by hand
            with _replaced(formdata, simple_fields=_none), _replaced(multipart_split, _built=_none):
                return read(body, ctype)

        name = read.__name__
        campaign.check(f"{name} (both)", (body, ctype), new, old)
        campaign.check(f"{name} (split alone)", (body, ctype), split_only, old)
        campaign.check(f"{name} (form_part alone)", (body, ctype), fields_only, old)
        campaign.check(f"{name} (split against the cut split)", (body, ctype), split_only, cut_only)
    built_check(campaign, body, ctype)


def built_check(campaign: Campaign, body: bytes, ctype: str) -> None:
    """The message the split builds by hand, when it does, against the parser's reading of the whole body."""
    from tests.unit.handlers.test_multipart_split import built, structure

    prefix = b"Content-Type: " + ctype.encode("utf-8", "surrogateescape") + b"\r\n\r\n"
    try:
        fast = built(prefix, body)
    except Rejected:  # the boundary given in both of RFC 2231's forms: refused before any part is read
        fast = None
    FAST["built" if fast is not None else "built_none"] += 1
    if fast is not None:
        campaign.check("parse_split built (structure)", (body, ctype), lambda: structure(fast),
                       lambda: structure(BytesParser(_class=OpaqueMessage).parsebytes(prefix + body)))


_DISPOSITIONS = ['form-data; name="a"', 'form-data; name="f"; filename="r.pdf"', 'form-data; name="caf\xc3\xa9"',
                 'form-data; name="\xff\xfe"', 'form-data; name="a\\"b"', 'form-data; name=a',
                 "form-data; name*=utf-8''%C3%A9", 'form-data; name="a"; filename="C:\\x\\y.txt"',
                 'form-data; name="a";filename="b"', 'form-data; name="a;b"',
                 'form-data; name="=?utf-8?q?a=2C_b?="', 'form-data; name="a"; name="b"',
                 'form-data; name="x\xc2\x85y"', 'form-data; name="x\xe2\x80\xa8"',
                 'form-data; name="a"\r\n ; filename="b"', 'attachment; name="a"',
                 'form-data; name="a"; filename*0="x"; filename*1="y"', 'form-data; name="\x7f"',
                 'form-data; name=" a "']
_PART_HEADERS = ["Content-Type: text/plain", "Content-Type: text/plain; charset=utf-8",
                 'Content-Type: text/html;charset="UTF-8"', "Content-Type: image/jpeg",
                 "Content-Type: text/plain; charset*=utf-8''x", "Content-Type: message/rfc822",
                 "Content-Type: multipart/mixed; boundary=in", "Content-Type: message/delivery-status",
                 "Content-Type: text/\xe9", "Content-Type: a/b/c", "Content-Type: text/plain; Charset=x",
                 "Content-Transfer-Encoding: base64", "Content-Transfer-Encoding: 8bit",
                 "Content-Transfer-Encoding: BASE64 ", "Content-Transfer-Encoding: quoted-printable",
                 "Content-ID: <a@b>", "Content-ID: <\xff@b>", "X-A: b", "From nobody", " folded", "\tfolded",
                 "Content-Length: 3"]


def _made_form(rng: random.Random) -> tuple[bytes, str]:
    """A form of up to 300 parts in the boundary `b` (or one that is a prefix of the body's or has it as its
    prefix), headers from the lists above, contents of up to 20 KB (past the parser's 8 KB reads) with line
    ends of every kind."""
    b = rng.choice(["xYzZY", "--", "a", "----WebKitFormBoundary7MA4YWxk", "b(1)+_,-./:=?", "x y"])
    body_b = rng.choice([b, b, b, b + "z", b[:-1] or "q"])
    newline = rng.choice(["\r\n", "\r\n", "\n", "\r"])
    out = [rng.choice(["", "", "preamble" + newline, newline])]
    for _ in range(rng.choice([1, 2, 3, 5, 20, 300])):
        nl = newline if rng.random() < 0.9 else rng.choice(["\r\n", "\n", "\r"])
        headers = ["Content-Disposition: " + rng.choice(_DISPOSITIONS)] if rng.random() < 0.95 else []
        headers += rng.sample(_PART_HEADERS, rng.choice([0, 0, 1, 2]))
        rng.shuffle(headers)
        size = rng.choice([0, 1, 5, 40, 9000, 20000])
        content = "".join(rng.choice(["x", "y", "\r\n", "\n", "\r", "--", body_b, "\xff", " ", "\t"])
                          for _ in range(min(size, 200))) * max(1, size // 200)
        out.append(f"--{body_b}{rng.choice(['', '', ' ', '--'])}{nl}" + nl.join(headers) + nl
                   + rng.choice([nl, nl, nl, ""]) + content + nl)
    out.append(f"--{body_b}--" + rng.choice(["", newline, newline + "epilogue"]))
    ctype = f'multipart/form-data; boundary="{b}"' if rng.random() < 0.5 else f"multipart/form-data; boundary={b}"
    return "".join(out).encode("latin-1"), ctype


def _multipart_input(rng: random.Random, seeds: list[tuple[bytes, str]], pool: list[bytes]) -> tuple[bytes, str]:
    """A seed or a made form, mutated nine times in ten, and a Content-Type for it."""
    body, ctype = rng.choice(seeds) if rng.random() < 0.6 else _made_form(rng)
    boundary = formdata._BOUNDARY.search(ctype)
    b = (boundary.group(1) if boundary else B).encode("latin-1")
    extra = [b"--" + b, b"--" + b + b"--", b"\r\n--" + b + b"\r\n", b"--" + b[:-1], b"--" + b + b"x",
             b"--" + b + b" \t", b"\n--" + b + b"--\n", b"--" + b + b"\r\n--" + b + b"--\r\n",
             b'Content-Disposition: form-data; name="z"\r\n', b'Content-Disposition: form-data; name="a\\"b"\r\n',
             b"Content-Type: text/plain\r\n", b"Content-Type: TEXT/x; charset=\"UTF-8\"\r\n",
             b"Content-ID: <x@y>\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n", b"\r\n\r\n"]
    if rng.random() < 0.9:
        body = mutate(rng, body, pool, extra)
    return body, _ctype_variants(rng, ctype)


def multipart_campaign(rng: random.Random, examples: int) -> Campaign:
    campaign = Campaign("multipart")
    seeds = _multipart_seeds()
    pool = [b for b, _ in seeds]
    bodies = 0
    while campaign.runs < examples:
        multipart_check(campaign, *_multipart_input(rng, seeds, pool))
        bodies += 1
    print(f"multipart: {bodies} bodies, {campaign.runs} comparisons; the split read {FAST['split']} bodies "
          f"(left {FAST['split_none']} to the whole parse), the strict readers {FAST['fields']} parts "
          f"(left {FAST['fields_none']}); the split built {FAST['built']} bodies by hand (left {FAST['built_none']} "
          "to its cut parse or the whole parse)", flush=True)
    return campaign


def split_campaign(rng: random.Random, examples: int) -> Campaign:
    campaign = Campaign("split")
    seeds = _multipart_seeds()
    pool = [b for b, _ in seeds]
    bodies = 0
    while campaign.runs < examples:
        body, ctype = _multipart_input(rng, seeds, pool)

        def split_only(body: bytes = body, ctype: str = ctype) -> object:
            with _replaced(formdata, simple_fields=_none):
                return formdata.multipart_parts(body, ctype)

        def cut_only(body: bytes = body, ctype: str = ctype) -> object:
            with _replaced(formdata, simple_fields=_none), _replaced(multipart_split, _built=_none):
                return formdata.multipart_parts(body, ctype)

        campaign.check("multipart_parts (split against the cut split)", (body, ctype), split_only, cut_only)
        built_check(campaign, body, ctype)
        bodies += 1
    print(f"split: {bodies} bodies; built {FAST['built']} by hand and compared with the whole parse (left "
          f"{FAST['built_none']} to the cut parse or the whole parse)", flush=True)
    return campaign


# -- header blocks ----------------------------------------------------------------------------------------------

def _header_seeds() -> list[bytes]:
    seeds = [b"Subject: x\r\nTo: a@b.c,\r\n d@e.f\r\n\r\n", b"X-A:\r\n\t\r\nX-B: \t y \r\n"]
    for path in sorted(FIXTURES.rglob("*.json")):
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("headers"), str):
                seeds.append(data["headers"].encode("utf-8", "surrogateescape"))
    for eml in _emls():
        seeds.append(eml[:4000])
    return seeds


_HEADER_PIECES = [b"From nobody\r\n", b"From: a@b.c\r\n", b": x\r\n", b" folded\r\n", b"\tfolded\n", b"X:\r\n",
                  b"Sub ject: x\r\n", b"Subject : x\r\n", b"X: \t \r\n", b"\r\n\r\n", b"\r \r", b"\n ", b"\r\t"]


def headers_campaign(rng: random.Random, examples: int) -> Campaign:
    campaign = Campaign("headers")
    seeds = _header_seeds()
    read = 0
    while campaign.runs < examples:
        raw = rng.choice(seeds)
        if rng.random() < 0.9:
            raw = mutate(rng, raw, seeds, _HEADER_PIECES)
        block = raw.decode("utf-8", "surrogateescape") if rng.random() < 0.7 else raw.decode("latin-1")

        def outcome(block: str = block, parser: bool = False) -> object:
            if not parser:
                return Headers.from_block(block)._fields
            with _replaced(mail, _block_fields=_none):
                return Headers.from_block(block)._fields

        campaign.check("Headers.from_block", block, outcome, lambda block=block: outcome(block, parser=True))  # type: ignore[misc]
        fields = mail._block_fields(block)
        if fields is not None:
            read += 1
            campaign.check("_block_fields", block, lambda fields=fields: fields,  # type: ignore[misc]
                           lambda block=block: list(HeaderParser().parsestr(block).raw_items()))  # type: ignore[misc]
    print(f"headers: {campaign.runs} comparisons; the pattern read {read} blocks itself", flush=True)
    return campaign


# -- replies ----------------------------------------------------------------------------------------------------

def _reply_seeds() -> list[bytes]:
    seeds = [p.read_bytes() for p in sorted((FIXTURES / "replies").glob("*.txt"))]
    for text in _json_strings():
        if "\n" in text and len(text) > 20:
            seeds.append(text.encode("utf-8", "surrogateescape"))
    return seeds


def replies_campaign(rng: random.Random, examples: int) -> Campaign:
    campaign = Campaign("replies")
    seeds = _reply_seeds()
    subjects = [None, None, "Re: x", "FW: x", "WG: Router", "Fwd: x"]
    while campaign.runs < examples:
        raw = rng.choice(seeds)
        if rng.random() < 0.9:
            raw = mutate(rng, raw, seeds)
        if rng.random() < 0.3:  # long enough for the regex scan, not the line-by-line short path
            pad = rng.choice([b"ok\n", b"plain prose line\r\n", b"\n", b"a\r"]) * rng.randint(30, 120)
            raw = rng.choice([pad + raw, raw + pad, pad + raw + pad])
        text = raw.decode("utf-8", "surrogateescape")
        subject = rng.choice(subjects)
        campaign.check("strip_reply", (text, subject), lambda t=text, s=subject: strip_reply(t, s),  # type: ignore[misc]
                       lambda t=text, s=subject: replies_by_line.strip_reply(t, s))  # type: ignore[misc]
    print(f"replies: {campaign.runs} bodies", flush=True)
    return campaign


# -- the unit tests' generators, run longer ----------------------------------------------------------------------

def hypothesis_campaigns(paths: list[str], examples: int) -> int:
    from hypothesis import HealthCheck, settings

    tests: list[Any] = []
    if "mailboxes" in paths:
        from tests.unit.handlers import test_simple_mailboxes as m
        tests.append(m.test_what_is_read_is_what_the_email_package_reads)
    if "split" in paths and "multipart" not in paths:
        from tests.unit.handlers import test_multipart_split as s
        tests.append(s.test_any_body_gives_what_the_whole_parse_gave)
    if "multipart" in paths:
        from tests.unit.handlers import test_form_part as f
        from tests.unit.handlers import test_multipart_split as s
        tests += [s.test_any_body_gives_what_the_whole_parse_gave, f.test_any_part_gives_what_the_email_package_gives,
                  f.test_any_ordinary_form_gives_what_the_email_package_gives]
    if "headers" in paths:
        from tests.unit.handlers import test_email as e
        tests.append(e.test_any_header_block_reads_as_the_parser_reads_it)
    if "replies" in paths:
        from tests.unit.bridge import test_replies_differential as r
        tests += [r.test_the_reply_is_what_looking_at_every_line_gave, r.test_markers_among_many_plain_lines]
    failed = 0
    for test in tests:
        start = time.perf_counter()
        # A test that carries its own settings keeps them in this attribute, which `given` reads on each call.
        test._hypothesis_internal_use_settings = settings(
            test._hypothesis_internal_use_settings, max_examples=examples, deadline=None, database=None,
            suppress_health_check=list(HealthCheck))
        run = test
        try:
            run()
            status = "passed"
        except Exception as exc:
            failed += 1
            status = f"FAILED: {exc!r}"[:2000]
        print(f"hypothesis {test.__module__}.{test.__name__}: {examples} examples, "
              f"{time.perf_counter() - start:.0f} s, {status}", flush=True)
    return failed


CAMPAIGNS = {"mailboxes": mailboxes_campaign, "multipart": multipart_campaign, "split": split_campaign,
             "headers": headers_campaign, "replies": replies_campaign}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("path", choices=[*CAMPAIGNS, "all"])
    parser.add_argument("--examples", type=int, default=50_000)
    parser.add_argument("--hypothesis", type=int, default=0, help="examples per unit-test generator (0: none)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    paths = list(CAMPAIGNS) if args.path == "all" else [args.path]
    found = 0
    for path in paths:
        start = time.perf_counter()
        campaign = CAMPAIGNS[path](random.Random(f"{args.seed}-{path}"), args.examples)
        print(f"{path}: {campaign.runs} runs, {campaign.found} divergences, {time.perf_counter() - start:.0f} s",
              flush=True)
        found += campaign.found
    if args.hypothesis:
        found += hypothesis_campaigns(paths, args.hypothesis)
    return min(found, 100)


if __name__ == "__main__":
    sys.exit(main())
