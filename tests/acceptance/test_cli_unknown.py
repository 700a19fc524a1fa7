"""The `ticketbridge deliveries` verbs on unknown outcomes, against a real SQLite store file: deliveries in
doubt and possible duplicates flagged in `list` and `show`, and `mark-succeeded` settling a held one."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.events import Event
from bridge.store.base import AttemptResult, NewDelivery
from bridge.store.sqlite import SqliteStore
from tests.acceptance.cli_store import run, seeded_config

CONFIG = """
store: {url: "sqlite:///var/bridge.db"}
sources:
  partner: {kind: json}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""
MAPPING = """
source: partner
destination: kapture
action: create_ticket
fields:
  title: {from: payload.title, required: true}
"""


def attempt(delivery_id: str, classification: str, next_status: str, **kw: object) -> AttemptResult:
    return AttemptResult(delivery_id=delivery_id, started_at_ms=1_700_000_000_000, duration_ms=1.0,
                         http_status=None, response_excerpt=None, classification=classification,
                         error=kw.pop("error", None), next_status=next_status, **kw)  # type: ignore[arg-type]


async def seed(db: Path) -> None:
    """dlv_held: timed out, held; dlv_dup: timed out, then resent and succeeded (a possible duplicate)."""
    store = SqliteStore(db)
    await store.open()
    try:
        for ident in ("dlv_dup", "dlv_held"):
            event = Event.new(source="partner", kind="json", channel="webhook", payload={"title": ident})
            await store.accept(event, [NewDelivery(id=ident, mapping="partner", mapping_version="v1",
                                                   destination="kapture", action="create_ticket",
                                                   body={"title": ident})], 0)
        await store.claim("kapture", 10, "w", 60)
        await store.record(attempt("dlv_dup", "unknown", "pending", next_attempt_at_ms=0, error="timed out"))
        await store.record(attempt("dlv_held", "unknown", "dead", error="timed out; held: …"))
        await store.claim("kapture", 10, "w", 60)
        await store.record(attempt("dlv_dup", "success", "succeeded", ticket_id="T-2", ticket_key="#002",
                                   ticket_uuid="27e8259d-0681", duplicate=True))
    finally:
        await store.close()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return seeded_config(tmp_path, CONFIG, MAPPING, seed)


def test_list_and_show_flag_doubt_and_possible_duplicates(config_file: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`deliveries list` marks a held delivery in doubt and a resent one as a possible duplicate; `show` says
    what each means and, for the one in doubt, what to run."""
    code, out, _ = run(capsys, "deliveries", "list", "-c", str(config_file))
    assert code == 0
    by_id = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "dead (in doubt since 2023-11-14 22:13:20)" in by_id["dlv_held"]
    assert "succeeded (POSSIBLE DUPLICATE x1)" in by_id["dlv_dup"]
    code, out, _ = run(capsys, "deliveries", "show", "dlv_dup", "-c", str(config_file))
    assert "POSSIBLE DUPLICATE: sent again 1 time(s) after an unknown outcome" in out
    assert "unknown   1 send(s)" in out
    assert "ticket    T-2 (key #002, uuid 27e8259d-0681)" in out  # every reference the vendor gave
    code, out, _ = run(capsys, "deliveries", "show", "dlv_held", "-c", str(config_file))
    assert "in doubt  since 2023-11-14 22:13:20" in out and "deliveries mark-succeeded dlv_held" in out


def test_mark_succeeded_settles_a_held_delivery_once(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`deliveries mark-succeeded` records the ticket the operator found and the note; a second time, or on
    an unknown id, it says why not and exits 1."""
    code, out, _ = run(capsys, "deliveries", "mark-succeeded", "dlv_held", "--ticket-id", "T-7", "--note",
                       "seen in the console", "-c", str(config_file))
    assert (code, out.strip()) == (0, "dlv_held: marked succeeded with ticket T-7")
    code, out, _ = run(capsys, "deliveries", "show", "dlv_held", "-c", str(config_file))
    assert "dlv_held  succeeded" in out and "ticket    T-7" in out and "in doubt" not in out
    assert "marked: marked succeeded by cli:" in out and "seen in the console" in out
    code, _, err = run(capsys, "deliveries", "mark-succeeded", "dlv_held", "--ticket-id", "T-7", "-c",
                       str(config_file))
    assert code == 1 and "not marked: it is succeeded" in err
    code, _, err = run(capsys, "deliveries", "mark-succeeded", "dlv_nope", "--ticket-id", "T", "-c",
                       str(config_file))
    assert code == 1 and "dlv_nope" in err
