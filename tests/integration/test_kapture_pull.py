"""`ticketbridge kapture pull` against the Kapture simulator: one call per 24-hour window (more when paging),
every ticket written once, and a clean resume after a failed window."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections import Counter
from datetime import date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import pytest

from bridge.cli import main
from bridge.cli.kapture import Output, Puller, PullFailed, progress_bar, pull_range
from bridge.delivery.ratelimit import Unlimited
from bridge.simulators.faults import Faults
from bridge.simulators.kapture import KaptureSimulator
from bridge.vendors.kapture import PULL_PATH, KaptureAdapter, KaptureOptions

pytestmark = pytest.mark.integration

# Tickets per day: the 18th and 22nd lie outside the pulled range; the 20th has none.
PER_DAY = {18: 2, 19: 5, 20: 0, 21: 3, 22: 1}
RANGE = ["--from", "2024-04-19", "--to", "2024-04-21"]


def seeded(**kwargs: Any) -> KaptureSimulator:
    sim = KaptureSimulator(**kwargs)
    for day, count in PER_DAY.items():
        for n in range(count):
            sim.seed(f"ticket {day}.{n}", datetime(2024, 4, day, 1 + n * 5, 30))
    return sim


def expected_titles() -> list[str]:
    return [f"ticket {day}.{n}" for day in (19, 20, 21) for n in range(PER_DAY[day])]


async def serve(aiohttp_server: Any, sim: KaptureSimulator, tmp_path: Path, extra: str = "") -> Path:
    server = await aiohttp_server(sim.app())
    config = tmp_path / "bridge.yaml"
    config.write_text(f"""
destinations:
  kapture: {{vendor: kapture, base_url: "{server.make_url('')}", token: sandbox-token{extra}}}
  lsq: {{vendor: leadsquared, sandbox: true}}
""")
    (tmp_path / "mappings").mkdir(exist_ok=True)
    return config


async def pull(config: Path, *args: str) -> int:
    """Run the CLI in a worker thread (it runs its own event loop) while the simulator serves on this one."""
    return await asyncio.to_thread(main, ["kapture", "pull", "-c", str(config), "--destination", "kapture", *args])


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def within_24_hours(pulls: list[dict[str, Any]]) -> bool:
    return all(p["start_date"] == p["end_date"] for p in pulls)


async def test_three_days_are_three_calls_each_within_24_hours(aiohttp_server: Any, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Pulling three days makes one call per day, each for one day only, and writes each of its tickets once."""
    sim = seeded()
    config = await serve(aiohttp_server, sim, tmp_path)
    out = tmp_path / "tickets.jsonl"
    assert await pull(config, *RANGE, "--out", str(out)) == 0
    assert [(p["start_date"], p["end_date"]) for p in sim.pulls] == [
        ("2024-04-19", "2024-04-19"), ("2024-04-20", "2024-04-20"), ("2024-04-21", "2024-04-21")]
    assert [t["taskTitle"] for t in lines(out)] == expected_titles()
    assert not (tmp_path / "tickets.jsonl.progress").exists()
    assert capsys.readouterr().err.strip() == f"pulled 8 tickets over 3 days in 3 calls into {out}"


