"""The simulators' work grows linearly with what a request lists or a ticket gathers: 8x costs at most ~16x the time."""

from __future__ import annotations

from bridge.simulators.kapture import KaptureSimulator
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


def test_follow_ups_on_one_ticket_cost_in_proportion_to_their_number() -> None:
    """n follow-ups on one held ticket (a field change and a comment each, histories unbounded here) cost in
    proportion to n: each weighs what it brings, never the ticket with all its comments again."""
    sim = KaptureSimulator()
    sim.max_history = sim.max_history_total = 10 ** 9

    def follow_ups(n: int) -> object:
        sim.clear()
        ticket: dict[str, object] = {"ticketId": "t", "substatus": "US", "comments": []}
        sim.hold(ticket)
        for _ in range(n):
            sim.change(ticket, substatus="P")
            sim.add_history(ticket, "comments", ["c" * 100])
        return sim.held_bytes

    assert_linear(follow_ups, lambda n: n, 1_000)
