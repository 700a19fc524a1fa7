"""The long differential and scaling campaigns (tests/campaigns) stay runnable: a few hundred examples of each
path, and each hostile shape built and parsed once at a small size. The campaigns themselves are run by hand."""

from __future__ import annotations

import random

import pytest

from tests.campaigns import differential, linearity


@pytest.mark.parametrize("path", list(differential.CAMPAIGNS))
def test_a_short_campaign_finds_no_divergence(path: str) -> None:
    campaign = differential.CAMPAIGNS[path](random.Random(f"unit-{path}"), 150)
    assert campaign.runs >= 150
    assert campaign.found == 0


@pytest.mark.parametrize("shape", list(linearity.SHAPES))
def test_each_hostile_shape_is_parsed(shape: str) -> None:
    run, make = linearity.SHAPES[shape]
    run(make(2_000))
