"""SNS signing certificates by URL, and a bound on the fetches a sender can cause by naming URLs: a certificate
is fetched once and kept (concurrent requests share one fetch); a fetch that failed is remembered for a while,
so that naming its URL again costs nothing outbound, and a host that did not answer (or answered 429 or 503: it is
throttling or unavailable, for any URL) is remembered briefly too, so that other URLs on it cost nothing meanwhile
(another 5xx is remembered for its URL alone: it says nothing of the others, and a URL a sender made up answered
so must not keep the host from the genuine ones); and fetches are bounded: a few at
once, a few more waiting their turn (for at most a fetch's timeout), past which a request is answered 503 with
Retry-After at once (SNS sends it again). Only the SNS host of a source's topic's region is ever named here
(handlers/ses.py checks each message's URL against its topic first): a sender cannot name a host that never
answers (a made-up region's, another partition's unreachable from here) to hold a turn for a whole timeout per
URL it makes up.

New URLs are also bounded over time for each public client address (as the server sees it, `request.remote`: the
connection's peer, or the client a trusted reverse proxy forwarded, `server.trusted_proxies`; an IPv6 address by
its /64, which one subscriber holds whole): a bucket of NEW_BURST fetches, refilled at NEW_PER_S a second, so a
sender naming made-up names on the topic's host (each fetched once, then remembered with its 404) from one address
makes at most about one request a second to AWS, not one per message it posts; past it, its requests are answered
503 with Retry-After (SNS sends a genuine one again, 20 s later by default). The bucket is the address's, not the
host's: a budget any sender could spend would let one address refuse, for as long as it kept it up, the genuine
messages naming a certificate not yet kept (after a start, or when SNS rotates it), which come from AWS's own
addresses, each with its own bucket. Many addresses at once (a botnet, or the many /64s of one IPv6 allocation)
each have a bucket, and meet the turns only. Only a public address is budgeted, as only it names one sender: a
private, loopback, link-local, site-local (fec0::/10), reserved, unspecified or shared (100.64.0.0/10, a carrier's
NAT) address, or none (a Unix socket's peer), may be a reverse proxy's, a load balancer's or a sidecar's, whose one
address every sender behind it has (a forwarding header is read only from a proxy named in
`server.trusted_proxies`: from anyone else a client could write it); one bucket there would let a sender refuse
every genuine message coming through it, so those requests meet the turns only, and behind such a proxy not
trusted the turns are the bound on a flood. ADDRESSES buckets are kept, the least recently used forgotten first; a
forgotten address starts again with a full bucket, which only lets through what a new address would have."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NoReturn, TypeVar

import structlog
from cryptography import x509

from bridge.addresses import ip_of
from bridge.errors import Rejected
from handlers.base import Count, not_counted
from handlers.sns import FETCH_TIMEOUT_S, Fetcher, FetchError

log = structlog.get_logger("ticketbridge.handlers.sns")
V = TypeVar("V")

CERTIFICATES = 16
"""Certificates kept: SNS signs with one per region at a time, and publishes a new one under a new URL."""
FAILURES = 256
"""Failed URLs remembered, the oldest forgotten first: more than the fetch bound lets fail while one is kept."""
AT_ONCE = 2
"""Certificate fetches under way at once (requests for a URL already being fetched wait for that fetch)."""
WAITING = 8
"""Fetches of new URLs that may wait for a turn while AT_ONCE are under way; past them a request is refused."""
REFUSED_FOR_S = 600.0
"""How long a definite failure is remembered: the URL answered 4xx or a redirect, or held no certificate."""
UNAVAILABLE_FOR_S = 15.0
"""How long a failure that may pass is remembered (5xx, 429, no answer), for its URL, and for its host when it is the
host's (HOST_WIDE, no answer): less than the 20 s SNS waits between retries by default, so that each retry of a
message fetches again."""
HOST_WIDE = frozenset({429, 503})
"""Answers that speak for the host, whatever the URL: too many requests, unavailable (also how S3 says `SlowDown`)."""
NEW_BURST = 4
"""Fetches of URLs not kept that requests from one address may cause at once, after a quiet while: SNS signs a
region's messages with one certificate at a time (two while it rotates), so a start has each fetched at once."""
NEW_PER_S = 1.0
"""Fetches of URLs not kept that requests from one address may cause a second, once its NEW_BURST are spent."""
ADDRESSES = 4096
"""Addresses whose bucket is kept (about 200 bytes each, under 1 MB in all), the least recently used forgotten
first: a forgotten address has a full bucket again, as a new one would."""
LOG_EVERY_S = 60.0
"""A remembered failure is logged at most once per URL in this time, and refusals by each bound once in all."""

