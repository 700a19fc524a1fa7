"""`ticketbridge kapture pull`: the tickets a Kapture destination created between two dates, one API call
per 24-hour window (more when paging), written once each as JSON lines.

With `--out FILE`, each finished day is recorded in `FILE.progress`; after a failed window the same
command resumes from it, and tickets already in FILE are not written again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, Any, cast

import aiohttp
import msgspec
from aiohttp_retry import RetryClient, RetryOptionsBase

from bridge import USER_AGENT
from bridge.cli.common import at_least, config_from
from bridge.cli.serve import _loopback
from bridge.config import Config
from bridge.delivery.ratelimit import Limiter, acquire, make_limiter
from bridge.delivery.sender import TRANSPORT_ERRORS, transport_failure
from bridge.errors import named
from bridge.vendors.base import Outcome, read_capped
from bridge.vendors.kapture import KaptureAdapter, KaptureOptions
from bridge.vendors.kapture_pull import (
    PullPage,
    day_windows,
    limit_is_a_size,
    parse_day,
    parse_pull,
    pull_request,
    refuses_array,
    ticket_day,
    ticket_key,
)

MAX_BACKOFF_S = 60.0
ANSWER_MAX_BYTES = 32 * 1024 * 1024  # a day's answer, at most (as a reconciliation's pull); a longer one fails the day


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    k = sub.add_parser("kapture", help="Kapture CRM tools")
    ksub = k.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = ksub.add_parser("pull", parents=[common], help="pull the tickets created between two dates, one call "
                                                        "per 24-hour window, as JSON lines")
    p.add_argument("--destination", required=True, help="a kapture destination of the config")
    p.add_argument("--from", dest="start", required=True, metavar="DATE", help="first day, YYYY-MM-DD")
    p.add_argument("--to", dest="end", required=True, metavar="DATE", help="last day (included), YYYY-MM-DD")
    p.add_argument("--out", metavar="FILE.jsonl", help="write here (resumable) instead of stdout")
    p.add_argument("--paged", action="store_true", help="ask page by page with `limit` (accounts with "
                                                         "pagination enabled)")
    p.add_argument("--max-pages", type=at_least(1), default=1000, help="per day, a guard against endless paging")
    p.add_argument("--retries", type=at_least(0), default=3, help="tries again per call after a timeout, 429 "
                                                                    "or 5xx")
    p.set_defaults(run=run_pull)



class PullFailed(Exception):
    """A window that could not be pulled; the message names the day and the vendor's answer."""


class PullRetry(RetryOptionsBase):
    """When a pull call is tried again (through aiohttp-retry): after a timeout, a connection failure or an
    answer Kapture's rules call passing (a 429, a 5xx), waiting `backoff_s`, doubled per try, up to
    MAX_BACKOFF_S, and never less than a Retry-After; a 429 also pauses the rate limiter that long."""

    def __init__(self, attempts: int, backoff_s: float, limiter: Limiter) -> None:
        super().__init__(attempts=attempts, exceptions=set(TRANSPORT_ERRORS), retry_all_server_errors=False,
                         evaluate_response_callback=self._final)
        self.backoff_s = backoff_s
        self.limiter = limiter
        self.retry_after: float | None = None
        self._read: tuple[aiohttp.ClientResponse, PullPage] | None = None

    async def answer(self, response: aiohttp.ClientResponse) -> PullPage:
        """What `response` holds, its body read once (here, or when it was judged final) and at most
        ANSWER_MAX_BYTES of it: a longer answer, or one that inflates past that, fails the day saying so."""
        if self._read is not None and self._read[0] is response:
            return self._read[1]
        body, cut = await read_capped(response, ANSWER_MAX_BYTES)
        if cut:
            page = PullPage(outcome=Outcome(
                classification="permanent",
                error=f"kapture: HTTP {response.status} with an answer longer than {ANSWER_MAX_BYTES >> 20} MiB, "
                      "more than a pull reads: pull with --paged, so that each call answers one page"))
        else:
            page = parse_pull(response.status, response.headers, body)
        self._read = (response, page)
        return page

    async def _final(self, response: aiohttp.ClientResponse) -> bool:
        """Whether an answer ends the call (success, or a failure not worth another try)."""
        outcome = (await self.answer(response)).outcome
        self.retry_after = outcome.retry_after
        return bool(outcome.classification != "retry")

    def get_timeout(self, attempt: int, response: aiohttp.ClientResponse | None = None) -> float:
        wait = min(MAX_BACKOFF_S, max(self.backoff_s * 2 ** (attempt - 1),
                                      (self.retry_after or 0.0) if response is not None else 0.0))
        if response is not None and response.status == 429:
            self.limiter.pause(max(wait, self.limiter.window))
        return float(wait)


