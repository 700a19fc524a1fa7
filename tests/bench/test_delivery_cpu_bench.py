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


def test_delivery_cpu_mixed_prints_intake_delivery_and_both_at_once() -> None:
    """--mixed: intake alone, delivery alone and both at once, each event of the mixed phase delivered too (the
    module asserts the vendor received every event once, the mixed phases' included)."""
    done = subprocess.run([sys.executable, "-m", "tests.bench.delivery_cpu", "--events", "40", "--rounds", "1",
                           "--mixed"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    for label in ("delivery", "intake", "mixed"):
        figure = re.search(rf"^{label} +([\d.]+) us/", done.stdout, re.MULTILINE)
        assert figure is not None, done.stdout
        assert float(figure.group(1)) > 0
    assert re.search(r"^mixed over intake \+ delivery [\d.]+ ", done.stdout, re.MULTILINE), done.stdout
