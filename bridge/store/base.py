"""The `Store` interface and the records that cross it; every backend passes one contract suite."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from bridge.events import Event

if TYPE_CHECKING:
    from bridge.delivery.coordination import Coordination

DeliveryStatus = Literal["pending", "in_flight", "succeeded", "dead"]
STATUSES: tuple[DeliveryStatus, ...] = ("pending", "in_flight", "succeeded", "dead")


class NewDelivery(msgspec.Struct, kw_only=True):
    """A delivery created with its event: rendered (`pending`) or not renderable (`dead`)."""

    id: str
    mapping: str
    mapping_version: str
    destination: str
    action: str
    body: dict[str, Any] | None
    options: dict[str, Any] = {}
    status: Literal["pending", "dead"] = "pending"
    error: str | None = None
    conversation: str | None = None
    """Its conversation (`mapping|key`): deliveries of one conversation are sent one at a time, in order."""
    conversation_key: str | None = None
    known_ticket: str | None = None
    """A vendor ticket the message names (a `[#id]` subject token): its conversation starts with that ticket."""
    reopen_after_ms: int = 7 * 86_400_000
    """A message this long after the conversation's last one starts a new ticket."""
    sender: str | None = None
    """The message's sender (an email's lower-cased address): the conversation's first sender when it opens it."""
    sender_checked: bool = False
    """The key is one any sender may write (an email thread's): the message joins the conversation, or the ticket
    it names, only when `sender` is the conversation's first sender (or the conversation predates the column);
    otherwise it opens a conversation of its own (conversations.split_key) and `conversation.sender_mismatch`
    is logged."""
    sender_also: tuple[str, ...] = ()
    """Other forms of `sender` (its address at the domains its source names as aliases of its domain,
    conversations.sender_aliases): a conversation first sent by one of them is `sender`'s too."""


class Nonce(msgspec.Struct, kw_only=True, frozen=True):
    """A value a provider signs once per request (Mailgun's `token`): until `expires_at_ms` it may be used
    again only by the same request (a retry: the same `digest`), never by another one (a replay)."""

    value: str
    digest: str
    """A fingerprint of the request that uses it (intake: 128 bits of the SHA-256 of its source and body, in hex)."""
    expires_at_ms: int
    scope: str | None = None
    """Where the value must be unique: a name derived from the key that signs it (`key:` and 32 hex digits, never
    the key), shared by every source with that key; None, the event's source alone. Kept in the `source` column."""

    def scope_for(self, source: str) -> str:
        """What the store keys the nonce by, with its value: its scope, else `source`."""
        return source if self.scope is None else self.scope

    def unscoped_for(self, source: str) -> str | None:
        """For a scoped nonce, the key a version before scopes recorded its value by (`source`): a row under it,
        unexpired and of another digest, refuses the request too, so that a token captured before an upgrade
        is not replayed after it within its tolerance. None for an unscoped nonce."""
        return None if self.scope is None else source


class AcceptResult(msgspec.Struct, kw_only=True):
    event_id: str
    duplicate: bool
    deliveries: int
    replayed: bool = False
    """The nonce was used by another request: nothing was stored (`event_id` is empty)."""


class Claimed(msgspec.Struct, kw_only=True):
    """A delivery leased to one sender."""

    id: str
    event_id: str
    mapping: str
    destination: str
    action: str
    body: dict[str, Any]
    options: dict[str, Any]
    tries: int
    attempts: int
    conversation: str | None = None
    ticket: dict[str, Any] | None = None
    """The conversation's ticket when it has one (this delivery is then a follow-up), as `ticket` in mappings."""
    in_doubt_since_ms: int | None = None
    """An earlier send's outcome is unknown (a timeout after the request went out, a reset, a crash): it may
    have reached the vendor at or after this time. The destination's `on_unknown` says what happens first."""
    role: str | None = None
    """How it was last sent (`create`, `follow_up`), None before: a follow-up sent again when its conversation has
    no ticket (reset by an operator) is rendered as a create first, its stored action and body being the
    follow-up's."""
    token: int = 0
    """The claim's token, which the store gave every delivery of this claim and no other claim (0: not claimed from
    a store). `record`, `release` and `extend_leases` given it act only while this claim holds the lease: a late or
    repeated call of an earlier claim never meets a later one, even the same owner's."""


class ClaimBatch(msgspec.Struct, kw_only=True):
    items: list[Claimed]
    next_due_ms: int | None = None