@dataclass
class Puller:
    """The I/O of a pull: calls (rate-limited, retried when the failure is passing) and paging."""

    session: aiohttp.ClientSession
    adapter: KaptureAdapter
    limiter: Limiter
    paged: bool = False
    max_pages: int = 1000
    retries: int = 3
    backoff_s: float = 1.0
    calls: int = 0
    _tries: str = ""

    async def request(self, method: str, url: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        """One try of a call, as the retrying client makes it: after the rate limiter's slot, and counted."""
        await acquire(self.limiter)
        self.calls += 1
        return await self.session.request(method, url, **kwargs)

    async def _call(self, day: date, page: int | None) -> PullPage:
        answer = await self._try(day, page)
        if refuses_array(self.adapter, answer.outcome):  # the account wants an object: ask again, and so from now on
            answer = await self._try(day, page)
        outcome = answer.outcome
        if outcome.classification == "success":
            return answer
        raise PullFailed(f"{day.isoformat()}{f' page {page}' if page else ''}: "
                         f"{outcome.classification}: {outcome.error}{self._tries}")

    async def _try(self, day: date, page: int | None) -> PullPage:
        """One call, retried while its failure is passing; `_tries` says how many it took."""
        request = pull_request(self.adapter, day, page)
        timeout_s = self.adapter.config.timeout_seconds
        retry = PullRetry(self.retries + 1, self.backoff_s, self.limiter)
        before = self.calls
        try:
            # aiohttp-retry calls only `.request` of the session it is given: this Puller's, paced and counted.
            paced = RetryClient(client_session=cast(aiohttp.ClientSession, self), retry_options=retry)
            async with paced.request(
                    # bytes, never a stream (`request_data`): aiohttp-retry sends the same data again on a retry,
                    # and a stream read to its end would go out empty.
                    request.method, request.url, headers=request.headers, data=request.body,
                    allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                answer = await retry.answer(resp)
        except TRANSPORT_ERRORS as exc:
            answer = PullPage(outcome=transport_failure(exc, timeout_s))
        retried = answer.outcome.classification == "retry"
        self._tries = f" (after {self.calls - before} tries)" if retried else ""
        return answer

    async def day(self, day: date) -> list[dict[str, Any]]:
        """Every ticket created on `day`, each once, in the order the API gave them."""
        kept: dict[str, dict[str, Any]] = {}
        seen: set[str] = set()
        received = 0
        page = 1 if self.paged else None
        while True:
            answer = await self._call(day, page)
            if limit_is_a_size(self.adapter, page, answer.tickets, seen):
                kept, seen, received, page = {}, set(), 0, 1  # the account pages by offset: start the day again
                continue
            received += len(answer.tickets)
            new = 0
            for ticket in answer.tickets:
                key = ticket_key(ticket) or msgspec.json.encode(ticket).decode()
                if key in seen:
                    continue
                seen.add(key)
                new += 1
                created = ticket_day(ticket)
                if created is None or created == day:  # with end_date the day after, the API gives two days
                    kept[key] = ticket
            if page is None or new == 0 or (answer.total is not None and received >= answer.total):
                return list(kept.values())
            if page >= self.max_pages:
                raise PullFailed(f"{day.isoformat()}: still more tickets after {self.max_pages} pages "
                                 "(raise --max-pages)")
            page += 1


@dataclass
class Output:
    """Where tickets go: stdout, or a file whose `.progress` twin records the finished days."""

    out: IO[str]
    progress: Path | None = None
    query: dict[str, Any] = field(default_factory=dict)
    done: list[str] = field(default_factory=list)
    written: set[str] = field(default_factory=set)

    @classmethod
    def open(cls, path: str | None, query: dict[str, Any]) -> Output:
        """Raises ValueError when FILE holds an unfinished pull of another query."""
        if path is None:
            return cls(sys.stdout, query=query)
        target = Path(path)
        progress = target.with_name(target.name + ".progress")
        if not progress.exists():
            out = target.open("w", encoding="utf-8")
            result = cls(out, progress, query)
            result._save()
            return result
        start_over = f"delete {target} and {progress} to pull from the start"
        try:
            state = msgspec.json.decode(progress.read_bytes(), type=dict[str, Any])
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise ValueError(f"{progress} is not a pull's progress (a JSON object); {start_over}") from None
        if state.get("query") != query:
            raise ValueError(f"{progress} belongs to an unfinished pull ({state.get('query')}); run that again "
                             f"to finish it, or {start_over}")
        text = target.read_text(encoding="utf-8") if target.exists() else ""
        if text and not text.endswith("\n"):
            # A line cut short by a stop in the middle of a write: its day is not done, so it is pulled again.
            text = text[:text.rfind("\n") + 1]
            with target.open("r+b") as cut:
                cut.truncate(len(text.encode()))
        written = set()
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    ticket = msgspec.json.decode(line, type=dict[str, Any])
                except (msgspec.DecodeError, msgspec.ValidationError):
                    raise ValueError(f"{target}:{number}: not a JSON line of a pull; {start_over}") from None
                written.add(ticket_key(ticket) or line)
        return cls(target.open("a", encoding="utf-8"), progress, query, list(state.get("done", [])), written)

    def _save(self) -> None:
        assert self.progress is not None
        tmp = self.progress.with_name(self.progress.name + ".tmp")
        tmp.write_bytes(msgspec.json.encode({"query": self.query, "done": self.done}))
        os.replace(tmp, self.progress)

    def write_day(self, day: date, tickets: list[dict[str, Any]]) -> int:
        """Write the day's tickets not yet written, then mark the day done; returns how many were new."""
        new = 0
        for ticket in tickets:
            line = msgspec.json.encode(ticket).decode()
            key = ticket_key(ticket) or line
            if key not in self.written:
                self.written.add(key)
                self.out.write(line + "\n")
                new += 1
        self.out.flush()
        self.done.append(day.isoformat())
        if self.progress is not None:
            os.fsync(self.out.fileno())
            self._save()
        return new

    def finish(self) -> None:
        """Every day is written: the pull needs no resuming."""
        if self.progress is not None:
            self.progress.unlink(missing_ok=True)

    def close(self) -> None:
        if self.progress is not None:
            self.out.close()


def progress_bar(done: int, total: int, tickets: int) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    filled = int(width * done / total) if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} days  {tickets} tickets")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


async def pull_range(puller: Puller, days: list[date], output: Output,
                     on_day: Callable[[int, int, int], None] = progress_bar) -> int:
    """Pull each day not yet done into `output`; returns the number of tickets written by this run."""
    written = 0
    for n, day in enumerate(days, 1):
        if day.isoformat() not in output.done:
            written += output.write_day(day, await puller.day(day))
        on_day(n, len(days), len(output.written))
    return written


def _adapter(config: Config, name: str) -> KaptureAdapter:
    """The destination's adapter; ValueError naming the choices when it is not a kapture destination."""
    dest = config.destinations.get(name)
    choices = ", ".join(sorted(n for n, d in config.destinations.items() if d.vendor == "kapture")) or "(none)"
    if dest is None:
        raise ValueError(f"--destination: no destination {named(name)}; kapture destinations: {choices}")
    if not isinstance(dest, KaptureOptions):
        raise ValueError(f"--destination: {name!r} is a {dest.vendor} destination, not kapture; "
                         f"kapture destinations: {choices}")
    if dest.own_sandbox:  # the sandbox lives in the running server
        base = f"http://{_loopback(config.server.host)}:{config.server.port}/sandbox/kapture"
    else:
        assert dest.base_url is not None
        base = dest.base_url
    return KaptureAdapter(name, dest, base)


def run_pull(args: argparse.Namespace) -> int:
    config = config_from(args)
    if config is None:
        return 2
    try:
        adapter = _adapter(config, args.destination)
        start, end = parse_day(args.start, "--from"), parse_day(args.end, "--to")
        days = day_windows(start, end)
        query = {"destination": args.destination, "from": start.isoformat(), "to": end.isoformat()}
        output = Output.open(args.out, query)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2

    async def run() -> int:
        async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}) as session:
            puller = Puller(session, adapter, make_limiter(adapter.config.rate_limit), paged=args.paged,
                            max_pages=args.max_pages, retries=args.retries)
            resumed = len(output.done)
            try:
                written = await pull_range(puller, days, output)
            except PullFailed as exc:
                progress_bar(len(output.done), len(days), len(output.written))
                again = ("run the same command again to resume" if args.out else
                         f"continue with --from {days[len(output.done)].isoformat()}")
                said = adapter.redaction().text(str(exc))  # Kapture may quote the key it refuses
                print(f"pull failed on {said}; {len(output.done)} of {len(days)} days done; {again}", file=sys.stderr)
                return 1
        output.finish()
        note = f", resumed after {resumed} days" if resumed else ""
        print(f"pulled {written} tickets over {len(days)} days in {puller.calls} calls{note}"
              + (f" into {args.out}" if args.out else ""), file=sys.stderr)
        return 0

    try:
        return asyncio.run(run())
    finally:
        output.close()
