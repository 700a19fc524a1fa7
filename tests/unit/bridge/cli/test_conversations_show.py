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


@pytest.mark.parametrize("where", [["-c", "bridge.yaml"], ["--url", "http://127.0.0.1:9"]])
def test_last_with_all_is_refused_before_the_store_or_server_is_opened(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], where: list[str]) -> None:
    """`--last` with `--all` is a usage error, said (exit 2) before the store is opened (which may migrate it) or
    the server asked (which needs the token): not another error of the store's or the server's in its place."""
    def opened(*_args: Any, **_kwargs: Any) -> int:
        raise AssertionError("the store or the server was opened")

    monkeypatch.setattr(deliveries, "_with_store", opened)
    monkeypatch.setattr(deliveries, "_with_server", opened)
    assert main(["conversations", "show", "chat:C1", "--last", "--all", *where]) == 2
    err = capsys.readouterr().err
    assert err.startswith("--last lists each conversation's last page and --all every page"), err
