"""bridge/replies.py: the reply a customer wrote, without quoted history or sign-off, on a corpus of real
reply formats (tests/fixtures/replies: `<case>.txt` is the body as a client sends it, `<case>.expected.txt`
what an agent should read)."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.mapping.text import strip_quoted
from bridge.replies import strip_reply
from handlers import email
from tests.fixtures.providers import ASHA_TEXT

CORPUS = Path(__file__).parents[2] / "fixtures" / "replies"
CASES = sorted(p.name.removesuffix(".txt") for p in CORPUS.glob("*.txt") if not p.name.endswith(".expected.txt"))


def read(name: str) -> str:
    # newline="" keeps a case's CRLF line ends as the client sent them
    with (CORPUS / name).open(encoding="utf-8", newline="") as f:
        return f.read()


def test_the_corpus_covers_the_formats() -> None:
    """The corpus holds at least 35 cases, each with its expected reply."""
    assert len(CASES) >= 35
    assert all((CORPUS / f"{case}.expected.txt").is_file() for case in CASES)


@pytest.mark.parametrize("case", CASES)
def test_corpus_reply_is_what_the_customer_wrote(case: str) -> None:
    """Each corpus body gives its expected reply, and the email payload's stripper and the mapping filter
    give the same one."""
    body = read(f"{case}.txt")
    expected = read(f"{case}.expected.txt").removesuffix("\n")
    assert strip_reply(body) == expected
    assert email.email_payload(from_=None, to=None, cc=None, subject=None, text=body, html=None, stripped_text=None,
                               message_id_=None, in_reply_to=None, references=None, attachments=[],
                               provider={})["stripped_text"] == expected
    assert strip_quoted(body) == expected


@pytest.mark.parametrize("value", [None, "", "\n\n", "  \r\n\t"])
def test_nothing_gives_an_empty_reply(value: str | None) -> None:
    """No text, or only blank lines, gives an empty reply rather than an error."""
    assert strip_reply(value) == ""


def test_a_weak_attribution_without_a_quote_is_prose() -> None:
    """"… wrote:" with no address or date is history only when a quote follows it."""
    assert strip_reply("Here is what I wrote:\nthe modem reboots.") == "Here is what I wrote:\nthe modem reboots."
    assert strip_reply("Ok.\n\nSupport wrote:\n> Replace it?") == "Ok."


def test_a_lone_quote_line_is_a_quote_when_the_message_quotes_elsewhere() -> None:
    """A single `>` line inside a paragraph is prose, unless the message quotes elsewhere (inline answers)."""
    assert strip_reply("It shows\n> Expired\nevery time.") == "It shows\n> Expired\nevery time."
    assert strip_reply("> Is it on?\nYes.\n> Is it blinking?\nNo.") == "Yes.\nNo."


def test_a_footer_is_kept_when_the_customer_writes_below_it() -> None:
    """"Sent from my iPhone" is dropped where it ends the reply, kept where the customer's text follows it."""
    assert strip_reply("Sent from my iPhone\nand the app crashes there.") == (
        "Sent from my iPhone\nand the app crashes there.")
    assert strip_reply("Fixed.\n\nSent from my Galaxy\n\nGet Outlook for Android") == "Fixed."


def test_a_signature_runs_to_the_next_quote() -> None:
    """A `-- ` signature is dropped up to the quote below it; an answer below that quote is kept."""
    text = "Top.\n-- \nAsha\n\nOn Mon, 3 Jun 2024, Support <s@acme.test> wrote:\n> q\n\nBelow."
    assert strip_reply(text) == "Top.\n\nBelow."


# Lines a hostile or unlucky body is made of: markers, quotes, footers, prose and their fragments.
FRAGMENTS = [
    "", " ", "Thanks,", "Asha", "> quoted", ">", ">> deeper", ">50% of users", "-- ", "--", "Sent from my iPhone",
    "On Mon, 3 Jun 2024 at 10:15, Acme Support <support@acme.test> wrote:", "On Mon, 3 Jun 2024 at 10:15, Acme",
    "<support@acme.test> wrote:", "Acme wrote:", "-----Original Message-----", "_" * 32, "From: Acme <a@acme.test>",
    "Sent: Monday", "Subject: Re: x", "Date: Friday", "---------- Forwarded message ---------",
    "Begin forwarded message:", "Am 3. Juni 2024 schrieb Acme <a@acme.test>:", "---- Acme wrote ----", "a:", "\t",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=30), max_size=40),
       st.sampled_from(["\n", "\r\n", "\r"]))
