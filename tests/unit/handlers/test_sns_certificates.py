"""handlers/sns_certificates.py: certificates fetched once and kept, failed fetches remembered, and the bounds
on the fetches a sender can cause by naming certificate URLs (a few at once, a few a second per public client
address)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge.errors import Rejected
from handlers.sns import FetchError
from handlers.sns_certificates import (
    ADDRESSES,
    AT_ONCE,
    NEW_BURST,
    NEW_PER_S,
    REFUSED_FOR_S,
    UNAVAILABLE_FOR_S,
    WAITING,
    CertificateCache,
    client_address,
)
from tests.conftest import eventually
from tests.fixtures.clocks import ManualClock
from tests.fixtures.providers import CERT_URL, FakeSns


class Held:
    """SNS's hosts holding every fetch until `release` is set: `started` lists the URLs whose fetch began, and
    `sns` answers them once released."""

    def __init__(self, sns: FakeSns | None = None) -> None:
        self.sns = sns or FakeSns()
        self.release = asyncio.Event()
        self.started: list[str] = []

    async def __call__(self, address: str) -> bytes:
        self.started.append(address)
        await self.release.wait()
        return await self.sns(address)


def url(i: int) -> str:
    return f"https://sns.us-east-1.amazonaws.com/SimpleNotificationService-{i:032x}.pem"


def cache(clock: ManualClock | None = None, **options: Any) -> CertificateCache:
    return CertificateCache(clock=clock or ManualClock(), source="ses", **options)


async def refused(c: CertificateCache, address: str, fetch: Any, client: str | None = None) -> Rejected:
    with pytest.raises(Rejected) as info:
        await c.get(address, fetch, client=client)
    return info.value


async def test_certificate_is_fetched_once_even_when_asked_concurrently() -> None:
    """Concurrent look-ups of one URL share one fetch, and later ones come from the cache."""
    fake, c = FakeSns(), cache()

    async def slow(address: str) -> bytes:
        await asyncio.sleep(0)
        return await fake(address)

    certs = await asyncio.gather(*(c.get(CERT_URL, slow) for _ in range(5)))
    await c.get(CERT_URL, slow)
    assert fake.fetched == [CERT_URL]
    assert all(cert == certs[0] for cert in certs)


async def test_a_request_that_goes_away_does_not_cancel_the_fetch_others_wait_on() -> None:
    """The request that started a fetch is cancelled (its client went away): a request waiting on the same
    fetch still gets the certificate, and the fetch is not made again."""
    held, c = Held(), cache()
    fake = held.sns
    first = asyncio.ensure_future(c.get(CERT_URL, held))
    await eventually(lambda: held.started == [CERT_URL])
    second = asyncio.ensure_future(c.get(CERT_URL, held))
    await asyncio.sleep(0)  # one step: the second request is waiting on the fetch under way
    first.cancel()
    held.release.set()
    cert = await second
    assert first.cancelled()
    assert await c.get(CERT_URL, held) == cert
    assert fake.fetched == [CERT_URL]


async def test_cache_is_bounded() -> None:
    """Only the most recently used URLs stay cached."""
    fake, c = FakeSns(), cache(limit=2)
    for i in range(3):
        await c.get(url(i), fake)
    await c.get(url(0), fake)
    assert len(fake.fetched) == 4


async def test_a_certificate_that_verified_a_message_is_kept_first() -> None:
    """A certificate that verified a message stays while others (SNS publishes many, in every region, and a
    sender may name them) push each other out."""
    fake, c = FakeSns(), cache(limit=2)
    await c.get(CERT_URL, fake)
    c.proven(CERT_URL)
    for i in range(5):
        await c.get(url(i), fake)
    await c.get(CERT_URL, fake)
    assert fake.fetched.count(CERT_URL) == 1


@pytest.mark.parametrize(("status", "expected", "retry_after"), [
    (404, 401, None), (403, 401, None), (302, 401, None), (200, 401, None),  # 200: over the size cap
    (500, 503, UNAVAILABLE_FOR_S), (429, 503, UNAVAILABLE_FOR_S), (None, 503, UNAVAILABLE_FOR_S),
])
async def test_fetch_failures(status: int | None, expected: int, retry_after: float | None) -> None:
    """A 4xx, a redirect (never followed) or an answer over the cap is a 401 (the URL holds no certificate to
    have); a 5xx, a 429 or no answer is a 503 with Retry-After, so SNS sends the message again."""

    async def failing(address: str) -> bytes:
        raise FetchError("nope", status)

    err = await refused(cache(), CERT_URL, failing)
    assert (err.status, err.check, err.retry_after) == (expected, "certificate", retry_after)


async def test_not_a_pem_is_401() -> None:
    """A URL that does not serve a PEM certificate is refused, and counted a failed fetch."""
    counts = Counts()
    err = await refused(cache(count=counts), CERT_URL, FakeSns(pem=b"<html>"))
    assert (err.status, err.check) == (401, "certificate")
    assert "not a PEM certificate" in str(err)
    assert (counts.of("sns.certificate_fetched", result="failed"), counts.of("sns.certificate_fetched", result="ok")) \
        == (1, 0)


async def test_requests_naming_a_missing_certificate_make_one_fetch() -> None:
    """Many requests naming a URL that answered 404, one after another or together, cost one fetch: the answer
    is remembered, and says for how long."""
    fake, c = FakeSns(status=404), cache()
    answers = [await refused(c, url(1), fake) for _ in range(50)]
    answers += await asyncio.gather(*(refused(c, url(1), fake) for _ in range(50)))
    assert fake.fetched == [url(1)]
    assert {(a.status, a.check) for a in answers} == {(401, "certificate")}
    assert str(answers[-1]) == ("the signing certificate could not be fetched (HTTP 404); that answer stands for "
                                f"{REFUSED_FOR_S:.0f}s, in which the URL is not fetched again")


async def test_a_definite_failure_is_remembered_for_ten_minutes() -> None:
    """A 404 is answered from memory until REFUSED_FOR_S has passed; then the URL is fetched again."""
    clock = ManualClock()
    fake, c = FakeSns(status=404), cache(clock)
    await refused(c, url(1), fake)
    clock.now += REFUSED_FOR_S - 1
    assert "that answer stands for 1s" in str(await refused(c, url(1), fake))
    assert len(fake.fetched) == 1
    clock.now += 1
    fake.status = 200
    await c.get(url(1), fake)
    assert len(fake.fetched) == 2


async def test_a_failure_that_may_pass_is_remembered_briefly() -> None:
    """A 5xx is answered 503 from memory, with Retry-After counting down, for UNAVAILABLE_FOR_S (less than SNS's
    20 s between retries), and then fetched again."""
    clock = ManualClock()
    fake, c = FakeSns(status=500), cache(clock)
    first = await refused(c, CERT_URL, fake)
    clock.now += 10
    second = await refused(c, CERT_URL, fake)
    assert (first.retry_after, second.retry_after) == (UNAVAILABLE_FOR_S, UNAVAILABLE_FOR_S - 10)
    assert "try again in 5s" in str(second)
    assert fake.fetched == [CERT_URL]
    clock.now += UNAVAILABLE_FOR_S - 10
    fake.status = 200
    await c.get(CERT_URL, fake)
    assert fake.fetched == [CERT_URL, CERT_URL]
    assert UNAVAILABLE_FOR_S < 20


@pytest.mark.parametrize("status", [None, 503, 429])
async def test_a_host_that_failed_is_not_asked_for_other_urls_briefly(status: int | None) -> None:
    """A host that did not answer (or answered 503 or 429) is not asked for any other URL for UNAVAILABLE_FOR_S:
    a sender naming new URLs on it has them answered 503 from memory, none fetched, none holding a turn; a 404
    on one URL says nothing of the others; another host is asked; after the while, the host is asked again."""
    clock = ManualClock()
    fake, c = FakeSns(), cache(clock)

    async def down(address: str) -> bytes:
        fake.fetched.append(address)
        raise FetchError("no answer" if status is None else f"HTTP {status}", status)

    await refused(c, url(0), down)
    clock.now += 5
    with capture_logs() as logs:
        answers = [await refused(c, url(i), down) for i in range(1, 40)]
    assert {(a.status, a.retry_after) for a in answers} == {(503, UNAVAILABLE_FOR_S - 5)}
    assert "sns.us-east-1.amazonaws.com failed on another URL just now" in str(answers[0])
    assert fake.fetched == [url(0)]
    [remembered] = [e for e in logs if e["event"] == "sns.certificate_failure_remembered"]
    assert (remembered["host"], remembered["url"]) == ("sns.us-east-1.amazonaws.com", url(1))
    other_region = url(1).replace("us-east-1", "eu-west-1")
    await c.get(other_region, fake)
    clock.now += UNAVAILABLE_FOR_S - 5
    await c.get(url(1), fake)
    assert fake.fetched == [url(0), other_region, url(1)]


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_a_server_error_on_one_url_leaves_the_host_to_other_urls(status: int) -> None:
    """A 5xx other than 503 is remembered for its URL alone (503 for UNAVAILABLE_FOR_S): a made-up name the host
    answers so does not keep a genuine message's certificate from being fetched. Before, any 5xx marked the host
    down for every URL on it."""
    clock = ManualClock()
    fake, c = FakeSns(status=status), cache(clock)
    made_up = await refused(c, url(0), fake)
    assert (made_up.status, made_up.retry_after) == (503, UNAVAILABLE_FOR_S)
    fake.status = 200
    await c.get(url(1), fake)
    clock.now += 1
    again = await refused(c, url(0), fake)
    assert (again.status, again.retry_after) == (503, UNAVAILABLE_FOR_S - 1)
    assert fake.fetched == [url(0), url(1)]


async def test_a_definite_failure_leaves_the_host_to_other_urls() -> None:
    """A 404 (a made-up name) is remembered for its URL only: the next URL on the host is fetched."""
    fake, c = FakeSns(status=404), cache()
    await refused(c, url(0), fake)
    fake.status = 200
    await c.get(url(1), fake)
    assert fake.fetched == [url(0), url(1)]


async def test_urls_waiting_on_a_host_that_fails_are_not_fetched_when_their_turn_comes() -> None:
    """Fetches waiting for a turn while one on their host fails (no answer within the timeout) are answered 503
    when their turn comes, without a fetch each: a host that never answers holds a turn once per
    UNAVAILABLE_FOR_S, not once per URL a sender makes up."""
    started: list[str] = []
    release = asyncio.Event()

    async def silent(address: str) -> bytes:
        started.append(address)
        await release.wait()
        raise FetchError("TimeoutError: no answer")

    c = cache(at_once=1)
    tasks = [asyncio.create_task(c.get(url(i), silent)) for i in range(5)]
    await eventually(lambda: started == [url(0)])
    release.set()
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    assert [(a.status, a.check) for a in answers if isinstance(a, Rejected)] == [(503, "certificate")] * 5
    assert started == [url(0)]
    assert c.fetches == 1


async def test_remembered_failures_are_bounded() -> None:
    """Only the newest `failures` failed URLs are remembered."""
    fake, c = FakeSns(status=404), cache(failures=2)
    for i in range(3):
        await refused(c, url(i), fake)
    await refused(c, url(2), fake)
    await refused(c, url(0), fake)
    assert fake.fetched == [url(0), url(1), url(2), url(0)]


class Counts:
    """A `Count` that keeps what it was told: (name, labels) -> n."""

    def __init__(self) -> None:
        self.by: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}

    def __call__(self, name: str, n: int = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        self.by[key] = self.by.get(key, 0) + n

    def of(self, name: str, **labels: str) -> int:
        return self.by.get((name, tuple(sorted(labels.items()))), 0)


# Public addresses, as only those have a bucket (`ipaddress` counts the documentation ranges private).
FLOODER = "8.8.8.8"
AWS = "54.240.197.233"


async def test_a_flood_of_made_up_names_from_one_address_costs_a_fetch_a_second() -> None:
    """A sender naming a new made-up name in each of 1,000 requests a second, for ten seconds, from one address has
    NEW_BURST and then NEW_PER_S of them fetched a second (each a 404, remembered); the rest are answered 503 with
    Retry-After, nothing fetched. Without the bound, each of the 10,000 would be fetched."""
    clock, counts = ManualClock(), Counts()
    fake, c = FakeSns(status=404), cache(clock, count=counts)
    answers = []
    with capture_logs() as logs:
        for second in range(10):
            answers += [await refused(c, url(second * 1000 + i), fake, FLOODER) for i in range(1000)]
            clock.now += 1
    assert len(fake.fetched) == NEW_BURST + 9 * NEW_PER_S
    assert sum(a.status == 401 for a in answers) == len(fake.fetched)
    limited = [a for a in answers if a.status == 503]
    assert len(limited) == 10_000 - len(fake.fetched)
    assert {(a.check, a.retry_after) for a in limited} == {("certificate", 1)}
    assert str(limited[0]) == (
        "the signing certificate was not fetched: requests from 8.8.8.8 may have at most 4 certificates not yet "
        "kept fetched at once, then 1 a second, and none is left now; try again in 1s")
    assert counts.of("sns.certificate_fetched", result="failed") == len(fake.fetched)
    assert counts.of("sns.certificate_refused", reason="rate") == len(limited)
    [logged] = [e for e in logs if e["event"] == "sns.certificate_fetch_refused"]  # once a minute at most
    assert (logged["bound"], logged["url"], logged["client"], logged["refused"]) == (
        "rate", url(NEW_BURST), FLOODER, 1)
    assert sum(e["event"] == "sns.certificate_fetch_failed" for e in logs) == len(fake.fetched)


async def test_a_genuine_message_from_another_address_is_fetched_at_once_during_a_flood() -> None:
    """While one address floods made-up names (its bucket spent, its requests answered 503), a genuine message
    naming a certificate not yet kept (after a start, or a rotation), from AWS's address, has it fetched at once:
    one sender cannot spend another's share. With one bucket per SNS host, it was a 503 until the flood paused."""
    clock = ManualClock()
    fake, c = FakeSns(status=404), cache(clock)
    for i in range(50):
        await refused(c, url(i), fake, FLOODER)
    fake.status = 200
    await c.get(CERT_URL, fake, client=AWS)
    fake.status = 404
    assert (await refused(c, url(50), fake, FLOODER)).status == 503
    assert fake.fetched == [*(url(i) for i in range(NEW_BURST)), CERT_URL]


