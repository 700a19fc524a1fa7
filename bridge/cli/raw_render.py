"""`ticketbridge render --source NAME --raw FILE`: a provider's raw body run through its source's handler and
the mappings of that source, as the console's playground runs it: nothing stored, nothing sent."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from aiohttp import web

from bridge.app import build_runtime, load_mappings
from bridge.config import Config
from bridge.console.models import Decision, PlaygroundBody, PlaygroundResult
from bridge.console.playground import run_playground
from bridge.errors import BridgeError, ErrorList
from bridge.runtime import Runtime


def parse_headers(given: list[str]) -> dict[str, str]:
    """`K:V` arguments as headers; raises ValueError naming one without a colon or a name."""
    headers: dict[str, str] = {}
    for item in given:
        name, colon, value = item.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"--header {item!r}: write it as Name:value, "
                             "e.g. --header 'Content-Type:application/json'")
        headers[name.strip()] = value.strip()
    return headers


def _body(path: str) -> str:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _dump(value: Any) -> str:
    return json.dumps(msgspec.to_builtins(value), indent=2, ensure_ascii=False)


def _explain(decisions: list[Decision]) -> None:
    for d in decisions:
        print(f"== {d.mapping} ({d.destination} {d.action}): {d.decision}", file=sys.stderr)
        print(d.explain, file=sys.stderr)


def _one_mapping(result: PlaygroundResult, wanted: str, args: argparse.Namespace) -> int:
    """Print `wanted`'s body for each event, as `render MAPPING` does; 1 when it skips or fails one."""
    code = 0
    for event in result.events:
        found = [d for d in event.decisions if d.mapping == wanted]
        if not found:
            known = ", ".join(d.mapping for d in event.decisions) or "(none)"
            print(f"no mapping named {wanted!r} takes source {result.source!r}; those that do: {known}",
                  file=sys.stderr)
            return 2
        [d] = found
        if args.explain:
            _explain([d])
        if d.decision == "skipped":
            print(f"{d.mapping}: `when` skipped this input ({d.when}); nothing would be sent", file=sys.stderr)
            code = 1
        elif d.decision == "failed":
            print(f"{d.mapping}: {d.error}", file=sys.stderr)
            code = 1
        else:
            print(_dump(d.fields if args.fields else d.vendor_body))
    return code


async def _playground(rt: Runtime, given: PlaygroundBody) -> PlaygroundResult:
    """The playground, given a real request to clone: one request to a loopback listener of its own (the
    handlers read aiohttp requests; this keeps test doubles out of the command)."""
    results: list[PlaygroundResult] = []

    async def handle(request: web.Request) -> web.Response:
        results.append(await run_playground(rt, given, request))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session, session.post(f"http://127.0.0.1:{port}/") as resp:
            resp.raise_for_status()
    finally:
        await runner.cleanup()
    return results[0]


def run_raw_render(args: argparse.Namespace, config: Config) -> int:
    """The exit code: 0 when the body became events and no mapping failed on them; 1 when the handler refused
    it or a mapping failed (or, with MAPPING, skipped it); 2 when it could not run."""
    try:
        given = PlaygroundBody(source=args.source, body=_body(args.raw), headers=parse_headers(args.header or []),
                               verify=args.verify)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.source not in config.sources:
        print(f"unknown source {args.source!r}; configured sources: {', '.join(sorted(config.sources)) or '(none)'}",
              file=sys.stderr)
        return 2
    try:
        rt = build_runtime(config, load_mappings(config))
    except (ErrorList, BridgeError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    result = asyncio.run(_playground(rt, given))
    if result.outcome != "events":
        print(f"{args.source}: {result.outcome}" + (f" ({result.status})" if result.status else "")
              + (f": {result.message}" if result.message else "") + "; no event would be stored", file=sys.stderr)
        return 1
    if args.mapping is not None:
        return _one_mapping(result, args.mapping, args)
    failed = False
    for event in result.events:
        if args.explain:
            _explain(event.decisions)
        failed = failed or any(d.decision == "failed" for d in event.decisions)
    print(_dump({"source": result.source, "mappings_version": result.mappings_version, "events": [
        {"payload": e.payload, "dedup_key": e.dedup_key, "spam": e.spam,
         "decisions": [{"mapping": d.mapping, "destination": d.destination, "action": d.action,
                        "decision": d.decision, "error": d.error,
                        ("fields" if args.fields else "vendor_body"): d.fields if args.fields else d.vendor_body}
                       for d in e.decisions]} for e in result.events]}))
    return 1 if failed else 0