Bound = Literal["busy", "rate"]
"""Which bound refused a fetch: `busy`, the turns (AT_ONCE under way, WAITING waiting); `rate`, the bucket of the
client's public address."""
SHARED = ipaddress.IPv4Network("100.64.0.0/10")
"""Shared address space (RFC 6598): a carrier's NAT, many subscribers behind each address; `ipaddress` counts it
neither private nor global."""
SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")
"""IPv6 site-local addresses (deprecated by RFC 3879, still routed privately where used): `ipaddress` counts them
neither private nor reserved, and global."""


@dataclass
class _Failure:
    status: int
    """The answer while remembered: 401 (definite) or 503 (may pass)."""
    reason: str
    until: float
    hits: int = 0
    logged_at: float = -math.inf


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


def _retrieved(fetch: asyncio.Future[x509.Certificate]) -> None:
    if not fetch.cancelled():
        fetch.exception()


class CertificateCache:
    """Signing certificates by URL, with the failures of recent fetches and the bounds on new ones. Times come
    from `clock` (monotonic seconds); `source` names the source in logs; `count` counts fetches and refusals for
    /metrics (`sns.certificate_fetched` by result, `sns.certificate_refused` by reason)."""

    def __init__(self, limit: int = CERTIFICATES, *, failures: int = FAILURES, at_once: int = AT_ONCE,
                 waiting: int = WAITING, turn_timeout: float = FETCH_TIMEOUT_S, burst: int = NEW_BURST,
                 per_s: float = NEW_PER_S, addresses: int = ADDRESSES, clock: Callable[[], float] = time.monotonic,
                 source: str | None = None, count: Count = not_counted) -> None:
        self.limit = limit
        self.failures_limit = failures
        self.at_once = at_once
        self.waiting = waiting
        self.turn_timeout = turn_timeout
        self.burst = burst
        self.per_s = per_s
        self.addresses = addresses
        self.clock = clock
        self.count = count
        self._source = source
        self._certs: OrderedDict[str, x509.Certificate] = OrderedDict()
        self._proven: set[str] = set()
        self._failures: OrderedDict[str, _Failure] = OrderedDict()
        self._hosts_down: OrderedDict[str, _Failure] = OrderedDict()
        self._pending: dict[str, asyncio.Future[x509.Certificate]] = {}
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._turns: asyncio.Semaphore | None = None
        self._refused: dict[Bound, int] = {"busy": 0, "rate": 0}
        self._refused_logged_at: dict[Bound, float] = {"busy": -math.inf, "rate": -math.inf}
        self.fetches = 0

    async def get(self, url: str, fetch: Fetcher, client: str | None = None) -> x509.Certificate:
        """The certificate at `url` (already checked to be an SNS certificate's URL), for a request from `client`
        (`request.remote`, the forwarded client's behind a trusted proxy: a public one's bucket is what a new fetch
        takes from; any other, or None, has none);
        Rejected(401) when it cannot be had, Rejected(503) with `retry_after` when it may be later."""
        cert = self._certs.get(url)
        if cert is not None:
            self._certs.move_to_end(url)
            return cert
        pending = self._pending.get(url)
        if pending is None:
            self._check_remembered(url, self._failures)
            self._check_remembered(_host(url), self._hosts_down, url)
            self._admit(url)
            self._take(url, client)
            pending = asyncio.ensure_future(self._fetch(url, fetch))
            pending.add_done_callback(_retrieved)  # when every waiter went away, its failure is still taken
            self._pending[url] = pending
        # Shielded: a request that goes away (its handler cancelled) does not cancel the fetch the others wait on.
        return await asyncio.shield(pending)

    async def _fetch(self, url: str, fetch: Fetcher) -> x509.Certificate:
        """One fetch of `url`, shared by every request naming it while it runs: kept when it succeeds."""
        try:
            turns = await self._turn(url)
            try:
                # The host may have failed another URL's fetch while this one waited: it is not asked again yet.
                self._check_remembered(_host(url), self._hosts_down, url)
                cert = await self._load(url, fetch)
            finally:
                turns.release()
        finally:
            del self._pending[url]
        self._keep(url, cert)
        return cert

    def proven(self, url: str) -> None:
        """A message signed with `url`'s certificate verified: the certificate is kept before any that never
        verified one, so a sender naming SNS's other published certificates cannot push it out."""
        if url in self._certs:
            self._proven.add(url)

    def _keep(self, url: str, cert: x509.Certificate) -> None:
        self._certs[url] = cert
        while len(self._certs) > self.limit:
            others = [u for u in self._certs if u != url]
            victim = next((u for u in others if u not in self._proven), others[0])
            del self._certs[victim]
            self._proven.discard(victim)

    def _check_remembered(self, key: str, failures: OrderedDict[str, _Failure], url: str | None = None) -> None:
        """Raise the failure remembered for `key` (a URL, or the host of `url`) in `failures`, if one is; logged
        at most once per LOG_EVERY_S."""
        failure = failures.get(key)
        if failure is None:
            return
        now = self.clock()
        if now >= failure.until:
            del failures[key]
            return
        self.count("sns.certificate_refused", reason="remembered")
        failure.hits += 1
        if now - failure.logged_at >= LOG_EVERY_S:
            where = {"url": key} if url is None else {"url": url, "host": key}
            log.info("sns.certificate_failure_remembered", source=self._source, **where, reason=failure.reason,
                     status=failure.status, hits=failure.hits, remembered_s=math.ceil(failure.until - now))
            failure.hits, failure.logged_at = 0, now
        raise _rejection(failure, now)

    def _admit(self, url: str) -> None:
        """Let a fetch of `url` start or wait its turn, or raise Rejected(503) when as many as the bound allows
        are under way and waiting; never waits itself."""
        if len(self._pending) < self.at_once + self.waiting:
            return
        why = (f"{len(self._pending)} certificates are being fetched or waiting, at most {self.at_once} at once and "
               f"{self.waiting} waiting")
        self._refuse(url, "busy", why, math.ceil(self.turn_timeout))

    def _take(self, url: str, client: str | None) -> None:
        """Take one of the fetches `client`'s public address allows now (NEW_BURST, refilled at NEW_PER_S a second),
        or raise Rejected(503) with Retry-After when none is left; never waits itself. Any other address takes
        nothing: it may be a proxy's, every sender's behind it."""
        address = client_address(client)
        if address is None:
            return
        now = self.clock()
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            _remember(self._buckets, address, bucket, self.addresses)
        else:
            self._buckets.move_to_end(address)
            bucket.tokens = min(self.burst, bucket.tokens + max(0.0, now - bucket.at) * self.per_s)
            bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return
        why = (f"requests from {address} may have at most {self.burst} certificates not yet kept fetched at once, "
               f"then {self.per_s:g} a second, and none is left now")
        self._refuse(url, "rate", why, max(1, math.ceil((1 - bucket.tokens) / self.per_s)), client=address)

    def _refuse(self, url: str, bound: Bound, why: str, wait: int, **where: str) -> NoReturn:
        self.count("sns.certificate_refused", reason=bound)
        self._refused[bound] += 1
        now = self.clock()
        if now - self._refused_logged_at[bound] >= LOG_EVERY_S:
            log.warning("sns.certificate_fetch_refused", source=self._source, url=url, **where, bound=bound,
                        reason=why, refused=self._refused[bound])
            self._refused[bound], self._refused_logged_at[bound] = 0, now
        raise Rejected(503, f"the signing certificate was not fetched: {why}; try again in {wait}s",
                       check="certificate", retry_after=wait)

    async def _turn(self, url: str) -> asyncio.Semaphore:
        """Wait for one of the AT_ONCE turns, at most `turn_timeout`, and return the turns to release it to; a
        Rejected(503) when none came."""
        if self._turns is None:
            self._turns = asyncio.Semaphore(self.at_once)
        try:
            async with asyncio.timeout(self.turn_timeout):
                await self._turns.acquire()
        except TimeoutError:
            why = f"no turn to fetch it came within {self.turn_timeout:g}s ({self.at_once} at once)"
            self._refuse(url, "busy", why, math.ceil(self.turn_timeout))
        return self._turns

    async def _load(self, url: str, fetch: Fetcher) -> x509.Certificate:
        self.fetches += 1
        try:
            pem = await fetch(url)
        except FetchError as exc:
            may_pass = exc.status is None or exc.status >= 500 or exc.status == 429
            raise self._failed(url, str(exc), may_pass, host_wide=exc.status is None or exc.status in HOST_WIDE) \
                from None
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise self._failed(url, "the answer is not a PEM certificate", may_pass=False) from None
        self.count("sns.certificate_fetched", result="ok")
        return cert

    def _failed(self, url: str, reason: str, may_pass: bool, host_wide: bool = False) -> Rejected:
        """Remember a failed fetch (for its host too when `host_wide`: no answer, or one of HOST_WIDE), count and
        log it, and return the request's answer."""
        self.count("sns.certificate_fetched", result="failed")
        now = self.clock()
        status, remembered = (503, UNAVAILABLE_FOR_S) if may_pass else (401, REFUSED_FOR_S)
        failure = _Failure(status, reason, now + remembered, logged_at=now)
        _remember(self._failures, url, failure, self.failures_limit)
        if may_pass and host_wide:  # the host is down or busy, for every URL on it
            # Logged at its first use: the failure's own log names only its URL.
            host_failure = _Failure(status, f"{_host(url)} failed on another URL just now: {reason}", failure.until)
            _remember(self._hosts_down, _host(url), host_failure, self.failures_limit)
        log.warning("sns.certificate_fetch_failed", source=self._source, url=url, reason=reason, status=status,
                    remembered_s=remembered)
        return _rejection(failure, now)