async def test_the_flooding_address_has_a_fetch_again_a_second_later() -> None:
    """Right after a burst of made-up names has spent an address's bucket, a certificate not yet kept named from
    that address is answered 503 (SNS sends it again, 20 s later by default); a second later it is fetched."""
    clock = ManualClock()
    fake, c = FakeSns(status=404), cache(clock)
    for i in range(50):
        await refused(c, url(i), fake, FLOODER)
    fake.status = 200
    waited = await refused(c, CERT_URL, fake, FLOODER)
    assert (waited.status, waited.retry_after) == (503, 1)
    clock.now += 1 / NEW_PER_S
    await c.get(CERT_URL, fake, client=FLOODER)
    assert fake.fetched == [*(url(i) for i in range(NEW_BURST)), CERT_URL]


async def test_the_bound_is_per_address_and_spares_kept_and_remembered_urls() -> None:
    """With an address's bucket spent, it has no fetch on another region's host either; a kept certificate is
    answered, and a remembered 404 is its 401, neither taking from the bucket."""
    clock = ManualClock()
    fake, c = FakeSns(), cache(clock, burst=2)
    await c.get(CERT_URL, fake, client=FLOODER)
    fake.status = 404
    await refused(c, url(1), fake, FLOODER)
    assert (await refused(c, url(2), fake, FLOODER)).status == 503
    other_region = url(2).replace("us-east-1", "eu-west-1")
    fake.status = 200
    assert (await refused(c, other_region, fake, FLOODER)).status == 503
    for _ in range(5):
        await c.get(CERT_URL, fake, client=FLOODER)
        assert (await refused(c, url(1), fake, FLOODER)).status == 401
    assert fake.fetched == [CERT_URL, url(1)]


