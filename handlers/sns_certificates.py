"""SNS signing certificates by URL, and a bound on the fetches a sender can cause by naming URLs: a certificate
is fetched once and kept (concurrent requests share one fetch); a fetch that failed is remembered for a while,
so that naming its URL again costs nothing outbound; and fetches are bounded, a few at once and a few new URLs
in any five minutes, past which a request is answered 503 with Retry-After at once (SNS sends it again)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from cryptography import x509

from bridge.delivery.ratelimit import SlidingWindowLimiter
from bridge.errors import Rejected
from handlers.sns import FETCH_TIMEOUT_S, Fetcher, FetchError

log = structlog.get_logger("ticketbridge.handlers.sns")

CERTIFICATES = 16
"""Certificates kept: SNS signs with one per region at a time, and publishes a new one under a new URL."""
FAILURES = 256
"""Failed URLs remembered, the oldest forgotten first: more than the fetch bound lets fail while one is kept."""
AT_ONCE = 2
"""Certificate fetches under way at once (requests for a URL already being fetched wait for that fetch)."""
NEW_URLS, NEW_URLS_WINDOW_S = 8, 300.0
"""Fetches started in any five minutes: a source sees one certificate per region, and a new one when SNS rotates."""
REFUSED_FOR_S = 600.0
"""How long a definite failure is remembered: the URL answered 4xx or a redirect, or held no certificate."""
UNAVAILABLE_FOR_S = 15.0
"""How long a failure that may pass is remembered (5xx, 429, no answer): less than the 20 s SNS waits between
retries by default, so that each retry of a message fetches again."""
LOG_EVERY_S = 60.0
"""A remembered failure is logged at most once per URL in this time, and refusals by the bound once in all."""


@dataclass
class _Failure:
    status: int
    """The answer while remembered: 401 (definite) or 503 (may pass)."""
    reason: str
    until: float
    hits: int = 0
    logged_at: float = -math.inf


def _retrieved(fetch: asyncio.Future[x509.Certificate]) -> None:
    if not fetch.cancelled():
        fetch.exception()


class CertificateCache:
    """Signing certificates by URL, with the failures of recent fetches and the bound on new ones. Times come
    from `clock` (monotonic seconds); `source` names the source in logs."""

    def __init__(self, limit: int = CERTIFICATES, *, failures: int = FAILURES, at_once: int = AT_ONCE,
                 new_urls: int = NEW_URLS, per_seconds: float = NEW_URLS_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic, source: str | None = None) -> None:
        self.limit = limit
        self.failures_limit = failures
        self.at_once = at_once
        self.new_urls = new_urls
        self.per_seconds = per_seconds
        self._clock = clock
        self._source = source
        self._certs: OrderedDict[str, x509.Certificate] = OrderedDict()
        self._proven: set[str] = set()
        self._failures: OrderedDict[str, _Failure] = OrderedDict()
        self._pending: dict[str, asyncio.Future[x509.Certificate]] = {}
        self._started = SlidingWindowLimiter(new_urls, per_seconds, clock=clock)
        self._refused = 0
        self._refused_logged_at = -math.inf
        self.fetches = 0

    async def get(self, url: str, fetch: Fetcher) -> x509.Certificate:
        """The certificate at `url` (already checked to be an SNS certificate's URL); Rejected(401) when it
        cannot be had, Rejected(503) with `retry_after` when it may be later."""
        cert = self._certs.get(url)
        if cert is not None:
            self._certs.move_to_end(url)
            return cert
        pending = self._pending.get(url)
        if pending is None:
            self._check_remembered(url)
            self._admit(url)
            pending = asyncio.ensure_future(self._fetch(url, fetch))
            pending.add_done_callback(_retrieved)  # when every waiter went away, its failure is still taken
            self._pending[url] = pending
        # Shielded: a request that goes away (its handler cancelled) does not cancel the fetch the others wait on.
        return await asyncio.shield(pending)

    async def _fetch(self, url: str, fetch: Fetcher) -> x509.Certificate:
        """One fetch of `url`, shared by every request naming it while it runs: kept when it succeeds."""
        try:
            cert = await self._load(url, fetch)
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

    def _check_remembered(self, url: str) -> None:
        """Raise the failure remembered for `url`, if one is; logged at most once per LOG_EVERY_S."""
        failure = self._failures.get(url)
        if failure is None:
            return
        now = self._clock()
        if now >= failure.until:
            del self._failures[url]
            return
        failure.hits += 1
        if now - failure.logged_at >= LOG_EVERY_S:
            log.info("sns.certificate_failure_remembered", source=self._source, url=url, reason=failure.reason,
                     status=failure.status, hits=failure.hits, remembered_s=math.ceil(failure.until - now))
            failure.hits, failure.logged_at = 0, now
        raise _rejection(failure, now)

    def _admit(self, url: str) -> None:
        """Start a fetch of `url`, or raise Rejected(503) when the bound is reached; never waits."""
        if len(self._pending) >= self.at_once:
            why = f"{len(self._pending)} certificates are being fetched, at most {self.at_once} at once"
            wait = math.ceil(FETCH_TIMEOUT_S)
        elif (delay := self._started.next_delay()) > 0:
            why = (f"at most {self.new_urls} new certificate URLs are fetched in any {self.per_seconds:.0f}s, "
                   "and that many were")
            wait = max(1, math.ceil(delay))
        else:
            self._started.reserve()
            self._started.sent()
            return
        self._refused += 1
        now = self._clock()
        if now - self._refused_logged_at >= LOG_EVERY_S:
            log.warning("sns.certificate_fetch_refused", source=self._source, url=url, reason=why,
                        refused=self._refused)
            self._refused, self._refused_logged_at = 0, now
        raise Rejected(503, f"the signing certificate was not fetched: {why}; try again in {wait}s",
                       check="certificate", retry_after=wait)

    async def _load(self, url: str, fetch: Fetcher) -> x509.Certificate:
        self.fetches += 1
        try:
            pem = await fetch(url)
        except FetchError as exc:
            may_pass = exc.status is None or exc.status >= 500 or exc.status == 429
            raise self._failed(url, str(exc), may_pass) from None
        try:
            return x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise self._failed(url, "the answer is not a PEM certificate", may_pass=False) from None

    def _failed(self, url: str, reason: str, may_pass: bool) -> Rejected:
        """Remember a failed fetch, log it, and return the request's answer."""
        now = self._clock()
        status, remembered = (503, UNAVAILABLE_FOR_S) if may_pass else (401, REFUSED_FOR_S)
        failure = _Failure(status, reason, now + remembered, logged_at=now)
        self._failures[url] = failure
        self._failures.move_to_end(url)
        while len(self._failures) > self.failures_limit:
            self._failures.popitem(last=False)
        log.warning("sns.certificate_fetch_failed", source=self._source, url=url, reason=reason, status=status,
                    remembered_s=remembered)
        return _rejection(failure, now)


def _rejection(failure: _Failure, now: float) -> Rejected:
    left = max(1, math.ceil(failure.until - now))
    if failure.status == 503:
        return Rejected(503, f"the signing certificate could not be fetched ({failure.reason}); try again in {left}s",
                        check="certificate", retry_after=left)
    return Rejected(401, f"the signing certificate could not be fetched ({failure.reason}); that answer stands for "
                         f"{left}s, in which the URL is not fetched again", check="certificate")
