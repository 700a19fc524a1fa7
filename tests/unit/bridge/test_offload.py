"""bridge/offload.py: renders run on the loop while cheap, again in the parser thread once past their slice."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge import offload
from bridge.mapping import limits
from bridge.mapping.compiler import compile_field
from bridge.mapping.mappingset import compile_document
from bridge.routing import Rendered, render_event
from bridge.vendors import base
from bridge.yamlfile import load_yaml
from tests.lenient_threads import lenient_threads

LOOP = compile_field("f", "{% for i in range(3) %}{{ i }}{% endfor %}")
PLAIN = compile_field("f", "plain text")
HTML = compile_field("f", {"from": "payload.html", "transform": ["html_to_text"]})
UPPER = compile_field("f", {"from": "payload.html", "transform": ["strip", "upper"]})


def render_recording(threads: list[str], field: Any, payload: dict[str, Any] | None = None) -> Any:
    threads.append(threading.current_thread().name)
    return field({"payload": payload or {}, "headers": {}, "event": {}, "vars": {}})


async def test_a_render_within_its_slice_stays_on_the_loop() -> None:
    threads: list[str] = []
    with capture_logs() as logs:
        out = await offload.render_sliced(render_recording, threads, LOOP,
                                          what="test")
    assert out == "012"
    assert threads == [threading.current_thread().name]
    assert logs == []


async def test_a_render_past_its_slice_is_begun_again_in_the_parser_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the slice (here over before it starts), the render stops at its first check and is run again, whole,
    in the parser thread, where no slice holds; one line says so."""
    monkeypatch.setattr(offload, "LOOP_SLICE_S", -1.0)
    threads: list[str] = []
    with capture_logs() as logs:
        out = await offload.render_sliced(render_recording, threads, LOOP,
                                          what="test", delivery_id="dlv_1")
    assert out == "012"
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("ticketbridge-parse") and len(threads) == 2
    assert [(e["event"], e["what"], e["delivery_id"]) for e in logs] == [("render.offloaded", "test", "dlv_1")]


async def test_a_render_that_looks_at_no_clock_is_never_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a look at the clock ends a slice: a render that takes none (plain text, filters on small values)
    finishes on the loop even past it; it takes microseconds."""
    monkeypatch.setattr(offload, "LOOP_SLICE_S", -1.0)
    for field, out in ((PLAIN, "plain text"), (UPPER, "<P>SMALL</P>")):
        threads: list[str] = []
        assert await offload.render_sliced(render_recording, threads, field, {"html": "<p>small</p>"},
                                           what="test") == out
        assert len(threads) == 1


async def test_a_render_without_templates_past_its_slice_is_begun_again_in_the_parser_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A mapping field without Jinja (a path and its filters) looks at the slice too, after a filter on a value that
    is not small: past it, the render is begun again in the parser thread. Before, only templates looked, and such a
    field held the loop for as long as its filters took (a 61 KB description: /healthz waited 174 ms)."""
    monkeypatch.setattr(offload, "LOOP_SLICE_S", -1.0)
    threads: list[str] = []
    html = "<p>Fibre cut near <b>MG Road</b>.</p>" * 100
    with capture_logs() as logs:
        out = await offload.render_sliced(render_recording, threads, HTML, {"html": html}, what="test")
    assert out.startswith("Fibre cut near MG Road.\n\nFibre cut")
    assert threads[0] == threading.current_thread().name
    assert threads[1].startswith("ticketbridge-parse") and len(threads) == 2
    assert [e["event"] for e in logs] == ["render.offloaded"]


