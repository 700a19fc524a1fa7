"""CPU time per intake request, measured in one process without a network or a load generator: requests are fed
to the real server's connection protocol (aiohttp's parser, the app's routing, the handler, the answer written)
through an in-memory transport, so the only CPU spent is the server's. Steadier than wrk's rates on a shared
machine: the figure is `time.process_time()` (all threads) per request, the median of several rounds.

Usage: python -m tests.bench.intake_cpu [--requests N] [--rounds R] [--connections C] [--steps] [RUNG ...]

Rungs (the cost ladder's, test_intake_cost_bench):
- `bare`: a bare aiohttp handler (read the body, answer 202 with JSON);
- `none`: ticketbridge with its shipped default config on a store that keeps nothing;
- `memory`: the same on the in-memory store;
- `sqlite`: the same durable on SQLite (a fresh file in a temporary folder; the commit thread's CPU counts);
- `postgres`: the same durable on PostgreSQL (the test database, tests/integration/processes.py's DSN, in a fresh
  schema dropped at the end; the server's CPU is not counted);
- `threaded`, `unthreaded`: the speed table's row "intake, conversations on vs off" (test_conversation_bench's
  mapping with its `follow_up:` or without, on SQLite): every request the same reply in one email thread, so each
  threaded accept counts one more message in a conversation that grows by one delivery a request.

`C` connections each send their next request once the last is answered, as `wrk -c C` does, so that the SQLite
store groups commits as it does under load.

`--steps` times each step of the request (aiohttp's routing and answer writing, intake's own steps) in the `none`
rung: one step at a time, in a server of its own with one connection, in this thread's CPU time less what the
timer itself costs. A step's figure includes the steps it calls.

Instruction counts, which the machine's other work does not move: run one rung under
`valgrind --tool=callgrind --instr-atstart=no` with `--callgrind` and a small N; the total valgrind reports is that
of the measured rounds alone (N x R requests). Where the time goes:
`py-spy record --format raw -o FILE -- python -m tests.bench.intake_cpu none`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import gc
import importlib
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from bridge.appkeys import RUNTIME
from bridge.config import load_config
from bridge.connections import ConnectionLimits, ConnectionStats, GuardedAppRunner
from bridge.logs import configure_logging
from bridge.registries import REGISTRIES
from bridge.store.memory import MemoryStore
from tests.bench.harness import FORM_BODY, FORM_HEADERS
from tests.bench.intake_rungs import KeepsNothing
from tests.bench.pg_round_trips import drop_schema, fresh_schema, store_url

PATH = "/hooks/website-contact"
THREAD_PATH = "/hooks/support-mail"
THREADED = ("threaded", "unthreaded")
GC_DEFAULTS = gc.get_threshold()


def request_bytes(path: str = PATH, body: bytes = FORM_BODY, headers: dict[str, str] = FORM_HEADERS) -> bytes:
    """The request wrk sends (post.lua): the form with its headers, on a kept-alive connection."""
    head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": "127.0.0.1", **headers,
                                                    "Content-Length": str(len(body))}.items())
    return f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body


class Transport(asyncio.Transport):
    """What a connection's protocol writes to: each answer's status is counted, and `on_answer` called."""

    def __init__(self, on_answer: Callable[[], None]) -> None:
        super().__init__()
        self.on_answer = on_answer
        self.statuses: dict[int, int] = {}
        self.closing = False

    def write(self, data: Any) -> None:
        data = bytes(data)
        if data.startswith(b"HTTP/1.1 "):
            status = int(data[9:12])
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.on_answer()

    def writelines(self, list_of_data: Iterable[Any]) -> None:
        self.write(b"".join(bytes(d) for d in list_of_data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def _bare(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"accepted": True}, status=202)


def bare_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/hooks/{source}", _bare)
    return app


def ticketbridge_app(store: str, schema: str | None = None) -> web.Application:
    """The app `serve --no-workers` runs on the shipped default config, on the rung's store (`postgres`: in
    `schema`)."""
    from bridge.app import build_app
    from bridge.config import parse_store_url

    config = load_config(thread_config(store == "threaded") if store in THREADED else None, registries=REGISTRIES)
    config = dataclasses.replace(config, server=msgspec.structs.replace(config.server, port=0))
    if store in THREADED:
        store = "sqlite"
    if store == "postgres":
        assert schema is not None
        config = dataclasses.replace(config, store_url=parse_store_url(store_url(schema), config.base_dir))
        store = "sqlite"  # opened from the config's url, as the SQLite rung's is
    configure_logging(config.log.level, config.log.format, sys.stderr)  # as `serve` does, apart from the figures
    given = {"none": KeepsNothing(), "memory": MemoryStore(), "sqlite": None}[store]
    return build_app(config, workers=False, store=given)


def thread_config(threaded: bool) -> Path:
    """The conversation row's config (test_conversation_bench's, PORT 0), written to a folder of its own under the
    working folder with its one mapping, with its `follow_up:` or without; its path."""
    from tests.bench.test_conversation_bench import CONFIG, FOLLOW_UP, MAPPING

    folder = Path("threaded" if threaded else "unthreaded").absolute()
    (folder / "mappings").mkdir(parents=True, exist_ok=True)
    (folder / "mappings" / "mail.yaml").write_text(MAPPING + (FOLLOW_UP if threaded else ""))
    (folder / "bridge.yaml").write_text(CONFIG.replace("PORT", "0"))
    return folder / "bridge.yaml"


def thread_request() -> bytes:
    """The conversation row's request: a reply in one email thread (the speed table's REPLY)."""
    from tests.bench.test_speed_table_bench import REPLY

    return request_bytes(THREAD_PATH, REPLY.data, REPLY.headers)


def callgrind(on: bool) -> None:
    """Under `valgrind --tool=callgrind --instr-atstart=no`: count instructions from now on, or no longer."""
    subprocess.run(["callgrind_control", "--instr=on" if on else "--instr=off", str(os.getpid())], check=True,
                   capture_output=True)


async def one_round(server: web.Server, raw: bytes, requests: int, connections: int) -> float:
    """Send `requests` requests over `connections` connections, each sending its next one once the last is
    answered; the CPU seconds they took. Every answer must be a 202."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    left, answered = requests, 0

    def answer(proto: Any) -> None:
        nonlocal left, answered
        answered += 1
        if left > 0:
            left -= 1
            loop.call_soon(proto.data_received, raw)
        elif answered == requests and not done.done():
            done.set_result(None)

    protocols, transports = [], []
    for _ in range(min(connections, requests)):
        proto = server()
        transport = Transport(functools.partial(answer, proto))
        proto.connection_made(transport)
        protocols.append(proto)
        transports.append(transport)
    started = time.process_time()
    for proto in protocols:
        left -= 1
        proto.data_received(raw)
    await done
    used = time.process_time() - started
    for proto in protocols:
        proto.connection_lost(None)
    statuses: dict[int, int] = {}
    for transport in transports:
        for status, count in transport.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    assert statuses == {202: requests}, statuses
    return used


