"""tests/bench/delivery_cpu.py run tiny: it delivers every seeded event to the stand-in vendor and prints its
figure (the module asserts that each event reached the vendor once)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench

ROOT = Path(__file__).parents[2]


def test_delivery_cpu_delivers_every_event_and_prints_its_figure() -> None:
    done = subprocess.run([sys.executable, "-m", "tests.bench.delivery_cpu", "--events", "40", "--rounds", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    figure = re.search(r"^delivery +([\d.]+) us/delivered event", done.stdout, re.MULTILINE)
    assert figure is not None, done.stdout
    assert float(figure.group(1)) > 0
