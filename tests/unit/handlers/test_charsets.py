"""The character set a sender names, resolved without feeding the name to Python's codec registry."""

from __future__ import annotations

import contextlib
import encodings
from collections.abc import Callable
from encodings.aliases import aliases
from urllib.parse import unquote_to_bytes

import pytest

from bridge.errors import Rejected
from handlers import charsets
from handlers.charsets import ASCII_MULTIBYTE, MAX_NAME, byte_table, text_codec
from handlers.email import decode_words, parse_mime
from handlers.formdata import parse_multipart, parse_urlencoded


@pytest.mark.parametrize(("name", "codec"), [
    ("utf-8", "utf_8"), ("UTF-8", "utf_8"), ("utf8", "utf_8"), ("UTF_8", "utf_8"), ("latin1", "latin_1"),
    ("ISO-8859-1", "latin_1"), ("iso-8859-15", "iso8859_15"), ("us-ascii", "ascii"), ("cp1252", "cp1252"),
    ("windows-1251", "cp1251"), ("Shift_JIS", "shift_jis"), ("gb2312", "gb2312"), ("KOI8-R", "koi8_r"),
    ("utf-16le", "utf_16_le"), ("UTF-7", "utf_7"), ("Big5", "big5"), ("euc-kr", "euc_kr"),
])
def test_a_character_set_resolves_to_its_codec(name: str, codec: str) -> None:
    assert text_codec(name) == codec


@pytest.mark.parametrize("name", [
    # codecs that are no character set
    "unicode_escape", "Unicode-Escape", "unicode escape", "raw_unicode_escape", "idna", "punycode", "undefined",
    "base64", "hex", "rot13", "zlib", "bz2", "quopri", "uu",
    # not a codec here, or a module of the package that is none
    "bogus", "x-unknown", "unknown-8bit", "aliases", "mbcs", "oem", "",
    # not a name: non-ASCII, unprintable, overlong
    "utf-\u00e9", "utf\x008", "utf-8\n", "u" * (MAX_NAME + 1), "utf-8" * 20,
])
def test_a_name_that_is_no_character_set_resolves_to_none(name: str) -> None:
    assert text_codec(name) is None


def test_none_is_no_character_set() -> None:
    assert text_codec(None) is None


def test_a_name_asked_again_gets_the_same_answer_once_the_kept_spellings_are_full() -> None:
    for i in range(charsets.SPELLINGS_KEPT + 10):
        assert text_codec(f"x-filler-{i}") is None
    assert len(charsets._spellings) == charsets.SPELLINGS_KEPT
    for name in ("UTF-8", "Utf-8", "unicode_escape", "x-filler-1"):
        assert text_codec(name) == text_codec(name) == {"unicode_escape": None, "x-filler-1": None}.get(name, "utf_8")


SAMPLE = bytes(range(256)) * 2 + b"\\q \\N{nope} \\u12 +AAA- ~{ \x1b$B"


def test_every_codec_it_gives_reads_any_bytes_with_replacement_and_without_a_warning() -> None:
    """Every name Python knows, through every codec `text_codec` gives for it: decoding any bytes with "replace"
    neither raises nor warns (warnings are errors here), so the lenient readers never fail."""
    codecs_given = {text_codec(name) for name in [*aliases, *aliases.values(), *charsets._MODULES]} - {None}
    assert {"utf_8", "latin_1", "utf_16", "shift_jis"} <= codecs_given
    for codec in sorted(c for c in codecs_given if c is not None):
        assert isinstance(SAMPLE.decode(codec, "replace"), str), codec


def _form(name: str) -> object:
    return parse_urlencoded(b"a=b", name)


def _form_part(name: str) -> object:
    body = (f"--b\r\nContent-Disposition: form-data; name=a\r\nContent-Type: text/plain; charset={name}\r\n\r\nx\r\n"
            f"--b\r\nContent-Disposition: form-data; name=f; filename*={name}''x.pdf\r\n\r\nx\r\n--b--\r\n").encode()
    return parse_multipart(body, "multipart/form-data; boundary=b")


