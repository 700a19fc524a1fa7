"""What a destination sends to prove who it is: fixed headers, or a token with a lifetime that is obtained
from the vendor, kept until shortly before it expires, obtained again once when the vendor refuses it,
and given back at shutdown.

Every request to a vendor (a send and the look-ups it makes, a reconciliation, a ticket check, `doctor`) goes
through `authorized`: it asks `headers()`, makes the request with them, and after a refusal calls `renew()` with
the headers it sent and makes the request once more. Concurrent senders share one token and
one log-in: a token is obtained by one coroutine at a time, and a renewal asked for a token that another
coroutine has already replaced costs nothing. A token's request waits for `admit` (the destination's gate: its
rate limit), as every other request to the vendor does, when the caller gives one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import aiohttp
import msgspec
import structlog

from bridge.errors import BridgeError
from bridge.escaping import header_problem
from bridge.vendors.failures import VendorAuthFailed

log = structlog.get_logger("ticketbridge.vendors")

# A token is renewed this long before it expires (at most; a short-lived token keeps `MARGIN_SHARE` of its
# life), so a request built just before the expiry does not reach the vendor after it.
DEFAULT_MARGIN_SECONDS = 60.0
MARGIN_SHARE = 0.1
# After the vendor refuses the log-in itself, the refusal is repeated without asking again for this long: a
# queue of deliveries must not become a burst of failed log-ins (which can lock the account).
REFUSAL_HOLD_SECONDS = 30.0


T = TypeVar("T")
Admit = Callable[[], Awaitable[None]]
"""Awaited just before a request to the vendor goes out: the destination's gate (`Gate.admit_request`), which
counts it against the rate limit and holds it through a 429's pause."""


@dataclass(frozen=True)
class Token:
    """A bearer token and when it stops being valid (epoch seconds; None: not known, kept until refused)."""

    value: str
    expires_at: float | None = None
    obtained_at: float = 0.0


class Credentials(ABC):
    """The headers that authenticate a destination's requests."""

    renewable: ClassVar[bool] = False

    @abstractmethod
    async def headers(self, session: aiohttp.ClientSession, admit: Admit | None = None) -> dict[str, str]:
        """The headers to add to the next request; a request made to obtain them (a token's) waits for `admit`
        first. May raise VendorAuthFailed (the vendor refused the credentials), VendorUnavailable or a transport
        error (try later), and whatever `admit` raises."""

    async def renew(self, session: aiohttp.ClientSession, sent: dict[str, str], admit: Admit | None = None) -> bool:
        """After the vendor refused `sent`: whether newer credentials are now available to try once more (a
        request made to obtain them waits for `admit` first)."""
        return False

    async def close(self, session: aiohttp.ClientSession,  # noqa: B027 - most credentials hold nothing
                    admit: Admit | None = None) -> None:
        """Give back what was obtained (a log-out), at shutdown; a request it makes waits for `admit` first, as
        every other request to the vendor does."""

    def held(self) -> frozenset[str]:
        """The secrets these credentials send now (header values, an obtained token), for redaction by value."""
        return frozenset()


class StaticCredentials(Credentials):
    """Headers fixed by the configuration (an API key, a basic or bearer token)."""

    def __init__(self, headers: dict[str, str]) -> None:
        self._headers = dict(headers)

    async def headers(self, session: aiohttp.ClientSession, admit: Admit | None = None) -> dict[str, str]:
        return dict(self._headers)

    def held(self) -> frozenset[str]:
        return frozenset(self._headers.values())