@functools.lru_cache(maxsize=1024)  # a flood's every refused post asks of its one address: parsed once
def client_address(remote: str | None) -> str | None:
    """What a request's bucket is kept under, for a public address: its IPv4 address (an IPv4-mapped IPv6 one's
    too), or the /64 of its IPv6 address (a subscriber is given a /64 or more, and picks any address in it). None
    for an address that may stand for many senders, which has no bucket: private, loopback, link-local, reserved,
    unspecified, shared (SHARED) or site-local (SITE_LOCAL), as `ipaddress` tells them (a proxy's, a load
    balancer's, a sidecar's, a carrier's NAT), and what is no IP address (empty for a Unix socket's peer, or not
    known)."""
    address = ip_of(remote) if remote else None
    if address is None:
        return None
    if (address.is_private or address.is_loopback or address.is_link_local or address.is_reserved
            or address.is_unspecified or address in SHARED or address in SITE_LOCAL):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        return f"{ipaddress.IPv6Address(int(address) >> 64 << 64)}/64"  # IPv6Network: twice the cost
    return str(address)


def _host(url: str) -> str:
    """The host of a URL already checked to be an SNS certificate's (https://<host>/…)."""
    return url.split("/", 3)[2]


def _remember(kept: OrderedDict[str, V], key: str, value: V, limit: int) -> None:
    """Keep `value` under `key` as the most recently used, forgetting the least recently used past `limit`."""
    kept[key] = value
    kept.move_to_end(key)
    while len(kept) > limit:
        kept.popitem(last=False)


def _rejection(failure: _Failure, now: float) -> Rejected:
    left = max(1, math.ceil(failure.until - now))
    if failure.status == 503:
        return Rejected(503, f"the signing certificate could not be fetched ({failure.reason}); try again in {left}s",
                        check="certificate", retry_after=left)
    return Rejected(401, f"the signing certificate could not be fetched ({failure.reason}); that answer stands for "
                         f"{left}s, in which the URL is not fetched again", check="certificate")