@pytest.mark.parametrize("client", ["127.0.0.1", "10.0.0.5", "::1", "100.64.0.1", None])
async def test_a_flood_from_an_address_that_may_stand_for_many_senders_is_not_refused_by_rate(
        client: str | None) -> None:
    """Made-up names posted one after another from an address that is not public (a reverse proxy's, which every
    sender behind it has) are each fetched, none refused by `rate`, and a genuine message through it then has its
    certificate fetched: no one sender spends a budget the others share. Before, after NEW_BURST, all were 503."""
    counts = Counts()
    fake, c = FakeSns(status=404), cache(count=counts)
    answers = [await refused(c, url(i), fake, client) for i in range(50)]
    assert {(a.status, a.check) for a in answers} == {(401, "certificate")}
    fake.status = 200
    await c.get(CERT_URL, fake, client=client)
    assert fake.fetched == [*(url(i) for i in range(50)), CERT_URL]
    assert counts.of("sns.certificate_refused", reason="rate") == 0


async def test_a_flood_at_once_through_a_proxy_meets_the_turns_only() -> None:
    """Made-up names posted all at once through a proxy on 10.0.0.5: AT_ONCE are fetched at once and WAITING wait
    their turn, more than an address's NEW_BURST; the rest are refused by `busy`, none by `rate`."""
    held, counts = Held(FakeSns(status=404)), Counts()
    c = cache(count=counts)
    flood = [asyncio.create_task(c.get(url(i), held, client="10.0.0.5")) for i in range(AT_ONCE + WAITING + 20)]
    await eventually(lambda: len(held.started) == AT_ONCE)
    held.release.set()
    answers = await asyncio.gather(*flood, return_exceptions=True)
    assert [a.status for a in answers if isinstance(a, Rejected)] == [401] * (AT_ONCE + WAITING) + [503] * 20
    assert held.started == [url(i) for i in range(AT_ONCE + WAITING)]
    assert AT_ONCE + WAITING > NEW_BURST
    assert (counts.of("sns.certificate_refused", reason="busy"), counts.of("sns.certificate_refused", reason="rate")) \
        == (20, 0)