def test_the_reply_is_made_of_the_bodys_own_lines(parts: list[str], newline: str) -> None:
    """Any body gives, without error, a reply whose lines are the body's own lines (trailing space trimmed)
    in their order, with no blank line at either end and none doubled."""
    body = newline.join(parts)
    reply = strip_reply(body)
    assert reply == strip_quoted(body)
    if not reply:
        return
    lines = reply.split("\n")
    assert lines[0] and lines[-1]
    assert all(a or b for a, b in pairwise(lines))
    source = iter(line.rstrip() for line in body.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
    assert all(any(line == s for s in source) for line in lines if line)


OUTLOOK_FORWARD = ("Please look at the message below, I never ordered this.\n\n________________________________\n"
                   "From: Shop <orders@shop.example>\nSent: Monday, June 3, 2024 10:15 AM\nTo: Sam <sam@example.com>\n"
                   "Subject: Your order 4471\n\nThank you for your order of 3 routers.")


@pytest.mark.parametrize("subject", ["FW: Your order 4471", "Fwd: Your order 4471", "WG: Ihre Bestellung",
                                     "TR: Votre commande", "RV: Su pedido"])
def test_a_forward_subject_keeps_what_outlook_forwarded(subject: str) -> None:
    """With a forward's subject, the header block Outlook forwards under and all below it are kept."""
    assert strip_reply(OUTLOOK_FORWARD, subject) == OUTLOOK_FORWARD
    assert strip_quoted(OUTLOOK_FORWARD, subject) == OUTLOOK_FORWARD


@pytest.mark.parametrize("subject", [None, "RE: FW: Your order 4471", "Your order 4471", "Fwiw: a question"])
def test_a_reply_subject_leaves_the_header_block_as_history(subject: str | None) -> None:
    """Without a forward's subject (a reply to a forward included) the header block is history."""
    assert strip_reply(OUTLOOK_FORWARD, subject) == "Please look at the message below, I never ordered this."


def test_strip_reply_cuts_the_gmail_attribution_and_quote() -> None:
    """Everything from a wrapped "On … wrote:" line on is history."""
    assert strip_reply(ASHA_TEXT) == "Hi,\n\nMy router is down again since this morning.\n\nThanks,\nAsha"


@pytest.mark.parametrize(("text", "expected"), [
    ("Yes, it works now.\n\n-- \nAsha Rao\nAcme Ltd", "Yes, it works now."),
    ("Fixed.\n\nSent from my iPhone", "Fixed."),
    ("Fixed.\r\n\r\nGet Outlook for Android", "Fixed."),
    ("Done\n\n-----Original Message-----\nFrom: Support\nSent: Monday\nHello", "Done"),
    ("Done\n\n________________________________\nFrom: Support <s@acme.test>\nSent: Monday\nSubject: x", "Done"),
    ("Done\n\nFrom: Support <s@acme.test>\nSent: Monday, 3 June 2024 10:00\nTo: Asha\nSubject: Re: x\n\nHi",
     "Done"),
    ("Merci\n\nLe lun. 3 juin 2024 à 10:00, Support <s@acme.test> a écrit :\n> Bonjour", "Merci"),
    ("Danke\n\nAm Mo., 3. Juni 2024 um 10:00 Uhr schrieb Support <s@acme.test>:\n> Hallo", "Danke"),
])
def test_strip_reply_knows_common_markers(text: str, expected: str) -> None:
    """Signature delimiters, mobile footers, Outlook header blocks and other languages' attributions end the reply."""
    assert strip_reply(text) == expected


def test_strip_reply_keeps_interleaved_answers_without_the_quotes() -> None:
    """An inline reply keeps its own lines and loses the quoted ones."""
    assert strip_reply("> Is it on?\nYes.\n\n> Is it blinking?\nNo.") == "Yes.\n\nNo."


@pytest.mark.parametrize("text", [
    "On Monday the router died.\nIt blinks red.",
    "From: my phone, the router page shows nothing",
    "Use -- to separate options",
])
def test_strip_reply_leaves_ordinary_text_alone(text: str) -> None:
    """Text that only looks like a marker at first glance is kept whole."""
    assert strip_reply(text) == text
