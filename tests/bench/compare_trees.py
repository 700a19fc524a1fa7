"""Two checkouts of ticketbridge loaded in turn on one host: is a change in the speed table the code's or the host's?

The speed table (test_speed_table_bench) compares ticketbridge with a bare handler within one run; comparing two
runs compares two hosts as much as two commits (the same code has measured 333 and 492 µs of CPU per delivered event
on two quiet hosts whose bare handlers cost the same). This runs one server from each checkout (`PYTHONPATH` set to
it), with the same config and mapping (this checkout's test_delivery_bench config), in alternating rounds of one run
(A B, B A, …), each round `wrk -t1 -c32` for SECONDS, and prints each round's rate and CPU time per request (per
delivered event end to end) and the medians, with B's rate and CPU ratios to A's.

Usage: python -m tests.bench.compare_trees TREE_A TREE_B [--mode e2e|intake] [--rounds N] [--seconds S] [--postgres]

`e2e`: both servers deliver to one stand-in vendor (tests/bench/standin_vendor.py, a process of its own); a round
lasts until the vendor has every event wrk's requests were answered for, and its rate is delivered events a second.
`intake`: deliveries are held back (the vendor's port has nothing listening), the rate is wrk's. Either checkout
must read this checkout's config (a much older one may not). Nothing here is part of the test run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bridge.cli.common import between
from tests.bench.harness import CONNECTIONS, FORM, HERE, free_port, pg_events, run_wrk, spawn, stop, wait_port
from tests.bench.harness import cpu_seconds as process_cpu
from tests.bench.test_delivery_bench import config as bench_config
from tests.bench.test_speed_table_bench import PATH, vendor_unique
from tests.integration.processes import DSN

DELIVERY_DEADLINE_S = 120
SQLITE_URL = "sqlite:///var/bridge.db"


@dataclass
class Tree:
    path: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    rates: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)


def start(tree: Tree, folder: Path, vendor_port: int, store: str | None) -> None:
    """tree's `serve` from `folder`, on a free port, with the bench config (deliveries to `vendor_port`), its store
    `store` when given (else the config's SQLite file)."""
    folder.mkdir(parents=True)
    text = bench_config(folder, 0, vendor_port).read_text()
    if store is not None:
        assert SQLITE_URL in text
        text = text.replace(SQLITE_URL, store)
    tree.port = free_port()
    (folder / "bridge.yaml").write_text(text.replace("port: 0", f"port: {tree.port}"))
    proc = spawn(["-m", "bridge", "serve", "-c", "bridge.yaml"], folder, {**os.environ, "PYTHONPATH": str(tree.path)})
    tree.proc = proc
    wait_port(tree.port, proc)


def one_round(tree: Tree, mode: str, vendor_port: int, seconds: float, files: Path) -> str:
    """One round of wrk against tree's server; its rate and CPU per request (or delivered event) appended."""
    assert tree.proc is not None
    pid = tree.proc.pid
    before = vendor_unique(vendor_port) if mode == "e2e" else 0
    cpu = process_cpu(pid)
    started = time.monotonic()
    load = run_wrk(f"http://127.0.0.1:{tree.port}{PATH}", FORM, seconds, files, CONNECTIONS)
    assert load.errors == 0, f"{tree.path}: {load}"
    done = load.requests
    if mode == "e2e":
        deadline = started + DELIVERY_DEADLINE_S
        while (done := vendor_unique(vendor_port) - before) < load.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert done >= load.requests, f"{tree.path}: {done} of {load.requests} delivered in {DELIVERY_DEADLINE_S} s"
        rate = done / (time.monotonic() - started)
    else:
        rate = load.rate
    used = process_cpu(pid) - cpu
    tree.rates.append(rate)
    tree.cpu_us.append(used / max(done, 1) * 1e6)
    return f"{tree.path}: {rate:,.0f}/s, {tree.cpu_us[-1]:.0f} µs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, type=Path, help="two checkouts: A (the baseline) and B")
    parser.add_argument("--mode", choices=("e2e", "intake"), default="e2e")
    parser.add_argument("--rounds", type=between(1, 100), default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--postgres", action="store_true",
                        help="store in PostgreSQL (the test database), each checkout in a fresh schema of its own, "
                             "dropped at the end")
    args = parser.parse_args()
    for path in args.trees:  # else `-m bridge` imports the checkout the venv has installed, without a word
        if not (path / "bridge" / "__init__.py").is_file():
            parser.error(f"{str(path)!r} is no checkout of ticketbridge (it has no bridge/__init__.py)")
    a, b = (Tree(path.resolve()) for path in args.trees)
    tmp = Path(tempfile.mkdtemp(prefix="compare-trees-"))
    schemas: list[str] = []
    vendor_port = free_port()
    vendor = spawn([str(HERE / "standin_vendor.py"), str(vendor_port)], tmp) if args.mode == "e2e" else None
    try:
        if vendor is not None:
            wait_port(vendor_port, vendor)
        for tree, name in ((a, "a"), (b, "b")):
            schema = f"compare_{name}_{os.getpid()}"
            if args.postgres:
                schemas.append(schema)
            start(tree, tmp / name, vendor_port, f"{DSN}?schema={schema}" if args.postgres else None)
        for n in range(args.rounds):
            for tree in ((a, b) if n % 2 == 0 else (b, a)):
                print(one_round(tree, args.mode, vendor_port, args.seconds, tmp / "wrk"), flush=True)
    finally:
        stop(vendor, a.proc, b.proc)
        for schema in schemas:
            asyncio.run(pg_events(schema, drop=True))
        shutil.rmtree(tmp, ignore_errors=True)  # the stores and wrk's files: no server output is kept to read
    rate_ratios = [y / x for x, y in zip(a.rates, b.rates, strict=True)]
    cpu_ratios = [x / y for x, y in zip(a.cpu_us, b.cpu_us, strict=True)]
    for label, tree in (("A", a), ("B", b)):
        print(f"{label} {tree.path}: {statistics.median(tree.rates):,.0f}/s "
              f"({min(tree.rates):,.0f}-{max(tree.rates):,.0f}), "
              f"{statistics.median(tree.cpu_us):.0f} µs ({min(tree.cpu_us):.0f}-{max(tree.cpu_us):.0f})")
    print(f"B/A rate {statistics.median(rate_ratios):.2f} ({min(rate_ratios):.2f}-{max(rate_ratios):.2f}), "
          f"CPU (A's µs over B's) {statistics.median(cpu_ratios):.2f} ({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}); "
          f"{args.rounds} rounds of {args.seconds:g} s, {args.mode}, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
