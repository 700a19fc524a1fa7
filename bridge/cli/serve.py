"""`ticketbridge serve` and `ticketbridge sandbox`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import signal
from typing import Any

import msgspec
import structlog
from aiohttp import web

from bridge.app import SANDBOX_PER_PROCESS, build_app, per_process_sandboxes
from bridge.appkeys import RUNTIME
from bridge.cli.common import attachments_problem, config_from
from bridge.config import Config
from bridge.connections import GuardedAppRunner
from bridge.errors import BridgeError, ErrorList, StoreLocked, StoreUnavailable
from bridge.eventloop import LoopUnavailable, running_loop_name
from bridge.eventloop import run as run_on_loop
from bridge.fdlimit import connection_limits, delivery_pool, install_accept_error_handler, raise_nofile_limit
from bridge.logs import configure_logging
from bridge.server_name import name_the_server
from bridge.simulators import registry as simulator_registry
from bridge.simulators import serving
from bridge.store.base import Store

log = structlog.get_logger("ticketbridge.server")
EXIT_FATAL = 3  # the server stopped by itself (its store was lost): a supervisor should start it again


class CannotListen(BridgeError):
    """The server's socket could not be bound (the address is not this machine's, the port is taken)."""


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="run the server and its delivery workers")
    p.add_argument("--host", help="override server.host")
    p.add_argument("--port", type=int, help="override server.port")
    p.add_argument("--no-workers", action="store_true", help="take requests only; deliver nothing")
    p.set_defaults(run=run_serve)
    s = sub.add_parser("sandbox", help="run the vendor simulators on their own (for tests and demos)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=9090)
    s.set_defaults(run=run_sandbox)


def _loopback(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104 - mapping a wildcard bind


async def serve(config: Config, *, workers: bool = True, stop: asyncio.Event | None = None,
                store: Store | None = None) -> int:
    """Run until `stop` is set (or SIGTERM/SIGINT, or a fault it cannot recover from); then stop taking
    requests and drain deliveries. Returns the exit status: 0, or EXIT_FATAL after such a fault. `store`, when
    given, is used instead of the one the config names (the cost ladder bench's middle rungs)."""
    app = build_app(config, workers=workers, store=store)
    rt = app[RUNTIME]
    nofile, _hard = raise_nofile_limit()
    limits = connection_limits(config.server, nofile, delivery_pool(config.destinations))
    install_accept_error_handler(asyncio.get_running_loop(), rt.connections)
    runner = GuardedAppRunner(app, limits=limits, stats=rt.connections, access_log=None, handle_signals=False,
                              shutdown_timeout=max(1.0, config.server.shutdown_grace_seconds))
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port, reuse_address=True,
                           backlog=limits.accept_batch)
        try:
            await site.start()
        except OSError as exc:
            raise CannotListen(f"cannot listen on {config.server.host}:{config.server.port}: {exc.strerror}; "
                               "give server.host an address of this machine and server.port a free port "
                               "(or --host/--port)") from exc
        host, port = runner.addresses[0][:2]
        url = f"http://{_loopback(str(host))}:{port}" if ":" not in str(host) else f"http://[{host}]:{port}"
        stop = stop or asyncio.Event()
        rt.on_fatal = stop.set
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Everything allocated at start-up lives as long as the process: keep it out of the cyclic
        # collector's way, and collect the young generation less often (requests allocate a lot).
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        log.info("server.started", url=url, sources=sorted(rt.sources), mappings=sorted(rt.mappings.mappings),
                 mapping_version=rt.mappings.version, workers=workers, sandboxes=sorted(rt.simulators),
                 max_connections=limits.max_connections, nofile_limit=nofile, event_loop=running_loop_name(),
                 event_loop_setting=config.server.event_loop)
        for name, threaded in per_process_sandboxes(config, rt.mappings).items():
            log.warning("sandbox.per_process", destination=name, threaded_mappings=threaded, note=SANDBOX_PER_PROCESS)
        await stop.wait()
        log.info("server.stopping")
    finally:
        await runner.cleanup()
        log.info("server.stopped")
    return EXIT_FATAL if app[RUNTIME].fatal else 0


def run_serve(args: argparse.Namespace) -> int:
    config = config_from(args)  # a config that does not load is told on stderr: its log format is not known
    if config is None:
        return 2
    if args.host or args.port is not None:
        server = msgspec.structs.replace(config.server, host=args.host or config.server.host,
                                         port=config.server.port if args.port is None else args.port)
        config = dataclasses.replace(config, server=server)
    # From here on a refusal to start is a log line in the configured format (a JSON line under `log.format:
    # json`), where whatever reads the server's log finds it.
    configure_logging(config.log.level, config.log.format)
    unwritable = attachments_problem(config)
    if unwritable is not None:
        return refused(unwritable)
    try:
        status = run_on_loop(lambda: serve(config, workers=not args.no_workers), config.server.event_loop)
    except LoopUnavailable as exc:
        return refused(str(exc))
    except (StoreUnavailable, StoreLocked) as exc:
        return refused(f"cannot open the store: {exc}")  # as every verb on the store says it
    except BridgeError as exc:
        return refused(exc)
    except OSError as exc:  # what nothing above names: the file it names, and the system's reason
        return refused(f"cannot start: {exc}")
    return status


def refused(why: str | BridgeError) -> int:
    """Log `server.start_refused` with what stopped the start (`error`; each error, when there are several, in
    `errors`, as `file:line:col: path: message`); the exit status, 2."""
    lines = [why] if isinstance(why, str) else [str(err) for err in (why.errors if isinstance(why, ErrorList)
                                                                     else [why])]
    if len(lines) == 1:
        log.error("server.start_refused", error=lines[0])
    else:
        log.error("server.start_refused", error=f"{len(lines)} errors", errors=lines)
    return 2


async def _sandbox(host: str, port: int) -> None:
    vendors = sorted(simulator_registry())
    name_the_server()
    runner = web.AppRunner(serving(vendors), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("sandbox.started", url=f"http://{host}:{port}", vendors=vendors)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def run_sandbox(args: argparse.Namespace) -> int:
    configure_logging()
    asyncio.run(_sandbox(args.host, args.port))
    return 0