async def test_a_render_without_templates_in_the_parser_thread_stops_at_the_render_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped partner-to-kapture mapping has no Jinja field. Past its loop slice it ran again in the parser thread
    with no budget at all: a filter costly on a large value held that thread (and every large parse and render queued
    behind it) for as long as it took. Now it runs there under the budget a template gets, and stops with the limit
    error naming the field (here a budget over once it begins)."""
    monkeypatch.setattr(offload, "LOOP_SLICE_S", -1.0)
    monkeypatch.setattr(limits, "TIME_BUDGET_S", 0.0)
    root = Path(__file__).parents[3]
    partner, errors = compile_document(load_yaml((root / "mappings" / "partner-to-kapture.yaml").read_text(),
                                                 "partner-to-kapture.yaml"),
                                       "partner-to-kapture", "v1", {"partner-api"},
                                       {"demo-kapture": frozenset({"create_ticket"})})
    assert errors == [] and partner is not None
    html = "<p>Fibre cut near <b>MG Road</b>.</p>" * 200  # 8 KB: a filter on it looks at the clock
    context = {"payload": {"id": "p-1", "title": "Outage", "description_html": html}, "headers": {}, "event": {},
               "vars": {}}
    threads: list[str] = []

    def render(mapping: Any, ctx: dict[str, Any]) -> Rendered:
        threads.append(threading.current_thread().name)
        return render_event(mapping, ctx, "evt_1")

    with capture_logs() as logs:
        rendered = await offload.render_sliced(render, partner, context, what="test")
    assert threads[1].startswith("ticketbridge-parse") and len(threads) == 2
    assert rendered.error == ("partner-to-kapture.ticket_details: transform html_to_text: render budget of 0 ms "
                              "exceeded in field ticket_details")
    assert [e["event"] for e in logs] == ["render.offloaded", "routing.render_failed"]


def test_a_process_exits_though_the_lookups_thread_is_busy_and_more_queued() -> None:
    """The LOOKUPS thread holds no stop: a process whose look-up read never ends, with another queued behind
    it, still exits once its main thread is done. Before, its worker was joined at exit and the process waited
    out every read queued (a look-up that took minutes kept a SIGTERM'd server up for as long)."""
    script = textwrap.dedent("""
        import sys, threading
        from bridge import offload
        started = threading.Event()
        def read_forever():
            started.set()
            threading.Event().wait()
        offload.LOOKUPS.submit(read_forever)
        offload.LOOKUPS.submit(print, "queued read ran")
        assert started.wait(30)
        print("main done", flush=True)
    """)
    root = str(Path(__file__).parents[3])
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=30,
                          cwd=root, env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "main done\n"


async def test_a_lookup_read_runs_in_the_lookups_thread_and_gives_its_value_or_its_error() -> None:
    def read(body: bytes) -> str:
        if body.startswith(b"!"):
            raise ValueError("bad answer")
        return threading.current_thread().name

    assert await offload.read_answer_off_loop(read, b"x" * (offload.SMALL_ANSWER_BYTES + 1)) == "ticketbridge-lookup"
    with pytest.raises(ValueError, match="bad answer"):
        await offload.read_answer_off_loop(read, b"!" * (offload.SMALL_ANSWER_BYTES + 1))


def answer_of(size: int, last: bytes) -> bytes:
    """A JSON object of `size` bytes whose one text ends with `last`: `"e"` reads strictly, `"\\xe9"` (a Latin-1
    byte, not UTF-8) only leniently."""
    head, end = b'{"ticket_id": "T-7", "pad": "', last + b'"}'
    return head + b"x" * (size - len(head) - len(end)) + end


@pytest.mark.parametrize(("size", "lenient_in"), [
    (offload.LOOP_ANSWER_BYTES, "MainThread"),
    (offload.LOOP_ANSWER_BYTES + 1, "ticketbridge-lookup"),
    (offload.SMALL_ANSWER_BYTES, "ticketbridge-lookup"),
], ids=["at-the-loop-s-share", "past-it", "small-answer-bound"])
async def test_a_lookup_answer_msgspec_refuses_is_read_leniently_on_the_loop_only_when_short(
        monkeypatch: pytest.MonkeyPatch, size: int, lenient_in: str) -> None:
    """A look-up (or token) answer read on the loop for its length (up to SMALL_ANSWER_BYTES) is read leniently
    there only up to LOOP_ANSWER_BYTES (about 3 ms at most); a longer one msgspec refuses is read again, from the
    start, in the LOOKUPS thread, where the lenient read (up to 12 ms for 64 KiB) holds no callback of the loop.
    Either way its value is the same."""
    lenient = lenient_threads(monkeypatch)
    body = answer_of(size, b"\xe9")
    assert len(body) == size
    value = await offload.read_answer_off_loop(base.decode_json, body)
    assert lenient == [lenient_in]
    assert value == {"ticket_id": "T-7", "pad": "x" * body.count(b"x") + "\\xe9"}


async def test_a_lookup_answer_read_strictly_on_the_loop_takes_no_thread() -> None:
    """An answer up to SMALL_ANSWER_BYTES that msgspec reads is read once, on the loop: no thread hop."""
    threads: list[str] = []

    def read(body: bytes) -> Any:
        threads.append(threading.current_thread().name)
        return base.decode_json(body)

    body = answer_of(offload.SMALL_ANSWER_BYTES, b"e")
    assert (await offload.read_answer_off_loop(read, body))["ticket_id"] == "T-7"
    assert threads == ["MainThread"]
