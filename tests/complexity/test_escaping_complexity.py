"""Text kept with its NUL written out (bridge/escaping.py) is read back and looked up in linear time: 8x the text
costs at most ~16x the time, whatever mix of backslashes, NULs and near-escapes it holds."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bridge.escaping import NUL_MARK, lookup_forms, read_nul, write_nul
from tests.complexity.scaling import assert_linear

CASES: dict[str, tuple[Callable[[int], str], int]] = {
    "backslashes and NULs, written out": (lambda n: write_nul("\\\x00" * n), 20_000),
    "a written form spoilt at its end": (lambda n: write_nul("\\\x00" * n) + "\\", 20_000),
    "near-escapes after the mark": (lambda n: NUL_MARK + "\\x0" * n, 20_000),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_written_form_is_looked_up_and_read_in_linear_time(case: str) -> None:
    """Looking up and reading back 8x the written text costs at most ~16x the time."""
    make, n = CASES[case]
    assert_linear(lambda text: (lookup_forms(text), read_nul(text)), make, n)
