"""Address values read in their simple forms give what the email package's parser gives, and every other value is
left to it."""

from __future__ import annotations

from email.utils import getaddresses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import handlers.email
import handlers.simple_mailboxes
from bridge.conversations import message_sender
from bridge.errors import Rejected
from handlers.email import address_list, email_payload, sender
from handlers.limits import MAX_FROM_CHARS
from handlers.simple_mailboxes import simple_mailbox, simple_mailboxes

ATOM_CHARS = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
atoms = st.text(ATOM_CHARS, min_size=1, max_size=6)
# Beside what the simple forms hold, what they must not take: specials, dots and blanks in odd places, escapes,
# comments, groups, encoded words, non-ASCII and control characters.
noise = st.sampled_from(['"', "\\", "(", ")", "<", ">", "@", ",", ";", ":", ".", "[", "]", " ", "  ", "\t", "\r\n",
                         "ş", "\x00", "\x7f", "=?utf-8?q?a?=", "", "é", "\udcff"])
labels = st.text("abcXYZ019-", min_size=1, max_size=5)


@st.composite
def addresses(draw: Any) -> str:
    local = ".".join(draw(st.lists(atoms, min_size=1, max_size=3)))
    domain = ".".join(draw(st.lists(labels, min_size=1, max_size=3)))
    return draw(st.sampled_from([f"{local}@{domain}", f"{local}@{domain}" + draw(noise),
                                 draw(noise) + f"{local}@{domain}", f"{local}{draw(noise)}@{domain}"]))


@st.composite
def mailboxes(draw: Any) -> str:
    address = draw(addresses())
    name = draw(st.text(max_size=8) | st.lists(atoms, min_size=1, max_size=3).map(" ".join)
                | st.builds(lambda a, n, b: a + n + b, atoms, noise, atoms))
    return draw(st.sampled_from([address, f"<{address}>", f'"{name}" <{address}>', f"{name} <{address}>",
                                 f"{name}<{address}>", f'"{name}"<{address}>', f"{address} ({name})"]))


@st.composite
def values(draw: Any) -> str:
    separator = draw(st.sampled_from([", ", ",", " , ", ",  ", ", " + draw(noise)]))
    return separator.join(draw(st.lists(mailboxes(), min_size=1, max_size=3))) + draw(
        st.sampled_from(["", "", "", ",", " ", draw(noise)]))


@given(st.lists(values(), min_size=1, max_size=3))
def test_what_is_read_is_what_the_email_package_reads(texts: list[str]) -> None:
    read = simple_mailboxes(texts)
    if read is not None:
        assert read == getaddresses(texts)


@pytest.mark.parametrize("texts", [
    ["asha@example.com"], ["<asha@example.com>"], ['"Asha Rao" <asha@example.com>'], ['"" <a@b.co>'],
    ['"Rao, Asha" <a@b.co>'], ["Asha Rao <asha@example.com>"], ["O'Brien <ob@x.example>"], ['"Aşha" <a@b.co>'],
    ["a@b.co, c@d.co", '"X" <x@y.example>'], ["=?utf-8?q?Asha?= <a@b.co>"], ['" A  b\t" <a@b.co>'],
])
def test_the_simple_forms_are_read_without_the_parser(texts: list[str]) -> None:
    assert simple_mailboxes(texts) == getaddresses(texts)


@pytest.mark.parametrize("text", [
    "", " a@b.co", "a@b.co ", "a@b.co,c@d.co", "a..b@x.co", "a@b.co.", "Asha.Rao <a@b.co>", '"a\\"b" <a@b.co>',
    "a@b.co (Asha)", "Group: a@b.co;", "<@route:a@b.co>", '"x"@b.co', "a@[1.2.3.4]", "Asha  Rao <a@b.co>",
    "Asha Rao<a@b.co>", '"A\r\n B" <a@b.co>',
])
def test_other_forms_are_left_to_the_parser(text: str) -> None:
    assert simple_mailboxes([text]) is None


