"""The loop's turns a page of stored values takes as it is decoded (bridge/store/loop_turns.py)."""

from __future__ import annotations

import asyncio

from bridge.store.loop_turns import TURN_BYTES, Turns


def test_small_values_take_no_turn() -> None:
    turns = Turns()
    assert not any(turns.due(1000) for _ in range(TURN_BYTES // 1000))


def test_a_turn_before_the_value_that_would_pass_the_bound_and_counting_starts_again_from_it() -> None:
    turns = Turns()
    half = TURN_BYTES // 2
    assert [turns.due(half), turns.due(half), turns.due(1), turns.due(half), turns.due(half)] == [
        False, False, True, False, True]


def test_one_value_longer_than_the_bound_alone_has_no_turn_before_it_when_first() -> None:
    turns = Turns()
    assert not turns.due(3 * TURN_BYTES)
    assert turns.due(1)


def test_take_gives_the_loop_a_turn_when_due() -> None:
    async def main() -> list[str]:
        seen: list[str] = []
        turns = Turns()

        async def other() -> None:
            seen.append("other")

        task = asyncio.get_running_loop().create_task(other())
        await turns.take(TURN_BYTES)
        seen.append("first")
        await turns.take(1)
        seen.append("second")
        await task
        return seen

    assert asyncio.run(main()) == ["first", "other", "second"]
