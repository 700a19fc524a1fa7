"""html_to_text and strip_quoted: e-mail bodies as a person reads them."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bridge.mapping import limits
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


def test_html_to_text_keeps_unfinished_markup_and_unknown_entities_as_text() -> None:
    """A `<` that starts no finished tag and an entity that names nothing are the writer's text."""
    assert html_to_text("<p>a &unknown; b</p>x <y") == "a &unknown; b\n\nx <y"
    assert html_to_text("<a<a<a") == "<a<a<a"


def test_html_to_text_reads_xml_declarations_and_marked_sections() -> None:
    """An XML declaration, Word's `<![if …]>` sections and CDATA give what a reader sees, without a warning."""
    html = '<?xml version="1.0"?><p><![if !supportLists]>1.<![endif]> Item</p><![CDATA[ raw  text ]]>'
    assert html_to_text(html) == "1. Item\n\nraw text"


# A body a tree-building converter took minutes over: thousands of list items left open.
HUGE = "<li>x" * 20_000


@pytest.mark.parametrize("run", [html_to_text, strip_quoted])
def test_the_time_budget_stops_the_text_filters(run: Callable[[str], object], monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a render, html_to_text and strip_quoted stop at the render's time budget, however long the body."""
    monkeypatch.setattr(limits, "TIME_BUDGET_S", 0.001)
    body = HUGE if run is html_to_text else "a:\n" * 200_000
    with limits.Budget(), pytest.raises(limits.BudgetExceeded, match=r"render budget of 1 ms exceeded"):
        run(body)


@pytest.mark.parametrize("run", [html_to_text, strip_quoted])
def test_a_loop_slice_stops_the_text_filters(run: Callable[[str], object]) -> None:
    """Under a loop slice that is over, html_to_text and strip_quoted raise SliceOver (to be run again off the
    loop) rather than holding the loop to the end."""
    body = HUGE if run is html_to_text else "a:\n" * 200_000
    token = limits.start_slice(-1.0)
    try:
        with limits.Budget(), pytest.raises(limits.SliceOver):
            run(body)
    finally:
        limits.end_slice(token)
    assert run("<p>ok</p>") in ("ok", "<p>ok</p>")  # without a slice or budget, it runs to the end
