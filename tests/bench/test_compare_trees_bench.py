"""compare_trees runs: one checkout against itself, each mode, every delivered event counted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.harness import needs_wrk

pytestmark = [pytest.mark.bench, needs_wrk]
ROOT = Path(__file__).parents[2]


@pytest.mark.parametrize(("mode", "store"), [("e2e", []), ("intake", []), ("e2e", ["--postgres"])])
def test_one_checkout_against_itself(mode: str, store: list[str]) -> None:
    out = subprocess.run([sys.executable, "-m", "tests.bench.compare_trees", str(ROOT), str(ROOT), "--mode", mode,
                          "--rounds", "2", "--seconds", "1", *store], cwd=ROOT, capture_output=True, text=True,
                         timeout=600, check=True).stdout
    rounds = re.findall(r"^/\S+: ([\d,]+)/s, (\d+) µs$", out, re.M)
    assert len(rounds) == 4, out
    assert all(int(rate.replace(",", "")) > 0 and int(cpu) > 0 for rate, cpu in rounds), out
    assert re.search(r"^B/A rate \d+\.\d\d \(", out, re.M), out
