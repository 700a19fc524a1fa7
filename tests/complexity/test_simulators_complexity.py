"""The simulators' answers grow linearly with what a request lists: 8x the list costs at most ~16x the time."""

from __future__ import annotations

from bridge.simulators.leadsquared import LeadSquaredSimulator
from tests.complexity.scaling import assert_linear


def test_trash_is_linear_in_the_ids_it_is_sent() -> None:
    """A trash of one held Id sent n times and n unknown Ids (each once searched for among those done, in the
    old shape) costs in proportion to n."""
    sim = LeadSquaredSimulator()

    def trash(ids: list[str]) -> object:
        sim.hold({"Id": "1"})
        return sim.delete(ids)

    assert_linear(trash, lambda n: ["1"] * n + [f"x{i}" for i in range(n)], 2_000)