async def test_a_request_sharing_a_fetch_under_way_takes_nothing_from_its_bucket() -> None:
    """A request from a spent address naming a URL another address's request is fetching waits for that fetch
    and has its certificate: nothing more is fetched."""
    held = Held()
    c = cache(burst=1)
    held.sns.status = 404
    await refused(c, url(1), held.sns, FLOODER)
    held.sns.status = 200
    under_way = asyncio.create_task(c.get(CERT_URL, held, client=AWS))
    await eventually(lambda: held.started == [CERT_URL])
    sharing = asyncio.create_task(c.get(CERT_URL, held, client=FLOODER))
    held.release.set()
    assert await sharing == await under_way
    assert held.started == [CERT_URL]


async def test_a_fetch_refused_by_the_busy_bound_takes_nothing_from_the_bucket() -> None:
    """A request refused because as many fetches are under way and waiting as allowed leaves its address's bucket
    as it was: the next URL, once a turn is free, is fetched."""
    held = Held()
    c = cache(at_once=1, waiting=0, burst=2)
    first = asyncio.create_task(c.get(url(0), held, client=FLOODER))
    await eventually(lambda: held.started == [url(0)])
    for i in range(1, 10):
        assert (await refused(c, url(i), held, FLOODER)).status == 503
    held.release.set()
    await first
    await c.get(url(1), held, client=FLOODER)
    assert held.started == [url(0), url(1)]


