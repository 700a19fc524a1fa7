"""The `html_to_text` filter grows linearly on hostile HTML: 8x the input costs at most ~16x the time. Each input
is one an attacker would choose against a tree-building converter (tags left open, so each text or mark sits
under thousands of ancestors) or against a tokenizer that rescans from each `<` it cannot finish."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bridge.mapping.text import html_to_text
from tests.complexity.scaling import assert_linear

CASES: dict[str, tuple[Callable[[int], str], int]] = {
    "list items left open": (lambda n: "<li>" * n, 1_000),
    "list items with text, left open": (lambda n: "<li>x " * n, 1_000),
    "divs left open": (lambda n: "<div>" * n, 1_000),
    "cells left open": (lambda n: "<td>" * n, 1_000),
    "pre left open, blanks inside": (lambda n: "<pre>  \n" * n, 1_000),
    "end tags of nothing open, under open tags": (lambda n: "<b>" * n + "</x>" * n, 1_000),
    "void end tags after void tags": (lambda n: "<img>" * n + "</img>" * n + "</p>" * n, 1_000),
    "start tags never finished": (lambda n: "<a" * n, 4_000),
    "comments never closed": (lambda n: "<!--" * n, 4_000),
    "quotes never closed in a tag": (lambda n: "<a b='" * n, 4_000),
    "entities": (lambda n: "&amp;" * n, 4_000),
    "blanks without a tag": (lambda n: " \t" * n, 8_000),
    "CDATA sections never closed": (lambda n: "<![CDATA[>" * n, 4_000),
}


@pytest.mark.parametrize("case", list(CASES))
def test_html_to_text_grows_linearly(case: str) -> None:
    """Reading 8x the HTML costs at most ~16x the time (the old tree walk cost ~64x on tags left open)."""
    make, n = CASES[case]
    assert_linear(html_to_text, make, n)
