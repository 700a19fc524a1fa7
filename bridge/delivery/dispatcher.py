"""The delivery loop: one lane per destination, so a slow or failing vendor never delays another.

A lane asks its destination's gate (rate limit, a 429's pause, the breaker: bridge.delivery.coordination)
how many sends may start now, claims at most that many due deliveries (up to its free in-flight slots),
sends them at once, and records each attempt with its lease: a result whose lease another process has
taken meanwhile is not recorded over that process's claim (`delivery.lease_lost`). Each lease is its claim's: the
store gives every claim a token (`Claimed.token`) that the lane's records, releases and extensions name, so a late
or repeated one never acts on a later claim of the same delivery, even this process's own. Leases are short and
renewed while held (`keep_leases`, every third of a lease), so a dead process's work is taken over within
about a lease, whatever the send timeout. A lane notes when each lease was last confirmed (its claim, then each
extension that returned it) and does not write a request whose lease may have run out: one confirmed more than
`lease_s * (1 - LEASE_MARGIN)` ago, or whose last extension did not return it (a process that stalled past its
lease, another having taken it over). That delivery is given up unsent (`delivery.lease_lost`, unsent), no
attempt recorded, and given back when its claim is still this process's (a release names its claim's token).

A delivery given back unsent whose release the store fails (it is down) is asked again until the store takes it,
past the end of its lease too, and owed meanwhile (`Dispatcher.owed`): the lease reaper's first pass once the store
answers gives back every delivery owed in one statement, before it renews leases or reaps (`give_back_owed`), so an
outage longer than a lease delays it, rather than leave it in doubt as a reaped lease is.

A claim waits on a store commit (behind the fsync of results being recorded): without a rate limit, slots freed
meanwhile are claimed beside it, each claim reserving its slots, so the vendor is kept busy rather than waiting a
commit per claim. When nothing is due it sleeps until the next due time, or until intake wakes it: new work is sent
at once, without polling. Work added by other processes (the CLI's replay) wakes it through the store's `subscribe`;
a slow poll remains the fallback.

An attempt whose result the store cannot take (a full disk, a lost file) is held in memory and its
record retried, with backoff, for as long as the process lives: the vendor has answered, and giving
the delivery back would send it twice. Its lease is kept meanwhile (`keep_leases`, which the lease
reaper calls before it reaps). A lane holds at most `max_unrecorded` such results (answered, not
yet in the store) before it stops claiming, so memory stays bounded. Only a stop that ends the
process gives them up, each logged as a possible duplicate. A record the store refuses for its data
(StoreRefused), or one that raises anything but a store failure, is not retried: the attempt is recorded
again reduced, without its excerpt and exchange (`reduced`), and when that fails too, with its outcome and next
state only (`minimal`), so that its outcome is kept and it is never sent again for want of a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp
import msgspec
import structlog
from yarl import URL

from bridge.config import DestinationConfig
from bridge.delivery.breaker import DESTINATION_FAILURES, Breaker
from bridge.delivery.coordination import Admission, Coordination, Gate, LocalCoordination, SendSlot
from bridge.delivery.exchange import redact_url
from bridge.delivery.ratelimit import Limiter, Unlimited, make_limiter
from bridge.delivery.retry import RetryPolicy
from bridge.delivery.sender import (
    ERROR_CHARS,
    ID_CHARS,
    LOOKUP_ERRORS,
    Sent,
    bounded,
    check_headers,
    lookup_failure,
    request_data,
    send_once,
)
from bridge.errors import BridgeError, LeaseLost, StoreRefused, StoreUnavailable
from bridge.ids import timestamp_ms
from bridge.store.base import UNKNOWN, AttemptResult, Claimed, Store
from bridge.vendors.base import (
    Adapter,
    Call,
    CannotReconcile,
    Outcome,
    SearchStopped,
    VendorRequest,
    look_up_limited,
    read_capped,
)
from bridge.vendors.credentials import authorized
from bridge.vendors.registry import adapter_class

log = structlog.get_logger("ticketbridge.delivery")

POLL_SECONDS = 2.0
STORE_RETRY_SECONDS = 1.0
CLAIM_BATCH = 64
RECORD_RETRY_MAX_SECONDS = 30.0
SANDBOX_RETRY_SECONDS = 2.0
SANDBOX_RETRY_MAX_SECONDS = 60.0
MAX_UNRECORDED = 256  # per lane: results held in memory while the store does not take them
LEASE_SECONDS = 10.0  # how long a claim lasts unless renewed; renewed every third of it
LEASE_MARGIN = 0.25
"""The part of a lease a send may not start in: one whose lease was last confirmed (claimed, or extended) more than
`lease_s * (1 - LEASE_MARGIN)` ago is not sent, as the lease may have run out and been taken over meanwhile."""
T = TypeVar("T")
PROCESS_TOKEN = secrets.token_hex(4)
"""Tells this process from an earlier one that had the same pid (a restarted container's pid 1)."""


@dataclass(frozen=True)
class Attempted:
    """One attempt as the metrics and traces see it, once the vendor has answered (or it was settled unsent)."""

    destination: str
    classification: str
    delivery_id: str
    event_id: str
    mapping: str
    started_at_ms: int
    duration_s: float | None  # None: no request was made (a follow-up settled unsent)
    latency_s: float | None  # on success: from the delivery's creation to now
    http_status: int | None


LOOKUP_MAX_BYTES = 32 * 1024 * 1024  # a reconciliation's answer (a day's tickets); a longer one fails the look-up
READ_GRACE_S = 0.25
"""How long past a reconciliation's deadline the reading of an answer that came in time may run (it is stopped
then: SearchStopped); its requests end at the deadline itself."""
SET_TICKET = "ticketbridge deliveries set-ticket ID --ticket-id T"
"""The operator's command that gives a create whose answer named no ticket (and its conversation) the ticket."""

HELD = ("held: an earlier send's outcome is unknown and the vendor may hold its ticket; check, then `replay` "
        "(send again) or `mark-succeeded` (with the ticket id)")
FOLLOW_UP_HELD = ("held: an earlier send of this follow-up had an unknown outcome, so ticket {ticket} may already "
                  "hold it, and no vendor's API lets ticketbridge find a reply or update again (on_unknown: {policy}); "
                  "check the ticket at the vendor, then `replay` (send it) or `mark-succeeded` (it is there)")
"""The error of a follow-up held in doubt (`Lane._follow_up_in_doubt`): not looked up, never sent twice unasked."""


@dataclass(frozen=True)
class Deadline:
    """When a reconciliation must end (the event loop's clock), and the destination's `reconcile_timeout` that
    set it, for the error that says so."""

    at: float
    seconds: float


async def _call(session: aiohttp.ClientSession, timeout_s: float, auth: dict[str, str], deadline: Deadline | None,
                request: VendorRequest, *, admit: Callable[[], Awaitable[None]]) -> tuple[int, bytes]:
    """One look-up request to the vendor (a reconciliation's, a ticket check's) with the credential headers
    `auth`, its answer read up to LOOKUP_MAX_BYTES: a day of tickets is far larger than a send's answer. It goes
    out once `admit` lets it (the destination's rate limit, as a send). Within a reconciliation's `deadline`, each
    request, its wait for `admit` included, ends by then: SearchStopped when it passes, or when an answer is
    longer than LOOKUP_MAX_BYTES (what it says past the cut is not known). One with a header no request can carry is
    not made (`check_headers`)."""
    headers = {**request.headers, **auth}
    check_headers(headers, auth, f"a look-up ({request.method} {URL(request.url).path})")
    try:
        async with asyncio.timeout_at(None if deadline is None else deadline.at) as bound:
            await admit()
            async with session.request(request.method, request.target(), headers=headers,
                                       data=request_data(request.body),
                                       timeout=aiohttp.ClientTimeout(total=timeout_s),
                                       allow_redirects=False) as response:
                look_up_limited(response.status, response.headers, f"a look-up ({request.method} "
                                                                   f"{URL(request.url).path})")
                body, cut = await read_capped(response, LOOKUP_MAX_BYTES)
    except TimeoutError:
        if deadline is not None and bound.expired():
            raise SearchStopped(f"its {deadline.seconds:g}s (the destination's reconcile_timeout) ran out") from None
        raise
    if cut and deadline is not None:
        raise SearchStopped(f"an answer was longer than the {LOOKUP_MAX_BYTES // (1 << 20)} MiB a look-up reads")
    return response.status, body


def crashed(exc: Exception, *, written: bool) -> Outcome:
    """The outcome of an attempt that raised `exc` (a bug): before its request was written, a retry on the
    schedule; once written (while its answer was read or classified), `unknown`, as the vendor may have acted on it
    (a 2xx whose reading crashed may have made the ticket): the destination's `on_unknown` decides, as for a lost
    answer, rather than send it again as if nothing had gone out."""
    error = f"internal error: {type(exc).__name__}: {exc}"
    if written:
        return Outcome(classification="unknown", error=f"{error}, after its request was written: the vendor may have "
                                                     "acted on it")
    return Outcome(classification="retry", error=error)


@dataclass(frozen=True)
class Timings:
    """How long the delivery loop waits, in seconds: after a store failure (doubling, for a record, up to
    `record_retry_max_s`), between polls for work added by other processes, and before asking again whether a shared
    sandbox's base_url is one (doubling up to `sandbox_retry_max_s`)."""

    store_retry_s: float = STORE_RETRY_SECONDS
    record_retry_max_s: float = RECORD_RETRY_MAX_SECONDS
    poll_s: float = POLL_SECONDS
    sandbox_retry_s: float = SANDBOX_RETRY_SECONDS
    sandbox_retry_max_s: float = SANDBOX_RETRY_MAX_SECONDS


@dataclass
class Destination:
    """A destination as the delivery loop runs it."""

    name: str
    config: DestinationConfig
    adapter: Adapter
    policy: RetryPolicy
    limiter: Limiter = field(default_factory=lambda: make_limiter(None))

    @classmethod
    def from_config(cls, name: str, config: DestinationConfig, base_url: str | Callable[[], str], *,
                    attachments_dir: Path | None = None) -> Destination:
        """The destination `config` describes: its vendor's adapter (reading attachment files from
        `attachments_dir`), retry policy and rate limiter."""
        adapter = adapter_class(config.vendor)(name, config, base_url, attachments_dir=attachments_dir)
        return cls(name=name, config=config, adapter=adapter,
                   policy=RetryPolicy.from_config(config.retry), limiter=make_limiter(config.rate_limit))


def claim_of(item: Claimed) -> tuple[str, int]:
    """What a lane notes a send by (`Lane.sending`, `Lane.written`): its delivery and the claim that holds it."""
    return item.id, item.token


CLAIMED_AGAIN = "it was claimed again since: its new claim sends it"
"""Why a claim is no longer the lane's: reaped (this process stalled past its lease) and claimed again by this lane,
whose confirmations are the new claim's (`Lane.check_lease`, `Lane.claim_gone`)."""
NOT_EXTENDED = "its lease was not extended: another sender holds it now, or it was settled or given back"


class LeaseExpired(Exception):
    """A send's lease may have run out before its request was written: it is not sent (`Lane.check_lease`)."""


class EventUnread(StoreUnavailable):
    """The store failed as a conversation's message was to be rendered (a follow-up, or a create rendered again: its
    event read from the store): nothing was sent, and the delivery is given back unsent (`Lane._store_failed`)."""


class Lane:
    def __init__(self, dispatcher: Dispatcher, dest: Destination) -> None:
        self.dispatcher = dispatcher
        self.dest = dest
        self.wake = asyncio.Event()
        self.slot_freed = asyncio.Event()
        self.inflight: dict[str, asyncio.Task[None]] = {}  # every delivery task, until its attempt is recorded
        self.sending: set[tuple[str, int]] = set()
        """The claims (delivery id, claim token: `claim_of`) whose request to the vendor is not answered yet, each a
        slot of `max_in_flight`: a delivery claimed again while its earlier claim's request is out (a stall past the
        lease) is at the vendor twice, and its earlier claim's answer, coming in late, frees only its own."""
        self.written: set[tuple[str, int]] = set()
        """The claims of `sending` whose request has gone out (past the rate limit), not yet answered."""
        self.confirmed: dict[str, float] = {}
        """When each delivery's lease was last confirmed (`Dispatcher.monotonic`): its claim, then each extension
        that returned it. One whose extension did not return it is left out: its lease is lost."""
        self.tokens: dict[str, int] = {}
        """The token of the claim each delivery of `inflight` is held by (`Claimed.token`): the lane's latest claim
        of it, which its entry in `confirmed` is of."""
        self.gate: Gate = dispatcher.coordination.gate(dest.name, dest.config.rate_limit, dest.limiter)
        self.gate.probe_hold_s = dispatcher.lease_s  # renewed with the leases (`Dispatcher.keep_leases`)
        self.resumed = asyncio.Event()
        """Wakes a lane held back at its gate: an operator's hold ended here (one ended elsewhere is seen when asking),
        or a slot was given back unsent (`_deliver`)."""
        self.claim_step = max(1, min(dispatcher.claim_batch, dest.config.max_in_flight // 4))
        self.claiming = 0  # slots reserved by claims still out
        self.paced = dest.config.rate_limit is not None or not isinstance(dest.limiter, Unlimited)
        """A rate limit reserves its slots when admitting and moves each to when its send starts: its claims go one
        at a time, as a slot admitted beside a claim still out could be counted against one that then moves later."""
        self.claims: set[asyncio.Task[None]] = set()
        self.idle: tuple[asyncio.Event, float | None] | None = None
        """Set when a claim found nothing due (or the store failed): what the lane waits for, and how long at most,
        before it asks again."""
        self.log = log.bind(destination=dest.name)
        self.sandbox_verified = not (dest.config.sandbox and dest.config.base_url) or dispatcher.sandbox_check is None
        """Whether the lane may send: always, but for a sandbox with a base_url (a shared sandbox), whose URL must
        first answer as a ticketbridge sandbox (`_until_sandbox`)."""

    @property
    def breaker(self) -> Breaker:
        """The breaker as this process last saw it."""
        return self.gate.breaker

    @breaker.setter
    def breaker(self, breaker: Breaker) -> None:
        self.gate.breaker = breaker

    async def _until_sandbox(self) -> None:
        """Until the shared sandbox's base_url answers as a ticketbridge sandbox (or the dispatcher stops): the lane
        claims nothing, so its deliveries wait pending, keeping their tries, and are sent once it does. Each failed
        check is logged (`sandbox.unverified`, an error) and asked again later, the wait doubling up to
        `sandbox_retry_max_s`; startup and intake do not wait for it. A check that raises (a bug, the session
        closed) is such a failure too, its traceback logged once (`sandbox.check_failed`): it never ends the lane;
        one that raises once the dispatcher is stopping (the session closed under it) ends the wait quietly."""
        d = self.dispatcher
        assert d.sandbox_check is not None
        wait = d.timings.sandbox_retry_s
        shown = redact_url(self.dest.config.base_url or "")
        raised = False
        while not d.stopping:
            try:
                why = await d.sandbox_check(self.dest)
            except Exception as exc:
                if d.stopping:
                    return
                if not raised:
                    self.log.exception("sandbox.check_failed", base_url=shown)
                    raised = True
                why = f"the check failed: {type(exc).__name__}: {exc}"
            if why is None:
                self.sandbox_verified = True
                self.log.info("sandbox.verified", base_url=shown)
                return
            self.log.error("sandbox.unverified", base_url=shown, error=why, retry_in_s=wait,
                           note="nothing is sent to this sandbox destination until its base_url answers as a "
                                "`ticketbridge sandbox`: its deliveries wait, pending. Point base_url at one "
                                f"(http://HOST:9090/{self.dest.config.vendor}), or drop `sandbox: true` for a real "
                                "destination")
            await self._wait(d.stop_event, wait)
            wait = min(wait * 2, d.timings.sandbox_retry_max_s)

    async def run(self) -> None:
        d = self.dispatcher
        if not self.sandbox_verified:
            await self._until_sandbox()
        try:
            while not d.stopping:
                self.slot_freed.clear()  # before counting, so that a slot freed meanwhile is not missed
                if self.idle is not None:
                    if self.claims:  # an earlier claim is still out: its result comes first
                        await self._wait_for_slot()
                        continue
                    event, timeout = self.idle
                    self.idle = None
                    await self._wait(event, timeout)
                    continue
                free = self.dest.config.max_in_flight - len(self.sending) - self.claiming
                # Answered, their results not yet in the store (an earlier claim of a delivery claimed again, still
                # out, is in `sending` but no longer in `inflight`: an undercount of at most max_in_flight)
                unrecorded = len(self.inflight) - len(self.sending)
                if free <= 0 or ((self.sending or self.claiming) and free < self.claim_step) \
                        or unrecorded >= d.max_unrecorded:
                    # Busy: let a few slots free up, so that one claim (a store write) serves several sends.
                    await self._wait_for_slot()
                    continue
                self.wake.clear()
                self.resumed.clear()
                try:
                    admission = await self.gate.admit(min(free, d.claim_batch))
                except StoreRefused as exc:
                    self._refused("delivery.admit_refused", exc)
                    continue
                except StoreUnavailable as exc:
                    self.log.error("delivery.admit_failed", error=str(exc))
                    self.idle = (self.wake, d.timings.store_retry_s)
                    continue
                if admission.granted == 0:
                    # Held back (an operator's hold, breaker open, a 429's pause, the rate limit): new work must not
                    # wake the lane; a resume does.
                    self.idle = (self.resumed, None if math.isinf(admission.wait_s) else max(admission.wait_s, 0.001))
                    continue
                self.claiming += admission.granted
                if self.paced:
                    await self._claim(admission)  # paced by its limit: one claim at a time, each in its slots
                    continue
                # Unpaced, the claim runs beside the sends and any claim still out (the store takes them in turn),
                # its slots reserved meanwhile: a lane whose claims wait on commits keeps its vendor busy.
                task = asyncio.create_task(self._claim(admission), name=f"claim {self.dest.name}")
                self.claims.add(task)
                task.add_done_callback(self._claimed)
        finally:
            if self.claims:
                await asyncio.gather(*self.claims, return_exceptions=True)

    def _refused(self, event: str, exc: StoreRefused) -> None:
        """The store refused the lane's own values (its destination's name, this process's owner: the config's) for
        their data: not a store failure to retry within a second, as the same values are refused on every try. Said
        at error level, and asked again at the slow poll (a config fixed by a restart)."""
        self.log.error(event, code=exc.code, error=exc.reason, owner=self.dispatcher.owner,
                       note="the store refuses this destination's name or this process's owner for its data, not "
                            "because it fails: nothing is sent to this destination until the config is fixed")
        self.idle = (self.wake, self.dispatcher.timings.poll_s)

    def _claimed(self, task: asyncio.Task[None]) -> None:
        self.claims.discard(task)
        self.slot_freed.set()

    async def _claim(self, admission: Admission) -> None:
        """Claim what `admission` granted and start sending it; when nothing was due, or the store failed, say
        how long the lane sleeps (`idle`)."""
        d = self.dispatcher
        try:
            try:
                claimed_at = d.monotonic()  # before: the lease runs from when the store writes it, later
                batch = await d.store.claim(self.dest.name, admission.granted, d.owner, d.lease_s)
            except BaseException as exc:  # the store failing, a bug, or a stop: the slots go back (and the lane sleeps)
                if isinstance(exc, StoreRefused):
                    self._refused("delivery.claim_refused", exc)
                elif isinstance(exc, StoreUnavailable):
                    self.log.error("delivery.claim_failed", error=str(exc))
                elif isinstance(exc, Exception):
                    self.log.exception("delivery.lane_crashed")
                with contextlib.suppress(StoreUnavailable):
                    await self.gate.unused(admission, admission.granted)
                if not isinstance(exc, Exception):
                    raise
                if not isinstance(exc, StoreRefused):
                    self.idle = (self.wake, d.timings.store_retry_s)
                return
            if len(batch.items) < admission.granted:
                with contextlib.suppress(StoreUnavailable):
                    await self.gate.unused(admission, admission.granted - len(batch.items))
            if not batch.items:
                timeout = d.timings.poll_s
                if batch.next_due_ms is not None:
                    timeout = min(timeout, max(0.0, batch.next_due_ms / 1000 - d.clock()))
                self.idle = (self.wake, timeout)
                return
            self.idle = None  # an earlier claim that found nothing is out of date: this one found work
            for index, item in enumerate(batch.items):
                self.sending.add(claim_of(item))
                self.confirmed[item.id] = claimed_at
                self.tokens[item.id] = item.token
                task = asyncio.create_task(self._deliver(item, SendSlot(self.gate, admission, index)),
                                           name=f"deliver {item.id}")
                self.inflight[item.id] = task
                task.add_done_callback(functools.partial(self._done, claim_of(item)))
        finally:
            self.claiming -= admission.granted

    async def resume(self) -> None:
        """End an operator's pause (`gate.hold`: sends already out finish) and wake the lane. Raises
        StoreUnavailable."""
        await self.gate.unhold()
        self.resumed.set()

    def _answered(self, claim: tuple[str, int]) -> None:
        """The vendor's slot is free once its answer is in; recording the attempt does not hold it. Only `claim`'s
        (`claim_of`): a later claim of the same delivery keeps its own."""
        self.sending.discard(claim)
        self.written.discard(claim)
        self.slot_freed.set()

    def _done(self, claim: tuple[str, int], task: asyncio.Task[None]) -> None:
        self._answered(claim)
        delivery_id = claim[0]
        if self.inflight.get(delivery_id) not in (task, None):
            # Claimed again before this callback ran (given back, or settled and replayed at once): the entries are
            # its new send's, which an earlier send's end must not take away (its lease would look lost).
            return
        self.inflight.pop(delivery_id, None)
        self.confirmed.pop(delivery_id, None)
        self.tokens.pop(delivery_id, None)

    async def _wait_for_slot(self) -> None:
        """Until a slot frees up or a claim ends, or the dispatcher stops (Dispatcher.stop sets slot_freed too): a
        wait on the one event, without the two tasks that `_wait` starts."""
        if not self.dispatcher.stopping:
            await self.slot_freed.wait()

    async def _wait(self, event: asyncio.Event, seconds: float | None) -> None:
        stop = self.dispatcher.stop_event
        waiters = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _deliver(self, item: Claimed, slot: SendSlot) -> None:
        """Send and record `item` in its `slot` at the gate, which is given back when its send never started
        (settled unsent, crashed or stopped before): kept, it would count against the rate limit for good; given back,
        it wakes the lane, which may have found the window full meanwhile. A probe settled unsent (the breaker told
        nothing of it: `_answer_gate`) or given up unsent (its lease lost) is given back too, or the breaker would wait
        for its answer."""
        try:
            await self._send_and_record(item, slot)
        except asyncio.CancelledError:
            # Cancelled at shutdown before the vendor answered: give it back. Once answered, its result
            # is being recorded (to its end whatever becomes of this task: see _record) and must not be undone by a
            # release.
            if claim_of(item) in self.written:  # its request went out: the vendor may have acted on it
                self.dispatcher.unanswered.append((self, item))
            elif claim_of(item) in self.sending:
                self.dispatcher.cancelled.append((item.id, item.token))
            raise
        except Exception:  # a bug past the attempt's own net (telling the gate, redacting): logged, not lost
            self.log.exception("delivery.task_failed", delivery_id=item.id, event_id=item.event_id,
                               note="the delivery stays in flight until its lease runs out, and is then claimed "
                                    "again (as after a crash: in doubt when its request went out)")
            if slot.admission.probe and slot.state == "started":
                # The breaker's probe went out and its answer may never have been told: told as a failure, so that
                # the breaker opens again and a later probe goes (its hold otherwise renewed while this process
                # lives, and the destination half-open for good). A gate whose probe it no longer is ignores it.
                with contextlib.suppress(Exception):
                    await self.gate.outcome("retry", slot.admission)
        finally:
            with contextlib.suppress(StoreUnavailable):
                if await slot.unused():
                    self.resumed.set()  # a lane held back by its rate limit may have room now

    async def _send_and_record(self, item: Claimed, slot: SendSlot) -> None:
        """Send `item` once its `slot` at the gate lets it (`SendSlot.start`), and record the attempt. A bug, while
        it is prepared as well as sent, costs it an attempt (`crashed`), recorded like any other; the store failing
        before the request went out (the gate, or the read of a follow-up's event: `_store_failed`) does not."""
        d = self.dispatcher
        blog = self.log.bind(delivery_id=item.id, event_id=item.event_id, mapping=item.mapping)
        role: Literal["create", "follow_up"] | None = None
        settled: Outcome | None = None
        resent = False
        t0 = time.perf_counter()

        admitted = False

        async def went() -> None:
            nonlocal admitted
            if admitted:  # a resend after refused credentials: one more request at the vendor
                await self.gate.admit_request()
            else:
                await slot.start()
                admitted = True
            self.check_lease(item)  # after the gate's wait, just before the request is written
            self.written.add(claim_of(item))

        try:
            item, role, settled = await self._prepare(item)
            if settled is None and item.in_doubt_since_ms is not None:
                settled, resent = await self._settle_doubt(item, role, blog)
            if settled is not None:
                sent = Sent(settled, int(d.clock() * 1000), round((time.perf_counter() - t0) * 1000, 3), None, None)
            else:
                sent = await send_once(d.session, self.dest.adapter, item, self.dest.config.timeout_seconds,
                                       on_send=went, on_lookup=self.gate.admit_request)
        except LeaseExpired as exc:
            await self._lease_expired(item, str(exc), blog, slot)
            return
        except Exception as exc:  # a bug must cost an attempt on the schedule, not leave the delivery stuck
            if isinstance(exc, StoreUnavailable) and claim_of(item) not in self.written:
                await self._store_failed(item, exc, blog, slot)
                return
            blog.exception("delivery.crashed", written=claim_of(item) in self.written)
            sent = Sent(crashed(exc, written=claim_of(item) in self.written), int(d.clock() * 1000), 0.0, None, None)
        sent = self._redacted(sent, item)  # what the vendor said, as long as logs and the store take it, redacted
        stopped = await self._answer_gate(item, sent, claim_of(item) not in self.written, blog, slot.admission)
        if d.on_attempt is not None:
            classification = sent.outcome.classification
            d.on_attempt(Attempted(
                destination=self.dest.name, classification=classification, delivery_id=item.id,
                event_id=item.event_id, mapping=item.mapping, started_at_ms=sent.started_at_ms,
                duration_s=None if settled is not None else sent.duration_ms / 1000,
                latency_s=max(0.0, d.clock() - timestamp_ms(item.id) / 1000) if classification == "success" else None,
                http_status=sent.http_status))
        result = self._decide(item, sent, blog)
        if resent and result.classification in ("success", UNKNOWN):
            # Sent again after an unknown outcome, and this send too may have made a ticket: one more possible
            # duplicate (exact when every unknown send made one). A refused resend made none.
            blog.warning("delivery.possible_duplicate", ticket_id=result.ticket_id,
                         in_doubt_since_ms=item.in_doubt_since_ms,
                         note="sent again after an unknown outcome (on_unknown: resend): the vendor may hold "
                              "more than one ticket for it")
            result = msgspec.structs.replace(result, duplicate=True)
        if settled is not None:
            result = msgspec.structs.replace(result, unsent=True)
        if role is not None:
            rendered = role == "follow_up" or item.role == "follow_up"  # a follow-up, or a create rendered again
            result = msgspec.structs.replace(result, role=role, action=item.action if rendered else None,
                                             body=item.body if rendered and settled is None else None)
        # The stop that cut the gate's update short is raised once the answer is recorded: tried once (a stop does
        # not wait for a store that is down), its failure left to the lease.
        await self._record(item, result, blog, once=stopped is not None)
        if stopped is not None:
            raise stopped

    async def _answer_gate(self, item: Claimed, sent: Sent, unsent: bool, blog: Any,
                           admission: Admission) -> asyncio.CancelledError | None:
        """Tell the gate how the send granted in `admission` went, and free its slot. An unknown outcome is the
        vendor's failure; a reconciliation's finding is a success (an earlier send's answer, found late: the vendor
        did make its ticket). Any other delivery settled without its request going out (`unsent`: a follow-up that
        failed to render or whose ticket is gone, a mapping the vendor cannot take, one held in doubt or whose
        reconciliation stopped) is no answer from the vendor, and the breaker is told nothing of it unless it failed
        (`retry`, `auth`: a look-up refused or failing, a crash before the write): were it the breaker's probe, it is
        given back (`_deliver`), so that the breaker stays half-open and the next delivery is the probe, rather
        than be closed by a vendor that answered nothing. A rate limit a look-up met pauses the destination all
        the same. A send whose request was refused for its credentials and whose resend the store kept from going
        out (`Sent.resend_unsent`) tells the breaker nothing either (an old token refused, then the store failing,
        says nothing of the vendor), unless it is the probe: its request went out, so its slot stays used and the
        breaker is told the refusal, its answer, as when such a resend is given up for its lease. A stop that cuts
        this short (the gate's round trip on PostgreSQL) is returned, not raised: the vendor's answer is known all
        the same, and the caller records it (shielded, and tried once: `_record`) before raising the stop, rather
        than leave it to the stop as unknown, or lose a success to be sent again."""
        kind = sent.outcome.classification
        breaker: str | None = "retry" if kind == UNKNOWN else kind
        if kind == "reconciled":
            breaker = "success"
        elif unsent and kind not in DESTINATION_FAILURES:
            breaker = None
        elif sent.resend_unsent:
            breaker = "auth" if admission.probe else None
            blog.error("delivery.resend_unsent", error=sent.outcome.error, status=sent.http_status,
                       probe=admission.probe,
                       note="its request was refused for its credentials and the store failed before the resend "
                            "went out: recorded as that refusal, a retry that uses no try; the breaker is told "
                            "nothing (the breaker's probe: the refusal)")
        try:
            if breaker in DESTINATION_FAILURES or sent.http_status == 429:
                # Told to the gate before the slot is freed: a failure that opens the breaker (or a 429's pause)
                # holds back the next claim, rather than let another wave out before it is counted.
                await self._tell_gate(sent, breaker, blog, admission)
                self._answered(claim_of(item))
            else:
                self._answered(claim_of(item))  # a success need not wait for the gate (a round trip on PostgreSQL)
                await self._tell_gate(sent, breaker, blog, admission)
        except asyncio.CancelledError as exc:
            self._answered(claim_of(item))
            return exc
        return None

    def check_lease(self, item: Claimed) -> None:
        """Raise LeaseExpired unless `item`'s lease surely still runs: its claim the lane's latest of the delivery
        (`tokens`), confirmed less than `lease_s` less LEASE_MARGIN of it ago, and returned by the last extension
        (as `claim_gone`, written out: this is asked before every request)."""
        d = self.dispatcher
        if self.tokens.get(item.id) != item.token:
            raise LeaseExpired(CLAIMED_AGAIN)
        confirmed = self.confirmed.get(item.id)
        if confirmed is None:
            raise LeaseExpired(NOT_EXTENDED)
        age = d.monotonic() - confirmed
        if age > d.lease_s * (1 - LEASE_MARGIN):
            raise LeaseExpired(f"its lease was last confirmed {age:.1f}s ago, and it lasts {d.lease_s:g}s: it may "
                               "have run out and been taken over")

    def claim_gone(self, item: Claimed) -> str | None:
        """Why `item`'s claim is known to be no longer this lane's, or None while it may still be: the lane's latest
        claim of the delivery (`tokens`), and returned by the last extension of its lease (`confirmed`). A claim whose
        lease ran out while the store was down, not extended since, may still be: no reaper has taken it."""
        if self.tokens.get(item.id) != item.token:
            return CLAIMED_AGAIN
        if item.id not in self.confirmed:
            return NOT_EXTENDED
        return None

    async def _lease_expired(self, item: Claimed, why: str, blog: Any, slot: SendSlot) -> None:
        """Give up, unsent, a delivery whose lease may have run out (`check_lease`): its admission given back when
        it was the breaker's probe (`SendSlot.unsent`), nothing recorded, and the delivery back due now only when
        its claim is still this process's (otherwise its new holder has it: a release names its claim's token). A
        probe whose request went out, refused for its credentials, and whose resend is given up, keeps its slot (it
        was used): the breaker is told the refusal, its answer."""
        if slot.admission.probe:
            with contextlib.suppress(StoreUnavailable):
                if claim_of(item) in self.written:
                    await self.gate.outcome("auth", slot.admission)
                else:
                    await slot.unsent()
        self._answered(claim_of(item))  # its own slot (a later claim of the delivery keeps its own)
        blog.error("delivery.lease_lost", error=why, unsent=True,
                   note="not sent: this process stalled past its lease (or the store did not extend it), and another "
                        "sender may hold it now; no attempt is recorded")
        await self._give_back(item, blog)

    async def _store_failed(self, item: Claimed, exc: StoreUnavailable, blog: Any, slot: SendSlot) -> None:
        """Give up, unsent, a delivery for which the store failed before its request went out: its gate could not
        be asked (the store that keeps the destination's rate limit and breaker: moving its slot as it started, or
        admitting a look-up's or a token's request; `delivery.gate_failed`), or its event could not be read to
        render it (a conversation's follow-up, or a create rendered again: EventUnread, `delivery.event_unread`).
        The vendor was asked nothing, so no attempt is recorded, no try used and the breaker told nothing. Its slot
        (a probe's hold with it) goes back as for any send that did not start (`_deliver`), and the delivery is given
        back due now: the store still down, its release is asked again, and the reaper's first pass once the store
        answers gives it back (`_give_back`)."""
        self._answered(claim_of(item))
        with contextlib.suppress(StoreUnavailable):
            if await slot.unused():  # now, not once the store takes the release: the gate is not held meanwhile
                self.resumed.set()
        if isinstance(exc, EventUnread):
            blog.error("delivery.event_unread", error=str(exc),
                       note="not sent: the store failed as its event was read to render it; no attempt is recorded "
                            "and no try used: it is given back, and rendered and sent once the store is back")
        else:
            blog.error("delivery.gate_failed", error=str(exc),
                       note="not sent: the store failed before its request went out; no attempt is recorded and no "
                            "try used: it is given back, and sent once the store is back")
        await self._give_back(item, blog)

    async def _give_back(self, item: Claimed, blog: Any) -> None:
        """Give `item`, whose request did not go out (`_lease_expired`, `_store_failed`), back due now. A store that
        fails the release is asked again, with the backoff a record uses (`_record`), for as long as its claim may
        still be this lane's (`claim_gone`), past the end of its lease too: a release names its claim's owner and
        token and takes only a delivery still in flight by that claim, so a late one is harmless (the delivery
        reaped meanwhile, or claimed again, by any process, this one's too, is left as it is), and nothing that was
        sent is ever given back, as only a delivery whose request did not go out comes here. The delivery stays in
        flight here meanwhile (`inflight`), so that its lease is kept (`Dispatcher.keep_leases`) while the store
        answers, and it is owed (`Dispatcher.owed`): the reaper's first pass that the store answers gives back every
        delivery owed, at once, before it renews leases or reaps (`Dispatcher.give_back_owed`), so that a store down
        for longer than a lease does not leave it to be reaped in doubt (`unknowns` + 1), as one whose holder may
        have sent it. A stop asks once more (at once; or, when it cancels this task, `Dispatcher.stop` does), then
        leaves it to its lease, `delivery.release_failed` logged: it is then given back in doubt, though nothing was
        sent. A release that is late (waiting on a lock of the row while this lane claims it again) or asked again
        after its answer was lost leaves a later claim, this process's too, to its send."""
        d = self.dispatcher
        failures = 0
        delay = d.timings.store_retry_s
        error = ""
        me = asyncio.current_task()
        given = asyncio.Event()
        """Set when the reaper gave it back with every other delivery owed (`Dispatcher.give_back_owed`)."""
        try:
            while True:
                last = d.stopping
                if given.is_set():
                    blog.warning("delivery.released_late", failed_releases=failures, with_owed=True)
                    self.wake.set()
                    return
                if failures and self.inflight.get(item.id) is not me:
                    # Claimed again since: a release whose answer was lost had been done (the delivery was due, and
                    # this lane took it). Asking again would be a release of no lease (the token is the old claim's).
                    blog.warning("delivery.released_late", failed_releases=failures, claimed_again=True)
                    return
                try:
                    await d.store.release([item.id], owner=d.owner, tokens=[item.token])
                except StoreUnavailable as exc:
                    failures += 1
                    error = str(exc)
                    if given.is_set():
                        # The reaper gave it back while this release waited on the store, and renewed leases since
                        # (its lease not returned, or this lane's new claim of it): said at the loop's top, not as
                        # a release that failed.
                        continue
                else:
                    if failures:
                        blog.warning("delivery.released_late", failed_releases=failures)
                    self.wake.set()  # due now: a lane that found nothing due meanwhile sleeps until the poll
                    return
                why = "stopping" if last else self.claim_gone(item)
                if why is not None:
                    blog.error("delivery.release_failed", error=error, failed_releases=failures, why=why,
                               note="not sent, and the store did not take it back: unless another sender holds it "
                                    "now, it stays in flight until its lease runs out, and is then given back in "
                                    "doubt (counted as an unknown outcome), though nothing reached the vendor")
                    return
                if failures == 1:
                    d.owed[claim_of(item)] = given
                    blog.error("delivery.release_retrying", error=error,
                               note="not sent; its release is retried until the store takes it, past its lease too "
                                    "(a release names its claim): it is not counted as an unknown outcome")
                if not d.stopping:
                    await self._wait(given, delay)
                    delay = min(delay * 2, d.timings.record_retry_max_s)
        except asyncio.CancelledError:
            d.cancelled.append((item.id, item.token))  # cancelled by a stop: it is given back once more there
            raise
        finally:
            d.owed.pop(claim_of(item), None)

    def _redacted(self, sent: Sent, item: Claimed) -> Sent:
        """`sent` as it is logged and recorded: the destination's secrets (and those of `item`'s mapping options:
        a secret path) redacted by value from its error, excerpt and exchange, wherever the vendor echoed them,
        and its error cut at ERROR_CHARS (`bounded`) once redacted, so that the cut never splits a secret unseen."""
        redactor = self.dest.adapter.redactor
        matcher = self.dest.adapter.redaction(item.options)
        outcome = sent.outcome
        if outcome.error is not None:
            outcome = msgspec.structs.replace(outcome, error=matcher.clip(outcome.error, ERROR_CHARS))
        sent.outcome = bounded(outcome)
        sent.excerpt = None if sent.excerpt is None else matcher.text(sent.excerpt)
        sent.exchange = redactor.exchange(sent.exchange, matcher)
        return sent

    async def record_unanswered(self, item: Claimed) -> None:
        """Record, at shutdown, a send whose request went out and whose answer will not come: `unknown`."""
        blog = self.log.bind(delivery_id=item.id, event_id=item.event_id, mapping=item.mapping)
        now = int(self.dispatcher.clock() * 1000)
        outcome = Outcome(classification="unknown", error="stopped before the vendor answered: it may have acted on it")
        result = self._decide(item, Sent(outcome, now, 0.0, None, None), blog)
        with contextlib.suppress(StoreUnavailable, BridgeError):
            await self.dispatcher.store.record(msgspec.structs.replace(result, next_attempt_at_ms=now),
                                               owner=self.dispatcher.owner, token=item.token)

    async def _record(self, item: Claimed, result: AttemptResult, blog: Any, *, once: bool = False) -> None:
        """Record the attempt, retrying with backoff while the store does not take it (the vendor has answered).
        A record refused for its data (StoreRefused), or failing with an error that is not the store's (a value the
        store cannot take), is recorded again reduced (`reduced`), then minimal (`minimal`), so that the outcome is
        kept and the delivery is not sent again once its lease runs out; when even that fails,
        `delivery.record_failed` is logged and the lease left to run out. `once`: a stop is under way (its cancel
        already caught), so a store that is down is not waited for: its first failure logs `delivery.record_failed`
        and the lease is left to run out."""
        d = self.dispatcher
        failures = 0
        delay = d.timings.store_retry_s
        error = ""
        full = result
        try:
            while True:
                try:
                    # A stop that cancels this task must not lose an answer the vendor has given: shielded, unless
                    # the store does the record in full once it has been called (Store.records_at_once).
                    recording = d.store.record(result, owner=d.owner, token=item.token)
                    await (recording if d.store.records_at_once else asyncio.shield(recording))
                except StoreRefused as exc:
                    lesser = self._reduce(full, result, f"the store refused it: {exc.reason}", blog,
                                          conversation=item.conversation)
                    if lesser is None:
                        return
                    result = lesser
                    continue
                except LeaseLost as exc:
                    blog.error("delivery.lease_lost", error=str(exc), classification=result.classification,
                               ticket_id=result.ticket_id,
                               note="its lease ran out and another sender holds it now; this result is not "
                                    "recorded over that claim, and the delivery may be sent again")
                    return
                except StoreUnavailable as exc:
                    failures += 1
                    error = str(exc)
                    if once:
                        blog.error("delivery.record_failed", error=error, classification=result.classification,
                                   ticket_id=result.ticket_id, failed_records=failures,
                                   note="stopping, and the store did not take the vendor's answer: the delivery "
                                        "stays in flight until its lease runs out, and is then sent again (a "
                                        "possible duplicate)")
                        return
                    if failures == 1:
                        blog.error("delivery.record_retrying", error=error, classification=result.classification,
                                   note="the vendor has answered; the result is held in memory and its record "
                                        "retried until the store takes it")
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, d.timings.record_retry_max_s)
                    continue
                except BridgeError as exc:
                    blog.error("delivery.record_rejected", error=str(exc))
                    return
                except Exception as exc:  # not the store's failure: a value it cannot take, or a bug
                    lesser = self._reduce(full, result, f"recording it raised {type(exc).__name__}: {exc}", blog,
                                          crashed=True, conversation=item.conversation)
                    if lesser is None:
                        return
                    result = lesser
                    continue
                if failures:
                    blog.warning("delivery.recorded_late", failed_records=failures)
                if result.next_status == "pending" or item.conversation is not None:
                    # asleep until a later due time, or the poll; or the conversation's next message is due now
                    self.wake.set()
                return
        except asyncio.CancelledError:
            if failures:
                blog.error("delivery.record_failed", error=error, classification=result.classification,
                           ticket_id=result.ticket_id, failed_records=failures,
                           note="possible duplicate: the delivery was sent and its result, held in memory, is "
                                "lost with this process; it will be sent again")
            raise

    def _reduce(self, full: AttemptResult, tried: AttemptResult, why: str, blog: Any, *, crashed: bool = False,
                conversation: str | None = None) -> AttemptResult | None:
        """What to record after the record of `tried` failed for `why` (not the store's failure): `full` reduced
        after the full record; the minimal record after the reduced one (its ticket ids or a follow-up's body may be
        what the store refused); None, with `delivery.record_failed` logged, after the minimal one. A minimal record
        that leaves out the ticket_id of a success counts it as dropped (`Dispatcher.on_ticket_dropped`), and for a
        create giving its conversation (`conversation`) its ticket logs `conversation.ticket_lost`: the thread's
        next message will make a second ticket."""
        if tried is full:
            blog.error("delivery.record_reduced", error=why, classification=full.classification,
                       ticket_id=full.ticket_id, exc_info=crashed,
                       note="recorded again without its response excerpt, exchange and error text, so that its "
                            "outcome is kept and it is not sent again")
            return reduced(full, why)
        if tried.error != MINIMAL_ERROR:
            dropped = unstorable_tickets(full)
            blog.error("delivery.record_minimal", error=why, classification=full.classification,
                       ticket_id=full.ticket_id, ticket_key=full.ticket_key, ticket_uuid=full.ticket_uuid,
                       dropped=dropped, exc_info=crashed,
                       note="its reduced record failed too: recorded with its outcome, next state and the ticket ids "
                            "any store takes (no follow-up body or text; `dropped` names the ticket ids left out), "
                            "so that it is not sent again; the ticket ids are in this log line")
            if "ticket_id" in dropped and full.next_status == "succeeded":
                self._ticket_id_dropped()
            if not dropped or full.role != "create" or full.next_status != "succeeded":
                return minimal(full)
            if "ticket_id" in dropped:
                blog.error("conversation.ticket_lost", ticket_id=full.ticket_id, ticket_key=full.ticket_key,
                           error=why, conversation=conversation,
                           note="the ticket id the vendor gave this conversation's create is not one every store "
                                "takes, so it is not recorded: the conversation has no ticket, and the thread's "
                                "next message creates a new one (a second ticket for the customer); the ticket "
                                "made is in this log line")
            else:
                blog.warning("conversation.ticket_partial", ticket_id=full.ticket_id, dropped=dropped, error=why,
                             note="the conversation keeps its ticket id; the ticket ids left out (`dropped`) are "
                                  "null to its follow-ups' templates")
            return minimal(full)
        blog.error("delivery.record_failed", error=why, classification=full.classification,
                   ticket_id=full.ticket_id, exc_info=crashed,
                   note="neither the attempt's record nor its reduced and minimal forms could be written: the "
                        "delivery stays in flight until its lease runs out, and is then sent again (a possible "
                        "duplicate)")
        return None

    async def _settle_doubt(self, item: Claimed, role: str | None, blog: Any) -> tuple[Outcome | None, bool]:
        """What a delivery in doubt (an earlier send's outcome unknown) does before it is sent again, by the
        destination's `on_unknown`: (the outcome that settles it unsent, or None to send; whether that send is
        a resend that may duplicate). A follow-up is never looked up (`_follow_up_in_doubt`); `reconcile` looks a
        create's ticket up where the adapter can and resends it otherwise; what cannot be looked up is held."""
        policy = self.dest.config.unknown_policy
        adapter = self.dest.adapter
        if role == "follow_up":
            return self._follow_up_in_doubt(item, policy, blog)
        if policy == "hold":
            return Outcome(classification="held", error=HELD), False
        if policy == "resend" or not adapter.reconciles(item.action):
            return None, True
        budget = self.dest.config.reconcile_timeout_s
        deadline = Deadline(at=asyncio.get_running_loop().time() + budget, seconds=budget)
        try:
            found = await self._looking_up(
                lambda call: adapter.find(item.action, item.body, item.in_doubt_since_ms or 0, call), deadline)
        except CannotReconcile as exc:
            return Outcome(classification="held", error=f"{HELD} ({exc})"), False
        except SearchStopped as exc:
            blog.warning("delivery.reconcile_stopped", reason=adapter.redaction(item.options).text(str(exc)),
                         in_doubt_since_ms=item.in_doubt_since_ms,
                         note="the outcome stays unknown: looked up again on the retry schedule, then left to an "
                              "operator")
            return Outcome(classification="unknown", error=f"not sent: reconciliation stopped before it could tell "
                                                         f"whether the vendor holds the ticket: {exc}"), False
        except LOOKUP_ERRORS as exc:
            return lookup_failure(exc, refused="reconciliation: ",
                                  failed="reconciliation could not look the ticket up: "), False
        if found is None:
            blog.info("delivery.reconcile_not_found", in_doubt_since_ms=item.in_doubt_since_ms,
                      note="the vendor holds no ticket from the earlier send: sending it now")
            return None, False
        blog.info("delivery.reconciled", ticket_id=found.ticket_id,
                  matched=adapter.redaction(item.options).text(found.detail))
        return Outcome(classification="reconciled", ticket_id=found.ticket_id, ticket_key=found.ticket_key,
                       ticket_uuid=found.ticket_uuid,
                       error=f"found at the vendor after an unknown outcome: {found.detail}"), False

    def _follow_up_in_doubt(self, item: Claimed, policy: str, blog: Any) -> tuple[Outcome | None, bool]:
        """A follow-up (a reply, an update on the conversation's ticket) whose earlier send's outcome is unknown. No
        vendor's API lets the bridge find a reply again (docs/vendors.md, "Unknown outcomes"), so no look-up is made:
        under `resend` it is sent again, a possible duplicate (one more comment on the ticket); under `hold` and
        `reconcile` (which looks up what it can and never guesses) it is held for an operator, the error saying why.
        Either way logged (`delivery.follow_up_in_doubt`, a warning) and counted
        (`Dispatcher.on_follow_up_in_doubt`: `ticketbridge_delivery_follow_ups_in_doubt_total`)."""
        ticket = (item.ticket or {}).get("id")
        handling = "resent" if policy == "resend" else "held"
        if self.dispatcher.on_follow_up_in_doubt is not None:
            self.dispatcher.on_follow_up_in_doubt(self.dest.name, handling)
        blog.warning("delivery.follow_up_in_doubt", handling=handling, on_unknown=policy, ticket_id=ticket,
                     in_doubt_since_ms=item.in_doubt_since_ms,
                     note="an earlier send of this follow-up had an unknown outcome and no vendor lets a reply be "
                          "found again: " + ("sent again, a possible duplicate on the ticket" if handling == "resent"
                                             else "held for an operator, who checks the ticket, then replays it or "
                                                  "marks it succeeded"))
        if handling == "resent":
            return None, True
        return Outcome(classification="held", error=FOLLOW_UP_HELD.format(ticket=ticket, policy=policy)), False

    async def _looking_up(self, look: Callable[[Call], Awaitable[T]], deadline: Deadline | None = None) -> T:
        """`look` (a reconciliation, a ticket check) with the destination's credentials on each request it
        makes: refused, they are renewed and `look` is made once more, as a send is. Each request, a token's for
        its credentials too, waits for its slot at the destination's gate (`Gate.admit_request`: its rate limit, a
        429's pause), as a send does; the delivery making it holds its in-flight slot meanwhile. Its requests end by
        `deadline` (a reconciliation's, for both tries), else SearchStopped (`_call`)."""
        session, timeout_s = self.dispatcher.session, self.dest.config.timeout_seconds
        admit = self.gate.admit_request
        looking = authorized(session, self.dest.adapter.credentials,
                             lambda auth: look(functools.partial(_call, session, timeout_s, auth, deadline,
                                                                       admit=admit)), admit=admit)
        if deadline is None:
            return await looking
        try:  # the reading of its answers too (off the loop, `read_answer_off_loop`) ends by the deadline, a moment
            # after its requests' (`_call`), whose stop says what was searched
            async with asyncio.timeout_at(deadline.at + READ_GRACE_S) as bound:
                return await looking
        except TimeoutError:
            if bound.expired():
                raise SearchStopped(f"its {deadline.seconds:g}s (the destination's reconcile_timeout) ran out while "
                                    "an answer was read") from None
            raise

    async def _prepare(self, item: Claimed) -> tuple[Claimed, Literal["create", "follow_up"] | None, Outcome | None]:
        """In a conversation: a create (no ticket yet) is sent as stored; a follow-up is rendered now, or settled
        unsent (the Outcome)."""
        if item.conversation is None:
            return item, None, None
        if item.ticket is None:
            if item.role == "follow_up":  # its ticket was reset: the create, rendered again
                again = await self._render(self.dispatcher.creates, item, "create")
                return (item, "create", again) if isinstance(again, Outcome) else (again, "create", None)
            return item, "create", None
        prepared = await self._follow_up(item)
        if isinstance(prepared, Outcome):
            return item, "follow_up", prepared
        gone = await self._ticket_gone(prepared)
        if gone is not None:
            return item, "follow_up", gone
        return prepared, "follow_up", None

    async def _ticket_gone(self, item: Claimed) -> Outcome | None:
        """Where the destination checks (Kapture's `check_ticket`): the Outcome of a follow-up whose ticket the
        vendor no longer holds (permanent), or whose check failed (retry, auth); None to send it."""
        ticket_id = (item.ticket or {}).get("id")
        if ticket_id is None:
            return None
        try:
            exists = await self._looking_up(lambda call: self.dest.adapter.ticket_exists(str(ticket_id), call))
        except LOOKUP_ERRORS as exc:
            return lookup_failure(exc, failed="the ticket check failed: ")
        if exists is False:
            return Outcome(classification="permanent", error=f"not sent: ticket {ticket_id} no longer exists at "
                                                             "the vendor (a look-up by its id found nothing)")
        return None

    async def _follow_up(self, item: Claimed) -> Claimed | Outcome:
        """The follow-up's request, rendered now that its ticket is known; an Outcome when it is not sent."""
        return await self._render(self.dispatcher.follow_ups, item, "follow-up")

    async def _render(self, render: Callable[[Claimed], Awaitable[Claimed | Outcome]] | None, item: Claimed,
                      what: str) -> Claimed | Outcome:
        if render is None:
            return item
        try:
            return await render(item)
        except StoreRefused as exc:  # the store refuses to read it for its data: so it would on every try
            return Outcome(classification="permanent", error=f"not sent: the store refused to read its event, to "
                                                             f"render the {what}: {exc}")
        except StoreUnavailable as exc:  # not sent, no try used: given back, rendered once the store is back
            raise EventUnread(f"its event could not be read, to render the {what}: {exc}") from exc
        except Exception as exc:  # a bug must settle the follow-up like a render failure, not kill its task
            self.log.exception("delivery.follow_up_crashed", delivery_id=item.id, event_id=item.event_id)
            return Outcome(classification="permanent",
                           error=f"not sent: the {what} could not be rendered: {type(exc).__name__}: {exc}")

    async def _tell_gate(self, sent: Sent, classification: str | None, blog: Any, admission: Admission) -> None:
        """Pass an answer on to the destination's gate: a rate limit's pause (a 429's, or one the adapter read in
        another answer, a 200 included, or a look-up's: `Outcome.rate_limited`), and `classification` to the
        breaker (None: nothing for it, the delivery settled unsent), with the `admission` its send was granted in
        (the breaker's probe's answer settles the half-open state; no other does)."""
        if sent.http_status == 429 or sent.outcome.rate_limited:
            pause = sent.outcome.retry_after if sent.outcome.retry_after is not None else self.gate.window
            pause = min(pause, self.dest.policy.max_retry_after)
            blog.warning("delivery.rate_limited", pause_s=round(pause, 3))
            with contextlib.suppress(StoreUnavailable):
                await self.gate.pause(pause)
        if classification is None:
            return
        try:
            change = await self.gate.outcome(classification, admission)
        except StoreUnavailable:
            return
        if change == "opened":
            self.log.warning("destination.paused", failures=self.breaker.failures,
                             cooldown_s=round(self.breaker.cooldown, 1), last_error=sent.outcome.error,
                             note="no delivery is sent until a probe succeeds; pending ones keep their tries")
        elif change == "closed":
            self.log.info("destination.resumed")

    def _ticket_id_dropped(self) -> None:
        """Count a success whose ticket id is not kept (`Dispatcher.on_ticket_dropped`)."""
        if self.dispatcher.on_ticket_dropped is not None:
            self.dispatcher.on_ticket_dropped(self.dest.name)

    def _ticket_dropped(self, item: Claimed, outcome: Outcome, sent: Sent, blog: Any) -> str:
        """Make loud, and count, a success whose answer's ticket id was no id (an object, empty text…: the adapter
        left it out, `outcome.error` saying where and what): a conversation's create logs `conversation.ticket_lost`
        as an error (its thread has no ticket, so its next message creates another), any other delivery
        `delivery.ticket_id_dropped` as a warning. The attempt's error: what was dropped and what follows from it.
        Still a success: the vendor made the ticket, and sending it again would make a second one."""
        self._ticket_id_dropped()
        why = outcome.error or "the answer's ticket id is no id, not kept"
        if item.conversation is not None and item.ticket is None:
            error = (f"{why}; the conversation has no ticket, so its next message will create a new ticket; find "
                     f"the ticket at the vendor and give it with `{SET_TICKET}`")
            blog.error("conversation.ticket_lost", conversation=item.conversation, error=why,
                         status=sent.http_status,
                         note="the vendor made the ticket (a success, not sent again) but its answer's ticket id is no "
                              "id, so it is not kept: the conversation has no ticket, and the thread's next message "
                              "creates a new one (a second ticket for the customer)")
            return error
        blog.warning("delivery.ticket_id_dropped", error=why, status=sent.http_status,
                     note="the vendor took the request (a success, not sent again) but its answer's ticket id is no "
                          "id, so the delivery keeps none")
        return f"{why}; the delivery keeps no ticket id"

    def _ticket_missing(self, item: Claimed, where: str, outcome: Outcome, sent: Sent, blog: Any) -> str:
        """Make visible, and count (`Dispatcher.on_ticket_missing`), a success whose answer gave no ticket id at all
        (null or nothing at `where`) for a request whose answer gives one (`Adapter.ticket_id_at`): logged
        `delivery.ticket_id_missing` as a warning. Still a success: the vendor made the ticket, and sending it again
        would make a second one. A conversation's create so answered leaves its thread without a ticket: its next
        message is sent as a create, a new ticket (docs/vendors.md). The attempt's error: what is missing, and what
        follows."""
        if self.dispatcher.on_ticket_missing is not None:
            self.dispatcher.on_ticket_missing(self.dest.name)
        why = f"the vendor's answer gave no ticket id (at `{where}`)"
        if outcome.error:
            why = f"{why}; {outcome.error}"
        if item.conversation is not None:
            follows = ("the conversation has no ticket, so its next message will be sent as a new ticket; find the "
                       f"ticket at the vendor and give it with `{SET_TICKET}`")
        else:
            follows = "the delivery keeps no ticket id"
        blog.warning("delivery.ticket_id_missing", where=where, status=sent.http_status,
                     conversation=item.conversation, action=item.action,
                     note=f"the vendor took the request (a success, not sent again) but named no ticket: {follows}")
        return f"{why}: {follows}"

    def _decide(self, item: Claimed, sent: Sent, blog: Any) -> AttemptResult:
        outcome = sent.outcome
        if outcome.classification == "skipped":
            blog.info("delivery.skipped", reason=outcome.error)
            return AttemptResult(
                delivery_id=item.id, started_at_ms=sent.started_at_ms, duration_ms=0.0, http_status=None,
                response_excerpt=None, classification="skipped", error=outcome.error, next_status="succeeded")
        tries = item.tries + 1
        result = AttemptResult(
            delivery_id=item.id, started_at_ms=sent.started_at_ms, duration_ms=round(sent.duration_ms, 3),
            http_status=sent.http_status, response_excerpt=sent.excerpt,
            classification=outcome.classification, error=outcome.error, next_status="dead", exchange=sent.exchange,
        )
        if outcome.classification == "held" or (outcome.classification == UNKNOWN
                                                 and self.dest.config.unknown_policy == "hold"):
            blog.error("delivery.held", error=outcome.error, status=sent.http_status,
                       hint="the vendor may hold its ticket: check, then `replay` it (send again) or "
                            "`mark-succeeded` it with the ticket id")
            error = outcome.error if outcome.classification == "held" else f"{outcome.error}; {HELD}"
            return msgspec.structs.replace(result, error=error)
        if outcome.classification == UNKNOWN:
            blog.warning("delivery.outcome_unknown", error=outcome.error, attempt=tries,
                         on_unknown=self.dest.config.unknown_policy)
            outcome = msgspec.structs.replace(outcome, classification="retry")
        if outcome.classification in ("success", "reconciled"):
            key = {"ticket_key": outcome.ticket_key} if outcome.ticket_key else {}
            blog.info("delivery.sent", ticket_id=outcome.ticket_id, status=sent.http_status,
                      duration_ms=round(sent.duration_ms, 1), attempt=item.attempts + 1, **key)
            if outcome.ticket_id_dropped:
                result = msgspec.structs.replace(result, error=self._ticket_dropped(item, outcome, sent, blog),
                                                 ticket_missing=item.ticket is None)
            elif (outcome.ticket_id is None and outcome.classification == "success" and item.ticket is None
                  and (where := self.dest.adapter.ticket_id_at(item.action)) is not None):
                result = msgspec.structs.replace(result, error=self._ticket_missing(item, where, outcome, sent, blog),
                                                 ticket_missing=True)
            return msgspec.structs.replace(result, ticket_id=outcome.ticket_id, ticket_key=outcome.ticket_key,
                                           ticket_uuid=outcome.ticket_uuid, next_status="succeeded")
        if sent.resend_unsent:
            # The vendor refused only the credentials, renewed since, and our store kept the resend from going out:
            # recorded (the refusal, its one answer) without using a try, so that its last try does not go dead
            # for an outage of ours. Due again once a store failure's wait has passed, as a send given back is.
            due = int((self.dispatcher.clock() + self.dispatcher.timings.store_retry_s) * 1000)
            blog.warning("delivery.retry_scheduled", error=outcome.error, status=sent.http_status,
                         attempt=item.tries, try_used=False,
                         retry_in_s=round(self.dispatcher.timings.store_retry_s, 1))
            return msgspec.structs.replace(result, next_status="pending", next_attempt_at_ms=due, uses_try=False)
        decision = self.dest.policy.decide(tries, outcome.classification, outcome.retry_after)
        if decision.action == "retry":
            due = int((self.dispatcher.clock() + decision.delay_s) * 1000)
            blog.warning("delivery.retry_scheduled", error=outcome.error, status=sent.http_status, attempt=tries,
                         retry_in_s=round(decision.delay_s, 1))
            return msgspec.structs.replace(result, next_status="pending", next_attempt_at_ms=due)
        if outcome.classification == "auth":
            blog.error("delivery.auth_failed", error=outcome.error, status=sent.http_status,
                       hint="check the destination's credentials; this delivery is dead until replayed")
            return result
        blog.error("delivery.dead", error=outcome.error, status=sent.http_status, reason=decision.reason)
        if outcome.classification == "retry":
            return msgspec.structs.replace(result, error=f"{outcome.error} ({decision.reason})")
        return result


REDUCED_ERROR_CHARS = 500
"""How much of the attempt's own error a reduced record keeps (as ASCII: `\\xe9`, `\\u2603` for the rest)."""


def reduced(result: AttemptResult, why: str) -> AttemptResult:
    """`result` as recorded when its full record failed for `why` (the store refused it for its data, or it raised):
    the same outcome and delivery state, without the response excerpt and exchange, its error saying what the full
    record failed on and keeping the attempt's own error as ASCII (any character a database's encoding lacks, or a
    NUL, written out), cut to REDUCED_ERROR_CHARS."""
    own = ""
    if result.error is not None:
        text = result.error.encode("ascii", "backslashreplace").decode("ascii")
        own = f"; its error was: {text[:REDUCED_ERROR_CHARS]}"
    error = (f"this attempt's full record could not be written ({why}): kept without its response excerpt and "
             f"exchange{own}")
    return msgspec.structs.replace(result, response_excerpt=None, exchange=None, error=error)


MINIMAL_ERROR = ("this attempt's record was reduced twice: the store refused its full and its reduced record, so "
                 "it keeps only its outcome, next state and the ticket ids any store takes (no follow-up body, "
                 "response or error text: those are in the log, delivery.record_minimal)")

TICKET_FIELDS = ("ticket_id", "ticket_key", "ticket_uuid")


def plainly_storable(text: str) -> bool:
    """Whether every store takes `text` in a text column, whatever its encoding: printable ASCII (no NUL or other
    control character; every PostgreSQL server encoding holds ASCII, a LATIN1 one nothing past U+00FF, and a lone
    surrogate is not ASCII), at most ID_CHARS long (the sender keeps no longer id)."""
    return len(text) <= ID_CHARS and text.isascii() and text.isprintable()


def unstorable_tickets(result: AttemptResult) -> list[str]:
    """The names of `result`'s ticket ids that are set and not plainly storable (those a minimal record drops)."""
    return [name for name in TICKET_FIELDS
            if (value := getattr(result, name)) is not None and not plainly_storable(value)]


def minimal(result: AttemptResult) -> AttemptResult:
    """`result` as recorded when its reduced record failed too: the classification, HTTP status, timing and next state
    (what keeps a sent delivery from being sent again) and the ticket ids that are plainly storable (what gives a
    conversation its ticket, so that the thread's next message is a follow-up, not a second ticket), with none of
    the other text it was given from outside (a follow-up's action and body, the excerpt and exchange, the vendor's
    error) and none of the ticket ids that are not plainly storable, in case one of those is what the store refuses;
    its error is MINIMAL_ERROR. A success (not a follow-up's) whose ticket_id is so dropped is `ticket_missing`, as a
    success whose answer named none is (the delivery shows it, and `deliveries set-ticket` takes it); a create's
    gives its conversation no ticket."""
    dropped: dict[str, Any] = dict.fromkeys(unstorable_tickets(result))
    missing = result.ticket_missing or ("ticket_id" in dropped and result.next_status == "succeeded"
                                        and result.role != "follow_up")
    return msgspec.structs.replace(result, response_excerpt=None, exchange=None, error=MINIMAL_ERROR, action=None,
                                   body=None, ticket_missing=missing, **dropped)


class Dispatcher:
    """Runs every destination's lane; `notify` wakes lanes with new work.

    Its waits (`timings`), the most deliveries one claim takes (`claim_batch`), the wall clock due times
    are set by (`clock`, seconds since the epoch) and how long a claim's lease lasts unless renewed
    (`lease_s`) are parameters, the module constants their defaults. `coordination` gives each destination
    its gate (rate limit, 429 pause, breaker): in this process unless the store shares them between processes.
    """

    def __init__(self, store: Store, session: aiohttp.ClientSession, destinations: dict[str, Destination],
                 on_attempt: Callable[[Attempted], None] | None = None, *, timings: Timings | None = None,
                 max_unrecorded: int = MAX_UNRECORDED, claim_batch: int = CLAIM_BATCH,
                 clock: Callable[[], float] = time.time, coordination: Coordination | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 lease_s: float = LEASE_SECONDS,
                 follow_ups: Callable[[Claimed], Awaitable[Claimed | Outcome]] | None = None,
                 instance: str | None = None, on_ticket_dropped: Callable[[str], None] | None = None,
                 on_ticket_missing: Callable[[str], None] | None = None,
                 on_follow_up_in_doubt: Callable[[str, str], None] | None = None,
                 creates: Callable[[Claimed], Awaitable[Claimed | Outcome]] | None = None,
                 sandbox_check: Callable[[Destination], Awaitable[str | None]] | None = None) -> None:
        self.sandbox_check = sandbox_check
        """Whether a sandbox destination's base_url answers as a ticketbridge sandbox: None when it does, else what
        it answered (bridge/sandbox_identity.py). None: not asked (every lane sends at once)."""
        self.on_ticket_dropped = on_ticket_dropped
        """Called with the destination's name for each success whose ticket id is not kept: the vendor's answer
        held no id there (an object, `true`…), or the store refused the attempt's record and the minimal record left
        the id out (not every store takes it). For the metrics."""
        self.on_ticket_missing = on_ticket_missing
        """Told the destination's name for each success that named no ticket where its vendor names one
        (`delivery.ticket_id_missing`)."""
        self.on_follow_up_in_doubt = on_follow_up_in_doubt
        """Told the destination's name and what was done (`held`, `resent`) for each follow-up in doubt that is
        about to be sent again (`delivery.follow_up_in_doubt`)."""
        self.follow_ups = follow_ups
        """Renders a conversation's follow-up at send time (its ticket known); None: sent as stored."""
        self.creates = creates
        """Renders a create again from its event: for a delivery last sent as a follow-up whose conversation has
        no ticket now (an operator reset it), whose stored action and body are the follow-up's; None: as stored."""
        self.coordination = coordination or LocalCoordination()
        self.lease_s = lease_s
        self.claim_batch = claim_batch
        self.clock = clock
        self.monotonic = monotonic
        """How old a lease is (`Lane.check_lease`): a clock that keeps running while the process is stopped."""
        self.on_attempt = on_attempt  # for the metrics and traces
        self.timings = timings or Timings()
        self.max_unrecorded = max_unrecorded
        self.store = store
        self.session = session
        self.destinations = destinations
        self.instance = instance
        """Where this process serves (`host:port`): a later process there takes back what this one left in flight."""
        self.owner = (f"{socket.gethostname()}:{os.getpid()}" if instance is None
                      else f"{instance}/{os.getpid()}.{PROCESS_TOKEN}")
        self.stopping = False
        self.stop_event = asyncio.Event()
        self.lanes: dict[str, Lane] = {}
        self.tasks: list[asyncio.Task[None]] = []
        self.cancelled: list[tuple[str, int]] = []
        """(id, claim token) of each delivery a stop cancelled before its request went out: given back at the end."""
        self.unanswered: list[tuple[Lane, Claimed]] = []  # cancelled at shutdown after their request went out
        self.owed: dict[tuple[str, int], asyncio.Event] = {}
        """The claims (`claim_of`) of deliveries whose request did not go out and whose release the store failed
        (`Lane._give_back`), each with what tells its lane that `give_back_owed` gave it back."""

    def start(self) -> None:
        for name, dest in self.destinations.items():
            lane = Lane(self, dest)
            self.lanes[name] = lane
            self.tasks.append(asyncio.create_task(self._supervise(lane), name=f"lane {name}"))

    async def _supervise(self, lane: Lane) -> None:
        while not self.stopping:
            try:
                await lane.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                lane.log.exception("delivery.lane_crashed")
                await asyncio.sleep(self.timings.store_retry_s)

    def notify(self, destinations: set[str]) -> None:
        for name in destinations:
            lane = self.lanes.get(name)
            if lane is not None:
                lane.wake.set()

    async def release(self, held: list[tuple[str, int]]) -> None:
        """Give back, once, deliveries a stop cancelled before their request went out: (id, its claim's token)."""
        if held:
            try:
                await self.store.release([i for i, _ in held], owner=self.owner, tokens=[t for _, t in held])
            except StoreUnavailable as exc:
                log.error("delivery.release_failed", count=len(held), error=str(exc), why="stopping",
                          note="not sent, and the store did not take them back: they stay in flight until their "
                               "leases run out, and are then given back in doubt (counted as an unknown outcome)")

    async def take_back(self) -> int:
        """Give back, due now, what an earlier process of this instance left in flight when it stopped (killed, or
        its container restarted), rather than wait for its leases to run out; returns how many. Raises
        StoreUnavailable."""
        if self.instance is None:
            return 0
        return await self.store.take_back(f"{self.instance}/", self._gone)

    def _gone(self, owner: str) -> bool:
        """Whether the process that leased as `owner` (this instance's `…/pid.token`) no longer runs. One still
        running (a predecessor draining its sends) keeps its work; one whose pid cannot be told is left to its
        leases."""
        pid_text, _, token = owner.rpartition("/")[2].partition(".")
        try:
            pid = int(pid_text)
        except ValueError:
            return False
        if pid == os.getpid():
            return token != PROCESS_TOKEN  # our pid, another process: an earlier incarnation (a container's pid 1)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False

    async def give_back_owed(self) -> int:
        """Give back, due now, every delivery owed (`owed`: not sent, its release failed), in one statement; returns
        how many were asked. The reaper asks it first in each pass, before it renews leases or reaps, so that the
        first pass the store answers after an outage gives them back, though their leases ran out meanwhile, rather
        than reap them in doubt. Each release names its claim's token: one reaped or claimed again since, by any
        process, is left as it is. Nothing owed: no statement. Raises StoreUnavailable."""
        owed = list(self.owed.items())
        if not owed:
            return 0
        await self.store.release([i for (i, _), _ in owed], owner=self.owner, tokens=[t for (_, t), _ in owed])
        for _, given in owed:
            given.set()
        log.warning("delivery.given_back", count=len(owed),
                    note="not sent, their release failed as the store was down: given back now that it answers, "
                         "due now and not in doubt")
        return len(owed)

    async def keep_leases(self) -> int:
        """Extend the lease of every delivery a lane holds (being sent, or its result not yet recorded), so
        that no reaper gives it back meanwhile, and the hold of a breaker probe out from here; returns how many
        leases. Each lease extended is confirmed from when it was asked (`Lane.confirmed`); one the store did not
        extend is lost, and its delivery, unless already written, is not sent. Raises StoreUnavailable."""
        kept = 0
        for lane in self.lanes.values():
            if lane.inflight:
                asked = list(lane.tokens.items())
                asked_at = self.monotonic()
                held = set(await self.store.extend_leases([i for i, _ in asked], self.owner, self.lease_s,
                                                          [t for _, t in asked]))
                kept += len(held)
                for delivery_id, token in asked:
                    if lane.tokens.get(delivery_id) != token:
                        continue  # done meanwhile, or claimed again: the new claim's lease was confirmed as it was
                    if delivery_id in held:
                        lane.confirmed[delivery_id] = max(asked_at, lane.confirmed.get(delivery_id, asked_at))
                    else:
                        lane.confirmed.pop(delivery_id, None)
            await lane.gate.keep_probe()
        return kept

    def in_flight(self) -> int:
        return sum(len(lane.inflight) for lane in self.lanes.values())

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; let sends in flight finish within `grace_s`; give the rest back."""
        self.stopping = True
        self.stop_event.set()
        for lane in self.lanes.values():
            lane.slot_freed.set()  # a busy lane waits for this alone (Lane._wait_for_slot)
        if self.tasks:
            _, stuck = await asyncio.wait(self.tasks, timeout=max(1.0, grace_s))
            for task in stuck:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
        pending = [t for lane in self.lanes.values() for t in lane.inflight.values()]
        if pending:
            log.info("delivery.draining", in_flight=len(pending), grace_s=grace_s)
            _, still = await asyncio.wait(pending, timeout=grace_s)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
            if self.cancelled:
                log.warning("delivery.released_at_shutdown", count=len(self.cancelled))
                await self.release(self.cancelled)
            for lane, item in self.unanswered:
                await lane.record_unanswered(item)
