"""bridge/replies.py finds the few lines that may be markers with regular expressions over the whole text and
keeps the plain lines between them as ranges; it must give exactly what looking at every line gave
(`replies_by_line`, the stripper before), on any body."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.replies import strip_reply
from tests.unit.bridge import replies_by_line

# Lines near every edge of the marker tests: quotes, signatures, separators, header keys, attributions
# (whole and wrapped), footers, colons and dashes at the ends and at the 40th character, blanks of other kinds.
LINES = [
    "", " ", "\t", "\u00a0", "\u2028", "\x0b", "\x0c", "Thanks,", "Asha", "ok", "ok  ", "> quoted", ">", " > indented",
    "\u3000>", ">> deeper", ">50% of users", "-- ", "--", " --", "-", "_", "a-", "a -", "Sent from my iPhone",
    "  sent from my Galaxy  ", "Get Outlook for Android", "Von meinem iPhone gesendet", "Отправлено \u0441 iPhone",
    "On Mon, 3 Jun 2024 at 10:15, Acme Support <support@acme.test> wrote:", "On Mon, 3 Jun 2024 at 10:15, Acme",
    "<support@acme.test> wrote:", "Acme wrote:", "Acme wrote\uff1a", "-----Original Message-----", "_" * 32,
    "-" * 24, "From: Acme <a@acme.test>", "Sent: Monday", "To: Sam <s@x.test>", "Subject: Re: x", "Date: Friday",
    "发件人\uff1a Acme", "---------- Forwarded message ---------", "Begin forwarded message:",
    "Am 3. Juni 2024 schrieb Acme <a@acme.test>:", "---- Acme wrote ----", "a:", "a\uff1a", ":", "x" * 39 + ":",
    "x" * 40 + ": no", "x" * 38 + "\uff1a", "## Please reply above this line ##", "Reply ABOVE THIS LINE",
    "2014-10-17 11:28 GMT+03:00 Asha <a@b.c>:", "Le 3 juin 2024 à 10:15, Acme <a@acme.test> a écrit :",
    "On 3 Jun 2024 at 10:15 x", "y", "z:", "On Mon 3 Jun 2024 Acme Support Team", "<support@acme.test>", "wrote:",
    "Am 3. Juni 2024 schrieb", "Acme Support", "<a@acme.test>:", "Ünïcödé", "\udcff bytes", "İnviato da iPhone",
]


def body_of(parts: list[str], newline: str) -> str:
    return newline.join(parts)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(LINES) | st.text(max_size=12), max_size=50),
       st.sampled_from(["\n", "\r\n", "\r"]),
       st.sampled_from([None, "FW: x", "Re: x"]))
def test_the_reply_is_what_looking_at_every_line_gave(parts: list[str], newline: str, subject: str | None) -> None:
    """Any body, any line ends, with or without a forward's subject: the same reply as before."""
    body = body_of(parts, newline)
    assert strip_reply(body, subject) == replies_by_line.strip_reply(body, subject)
    # a short body is looked at line by line; with plain lines around it, it is long enough to be skipped through
    padded = body_of(["ok"] * 40 + parts + ["ok"] * 40, newline)
    assert strip_reply(padded, subject) == replies_by_line.strip_reply(padded, subject)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(LINES), min_size=1, max_size=8), st.integers(0, 300), st.integers(0, 300),
       st.sampled_from(["\n", "\r\n"]))
def test_markers_among_many_plain_lines(markers: list[str], before: int, after: int, newline: str) -> None:
    """Markers on the first or last line, or inside long runs of plain lines (which the stripper skips as a
    whole): the same reply as before."""
    body = newline.join(["ok"] * before + markers + ["ok  "] * after)
    assert strip_reply(body) == replies_by_line.strip_reply(body)
    body = newline.join(markers + ["ok"] * before + markers)
    assert strip_reply(body) == replies_by_line.strip_reply(body)


@pytest.mark.parametrize("attribution", [
    ["On Mon 3 Jun 2024 Acme Support Team", "<support@acme.test>", "wrote:"],
    ["On Mon 3 Jun 2024 Acme Support Team <support@acme.test>", "wrote:"],
    ["Am 3. Juni 2024 schrieb", "Acme Support", "<a@acme.test>:"],
])
def test_an_attribution_wrapped_over_lines_without_a_colon(attribution: list[str]) -> None:
    """An attribution's first lines hold no marker of their own: the line ending in a colon two lines below
    marks them."""
    body = "\n".join(["Fixed, thanks.", "", *attribution, "> Is it on?"])
    assert strip_reply(body) == replies_by_line.strip_reply(body) == "Fixed, thanks."


@pytest.mark.parametrize("unit", ["> q\n", "--\n", "a:\n", "x\n> y\n", "Sent from my iPhone\n", "\n", "ok\n",
                                  "From: a\nnote\n", "-- \nok\n\n", "ok\n" * 5 + "a:\n"])
def test_long_bodies_of_one_kind_of_line(unit: str) -> None:
    """Bodies of 20,000 lines of a kind, dense in markers or not (the stripper picks how it finds them by a
    count): the same reply as before."""
    body = unit * (20_000 // unit.count("\n"))
    assert strip_reply(body) == replies_by_line.strip_reply(body)
