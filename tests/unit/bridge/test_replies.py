"""bridge/replies.py: the reply a customer wrote, without quoted history or sign-off, on a corpus of real
reply formats (tests/fixtures/replies: `<case>.txt` is the body as a client sends it, `<case>.expected.txt`
what an agent should read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.mapping.text import strip_quoted
from bridge.replies import strip_reply
from handlers import email

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
    assert email.strip_reply(body) == expected
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
