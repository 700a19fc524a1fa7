"""Rate limits, 429 pauses and circuit breakers shared by every process on one PostgreSQL store.

Each destination has a row in `destination_gates`; granting sends locks it (`SELECT … FOR UPDATE`), so processes
take turns, each seeing every grant made before it. The common grant (breaker closed, no hold nor pause) is one
statement, the function `gate_admit` (migration 0016; 0020 reads its window once), which does so under the same
lock. A grant is a row in `send_slots` at the database's clock (one clock for every process, whatever their hosts'
clocks say): a destination limited to N per T grants a send only while fewer than N of its slots lie in the last T
plus a margin, which is the vendor's own count ("N in any window of T"), as the in-process sliding-window log keeps
it. The margin (MARGIN_SHARE of the window, at least SHARED_MIN_MARGIN_S) covers the time between a grant and its
request leaving: the claim that follows the grant, and network jitter.

The breaker is the in-process `Breaker`'s logic run on the row's state under the same lock, so one
process's failures count for all and only one probe is out at a time. A probe holds the others back for
`probe_hold_s` (the dispatcher's lease), renewed with the leases while its sender lives (`keep_probe`), so
that a probe whose sender dies is given up within a lease, as its delivery is. The hold carries its probe's mark
(`probe_owner`, migration 0019): renewed or given back, only that probe's hold is, not one another process took
after a stall outlasted it. A 429's pause is
`paused_until` on the row; an operator's pause is `held_until` (HELD_FOREVER: until resumed), which
other processes see when they next ask, within HOLD_RECHECK_S.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

from bridge.config import RateLimit
from bridge.delivery.breaker import Breaker
from bridge.delivery.coordination import Admission, Change, Coordination, Gate, GateView
from bridge.delivery.ratelimit import MARGIN_SHARE, Limiter, note_slot

log = structlog.get_logger("bridge.store.pg_coordination")

T = TypeVar("T")
Runner = Callable[[Callable[[Any], Awaitable[T]]], Awaitable[T]]
SHARED_MIN_MARGIN_S = 0.2
HELD_FOREVER = 2**63 - 1
HOLD_RECHECK_S = 1.0
"""How often a lane held by an operator asks again: a resume in another process is seen within it."""
CLOCK = "SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint"
MOVE = "UPDATE send_slots SET at_ms = GREATEST(at_ms, (extract(epoch from clock_timestamp()) * 1000)::bigint) " \
       "WHERE id = $1"


class PgGate(Gate):
    def __init__(self, run: Any, destination: str, rate: RateLimit | None) -> None:
        self._run = run
        self.destination = destination
        self.rate = rate
        self.breaker = Breaker()
        self.probe_mark: str | None = None  # the mark of a probe granted here that is out, its answer not yet fed back
        self._next_reset: asyncio.Future[None] | None = None  # successes' reset of the failures, not yet sent
        self._sending_reset: asyncio.Future[None] | None = None  # the reset being sent now
        self._resetting: asyncio.Task[None] | None = None  # what sends the resets asked for, one at a time
        self._moving: set[asyncio.Task[None]] = set()  # slots being moved to when their requests were written
        if rate is None:
            self._window_ms = 1000
        else:
            margin = max(rate.per_seconds * MARGIN_SHARE, SHARED_MIN_MARGIN_S)
            self._window_ms = int((rate.per_seconds + margin) * 1000)
        self.punctual = (self._window_ms / 1000 - (rate.per_seconds if rate else 1.0)) / 2

    @property
    def window(self) -> float:
        return self._window_ms / 1000

    async def _locked(self, conn: Any) -> tuple[Any, int]:
        """The destination's row, locked until commit, and the database's clock once the lock is held."""
        await conn.execute("INSERT INTO destination_gates (destination) VALUES ($1) ON CONFLICT DO NOTHING",
                           self.destination)
        row = await conn.fetchrow(
            "SELECT paused_until, breaker_state, failures, opened, open_until, probe_until, held_until, probe_owner "
            "FROM destination_gates WHERE destination = $1 FOR UPDATE", self.destination)
        now: int = await conn.fetchval(CLOCK)
        return row, now

    def _breaker(self, row: Any, now: int) -> Breaker:
        return Breaker(threshold=self.breaker.threshold, base_cooldown=self.breaker.base_cooldown,
                    max_cooldown=self.breaker.max_cooldown, clock=lambda: now / 1000, state=row[1],
                    failures=row[2], opened=row[3], until=row[4] / 1000, probing=row[5] > now)

    async def _save(self, conn: Any, b: Breaker, now: int, probe_mark: str | None = None) -> None:
        """Write `b` to the row; `probe_mark` marks the probe just granted, whose hold starts now. A probe still out
        keeps its hold as its owner last renewed it (an answer to another send does not renew it); none out, none."""
        await conn.execute(
            "UPDATE destination_gates SET breaker_state = $2, failures = $3, opened = $4, open_until = $5, "
            "probe_until = CASE WHEN $8::text IS NOT NULL THEN $6 WHEN $7 THEN probe_until ELSE 0 END, "
            "probe_owner = COALESCE($8, probe_owner) WHERE destination = $1",
            self.destination, b.state, b.failures, b.opened, int(b.until * 1000),
            now + int(self.probe_hold_s * 1000), b.probing, probe_mark)
        self.breaker = Breaker(threshold=b.threshold, base_cooldown=b.base_cooldown, max_cooldown=b.max_cooldown,
                               state=b.state, failures=b.failures, opened=b.opened, probing=b.probing,
                               until=time.monotonic() + max(0.0, b.until - now / 1000))

    async def admit(self, want: int) -> Admission:
        """The common case (breaker closed, no hold nor pause) in one statement, `gate_admit` (migrations 0016, 0020),
        which checks and takes under the row's lock as `_admit` does; any other state in `_admit`'s transaction."""
        async def common(conn: Any) -> Any:
            return await conn.fetchrow(
                "SELECT slots, wait_ms FROM gate_admit($1, $2, $3, $4)", self.destination, want,
                None if self.rate is None else self.rate.requests, self._window_ms)

        asked = time.monotonic()  # before: its slots are dated once the row's lock is held, later
        row = await self._run(common, autocommit=True)  # one statement: no BEGIN and COMMIT around it
        if row[0] is None:
            return await self._admit(want)
        slots: list[int] = list(row[0])
        n = want if self.rate is None else len(slots)
        # A full window says how long until a slot is free; were it to say nothing (NULL), ask again soon.
        wait_s = max(row[1] or 0, 1) / 1000 if n == 0 else 0.0
        return Admission(granted=n, wait_s=wait_s, held=n == 0, slots=slots, asked_at=asked)

    async def _admit(self, want: int) -> Admission:
        asked = time.monotonic()  # before the transaction: its slots are dated once the row's lock is held

        async def op(conn: Any) -> Admission:
            row, now = await self._locked(conn)
            if row[6] > now:
                return Admission(granted=0, wait_s=min((row[6] - now) / 1000, HOLD_RECHECK_S), held=True)
            b = self._breaker(row, now)
            was = (b.state, b.probing)
            pause, cap = b.allowance()
            if pause > 0:
                if (b.state, b.probing) != was:
                    await self._save(conn, b, now)
                return Admission(granted=0, wait_s=pause, held=True)
            if row[0] > now:
                return Admission(granted=0, wait_s=(row[0] - now) / 1000, held=True)
            n = min(want, cap) if cap is not None else want
            wait_ms = 0
            if self.rate is not None:
                since = now - self._window_ms
                await conn.execute("DELETE FROM send_slots WHERE destination = $1 AND at_ms < $2",
                                   self.destination, since - self._window_ms)
                recent = [r[0] for r in await conn.fetch(
                    "SELECT at_ms FROM send_slots WHERE destination = $1 AND at_ms > $2 ORDER BY at_ms",
                    self.destination, since)]
                free = self.rate.requests - len(recent)
                if free <= 0:
                    # the send that must leave the window before one more fits
                    wait_ms = recent[len(recent) - self.rate.requests] + self._window_ms - now + 1
                    n = 0
                n = min(n, max(free, 0))
            slots: list[int] = []
            if n > 0 and self.rate is not None:
                slots = [r[0] for r in await conn.fetch(
                    "INSERT INTO send_slots (destination, at_ms) SELECT $1, $2 FROM generate_series(1, $3) "
                    "RETURNING id", self.destination, now, n)]
            probe = cap == 1 and n == 1
            mark = None
            if probe:
                b.probe_sent()
                mark = self.probe_mark = uuid.uuid4().hex
            if (b.state, b.probing) != was:
                await self._save(conn, b, now, mark)
            return Admission(granted=n, wait_s=max(wait_ms, 1) / 1000 if n == 0 else 0.0, held=n == 0,
                             probe=probe, slots=slots, probe_mark=mark, asked_at=asked)

        result: Admission = await self._run(op)
        return result

    async def start(self, admission: Admission, index: int) -> None:
        """A send that starts later than `punctual` after its grant was asked for (a busy process, a slow
        claim) is moved to a slot taken now, checked against the window again, waiting until one is free:
        counted at its grant, it could otherwise reach the vendor less than a window before a send granted
        a window after that grant. Its request written later than `punctual` after that (a connect, a busy
        process) moves its slot again (`_written`)."""
        if self.rate is None or index >= len(admission.slots):
            return
        slot = admission.slots[index]
        dated = admission.asked_at
        if time.monotonic() - dated > self.punctual:
            slot, dated = await self._slot_now(slot)
        note_slot(functools.partial(self._written, slot, dated))

    async def _slot_now(self, slot: int | None) -> tuple[int, float]:
        """`slot` (None: a new one) moved to now once the window has room (`_reslot`), waiting until then: its id,
        and when it was asked for (monotonic; the database dates it within that round trip)."""
        while True:  # moved once the window has room: dated then, by the database, under the row's lock
            asked = time.monotonic()
            wait, taken = await self._run(functools.partial(self._reslot, slot))
            if taken is not None:
                return taken, asked
            await asyncio.sleep(wait)

    async def _reslot(self, slot: int | None, conn: Any) -> tuple[float, int | None]:
        """Move `slot` (None: a new one) to now if the window (without it) has room and no pause holds, and say
        which slot that is; else how long to wait (and None)."""
        assert self.rate is not None
        row, now = await self._locked(conn)
        paused_until: int = row[0]
        if paused_until > now:
            return (paused_until - now) / 1000, None
        recent: list[int] = [r[0] for r in await conn.fetch(
            "SELECT at_ms FROM send_slots WHERE destination = $1 AND at_ms > $2 AND id IS DISTINCT FROM $3 "
            "ORDER BY at_ms", self.destination, now - self._window_ms, slot)]
        if len(recent) >= self.rate.requests:
            return (recent[len(recent) - self.rate.requests] + self._window_ms - now + 1) / 1000, None
        if slot is None:
            taken: int = await conn.fetchval("INSERT INTO send_slots (destination, at_ms) VALUES ($1, $2) RETURNING id",
                                             self.destination, now)
            return 0.0, taken
        await conn.execute("INSERT INTO send_slots (id, destination, at_ms) VALUES ($1, $2, $3) "
                           "ON CONFLICT (id) DO UPDATE SET at_ms = EXCLUDED.at_ms", slot, self.destination, now)
        return 0.0, slot

    def _written(self, slot: int, dated: float) -> None:
        """The request of `slot` (dated when `dated`, monotonic) is written now. Later than `punctual` after that (a
        connect, a busy process), the slot is moved to now, in a statement of its own (`_move`, a task: nothing
        waits for it): counted from its date, the next window's first request could reach the vendor less than a
        window after this one."""
        if time.monotonic() - dated <= self.punctual:
            return
        task = asyncio.get_running_loop().create_task(self._move(slot), name=f"gate slot moved {self.destination}")
        self._moving.add(task)
        task.add_done_callback(self._moving.discard)

    async def _move(self, slot: int) -> None:
        try:
            await self._run(functools.partial(self._moved, slot), autocommit=True)  # one statement: no BEGIN
        except Exception as exc:  # the slot keeps its date, as before its request was written
            log.warning("gate.slot_not_moved", destination=self.destination, error=str(exc),
                        note="a request written late for its rate-limit slot stays counted from the slot")

    @staticmethod
    async def _moved(slot: int, conn: Any) -> None:
        await conn.execute(MOVE, slot)

    async def admit_request(self) -> None:
        """A slot taken now in the shared window (`_reslot`), waiting until one is free; without a rate limit,
        nothing to count (as `start`). Its request written late moves it, as a send's (`_written`)."""
        if self.rate is None:
            return
        slot, dated = await self._slot_now(None)
        note_slot(functools.partial(self._written, slot, dated))

    async def unused(self, admission: Admission, count: int) -> None:
        if count <= 0:
            return
        give_back = admission.slots[len(admission.slots) - count:] if admission.slots else []
        await self._give_back(admission, give_back, admission.probe and count >= admission.granted)

    async def give_back(self, admission: Admission, index: int) -> None:
        """Its slot's row deleted (moved to when it started, if it did: the same row), so that it counts no more in
        the window; a probe's hold ended."""
        await self._give_back(admission, admission.slots[index:index + 1], admission.probe)

    async def _give_back(self, admission: Admission, give_back: list[int], probe_back: bool) -> None:
        if not give_back and not probe_back:
            return
        if probe_back and self.probe_mark == admission.probe_mark:
            self.probe_mark = None

        async def op(conn: Any) -> None:
            if give_back:
                await conn.execute("DELETE FROM send_slots WHERE id = ANY($1::bigint[])", give_back)
            if probe_back:  # its own hold only: after a stall past it, another process's probe may hold the row
                await conn.execute("UPDATE destination_gates SET probe_until = 0 WHERE destination = $1 "
                                   "AND probe_owner = $2", self.destination, admission.probe_mark)

        await self._run(op)

    async def pause(self, seconds: float) -> None:
        async def op(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO destination_gates AS g (destination, paused_until) "
                "VALUES ($1, (extract(epoch from clock_timestamp()) * 1000)::bigint + $2::bigint) "
                "ON CONFLICT (destination) DO UPDATE "
                "SET paused_until = GREATEST(g.paused_until, EXCLUDED.paused_until)",
                self.destination, int(seconds * 1000))

        await self._run(op)

    async def hold(self, seconds: float | None) -> None:
        async def op(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO destination_gates AS g (destination, held_until) "  # noqa: S608 - constants only
                f"VALUES ($1, CASE WHEN $2::bigint IS NULL THEN {HELD_FOREVER} ELSE ({CLOCK}) + $2::bigint END) "
                "ON CONFLICT (destination) DO UPDATE SET held_until = EXCLUDED.held_until",
                self.destination, None if seconds is None else int(seconds * 1000))

        await self._run(op)

    async def unhold(self) -> None:
        async def op(conn: Any) -> None:
            await conn.execute("UPDATE destination_gates SET held_until = 0 WHERE destination = $1", self.destination)

        await self._run(op)

    async def view(self) -> GateView:
        async def op(conn: Any) -> GateView:
            now: int = await conn.fetchval(CLOCK)
            row = await conn.fetchrow("SELECT breaker_state, open_until, held_until FROM destination_gates "
                                      "WHERE destination = $1", self.destination)
            used = None
            if self.rate is not None:
                # the slots taken within the window up to now; one dated later is not used yet
                used = await conn.fetchval("SELECT COUNT(*) FROM send_slots WHERE destination = $1 AND at_ms > $2 "
                                           "AND at_ms <= $3", self.destination,
                                           now - int(self.rate.per_seconds * 1000), now)
            if row is None:
                return GateView(breaker="closed", breaker_reopens_at_s=None, held_until_s=None, rate_used=used)
            state, open_until, held_until = row
            if state == "open" and open_until <= now:
                state = "half_open"  # its cooldown over: the next to ask sends the probe
            return GateView(
                breaker=state, breaker_reopens_at_s=open_until / 1000 if state == "open" and open_until > now else None,
                held_until_s=None if held_until <= now else math.inf if held_until == HELD_FOREVER
                else held_until / 1000, rate_used=used)

        result: GateView = await self._run(op)
        return result

    async def keep_probe(self) -> None:
        mark = self.probe_mark
        if mark is None:
            return

        async def op(conn: Any) -> None:
            await conn.execute(
                f"UPDATE destination_gates SET probe_until = ({CLOCK}) + $2::bigint "  # noqa: S608 - a constant
                "WHERE destination = $1 AND probe_until > 0 AND probe_owner = $3", self.destination,
                int(self.probe_hold_s * 1000), mark)

        await self._run(op)

    async def outcome(self, classification: str, admission: Admission | None = None) -> Change:
        """The probe's answer is the one whose admission carries the mark the row's hold has (`probe_owner`): it
        ends the half-open state, and this process's hold (no longer renewed by `keep_probe`). Any other answer
        (a send granted before the breaker opened, or a probe whose hold ran out and another process took the
        probe since) leaves the probe out and held (`Breaker.record`)."""
        mark = admission.probe_mark if admission is not None and admission.probe else None
        if mark is not None and self.probe_mark == mark:
            self.probe_mark = None
        if mark is None and classification == "success" and self.breaker.state == "closed" \
                and self.breaker.failures == 0:
            # The common case: reset only a row that has counted failures (another process's), in one statement.
            await self._reset_failures()
            return None
        await self._resets_sent()  # a success's reset asked for before this outcome is not sent after it

        async def op(conn: Any) -> Change:
            row, now = await self._locked(conn)
            b = self._breaker(row, now)
            change = b.record(classification, probe=mark is not None and row[7] == mark)
            await self._save(conn, b, now)
            return change

        result: Change = await self._run(op)
        return result

    async def _reset_failures(self) -> None:
        """Reset the row's failure count with a statement sent after this call: successes that come while one is
        out share the next (sent once it is done), so that a busy lane sends one at a time, not one per send."""
        waiting = self._next_reset
        if waiting is None:
            waiting = self._next_reset = asyncio.get_running_loop().create_future()
            # Its failure is read even when every success that shared it was cancelled meanwhile (no "Future
            # exception was never retrieved" at shutdown or in an outage).
            waiting.add_done_callback(lambda f: f.cancelled() or f.exception())
            if self._resetting is None:
                self._resetting = asyncio.create_task(self._send_resets(), name=f"gate reset {self.destination}")
        await asyncio.shield(waiting)

    async def _send_resets(self) -> None:
        async def reset(conn: Any) -> None:
            await conn.execute(
                "UPDATE destination_gates SET failures = 0 WHERE destination = $1 AND failures > 0 "
                "AND breaker_state = 'closed'", self.destination)

        done: asyncio.Future[None] | None = None
        try:
            while self._next_reset is not None:
                done, self._next_reset = self._next_reset, None
                self._sending_reset = done
                try:
                    await self._run(reset, autocommit=True)  # one statement: no BEGIN and COMMIT around it
                except Exception as exc:
                    done.set_exception(exc)
                else:
                    done.set_result(None)
        finally:  # stopped (the loop closing): none waits on for ever
            self._resetting = self._sending_reset = None
            for waiting in (done, self._next_reset):
                if waiting is not None and not waiting.done():
                    waiting.cancel()
            self._next_reset = None

    async def _resets_sent(self) -> None:
        """Wait until the resets asked for so far have been sent (their failures are theirs to report); not for
        those asked later, which a steady stream of successes would keep asking for without end."""
        asked = [f for f in (self._sending_reset, self._next_reset) if f is not None and not f.done()]
        if asked:
            await asyncio.gather(*(asyncio.shield(f) for f in asked), return_exceptions=True)


class PgCoordination(Coordination):
    def __init__(self, run: Any) -> None:
        self._run = run
        self.gates: dict[str, PgGate] = {}

    def gate(self, destination: str, rate: RateLimit | None, limiter: Limiter | None = None) -> Gate:
        if destination not in self.gates:
            self.gates[destination] = PgGate(self._run, destination, rate)
        return self.gates[destination]
