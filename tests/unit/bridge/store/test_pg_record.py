"""Record groups: a group closes at its count or at its bytes, whichever comes first, and a record's size is the
texts it carries (no database)."""

from __future__ import annotations

import asyncio

import msgspec

from bridge.store.base import AttemptResult
from bridge.store.pg_record import Outcome, PendingRecord, RecordBatcher
from bridge.store.rows import GROUP_BYTES, encode
from tests.integration.store.contract import result


def follow_up(body_chars: int) -> AttemptResult:
    return msgspec.structs.replace(result("dlv_1", "succeeded"), role="follow_up", action="add_comment",
                                   body={"comment": "x" * body_chars})


async def group_sizes(attempts: list[AttemptResult], group_max: int, group_bytes: int) -> list[int]:
    """The sizes of the groups `attempts`, recorded together, are written in."""
    sizes: list[int] = []

    async def run(group: list[PendingRecord]) -> list[Outcome]:
        sizes.append(len(group))
        return [None] * len(group)

    batcher = RecordBatcher(run, group_max, group_bytes=group_bytes)
    assert await asyncio.gather(*(batcher.submit(PendingRecord(a, "me")) for a in attempts)) == [None] * len(
        attempts)
    assert (batcher.groups, batcher.grouped) == (len(sizes), len(attempts))
    return sizes


async def test_a_record_counts_its_body_excerpt_exchange_and_error() -> None:
    """Its size is the encoded follow-up body and exchange (bytes) and the excerpt and error (characters)."""
    attempt = msgspec.structs.replace(follow_up(100), error="e" * 7, response_excerpt="r" * 11,
                                      exchange={"request": {"body": "b" * 50}})
    assert PendingRecord(attempt, "me").size == len(encode({"comment": "x" * 100})) + 7 + 11 + len(
        encode({"request": {"body": "b" * 50}}))
    bare = msgspec.structs.replace(result("dlv_1", "succeeded"), response_excerpt=None)
    assert PendingRecord(bare, None).size == 0


async def test_a_group_closes_at_its_bytes_or_its_count_whichever_comes_first() -> None:
    """Records of 40 bytes under a bound of 100 go two to a group; under a bound that they do not reach, the count
    closes groups; a record over the bound goes alone, and does not carry its neighbours with it."""
    small = msgspec.structs.replace(result("dlv_1", "succeeded"), response_excerpt="r" * 40)
    big = msgspec.structs.replace(result("dlv_2", "succeeded"), response_excerpt="r" * 150)
    assert await group_sizes([small] * 5, group_max=100, group_bytes=100) == [2, 2, 1]
    assert await group_sizes([small] * 5, group_max=2, group_bytes=10_000) == [2, 2, 1]
    assert await group_sizes([small, big, small, small, big], group_max=100, group_bytes=100) == [1, 1, 2, 1]
    assert await group_sizes([small] * 3, group_max=100, group_bytes=120) == [3]  # the bound itself fits


async def test_the_default_bound_is_group_bytes() -> None:
    async def run(group: list[PendingRecord]) -> list[Outcome]:
        return [None] * len(group)

    assert RecordBatcher(run, 512).group_bytes == GROUP_BYTES == 2 * 1024 * 1024
