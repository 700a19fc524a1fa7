"""The speed table: ticketbridge against a bare aiohttp handler, with wrk as the load, every figure a ratio
measured within one run.

Each row runs its two servers in alternating rounds with the same body over the same connections; a round's
ratio is candidate/baseline of that round, and the table gives the median of the rounds with their range
(the machine is shared, so rates swing; ratios within a round swing less). Rows:

- intake (deliveries held back with `--no-workers`), durable: each 202 after its commit; SQLite and
  PostgreSQL, one process each, and PostgreSQL against SQLite; SQLite with both servers on uvloop;
- intake with the console on (an admin token set) against off, and with conversations on (a threaded
  mapping, every event a reply in one thread) against off;
- end to end (accept, map, deliver to a stand-in vendor in its own process that answers at once, record the
  result): the rate at which accepted events reach the vendor, counted from wrk's start until the last one
  arrived; SQLite and PostgreSQL;
- the hostile inputs of test_hostile_bench, each posted by wrk against the bare handler.

Targets held: intake on SQLite >= 0.6x bare, end to end on SQLite >= 0.25x bare; every event answered 2xx is
stored, and every stored event reaches the vendor.

`BENCH_ROUNDS` (3) and `BENCH_SECONDS` (3) change the rounds and their length.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from tests.bench.harness import (
    CONNECTIONS,
    FORM,
    HERE,
    Body,
    Load,
    cpu_seconds,
    free_port,
    needs_wrk,
    pg_events,
    run_wrk,
    spawn,
    spread,
    stop,
    wait_port,
)
from tests.bench.test_conversation_bench import FOLLOW_UP
from tests.bench.test_conversation_bench import MAPPING as THREAD_MAPPING
from tests.bench.test_delivery_bench import config as e2e_config
from tests.bench.test_hostile_bench import CONFIG as HOSTILE_CONFIG
from tests.bench.test_hostile_bench import cases as hostile_cases
from tests.integration.processes import DSN

pytestmark = [pytest.mark.bench, needs_wrk]

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "3"))
INTAKE_TARGET = 0.6
E2E_TARGET = 0.25
HOSTILE_CONNECTIONS = 4  # as many hostile requests at once as test_hostile_bench sends
HOSTILE_SECONDS = max(SECONDS, 6)  # a raw mail of 200,000 lines costs a large part of a second: enough of them
PATH = "/hooks/website-contact"

CONVERSATION_CONFIG = """
server: {host: 127.0.0.1, port: PORT}
store: {url: "sqlite:///var/bridge.db"}
log: {level: warning}
sources:
  support-mail: {kind: json}
destinations:
  kapture: {vendor: kapture, sandbox: true}
