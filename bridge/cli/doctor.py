"""`ticketbridge doctor [DESTINATION…]`: check each destination's host, keys and permissions with one harmless
look-up; sandbox destinations are checked against their simulators, started here for the purpose (a sandbox with a
`base_url`, a shared `ticketbridge sandbox`, against the one there)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from bridge import USER_AGENT
from bridge.cli.common import config_from
from bridge.config import Config
from bridge.doctor import Finding, examine_all, render
from bridge.errors import named
from bridge.simulators import serving
from bridge.vendors.base import Adapter
from bridge.vendors.registry import adapter_class

TIMEOUT_SECONDS = 15.0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("doctor", parents=[common],
                       help="check destinations' host, keys and permissions with one harmless look-up each")
    p.add_argument("destinations", nargs="*", metavar="DESTINATION", help="the destinations to check (default: all)")
    p.set_defaults(run=run_doctor)


@asynccontextmanager
async def simulators(vendors: set[str]) -> AsyncIterator[str]:
    """The simulators of `vendors` on a free loopback port, each under /{vendor}; yields the base address."""
    if not vendors:
        yield ""
        return
    runner = web.AppRunner(serving(vendors), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def check(config: Config, names: list[str]) -> list[Finding]:
    chosen = {name: config.destinations[name] for name in names}
    async with simulators({d.vendor for d in chosen.values() if d.own_sandbox}) as sandbox:
        adapters: list[Adapter] = [
            adapter_class(d.vendor)(name, d, f"{sandbox}/{d.vendor}" if d.own_sandbox else d.base_url or "")
            for name, d in chosen.items()]
        async with aiohttp.ClientSession(headers={"User-Agent": USER_AGENT}) as session:
            return await examine_all(adapters, session, TIMEOUT_SECONDS)


def run_doctor(args: argparse.Namespace) -> int:
    config = config_from(args)
    if config is None:
        return 2
    names = list(args.destinations) or sorted(config.destinations)
    unknown = [n for n in names if n not in config.destinations]
    if unknown:
        print(f"no destination {', '.join(named(n) for n in unknown)} in the config; it has: "
              f"{', '.join(sorted(config.destinations)) or '(none)'}", file=sys.stderr)
        return 2
    if not names:
        print("the config has no destinations to check", file=sys.stderr)
        return 2
    findings = asyncio.run(check(config, names))
    for finding in findings:
        print(render(finding))
    counts = {state: sum(f.state == state for f in findings) for state in ("ok", "failed", "skipped")}
    print(f"doctor: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped")
    return 1 if counts["failed"] else 0
