"""What tells a ticketbridge sandbox from any other server: every simulator answers `GET {its mount}/_sandbox` with
`{"sandbox": "ticketbridge", "vendor": "<vendor>"}`. A `sandbox: true` destination with a `base_url` (a shared
`ticketbridge sandbox`) sends nothing until that URL answers so (`sandbox_problem`): a typo pointing it at a real
vendor, or at any other server, must not receive demo bodies (the customers' data in them)."""

from __future__ import annotations

import aiohttp
import msgspec

from bridge.bodies import read_capped
from bridge.delivery.exchange import redact_url
from bridge.vendors.base import decode_json

IDENTITY_PATH = "/_sandbox"
"""Where, under its mount (`/kapture`), a simulator says what it is."""
SANDBOX = "ticketbridge"
READ_BYTES = 4096  # the identity is a few dozen bytes: an answer past this is no sandbox's
TIMEOUT_SECONDS = 10.0


def identity(vendor: str) -> dict[str, str]:
    """What the simulator of `vendor` answers at IDENTITY_PATH."""
    return {"sandbox": SANDBOX, "vendor": vendor}


def identity_url(base_url: str) -> str:
    return base_url.rstrip("/") + IDENTITY_PATH


async def sandbox_problem(session: aiohttp.ClientSession, base_url: str, vendor: str,
                          timeout_s: float = TIMEOUT_SECONDS) -> str | None:
    """None when `base_url` answers as a ticketbridge sandbox's simulator of `vendor`; else what it answered
    instead (no answer, another status, another body), naming the URL asked (its password and credential-named
    query redacted). Redirects are not followed: a sandbox answers where it is named."""
    url = identity_url(base_url)
    asked = f"GET {redact_url(url)}"
    expected = msgspec.json.encode(identity(vendor)).decode()
    try:
        async with session.get(url, allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            body, cut = await read_capped(resp, READ_BYTES)
            status = resp.status
    except TimeoutError:
        return f"{asked} gave no answer within {timeout_s:g} s"
    except (aiohttp.ClientError, OSError) as exc:
        return f"{asked} failed: {type(exc).__name__}: {exc}"
    if status != 200:
        return f"{asked} answered {status}, where a ticketbridge sandbox answers 200 and {expected}"
    if cut or decode_json(body) != identity(vendor):
        return f"{asked} answered 200 but not {expected}: not a ticketbridge sandbox's {vendor} simulator"
    return None
