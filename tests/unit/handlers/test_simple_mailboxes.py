"""Address values read in their simple forms give what the email package's parser gives, and every other value is
left to it."""

from __future__ import annotations

from email.utils import getaddresses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import handlers.email
from handlers.email import address_list, email_payload
from handlers.simple_mailboxes import simple_mailboxes

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