async def drive(app: web.Application, requests: int, rounds: int, connections: int,
                counted: bool = False, raw: bytes | None = None) -> list[float]:
    """Each round's CPU microseconds per request, after one round that warms up; `counted`: callgrind counts
    the instructions of those rounds, not the warm-up's."""
    runner = GuardedAppRunner(app, limits=ConnectionLimits(), stats=ConnectionStats(), access_log=None,
                              handle_signals=False)
    await runner.setup()
    assert runner.server is not None
    if RUNTIME in app:  # ticketbridge's collector settings, as `serve` makes them once started
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
    raw = request_bytes() if raw is None else raw
    try:
        await one_round(runner.server, raw, requests, connections)
        if counted:
            callgrind(on=True)
        results = [await one_round(runner.server, raw, requests, connections) / requests * 1e6
                   for _ in range(rounds)]
        if counted:
            callgrind(on=False)
        return results
    finally:
        await runner.cleanup()
        gc.unfreeze()
        gc.set_threshold(*GC_DEFAULTS)


STEPS = [  # (depth, where: module:attribute); a step's figure includes those indented under it
    (0, "aiohttp.web_urldispatcher:UrlDispatcher.resolve"),
    (0, "bridge.app:hook_post"),
    (1, "bridge.intake:_read_body"),
    (1, "bridge.intake:run_handler"),
    (2, "handlers.form:FormHandler.parse"),
    (1, "bridge.intake:_kept"),
    (1, "bridge.intake:_dedup_key"),
    (1, "bridge.events:Event.new"),
    (1, "bridge.intake:plan_deliveries"),
    (2, "bridge.routing:render_context"),
    (2, "bridge.routing:render_event"),
    (2, "bridge.routing:new_id"),
    (1, "bridge.intake:_accept_all"),
    (1, "bridge.intake:_count_routing"),
    (1, "bridge.runtime:Runtime.count"),
    (1, "bridge.intake:_json"),
    (1, "bridge.histograms:HistogramFamily.observe"),
    (0, "aiohttp.web_protocol:RequestHandler.finish_response"),
]


