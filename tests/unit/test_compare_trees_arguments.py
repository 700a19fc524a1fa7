"""tests/bench/compare_trees.py, without a benchmark: its arguments refused before either server starts, naming
the value, and its temporary folder removed however the run ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def compare(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.bench.compare_trees", *args, "--mode", "intake"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env, check=False)


@pytest.mark.parametrize("rounds", ["0", "-1", "two"])
def test_rounds_that_are_no_whole_number_from_1_are_refused_naming_the_value(rounds: str) -> None:
    """`--rounds 0` ran no round and ended in a StatisticsError on the empty medians, after starting both servers."""
    done = compare(str(ROOT), str(ROOT), "--rounds", rounds)
    assert done.returncode == 2, done.stderr
    assert f"argument --rounds: {rounds!r} is not a whole number from 1 to 100" in done.stderr, done.stderr


def test_a_tree_that_is_no_checkout_is_refused_naming_it(tmp_path: Path) -> None:
    """A path with no bridge package (a typo) ran the checkout the venv has installed as that tree, unsaid."""
    done = compare(str(ROOT), str(tmp_path / "nothing"))
    assert done.returncode == 2, done.stderr
    assert f"{str(tmp_path / 'nothing')!r} is no checkout of ticketbridge (it has no bridge/__init__.py)" \
        in done.stderr, done.stderr


def test_its_temporary_folder_is_removed_when_a_server_does_not_start(tmp_path: Path) -> None:
    """Each run left its folder (both servers' stores, about 20 MB) in the temporary directory, whatever its end;
    here a checkout whose server exits at once."""
    tree = tmp_path / "tree"
    (tree / "bridge").mkdir(parents=True)
    (tree / "bridge" / "__init__.py").write_text("")
    (tree / "bridge" / "__main__.py").write_text("raise SystemExit(3)\n")
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    done = compare(str(tree), str(tree), env={**os.environ, "TMPDIR": str(temporary), "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0 and "server exited with 3" in done.stderr, done.stderr
    assert list(temporary.iterdir()) == []
