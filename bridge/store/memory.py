"""A `Store` held in memory: for tests of what runs on a store (the dispatcher, the CLI) without a database.

It passes the same contract suite as the SQLite and PostgreSQL stores. Nothing survives the process, and
only one process can use it, so it never serves a running bridge.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from bridge.conversations import email_keyed, ticket_context
from bridge.delivery.coordination import LocalCoordination
from bridge.errors import LeaseLost, NotFound, StoreUnavailable, named
from bridge.events import Event
from bridge.store.base import (
    STATUSES,
    AcceptResult,
    Arrival,
    AttemptResult,
    AttemptRow,
    AuditEntry,
    ClaimBatch,
    Claimed,
    ConversationDetail,
    ConversationRow,
    ConversationSlice,
    Cutoffs,
    DeliveryDetail,
    DeliveryFilter,
    DeliveryRow,
    NewDelivery,
    Nonce,
    PurgeCounts,
    PurgeMark,
    Store,
    StoredMappingSet,
)
from bridge.store.rows import (
    TicketTarget,
    attachment_hashes,
    conversation_forms,
    decode_dict,
    decode_event,
    doubt_after,
    encode,
    held_create_blocks,
    lease_lost,
    leases,
    lookups,
    sender_mismatch,
    settled,
    split_conversation_id,
    storable,
    storable_accept,
    storable_audit,
    storable_result,
    ticket_refusal,
)


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Delivery:
    """A delivery as the store keeps it: its listed row, and body and options encoded as the SQL stores keep
    them, so that no caller shares a dict with the store."""

    row: DeliveryRow
    body: bytes | None
    options: bytes
    arrival: int
    """Its place in the order the store took deliveries in, which orders a conversation (as the SQL stores'
    arrival, rows.head_of_conversation), never its id: an id holds the clock of the host that made it."""
    lease_until_ms: int | None = None
    lease_owner: str | None = None
    lease_token: int | None = None
    """The token of the claim that last leased it (meaningful while it is in flight)."""
    attempts: list[AttemptRow] = field(default_factory=list)


class MemoryStore(Store):
    """Events, deliveries and attempts in dicts; `clock` (milliseconds since the epoch) says what time it is."""

    def __init__(self, clock: Callable[[], int] = wall_ms) -> None:
        self.clock = clock
        self.opened = False
        self.events: dict[str, bytes] = {}
        self.dedup: dict[tuple[str, str], tuple[str, int]] = {}  # (source, key) → (event id, expires at)
        self.deliveries: dict[str, _Delivery] = {}
        self._arrivals = 0  # the last delivery's arrival
        self._tokens = 0  # the last claim's token
        self.nonces: dict[tuple[str, str], tuple[str, int]] = {}  # (source, nonce) → (digest, expires at)
        self.mapping_set: StoredMappingSet | None = None
        self.conversations: dict[str, ConversationRow] = {}
        self.unmatched: set[str] = set()  # ids of events that made no delivery
        self._coordination = LocalCoordination()
        self.audit: dict[str, AuditEntry] = {}
        self._subscribers: list[Callable[[str], None]] = []

    def coordination(self) -> LocalCoordination:
        """One set of gates for every dispatcher on this store, as a shared store keeps them."""
        return self._coordination

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.opened = False

    def _check_open(self) -> None:
        if not self.opened:
            raise StoreUnavailable("the store is closed")

    def _get(self, delivery_id: str) -> _Delivery:
        try:
            return self.deliveries[delivery_id]
        except KeyError:
            raise NotFound(f"no delivery {named(delivery_id)}") from None

    def _update(self, d: _Delivery, **changes: Any) -> None:
        d.row = msgspec.structs.replace(d.row, updated_at_ms=self.clock(), **changes)

    async def accept(self, event: Event, deliveries: list[NewDelivery], dedup_window_s: float,
                     nonce: Nonce | None = None, *, weight: int = 0) -> AcceptResult:
        self._check_open()
        event, deliveries, nonce = storable_accept(event, deliveries, nonce)
        now = self.clock()
        key = (event.source, event.dedup_key) if event.dedup_key is not None else None
        if key is not None:
            seen = self.dedup.get(key)
            if seen is not None and seen[1] > now:
                return AcceptResult(event_id=seen[0], duplicate=True, deliveries=0)
        if nonce is not None:
            for scope in (nonce.scope_for(event.source), nonce.unscoped_for(event.source)):
                held = self.nonces.get((scope, nonce.value)) if scope is not None else None
                if held is not None and held[1] > now and held[0] != nonce.digest:
                    return AcceptResult(event_id="", duplicate=False, deliveries=0, replayed=True)
        ids = [d.id for d in deliveries]
        clash = [i for i in ids if i in self.deliveries] or [i for i in ids if ids.count(i) > 1]
        if event.id in self.events or clash:
            # Checked before any change, so that a refused accept leaves nothing behind, as a rolled-back
            # transaction does.
            raise StoreUnavailable(f"memory: id already stored: {clash[0] if clash else event.id}")
        # Encoded before any change: text that is not UTF-8 raises UnicodeEncodeError here and leaves nothing
        # behind, as the SQL stores' rolled-back transactions do.
        event_data = encode(event)
        encoded = [(None if d.body is None else encode(d.body), encode(d.options)) for d in deliveries]
        if key is not None:
            self.dedup[key] = (event.id, now + int(dedup_window_s * 1000))
        if nonce is not None:
            held = self.nonces.get((nonce.scope_for(event.source), nonce.value))
            expires = max(held[1], nonce.expires_at_ms) if held is not None else nonce.expires_at_ms
            self.nonces = {k: v for k, v in self.nonces.items() if v[1] > now}  # expired ones go as new ones come
            self.nonces[(nonce.scope_for(event.source), nonce.value)] = (nonce.digest, expires)
        self.events[event.id] = event_data
        if not deliveries:
            self.unmatched.add(event.id)
        moved: dict[str, str] = {}
        for d in deliveries:
            if d.conversation is not None and (own := self._join_conversation(d, now)) is not None:
                moved[d.id] = own
        for d, (body, options) in zip(deliveries, encoded, strict=True):
            row = DeliveryRow(
                id=d.id, event_id=event.id, source=event.source, mapping=d.mapping, mapping_version=d.mapping_version,
                destination=d.destination, action=d.action, status=d.status, attempts=0, tries=0,
                next_attempt_at_ms=now, created_at_ms=now, updated_at_ms=now, last_error=d.error, ticket_id=None,
                conversation=moved.get(d.id, d.conversation),
            )
            self._arrivals += 1
            self.deliveries[d.id] = _Delivery(row, body, options, self._arrivals)
        return AcceptResult(event_id=event.id, duplicate=False, deliveries=len(deliveries))

    def _join_conversation(self, d: NewDelivery, now: int) -> str | None:
        """As the SQL stores' (sqlite.py's _join_conversation): the id of the conversation of its own a message
        opens when its sender may not join the one it names, else None."""
        assert d.conversation is not None
        c = self.conversations.get(d.conversation)
        sender = d.sender or ""
        senders = (None, sender, *d.sender_also)  # None: a conversation older than the sender column
        if d.sender_checked and (
                (c is not None and c.sender not in senders)
                or (d.known_ticket is not None and (c is None or now - c.last_message_at_ms > d.reopen_after_ms)
                    and not any(o.destination == d.destination and o.ticket_id == d.known_ticket
                                and o.sender in senders for o in self.conversations.values()))):
            own, key = split_conversation_id(d)
            sender_mismatch(d, "conversation" if c is not None and c.sender not in senders else "ticket",
                            sender, None if c is None else c.sender, own)
            self.conversations[own] = ConversationRow(
                id=own, key=key, mapping=d.mapping, destination=d.destination, messages=1, started_at_ms=now,
                last_message_at_ms=now, ticket_id=None, ticket_key=None, ticket_at_ms=None, sender=sender)
            return own
        if c is None or now - c.last_message_at_ms > d.reopen_after_ms:
            self.conversations[d.conversation] = ConversationRow(
                id=d.conversation, key=d.conversation_key or d.conversation, mapping=d.mapping,
                destination=d.destination, messages=1, started_at_ms=now,
                last_message_at_ms=max(now, c.last_message_at_ms) if c is not None else now,
                ticket_id=d.known_ticket, ticket_key=None, ticket_at_ms=None if d.known_ticket is None else now,
                sender=(sender if d.sender_checked else d.sender) if c is None else c.sender)
        else:
            self.conversations[d.conversation] = msgspec.structs.replace(
                c, messages=c.messages + 1, last_message_at_ms=max(now, c.last_message_at_ms))
        return None

    def _head(self, d: _Delivery) -> bool:
        """Whether `d` may be sent now that it is due: no earlier delivery of its conversation waits, none is sent."""
        if d.row.conversation is None:
            return True
        if any(o.row.conversation == d.row.conversation and o.row.id != d.row.id and (
                o.row.status == "in_flight" or (o.row.status == "pending" and o.arrival < d.arrival))
                for o in self.deliveries.values()):
            return False
        return not self._behind_held_create(d)

    def _behind_held_create(self, d: _Delivery) -> bool:
        c = self.conversations.get(d.row.conversation) if d.row.conversation is not None else None
        return c is not None and held_create_blocks(c.ticket_id is not None, c.started_at_ms, (
            (o.row.status, o.row.role, o.row.in_doubt_since_ms, o.row.created_at_ms) for o in self.deliveries.values()
            if o.row.conversation == d.row.conversation and o.arrival < d.arrival))

    def _listed(self, d: _Delivery) -> DeliveryRow:
        waiting = d.row.status == "pending" and d.row.conversation is not None and (any(
            o.row.conversation == d.row.conversation and o.arrival < d.arrival
            and o.row.status in ("pending", "in_flight")
            for o in self.deliveries.values()) or self._behind_held_create(d))
        return msgspec.structs.replace(d.row, waiting=waiting,
                                       ticket_missing=d.row.ticket_missing and d.row.status == "succeeded")

    def _ticket(self, d: _Delivery) -> dict[str, Any] | None:
        c = self.conversations.get(d.row.conversation) if d.row.conversation is not None else None
        if c is None or c.ticket_id is None:
            return None
        messages = sum(1 for o in self.deliveries.values()
                       if o.row.conversation == c.id and o.arrival <= d.arrival)
        return ticket_context(c.ticket_id, c.ticket_key, c.destination, created_at_ms=c.ticket_at_ms,
                              messages=messages, last_message_at_ms=c.last_message_at_ms, ticket_uuid=c.ticket_uuid,
                              first_sender=c.sender)

    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> ClaimBatch:
        self._check_open()
        now = self.clock()
        pending = sorted((d for d in self.deliveries.values()
                          if d.row.status == "pending" and d.row.destination == destination and self._head(d)),
                         key=lambda d: (d.row.next_attempt_at_ms, d.row.id))
        due = [d for d in pending if d.row.next_attempt_at_ms <= now][:limit]
        if not due:
            return ClaimBatch(items=[], next_due_ms=pending[0].row.next_attempt_at_ms if pending else None)
        self._tokens += 1
        token = self._tokens
        for d in due:
            self._update(d, status="in_flight")
            d.lease_until_ms, d.lease_owner, d.lease_token = now + int(lease_s * 1000), owner, token
        return ClaimBatch(items=[
            Claimed(id=d.row.id, event_id=d.row.event_id, mapping=d.row.mapping, destination=d.row.destination,
                    action=d.row.action, body=decode_dict(d.body) if d.body is not None else {},
                    options=decode_dict(d.options), tries=d.row.tries, attempts=d.row.attempts,
                    conversation=d.row.conversation, ticket=self._ticket(d), in_doubt_since_ms=d.row.in_doubt_since_ms,
                    role=d.row.role, token=token)
            for d in due
        ])

    async def record(self, result: AttemptResult, *, owner: str | None = None, token: int | None = None) -> None:
        self._check_open()
        result = storable_result(result)
        d = self._get(result.delivery_id)
        if (owner is not None or token is not None) and not self._held(d, owner, token):
            raise LeaseLost(lease_lost(result.delivery_id, owner, token))
        n = d.row.attempts + 1
        if d.row.status == "in_flight":
            r = result
            self._update(
                d, status=r.next_status, attempts=n, tries=d.row.tries + int(r.uses_try), last_error=r.error,
                next_attempt_at_ms=r.next_attempt_at_ms if r.next_attempt_at_ms is not None
                else d.row.next_attempt_at_ms,
                ticket_id=r.ticket_id if r.ticket_id is not None else d.row.ticket_id,
                ticket_key=r.ticket_key if r.ticket_key is not None else d.row.ticket_key,
                ticket_uuid=r.ticket_uuid if r.ticket_uuid is not None else d.row.ticket_uuid,
                ticket_missing=r.ticket_missing,
            )
            d.lease_until_ms = None
            unknown, duplicates = doubt_after(r)
            doubt = (None if r.next_status == "succeeded" else
                     d.row.in_doubt_since_ms if d.row.in_doubt_since_ms is not None or not unknown else r.started_at_ms)
            self._update(d, in_doubt_since_ms=doubt, unknowns=d.row.unknowns + int(unknown),
                         duplicates=d.row.duplicates + duplicates)
            if r.role is not None:
                self._update(d, role=r.role, action=r.action or d.row.action)
                if r.body is not None:
                    d.body = encode(r.body)
                c = self.conversations.get(d.row.conversation) if d.row.conversation is not None else None
                if c is not None and r.role == "create" and r.next_status == "succeeded" and r.ticket_id is not None:
                    self.conversations[c.id] = msgspec.structs.replace(
                        c, ticket_id=r.ticket_id, ticket_key=r.ticket_key, ticket_uuid=r.ticket_uuid,
                        ticket_at_ms=self.clock())
        else:  # its lease was taken back meanwhile: keep the attempt, leave the state to whoever holds it now
            self._update(d, attempts=n)
        d.attempts.append(AttemptRow(n=n, started_at_ms=result.started_at_ms, duration_ms=result.duration_ms,
                                     http_status=result.http_status, response_excerpt=result.response_excerpt,
                                     classification=result.classification, error=result.error,
                                     exchange=result.exchange))

    @staticmethod
    def _held(d: _Delivery, owner: str | None, token: int | None) -> bool:
        """Whether `d` is in flight under `owner`'s lease (any owner's when None), by the claim that gave `token`
        (any claim when None)."""
        return (d.row.status == "in_flight" and (owner is None or d.lease_owner == owner)
                and (token is None or d.lease_token == token))

    async def release(self, delivery_ids: list[str], *, owner: str | None = None,
                      tokens: Sequence[int] | None = None) -> None:
        self._check_open()
        now = self.clock()
        for delivery_id, token in leases(delivery_ids, tokens):
            d = self.deliveries.get(delivery_id)
            if d is not None and self._held(d, owner, token):
                self._update(d, status="pending", next_attempt_at_ms=min(d.row.next_attempt_at_ms, now))
                d.lease_until_ms = None

    async def extend_leases(self, delivery_ids: list[str], owner: str, lease_s: float,
                            tokens: Sequence[int] | None = None) -> list[str]:
        self._check_open()
        until = self.clock() + int(lease_s * 1000)
        held = [d for i, token in leases(delivery_ids, tokens) if (d := self.deliveries.get(i)) is not None
                and self._held(d, owner, token)]
        for d in held:
            d.lease_until_ms = until
        return [d.row.id for d in held]

    async def release_expired(self) -> int:
        self._check_open()
        now = self.clock()
        expired = [d for d in self.deliveries.values() if d.row.status == "in_flight"
                   and d.lease_until_ms is not None and d.lease_until_ms < now]
        for d in expired:
            # Its holder may have sent it: in doubt since the claim (the row's last change).
            doubt = d.row.in_doubt_since_ms if d.row.in_doubt_since_ms is not None else d.row.updated_at_ms
            self._update(d, status="pending", in_doubt_since_ms=doubt, unknowns=d.row.unknowns + 1)
            d.lease_until_ms = None
        return len(expired)

    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRow]:
        self._check_open()
        forms = conversation_forms(flt)
        if flt.status is not None and flt.status not in STATUSES:
            raise ValueError(f"unknown delivery status {flt.status!r}; known: {', '.join(STATUSES)}")
        rows = [d.row for d in self.deliveries.values()
                if (flt.status is None or d.row.status == flt.status)
                and (flt.destination is None or d.row.destination == flt.destination)
                and (flt.source is None or d.row.source == flt.source)
                and (flt.mapping is None or d.row.mapping == flt.mapping)
                and (forms is None or d.row.conversation in forms)
                and (flt.before_id is None or d.row.id < flt.before_id)]
        rows = sorted(rows, key=lambda r: r.id, reverse=True)[:flt.limit]
        return [self._listed(self.deliveries[r.id]) for r in rows]

    async def get_delivery(self, delivery_id: str) -> DeliveryDetail:
        self._check_open()
        d = self._get(delivery_id)
        return DeliveryDetail(delivery=self._listed(d), body=decode_dict(d.body) if d.body is not None else None,
                              options=decode_dict(d.options), event=decode_event(self.events[d.row.event_id]),
                              attempts=list(d.attempts))

    async def get_event(self, event_id: str) -> Event:
        self._check_open()
        try:
            return decode_event(self.events[event_id])
        except KeyError:
            raise NotFound(f"no event {named(event_id)}") from None

    async def replay(
        self, delivery_ids: list[str], bodies: dict[str, tuple[dict[str, Any], str]] | None = None,
        mapping: str | None = None,
    ) -> list[str]:
        self._check_open()
        new = bodies or {}
        now = self.clock()
        moved = []
        for delivery_id in delivery_ids:
            d = self.deliveries.get(delivery_id)
            if d is None or d.row.status not in ("succeeded", "dead"):
                continue
            if delivery_id in new:
                body, version = new[delivery_id]
                d.body = encode(body)
                self._update(d, mapping_version=version, mapping=storable(mapping) if mapping else d.row.mapping)
            elif d.body is None:
                continue
            self._update(d, status="pending", tries=0, next_attempt_at_ms=now, last_error=None, in_doubt_since_ms=None)
            moved.append(delivery_id)
        return moved

    async def mark_succeeded(self, delivery_id: str, attempt: AttemptResult) -> bool:
        self._check_open()
        d = self._get(delivery_id)
        if d.row.status not in ("pending", "dead"):
            return False
        r = storable_result(attempt)
        n = d.row.attempts + 1
        self._update(d, status="succeeded", attempts=n, last_error=r.error, ticket_id=r.ticket_id,
                     ticket_key=r.ticket_key if r.ticket_key is not None else d.row.ticket_key, in_doubt_since_ms=None,
                     ticket_uuid=r.ticket_uuid if r.ticket_uuid is not None else d.row.ticket_uuid,
                     ticket_missing=False)
        d.attempts.append(AttemptRow(n=n, started_at_ms=r.started_at_ms, duration_ms=0.0, http_status=None,
                                     response_excerpt=None, classification=r.classification, error=r.error))
        c = self.conversations.get(d.row.conversation) if d.row.conversation is not None else None
        if c is not None and d.row.role != "follow_up" and c.ticket_id is None:
            self.conversations[c.id] = msgspec.structs.replace(
                c, ticket_id=r.ticket_id, ticket_key=r.ticket_key, ticket_uuid=r.ticket_uuid, ticket_at_ms=self.clock())
        if c is not None and d.row.role != "follow_up":  # the conversation's next message may now go
            for callback in self._subscribers:
                callback(d.row.destination)
        return True

    async def set_ticket(self, delivery_id: str, attempt: AttemptResult) -> str | None:
        self._check_open()
        d = self._get(delivery_id)
        r = storable_result(attempt)
        c = self.conversations.get(d.row.conversation) if d.row.conversation is not None else None
        unsettled = [o.row for o in self.deliveries.values() if c is not None and o.row.conversation == c.id and (
            o.row.status == "in_flight" or (o.row.status == "pending" and o.row.in_doubt_since_ms is not None))]
        busy = next(((o.id, False) for o in unsettled if o.status == "in_flight"),
                    next(((o.id, True) for o in unsettled), None))
        why_not = ticket_refusal(TicketTarget(
            d.row.status, d.row.role, d.row.ticket_id, d.row.ticket_missing, d.row.created_at_ms, d.row.conversation,
            d.row.destination), c, busy)
        if why_not is not None:
            return why_not
        n = d.row.attempts + 1
        key = r.ticket_key if r.ticket_key is not None else d.row.ticket_key
        uuid = r.ticket_uuid if r.ticket_uuid is not None else d.row.ticket_uuid
        self._update(d, attempts=n, last_error=r.error, ticket_id=r.ticket_id, ticket_key=key, ticket_uuid=uuid,
                     ticket_missing=False)
        d.attempts.append(AttemptRow(n=n, started_at_ms=r.started_at_ms, duration_ms=0.0, http_status=None,
                                     response_excerpt=None, classification=r.classification, error=r.error))
        if c is not None:
            self.conversations[c.id] = msgspec.structs.replace(
                c, ticket_id=r.ticket_id, ticket_key=key, ticket_uuid=uuid, ticket_at_ms=self.clock())
            for callback in self._subscribers:  # the conversation's next message may go, as a follow-up
                callback(d.row.destination)
        return None

    async def subscribe(self, callback: Callable[[str], None]) -> None:
        self._subscribers.append(callback)

    async def mapping_backlog(self, open_since_ms: dict[str, int]) -> dict[str, dict[str, int]]:
        self._check_open()
        since = {storable(name): at for name, at in open_since_ms.items()}
        out: dict[str, dict[str, int]] = {}
        for d in self.deliveries.values():
            if d.row.mapping in since and d.row.status in ("pending", "in_flight", "dead"):
                counts = out.setdefault(d.row.mapping, {})
                counts[d.row.status] = counts.get(d.row.status, 0) + 1
        for c in self.conversations.values():
            if c.mapping in since and c.last_message_at_ms >= since[c.mapping]:
                counts = out.setdefault(c.mapping, {})
                counts["conversations"] = counts.get("conversations", 0) + 1
        return out

    async def mark_dead(self, destination: str, error: str, limit: int) -> int:
        self._check_open()
        destination, error = storable(destination), storable(error)
        marked = 0
        for d in sorted(self.deliveries.values(), key=lambda d: d.row.id):
            if marked >= limit:
                break
            if d.row.destination == destination and d.row.status == "pending":
                self._update(d, status="dead", last_error=error)
                marked += 1
        return marked

    async def destinations_of(self, delivery_ids: list[str]) -> dict[str, str]:
        self._check_open()
        return {i: d.row.destination for i in delivery_ids if (d := self.deliveries.get(i)) is not None}

    async def counts(self) -> dict[str, dict[str, int]]:
        self._check_open()
        out: dict[str, dict[str, int]] = {}
        for d in self.deliveries.values():
            by_status = out.setdefault(d.row.destination, {})
            by_status[d.row.status] = by_status.get(d.row.status, 0) + 1
        return out

    async def list_unmatched(self, limit: int = 50, before_id: str | None = None) -> list[Event]:
        self._check_open()
        ids = sorted((i for i in self.unmatched if before_id is None or i < before_id), reverse=True)[:limit]
        return [decode_event(self.events[i]) for i in ids]

    async def get_conversations(self, key: str, limit: int | None = None) -> list[ConversationDetail]:
        self._check_open()
        forms = lookups(key)
        return [ConversationDetail(conversation=c, deliveries=[
                    self._listed(d) for d in self.deliveries.values() if d.row.conversation == c.id][:limit])
                for c in sorted(self.conversations.values(), key=lambda c: c.id) if c.key in forms or c.id in forms]

    async def conversation_slice(self, conversation: str, limit: int, *, after: Arrival | None = None,
                                 before: Arrival | None = None, last: bool = False) -> ConversationSlice:
        self._check_open()
        conversation = storable(conversation)
        held = sorted(((d.arrival, d.row.id), d) for d in self.deliveries.values()
                      if d.row.conversation == conversation)
        if last:
            rows = held[-limit:]
            return ConversationSlice(deliveries=[self._listed(d) for _, d in rows], arrivals=[a for a, _ in rows],
                                     earlier=len(held) > limit, later=False, ahead=len(held) - len(rows))
        if before is not None:
            ahead = [x for x in held if x[0] < before]
            rows, earlier = ahead[-limit:], len(ahead) > limit
            later = any(x[0] > rows[-1][0] for x in held) if rows else any(x[0] >= before for x in held)
        else:
            ahead = [x for x in held if after is None or x[0] > after]
            rows, later = ahead[:limit], len(ahead) > limit
            earlier = after is not None and (any(x[0] < rows[0][0] for x in held) if rows
                                             else any(x[0] <= after for x in held))
        return ConversationSlice(deliveries=[self._listed(d) for _, d in rows], arrivals=[a for a, _ in rows],
                                 earlier=earlier, later=later)

    async def reset_conversation(self, key: str) -> list[ConversationRow]:
        self._check_open()
        forms = lookups(key)
        found = sorted((c for c in self.conversations.values() if c.key in forms or c.id in forms),
                       key=lambda c: c.id)
        for c in found:
            self.conversations[c.id] = msgspec.structs.replace(c, ticket_id=None, ticket_key=None, ticket_uuid=None,
                                                               ticket_at_ms=None, started_at_ms=self.clock())
        return found

    async def save_mapping_set(self, files: dict[str, str], version: str) -> None:
        self._check_open()
        self.mapping_set = StoredMappingSet(files=dict(files), version=version, saved_at_ms=self.clock())

    async def load_mapping_set(self) -> StoredMappingSet | None:
        self._check_open()
        saved = self.mapping_set
        return None if saved is None else StoredMappingSet(files=dict(saved.files), version=saved.version,
                                                           saved_at_ms=saved.saved_at_ms)

    # -- retention ------------------------------------------------------------------------------

    def _received_ms(self, event_id: str) -> int:
        return int(decode_event(self.events[event_id]).received_at.timestamp() * 1000)

    def _purgeable(self, event_id: str, cutoffs: Cutoffs) -> bool:
        return all(settled(d.row.status, d.row.updated_at_ms, cutoffs) and not self._holds_conversation(d)
                   for d in self.deliveries.values() if d.row.event_id == event_id)

    def _holds_conversation(self, d: _Delivery) -> bool:
        """rows.HOLDING_CREATE: `d` is a held create something of its conversation waits on."""
        c = self.conversations.get(d.row.conversation) if d.row.conversation is not None else None
        return (c is not None and d.row.status == "dead" and d.row.role == "create"
                and d.row.in_doubt_since_ms is not None and c.ticket_id is None
                and d.row.created_at_ms >= c.started_at_ms
                and any(o.row.conversation == d.row.conversation and o.row.status in ("pending", "in_flight")
                        for o in self.deliveries.values()))

    def _old_attempts(self, cutoffs: Cutoffs) -> list[tuple[tuple[int, str, int], _Delivery, AttemptRow]]:
        assert cutoffs.attempts_ms is not None
        return sorted((((a.started_at_ms, d.row.id, a.n), d, a) for d in self.deliveries.values()
                       for a in d.attempts if a.started_at_ms < cutoffs.attempts_ms), key=lambda t: t[0])

    def _drop_event(self, event_id: str, out: PurgeCounts) -> None:
        for delivery_id in [i for i, d in self.deliveries.items() if d.row.event_id == event_id]:
            out.attempts += len(self.deliveries.pop(delivery_id).attempts)
            out.deliveries += 1
        del self.events[event_id]
        self.unmatched.discard(event_id)
        out.events += 1

    async def purge(self, cutoffs: Cutoffs, limit: int, dry_run: bool = False,
                    after: PurgeMark | None = None) -> PurgeCounts:
        self._check_open()
        mark = after or PurgeMark()
        out = PurgeCounts(after=mark)
        if dry_run:
            if cutoffs.events_ms is not None:
                events_ms = cutoffs.events_ms
                gone = {e for e in self.events if self._received_ms(e) < events_ms and self._purgeable(e, cutoffs)}
                for d in self.deliveries.values():
                    if d.row.event_id in gone:
                        out.deliveries += 1
                        out.attempts += len(d.attempts)
                out.events = len(gone)
            else:
                gone = set()
            if cutoffs.attempts_ms is not None:
                out.attempts += sum(1 for _, d, a in self._old_attempts(cutoffs)
                                    if a.n < d.row.attempts and d.row.event_id not in gone)
        else:
            if cutoffs.events_ms is not None:
                events_ms = cutoffs.events_ms
                start = mark.events or (-1, "")
                scan = sorted(k for e in self.events if (k := (self._received_ms(e), e)) > start and k[0] < events_ms)
                looked = scan[:limit]
                for _, event_id in looked:
                    if self._purgeable(event_id, cutoffs):
                        self._drop_event(event_id, out)
                out.more = len(looked) >= limit
                out.after = PurgeMark(events=looked[-1] if looked else mark.events, attempts=mark.attempts)
            if cutoffs.attempts_ms is not None:
                start_a = mark.attempts or (-1, "", 0)
                looked_a = [t for t in self._old_attempts(cutoffs) if t[0] > start_a][:limit]
                for _, d, a in looked_a:
                    if a.n < d.row.attempts:
                        d.attempts.remove(a)
                        out.attempts += 1
                out.more = out.more or len(looked_a) >= limit
                out.after = msgspec.structs.replace(out.after, attempts=looked_a[-1][0] if looked_a else mark.attempts)
        if cutoffs.dedup_ms is not None:
            dedup_ms = cutoffs.dedup_ms
            expired = [key for key, (_, expires) in self.dedup.items() if expires <= dedup_ms]
            if not dry_run:
                expired = expired[:limit]
                for key in expired:
                    del self.dedup[key]
                out.more = out.more or len(expired) >= limit
            out.dedup = len(expired)
        if cutoffs.conversations_ms is not None:
            self._purge_conversations(cutoffs, limit, mark.conversations, dry_run, out)
        return out

    def _purge_conversations(self, cutoffs: Cutoffs, limit: int, after: str | None, dry_run: bool,
                             out: PurgeCounts) -> None:
        cutoff, tickets = cutoffs.conversations_ms, cutoffs.tickets_ms
        assert cutoff is not None
        threaded = {d.row.conversation for d in self.deliveries.values()}
        ids = sorted(self.conversations)
        if dry_run:
            looked = ids
        else:
            looked = [i for i in ids if after is None or i > after][:limit]
            out.more = out.more or len(looked) >= limit
            out.after = msgspec.structs.replace(out.after, conversations=looked[-1] if looked else after)
        def aged(c: ConversationRow) -> bool:  # as rows.CONVERSATION_GONE
            return c.last_message_at_ms < cutoff and (
                c.ticket_id is None or not c.sender or not email_keyed(c.key)
                or (tickets is not None and c.last_message_at_ms < tickets))

        gone = [i for i in looked if aged(self.conversations[i]) and i not in threaded]
        if not dry_run:
            for i in gone:
                del self.conversations[i]
        out.conversations = len(gone)

    async def attachment_refs(self, received_before_ms: int) -> set[str]:
        self._check_open()
        return {h for e, data in self.events.items() if self._received_ms(e) < received_before_ms
                for h in attachment_hashes(data)}

    async def oldest_pending(self) -> dict[str, int]:
        self._check_open()
        out: dict[str, int] = {}
        for d in self.deliveries.values():
            if d.row.status in ("pending", "in_flight"):
                out[d.row.destination] = min(out.get(d.row.destination, d.row.created_at_ms), d.row.created_at_ms)
        return out

    async def add_audit(self, entry: AuditEntry) -> None:
        self._check_open()
        self.audit[entry.id] = storable_audit(entry)

    async def list_audit(self, limit: int = 50, before_id: str | None = None) -> list[AuditEntry]:
        self._check_open()
        keys = sorted((k for k in self.audit if before_id is None or k < before_id), reverse=True)[:limit]
        return [self.audit[k] for k in keys]
