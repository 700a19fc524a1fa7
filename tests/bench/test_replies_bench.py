"""Reply stripping on the request path: 64 KiB hostile bodies and the corpus of ordinary replies.

Each hostile body of the complexity tier (tests/complexity) is stripped at 64 KiB, the size measured in
the field (a body of repeated "schrieb " took 4.1 s before), and its CPU time printed; each must stay
under 100 ms, the whole request's budget. The corpus of real reply formats gives the cost of an ordinary
reply, held under 200 microseconds."""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.replies import strip_reply

pytestmark = pytest.mark.bench

SIZE = 64 * 1024
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
HERE = Path(__file__).parent


def _hostile() -> dict[str, Callable[[int], str]]:
    spec = importlib.util.spec_from_file_location("replies_complexity",
                                                  HERE.parent / "complexity" / "test_replies_complexity.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    hostile: dict[str, Callable[[int], str]] = module.HOSTILE
    return hostile


def cpu(run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.process_time()
        run()
        best = min(best, time.process_time() - start)
    return best


def test_hostile_64k_bodies_strip_within_the_request_budget() -> None:
    """Every 64 KiB hostile body is stripped in under 100 ms of CPU."""
    worst = 0.0
    print()
    for name, make in _hostile().items():
        body = make(SIZE)
        took = cpu(lambda body=body: strip_reply(body))  # type: ignore[misc]
        worst = max(worst, took)
        print(f"{name:45} {took * 1000:8.2f} ms")
    assert worst < 0.100


def test_an_ordinary_reply_strips_in_microseconds() -> None:
    """The corpus's replies take under 200 microseconds each on average."""
    corpus = HERE.parent / "fixtures" / "replies"
    bodies = [p.read_text(encoding="utf-8") for p in sorted(corpus.glob("*.txt"))
              if not p.name.endswith(".expected.txt")]
    per_body = cpu(lambda: [strip_reply(b) for b in bodies * 20]) / (20 * len(bodies))
    print(f"\n{len(bodies)} corpus replies: {per_body * 1e6:.1f} us each")
    assert per_body < 200e-6