class AttemptResult(msgspec.Struct, kw_only=True):
    """One attempt's record and the delivery state it leads to."""

    delivery_id: str
    started_at_ms: int
    duration_ms: float
    http_status: int | None
    response_excerpt: str | None
    classification: str
    error: str | None
    ticket_id: str | None = None
    ticket_key: str | None = None
    ticket_uuid: str | None = None
    next_status: Literal["succeeded", "pending", "dead"]
    next_attempt_at_ms: int | None = None
    exchange: dict[str, Any] | None = None
    """The request as sent and the response's headers, secrets redacted (bridge/delivery/exchange.py)."""
    role: Literal["create", "follow_up"] | None = None
    """In a conversation: a create's success gives the conversation its ticket."""
    action: str | None = None
    body: dict[str, Any] | None = None
    """A follow-up's action and body, rendered at send time: kept on the delivery in place of the create's."""
    duplicate: bool = False
    """A send made again after an unknown outcome (`on_unknown: resend`) that succeeded or whose own outcome is
    unknown: it may have made one more ticket than wanted, counted in `duplicates`."""
    unsent: bool = False
    """Settled without a request (before sending, such as a reconciliation that stopped before it could tell): an
    `unknown` one leaves the doubt as it was and is not counted in `unknowns`, which counts sends."""
    ticket_missing: bool = False
    """A success whose answer gave no ticket id (none where the adapter reads one, or what is no id there) for a
    request the vendor answers one to (`Adapter.answers_ticket_id`): the vendor made the ticket, the delivery does not
    know which. Kept on the delivery (`DeliveryRow.ticket_missing`) until its next attempt or an operator's
    mark-succeeded."""
    uses_try: bool = True
    """The attempt counts against the retry schedule (`tries`; `attempts` counts every attempt). False for one our
    store cut short before the vendor could act on it: a request refused for its credentials whose resend the store
    kept from going out (`Sent.resend_unsent`), recorded with that refusal and not counted as a try."""


UNKNOWN = "unknown"
"""The classification of an attempt whose outcome is unknown: the delivery is then in doubt (`in_doubt_since`)
until a success (sent, or found by reconciliation), a replay or an operator's mark-succeeded."""


class DeliveryRow(msgspec.Struct, kw_only=True):
    id: str
    event_id: str
    source: str
    mapping: str
    mapping_version: str
    destination: str
    action: str
    status: DeliveryStatus
    attempts: int
    tries: int
    next_attempt_at_ms: int
    created_at_ms: int
    updated_at_ms: int
    last_error: str | None
    ticket_id: str | None
    ticket_key: str | None = None
    conversation: str | None = None
    role: str | None = None
    """`create` or `follow_up` once sent; None before (or outside conversations)."""
    waiting: bool = False
    """Pending behind an earlier delivery of its conversation (a follow-up waiting for its ticket)."""
    in_doubt_since_ms: int | None = None
    """An earlier send's outcome is unknown; it may have reached the vendor at or after this time."""
    unknowns: int = 0
    """Sends whose outcome was unknown (timed out after the request went out, reset, or lost in a crash)."""
    duplicates: int = 0
    """Sends made again after an unknown outcome without a look-up (that succeeded, or whose outcome is unknown
    too): each a possible duplicate ticket at the vendor, exactly so when every unknown send made one."""
    ticket_uuid: str | None = None
    """A third reference the vendor gave beside the id and key (LeadSquared's `TicketId`)."""
    ticket_missing: bool = False
    """Succeeded, but the vendor's answer gave no ticket id for a request it answers one to (migration 0026): the
    vendor holds a ticket the delivery cannot name; a conversation's create so answered leaves its thread without a
    ticket, and the thread's next message is sent as a new ticket (docs/vendors.md)."""


class ConversationRow(msgspec.Struct, kw_only=True):
    id: str
    key: str
    mapping: str
    destination: str
    messages: int
    started_at_ms: int
    last_message_at_ms: int
    ticket_id: str | None
    ticket_key: str | None
    ticket_at_ms: int | None
    ticket_uuid: str | None = None
    sender: str | None = None
    """Its first message's sender (None: opened before the column existed, or by a message without one)."""


class ConversationDetail(msgspec.Struct, kw_only=True):
    conversation: ConversationRow
    deliveries: list[DeliveryRow]