def _mime(name: str) -> object:
    return parse_mime(f"Subject: =?{name}?q?hi?=\r\nContent-Type: multipart/mixed; boundary*={name}''b\r\n\r\n"
                      f"--b\r\nContent-Type: text/plain; charset={name}\r\n\r\nhi\r\n"
                      f"--b\r\nContent-Type: application/pdf; name*={name}''r.pdf; x*0*={name}''y\r\n\r\nx\r\n"
                      f"--b--\r\n".encode())


def _words(name: str) -> object:
    return decode_words(f"=?{name}?b?aGk=?= and =?{name}*en?q?x?=")


@pytest.mark.parametrize("parse", [_form, _form_part, _mime, _words])
def test_names_senders_choose_do_not_grow_the_codec_registry(parse: Callable[[str], object]) -> None:
    """Python's codec search remembers every name it fails to find, for the life of the process: a charset a
    sender names must not reach it, in any of the places a name is read."""
    for i in range(3):  # the codecs of the real names the parsers fall back to are looked up once
        with contextlib.suppress(Rejected):
            parse(f"x-warm-{parse.__name__}-{i}")
    before = len(encodings._cache)  # type: ignore[attr-defined]
    for i in range(300):
        with contextlib.suppress(Rejected):  # a form in no character set is a 400; the rest is read as UTF-8
            parse(f"x-charset{parse.__name__}-{i:04d}")
    assert len(encodings._cache) == before  # type: ignore[attr-defined]
    assert len(charsets._resolved) <= len(charsets._MODULES)
    assert len(charsets._spellings) <= charsets.SPELLINGS_KEPT


@pytest.mark.parametrize("codec", sorted(ASCII_MULTIBYTE))
def test_an_ascii_multibyte_set_reads_ascii_as_ascii_and_never_goes_on_with_a_nul(codec: str) -> None:
    """What handlers/formdata.py relies on to decode a form's field at once: ASCII reads (and writes) as itself,
    and no character's bytes go on past a NUL: any lead byte, alone or with the bytes after it that a longer
    character takes (GB 18030's digits, EUC-JP's third byte), then a NUL, does not decode unless it did without."""
    assert text_codec(codec) == codec
    ascii_text = bytes(range(0x80))
    assert ascii_text.decode(codec) == ascii_text.decode("ascii")
    assert ascii_text.decode("ascii").encode(codec) == ascii_text
    for lead in range(0x80, 0x100):
        for rest in (b"", b"\x30", b"\x30\x81", b"\xa1", b"\xa1\xa1", b"\x40"):
            start = bytes([lead]) + rest
            try:
                (start + b"\x00").decode(codec)
            except UnicodeDecodeError:
                continue
            assert (start + b"\x00").decode(codec) == start.decode(codec) + "\x00", (codec, start)


@pytest.mark.parametrize(("codec", "byte_read"), [("cp1252", True), ("koi8_r", True), ("cp500", True),
                                                  ("latin_1", True), ("utf_8", False), ("shift_jis", False),
                                                  ("utf_16", False), ("x-no-such", False)])
def test_byte_table_gives_back_the_bytes_a_text_was_read_from(codec: str, byte_read: bool) -> None:
    """For a set read a byte at a time, every character it reads is written back as the byte it was read from (one
    under 0x80 that is no ASCII character as its %-escape); None for any other codec."""
    table = byte_table(codec)
    assert (table is not None) is byte_read
    if table is None:
        return
    for byte in range(256):
        try:
            char = bytes([byte]).decode(codec)
        except UnicodeDecodeError:
            continue
        written = char.translate(table)
        if char.isascii():
            assert written == char
        else:
            assert unquote_to_bytes(written.encode("latin-1")).decode(codec) == char, (codec, byte)