"""
REPLY = Body(json.dumps({"from": "asha@example.com", "subject": "Re: Router down", "stripped_text": "Still down",
                         "message_id": "<r@x.io>", "references": ["<root-7@x.io>"]}).encode(),
             {"Content-Type": "application/json", "Accept": "application/json"})


@dataclass(frozen=True)
class Round:
    """One server's share of a round: its rate, and its process's CPU time per request (microseconds)."""

    rate: float
    cpu_us: float


@dataclass
class Row:
    name: str
    baseline: str
    base: list[Round] = field(default_factory=list)
    cand: list[Round] = field(default_factory=list)
    target: float | None = None

    @property
    def ratios(self) -> list[float]:
        return [c.rate / b.rate for b, c in zip(self.base, self.cand, strict=True)]

    @property
    def cpu_ratios(self) -> list[float]:
        """Baseline CPU per request over the candidate's: what the rate ratio would be on idle cores."""
        return [b.cpu_us / c.cpu_us for b, c in zip(self.base, self.cand, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    folder: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def bridge(folder: Path, cfg_text: str, mappings: dict[str, str], *, workers: bool = False) -> Server:
    """A ticketbridge process serving `cfg_text` (PORT replaced) from `folder`, with `mappings` (file name ->
    text) in folder/mappings."""
    port = free_port()
    (folder / "mappings").mkdir(parents=True, exist_ok=True)
    for name, text in mappings.items():
        (folder / "mappings" / name).write_text(text)
    (folder / "bridge.yaml").write_text(cfg_text.replace("PORT", str(port)))
    args = ["-m", "bridge", "serve", "-c", "bridge.yaml", *([] if workers else ["--no-workers"])]
    proc = spawn(args, folder)
    wait_port(port, proc)
    return Server(proc, port, folder)


def checked(load: Load, what: str, non_2xx: int = 0) -> Load:
    assert load.socket_errors == 0, f"{what}: {load}"
    assert load.non_2xx == (load.requests if non_2xx else 0), f"{what}: {load}"
    return load


def alternate(row: Row, base: Callable[[], Round], cand: Callable[[], Round]) -> Row:
    """ROUNDS pairs of rounds, the baseline first in even pairs and second in odd ones (A B, B A, A B…), so that
    whatever favours the first or the second of a pair (the machine settling, a neighbour's rhythm) falls on
    both alike."""
    for n in range(ROUNDS):
        if n % 2:
            c = cand()
            row.base.append(base())
            row.cand.append(c)
        else:
            row.base.append(base())
            row.cand.append(cand())
    return row


def sqlite_events(folder: Path) -> int:
    with sqlite3.connect(folder / "var" / "bridge.db") as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def vendor_unique(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=30) as resp:
        return int(json.loads(resp.read())["unique"])


class Bench:
    """The run's processes and folders; the bare handler lives for the whole run."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.files = tmp / "wrk"
        port, uv_port = free_port(), free_port()
        self.bare = Server(spawn([str(HERE / "bare_server.py"), str(port)], tmp), port, tmp)
        self.bare_uvloop = Server(spawn([str(HERE / "bare_server.py"), str(uv_port)], tmp,
                                        {**os.environ, "BENCH_EVENT_LOOP": "uvloop"}), uv_port, tmp)
        wait_port(port, self.bare.proc)
        wait_port(uv_port, self.bare_uvloop.proc)

    def load(self, server: Server, path: str, body: Body, what: str, non_2xx: int = 0,
             connections: int = CONNECTIONS, seconds: float = SECONDS) -> tuple[Load, float]:
        """One round of wrk against `server`, and the CPU seconds its process used meanwhile."""
        cpu = cpu_seconds(server.proc.pid)
        got = checked(run_wrk(server.base + path, body, seconds, self.files, connections), what, non_2xx)
        return got, cpu_seconds(server.proc.pid) - cpu

    def rate(self, server: Server, path: str, body: Body, what: str, non_2xx: int = 0,
             connections: int = CONNECTIONS, seconds: float = SECONDS) -> Round:
        got, cpu = self.load(server, path, body, what, non_2xx, connections, seconds)
        return Round(got.rate, cpu / max(got.requests, 1) * 1e6)

    def warm(self, server: Server, path: str, body: Body, non_2xx: int = 0) -> int:
        return checked(run_wrk(server.base + path, body, 1, self.files), "warm-up", non_2xx).requests


def intake_rows(bench: Bench, schema: str) -> Iterator[Row]:
    vendor_port = free_port()  # nothing listens: deliveries are held back anyway
    (bench.tmp / "cfg-intake").mkdir()
    sqlite_cfg = e2e_config(bench.tmp / "cfg-intake", 0, vendor_port).read_text()
    sqlite_cfg = sqlite_cfg.replace("port: 0", "port: PORT")
    pg_cfg = sqlite_cfg.replace("sqlite:///var/bridge.db", f"{DSN}?schema={schema}")
    console_cfg = sqlite_cfg + "admin: {token: bench-admin-token-0123456789}\n"
    uvloop_cfg = sqlite_cfg.replace("port: PORT}", "port: PORT, event_loop: uvloop}")
    assert uvloop_cfg != sqlite_cfg
    mapping = (bench.tmp / "cfg-intake" / "mappings" / "contact.yaml").read_text()
    servers: dict[str, Server] = {}
    answered: dict[str, int] = {}
    try:
        for name, text in (("sqlite", sqlite_cfg), ("postgresql", pg_cfg), ("console", console_cfg),
                           ("uvloop", uvloop_cfg)):
            servers[name] = bridge(bench.tmp / f"intake-{name}", text, {"contact.yaml": mapping})
        bench.warm(bench.bare, PATH, FORM)
        bench.warm(bench.bare_uvloop, PATH, FORM)
        for name, server in servers.items():
            answered[name] = bench.warm(server, PATH, FORM)

        def tb(name: str) -> Callable[[], Round]:
            def one() -> Round:
                got, cpu = bench.load(servers[name], PATH, FORM, name)
                answered[name] += got.requests
                return Round(got.rate, cpu / max(got.requests, 1) * 1e6)
            return one

        def bare() -> Round:
            return bench.rate(bench.bare, PATH, FORM, "bare")

        sqlite = alternate(Row("intake, SQLite", "bare", target=INTAKE_TARGET), bare, tb("sqlite"))
        pg = alternate(Row("intake, PostgreSQL", "bare"), bare, tb("postgresql"))
        yield sqlite
        yield pg
        yield Row("intake, PostgreSQL vs SQLite", "SQLite", base=sqlite.cand, cand=pg.cand)
        yield alternate(Row("intake, SQLite, both on uvloop", "bare"),
                        lambda: bench.rate(bench.bare_uvloop, PATH, FORM, "bare on uvloop"), tb("uvloop"))
        yield alternate(Row("intake, console on vs off", "off"), tb("sqlite"), tb("console"))
    finally:
        stop(*(s.proc for s in servers.values()))
    slack = CONNECTIONS * (5 * ROUNDS + 2)  # wrk does not count what was in flight when it stopped
    for name, server in servers.items():
        stored = asyncio.run(pg_events(schema)) if name == "postgresql" else sqlite_events(server.folder)
        assert answered[name] <= stored <= answered[name] + slack, f"{name}: {answered[name]} answered, {stored} stored"


def conversation_row(bench: Bench) -> Row:
    servers: dict[bool, Server] = {}
    try:
        for threaded in (False, True):
            servers[threaded] = bridge(bench.tmp / f"conv-{threaded}", CONVERSATION_CONFIG,
                                       {"mail.yaml": THREAD_MAPPING + (FOLLOW_UP if threaded else "")})
            bench.warm(servers[threaded], "/hooks/support-mail", REPLY)
        return alternate(Row("intake, conversations on vs off", "off"),
                         lambda: bench.rate(servers[False], "/hooks/support-mail", REPLY, "off"),
                         lambda: bench.rate(servers[True], "/hooks/support-mail", REPLY, "on"))
    finally:
        stop(*(s.proc for s in servers.values()))


def e2e_row(bench: Bench, name: str, store: str | None, target: float | None) -> Row:
    vendor_port = free_port()
    vendor = spawn([str(HERE / "standin_vendor.py"), str(vendor_port)], bench.tmp)
    folder = bench.tmp / f"e2e-{name}"
    folder.mkdir()
    text = e2e_config(folder, 0, vendor_port).read_text().replace("port: 0", "port: PORT")
    mapping = (folder / "mappings" / "contact.yaml").read_text()
    if store is not None:
        text = text.replace("sqlite:///var/bridge.db", store)
    server: Server | None = None
    row = Row(f"end to end, {name}", "bare", target=target)
    try:
        wait_port(vendor_port, vendor)
        server = bridge(folder, text, {"contact.yaml": mapping}, workers=True)
        bench.warm(server, PATH, FORM)

        def delivered() -> Round:
            assert server is not None
            before = vendor_unique(vendor_port)
            cpu = cpu_seconds(server.proc.pid)
            started = time.monotonic()
            accepted = bench.load(server, PATH, FORM, name)[0].requests
            deadline = started + 120
            unique = before
            while time.monotonic() < deadline:
                unique = vendor_unique(vendor_port)
                if unique >= before + accepted:
                    break
                time.sleep(0.02)
            assert unique >= before + accepted, f"{name}: {unique - before} of {accepted} delivered in 120 s"
            elapsed, cpu = time.monotonic() - started, cpu_seconds(server.proc.pid) - cpu
            return Round((unique - before) / elapsed, cpu / (unique - before) * 1e6)

        alternate(row, lambda: bench.rate(bench.bare, PATH, FORM, "bare"), delivered)
        stored = asyncio.run(pg_events(store.rpartition("schema=")[2])) if store else sqlite_events(folder)
        deadline = time.monotonic() + 60
        while vendor_unique(vendor_port) < stored and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vendor_unique(vendor_port) == stored, "every stored event reaches the vendor, once"
    finally:
        stop(server.proc if server else None, vendor)
    return row


def hostile_rows(bench: Bench) -> Iterator[Row]:
    server = bridge(bench.tmp / "hostile", HOSTILE_CONFIG.replace("sources:", "log: {level: warning}\nsources:"), {})
    try:
        for name, case in hostile_cases().items():
            body = Body(case.template, case.headers, unique=True)
            refused = case.status >= 400

            def base(path: str = case.path, body: Body = body) -> Round:
                return bench.rate(bench.bare, path, body, "bare", connections=HOSTILE_CONNECTIONS,
                                  seconds=HOSTILE_SECONDS)

            def cand(path: str = case.path, body: Body = body, refused: bool = refused, name: str = name) -> Round:
                return bench.rate(server, path, body, name, non_2xx=int(refused), connections=HOSTILE_CONNECTIONS,
                                  seconds=HOSTILE_SECONDS)

            yield alternate(Row(f"hostile: {name} ({case.status})", "bare"), base, cand)
    finally:
        stop(server.proc)


def test_speed_table(tmp_path: Path) -> None:
    """Intake on SQLite reaches 0.6x and end to end 0.25x a bare aiohttp handler under wrk, nothing accepted is
    lost, and the whole table of ratios is printed."""
    schemas = [f"tb_bench_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    bench = Bench(tmp_path)
    rows: list[Row] = []
    try:
        rows += intake_rows(bench, schemas[0])
        rows.append(conversation_row(bench))
        rows.append(e2e_row(bench, "SQLite", None, E2E_TARGET))
        rows.append(e2e_row(bench, "PostgreSQL", f"{DSN}?schema={schemas[1]}", None))
        rows += hostile_rows(bench)
    finally:
        stop(bench.bare.proc, bench.bare_uvloop.proc)
        for schema in schemas:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                asyncio.run(pg_events(schema, drop=True))
        print_table(rows)
    for row in rows:
        if row.target is not None:
            assert row.ratio >= row.target, f"{row.name}: {row.ratio:.2f}x {row.baseline} (target >= {row.target})"


def print_table(rows: list[Row]) -> None:
    load = os.getloadavg()
    print(f"\nwrk -t1 -c{CONNECTIONS}, {ROUNDS} rounds of {SECONDS:g} s (hostile: -c{HOSTILE_CONNECTIONS}, "
          f"{HOSTILE_SECONDS:g} s), alternating; median (min-max); {os.cpu_count()} cores, "
          f"load average {load[0]:.1f} {load[1]:.1f}")
    print("rate: requests (end to end: deliveries) per second; CPU: the server process's CPU time per request, "
          "in us; CPU ratio: baseline's CPU per request over ticketbridge's")
    print(f"| {'':44} | {'vs':6} | {'baseline /s':>20} | {'ticketbridge /s':>20} | {'rate ratio':>17} | "
          f"{'CPU us, base / tb':>17} | {'CPU ratio':>17} | target |")
    print(f"|{'-' * 46}|{'-' * 8}|{'-' * 22}|{'-' * 22}|{'-' * 19}|{'-' * 19}|{'-' * 19}|--------|")
    for row in rows:
        target = f">= {row.target}" if row.target is not None else ""
        cpu = (f"{statistics.median(r.cpu_us for r in row.base):.0f} / "
               f"{statistics.median(r.cpu_us for r in row.cand):.0f}")
        print(f"| {row.name:44} | {row.baseline:6} | {spread([r.rate for r in row.base]):>20} | "
              f"{spread([r.rate for r in row.cand]):>20} | {spread(row.ratios, '.2f'):>17} | {cpu:>17} | "
              f"{spread(row.cpu_ratios, '.2f'):>17} | {target:6} |")