def test_an_ordinary_message_reads_its_addresses_without_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The addresses of a provider's ordinary message (a sender with a name, recipients in a list) do not go
    through getaddresses (some 10 µs each); a value the simple forms do not cover still does, with its result."""
    def refused(texts: list[str]) -> list[tuple[str, str]]:
        raise AssertionError(f"parsed by getaddresses: {texts}")

    monkeypatch.setattr(handlers.email, "getaddresses", refused)
    payload = email_payload(from_='"Asha Rao" <Asha@Example.com>', to=["support@acme.test", '"Ops" <ops@acme.test>'],
                            cc="a@b.co, c@d.co", subject="Router down", text="No internet", html=None,
                            stripped_text=None, message_id_="<m1@x.example>", in_reply_to=None, references=None,
                            attachments=[], provider={}, reply_to='"Asha" <asha@example.com>',
                            envelope_from="bounce@example.com", envelope_to="support@acme.test")
    assert (payload["from"], payload["from_name"]) == ("asha@example.com", "Asha Rao")
    assert payload["to"] == ["support@acme.test", "ops@acme.test"]
    assert payload["cc"] == ["a@b.co", "c@d.co"]
    monkeypatch.setattr(handlers.email, "getaddresses", getaddresses)
    assert address_list("Asha (home) <a@b.co>") == ["a@b.co"]


# -- a message's sender -------------------------------------------------------------------------------


def _outcome(read: Any, value: str) -> Any:
    try:
        return read(value)
    except Rejected as exc:
        return ("rejected", exc.status)


@settings(max_examples=1500, deadline=None)
@given(mailboxes() | values() | st.from_regex(handlers.simple_mailboxes._ONE_MAILBOX, fullmatch=True))
def test_a_sender_read_in_its_simple_form_is_the_one_both_full_readings_give(value: str) -> None:
    """`sender`'s one match for a simple mailbox gives what its two full readings (the list parse and the
    addr-spec reading, which must agree) give, name and address, for the simple forms and the values beside
    them; and a simple mailbox is what the simple list reading makes of it."""
    assert _outcome(sender, value) == _outcome(lambda v: handlers.email._read_sender(v, "From"), value)
    one = simple_mailbox(value)
    if one is not None:
        assert simple_mailboxes([value]) == [one]


@pytest.mark.parametrize(("value", "name", "address"), [
    ("asha@example.com", None, "asha@example.com"),
    ("Asha.Rao@Example.COM", None, "asha.rao@example.com"),
    ("<asha@example.com>", None, "asha@example.com"),
    ("Asha Rao <Asha@Example.com>", "Asha Rao", "asha@example.com"),
    ("O'Brien <ob@x.example>", "O'Brien", "ob@x.example"),
    ('"Rao, Asha" <a@b.co>', "Rao, Asha", "a@b.co"),
    ('"" <a@b.co>', None, "a@b.co"),
    ('" A  b\t" <a@b.co>', "A b", "a@b.co"),
    ('"ceo@corp.example" <asha@x.io>', "ceo@corp.example", "asha@x.io"),
    ("=?utf-8?b?w4lsb2RpZQ==?= <E@x.org>", "Élodie", "e@x.org"),
])
def test_a_simple_from_is_read_by_one_match(monkeypatch: pytest.MonkeyPatch, value: str, name: str | None,
                                            address: str) -> None:
    """A From in a simple form (nearly every one: the bare address a provider's JSON or an email's payload holds,
    which a threaded message's conversation reads again, or a named angle-addr) is read without the full
    readings (some 170,000 instructions, most of a threaded message's intake): the same name and address."""
    def refused(*args: Any) -> Any:
        raise AssertionError(f"read in full: {args}")

    monkeypatch.setattr(handlers.email, "_from_tokens", refused)
    monkeypatch.setattr(handlers.email, "getaddresses", refused)
    assert sender(value) == (name, address)
    assert message_sender({"from": value}) == address


@pytest.mark.parametrize("value", [
    "a@b.co (Asha)", "Asha <a@b.co>, b@c.co", "a@b.co ", "a@b.co\r\n", '"A\\" B" <a@b.co>', "Asha  Rao <a@b.co>",
    "attacker@evil.example <victim@corp.example>", "'john@x.example' <john@x.example>",
    "a" * MAX_FROM_CHARS + "@b.co",
])
def test_any_other_from_is_read_in_full(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """A From in no simple form (a comment, several mailboxes, blanks, escapes, an address in its display text),
    or longer than MAX_FROM_CHARS (refused there), takes the full readings."""
    def refused(*args: Any) -> Any:
        raise AssertionError("read in full")

    monkeypatch.setattr(handlers.email, "_read_sender", refused)
    with pytest.raises(AssertionError, match="read in full"):
        sender(value)