async def test_an_account_that_wants_an_object_is_asked_again_and_remembered(
        aiohttp_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An account answering the documented array with "Invalid Json … object format" is asked again with an
    object, and every later day goes as an object at once: one call more in all."""
    sim = seeded(pull_refuses_array=True)
    config = await serve(aiohttp_server, sim, tmp_path)
    out = tmp_path / "tickets.jsonl"
    assert await pull(config, *RANGE, "--out", str(out)) == 0
    assert [t["taskTitle"] for t in lines(out)] == expected_titles()
    assert len(sim.pulls) == 3 and sim.requests == 4
    assert "in 4 calls" in capsys.readouterr().err


async def test_an_account_whose_limit_is_a_size_is_paged_by_offset(aiohttp_server: Any, tmp_path: Path) -> None:
    """An account that reads `limit` as a page size answers page 2 (limit 2) with page 1's ticket again: the
    pull starts the day again paging by `offset` + `limit`, keeps to it for later days, and writes each
    ticket once."""
    sim = seeded(pagination_enabled=True, limit_semantics="size")
    config = await serve(aiohttp_server, sim, tmp_path)
    out = tmp_path / "t.jsonl"
    assert await pull(config, *RANGE, "--paged", "--out", str(out)) == 0
    assert [(p["start_date"][-2:], p.get("offset"), p["limit"]) for p in sim.pulls][:4] == [
        ("19", None, 1), ("19", None, 2), ("19", 0, 100), ("20", 0, 100)]
    assert [t["taskTitle"] for t in lines(out)] == expected_titles()


async def test_without_out_the_tickets_go_to_stdout(aiohttp_server: Any, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """With no --out, each ticket is one JSON line on stdout."""
    config = await serve(aiohttp_server, seeded(), tmp_path)
    assert await pull(config, *RANGE) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [t["taskTitle"] for t in printed] == expected_titles()


async def test_paging_asks_page_by_page_until_the_total(aiohttp_server: Any, tmp_path: Path) -> None:
    """With --paged, a day is asked page by page (`limit` 1, 2, …) until totalCount is reached, each page one day."""
    sim = seeded(pagination_enabled=True, page_size=2)
    config = await serve(aiohttp_server, sim, tmp_path)
    out = tmp_path / "t.jsonl"
    assert await pull(config, *RANGE, "--paged", "--out", str(out)) == 0
    assert [(p["start_date"][-2:], p["limit"]) for p in sim.pulls] == [
        ("19", 1), ("19", 2), ("19", 3), ("20", 1), ("21", 1), ("21", 2)]
    assert within_24_hours(sim.pulls)
    assert [t["taskTitle"] for t in lines(out)] == expected_titles()


async def test_paging_against_an_account_without_pagination_stops(aiohttp_server: Any, tmp_path: Path) -> None:
    """If the API ignores `limit` and repeats the whole day, paging stops at the first page with nothing new."""
    sim = seeded()
    config = await serve(aiohttp_server, sim, tmp_path)
    out = tmp_path / "t.jsonl"
    assert await pull(config, *RANGE, "--paged", "--out", str(out)) == 0
    assert Counter(p["start_date"] for p in sim.pulls) == {"2024-04-19": 2, "2024-04-21": 2, "2024-04-20": 1}
    assert [t["taskTitle"] for t in lines(out)] == expected_titles()


async def test_next_day_end_dates_keep_each_day_to_itself(aiohttp_server: Any, tmp_path: Path) -> None:
    """For an API that reads end_date as exclusive, each call asks start to the next day, and each ticket is once."""
    sim = seeded(end_date_inclusive=False)
    config = await serve(aiohttp_server, sim, tmp_path, ", pull_end_date: next_day")
    out = tmp_path / "t.jsonl"
    assert await pull(config, *RANGE, "--out", str(out)) == 0
    assert [(p["start_date"], p["end_date"]) for p in sim.pulls] == [
        ("2024-04-19", "2024-04-20"), ("2024-04-20", "2024-04-21"), ("2024-04-21", "2024-04-22")]
    assert [t["taskTitle"] for t in lines(out)] == expected_titles()


async def test_a_failed_window_resumes_cleanly(aiohttp_server: Any, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """When a day fails, the days before it are kept; the same command later pulls only what is left, each ticket
    once."""
    sim = seeded()
    sim.faults = Faults(after=1, fail_count=-1, fail_status=500)  # the first day comes, then the vendor fails
    config = await serve(aiohttp_server, sim, tmp_path)
    out = tmp_path / "t.jsonl"
    progress = tmp_path / "t.jsonl.progress"
    assert await pull(config, *RANGE, "--out", str(out), "--retries", "0") == 1
    err = capsys.readouterr().err
    assert "pull failed on 2024-04-20: retry: HTTP 500: simulated outage (after 1 tries); 1 of 3 days done; " \
           "run the same command again to resume" in err
    assert [t["taskTitle"] for t in lines(out)] == expected_titles()[:5]
    assert json.loads(progress.read_text())["done"] == ["2024-04-19"]

    sim.faults = Faults()
    sim.pulls.clear()
    assert await pull(config, *RANGE, "--out", str(out)) == 0
    assert [p["start_date"] for p in sim.pulls] == ["2024-04-20", "2024-04-21"]
    assert [t["taskTitle"] for t in lines(out)] == expected_titles()
    assert not progress.exists()
    assert "resumed after 1 days" in capsys.readouterr().err


async def test_a_day_written_but_not_marked_done_is_not_written_twice(aiohttp_server: Any, tmp_path: Path) -> None:
    """If the run stopped after writing a day but before marking it done, resuming pulls it again but writes
    none of its tickets twice."""
    sim = seeded()
    config = await serve(aiohttp_server, sim, tmp_path)
    out = tmp_path / "t.jsonl"
    assert await pull(config, *RANGE, "--out", str(out)) == 0
    query = {"destination": "kapture", "from": "2024-04-19", "to": "2024-04-21"}
    (tmp_path / "t.jsonl.progress").write_text(json.dumps({"query": query, "done": ["2024-04-19"]}))
    assert await pull(config, *RANGE, "--out", str(out)) == 0
    titles = [t["taskTitle"] for t in lines(out)]
    assert titles == expected_titles()


async def test_a_line_cut_short_by_a_stop_is_dropped_on_resume(aiohttp_server: Any, tmp_path: Path) -> None:
    """A run stopped in the middle of writing a line leaves it cut short; resuming drops it and writes every
    ticket once, each on its own line."""
    config = await serve(aiohttp_server, seeded(), tmp_path)
    out = tmp_path / "t.jsonl"
    assert await pull(config, *RANGE, "--out", str(out)) == 0
    whole = out.read_text().splitlines(keepends=True)
    out.write_text("".join(whole[:2]) + whole[2][:15])  # the third line of the 19th cut in the middle
    query = {"destination": "kapture", "from": "2024-04-19", "to": "2024-04-21"}
    (tmp_path / "t.jsonl.progress").write_text(json.dumps({"query": query, "done": []}))
    assert await pull(config, *RANGE, "--out", str(out)) == 0
    assert [t["taskTitle"] for t in lines(out)] == expected_titles()


@pytest.mark.parametrize(("progress", "lines_written", "message"), [
    ("not json", "", "t.jsonl.progress is not a pull's progress (a JSON object); delete "),
    ("[1]", "", "t.jsonl.progress is not a pull's progress (a JSON object); delete "),
    (None, '{"ticketId": "1"}\nnot json\n', "t.jsonl:2: not a JSON line of a pull; delete "),
    (None, '{"ticketId": "1"}\n[2]\n', "t.jsonl:2: not a JSON line of a pull; delete "),
])
def test_an_unreadable_output_or_progress_is_refused_naming_the_file(tmp_path: Path, progress: str | None,
                                                                     lines_written: str, message: str) -> None:
    """A progress file or an output line that cannot be read is an error naming the file (and line), saying how
    to start over, rather than a traceback."""
    query = {"destination": "kapture", "from": "2024-04-19", "to": "2024-04-21"}
    out = tmp_path / "t.jsonl"
    out.write_text(lines_written)
    (tmp_path / "t.jsonl.progress").write_text(progress or json.dumps({"query": query, "done": []}))
    with pytest.raises(ValueError, match="pull from the start") as info:
        Output.open(str(out), query)
    assert message in str(info.value)


async def test_an_unfinished_pull_of_another_range_is_not_mixed_in(aiohttp_server: Any, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """An output file holding an unfinished pull of another range is refused rather than appended to."""
    config = await serve(aiohttp_server, seeded(), tmp_path)
    out = tmp_path / "t.jsonl"
    (tmp_path / "t.jsonl.progress").write_text(json.dumps({"query": {"destination": "kapture", "from": "2024-01-01",
                                                                     "to": "2024-01-02"}, "done": []}))
    assert await pull(config, *RANGE, "--out", str(out)) == 2
    assert "belongs to an unfinished pull" in capsys.readouterr().err


async def test_a_bad_key_stops_at_once(aiohttp_server: Any, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """"Invalid Auth Key" ends the pull on the first call, without retries, saying so."""
    sim = seeded(tokens={"other"})
    config = await serve(aiohttp_server, sim, tmp_path)
    assert await pull(config, *RANGE, "--out", str(tmp_path / "t.jsonl")) == 1
    assert len(sim.pulls) == 0
    assert sim.requests == 1
    assert "pull failed on 2024-04-19: auth: kapture: Invalid Auth Key" in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--destination", "nope", *RANGE], "--destination: no destination 'nope'; kapture destinations: kapture"),
    (["--destination", "lsq", *RANGE], "--destination: 'lsq' is a leadsquared destination, not kapture"),
    (["--destination", "kapture", "--from", "19-04-2024", "--to", "2024-04-21"], "--from '19-04-2024' is not a date"),
    (["--destination", "kapture", "--from", "2024-04-21", "--to", "2024-04-19"],
     "--to 2024-04-19 is before --from 2024-04-21"),
])
async def test_bad_arguments_are_refused(aiohttp_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         args: list[str], message: str) -> None:
    """A destination that is not Kapture, or dates that are not a range, exit 2 naming the problem."""
    config = await serve(aiohttp_server, seeded(), tmp_path)
    code = await asyncio.to_thread(main, ["kapture", "pull", "-c", str(config), *args])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("args", "message"), [
    (["--retries", "-1"], "argument --retries: '-1' is not a whole number >= 0"),
    (["--retries", "two"], "argument --retries: 'two' is not a whole number >= 0"),
    (["--max-pages", "0"], "argument --max-pages: '0' is not a whole number >= 1"),
])
def test_bad_counts_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                message: str) -> None:
    """A negative retry count or no pages at all exits 2 naming the option, the value and the least allowed."""
    with pytest.raises(SystemExit) as info:
        main(["kapture", "pull", "-c", str(tmp_path / "bridge.yaml"), "--destination", "kapture", *RANGE, *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("status", "least_wait"), [(503, 0.0), (429, 1.0)])
async def test_a_passing_failure_is_retried_within_the_window(aiohttp_server: Any, status: int,
                                                              least_wait: float) -> None:
    """A 503 or 429 on a day's call is tried again (after a 429, no sooner than the limiter's window), and the
    day still comes whole."""
    sim = seeded()
    sim.faults = Faults(fail_count=1, fail_status=status)
    server = await aiohttp_server(sim.app())
    adapter = KaptureAdapter("k", KaptureOptions(vendor="kapture", sandbox=True), str(server.make_url("")))
    async with aiohttp.ClientSession() as session:
        puller = Puller(session, adapter, Unlimited(), retries=3, backoff_s=0.01)
        tickets = await puller.day(date(2024, 4, 19))
    assert len(tickets) == 5
    assert puller.calls == 2
    first, second = sim.received.times()
    assert second - first >= least_wait


async def test_a_window_that_never_ends_paging_is_refused(aiohttp_server: Any) -> None:
    """An API that keeps giving new tickets page after page stops at --max-pages with a clear error."""
    sim = seeded(pagination_enabled=True, page_size=1)
    server = await aiohttp_server(sim.app())
    adapter = KaptureAdapter("k", KaptureOptions(vendor="kapture", sandbox=True), str(server.make_url("")))
    async with aiohttp.ClientSession() as session:
        puller = Puller(session, adapter, Unlimited(), paged=True, max_pages=3)
        with pytest.raises(PullFailed, match="2024-04-19: still more tickets after 3 pages"):
            await pull_range(puller, [date(2024, 4, 19)], Output(io.StringIO()), on_day=lambda *_: None)


def test_progress_bar_draws_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal, the bar shows days done of all and tickets so far, ending the line when complete."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)
    progress_bar(1, 3, 5)
    progress_bar(3, 3, 8)
    assert screen.getvalue() == ("\r[##########....................] 1/3 days  5 tickets"
                                 "\r[##############################] 3/3 days  8 tickets\n")


async def test_a_failure_that_outlasts_the_retries_names_the_tries(aiohttp_server: Any) -> None:
    """With --retries 2 and a vendor failing every call, a day is asked three times, then fails saying so."""
    sim = seeded()
    sim.faults = Faults(fail_count=-1, fail_status=502)
    server = await aiohttp_server(sim.app())
    adapter = KaptureAdapter("k", KaptureOptions(vendor="kapture", sandbox=True), str(server.make_url("")))
    async with aiohttp.ClientSession() as session:
        puller = Puller(session, adapter, Unlimited(), retries=2, backoff_s=0.01)
        with pytest.raises(PullFailed, match=r"^2024-04-19: retry: HTTP 502: .* \(after 3 tries\)$"):
            await puller.day(date(2024, 4, 19))
    assert puller.calls == 3
    assert len(sim.received.times()) == 3


async def test_an_endless_answer_fails_the_day_at_the_cap(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A pull answered with a body that never ends (or inflates without end) is read up to the cap, not into
    memory until the timeout: the day fails at once, naming the cap and what to do."""
    monkeypatch.setattr("bridge.cli.kapture.ANSWER_MAX_BYTES", 1 << 20, raising=False)
    app = aiohttp.web.Application()

    async def endless(request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        resp = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        with contextlib.suppress(ConnectionError):
            while True:
                await resp.write(b'[{"status": "success", "message": [' + b" " * 65536)
        return resp

    app.router.add_post(PULL_PATH, endless)
    server = await aiohttp_server(app)
    adapter = KaptureAdapter("k", KaptureOptions(vendor="kapture", base_url=str(server.make_url("")), token="t",
                                                 timeout_seconds=600), str(server.make_url("")))
    async with aiohttp.ClientSession() as session:
        puller = Puller(session, adapter, Unlimited(), retries=0)
        with pytest.raises(PullFailed, match=r"^2024-04-19: permanent: kapture: HTTP 200 with an answer longer "
                                             r"than 1 MiB, more than a pull reads: pull with --paged"):
            await asyncio.wait_for(puller.day(date(2024, 4, 19)), timeout=30)


async def test_a_refusal_quoting_the_key_prints_it_redacted(aiohttp_server: Any, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Kapture refusing the pull by quoting the Auth Key it was sent: the failure printed names the refusal with
    the key redacted."""
    async def refuse(request: aiohttp.web.Request) -> aiohttp.web.Response:
        key = request.headers["Authorization"].removeprefix("Basic ")
        return aiohttp.web.json_response({"status": "failed", "message": f"Invalid Auth Key {key}"})

    app = aiohttp.web.Application()
    app.router.add_post(PULL_PATH, refuse)
    server = await aiohttp_server(app)
    config = tmp_path / "bridge.yaml"
    config.write_text(f"""
destinations:
  kapture: {{vendor: kapture, base_url: "{server.make_url('')}", token: kpt_9f8e7d6c5b4a3f2e1d0c}}
""")
    (tmp_path / "mappings").mkdir()
    assert await pull(config, *RANGE) == 1
    err = capsys.readouterr().err
    assert "kpt_9f8e7d6c5b4a3f2e1d0c" not in err
    assert "pull failed on 2024-04-19: auth: kapture: Invalid Auth Key [redacted]" in err