def timed(where: str) -> tuple[list[int], bool, Callable[[], None]]:
    """Wrap the function `where` names (module:attribute) with a timer: where its [CPU nanoseconds, calls]
    accumulate, whether it is a coroutine function, and how to put the function back."""
    module_name, _, qualname = where.partition(":")
    owner: Any = importlib.import_module(module_name)
    *outer, name = qualname.split(".")
    for part in outer:
        owner = getattr(owner, part)
    raw = inspect.getattr_static(owner, name)
    is_classmethod = isinstance(raw, classmethod)
    func: Callable[..., Any] = raw.__func__ if is_classmethod else raw
    tally = [0, 0]
    clock = time.thread_time_ns  # CPU time: a step the machine's other work interrupts is not charged for it
    wrapped: Callable[..., Any]
    is_async = inspect.iscoroutinefunction(func)
    if is_async:
        @functools.wraps(func)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return await func(*args, **kwargs)
            finally:
                tally[0] += clock() - start
                tally[1] += 1
        wrapped = run_async
    else:
        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return func(*args, **kwargs)
            finally:
                tally[0] += clock() - start
                tally[1] += 1
        wrapped = run
    setattr(owner, name, classmethod(wrapped) if is_classmethod else wrapped)
    return tally, is_async, lambda: setattr(owner, name, raw)


def _noop() -> None:
    pass


async def _noop_async() -> None:
    pass


def timer_cost() -> tuple[float, float]:
    """What `timed` adds to a step's figure, in nanoseconds a call: for a function, for a coroutine function."""
    calls = 100_000
    tally, _, restore = timed(f"{__name__}:_noop")
    call = globals()["_noop"]
    for _ in range(calls):
        call()
    restore()
    sync = tally[0] / calls
    tally, _, restore = timed(f"{__name__}:_noop_async")
    call_async = globals()["_noop_async"]

    async def many() -> None:
        for _ in range(calls):
            await call_async()

    asyncio.run(many())
    restore()
    return sync, tally[0] / calls


def step_costs(requests: int, rounds: int) -> None:
    """Print each step's CPU microseconds per request: the median of `rounds`, each step timed alone."""
    overhead = timer_cost()
    print(f"a timer's own cost, taken off each figure: {overhead[0] / 1000:.2f} us (function), "
          f"{overhead[1] / 1000:.2f} us (coroutine)")
    figures: dict[str, list[float]] = {where: [] for _depth, where in STEPS}
    calls: dict[str, float] = {}
    for _ in range(rounds):
        for _depth, where in STEPS:
            tally, is_async, restore = timed(where)
            try:
                asyncio.run(drive(ticketbridge_app("none"), requests, 1, 1))
            finally:
                restore()
            made = requests * 2  # the warm-up round's and the measured round's
            figures[where].append((tally[0] - overhead[is_async] * tally[1]) / made / 1000)
            calls[where] = tally[1] / made
    for depth, where in STEPS:
        runs = figures[where]
        print(f"{'  ' * depth}{where.partition(':')[2]:<{44 - 2 * depth}} {statistics.median(runs):6.1f} us/request "
              f"({min(runs):.1f}-{max(runs):.1f}; {calls[where]:g} calls)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rungs", nargs="*", default=["bare", "none", "memory", "sqlite"])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--steps", action="store_true", help="time each step of the `none` rung")
    parser.add_argument("--callgrind", action="store_true",
                        help="under valgrind --tool=callgrind --instr-atstart=no: count the measured rounds only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)  # the default config's SQLite file is var/ticketbridge.db, under the working folder
        Path("var").mkdir()
        if args.steps:
            step_costs(args.requests, args.rounds)
            return
        medians = {}
        for rung in args.rungs:
            schema = fresh_schema() if rung == "postgres" else None
            app = bare_app() if rung == "bare" else ticketbridge_app(rung, schema)
            try:
                raw = thread_request() if rung in THREADED else None
                runs = asyncio.run(drive(app, args.requests, args.rounds, args.connections, args.callgrind, raw))
            finally:
                if schema is not None:
                    drop_schema(schema)
            medians[rung] = statistics.median(runs)
            print(f"{rung:<8} {medians[rung]:7.1f} us/request (rounds {min(runs):.1f}-{max(runs):.1f})", flush=True)
        if "bare" in medians:
            for rung, cpu in medians.items():
                print(f"{rung:<8} CPU ratio bare/rung {medians['bare'] / cpu:.2f}")


if __name__ == "__main__":
    main()
