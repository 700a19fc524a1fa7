"""bridge/vendors/credentials.py: tokens kept until shortly before expiry, one log-in at a time, renewed once
when refused, given back at close."""

from __future__ import annotations

import asyncio
import base64
import json

import aiohttp
import pytest

from bridge.vendors.credentials import (
    REFUSAL_HOLD_SECONDS,
    Admit,
    StaticCredentials,
    Token,
    TokenCredentials,
    authorized,
    jwt_expiry,
)
from bridge.vendors.failures import VendorAuthFailed
from tests.fixtures.clocks import ManualClock


class CountingTokens(TokenCredentials):
    """Hands out tok-1, tok-2, … each valid for `life` seconds; `gate` holds each log-in until set."""

    def __init__(self, clock: ManualClock, life: float | None = 100.0) -> None:
        super().__init__("dest", clock=clock)
        self.life = life
        self.gate = asyncio.Event()
        self.gate.set()
        self.revoked: list[str] = []

    async def obtain(self, session: aiohttp.ClientSession) -> Token:
        await self.gate.wait()
        now = self.clock()
        return Token(value=f"tok-{self.obtained + 1}", obtained_at=now,
                     expires_at=None if self.life is None else now + self.life)

    async def revoke(self, session: aiohttp.ClientSession, token: Token, admit: Admit | None = None) -> None:
        self.revoked.append(token.value)


@pytest.fixture
async def session() -> aiohttp.ClientSession:
    async with aiohttp.ClientSession() as s:
        yield s  # type: ignore[misc]


async def test_a_token_is_kept_until_its_renewal_time(session: aiohttp.ClientSession) -> None:
    """One log-in serves every request until a tenth of the token's life (at most 60 s) before it expires."""
    clock = ManualClock()
    creds = CountingTokens(clock, life=100.0)
    assert await creds.headers(session) == {"Authorization": "Bearer tok-1"}
    clock.now += 89.9
    assert await creds.headers(session) == {"Authorization": "Bearer tok-1"}
    clock.now += 0.1  # 90 s of 100: the last tenth is not used
    assert await creds.headers(session) == {"Authorization": "Bearer tok-2"}
    assert creds.obtained == 2


async def test_a_long_lived_token_is_renewed_a_minute_early(session: aiohttp.ClientSession) -> None:
    """A token of a day is renewed 60 s before its expiry, not 2.4 hours."""
    clock = ManualClock()
    creds = CountingTokens(clock, life=86_400.0)
    await creds.headers(session)
    clock.now += 86_400 - 61
    assert await creds.headers(session) == {"Authorization": "Bearer tok-1"}
    clock.now += 1
    assert await creds.headers(session) == {"Authorization": "Bearer tok-2"}


async def test_concurrent_senders_share_one_log_in(session: aiohttp.ClientSession) -> None:
    """Fifty senders asking at once while a log-in is under way wait for it: one token is obtained."""
    creds = CountingTokens(ManualClock())
    creds.gate.clear()
    waiting = [asyncio.create_task(creds.headers(session)) for _ in range(50)]
    await asyncio.sleep(0)
    creds.gate.set()
    assert {h["Authorization"] for h in await asyncio.gather(*waiting)} == {"Bearer tok-1"}
    assert creds.obtained == 1


async def test_a_refusal_renews_once_however_many_senders_saw_it(session: aiohttp.ClientSession) -> None:
    """Twenty senders refused with the same token cause one new log-in; a refusal of a token already replaced
    causes none."""
    creds = CountingTokens(ManualClock(), life=None)
    sent = await creds.headers(session)
    renewals = await asyncio.gather(*(creds.renew(session, sent) for _ in range(20)))
    assert all(renewals)
    assert creds.obtained == 2
    assert await creds.headers(session) == {"Authorization": "Bearer tok-2"}
    assert await creds.renew(session, sent) is True  # tok-1 again: tok-2 is already there
    assert creds.obtained == 2


async def test_close_revokes_a_live_token_once(session: aiohttp.ClientSession) -> None:
    """Close gives back the token in use (a log-out) and forgets it; a second close calls nothing."""
    creds = CountingTokens(ManualClock())
    await creds.headers(session)
    await creds.close(session)
    await creds.close(session)
    assert creds.revoked == ["tok-1"]
    assert creds.token is None


async def test_static_credentials_are_not_renewable(session: aiohttp.ClientSession) -> None:
    """Fixed headers are sent as configured, and a refusal offers nothing newer."""
    creds = StaticCredentials({"X-Api-Key": "k"})
    assert await creds.headers(session) == {"X-Api-Key": "k"}
    assert not creds.renewable
    assert await creds.renew(session, {"X-Api-Key": "k"}) is False


def _jwt(claims: object) -> str:
    def part(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'HS256'})}.{part(claims)}.c2ln"


@pytest.mark.parametrize(("token", "expected"), [
    (_jwt({"exp": 1_700_000_000, "sub": 1}), 1_700_000_000.0),
    (_jwt({"exp": 1.5}), 1.5),
    (_jwt({"sub": 1}), None),
    (_jwt({"exp": True}), None),
    (_jwt([1, 2]), None),
    ("not-a-jwt", None),
    ("a.%%%.c", None),
    ("a.bm90IGpzb24.c", None),
    ("a." + base64.urlsafe_b64encode(b"[" * 5000 + b"]" * 5000).rstrip(b"=").decode() + ".c", None),
])
def test_jwt_expiry_reads_exp_or_nothing(token: str, expected: float | None) -> None:
    """A JWT's `exp` claim is read without its signature; anything else gives None, never an error."""
    assert jwt_expiry(token) == expected


class RefusedTokens(CountingTokens):
    async def obtain(self, session: aiohttp.ClientSession) -> Token:
        await asyncio.sleep(0)
        raise VendorAuthFailed("Login: HTTP 401: Invalid credentials")