class TokenCredentials(Credentials):
    """A token obtained from the vendor (`obtain`), sent as `Authorization: Bearer`; one log-in at a time."""

    renewable: ClassVar[bool] = True

    def __init__(self, destination: str, *, margin_s: float = DEFAULT_MARGIN_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.destination = destination
        self.margin_s = margin_s
        self.clock = clock
        self.token: Token | None = None
        self.replaced: Token | None = None  # the token before this one: an answer to a request made with it may come
        self.obtained = 0  # how many tokens were obtained: one per expiry or refusal, not per request
        self.attempts = 0  # how many times the vendor was asked for one
        self._refused: tuple[BridgeError, float] | None = None  # the last refusal and until when it holds
        self._lock = asyncio.Lock()

    @abstractmethod
    async def obtain(self, session: aiohttp.ClientSession) -> Token:
        """A new token from the vendor."""

    def token_named(self) -> str:
        """The obtained token as an error names it, before what is wrong with it."""
        return f"the token obtained for destination {self.destination!r}"

    async def _obtain_usable(self, session: aiohttp.ClientSession) -> Token:
        """`obtain`, refused (VendorAuthFailed, naming the token, never its value) when no header can carry it."""
        token = await self.obtain(session)
        if (problem := header_problem(token.value)) is not None:
            raise VendorAuthFailed(f"{self.token_named()} {problem}: no request can carry it, so it is not used")
        return token

    async def revoke(self, session: aiohttp.ClientSession, token: Token, admit: Admit | None = None) -> None:
        """Invalidate `token` at the vendor, its request let out by `admit` (the destination's gate); the default has
        nothing to call, and takes no slot."""

    def header_for(self, token: Token) -> dict[str, str]:
        return {"Authorization": f"Bearer {token.value}"}

    def fresh(self, token: Token | None) -> bool:
        """Whether `token` may still be sent: it has not reached its renewal time."""
        if token is None:
            return False
        if token.expires_at is None:
            return True
        life = max(0.0, token.expires_at - token.obtained_at)
        return self.clock() < token.expires_at - min(self.margin_s, life * MARGIN_SHARE)

    def _current(self, refused: str | None = None) -> Token | None:
        token = self.token
        if self.fresh(token) and (token is None or token.value != refused):
            return token
        return None

    async def _get(self, session: aiohttp.ClientSession, refused: str | None = None,
                   admit: Admit | None = None) -> Token:
        """The token to send: the one kept while it is fresh (and not `refused`), else a new one, its request let
        out by `admit` (the destination's gate) as any other request to the vendor; none while a refusal holds."""
        found = self._current(refused)
        if found is not None:
            return found
        async with self._lock:
            found = self._current(refused)  # another sender obtained one while this one waited
            if found is not None:
                return found
            reason = "refused" if refused is not None else "expired" if self.token is not None else "first use"
            if self._refused is not None and self.clock() < self._refused[1]:
                raise self._refused[0]
            if admit is not None:
                await admit()  # the vendor counts the token's request against its limit too
            self.attempts += 1
            try:
                token = await self._obtain_usable(session)
            except VendorAuthFailed as exc:
                self._refused = (exc, self.clock() + REFUSAL_HOLD_SECONDS)
                raise
            self._refused = None
            self.token, self.replaced = token, self.token
            self.obtained += 1
        expires_in = None if token.expires_at is None else round(token.expires_at - self.clock(), 1)
        log.info("vendor.token_obtained", destination=self.destination, reason=reason, expires_in_s=expires_in)
        return token

    async def headers(self, session: aiohttp.ClientSession, admit: Admit | None = None) -> dict[str, str]:
        return self.header_for(await self._get(session, admit=admit))

    async def renew(self, session: aiohttp.ClientSession, sent: dict[str, str], admit: Admit | None = None) -> bool:
        token = self.token
        if token is None or sent != self.header_for(token):
            return True  # a newer token is already there (or the sent one is gone): try with it
        await self._get(session, refused=token.value, admit=admit)
        return True

    def held(self) -> frozenset[str]:
        return frozenset(value for token in (self.token, self.replaced) if token is not None
                         for value in (token.value, *self.header_for(token).values()))

    async def close(self, session: aiohttp.ClientSession, admit: Admit | None = None) -> None:
        token, self.token = self.token, None
        if token is not None:
            self.replaced = token  # still redacted from what answers to it say
        if token is not None and self.fresh(token):
            await self.revoke(session, token, admit)
            log.info("vendor.token_revoked", destination=self.destination)


async def authorized(session: aiohttp.ClientSession, credentials: Credentials | None,
                     attempt: Callable[[dict[str, str]], Awaitable[T]],
                     refused: Callable[[T], bool] = lambda _: False, *, admit: Admit | None = None) -> T:
    """`attempt` (one or more requests to a vendor) made with the destination's credential headers. When the
    vendor refuses them (`attempt` raises VendorAuthFailed, or `refused` says so of its result) and the
    credentials have a lifetime, new ones are obtained and `attempt` is made once more, never more. A request
    made to obtain credentials (a token's) waits for `admit` first, as `attempt`'s own requests do theirs. What
    obtaining credentials raises (VendorAuthFailed, VendorUnavailable, a transport error, what `admit` raises) is
    raised."""
    if credentials is None:
        return await attempt({})
    sent = await credentials.headers(session, admit)
    try:
        result = await attempt(sent)
    except VendorAuthFailed:
        if not credentials.renewable or not await credentials.renew(session, sent, admit):
            raise
        return await attempt(await credentials.headers(session, admit))
    if credentials.renewable and refused(result) and await credentials.renew(session, sent, admit):
        return await attempt(await credentials.headers(session, admit))
    return result


def jwt_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT (epoch seconds), read without checking the signature (the vendor checks it;
    the bridge only needs to know when to log in again); None when the token is not a JWT or has no `exp`."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims: Any = msgspec.json.decode(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (binascii.Error, UnicodeEncodeError, ValueError, msgspec.DecodeError, RecursionError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return float(exp)
    return None
