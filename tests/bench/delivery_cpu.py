"""CPU time per delivered event, measured in one process: the delivery twin of tests/bench/intake_cpu.py.

A SQLite store (a fresh file in a temporary folder) is given N events by the real intake (the form of
test_delivery_bench's config, fed to the server's connection protocol in process as intake_cpu does, with no
delivery running); then the server's delivery loop (its HTTP client and dispatcher, as `serve` builds them) is
started and delivers them to the stand-in vendor (tests/bench/standin_vendor.py, a process of its own that answers
at once, over loopback HTTP): claim, send, classify, record. The figure is this process's CPU time
(`time.process_time()`, all threads: the commit thread's counts) from the start of the delivery loop to the record
of the last attempt, per delivered event, the median of several rounds after one that warms up. The client's
connections are kept from one round to the next, as a running server keeps them.

Every attempt must succeed, and at the end the vendor must have received every event once.

Usage: python -m tests.bench.delivery_cpu [--events N] [--rounds R] [--max-in-flight M] [--profile FILE]
                                         [--store sqlite|postgres] [--round-trips] [--mixed]

`--mixed` asks whether intake and delivery cost more together than apart, as they run in `serve`: each round
also measures intake alone (the N events seeded, this process's CPU per request) and then both at once (N more
requests fed while the delivery loop runs and is told of each accept, as `serve` tells it), from the start of the
delivery loop until the last of those N is delivered and recorded, per event; it prints the three figures and the
ratio of the last to the sum of the first two. With `--callgrind`, only the rounds' mixed phases are counted.

`--store postgres` stores the events in PostgreSQL instead (the test database, tests/integration/processes.py's
DSN, in a fresh schema dropped at the end). Only this process's CPU is counted, not the server's: `--round-trips`
also prints the statements sent to it per delivered event (counting costs CPU of its own:
tests/bench/pg_round_trips.py).

Instruction counts, which the machine's other work does not move: run under
`valgrind --tool=callgrind --instr-atstart=no` with `--callgrind` and a small N; the total valgrind reports is that
of the measured rounds' deliveries alone (N x R events; intake's seeding is not counted). The stand-in vendor runs
outside valgrind. `--profile FILE` writes a cProfile of the measured rounds' deliveries.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import ClientSession

from bridge.app import build_app, build_dispatcher, delivery_session
from bridge.appkeys import RUNTIME
from bridge.config import load_config
from bridge.connections import ConnectionLimits, ConnectionStats, GuardedAppRunner
from bridge.delivery.dispatcher import Attempted
from bridge.logs import configure_logging
from bridge.registries import REGISTRIES
from bridge.runtime import Runtime
from tests.bench.harness import HERE, free_port, spawn, stop, wait_port
from tests.bench.intake_cpu import callgrind, one_round, request_bytes
from tests.bench.pg_round_trips import RoundTrips, drop_schema, fresh_schema, store_url
from tests.bench.test_delivery_bench import config as bench_config
from tests.bench.test_delivery_bench import get_json

GC_DEFAULTS = gc.get_threshold()


async def deliver_all(rt: Runtime, session: ClientSession, events: int, counted: bool,
                      profile: cProfile.Profile | None,
                      intake: Callable[[], Awaitable[float]] | None = None) -> float:
    """Start a delivery loop on the store, wait until `events` attempts have succeeded and been recorded, and stop
    it; the CPU seconds from its start to the last record. `counted`: callgrind counts those instructions.
    `intake`: run once the loop has started, the loop told of each accept (`rt.dispatcher`, as `serve` sets it):
    the `events` it accepts are delivered as they come (the mixed phase of --mixed)."""
    assert rt.store is not None
    dispatcher = build_dispatcher(rt, rt.store, session)
    observe = dispatcher.on_attempt
    assert observe is not None
    loop = asyncio.get_running_loop()
    sent = loop.create_future()
    seen: dict[str, int] = {}

    def counting(attempt: Attempted) -> None:
        observe(attempt)
        seen[attempt.classification] = seen.get(attempt.classification, 0) + 1
        if sum(seen.values()) == events and not sent.done():
            sent.set_result(None)

    dispatcher.on_attempt = counting
    if counted:
        callgrind(on=True)
    if profile is not None:
        profile.enable()
    started = time.process_time()
    dispatcher.start()
    if intake is not None:
        rt.dispatcher = dispatcher
        try:
            await intake()
        finally:
            rt.dispatcher = None
    await sent
    for lane in dispatcher.lanes.values():  # the last results' records
        while lane.inflight:
            await asyncio.wait(list(lane.inflight.values()))
    used = time.process_time() - started
    if profile is not None:
        profile.disable()
    if counted:
        callgrind(on=False)
    await dispatcher.stop(5.0)
    assert seen == {"success": events}, seen
    return used


@dataclass
class Figures:
    """Each measured round's CPU microseconds per event: delivery alone; with --mixed, intake alone (the seeding)
    and both at once."""

    delivery: list[float] = field(default_factory=list)
    intake: list[float] = field(default_factory=list)
    mixed: list[float] = field(default_factory=list)


async def drive(folder: Path, vendor_port: int, events: int, rounds: int, max_in_flight: int, counted: bool,
                profile: cProfile.Profile | None, store: str | None = None,
                trips: RoundTrips | None = None, mixed: bool = False) -> Figures:
    """Each round's CPU microseconds per delivered event, after one round that warms up. `store`: the store url in
    place of the SQLite file; `trips`: counts the measured rounds' deliveries' round trips; `mixed`: each round
    also measures intake alone and intake and delivery at once (`--mixed`), and only those are counted."""
    path = bench_config(folder, 0, vendor_port, max_in_flight)
    if store is not None:
        path.write_text(path.read_text().replace("sqlite:///var/bridge.db", store))
    config = load_config(path, registries=REGISTRIES)
    configure_logging(config.log.level, config.log.format, sys.stderr)  # as `serve` does
    app = build_app(config, workers=False)  # intake only: the delivery loop is started round by round
    runner = GuardedAppRunner(app, limits=ConnectionLimits(), stats=ConnectionStats(), access_log=None,
                              handle_signals=False)
    await runner.setup()
    assert runner.server is not None
    rt = app[RUNTIME]
    session = delivery_session(rt.config)
    gc.freeze()  # the collector's settings `serve` makes once started
    gc.set_threshold(20_000, 20, 20)
    raw = request_bytes()
    results = Figures()
    try:
        for n in range(rounds + 1):
            seeded = await one_round(runner.server, raw, events, 32)  # N events accepted and stored, none delivered yet
            if trips is not None:
                trips.counting = n > 0
            used = await deliver_all(rt, session, events, counted and n > 0 and not mixed, profile if n > 0 else None)
            if trips is not None:
                trips.counting = False
            both = None
            if mixed:
                assert runner.server is not None
                server = runner.server
                both = await deliver_all(rt, session, events, counted and n > 0, None,
                                         functools.partial(one_round, server, raw, events, 32))
            if n > 0:
                results.delivery.append(used / events * 1e6)
                if both is not None:
                    results.intake.append(seeded / events * 1e6)
                    results.mixed.append(both / events * 1e6)
    finally:
        await session.close()
        await runner.cleanup()
        gc.unfreeze()
        gc.set_threshold(*GC_DEFAULTS)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-in-flight", type=int, default=32, help="the destination's max_in_flight")
    parser.add_argument("--callgrind", action="store_true",
                        help="under valgrind --tool=callgrind --instr-atstart=no: count the measured deliveries only")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the measured deliveries here")
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--round-trips", action="store_true",
                        help="with --store postgres: print the statements sent per delivered event")
    parser.add_argument("--mixed", action="store_true",
                        help="also intake alone, and intake and delivery at once (as serve runs them), per event")
    args = parser.parse_args()
    profile = None if args.profile is None else cProfile.Profile()
    schema = fresh_schema() if args.store == "postgres" else None
    trips = RoundTrips() if args.round_trips and schema is not None else None
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        os.chdir(folder)  # the config's SQLite file is var/bridge.db, under the working folder
        (folder / "var").mkdir()
        vendor_port = free_port()
        vendor = spawn([str(HERE / "standin_vendor.py"), str(vendor_port)], folder)
        try:
            wait_port(vendor_port, vendor)
            url = None if schema is None else store_url(schema)
            if trips is not None:
                with trips:
                    runs = asyncio.run(drive(folder, vendor_port, args.events, args.rounds, args.max_in_flight,
                                             args.callgrind, profile, url, trips, args.mixed))
            else:
                runs = asyncio.run(drive(folder, vendor_port, args.events, args.rounds, args.max_in_flight,
                                         args.callgrind, profile, url, mixed=args.mixed))
            got = get_json(f"http://127.0.0.1:{vendor_port}/count")
        finally:
            stop(vendor)
            if schema is not None:
                drop_schema(schema)
    total = args.events * (args.rounds + 1) * (2 if args.mixed else 1)
    assert got == {"count": total, "unique": total}, f"the vendor received {got}, not each of {total} events once"
    if profile is not None:
        profile.dump_stats(args.profile)
    print(f"delivery {statistics.median(runs.delivery):7.1f} us/delivered event (rounds {min(runs.delivery):.1f}-"
          f"{max(runs.delivery):.1f}; {args.events} events a round, max_in_flight {args.max_in_flight}; {args.store})",
          flush=True)
    if args.mixed:
        for label, values in (("intake", runs.intake), ("mixed", runs.mixed)):
            print(f"{label:8s} {statistics.median(values):7.1f} us/event (rounds {min(values):.1f}-{max(values):.1f})",
                  flush=True)
        ratios = [m / (i + d) for i, d, m in zip(runs.intake, runs.delivery, runs.mixed, strict=True)]
        print(f"mixed over intake + delivery {statistics.median(ratios):.3f} (rounds {min(ratios):.3f}-"
              f"{max(ratios):.3f})", flush=True)
    if trips is not None:
        print(trips.report(args.events * args.rounds, "delivered event"), flush=True)


if __name__ == "__main__":
    main()
