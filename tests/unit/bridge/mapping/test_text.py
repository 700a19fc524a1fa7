"""html_to_text and strip_quoted: e-mail bodies as a person reads them."""

from __future__ import annotations

import pytest

from bridge.mapping.text import html_to_text, strip_quoted


def test_html_to_text_keeps_the_reading_layout() -> None:
    """Paragraphs become blank-line separated, list items lines with "- ", <br> a line break."""
    html = ("<html><head><title>t</title><style>p {color: red}</style></head><body>"
            "<p>Hello <b>Asha</b>,\n   the   line is down.</p><ul><li>one</li><li>two</li></ul>"
            "Call<br>me &amp; thanks<!-- hidden --><script>alert(1)</script></body></html>")
    assert html_to_text(html) == "Hello Asha, the line is down.\n\n- one\n- two\n\nCall\nme & thanks"


def test_html_to_text_separates_divs_and_table_cells() -> None:
    """Divs are lines, and table cells are tab-separated within their row."""
    assert html_to_text("<div>a</div><div>b</div><table><tr><td>x</td><td>y</td></tr></table>") == "a\nb\n\nx\ty"


@pytest.mark.parametrize("value", [None, 5, ["<b>x</b>"]])
def test_html_to_text_passes_non_text_through(value: object) -> None:
    """Values that are not text are returned unchanged."""
    assert html_to_text(value) == value


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Thanks, works now.\n\nOn Tue, 5 Mar 2024 at 10:00, Support <s@x.io> wrote:\n> Try again\n",
         "Thanks, works now."),
        ("Fine\r\nOn Tue, 5 Mar 2024 at 10:00, Support\r\n<s@x.io> wrote:\r\n> old", "Fine"),
        ("Top reply\n\n-----Original Message-----\nFrom: a\nSent: b\n", "Top reply"),
        ("Top\n\n________________________________\nFrom: Support <s@x.io>\nSent: Tuesday\nTo: Asha\nSubject: Re",
         "Top"),
        ("Reply\nFrom: Support <s@x.io>\nSent: Tuesday\nTo: Asha\nSubject: Re: x\n\nold", "Reply"),
        ("Hi\n\nAsha\n-- \nAsha Rao | Acme\n+91 98765 43210", "Hi\n\nAsha"),
        ("On it!\n\nSent from my iPhone", "On it!"),
        ("Answer\n> quoted line\n> and another\nmore answer", "Answer\nmore answer"),
        ("From: the start of a sentence is fine", "From: the start of a sentence is fine"),
        ("No history at all", "No history at all"),
    ],
)
def test_strip_quoted_keeps_only_the_reply(text: str, expected: str) -> None:
    """Quoted history (On … wrote:, Original Message, Outlook headers, > lines) and signatures are cut."""
    assert strip_quoted(text) == expected
