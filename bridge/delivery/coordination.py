"""What a lane asks before it claims: how many sends may start now for its destination.

A `Gate` per destination holds the four things that say so: the rate limit (at most N requests in any
window of T at the vendor), a 429's pause (Retry-After), the circuit breaker (open, or half-open with
one probe out) and an operator's hold (the console's pause, for a while or until resumed). A lane asks
the gate first (`admit`), then claims at most what it was admitted, and gives back what it did not use;
so nothing it holds waits for a slot with its lease running.

`LocalCoordination` keeps the gates in this process: right for one process on a store (SQLite), and for
tests, which may share one instance between several dispatchers as if they were processes. A store that
serves several processes (PostgreSQL) gives its own `Coordination` from `Store.coordination()`, whose gates
keep their state in the database so that every process sees one limit, one pause and one breaker.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

from bridge.config import RateLimit
from bridge.delivery.breaker import Breaker, State
from bridge.delivery.ratelimit import Limiter, SlidingWindowLimiter, acquire, make_limiter, use_slot
from bridge.errors import StoreUnavailable

Change = Literal["opened", "closed", None]


@dataclass
class Admission:
    """What a gate allows now: `granted` sends (maybe none); with none, `wait_s` until asking again makes
    sense, and `held` when the destination itself is held back (breaker open, a 429's pause), so that new
    work need not wake the lane. `probe`: the one send allowed is the breaker's probe. `slots` are the gate's
    own handles on what it granted (given back with `unused`); `asked_at` when it was asked (monotonic: before the
    round trip to a shared gate, whose slots are dated somewhere within it), to tell a send that starts late for its
    slot; `probe_mark` a shared gate's mark on the probe it granted, so that
    giving it back ends that probe's hold, not one granted since. `started`: the sends started (`Gate.start`), by
    index, with the in-process limiter's handle on the slot each took (None: it keeps nothing to give back);
    `given_back`: the indexes whose slot the in-process gate gave back (`give_back`, `unused`), each once."""

    granted: int
    wait_s: float = 0.0
    held: bool = False
    probe: bool = False
    slots: list[int] = field(default_factory=list)
    asked_at: float = field(default_factory=time.monotonic)
    probe_mark: str | None = None
    started: dict[int, int | None] = field(default_factory=dict)
    given_back: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class GateView:
    """A destination's gate as every process on the store sees it, for the console; times in epoch seconds.
    `held_until_s`: an operator's hold (inf: until resumed; None: not held). `rate_used`: requests counted in
    the rate limit's current window (None without a limit)."""

    breaker: State
    breaker_reopens_at_s: float | None
    held_until_s: float | None
    rate_used: int | None


class Gate(ABC):
    """One destination's send permissions. `breaker` is the breaker state as this process last saw it
    (for metrics and logs)."""

    breaker: Breaker
    probe_hold_s: float = 60.0
    """How long a probe out from this process holds the others back unless renewed (`keep_probe`): its sender
    may have died. The dispatcher sets it to its lease, and renews it with its leases."""

    @abstractmethod
    async def admit(self, want: int) -> Admission:
        """Up to `want` sends that may start now; each granted one counts against the rate limit at once."""

    @abstractmethod
    async def unused(self, admission: Admission, count: int) -> None:
        """The last `count` sends `admission` granted will not be made (nothing was due): give back their slots (a
        send given back already is not given back again)."""

    @abstractmethod
    async def give_back(self, admission: Admission, index: int) -> None:
        """The `index`-th send `admission` granted is not made (settled unsent, failed or stopped before it
        started, or given up for its lease before its request was written): give back its slot, the one `start`
        took for it if it started. Called at most once per send, never for one whose request went out."""

    async def start(self, admission: Admission, index: int) -> None:  # noqa: B027 - optional hook
        """The `index`-th send `admission` granted starts now (awaited just before the request goes out);
        a gate may hold a send that is late for its slot until a slot is free again."""

    @abstractmethod
    async def admit_request(self) -> None:
        """One more request made for a send already admitted (its resend after a refused credential, a look-up made
        while it is prepared, a reconciliation's or a ticket check's look-up, a token's request for its credentials:
        OAuth2's, Netgroot's Login): waits until the rate limit and a 429's pause let it go, and counts it there, as
        a send. The breaker and an operator's hold are not asked again: the send it is made for was admitted (maybe
        as the breaker's probe, whose answer this request may be)."""

    async def keep_probe(self) -> None:  # noqa: B027 - optional hook
        """Renew the hold of a probe this process has out (a gate shared between processes)."""

    @abstractmethod
    async def pause(self, seconds: float) -> None:
        """Allow no send for `seconds` (after a 429), in every process."""

    @abstractmethod
    async def outcome(self, classification: str, admission: Admission | None = None) -> Change:
        """Feed an attempt's classification to the breaker; says when it opened or closed. `admission`: the one its
        send was granted in. Only the breaker's probe (an admission granted as the probe, and still this gate's
        probe) ends the half-open state; an answer to a send granted before the breaker opened does not, nor does
        it end the probe's hold (`Breaker.record`)."""

    @abstractmethod
    async def hold(self, seconds: float | None) -> None:
        """An operator's pause: admit nothing for `seconds` (None: until `unhold`), in every process."""

    @abstractmethod
    async def unhold(self) -> None:
        """End an operator's pause."""

    @abstractmethod
    async def view(self) -> GateView:
        """The gate's state as every process sees it."""

    @property
    @abstractmethod
    def window(self) -> float:
        """The rate limit's window in seconds (1 without one): the pause after a 429 without Retry-After."""


class SendSlot:
    """The `index`-th send `admission` granted, as the delivery it went to holds it: used once its send starts
    (`start`), or given back (`unused`, `unsent`), once. A gate counts a grant against its limit until then, so
    one neither used nor given back (a delivery settled without sending) would lower the limit for good."""

    def __init__(self, gate: Gate, admission: Admission, index: int) -> None:
        self.gate = gate
        self.admission = admission
        self.index = index
        self.state: Literal["granted", "starting", "started", "given back"] = "granted"

    async def start(self) -> None:
        """The send starts now (`Gate.start`). Stopped while the gate holds it, it is not given back here: an
        in-process gate has given its reservation back (`ratelimit.use_slot`), a shared one's ages out. The store
        failing (StoreUnavailable: a shared gate's slot not moved) leaves it granted, for `unused` to give back."""
        self.state = "starting"
        try:
            await self.gate.start(self.admission, self.index)
        except StoreUnavailable:
            self.state = "granted"  # the store failed before the slot moved: still the grant's, to give back (`unused`)
            raise
        self.state = "started"

    async def unused(self) -> bool:
        """The send never started (settled unsent, failed or stopped before): its slot back, unless it was already;
        says whether it went back now."""
        if self.state != "granted":
            return False
        await self._give_back()
        return True

    async def unsent(self) -> None:
        """The send started, but its request was not written (given up for its lease): its slot back all the same."""
        if self.state in ("granted", "started"):
            await self._give_back()

    async def _give_back(self) -> None:
        self.state = "given back"
        await self.gate.give_back(self.admission, self.index)


class Coordination(ABC):
    """Gives each destination its gate."""

    @abstractmethod
    def gate(self, destination: str, rate: RateLimit | None, limiter: Limiter | None = None) -> Gate:
        """The gate of `destination`; `limiter` is an in-process limiter to use (tests), where one is kept."""


class LocalGate(Gate):
    """A gate whose state lives in this process: a sliding-window limiter and a breaker."""

    def __init__(self, limiter: Limiter, breaker: Breaker | None = None) -> None:
        self.limiter = limiter
        self.breaker = breaker or Breaker()
        self.held_until = 0.0  # an operator's hold, monotonic (inf: until resumed)
        self.probe: Admission | None = None  # the probe granted, until an outcome is fed back or it is given back

    async def admit(self, want: int) -> Admission:
        held = self.held_until - time.monotonic()
        if held > 0:
            return Admission(granted=0, wait_s=held, held=True)
        pause, cap = self.breaker.allowance()
        if pause > 0:
            return Admission(granted=0, wait_s=pause, held=True)
        want = min(want, cap) if cap is not None else want
        granted = 0
        while granted < want:
            delay = self.limiter.next_delay()
            if delay > 0:
                return self._granted(granted, cap, wait_s=delay)
            self.limiter.reserve()
            granted += 1
        return self._granted(granted, cap)

    def _granted(self, granted: int, cap: int | None, wait_s: float = 0.0) -> Admission:
        probe = cap == 1 and granted == 1
        admission = Admission(granted=granted, wait_s=wait_s, held=granted == 0, probe=probe)
        if probe:
            self.breaker.probe_sent()
            self.probe = admission
        return admission

    async def unused(self, admission: Admission, count: int) -> None:
        # The last `count` sends granted, as a shared gate reads it (its last slots), each giving back what it
        # holds, once.
        for index in range(max(0, admission.granted - count), admission.granted):
            self._back(admission, index)
        if admission.probe and count >= admission.granted:
            self._probe_back(admission)

    async def give_back(self, admission: Admission, index: int) -> None:
        self._back(admission, index)
        if admission.probe:
            self._probe_back(admission)

    def _back(self, admission: Admission, index: int) -> None:
        """The `index`-th send's slot back, unless it is already: a send that started (a probe given up for its
        lease) gives back its own slot, not a reservation another request waits with; one not started, a
        reservation (they are alike: the oldest is used first)."""
        if index in admission.given_back:
            return
        admission.given_back.add(index)
        if index in admission.started:
            handle = admission.started.pop(index)
            if handle is not None:
                self.limiter.unsend(handle)
        else:
            self.limiter.unreserve()

    def _probe_back(self, admission: Admission) -> None:
        """A probe given back ends its hold; not one granted since an outcome ended it (a probe settled unsent is
        given back after the breaker was told its outcome)."""
        if self.probe is admission:
            self.probe = None
            self.breaker.probing = False

    async def start(self, admission: Admission, index: int) -> None:
        # The in-process log moves the slot to when the send really starts. A send passed by requests reserved after
        # its admission (look-ups made while it was prepared, `admit_request`) waits until the window has room.
        admission.started[index] = await use_slot(self.limiter)

    async def admit_request(self) -> None:
        await acquire(self.limiter)

    async def pause(self, seconds: float) -> None:
        self.limiter.pause(seconds)

    async def outcome(self, classification: str, admission: Admission | None = None) -> Change:
        probe = admission is not None and admission.probe and self.probe is admission
        if probe:
            self.probe = None  # its answer ends the probe; another send's answer leaves it out (Breaker.record)
        return self.breaker.record(classification, probe=probe)

    async def hold(self, seconds: float | None) -> None:
        self.held_until = math.inf if seconds is None else time.monotonic() + seconds

    async def unhold(self) -> None:
        self.held_until = 0.0

    async def view(self) -> GateView:
        now, mono = time.time(), time.monotonic()
        b = self.breaker
        reopens = now + b.cooldown if b.state == "open" else None
        held = None if self.held_until <= mono else math.inf if math.isinf(self.held_until) \
            else now + self.held_until - mono
        used = self.limiter.used() if isinstance(self.limiter, SlidingWindowLimiter) else None
        return GateView(breaker=b.state, breaker_reopens_at_s=reopens, held_until_s=held, rate_used=used)

    @property
    def window(self) -> float:
        return self.limiter.window


class LocalCoordination(Coordination):
    """Gates kept in memory, one per destination name: shared by every dispatcher given this instance."""

    def __init__(self) -> None:
        self.gates: dict[str, LocalGate] = {}

    def gate(self, destination: str, rate: RateLimit | None, limiter: Limiter | None = None) -> Gate:
        if destination not in self.gates:
            self.gates[destination] = LocalGate(limiter if limiter is not None else make_limiter(rate))
        return self.gates[destination]
