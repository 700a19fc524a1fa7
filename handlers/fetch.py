"""GETs from a provider's API made while a request waits (Resend's received email, Brevo's attachments):
a timeout on each, a cap on the bytes read, no redirects followed, every failure one exception."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp

from bridge import USER_AGENT
from bridge.bodies import read_capped
from bridge.errors import VALUE
from bridge.resolver import BoundedResolver
from bridge.yamlfile import KeyValueError

Getter = Callable[[str, dict[str, str], float, int], Awaitable[bytes]]
"""GET a URL with headers, a timeout in seconds and a cap on the body's bytes; raises FetchFailed."""


def check_api_url(api_url: str, example: str) -> None:
    """Refuse an `api_url` option that is not an http(s) URL, naming the provider's own as the example."""
    if not api_url.startswith(("https://", "http://")):
        raise KeyValueError(("api_url",), f"`api_url` {VALUE} must be an http(s) URL, e.g. {example}", api_url)


class FetchFailed(Exception):
    """The GET failed: no answer in time, a connection error, or a status other than 200."""


class TooLarge(FetchFailed):
    """The answer is over the cap: sending the request again would not help."""


async def http_get(url: str, headers: dict[str, str], timeout_s: float, max_bytes: int) -> bytes:
    """The default getter: one short-lived session per call (calls are per inbound message, not per request
    of a busy loop), so none outlives a request or needs closing at shutdown."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s),
                                         connector=aiohttp.TCPConnector(resolver=BoundedResolver()),
                                         headers={"User-Agent": USER_AGENT}) as session, \
                session.get(url, headers=headers, allow_redirects=False) as resp:
            if resp.status != 200:
                raise FetchFailed(f"HTTP {resp.status}")
            data, cut = await read_capped(resp, max_bytes)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        # A download URL may be signed in its query: the reason, which is logged and answered, names it without.
        reason = str(exc).replace(url, url.partition("?")[0])
        raise FetchFailed(f"{type(exc).__name__}: {reason}".rstrip(": ")) from None
    if cut:
        raise TooLarge(f"the answer is over {max_bytes} bytes")
    return data