async def test_address_buckets_are_bounded_the_least_recently_used_forgotten() -> None:
    """Only the `addresses` most recently used addresses keep a bucket; a forgotten one starts again with a full
    bucket, as a new address would. ADDRESSES, the default, holds: 5,000 addresses leave ADDRESSES buckets."""
    fake, c = FakeSns(status=404), cache(burst=1, addresses=2)
    for i, client in enumerate(("8.8.4.1", "8.8.4.2", "8.8.4.1", "8.8.4.3")):
        await refused(c, url(i), fake, client)
    assert list(c._buckets) == ["8.8.4.1", "8.8.4.3"]
    assert (await refused(c, url(10), fake, "8.8.4.1")).status == 503  # kept: still spent
    assert (await refused(c, url(11), fake, "8.8.4.2")).status == 401  # forgotten: a fetch again
    assert fake.fetched == [url(0), url(1), url(3), url(11)]

    fake, c = FakeSns(status=404), cache()
    for i in range(5000):
        await refused(c, url(i), fake, f"9.9.{i // 256}.{i % 256}")
    assert len(c._buckets) == ADDRESSES <= 5000


@pytest.mark.parametrize(("remote", "address"), [
    ("8.8.8.8", "8.8.8.8"),
    ("::ffff:8.8.8.8", "8.8.8.8"),
    ("2001:4860:1:2:3:4:5:6", "2001:4860:1:2::/64"),
    ("2001:4860:1:2::FFFF", "2001:4860:1:2::/64"),
])
def test_a_public_client_is_counted_by_its_ipv4_address_or_its_ipv6_64(remote: str, address: str) -> None:
    """A public IPv4 client has its address's bucket (an IPv4-mapped one too); a public IPv6 client its /64's (a
    subscriber holds all of it)."""
    assert client_address(remote) == address