Arrival = tuple[int, str]
"""A delivery's place in its conversation's order, as the store keeps it (rows.head_of_conversation): the number the
store gave it as it took it (SQLite's rowid, PostgreSQL's `arrival`, the memory store's count), then its id, which
orders only PostgreSQL's deliveries stored before migration 0022 (all of arrival 0). A later delivery of the
conversation has a larger one while the delivery at that place is stored, so a page that starts after (or ends
before) one is stable while others arrive. On SQLite, not once it is gone: the rowids of the deleted rows with the
largest ones (retention emptying the table, or deleting its newest rows) are given again to deliveries stored after,
so a place whose delivery is gone is stale (ConversationSlice.stale)."""


class ConversationSlice(msgspec.Struct, kw_only=True):
    """Some of a conversation's deliveries, in arrival order, each with its place (`arrivals`, one per delivery),
    and whether others of the conversation come before the first listed and after the last."""

    deliveries: list[DeliveryRow]
    arrivals: list[Arrival]
    earlier: bool
    later: bool
    ahead: int | None = None
    """How many of the conversation's deliveries come before the first listed, when the read knows it without counting
    them: a last slice (`last`), from the count the conversation keeps of its deliveries. None for the others."""
    stale: bool = False
    """The place the slice was asked from (`after`, `before`) no longer names a stored delivery, and deliveries stored
    since may hold places before it (SQLite, Arrival): nothing read; the reader starts again from the first page."""


class AttemptRow(msgspec.Struct, kw_only=True):
    n: int
    started_at_ms: int
    duration_ms: float
    http_status: int | None
    response_excerpt: str | None
    classification: str
    error: str | None
    exchange: dict[str, Any] | None = None


class DeliveryDetail(msgspec.Struct, kw_only=True):
    delivery: DeliveryRow
    body: dict[str, Any] | None
    options: dict[str, Any]
    event: Event
    attempts: list[AttemptRow]


class DeliveryFilter(msgspec.Struct, kw_only=True):
    status: DeliveryStatus | None = None
    destination: str | None = None
    source: str | None = None
    mapping: str | None = None
    conversation: str | None = None
    limit: int = 50
    before_id: str | None = None


class AuditEntry(msgspec.Struct, kw_only=True, frozen=True):
    """One change made through the admin API: who (the token's name), what (`action` on `target`, with
    `detail`), when (ms since the epoch). `id` sorts by time (`aud_…`)."""

    id: str
    at_ms: int
    actor: str
    action: str
    target: str
    detail: dict[str, Any] = {}


class StoreProblem(msgspec.Struct, frozen=True, kw_only=True):
    """Why the store takes no writes now: `lost` (its file is gone: for good, until a restart) or
    `failing` (commits fail, e.g. a full disk: until one succeeds again)."""

    kind: Literal["lost", "failing"]
    reason: str


class Cutoffs(msgspec.Struct, frozen=True, kw_only=True):
    """What a purge may delete, as epoch-millisecond cutoffs (a row goes when older than its cutoff); None
    keeps that kind. An event goes, with its deliveries and attempts, once every delivery of it is settled:
    succeeded and last changed before `events_ms`, or dead and last changed before `dead_ms`."""

    events_ms: int | None = None
    dead_ms: int | None = None
    attempts_ms: int | None = None
    """Attempts started before this go, except each kept delivery's latest (which shows why it ended so)."""
    dedup_ms: int | None = None
    """Dedup keys that expired at or before this go (no duplicate can match them any more)."""
    conversations_ms: int | None = None
    """Conversations (their keys hold a customer's address or phone number) whose last message came before this
    and that have no delivery left go: no message of theirs is kept any more."""
    tickets_ms: int | None = None
    """An email-keyed conversation (conversations.email_keyed) that holds a ticket and knows its first sender
    (not "") goes only once its last message also came before this (None: it is kept): until then its sender's
    `[#id]` reply still follows up on the ticket, which only a kept conversation of that sender lets a token
    join. A chat's (its sender the customer's phone number or id) goes at `conversations_ms`."""


class PurgeMark(msgspec.Struct, frozen=True, kw_only=True):
    """Where a purge's scans stopped, so that the next batch goes on from there rather than looking again at
    the old rows kept (pending work, dead deliveries, each delivery's latest attempt)."""

    events: tuple[int, str] | None = None
    """(received_at, id) of the last event looked at."""
    attempts: tuple[int, str, int] | None = None
    """(started_at, delivery_id, n) of the last attempt looked at."""
    conversations: str | None = None
    """The id of the last conversation looked at."""