async def test_a_refused_log_in_is_not_repeated_for_a_while(session: aiohttp.ClientSession) -> None:
    """Twenty senders meeting a refused log-in cost the vendor one attempt; the refusal is repeated to them and
    to later senders for 30 s, then the vendor is asked again."""
    clock = ManualClock()
    creds = RefusedTokens(clock)
    results = await asyncio.gather(*(creds.headers(session) for _ in range(20)), return_exceptions=True)
    assert all(isinstance(r, VendorAuthFailed) for r in results)
    assert creds.attempts == 1
    clock.now += REFUSAL_HOLD_SECONDS - 0.1
    with pytest.raises(VendorAuthFailed):
        await creds.headers(session)
    assert creds.attempts == 1
    clock.now += 0.1
    with pytest.raises(VendorAuthFailed):
        await creds.headers(session)
    assert creds.attempts == 2


class UnsendableTokens(CountingTokens):
    """Hands out a token no header can carry (a vendor's answer with CR/LF in it)."""

    async def obtain(self, session: aiohttp.ClientSession) -> Token:
        return Token(value="tok-1\r\nX-Injected: 1", obtained_at=self.clock())


async def test_any_obtained_token_no_header_can_carry_is_refused_as_a_log_in_refusal(
        session: aiohttp.ClientSession) -> None:
    """Whatever the vendor, a token no header can carry is the credentials' failure (VendorAuthFailed), named
    and never shown, kept as the log-in's refusal (not asked again for REFUSAL_HOLD_SECONDS), never sent."""
    clock = ManualClock()
    creds = UnsendableTokens(clock)
    for _ in range(2):
        with pytest.raises(VendorAuthFailed) as info:
            await creds.headers(session)
        assert str(info.value) == ("the token obtained for destination 'dest' holds a control character ('\\r'): "
                                   "no request can carry it, so it is not used")
    assert (creds.attempts, creds.obtained, creds.token) == (1, 0, None)


async def test_authorized_renews_once_on_a_refusal(session: aiohttp.ClientSession) -> None:
    """`authorized` makes the attempt with the current token; refused (a refused answer, or VendorAuthFailed
    raised), it obtains a new token and makes the attempt once more, never a third time."""
    creds = CountingTokens(ManualClock())
    sent: list[str] = []

    async def refused_answer(headers: dict[str, str]) -> int:
        sent.append(headers["Authorization"])
        return 401

    assert await authorized(session, creds, refused_answer, lambda status: status == 401) == 401
    assert sent == ["Bearer tok-1", "Bearer tok-2"]

    async def refused_raise(headers: dict[str, str]) -> int:
        sent.append(headers["Authorization"])
        if headers["Authorization"] == "Bearer tok-2":
            raise VendorAuthFailed("refused")
        return 200

    assert await authorized(session, creds, refused_raise) == 200
    assert sent[2:] == ["Bearer tok-2", "Bearer tok-3"]


async def test_authorized_without_renewable_credentials_tries_once(session: aiohttp.ClientSession) -> None:
    """Fixed headers (or none) are sent as they are, and a refusal stands: nothing to renew."""
    sent: list[dict[str, str]] = []

    async def attempt(headers: dict[str, str]) -> int:
        sent.append(headers)
        return 401

    assert await authorized(session, StaticCredentials({"X-Key": "k"}), attempt, lambda s: s == 401) == 401
    assert await authorized(session, None, attempt, lambda s: s == 401) == 401
    assert sent == [{"X-Key": "k"}, {}]


async def test_each_token_request_waits_for_admit_and_no_other_does(session: aiohttp.ClientSession) -> None:
    """A token's request is let out by `admit` (the destination's gate), once per token obtained and before it is
    made: not for a token kept, nor for a renewal another sender has made already, nor while a refused log-in is
    repeated without asking the vendor; `authorized` passes its `admit` to the first token and to the renewal."""
    clock = ManualClock()
    creds = CountingTokens(clock, life=100.0)
    admitted: list[int] = []  # how many tokens had been obtained when each request was let out

    async def admit() -> None:
        admitted.append(creds.obtained)

    sent = await creds.headers(session, admit)
    assert await creds.headers(session, admit) == sent  # kept
    assert admitted == [0]
    assert await creds.renew(session, sent, admit)
    assert await creds.renew(session, sent, admit)  # already renewed: nothing asked
    assert admitted == [0, 1]

    async def refused_answer(headers: dict[str, str]) -> int:
        return 401

    clock.now += 100.0  # tok-2 is past its renewal time: tok-3 first, tok-4 after its refusal
    assert await authorized(session, creds, refused_answer, lambda status: status == 401, admit=admit) == 401
    assert admitted == [0, 1, 2, 3]

    refusing = RefusedTokens(clock)
    refusals: list[int] = []

    async def admit_refused() -> None:
        refusals.append(refusing.attempts)

    for _ in range(2):
        with pytest.raises(VendorAuthFailed):
            await refusing.headers(session, admit_refused)
    assert refusals == [0]  # the second refusal is repeated, not asked for


async def test_a_token_request_that_admit_stops_is_not_made(session: aiohttp.ClientSession) -> None:
    """What `admit` raises (the store that keeps the gate failing) stops the token's request before it is made: no
    token asked for, and the next sender asks again."""
    creds = CountingTokens(ManualClock())

    async def failing() -> None:
        raise RuntimeError("the gate's store is down")

    with pytest.raises(RuntimeError, match="store is down"):
        await creds.headers(session, failing)
    assert (creds.attempts, creds.obtained, creds.token) == (0, 0, None)
    assert await creds.headers(session) == {"Authorization": "Bearer tok-1"}