@pytest.mark.parametrize("remote", [
    "127.0.0.1", "::1",  # loopback: a sidecar, a test client
    "10.0.0.5", "172.18.0.3", "192.168.1.1", "fd00::5", "::ffff:10.0.0.5",  # private: a proxy, a load balancer
    "100.64.0.1",  # shared: a carrier's NAT
    "169.254.1.1", "fe80::1%eth0",  # link-local
    "fec0::5", "feff::1", "fec0::ffff:8.8.8.8",  # site-local: deprecated, still routed privately where used
    "240.0.0.1", "0.0.0.0", "::",  # reserved, unspecified
    "203.0.113.7", "2001:db8::1",  # documentation ranges, private to ipaddress
    "", None, "not an address",  # a Unix socket's peer, not known
])
def test_an_address_that_may_stand_for_many_senders_has_no_bucket(remote: str | None) -> None:
    """Only a public address names one sender: any other, and what is no IP address, is not budgeted."""
    assert client_address(remote) is None


async def test_addresses_of_one_ipv6_64_share_a_bucket_and_another_64_has_its_own() -> None:
    """A sender moving through the addresses of its /64 has the one bucket's fetches; an address in the next /64
    has its own."""
    fake, c = FakeSns(status=404), cache()
    answers = [await refused(c, url(i), fake, f"2001:4860:0:7::{i:x}") for i in range(20)]
    assert [a.status for a in answers] == [401] * NEW_BURST + [503] * (20 - NEW_BURST)
    assert (await refused(c, url(99), fake, "2001:4860:0:8::1")).status == 401
    assert len(fake.fetched) == NEW_BURST + 1


async def test_kept_and_remembered_urls_are_answered_whatever_is_under_way() -> None:
    """Only fetches take turns: while every turn and place in line is taken, a kept certificate is answered, and a
    remembered failure is its 401."""
    held = Held()
    fake, started, release = held.sns, held.started, held.release
    c = cache()
    await c.get(CERT_URL, fake)
    fake.status = 404
    await refused(c, url(99), fake)
    fake.status = 200
    busy = [asyncio.create_task(c.get(url(i), held)) for i in range(AT_ONCE + WAITING)]
    await eventually(lambda: len(started) == AT_ONCE)
    assert (await refused(c, url(1000), held)).status == 503
    await c.get(CERT_URL, held)
    assert (await refused(c, url(99), held)).status == 401
    release.set()
    await asyncio.gather(*busy)
    assert started == [url(i) for i in range(AT_ONCE + WAITING)]