class PurgeCounts(msgspec.Struct, kw_only=True):
    """What one purge call deleted (or, with `dry_run`, would delete)."""

    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    dedup: int = 0
    conversations: int = 0
    more: bool = False
    """A kind hit the batch limit: call again (with `after`) for the rest."""
    after: PurgeMark = PurgeMark()
    """Where the scans stopped: pass it to the next batch."""
    busy: bool = False
    """Another process holds the purge (shared stores): nothing was done; try again later."""

    def add(self, other: PurgeCounts) -> None:
        self.events += other.events
        self.deliveries += other.deliveries
        self.attempts += other.attempts
        self.dedup += other.dedup
        self.conversations += other.conversations


class StoredMappingSet(msgspec.Struct, kw_only=True):
    """The last mapping set that loaded and passed its tests: each file's name and text, the set's
    version, and when it was saved (ms since the epoch)."""

    files: dict[str, str]
    version: str
    saved_at_ms: int


class Store(ABC):
    """Durable events, deliveries and attempts. Every method may raise StoreUnavailable."""

    commit_failures: int = 0  # commits that failed, for /metrics
    migrated: tuple[str, ...] = ()
    """The migrations (their names, in order) this store's `open` applied to a schema an earlier version made: none
    when it was up to date, or when the open made the schema (a new store: nothing was there to upgrade)."""
    encoding: str = "UTF8"
    """The encoding the store keeps text in, as the database names it (a PostgreSQL database's `server_encoding`,
    read when it opens)."""
    records_at_once: bool = False
    """Whether `record` hands its whole write over (queued as one write of a transaction, or done) before it first
    waits, so that a caller cancelled while awaiting it leaves it to be done in full all the same. The dispatcher
    awaits such a store's record as it is, and any other's through asyncio.shield, which takes a task of its own per
    record: a stop that cancels a delivery must not lose the answer its vendor gave."""

    @abstractmethod
    async def open(self) -> None:
        """Connect, migrate and take whatever locks or leases the backend needs."""

    async def unheld(self, texts: Iterable[str]) -> list[str]:
        """Those of `texts` the store cannot keep, each refused wherever it is written: none, unless its `encoding`
        lacks some characters."""
        return []

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def accept(self, event: Event, deliveries: list[NewDelivery], dedup_window_s: float,
                     nonce: Nonce | None = None, *, weight: int = 0) -> AcceptResult:
        """Store the event and its deliveries in one transaction, unless its dedup key was seen in the window.

        `weight`: about how many bytes the event and its deliveries encode to (intake.weighed: the length of their
        text, an attachment saved apart weighing only its entry), when the caller knows it; 0 when it does not. A
        backend may encode and write a heavy event off the event loop (SQLite).

        With `nonce`: an event that is not a duplicate is stored only while the nonce (in its scope, and a scoped
        one also under its source alone: Nonce.unscoped_for) is unused, expired, or held by the same digest; the
        nonce is then recorded (or refreshed) in its scope in the same transaction,
        so an accept that fails leaves it unused. Held by another digest: nothing is written, and the result
        says `replayed`. A duplicate is answered as a duplicate whatever its nonce. Expired nonces are deleted
        a few at a time as new ones are recorded."""

    @abstractmethod
    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> ClaimBatch:
        """Lease up to `limit` due deliveries of `destination`, each given the claim's token (`Claimed.token`, one
        no other claim is given); with none due, say when the next one is."""

    @abstractmethod
    async def record(self, result: AttemptResult, *, owner: str | None = None, token: int | None = None) -> None:
        """Record an attempt and move its delivery on, in one transaction. With `owner`: only while `owner`
        holds the delivery's lease, and with `token` too, by the claim that gave that token; otherwise nothing is
        written and LeaseLost is raised."""

    @abstractmethod
    async def release(self, delivery_ids: list[str], *, owner: str | None = None,
                      tokens: Sequence[int] | None = None) -> None:
        """Give leased deliveries back, due now, without counting an attempt; with `owner`, only those whose
        lease `owner` still holds (others are left to their holder), and with `tokens` (one per id), only those
        still held by the claim that gave each its token (a later claim, the same owner's too, is left alone)."""

    @abstractmethod
    async def extend_leases(self, delivery_ids: list[str], owner: str, lease_s: float,
                            tokens: Sequence[int] | None = None) -> list[str]:
        """Push the leases `owner` holds on these deliveries (with `tokens`, one per id: by the claim that gave
        each its token) out to `lease_s` from now, so that no reaper gives them back while their sender still
        holds them; returns the ids whose lease was extended (one missing is no longer that claim's: settled,
        given back, or taken over after its lease ran out)."""

    @abstractmethod
    async def release_expired(self) -> int:
        """Give back every delivery whose lease has run out; returns how many. Each is in doubt from then on
        (`in_doubt_since`: when it was claimed; `unknowns` counts one): its holder may have sent it."""

    @abstractmethod
    async def mark_succeeded(self, delivery_id: str, attempt: AttemptResult) -> bool:
        """An operator's word that a delivery not in flight reached the vendor (`attempt.ticket_id`): it becomes
        succeeded, no longer in doubt, with `attempt` recorded (and, when it is the create, its conversation given
        the ticket and its destination announced to `subscribe`'s callbacks). False when it is in flight or
        succeeded already; raises NotFound."""

    @abstractmethod
    async def set_ticket(self, delivery_id: str, attempt: AttemptResult) -> str | None:
        """An operator's word that a succeeded create whose answer named no ticket (`ticket_missing`, or its id
        dropped) made ticket `attempt.ticket_id` (`ticket_key`, `ticket_uuid` beside it): the delivery takes it, its
        `ticket_missing` cleared, with `attempt` recorded, and its conversation takes it too, its destination
        announced to `subscribe`'s callbacks (the thread's next message follows up on it). One change: none of it is
        made unless all of it may be (rows.ticket_refusal): None when done, else why not (the delivery is no such
        create, its conversation has a ticket already or has started again since, or a delivery of it is being
        sent, or is to be sent again after a send whose outcome is unknown). Raises NotFound."""

    def recovered_at_open(self) -> int:
        """How many deliveries in flight the store gave back (due now, in doubt) when it opened: a store that one
        process owns gives back every delivery its previous process left in flight (it died or was killed before
        giving them back); a shared store none (`take_back` and `release_expired` give back a dead process's)."""
        return 0

    async def take_back(self, instance: str, gone: Callable[[str], bool]) -> int:
        """Give back, due now, the deliveries in flight under an earlier process of this `instance` (a lease
        owner starting with it) that `gone(owner)` says is no longer running; returns how many. Each is in doubt
        from then on, as `release_expired` leaves it: that process may have sent it. A store that one process owns
        gives back everything in flight when it opens (in doubt alike), so by default there is nothing to do."""
        return 0

    @abstractmethod
    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRow]: ...

    @abstractmethod
    async def get_delivery(self, delivery_id: str) -> DeliveryDetail:
        """Raises NotFound."""

    @abstractmethod
    async def get_event(self, event_id: str) -> Event:
        """Raises NotFound."""

    @abstractmethod
    async def replay(
        self, delivery_ids: list[str], bodies: dict[str, tuple[dict[str, Any], str]] | None = None,
        mapping: str | None = None,
    ) -> list[str]:
        """Make succeeded or dead deliveries pending again, due now, their schedule restarted; with
        `bodies` (id → (body, mapping version)) replace what they send, and with `mapping` too, the mapping the
        re-rendered ones (those in `bodies`) belong to. Returns the ids moved."""

    @abstractmethod
    async def purge(self, cutoffs: Cutoffs, limit: int, dry_run: bool = False,
                    after: PurgeMark | None = None) -> PurgeCounts:
        """Look at the next `limit` events and `limit` attempts older than their cutoffs (oldest first, from
        `after`, a previous call's position) and delete those that may go (events with their deliveries and
        attempts), and up to `limit` expired dedup keys; each kind in its own short transaction (SQLite) or
        one per call (PostgreSQL). Never touches pending or in-flight work. With `dry_run`, delete nothing and
        count everything that would go (no limit). On a shared store one process purges at a time: the others
        get `busy`."""

    @abstractmethod
    async def attachment_refs(self, received_before_ms: int) -> set[str]:
        """The sha256 of every attachment named by a stored event received before this time."""

    def coordination(self) -> Coordination | None:
        """The per-destination gates (rate limit, 429 pause, breaker) shared by every process on this store;
        None for a store one process serves: its dispatcher keeps them in memory."""
        return None

    async def subscribe(self, callback: Callable[[str], None]) -> None:  # noqa: B027 - optional hook
        """Call `callback(destination)` when work for `destination` may now go ("*": perhaps any): added by
        another process (beside SQLite's owner, the CLI; intake wakes the lanes itself); and,
        on every store, once `mark_succeeded` has given a conversation its ticket (its next message may go)."""

    def problem(self) -> StoreProblem | None:
        """What keeps the store from committing, as last seen; None while its commits succeed."""
        return None

    async def check(self) -> StoreProblem | None:
        """`problem()`, checked now where that is cheap (for `/readyz`): a store seen failing is tried again."""
        return self.problem()

    async def ping(self) -> None:  # noqa: B027 - a store this process owns answers while open
        """Ask the store something now, for a caller that must know it answers (the lease reaper, after a pass the
        store failed, when it had nothing else to ask); raises StoreUnavailable when it does not. A store this
        process owns (a file, memory) answers while it is open: nothing to ask. Unlike `check`, a store that answers
        while its commits are seen failing (a disk nearly full) is not said not to."""

    async def wait_lost(self) -> str:
        """Return (with what happened) once the store is gone for good and what it held has been saved:
        the process should stop and be started again. Never returns for a store that cannot be lost."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    @abstractmethod
    async def mapping_backlog(self, open_since_ms: dict[str, int]) -> dict[str, dict[str, int]]:
        """For each mapping named in `open_since_ms` that has any: its deliveries `pending`, `in_flight` and
        `dead`, and its `conversations` open (a message at or after the time given for it), each count left out
        at zero."""

    @abstractmethod
    async def mark_dead(self, destination: str, error: str, limit: int) -> int:
        """An operator's word that up to `limit` pending deliveries of `destination` are not to be sent: dead, with
        `error` as their last error, their schedule left as it was; how many were."""

    @abstractmethod
    async def destinations_of(self, delivery_ids: list[str]) -> dict[str, str]:
        """id → destination of each of `delivery_ids` the store has (the others left out): one look-up by
        primary key for them all."""

    @abstractmethod
    async def counts(self) -> dict[str, dict[str, int]]:
        """destination → status → number of deliveries."""

    @abstractmethod
    async def list_unmatched(self, limit: int = 50, before_id: str | None = None) -> list[Event]:
        """Events stored without any delivery (no mapping for their source, or every mapping's `when` false),
        newest first, paged with `before_id`. Their `meta.unmatched` says why (set at intake)."""

    @abstractmethod
    async def get_conversations(self, key: str, limit: int | None = None) -> list[ConversationDetail]:
        """Every conversation whose key (or scoped id `mapping|key`) is `key`, each with its deliveries in
        arrival order (the first `limit` of them when given: a chat may hold thousands); empty when none."""

    @abstractmethod
    async def conversation_slice(self, conversation: str, limit: int, *, after: Arrival | None = None,
                                 before: Arrival | None = None, last: bool = False) -> ConversationSlice:
        """Up to `limit` deliveries of the conversation whose id (`mapping|key`) is `conversation`, in arrival
        order: the first ones; with `after`, the first ones that came after that place; with `before`, the last
        ones that came before it; with `last`, its last ones, those that came latest, and how many come before them
        (`ahead`) (one of the three at most). One range read of the conversation's index, however long its
        history (never an offset counted from its first message, nor a count of its messages); `earlier` and
        `later` are each known from that read or from one probe of the index."""

    @abstractmethod
    async def reset_conversation(self, key: str) -> list[ConversationRow]:
        """An operator's word that the ticket of every conversation whose key (or scoped id) is `key` is gone at
        the vendor (deleted, merged): each loses its ticket, so its next message, or a dead one sent again, is a
        create. The conversations as they were before (empty when none is found)."""

    @abstractmethod
    async def save_mapping_set(self, files: dict[str, str], version: str) -> None:
        """Keep `files` (file name → text) as the last good mapping set, replacing the one kept before."""

    @abstractmethod
    async def load_mapping_set(self) -> StoredMappingSet | None:
        """The last good mapping set saved, or None when none was."""

    @abstractmethod
    async def oldest_pending(self) -> dict[str, int]:
        """destination → when its oldest delivery not yet settled (pending or in flight) was created (ms)."""

    @abstractmethod
    async def add_audit(self, entry: AuditEntry) -> None:
        """Keep `entry` in the audit log."""

    @abstractmethod
    async def list_audit(self, limit: int = 50, before_id: str | None = None) -> list[AuditEntry]:
        """The audit log, newest first: up to `limit` entries, those older than `before_id` when given."""
