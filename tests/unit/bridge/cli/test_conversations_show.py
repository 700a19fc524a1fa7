"""bridge/cli/deliveries.py: `conversations show` on the store, where a cursor can go stale while `--all` reads."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.cli import deliveries, main
from bridge.console.models import BadCursor, ConversationView
from bridge.store.base import ConversationRow

ROW = ConversationRow(id="chat|chat:C1", key="chat:C1", mapping="chat", destination="kapture", messages=3,
                      started_at_ms=1, last_message_at_ms=2, ticket_id=None, ticket_key=None, ticket_at_ms=None)
STALE = "a stale cursor: the delivery it reads from is no longer stored; start again from the first page"


@pytest.mark.parametrize("given", [[], ["--cursor", "c0"]])
def test_a_page_gone_stale_under_all_is_said_naming_the_conversation(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], given: list[str]) -> None:
    """`--all` reads page after page; when retention deletes the delivery a page ended at meanwhile, the next
    page's cursor is stale: exit 2, naming the conversation and how many deliveries were printed, not a cursor
    the operator gave (there may be none)."""
    reads: list[str | None] = []

    async def read(_cls: Any, _store: Any, key: str, limit: int, cursor: str | None = None) -> list[ConversationView]:
        reads.append(cursor)
        if cursor == "c1":
            raise BadCursor(STALE)
        return [ConversationView(conversation=ROW, deliveries=[], more=True, offset=2, next_cursor="c1")]

    monkeypatch.setattr(ConversationView, "read", classmethod(read))
    monkeypatch.setattr(deliveries, "_with_store", lambda _args, body: asyncio.run(body(None)))
    assert main(["conversations", "show", "chat:C1", "--all", *given]) == 2
    assert reads == [given[1] if given else None, "c1"]
    err = capsys.readouterr().err
    assert err == f"conversation chat|chat:C1: the deliveries after the 2 printed cannot be read: {STALE}\n", err