async def test_few_fetches_at_once_a_few_waiting_and_the_rest_refused_without_waiting() -> None:
    """While AT_ONCE fetches are under way, WAITING more wait their turn; a request naming yet another URL is a
    503 at once, not a wait; a request naming a URL being fetched shares that fetch."""
    held = Held()
    fake, started, release = held.sns, held.started, held.release
    c = cache()
    under_way = [asyncio.create_task(c.get(url(i), held)) for i in range(AT_ONCE + WAITING)]
    sharing = asyncio.create_task(c.get(url(0), held))
    await eventually(lambda: len(started) == AT_ONCE)
    asked = c.get(url(AT_ONCE + WAITING), held)
    with pytest.raises(Rejected) as info:
        asked.send(None)  # refused on its first step: it never suspends to wait for a turn
    err = info.value
    assert (err.status, err.retry_after) == (503, 10)
    assert (f"{AT_ONCE + WAITING} certificates are being fetched or waiting, at most {AT_ONCE} at once and "
            f"{WAITING} waiting") in str(err)
    release.set()
    await asyncio.gather(*under_way, sharing)
    assert fake.fetched == [url(i) for i in range(AT_ONCE + WAITING)]
    await c.get(url(AT_ONCE + WAITING), held)


async def test_a_fetch_whose_turn_does_not_come_is_a_503_and_not_remembered() -> None:
    """A fetch waiting longer than `turn_timeout` for a turn is a 503 with Retry-After for those asking; its URL
    is not remembered as failed, and is fetched when named again."""
    held = Held()
    started, release = held.started, held.release
    c = cache(at_once=1, turn_timeout=0.01)
    first = asyncio.create_task(c.get(url(0), held))
    await eventually(lambda: started == [url(0)])
    err = await refused(c, url(1), held)
    assert (err.status, err.check, err.retry_after) == (503, "certificate", 1)
    assert "no turn to fetch it came within 0.01s (1 at once)" in str(err)
    release.set()
    await first
    await c.get(url(1), held)
    assert started == [url(0), url(1)]


async def test_a_failure_is_logged_once_per_url_per_minute() -> None:
    """A failed fetch is logged when it fails; requests answered from memory are logged at most once a minute
    for the URL, with how many there were."""
    clock = ManualClock()
    fake, c = FakeSns(status=404), cache(clock)
    with capture_logs() as logs:
        for _ in range(100):
            await refused(c, url(1), fake)
        clock.now += 61
        for _ in range(3):
            await refused(c, url(1), fake)
    [failed] = [e for e in logs if e["event"] == "sns.certificate_fetch_failed"]
    assert {k: failed[k] for k in ("source", "url", "reason", "status", "remembered_s")} == {
        "source": "ses", "url": url(1), "reason": "HTTP 404", "status": 401, "remembered_s": REFUSED_FOR_S}
    [remembered] = [e for e in logs if e["event"] == "sns.certificate_failure_remembered"]
    assert (remembered["url"], remembered["hits"]) == (url(1), 100)
    assert len(logs) == 2


async def test_refusals_by_the_bound_are_logged_once_a_minute() -> None:
    """Refusals by the bound are logged at most once a minute in all, with how many there were since."""
    clock = ManualClock()
    held = Held(FakeSns(status=404))
    c = cache(clock, at_once=1, waiting=0)
    under_way = asyncio.create_task(c.get(url(0), held))
    await eventually(lambda: bool(c.fetches))
    with capture_logs() as logs:
        for i in range(1, 31):
            await refused(c, url(i), held)
        clock.now += 61
        await refused(c, url(99), held)
    refusals = [e for e in logs if e["event"] == "sns.certificate_fetch_refused"]
    assert [(e["url"], e["refused"]) for e in refusals] == [(url(1), 1), (url(99), 30)]
    assert refusals[0]["reason"] == "1 certificates are being fetched or waiting, at most 1 at once and 0 waiting"
    assert {e["bound"] for e in refusals} == {"busy"}
    held.release.set()
    with pytest.raises(Rejected):
        await under_way
