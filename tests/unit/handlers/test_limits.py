"""handlers/limits.py: the caps on a request's counts and sizes, and the 413 each gives."""

from __future__ import annotations

import pytest

from bridge.errors import Rejected
from handlers.limits import (
    MAX_MIME_SECTIONS,
    MIME_LINE_CHECKS,
    check_chars,
    check_count,
    check_mime_shape,
)


def test_a_count_over_its_cap_is_a_413_naming_both() -> None:
    """The answer names what exceeded, by how much, and the cap."""
    check_count("To addresses", 1000, 1000)
    with pytest.raises(Rejected) as info:
        check_count("To addresses", 60000, 1000)
    assert (info.value.status, info.value.check) == (413, "limits")
    assert str(info.value) == "too many To addresses: 60000, at most 1000"


def test_a_length_over_its_cap_is_a_413_naming_both() -> None:
    """A text over its cap is refused with its length and the cap."""
    check_chars("the To field", 10, 10)
    with pytest.raises(Rejected, match=r"^the To field is 11 characters, at most 10$"):
        check_chars("the To field", 11, 10)


def test_mime_sections_are_counted_from_boundary_parameters() -> None:
    """Boundary parameters, also in RFC 2231 form, count as sections; a browser's delimiter lines do not."""
    declared = b"".join(b'Content-Type: multipart/mixed; BOUNDARY*0="b%d"\r\n' % i
                        for i in range(MAX_MIME_SECTIONS + 1))
    with pytest.raises(Rejected, match=rf"too many multipart sections in x: {MAX_MIME_SECTIONS + 1}, at most"):
        check_mime_shape(declared, "x")
    check_mime_shape(b"------WebKitFormBoundaryAbc\r\n" * 5000, "x")


def test_many_lines_inside_nested_sections_are_refused() -> None:
    """Lines times sections over the budget is a 413 naming both counts; the same lines in one section pass."""
    lines = b"\n" * MIME_LINE_CHECKS
    check_mime_shape(b"boundary=a\n" + lines, "the message")
    with pytest.raises(Rejected, match=r"the message nests 2 multipart sections over \d+ lines"):
        check_mime_shape(b"boundary=a\nboundary=b\n" + lines, "the message")
