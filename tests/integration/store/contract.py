"""The behaviour every Store backend must show; a backend's test module subclasses `StoreContract` and
provides a `store` fixture yielding an opened store."""

from __future__ import annotations

import asyncio
import time
from types import EllipsisType
from typing import Any, Literal

import msgspec
import pytest

from bridge.errors import LeaseLost, NotFound, StoreRefused, StoreUnavailable
from bridge.events import Event
from bridge.ids import id_floor, new_id
from bridge.store.base import (
    AttemptResult,
    AuditEntry,
    Claimed,
    Cutoffs,
    DeliveryFilter,
    DeliveryRow,
    NewDelivery,
    Nonce,
    Store,
)
from tests.conftest import eventually

WEEK = 7 * 86400.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def make_event(source: str = "website-contact", dedup_key: str | None = None, **payload: Any) -> Event:
    return Event.new(source=source, kind="form", channel="form", payload=payload or {"subject": "Router down"},
                     headers={"user-agent": "curl/8"}, meta={"remote": "127.0.0.1"}, dedup_key=dedup_key)


def make_delivery(
    destination: str = "kapture-support", mapping: str = "contact-to-kapture",
    body: dict[str, Any] | EllipsisType | None = ..., delivery_id: str | None = None, **kw: Any,
) -> NewDelivery:
    return NewDelivery(id=delivery_id or new_id("dlv"), mapping=mapping, mapping_version="v1", destination=destination,
                       action="create_ticket", body={"title": "Router down"} if body is ... else body, **kw)


def result(
    delivery_id: str, next_status: Literal["succeeded", "pending", "dead"], *, http_status: int | None = 200,
    classification: str = "success", error: str | None = None, ticket_id: str | None = None,
    next_attempt_at_ms: int | None = None,
) -> AttemptResult:
    return AttemptResult(
        delivery_id=delivery_id, started_at_ms=now_ms(), duration_ms=12.5, http_status=http_status,
        response_excerpt='{"status": "success"}', classification=classification, error=error, ticket_id=ticket_id,
        next_status=next_status, next_attempt_at_ms=next_attempt_at_ms,
    )


async def accept_one(store: Store, *deliveries: NewDelivery, event: Event | None = None) -> tuple[Event, list[str]]:
    ev = event or make_event()
    ds = list(deliveries) or [make_delivery()]
    res = await store.accept(ev, ds, WEEK)
    assert res.duplicate is False
    return ev, [d.id for d in ds]


async def ticketless_create(store: Store, destination: str = "kapture-support",
                            key: str = "k") -> tuple[NewDelivery, NewDelivery]:
    """A conversation (`m|key`, to `destination`) whose create succeeded with an answer naming no ticket
    (`ticket_missing`), and its next message, pending."""
    first, second = (make_delivery(destination=destination, conversation=f"m|{key}", conversation_key=key)
                     for _ in range(2))
    await accept_one(store, first)
    await accept_one(store, second)
    await store.claim(destination, 10, "w", 30)
    await store.record(msgspec.structs.replace(result(first.id, "succeeded", error="no ticket id"),
                                               role="create", ticket_missing=True), owner="w")
    return first, second


def ticket_given(delivery_id: str, ticket_id: str = "T-1", ticket_key: str | None = "K-1") -> AttemptResult:
    """The attempt an operator's `set_ticket` records, giving `delivery_id` that ticket."""
    return msgspec.structs.replace(
        result(delivery_id, "succeeded", http_status=None, classification="marked",
               error="ticket T-1 set by ops: found at the vendor", ticket_id=ticket_id), ticket_key=ticket_key)


def nonce(value: str = "tok-1", digest: str = "body-a", ttl_ms: int = 600_000, scope: str | None = None) -> Nonce:
    return Nonce(value=value, digest=digest, expires_at_ms=now_ms() + ttl_ms, scope=scope)


async def row(store: Store, delivery_id: str) -> DeliveryRow:
    return (await store.get_delivery(delivery_id)).delivery


async def settle(store: Store, delivery_id: str, status: Literal["succeeded", "dead"], destination: str) -> None:
    """Send the one pending delivery of `destination` and record it `status`."""
    claimed = await store.claim(destination, 10, "w", 30)
    assert [c.id for c in claimed.items] == [delivery_id]
    await store.record(result(delivery_id, status, classification="success" if status == "succeeded" else "permanent"))


async def settled_event(store: Store, status: Literal["succeeded", "dead"] = "succeeded") -> tuple[str, str]:
    """An event whose one delivery (to a destination of its own) is `status`: (event id, delivery id)."""
    d = make_delivery(destination=new_id("dest"))
    ev, _ = await accept_one(store, d)
    await settle(store, d.id, status, d.destination)
    return ev.id, d.id


async def kept(store: Store, event_id: str) -> bool:
    try:
        await store.get_event(event_id)
    except NotFound:
        return False
    return True


def after_now() -> int:
    """A cutoff past every row written so far: everything already stored is older than it."""
    return now_ms() + 1000


async def conversations_burst_and_purge(store: Store) -> None:
    """A burst of accepts stored together (chats, whose key only the provider writes, and email threads with other
    senders' messages split off to conversations of their own), the settled ones' events purged, then more accepts:
    what `conversations.stored` (migration 0025) must count through."""
    def message(n: int) -> NewDelivery:
        if n % 3:
            return make_delivery(conversation=f"m|chat:{n % 4}", conversation_key=f"chat:{n % 4}")
        return make_delivery(conversation="m|mail:root@x", conversation_key="mail:root@x", sender_checked=True,
                             sender="asha@x.io" if n % 2 else "mallory@evil.example")

    await asyncio.gather(*(accept_one(store, message(n)) for n in range(60)))  # stored together, where grouped
    await asyncio.gather(*(accept_one(store, message(n), make_delivery()) for n in range(60, 90)))
    for _ in range(3):
        for c in (await store.claim("kapture-support", 100, "w", 30)).items:
            await store.record(result(c.id, "succeeded", ticket_id="T-1"))
    assert (await store.purge(Cutoffs(events_ms=after_now()), 500)).events > 0
    await asyncio.gather(*(accept_one(store, message(n)) for n in range(90, 120)))


def id_made_behind(ms: int = 3000) -> str:
    """A delivery id as a process whose clock is `ms` behind this one's makes it now: it sorts before the ids made
    here in the last `ms` (its random part new, so that each is unique)."""
    return id_floor("dlv", now_ms() - ms)[:-16] + new_id("dlv")[-16:]


def tick() -> int:
    """The current millisecond, once it has begun after every row written so far (waits a millisecond at most)."""
    start = now_ms()
    while (current := now_ms()) <= start:
        pass
    return current


@pytest.mark.integration
def legacy_nul_rows(now: int) -> list[str]:
    """Rows as the store wrote them before 0026, when a NUL in a key was written `\\x00` without NUL_MARK: a
    conversation whose key held a NUL, with its ticket; a dedup key and a nonce that held one (SQL literals: a
    backslash is itself in both databases)."""
    later = now + 600_000
    return [
        "INSERT INTO conversations (id, key, mapping, destination, messages, stored, started_at, last_message_at, "
        f"ticket_id, ticket_at) VALUES ('contact-to-kapture|thread\\x00A', 'thread\\x00A', 'contact-to-kapture', "
        f"'kapture-support', 1, 0, {now}, {now}, 'T-old', {now})",
        f"INSERT INTO dedup_keys VALUES ('website-contact', 'evt\\x00-1', 'evt_before', {later})",
        f"INSERT INTO nonces VALUES ('website-contact', 'tok\\x00-1', 'body-before', {later})",
    ]


async def legacy_nul_rows_still_match(store: Store) -> None:
    """After legacy_nul_rows: a thread begun before the upgrade goes on in its conversation (a follow-up of its
    ticket, under the id it was kept by), a provider's redelivery of the event accepted before is a duplicate of it,
    and another request with the nonce taken before is a replay; an operator finds the conversation by its key as it
    came. Several accepts at once, so that a store which stores a group together meets these among others."""
    thread = make_delivery(conversation="contact-to-kapture|thread\x00A", conversation_key="thread\x00A")
    plain = [store.accept(make_event(dedup_key=f"evt-{i}"), [make_delivery()], WEEK) for i in range(3)]
    redelivered, replayed, joined, *others = await asyncio.gather(
        store.accept(make_event(dedup_key="evt\x00-1"), [make_delivery()], WEEK),
        store.accept(make_event(), [make_delivery()], WEEK, nonce("tok\x00-1", "body-other")),
        store.accept(make_event(), [thread], WEEK), *plain)
    assert (redelivered.duplicate, redelivered.event_id) == (True, "evt_before")
    assert replayed.replayed
    assert joined.duplicate is False and not any(o.duplicate for o in others)
    assert (await row(store, thread.id)).conversation == "contact-to-kapture|thread\\x00A"
    (found,) = await store.get_conversations("thread\x00A")
    assert (found.conversation.id, found.conversation.messages, found.conversation.ticket_id) == (
        "contact-to-kapture|thread\\x00A", 2, "T-old")
    listed = await store.list_deliveries(DeliveryFilter(conversation="contact-to-kapture|thread\x00A"))
    assert [r.id for r in listed] == [thread.id]
    claimed = (await store.claim("kapture-support", 10, "w", 30)).items
    (head,) = [c for c in claimed if c.id == thread.id]
    assert head.ticket is not None and head.ticket["id"] == "T-old"
    again = await store.accept(make_event(dedup_key="evt\x00-1"), [make_delivery()], WEEK)
    assert again.duplicate


class StoreContract:
    """Store semantics shared by every backend."""

    async def test_oldest_pending_names_each_destinations_oldest_unsettled_delivery(self, store: Store) -> None:
        """`oldest_pending` gives, per destination, the creation time of its oldest pending or in-flight delivery;
        settled ones do not count."""
        before = now_ms()
        _, old = await accept_one(store, make_delivery(destination="helpdesk"))
        await accept_one(store, make_delivery(destination="crm", status="dead", error="bad"))
        await accept_one(store, make_delivery(destination="helpdesk"))
        oldest = await store.oldest_pending()
        assert set(oldest) == {"helpdesk"}
        assert before <= oldest["helpdesk"] == (await row(store, old[0])).created_at_ms <= now_ms()

    # -- the audit log -----------------------------------------------------------------------------

    async def test_the_audit_log_lists_entries_newest_first_with_their_detail(self, store: Store) -> None:
        """Audit entries come back newest first, each with who, what, on what, when and its detail."""
        assert await store.list_audit() == []
        first = AuditEntry(id=new_id("aud"), at_ms=now_ms(), actor="ops", action="pause", target="helpdesk",
                           detail={"seconds": 600, "note": "Réseau"})
        second = AuditEntry(id=new_id("aud"), at_ms=now_ms(), actor="lead", action="replay", target="dlv_1",
                            detail={"ids": ["dlv_1"], "rerender": False})
        await store.add_audit(first)
        await store.add_audit(second)
        assert await store.list_audit() == [second, first]

    async def test_the_audit_log_pages_by_id(self, store: Store) -> None:
        """`limit` and `before_id` page through the audit log without gaps or repeats."""
        entries = [AuditEntry(id=new_id("aud"), at_ms=now_ms(), actor="ops", action="resume", target=f"d{i}")
                   for i in range(5)]
        for e in entries:
            await store.add_audit(e)
        page1 = await store.list_audit(limit=2)
        page2 = await store.list_audit(limit=2, before_id=page1[-1].id)
        page3 = await store.list_audit(limit=2, before_id=page2[-1].id)
        assert [e.target for e in page1 + page2 + page3] == ["d4", "d3", "d2", "d1", "d0"]

    # -- the last good mapping set ----------------------------------------------------------------

    async def test_no_mapping_set_is_kept_until_one_is_saved(self, store: Store) -> None:
        """A new store has no last good mapping set."""
        assert await store.load_mapping_set() is None

    async def test_the_saved_mapping_set_comes_back_exactly(self, store: Store) -> None:
        """A saved set comes back with every file's name and text, its version and when it was saved."""
        files = {"contact.yaml": "name: contact\nfields:\n  title: \"Réseau {{ payload.x }}\"\n", "empty.yml": ""}
        before = now_ms()
        await store.save_mapping_set(files, "abc123def456")
        stored = await store.load_mapping_set()
        assert stored is not None
        assert (stored.files, stored.version) == (files, "abc123def456")
        assert before <= stored.saved_at_ms <= now_ms()

    async def test_saving_a_mapping_set_replaces_the_one_kept(self, store: Store) -> None:
        """Only the latest saved set is kept: a file absent from it is gone."""
        await store.save_mapping_set({"a.yaml": "one", "b.yaml": "two"}, "v1")
        await store.save_mapping_set({"a.yaml": "three"}, "v2")
        stored = await store.load_mapping_set()
        assert stored is not None and (stored.files, stored.version) == ({"a.yaml": "three"}, "v2")

    # -- accept -----------------------------------------------------------------------------------

    async def test_accept_stores_the_event_and_its_deliveries(self, store: Store) -> None:
        """accept stores the event and every delivery, pending and due now, and reports how many."""
        event = make_event(dedup_key="k-1")
        first, second = make_delivery(), make_delivery(destination="lsq", mapping="contact-to-lsq")
        before = now_ms()
        res = await store.accept(event, [first, second], WEEK)
        assert (res.event_id, res.duplicate, res.deliveries) == (event.id, False, 2)
        assert await store.get_event(event.id) == event
        rows = {r.id: r for r in await store.list_deliveries(DeliveryFilter())}
        assert set(rows) == {first.id, second.id}
        lsq = rows[second.id]
        assert (lsq.event_id, lsq.source, lsq.mapping, lsq.mapping_version, lsq.destination, lsq.action) == (
            event.id, "website-contact", "contact-to-lsq", "v1", "lsq", "create_ticket")
        assert (lsq.status, lsq.attempts, lsq.tries, lsq.last_error, lsq.ticket_id) == ("pending", 0, 0, None, None)
        assert before <= lsq.next_attempt_at_ms <= now_ms()
        assert before <= lsq.created_at_ms <= lsq.updated_at_ms <= now_ms()

    async def test_accept_keeps_body_and_options(self, store: Store) -> None:
        """A delivery's body and options come back exactly as given."""
        body = {"title": "Réseau", "n": 1, "nested": {"list": [1, None, True]}}
        delivery = make_delivery(body=body, options={"queue": "billing"})
        await accept_one(store, delivery)
        detail = await store.get_delivery(delivery.id)
        assert detail.body == body
        assert detail.options == {"queue": "billing"}

    async def test_accept_without_deliveries_stores_the_event(self, store: Store) -> None:
        """An event no mapping takes is still stored, with zero deliveries."""
        event = make_event()
        res = await store.accept(event, [], WEEK)
        assert (res.event_id, res.duplicate, res.deliveries) == (event.id, False, 0)
        assert await store.get_event(event.id) == event

    async def test_accept_stores_dead_deliveries_with_their_error(self, store: Store) -> None:
        """A delivery that could not render is stored dead, bodiless, with its error, and never claimed."""
        dead = make_delivery(body=None, status="dead", error="email_id: required (payload.email is missing)")
        await accept_one(store, dead)
        detail = await store.get_delivery(dead.id)
        assert detail.delivery.status == "dead"
        assert detail.delivery.last_error == "email_id: required (payload.email is missing)"
        assert detail.body is None
        assert (await store.claim("kapture-support", 10, "w1", 30)).items == []

    async def test_accept_is_atomic(self, store: Store) -> None:
        """When one delivery cannot be stored, neither the event nor any delivery nor its dedup key is kept."""
        good = make_delivery()
        clash = make_delivery(delivery_id=good.id)
        event = make_event(dedup_key="atomic")
        with pytest.raises(StoreUnavailable):
            await store.accept(event, [good, clash], WEEK)
        with pytest.raises(NotFound):
            await store.get_event(event.id)
        assert await store.list_deliveries(DeliveryFilter()) == []
        again = make_event(dedup_key="atomic")
        assert (await store.accept(again, [make_delivery()], WEEK)).duplicate is False

    # -- dedup ------------------------------------------------------------------------------------

    async def test_duplicate_within_window_returns_the_first_event(self, store: Store) -> None:
        """The same dedup key within the window is a duplicate naming the first event; nothing new is stored."""
        first = make_event(dedup_key="msg-1")
        await accept_one(store, make_delivery(), event=first)
        second = make_event(dedup_key="msg-1", subject="again")
        res = await store.accept(second, [make_delivery(), make_delivery()], WEEK)
        assert (res.event_id, res.duplicate, res.deliveries) == (first.id, True, 0)
        with pytest.raises(NotFound):
            await store.get_event(second.id)
        assert len(await store.list_deliveries(DeliveryFilter())) == 1

    async def test_dedup_keys_are_per_source(self, store: Store) -> None:
        """The same key from another source is not a duplicate."""
        await accept_one(store, event=make_event(source="a", dedup_key="k"))
        res = await store.accept(make_event(source="b", dedup_key="k"), [make_delivery()], WEEK)
        assert res.duplicate is False

    async def test_events_without_dedup_key_are_never_duplicates(self, store: Store) -> None:
        """Without a dedup key every event is accepted."""
        for _ in range(3):
            await accept_one(store)
        assert len(await store.list_deliveries(DeliveryFilter())) == 3

    async def test_dedup_window_expires(self, store: Store) -> None:
        """After the window, the same key is accepted again, and later duplicates name the newer event."""
        first = make_event(dedup_key="k")
        window_s = 1.0
        started_ms = now_ms()
        assert (await store.accept(first, [make_delivery()], window_s)).duplicate is False
        again = await store.accept(make_event(dedup_key="k"), [], window_s)
        if now_ms() - started_ms < window_s * 1000:  # only a machine stalled for the whole window cannot tell
            assert (again.event_id, again.duplicate) == (first.id, True)
        expires_ms = now_ms() + int(window_s * 1000)  # no earlier than the store's own reckoning
        await eventually(lambda: now_ms() > expires_ms)
        second = make_event(dedup_key="k")
        res = await store.accept(second, [make_delivery()], WEEK)
        assert (res.event_id, res.duplicate, res.deliveries) == (second.id, False, 1)
        third = await store.accept(make_event(dedup_key="k"), [make_delivery()], WEEK)
        assert (third.event_id, third.duplicate) == (second.id, True)
        assert len(await store.list_deliveries(DeliveryFilter())) == 2

    # -- nonces -----------------------------------------------------------------------------------

    async def test_nonce_of_another_request_is_a_replay_and_stores_nothing(self, store: Store) -> None:
        """A nonce recorded for one request refuses another request (another digest): nothing is written, not
        even the replay's dedup key, and the result says `replayed`."""
        await accept_one(store, event=make_event(dedup_key="msg-1"))
        res = await store.accept(make_event(dedup_key="msg-1"), [make_delivery()], WEEK, nonce("tok-1", "body-a"))
        assert res.duplicate is True  # without its nonce the first was never recorded: only dedup applies
        first = make_event(dedup_key="msg-2")
        assert (await store.accept(first, [make_delivery()], WEEK, nonce("tok-2", "body-a"))).replayed is False
        replay = make_event(dedup_key="msg-3")
        res = await store.accept(replay, [make_delivery()], WEEK, nonce("tok-2", "body-b"))
        assert (res.replayed, res.duplicate, res.deliveries, res.event_id) == (True, False, 0, "")
        with pytest.raises(NotFound):
            await store.get_event(replay.id)
        assert len(await store.list_deliveries(DeliveryFilter())) == 2
        later = await store.accept(make_event(dedup_key="msg-3"), [make_delivery()], WEEK, nonce("tok-3"))
        assert (later.duplicate, later.replayed) == (False, False)

    async def test_nonce_of_the_same_request_may_be_used_again(self, store: Store) -> None:
        """The same nonce with the same digest (each event of one request, or a retry of a request that was
        partly stored) is accepted, and the table still holds it for other requests."""
        for key in ("part-1", "part-2"):
            res = await store.accept(make_event(dedup_key=key), [make_delivery()], WEEK, nonce("tok", "body-a"))
            assert (res.duplicate, res.replayed) == (False, False)
        again = await store.accept(make_event(dedup_key="part-1"), [], WEEK, nonce("tok", "body-a"))
        assert (again.duplicate, again.replayed) == (True, False)
        other = await store.accept(make_event(), [], WEEK, nonce("tok", "body-b"))
        assert other.replayed is True

    async def test_a_duplicate_is_a_duplicate_whatever_its_nonce(self, store: Store) -> None:
        """A provider's retry whose bytes differ (a new multipart boundary) is still the usual duplicate."""
        first = make_event(dedup_key="msg-1")
        await store.accept(first, [make_delivery()], WEEK, nonce("tok", "body-a"))
        res = await store.accept(make_event(dedup_key="msg-1"), [make_delivery()], WEEK, nonce("tok", "body-b"))
        assert (res.event_id, res.duplicate, res.replayed) == (first.id, True, False)

    async def test_a_failed_accept_leaves_its_nonce_unused(self, store: Store) -> None:
        """The nonce is recorded in the event's transaction: when the accept fails, the retry is accepted."""
        good = make_delivery()
        with pytest.raises(StoreUnavailable):
            await store.accept(make_event(dedup_key="m"), [good, make_delivery(delivery_id=good.id)], WEEK,
                               nonce("tok", "body-a"))
        retry = await store.accept(make_event(dedup_key="m"), [make_delivery()], WEEK, nonce("tok", "body-b"))
        assert (retry.duplicate, retry.replayed, retry.deliveries) == (False, False, 1)

    async def test_nonces_are_per_source(self, store: Store) -> None:
        """The same nonce from another source is not a replay."""
        await store.accept(make_event(source="a"), [], WEEK, nonce("tok", "body-a"))
        res = await store.accept(make_event(source="b"), [], WEEK, nonce("tok", "body-b"))
        assert res.replayed is False

    async def test_nonces_of_one_scope_are_shared_by_its_sources(self, store: Store) -> None:
        """A nonce with a scope (a signing key's) is one nonce for every source that names it: another request
        from another source is a replay, the same request is not; a nonce of another scope, or of none, is not."""
        key = "key:" + "ab" * 16
        await store.accept(make_event(source="a"), [], WEEK, nonce("tok", "body-a", scope=key))
        res = await store.accept(make_event(source="b"), [make_delivery()], WEEK, nonce("tok", "body-b", scope=key))
        assert res.replayed is True
        assert await store.list_deliveries(DeliveryFilter()) == []
        same = await store.accept(make_event(source="b"), [], WEEK, nonce("tok", "body-a", scope=key))
        assert same.replayed is False
        other = "key:" + "cd" * 16
        other_key = await store.accept(make_event(source="b"), [], WEEK, nonce("tok", "body-b", scope=other))
        unscoped = await store.accept(make_event(source="b"), [], WEEK, nonce("tok", "body-b"))
        assert (other_key.replayed, unscoped.replayed) == (False, False)

    async def test_a_scoped_nonce_is_refused_while_its_source_holds_it_unscoped(self, store: Store) -> None:
        """A nonce recorded for its source alone (as a version before scopes recorded every nonce) still refuses
        another request on that source once its value comes scoped, until it expires: a token captured before
        an upgrade is not replayed after it with a new body. Nothing is written; other sources are not held by
        it, and the same request (its digest) is not refused."""
        key = "key:" + "ab" * 16
        await store.accept(make_event(source="a"), [], WEEK, nonce("tok", "body-a"))  # the earlier version's row
        res = await store.accept(make_event(source="a"), [make_delivery()], WEEK, nonce("tok", "body-b", scope=key))
        assert res.replayed is True
        assert await store.list_deliveries(DeliveryFilter()) == []
        same = await store.accept(make_event(source="a"), [], WEEK, nonce("tok", "body-a", scope=key))
        assert same.replayed is False
        await store.accept(make_event(source="a"), [], WEEK, nonce("tok2", "body-a"))
        elsewhere = await store.accept(make_event(source="b"), [], WEEK, nonce("tok2", "body-b", scope=key))
        assert elsewhere.replayed is False
        await store.accept(make_event(source="c"), [], WEEK, nonce("tok3", "body-a", ttl_ms=-1))
        expired = await store.accept(make_event(source="c"), [], WEEK, nonce("tok3", "body-b", scope=key))
        assert expired.replayed is False

    async def test_an_expired_nonce_may_be_used_again(self, store: Store) -> None:
        """Past its expiry a nonce no longer refuses another request, which then holds it."""
        await store.accept(make_event(), [], WEEK, nonce("tok", "body-a", ttl_ms=-1))
        res = await store.accept(make_event(), [], WEEK, nonce("tok", "body-b"))
        assert res.replayed is False
        assert (await store.accept(make_event(), [], WEEK, nonce("tok", "body-a"))).replayed is True

    # -- claim ------------------------------------------------------------------------------------

    async def test_claim_leases_due_deliveries_of_its_destination_only(self, store: Store) -> None:
        """claim takes only its destination's deliveries and returns what a sender needs."""
        event, (kap,) = await accept_one(store, make_delivery(options={"queue": "q"}))
        await accept_one(store, make_delivery(destination="lsq"))
        batch = await store.claim("kapture-support", 10, "worker-1", 30)
        assert [c.id for c in batch.items] == [kap]
        claimed = batch.items[0]
        assert (claimed.event_id, claimed.mapping, claimed.destination, claimed.action) == (
            event.id, "contact-to-kapture", "kapture-support", "create_ticket")
        assert (claimed.body, claimed.options, claimed.tries, claimed.attempts) == (
            {"title": "Router down"}, {"queue": "q"}, 0, 0)
        assert batch.next_due_ms is None
        assert (await row(store, kap)).status == "in_flight"
        assert (await row(store, (await store.list_deliveries(DeliveryFilter(destination="lsq")))[0].id)).status \
            == "pending"

    async def test_claimed_deliveries_are_not_claimed_again(self, store: Store) -> None:
        """A leased delivery is not handed to another claim."""
        await accept_one(store, make_delivery(), make_delivery())
        first = await store.claim("kapture-support", 10, "w1", 30)
        assert len(first.items) == 2
        second = await store.claim("kapture-support", 10, "w2", 30)
        assert second.items == []
        assert second.next_due_ms is None

    async def test_claim_respects_the_limit(self, store: Store) -> None:
        """claim takes at most `limit` deliveries, and later claims take the rest."""
        await accept_one(store, *[make_delivery() for _ in range(5)])
        sizes = [len((await store.claim("kapture-support", 2, "w", 30)).items) for _ in range(4)]
        assert sizes == [2, 2, 1, 0]

    async def test_claim_takes_deliveries_in_due_order(self, store: Store) -> None:
        """Deliveries are claimed earliest-due first."""
        _, ids = await accept_one(store, make_delivery(), make_delivery(), make_delivery())
        await store.claim("kapture-support", 10, "w", 30)
        now = now_ms()
        due = {ids[0]: now - 2000, ids[1]: now - 1000, ids[2]: now - 3000}
        for i, at in due.items():
            await store.record(result(i, "pending", http_status=503, classification="retry", next_attempt_at_ms=at))
        batch = await store.claim("kapture-support", 2, "w", 30)
        assert [c.id for c in batch.items] == [ids[2], ids[0]]
        assert [c.id for c in (await store.claim("kapture-support", 2, "w", 30)).items] == [ids[1]]

    async def test_claim_says_when_the_next_delivery_is_due(self, store: Store) -> None:
        """With nothing due, claim returns no items and the earliest future due time of its destination."""
        _, (a, b) = await accept_one(store, make_delivery(), make_delivery())
        await accept_one(store, make_delivery(destination="lsq"))
        await store.claim("kapture-support", 10, "w", 30)
        later = now_ms() + 60_000
        await store.record(result(a, "pending", classification="retry", next_attempt_at_ms=later + 5000))
        await store.record(result(b, "pending", classification="retry", next_attempt_at_ms=later))
        batch = await store.claim("kapture-support", 10, "w", 30)
        assert batch.items == []
        assert batch.next_due_ms == later

    async def test_claim_with_nothing_pending(self, store: Store) -> None:
        """With no pending deliveries at all, claim returns nothing and no due time."""
        batch = await store.claim("kapture-support", 10, "w", 30)
        assert (batch.items, batch.next_due_ms) == ([], None)

    # -- record -----------------------------------------------------------------------------------

    async def test_record_success(self, store: Store) -> None:
        """A successful attempt marks the delivery succeeded, stores the ticket id and the attempt."""
        _, (d,) = await accept_one(store)
        await store.claim("kapture-support", 1, "w", 30)
        attempt = result(d, "succeeded", ticket_id="713516551148")
        await store.record(attempt)
        detail = await store.get_delivery(d)
        assert (detail.delivery.status, detail.delivery.ticket_id, detail.delivery.attempts, detail.delivery.tries) \
            == ("succeeded", "713516551148", 1, 1)
        assert detail.delivery.last_error is None
        assert len(detail.attempts) == 1
        a = detail.attempts[0]
        assert (a.n, a.started_at_ms, a.duration_ms, a.http_status, a.response_excerpt, a.classification, a.error) \
            == (1, attempt.started_at_ms, 12.5, 200, '{"status": "success"}', "success", None)
        assert (await store.claim("kapture-support", 10, "w", 30)).items == []

    async def test_record_keeps_what_the_attempt_sent_and_got(self, store: Store) -> None:
        """An attempt's exchange (the request as sent, the response's headers) comes back as recorded; an
        attempt without one has none."""
        _, (d,) = await accept_one(store)
        await store.claim("kapture-support", 1, "w", 30)
        sent = {"request": {"method": "POST", "url": "https://x.test/t", "headers": {"Authorization": "[redacted]"},
                            "body": '{"title": "Réseau"}'}, "response_headers": {"Content-Type": "application/json"}}
        await store.record(msgspec.structs.replace(result(d, "pending", classification="retry",
                                                          next_attempt_at_ms=now_ms()), exchange=sent))
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(result(d, "succeeded"))
        assert [a.exchange for a in (await store.get_delivery(d)).attempts] == [sent, None]

    async def test_record_keeps_the_vendors_ticket_key(self, store: Store) -> None:
        """A vendor's second ticket reference (LeadSquared's Key) is kept beside the ticket id."""
        _, (d,) = await accept_one(store)
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(msgspec.structs.replace(result(d, "succeeded", ticket_id="27e8259d"), ticket_key="#034"))
        row = (await store.get_delivery(d)).delivery
        assert (row.ticket_id, row.ticket_key, row.ticket_uuid) == ("27e8259d", "#034", None)
        assert [(r.id, r.ticket_key) for r in await store.list_deliveries(DeliveryFilter())] == [(d, "#034")]

    async def test_record_keeps_the_vendors_ticket_uuid(self, store: Store) -> None:
        """A vendor's third ticket reference (LeadSquared's TicketId UUID) is kept beside the id and key, listed
        too; an attempt that gives none (a retry) leaves it."""
        _, (d,) = await accept_one(store)
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(msgspec.structs.replace(result(d, "succeeded", ticket_id="34"), ticket_key="#034",
                                                   ticket_uuid="27e8259d-0681"))
        row = (await store.get_delivery(d)).delivery
        assert (row.ticket_id, row.ticket_key, row.ticket_uuid) == ("34", "#034", "27e8259d-0681")
        assert [r.ticket_uuid for r in await store.list_deliveries(DeliveryFilter())] == ["27e8259d-0681"]

    async def test_record_retry_later(self, store: Store) -> None:
        """A retryable attempt makes the delivery pending again, due at the given time, with its error."""
        _, (d,) = await accept_one(store)
        await store.claim("kapture-support", 1, "w", 30)
        later = now_ms() + 60_000
        await store.record(result(d, "pending", http_status=503, classification="retry", error="HTTP 503",
                                  next_attempt_at_ms=later))
        r = await row(store, d)
        assert (r.status, r.next_attempt_at_ms, r.last_error, r.attempts, r.tries) == (
            "pending", later, "HTTP 503", 1, 1)
        assert (await store.claim("kapture-support", 10, "w", 30)).items == []

    async def test_record_dead(self, store: Store) -> None:
        """A permanent failure marks the delivery dead with its error, and it is not claimed again."""
        _, (d,) = await accept_one(store)
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(result(d, "dead", http_status=200, classification="permanent",
                                  error="kapture: HTTP 200: title is missing"))
        r = await row(store, d)
        assert (r.status, r.last_error, r.attempts) == ("dead", "kapture: HTTP 200: title is missing", 1)
        assert (await store.claim("kapture-support", 10, "w", 30)).items == []

    async def test_attempts_are_numbered_and_counted(self, store: Store) -> None:
        """Each attempt is kept, numbered 1..n, and the delivery's tries and attempts count them."""
        _, (d,) = await accept_one(store)
        for n in range(3):
            batch = await store.claim("kapture-support", 1, "w", 30)
            assert [(c.id, c.tries, c.attempts) for c in batch.items] == [(d, n, n)]
            await store.record(result(d, "pending", http_status=500 + n, classification="retry",
                                      error=f"HTTP {500 + n}", next_attempt_at_ms=now_ms() - 1))
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(result(d, "dead", http_status=None, classification="retry", error="timed out"))
        detail = await store.get_delivery(d)
        assert [(a.n, a.http_status, a.error) for a in detail.attempts] == [
            (1, 500, "HTTP 500"), (2, 501, "HTTP 501"), (3, 502, "HTTP 502"), (4, None, "timed out")]
        assert (detail.delivery.attempts, detail.delivery.tries, detail.delivery.status) == (4, 4, "dead")

    async def test_an_attempt_that_uses_no_try_is_counted_but_not_as_a_try(self, store: Store) -> None:
        """An attempt recorded with `uses_try` false (our store cut it short) is kept and counted in `attempts`,
        and leaves `tries`, which the retry schedule counts, as it was."""
        _, (d,) = await accept_one(store)
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(msgspec.structs.replace(
            result(d, "pending", http_status=401, classification="retry", error="HTTP 401",
                   next_attempt_at_ms=now_ms() - 1), uses_try=False), owner="w")
        [c] = (await store.claim("kapture-support", 1, "w", 30)).items
        assert (c.tries, c.attempts) == (0, 1)
        await store.record(result(d, "dead", http_status=500, classification="retry", error="HTTP 500"), owner="w")
        detail = await store.get_delivery(d)
        assert [(a.n, a.http_status) for a in detail.attempts] == [(1, 401), (2, 500)]
        assert (detail.delivery.attempts, detail.delivery.tries) == (2, 1)

    async def test_record_for_an_unknown_delivery_is_not_found(self, store: Store) -> None:
        """Recording an attempt of a delivery that does not exist raises NotFound."""
        with pytest.raises(NotFound):
            await store.record(result("dlv_missing", "succeeded"))

    # -- leases -----------------------------------------------------------------------------------

    async def test_release_gives_deliveries_back_due_now(self, store: Store) -> None:
        """release makes leased deliveries pending and claimable at once, without counting an attempt."""
        _, (a, b) = await accept_one(store, make_delivery(), make_delivery())
        await store.claim("kapture-support", 10, "w", 30)
        await store.release([a])
        ra = await row(store, a)
        assert (ra.status, ra.attempts, ra.tries) == ("pending", 0, 0)
        assert ra.next_attempt_at_ms <= now_ms()
        assert (await row(store, b)).status == "in_flight"
        assert [c.id for c in (await store.claim("kapture-support", 10, "w2", 30)).items] == [a]

    async def test_release_of_nothing_or_of_settled_deliveries_changes_nothing(self, store: Store) -> None:
        """release ignores an empty list, and deliveries that are not in flight."""
        _, (d,) = await accept_one(store)
        await store.release([])
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(result(d, "succeeded", ticket_id="1"))
        await store.release([d, "dlv_unknown"])
        assert (await row(store, d)).status == "succeeded"

    async def test_release_expired_returns_leases_that_ran_out(self, store: Store) -> None:
        """release_expired gives back every delivery whose lease has expired, and says how many."""
        _, (a, b) = await accept_one(store, make_delivery(), make_delivery())
        await accept_one(store, make_delivery(destination="lsq"))
        await store.claim("kapture-support", 10, "crashed-worker", 0)
        leased_until_ms = now_ms()
        await store.claim("lsq", 10, "live-worker", 60)
        await eventually(lambda: now_ms() > leased_until_ms + 1)  # the zero-length lease has run out
        assert await store.release_expired() == 2
        assert {(await row(store, a)).status, (await row(store, b)).status} == {"pending"}
        assert (await store.list_deliveries(DeliveryFilter(destination="lsq")))[0].status == "in_flight"
        assert {c.id for c in (await store.claim("kapture-support", 10, "w", 30)).items} == {a, b}
        assert await store.release_expired() == 0

    async def test_release_expired_leaves_live_leases(self, store: Store) -> None:
        """Leases that have not run out are kept."""
        await accept_one(store)
        await store.claim("kapture-support", 10, "w", 60)
        assert await store.release_expired() == 0
        assert (await store.list_deliveries(DeliveryFilter()))[0].status == "in_flight"

    async def test_extend_leases_keeps_the_owners_deliveries_from_the_reaper(self, store: Store) -> None:
        """extend_leases pushes out the leases the owner holds (lapsed or not), so release_expired leaves them."""
        _, (a, b, c) = await accept_one(store, make_delivery(), make_delivery(), make_delivery())
        await store.claim("kapture-support", 2, "me", -1)  # a and b: their leases already ran out
        await store.claim("kapture-support", 1, "other", -1)
        assert sorted(await store.extend_leases([a, b, c, "dlv_unknown"], "me", 60)) == sorted([a, b])
        assert await store.release_expired() == 1
        assert [(await row(store, i)).status for i in (a, b, c)] == ["in_flight", "in_flight", "pending"]

    async def test_extend_leases_leaves_settled_deliveries_and_takes_an_empty_list(self, store: Store) -> None:
        """A recorded delivery is not leased again, and an empty list changes nothing."""
        _, (d,) = await accept_one(store)
        await store.claim("kapture-support", 1, "me", 60)
        await store.record(result(d, "succeeded", ticket_id="1"))
        assert await store.extend_leases([], "me", 60) == []
        assert await store.extend_leases([d], "me", 60) == []
        assert (await row(store, d)).status == "succeeded"

    async def test_record_with_the_owners_lease_moves_the_delivery_on(self, store: Store) -> None:
        """record(owner=…) by the holder of the lease records the attempt as record() does."""
        _, (d,) = await accept_one(store)
        await store.claim("kapture-support", 1, "me", 60)
        await store.record(result(d, "succeeded", ticket_id="T-1"), owner="me")
        r = await row(store, d)
        assert (r.status, r.attempts, r.ticket_id) == ("succeeded", 1, "T-1")

    async def test_record_with_a_lost_lease_is_refused_and_writes_nothing(self, store: Store) -> None:
        """A sender whose lease ran out and was taken by another cannot record over the new holder's claim."""
        _, (d,) = await accept_one(store)
        await store.claim("kapture-support", 1, "slow", -1)  # its lease already ran out
        assert await store.release_expired() == 1
        await store.claim("kapture-support", 1, "fresh", 60)
        with pytest.raises(LeaseLost, match="slow"):
            await store.record(result(d, "dead", classification="permanent", error="late"), owner="slow")
        r = await row(store, d)
        assert (r.status, r.attempts, r.last_error) == ("in_flight", 0, None)
        assert (await store.get_delivery(d)).attempts == []
        await store.record(result(d, "succeeded", ticket_id="T-2"), owner="fresh")
        assert (await row(store, d)).status == "succeeded"

    async def test_record_after_the_lease_was_given_back_is_refused(self, store: Store) -> None:
        """A result whose delivery was given back (reaped, now pending) is refused, leaving it pending."""
        _, (d,) = await accept_one(store)
        await store.claim("kapture-support", 1, "slow", -1)
        assert await store.release_expired() == 1
        with pytest.raises(LeaseLost):
            await store.record(result(d, "succeeded", ticket_id="T-1"), owner="slow")
        assert (await row(store, d)).status == "pending"

    async def test_record_with_an_owner_for_an_unknown_delivery_is_not_found(self, store: Store) -> None:
        """An owner-checked record of a delivery that does not exist is NotFound, not LeaseLost."""
        with pytest.raises(NotFound):
            await store.record(result("dlv_unknown", "succeeded"), owner="me")

    async def test_release_with_an_owner_gives_back_only_its_own_leases(self, store: Store) -> None:
        """release(owner=…) leaves deliveries another sender holds."""
        _, (a, b) = await accept_one(store, make_delivery(), make_delivery())
        await store.claim("kapture-support", 1, "me", 60)
        await store.claim("kapture-support", 1, "other", 60)
        mine = a if (await store.get_delivery(a)).delivery.status == "in_flight" else b
        await store.release([a, b], owner="me")
        statuses = {i: (await row(store, i)).status for i in (a, b)}
        assert statuses == {a: "pending" if mine == a else "in_flight", b: "pending" if mine == b else "in_flight"}

    async def test_each_claim_gives_its_deliveries_a_token_no_other_claim_is_given(self, store: Store) -> None:
        """A claim's deliveries share its token; every other claim, of the same delivery given back and claimed
        again by the same owner too, has another."""
        await accept_one(store, make_delivery(), make_delivery(), make_delivery())
        first = (await store.claim("kapture-support", 2, "me", 60)).items
        second = (await store.claim("kapture-support", 2, "me", 60)).items
        assert len(first) == 2 and len(second) == 1
        assert len({c.token for c in first}) == 1
        await store.release([first[0].id], owner="me", tokens=[first[0].token])
        [again] = (await store.claim("kapture-support", 2, "me", 60)).items
        assert again.id == first[0].id
        assert len({first[0].token, second[0].token, again.token}) == 3

    async def test_a_release_of_an_earlier_claim_leaves_the_claim_that_followed(self, store: Store) -> None:
        """A release naming an earlier claim's token (asked again after its answer was lost, or late) does not give
        back the claim the same owner made of the delivery since, whose request may be out; the new claim's does."""
        _, (d,) = await accept_one(store)
        [old] = (await store.claim("kapture-support", 1, "me", 60)).items
        await store.release([d], owner="me", tokens=[old.token])
        [new] = (await store.claim("kapture-support", 1, "me", 60)).items
        await store.release([d], owner="me", tokens=[old.token])
        assert (await row(store, d)).status == "in_flight"
        await store.release([d], owner="me", tokens=[new.token])
        assert (await row(store, d)).status == "pending"

    async def test_a_release_by_its_claim_after_its_lease_ran_out_gives_it_back_not_in_doubt(
            self, store: Store) -> None:
        """A release naming its claim (owner and token) takes back a delivery whose lease ran out but that no reaper
        took: pending, not in doubt, no unknown counted (its holder gives back what it never sent, however late the
        store answers). Once reaped, the same release changes nothing: the delivery stays as the reaper left it (in
        doubt), and a claim made since, another owner's, keeps it."""
        await accept_one(store, make_delivery(), make_delivery())
        first, second = (await store.claim("kapture-support", 2, "me", -1)).items  # their leases already ran out
        await store.release([first.id], owner="me", tokens=[first.token])
        r = await row(store, first.id)
        assert (r.status, r.unknowns, r.in_doubt_since_ms) == ("pending", 0, None)
        assert await store.release_expired() == 1
        await store.release([second.id], owner="me", tokens=[second.token])
        r = await row(store, second.id)
        assert (r.status, r.unknowns) == ("pending", 1) and r.in_doubt_since_ms is not None
        [again] = (await store.claim("kapture-support", 1, "other", 60)).items
        assert again.id in (first.id, second.id)
        await store.release([second.id, first.id], owner="me", tokens=[second.token, first.token])
        assert (await row(store, again.id)).status == "in_flight"

    async def test_a_record_of_an_earlier_claim_is_refused_on_the_claim_that_followed(self, store: Store) -> None:
        """A result of a claim whose lease was reaped is not written over the claim the same owner made since:
        LeaseLost, nothing written; the new claim's result is recorded."""
        _, (d,) = await accept_one(store)
        [old] = (await store.claim("kapture-support", 1, "me", -1)).items  # its lease already ran out
        assert await store.release_expired() == 1
        [new] = (await store.claim("kapture-support", 1, "me", 60)).items
        with pytest.raises(LeaseLost, match=f"claim {old.token}"):
            await store.record(result(d, "dead", classification="permanent", error="late"), owner="me",
                               token=old.token)
        r = await row(store, d)
        assert (r.status, r.attempts, r.last_error) == ("in_flight", 0, None)
        await store.record(result(d, "succeeded", ticket_id="T-2"), owner="me", token=new.token)
        assert (await row(store, d)).status == "succeeded"
        assert [a.n for a in (await store.get_delivery(d)).attempts] == [1]

    async def test_extend_leases_by_token_extends_only_the_claim_named(self, store: Store) -> None:
        """An extension naming an earlier claim's token leaves the lease of the claim that followed it (and does
        not return it); the new claim's token extends it. Tokens must be one per id."""
        _, (d,) = await accept_one(store)
        [old] = (await store.claim("kapture-support", 1, "me", 60)).items
        await store.release([d], owner="me", tokens=[old.token])
        [new] = (await store.claim("kapture-support", 1, "me", -1)).items  # its lease already ran out
        assert await store.extend_leases([d], "me", 60, [old.token]) == []
        assert await store.extend_leases([d, "dlv_unknown"], "me", 60, [new.token, new.token]) == [d]
        assert await store.release_expired() == 0
        with pytest.raises(ValueError, match="one per delivery"):
            await store.extend_leases([d], "me", 60, [])
        with pytest.raises(ValueError, match="one per delivery"):
            await store.release([d], owner="me", tokens=[new.token, old.token])
        assert (await row(store, d)).status == "in_flight"

    async def test_a_renewed_lease_outlives_its_first_term(self, store: Store) -> None:
        """A lease renewed before it runs out is not reaped when its first term ends."""
        _, (d,) = await accept_one(store)
        await store.claim("kapture-support", 1, "me", 0.05)
        assert await store.extend_leases([d], "me", 60) == [d]
        ends = now_ms() + 60
        await eventually(lambda: now_ms() > ends)  # the first term has ended
        assert await store.release_expired() == 0
        assert (await row(store, d)).status == "in_flight"

    # -- inspection -------------------------------------------------------------------------------

    async def test_list_filters_by_status_destination_source_and_mapping(self, store: Store) -> None:
        """list_deliveries narrows by status, destination, source and mapping, together."""
        _, (k1, k2) = await accept_one(store, make_delivery(), make_delivery())
        _, (l1,) = await accept_one(store, make_delivery(destination="lsq", mapping="partner-to-lsq"),
                                    event=make_event(source="partner-api"))
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(result(k1, "dead", classification="permanent", error="bad"))

        async def ids(**kw: Any) -> set[str]:
            return {r.id for r in await store.list_deliveries(DeliveryFilter(**kw))}

        assert await ids() == {k1, k2, l1}
        assert await ids(status="dead") == {k1}
        assert await ids(status="pending") == {k2, l1}
        assert await ids(destination="lsq") == {l1}
        assert await ids(source="partner-api") == {l1}
        assert await ids(mapping="contact-to-kapture") == {k1, k2}
        assert await ids(status="pending", destination="kapture-support") == {k2}
        assert await ids(status="succeeded") == set()

    async def test_list_refuses_an_unknown_status(self, store: Store) -> None:
        """A status outside the four is refused by name (it is written into the SQL), never run as a query."""
        await accept_one(store)
        with pytest.raises(ValueError, match=r"unknown delivery status \"dead' OR '1'='1\"; known: pending"):
            await store.list_deliveries(DeliveryFilter(status="dead' OR '1'='1"))  # type: ignore[arg-type]

    async def test_list_pages_newest_first_with_before_id(self, store: Store) -> None:
        """list_deliveries returns newest first, `limit` at a time, continuing below `before_id`."""
        ids = []
        for _ in range(5):
            _, (d,) = await accept_one(store)
            ids.append(d)
        newest_first = sorted(ids, reverse=True)
        page1 = await store.list_deliveries(DeliveryFilter(limit=2))
        assert [r.id for r in page1] == newest_first[:2]
        page2 = await store.list_deliveries(DeliveryFilter(limit=2, before_id=page1[-1].id))
        assert [r.id for r in page2] == newest_first[2:4]
        page3 = await store.list_deliveries(DeliveryFilter(limit=2, before_id=page2[-1].id))
        assert [r.id for r in page3] == newest_first[4:]
        assert await store.list_deliveries(DeliveryFilter(limit=2, before_id=page3[-1].id)) == []

    async def test_get_delivery_returns_body_event_and_attempts(self, store: Store) -> None:
        """get_delivery returns the row, its body and options, its event, and its attempts in order."""
        event, (d,) = await accept_one(store)
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(result(d, "succeeded", ticket_id="9"))
        detail = await store.get_delivery(d)
        assert detail.delivery.id == d
        assert detail.body == {"title": "Router down"}
        assert detail.options == {}
        assert detail.event == event
        assert [a.n for a in detail.attempts] == [1]

    async def test_get_delivery_unknown_is_not_found(self, store: Store) -> None:
        """An unknown delivery id raises NotFound (a KeyError too)."""
        with pytest.raises(NotFound):
            await store.get_delivery("dlv_nope")
        with pytest.raises(KeyError):
            await store.get_delivery("dlv_nope")

    async def test_get_event_unknown_is_not_found(self, store: Store) -> None:
        """An unknown event id raises NotFound."""
        with pytest.raises(NotFound):
            await store.get_event("evt_nope")

    async def test_an_unknown_long_id_is_quoted_cut(self, store: Store) -> None:
        """NotFound quotes an unknown id cut to 100 characters, its length said, never whole."""
        for read, given in ((store.get_delivery, "dlv_" + "x" * 5000), (store.get_event, "evt_" + "x" * 5000)):
            with pytest.raises(NotFound) as missing:
                await read(given)
            assert str(missing.value).endswith("xxx'… (5004 characters in all)"), str(missing.value)[:200]
            assert len(str(missing.value)) < 200

    async def test_event_round_trips_exactly(self, store: Store) -> None:
        """A stored event reads back equal, time zone, headers, meta and payload types included."""
        event = make_event(dedup_key="d", n=1, f=1.5, none=None, nested={"l": [1, "x"]}, flag=True)
        await store.accept(event, [], WEEK)
        got = await store.get_event(event.id)
        assert got == event
        assert got.received_at.utcoffset() is not None

    async def test_counts_by_destination_and_status(self, store: Store) -> None:
        """counts gives, per destination, the number of deliveries in each status present."""
        assert await store.counts() == {}
        _, (a, _b, _c) = await accept_one(store, make_delivery(), make_delivery(), make_delivery())
        await accept_one(store, make_delivery(destination="lsq"))
        await store.claim("kapture-support", 2, "w", 30)
        await store.record(result(a, "succeeded"))
        assert await store.counts() == {
            "kapture-support": {"succeeded": 1, "in_flight": 1, "pending": 1},
            "lsq": {"pending": 1},
        }

    # -- replay -----------------------------------------------------------------------------------

    async def test_replay_moves_dead_and_succeeded_back_to_pending(self, store: Store) -> None:
        """replay makes dead and succeeded deliveries pending and due now, tries reset, attempts kept."""
        _, (dead, done) = await accept_one(store, make_delivery(), make_delivery())
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(result(dead, "dead", classification="permanent", error="bad field"))
        await store.record(result(done, "succeeded", ticket_id="T1"))
        moved = await store.replay([dead, done])
        assert sorted(moved) == sorted([dead, done])
        for d in (dead, done):
            r = await row(store, d)
            assert (r.status, r.tries, r.attempts, r.last_error) == ("pending", 0, 1, None)
            assert r.next_attempt_at_ms <= now_ms()
        batch = await store.claim("kapture-support", 10, "w", 30)
        assert {(c.id, c.tries, c.attempts) for c in batch.items} == {(dead, 0, 1), (done, 0, 1)}
        await store.record(result(dead, "succeeded"))
        assert [a.n for a in (await store.get_delivery(dead)).attempts] == [1, 2]

    async def test_replay_leaves_pending_and_in_flight_alone(self, store: Store) -> None:
        """Only dead or succeeded deliveries move; others, and unknown ids, are left out of the answer."""
        _, (pending, leased) = await accept_one(store, make_delivery(), make_delivery(destination="lsq"))
        await store.claim("lsq", 10, "w", 30)
        assert await store.replay([pending, leased, "dlv_unknown"]) == []
        assert (await row(store, leased)).status == "in_flight"
        new = ({"title": "new"}, "v2")
        assert await store.replay([pending, leased, "dlv_unknown"], {pending: new, leased: new}) == []
        for d in (pending, leased):
            detail = await store.get_delivery(d)
            assert (detail.body, detail.delivery.mapping_version) == ({"title": "Router down"}, "v1")
        assert (await row(store, leased)).status == "in_flight"

    async def test_replay_refuses_dead_without_body_unless_given_one(self, store: Store) -> None:
        """A delivery that never rendered cannot be replayed as it is, but can with a new body."""
        bodiless = make_delivery(body=None, status="dead", error="email_id: required (payload.email is missing)")
        await accept_one(store, bodiless)
        assert await store.replay([bodiless.id]) == []
        assert (await row(store, bodiless.id)).status == "dead"
        new_body = {"title": "fixed", "email_id": "a@b.io"}
        assert await store.replay([bodiless.id], {bodiless.id: (new_body, "v2")}) == [bodiless.id]
        detail = await store.get_delivery(bodiless.id)
        assert (detail.delivery.status, detail.delivery.mapping_version, detail.body) == ("pending", "v2", new_body)
        assert [c.body for c in (await store.claim("kapture-support", 10, "w", 30)).items] == [new_body]

    async def test_replay_with_bodies_replaces_only_those_given(self, store: Store) -> None:
        """With `bodies`, the named deliveries get the new body and mapping version; the others keep theirs."""
        _, (a, b) = await accept_one(store, make_delivery(), make_delivery())
        await store.claim("kapture-support", 10, "w", 30)
        for d in (a, b):
            await store.record(result(d, "dead", classification="permanent", error="x"))
        assert sorted(await store.replay([a, b], {a: ({"title": "new"}, "v9")})) == sorted([a, b])
        da, db = await store.get_delivery(a), await store.get_delivery(b)
        assert (da.body, da.delivery.mapping_version) == ({"title": "new"}, "v9")
        assert (db.body, db.delivery.mapping_version) == ({"title": "Router down"}, "v1")

    async def test_replay_with_a_mapping_gives_the_rerendered_ones_to_it(self, store: Store) -> None:
        """With `mapping`, the re-rendered deliveries belong to that mapping from then on (a claim names it); a
        delivery replayed without a new body keeps its own."""
        _, (a, b) = await accept_one(store, make_delivery(mapping="old-name"), make_delivery(mapping="old-name"))
        await store.claim("kapture-support", 10, "w", 30)
        for d in (a, b):
            await store.record(result(d, "dead", classification="permanent", error="x"))
        moved = await store.replay([a, b], {a: ({"title": "new"}, "v9")}, mapping="new-name")
        assert sorted(moved) == sorted([a, b])
        assert ((await row(store, a)).mapping, (await row(store, b)).mapping) == ("new-name", "old-name")
        claimed = {c.id: c.mapping for c in (await store.claim("kapture-support", 10, "w", 30)).items}
        assert claimed == {a: "new-name", b: "old-name"}

    async def test_mapping_backlog_counts_unsettled_and_dead_deliveries_and_open_conversations(
            self, store: Store) -> None:
        """mapping_backlog gives, for each mapping asked about, its pending, in-flight and dead deliveries and its
        conversations with a message since the time given; succeeded ones and other mappings are not counted."""
        assert await store.mapping_backlog({"gone": 0}) == {}
        dead = make_delivery(mapping="gone", body=None, status="dead", error="x")
        await accept_one(store, make_delivery(mapping="gone", destination="lsq"),
                         make_delivery(mapping="gone", conversation="gone|k1", conversation_key="k1"), dead)
        await accept_one(store, make_delivery(mapping="gone", conversation="gone|k2", conversation_key="k2"))
        await accept_one(store, make_delivery(mapping="kept"))
        await store.claim("lsq", 10, "w", 30)
        assert await store.mapping_backlog({"gone": 0, "other": 0}) == {
            "gone": {"pending": 2, "in_flight": 1, "dead": 1, "conversations": 2}}
        assert (await store.mapping_backlog({"gone": now_ms() + 60_000}))["gone"] == {
            "pending": 2, "in_flight": 1, "dead": 1}

    async def test_mark_dead_takes_a_destinations_pending_deliveries_only(self, store: Store) -> None:
        """mark_dead makes up to `limit` pending deliveries of the destination dead with the reason given; in-flight,
        settled and other destinations' deliveries are left alone, and the dead ones can be replayed."""
        _, ids = await accept_one(store, *(make_delivery(destination="gone") for _ in range(3)),
                                  make_delivery(destination="kept"))
        leased = (await store.claim("gone", 1, "w", 30)).items[0].id
        assert await store.mark_dead("gone", "marked dead by ops: removed", 1) == 1
        assert await store.mark_dead("gone", "marked dead by ops: removed", 10) == 1
        assert await store.mark_dead("gone", "again", 10) == 0
        rows = {d: await row(store, d) for d in ids}
        assert sorted(r.status for r in rows.values()) == ["dead", "dead", "in_flight", "pending"]
        assert rows[leased].status == "in_flight" and rows[ids[3]].status == "pending"
        assert {r.last_error for r in rows.values() if r.status == "dead"} == {"marked dead by ops: removed"}
        assert await store.counts() == {"gone": {"dead": 2, "in_flight": 1}, "kept": {"pending": 1}}
        dead = [d for d, r in rows.items() if r.status == "dead"]
        assert sorted(await store.replay(dead)) == sorted(dead)

    # -- conversations ----------------------------------------------------------------------------

    async def test_a_conversation_is_claimed_one_delivery_at_a_time_in_arrival_order(self, store: Store) -> None:
        """Only the head of a conversation is claimable; the next one waits (listed as waiting) until the head
        is recorded, and other conversations never wait for it."""
        conv = "m|mail:root@x"
        first, second = (make_delivery(conversation=conv, conversation_key="mail:root@x") for _ in range(2))
        await accept_one(store, first)
        await accept_one(store, second)
        other = make_delivery(conversation="m|mail:other@x", conversation_key="mail:other@x")
        await accept_one(store, other)
        got = (await store.claim("kapture-support", 10, "w", 30)).items
        assert sorted(c.id for c in got) == sorted([first.id, other.id])
        assert all(c.ticket is None for c in got)  # no ticket yet: creates
        assert (await row(store, second.id)).waiting is True
        assert (await store.claim("kapture-support", 10, "w", 30)).items == []
        done = msgspec.structs.replace(result(first.id, "succeeded", ticket_id="T-1"), role="create")
        await store.record(done)
        assert (await row(store, second.id)).waiting is False
        (follow,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert follow.id == second.id and follow.ticket is not None
        assert (follow.ticket["id"], follow.ticket["destination"], follow.ticket["messages"]) == (
            "T-1", "kapture-support", 2)
        assert follow.ticket["created_at"].endswith("Z") and follow.ticket["last_message_at"].endswith("Z")
        assert (follow.ticket["key"], follow.ticket["uuid"]) == (None, None)

    async def test_a_follow_ups_messages_count_the_deliveries_of_its_conversation_up_to_it(self, store: Store) -> None:
        """`ticket.messages` counts the deliveries of the conversation the store holds, up to the follow-up in arrival
        order: not those waiting behind it, not another sender's message split off to a conversation of its own,
        and, once a purge has deleted a settled message's event, not that one."""
        conv, key = "m|mail:root@x", "mail:root@x"

        def mail(sender: str = "asha@x.io") -> NewDelivery:
            return make_delivery(conversation=conv, conversation_key=key, sender=sender, sender_checked=True)

        first = mail()
        await accept_one(store, first)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(first.id, "succeeded", ticket_id="T-1"), role="create"))
        second, intruder, third, fourth = mail(), mail("mallory@evil.example"), mail(), mail()
        for d in (second, intruder, third, fourth):
            await accept_one(store, d)
        got = {c.id: c for c in (await store.claim("kapture-support", 10, "w", 30)).items}
        assert sorted(got) == sorted([second.id, intruder.id])
        assert got[intruder.id].ticket is None  # a create, in a conversation of its own
        ticket = got[second.id].ticket
        assert ticket is not None and (ticket["id"], ticket["messages"]) == ("T-1", 2)
        for d in (second, intruder):
            await store.record(result(d.id, "succeeded"))
        assert (await store.purge(Cutoffs(events_ms=after_now()), 500)).events == 3  # first, second, intruder
        (follow,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert follow.id == third.id and follow.ticket is not None
        assert (follow.ticket["id"], follow.ticket["messages"]) == ("T-1", 1)
        await store.record(result(third.id, "succeeded"))
        (follow,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert follow.id == fourth.id and follow.ticket is not None and follow.ticket["messages"] == 2

    async def test_a_follow_up_sees_every_reference_of_its_ticket(self, store: Store) -> None:
        """The create's ticket id, key and uuid (LeadSquared's Id, Key and TicketId) reach the follow-up's
        `ticket` and the conversation; a message after the quiet period clears all three."""
        conv = "m|mail:root@x"
        first, second = (make_delivery(conversation=conv, conversation_key="mail:root@x") for _ in range(2))
        await accept_one(store, first)
        await accept_one(store, second)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(first.id, "succeeded", ticket_id="34"), role="create",
                                                   ticket_key="#034", ticket_uuid="27e8259d-0681"))
        (follow,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert follow.ticket is not None
        assert (follow.ticket["id"], follow.ticket["key"], follow.ticket["uuid"]) == ("34", "#034", "27e8259d-0681")
        (found,) = await store.get_conversations("mail:root@x")
        assert (found.conversation.ticket_key, found.conversation.ticket_uuid) == ("#034", "27e8259d-0681")
        await store.record(result(follow.id, "succeeded"))
        later = make_delivery(conversation=conv, conversation_key="mail:root@x", reopen_after_ms=-1)
        await accept_one(store, later)
        (found,) = await store.get_conversations("mail:root@x")
        assert (found.conversation.ticket_id, found.conversation.ticket_key, found.conversation.ticket_uuid) == (
            None, None, None)

    async def test_a_follow_up_keeps_the_action_and_body_it_was_sent_with(self, store: Store) -> None:
        """Recording a follow-up stores its role, action and rendered body on the delivery."""
        d = make_delivery(conversation="m|k", conversation_key="k")
        await accept_one(store, d)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(d.id, "succeeded"), role="follow_up",
                                                   action="update_ticket", body={"comment": "hi"}))
        detail = await store.get_delivery(d.id)
        assert (detail.delivery.role, detail.delivery.action, detail.body) == ("follow_up", "update_ticket",
                                                                               {"comment": "hi"})

    async def test_a_dead_create_leaves_the_next_message_to_create_the_ticket(self, store: Store) -> None:
        """When the create goes dead, the conversation has no ticket, so its next message is claimed as a create."""
        first, second = (make_delivery(conversation="m|k", conversation_key="k") for _ in range(2))
        await accept_one(store, first)
        await accept_one(store, second)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(first.id, "dead", classification="permanent", error="x"),
                                                   role="create"))
        (nxt,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert nxt.id == second.id and nxt.ticket is None

    async def test_a_create_answered_without_a_ticket_id_is_marked_and_its_next_message_creates(
            self, store: Store) -> None:
        """A conversation's create recorded succeeded with no ticket id and `ticket_missing` shows it on the delivery
        (listed and shown); the conversation has no ticket, so its next message is claimed as a create; a later
        attempt's record, or an operator's mark-succeeded, clears it; a delivery not succeeded never shows it."""
        first, second = await ticketless_create(store)
        assert (await row(store, first.id)).ticket_missing is True
        listed = await store.list_deliveries(DeliveryFilter(limit=10))
        assert {r.id: r.ticket_missing for r in listed} == {first.id: True, second.id: False}
        (conv,) = await store.get_conversations("k")
        assert conv.conversation.ticket_id is None
        (nxt,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert nxt.id == second.id and nxt.ticket is None
        await store.record(msgspec.structs.replace(result(second.id, "succeeded", ticket_id="T-2"), role="create"))
        assert (await row(store, second.id)).ticket_missing is False
        assert await store.replay([first.id]) == [first.id]
        assert (await row(store, first.id)).ticket_missing is False  # pending again: it names no ticket yet
        marked = result(first.id, "succeeded", http_status=None, classification="marked", ticket_id="T-1")
        assert await store.mark_succeeded(first.id, marked) is True
        assert (await row(store, first.id)).ticket_missing is False

    async def _held_create(self, store: Store) -> tuple[NewDelivery, NewDelivery]:
        """A conversation whose create was held (its send's outcome unknown, then dead: on_unknown hold), and its
        next message."""
        first, second = (make_delivery(conversation="m|k", conversation_key="k") for _ in range(2))
        await accept_one(store, first)
        await accept_one(store, second)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(
            result(first.id, "dead", http_status=None, classification="unknown", error="timed out; held"),
            role="create"))
        assert (await row(store, first.id)).in_doubt_since_ms is not None
        return first, second

    async def test_a_held_create_keeps_its_conversations_next_message_waiting(self, store: Store) -> None:
        """A create held in doubt (the vendor may hold its ticket) keeps the conversation's later messages waiting,
        not claimed as a second create; mark-succeeded with its ticket gives the conversation the ticket and the
        next message goes as a follow-up on it."""
        first, second = await self._held_create(store)
        batch = await store.claim("kapture-support", 10, "w", 30)
        assert batch.items == [] and batch.next_due_ms is None
        assert (await row(store, second.id)).waiting is True
        done = msgspec.structs.replace(result(first.id, "succeeded", http_status=None, classification="marked",
                                              ticket_id="T-7"), role="create")
        assert await store.mark_succeeded(first.id, done) is True
        assert (await row(store, second.id)).waiting is False
        (nxt,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert nxt.id == second.id and nxt.ticket is not None and nxt.ticket["id"] == "T-7"

    async def test_a_replayed_held_create_goes_first_and_its_next_message_follows(self, store: Store) -> None:
        """Replaying the held create makes it the conversation's head again: it is claimed, the next message
        waits for it, and follows its ticket."""
        first, second = await self._held_create(store)
        assert await store.replay([first.id]) == [first.id]
        (again,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert again.id == first.id and again.ticket is None
        await store.record(msgspec.structs.replace(result(first.id, "succeeded", ticket_id="T-8"), role="create"))
        (nxt,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert nxt.id == second.id and nxt.ticket is not None and nxt.ticket["id"] == "T-8"

    async def test_a_held_create_holds_only_its_own_conversation(self, store: Store) -> None:
        """Another conversation, and a conversation whose create died for certain, are not held."""
        await self._held_create(store)
        other = make_delivery(conversation="m|other", conversation_key="other")
        await accept_one(store, other)
        (got,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert got.id == other.id

    async def test_a_replayed_message_goes_before_those_waiting_and_counts_those_sent_after_it(
            self, store: Store) -> None:
        """A conversation's backlog keeps its order through a message gone dead and replayed: the next waiting one
        goes on once it is dead; replayed, it is claimed before the messages still waiting behind it, its
        `ticket.messages` counting those before it alone (also when a message after it was sent meanwhile), and
        each message behind it follows in arrival order."""
        def message() -> NewDelivery:
            return make_delivery(conversation="m|k", conversation_key="k")

        first, second, third, fourth = message(), message(), message(), message()
        for d in (first, second, third, fourth):
            await accept_one(store, d)

        async def claimed() -> Claimed:
            (got,) = (await store.claim("kapture-support", 10, "w", 30)).items
            return got

        assert (await claimed()).id == first.id
        await store.record(msgspec.structs.replace(result(first.id, "succeeded", ticket_id="T-1"), role="create"))
        assert (await claimed()).id == second.id
        await store.record(result(second.id, "dead", http_status=400, classification="permanent"))
        got = await claimed()
        assert got.id == third.id and got.ticket is not None and got.ticket["messages"] == 3
        await store.record(result(third.id, "succeeded"))
        assert await store.replay([second.id]) == [second.id]  # before fourth, which has not gone yet
        assert (await row(store, fourth.id)).waiting is True
        got = await claimed()
        assert got.id == second.id and got.ticket is not None and got.ticket["messages"] == 2
        assert (await store.claim("kapture-support", 10, "w", 30)).items == []
        await store.record(result(second.id, "succeeded"))
        got = await claimed()
        assert got.id == fourth.id and got.ticket is not None and got.ticket["messages"] == 4

    async def test_a_backlog_marked_dead_lets_the_next_message_go(self, store: Store) -> None:
        """Every pending message of a destination marked dead (its mapping gone), the conversation's next message is
        its head, and claimed at once; one marked dead while the head is in flight leaves the head's successor
        waiting only on the head."""
        def message() -> NewDelivery:
            return make_delivery(conversation="m|k", conversation_key="k")

        waiting = [message() for _ in range(3)]
        for d in waiting:
            await accept_one(store, d)
        assert await store.mark_dead("kapture-support", "mapping gone", 10) == 3
        nxt = message()
        await accept_one(store, nxt)
        (got,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert got.id == nxt.id
        behind, last = message(), message()
        await accept_one(store, behind)
        await accept_one(store, last)
        assert await store.mark_dead("kapture-support", "mapping gone", 1) == 1  # the earlier of those pending
        assert (await row(store, behind.id)).status == "dead"
        assert (await store.claim("kapture-support", 10, "w", 30)).items == []  # the head still in flight
        await store.record(msgspec.structs.replace(result(nxt.id, "succeeded", ticket_id="T-1"), role="create"))
        (got,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert got.id == last.id and got.ticket is not None

    async def test_a_conversation_goes_in_arrival_order_whatever_its_ids_say(self, store: Store) -> None:
        """A conversation's order is the order the store took its messages in, not their ids' (which hold the clock
        of the host that accepted each): a reply accepted second, by a process whose clock is behind, carries the
        smaller id and still waits behind the first message, follows up on its ticket as the second message, and is
        listed second."""
        first = make_delivery(conversation="m|k", conversation_key="k")
        await accept_one(store, first)
        reply = make_delivery(conversation="m|k", conversation_key="k", delivery_id=id_made_behind())
        assert reply.id < first.id
        await accept_one(store, reply)
        (got,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert got.id == first.id and got.ticket is None
        assert (await row(store, reply.id)).waiting is True
        await store.record(msgspec.structs.replace(result(first.id, "succeeded", ticket_id="T-1"), role="create"))
        (follow,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert follow.id == reply.id and follow.ticket is not None
        assert (follow.ticket["id"], follow.ticket["messages"]) == ("T-1", 2)
        (found,) = await store.get_conversations("k")
        assert [d.id for d in found.deliveries] == [first.id, reply.id]

    async def test_a_conversation_lists_its_first_messages_up_to_a_limit(self, store: Store) -> None:
        """Asked for at most `limit` deliveries, a conversation lists the first ones in arrival order (a reply with
        a smaller id, taken second, is still second), and its message count stays whole."""
        first = make_delivery(conversation="m|k", conversation_key="k")
        await accept_one(store, first)
        reply = make_delivery(conversation="m|k", conversation_key="k", delivery_id=id_made_behind())
        await accept_one(store, reply)
        await accept_one(store, make_delivery(conversation="m|k", conversation_key="k"))
        (two,) = await store.get_conversations("m|k", limit=2)
        assert [d.id for d in two.deliveries] == [first.id, reply.id]
        assert two.conversation.messages == 3
        (one,) = await store.get_conversations("k", limit=1)
        assert [d.id for d in one.deliveries] == [first.id]
        (every,) = await store.get_conversations("k")
        assert len(every.deliveries) == 3

    async def test_a_conversation_is_read_in_slices_by_arrival_both_ways(self, store: Store) -> None:
        """`conversation_slice` reads a conversation in arrival order a slice at a time: from its start, after a
        place (the next slice) and before one (the previous), each saying whether others come before and after;
        a reply with a smaller id, taken later, keeps its place, and another conversation's deliveries never
        enter."""
        ids = []
        for n in range(7):
            d = make_delivery(conversation="m|k", conversation_key="k",
                              delivery_id=id_made_behind() if n == 3 else None)
            await accept_one(store, d)
            await accept_one(store, make_delivery(conversation="m|other", conversation_key="other"))
            ids.append(d.id)
        assert ids[3] < ids[2]
        first = await store.conversation_slice("m|k", 3)
        assert ([d.id for d in first.deliveries], first.earlier, first.later) == (ids[:3], False, True)
        assert [a[1] for a in first.arrivals] == ids[:3]
        assert first.arrivals == sorted(first.arrivals)
        second = await store.conversation_slice("m|k", 3, after=first.arrivals[-1])
        assert ([d.id for d in second.deliveries], second.earlier, second.later) == (ids[3:6], True, True)
        last = await store.conversation_slice("m|k", 3, after=second.arrivals[-1])
        assert ([d.id for d in last.deliveries], last.earlier, last.later) == (ids[6:], True, False)
        beyond = await store.conversation_slice("m|k", 3, after=last.arrivals[-1])
        assert (beyond.deliveries, beyond.arrivals, beyond.earlier, beyond.later) == ([], [], True, False)
        back = await store.conversation_slice("m|k", 3, before=last.arrivals[0])
        assert ([d.id for d in back.deliveries], back.earlier, back.later) == (ids[3:6], True, True)
        assert back.arrivals == second.arrivals
        start = await store.conversation_slice("m|k", 2, before=back.arrivals[0])
        assert ([d.id for d in start.deliveries], start.earlier, start.later) == (ids[1:3], True, True)
        before_all = await store.conversation_slice("m|k", 2, before=first.arrivals[0])
        assert (before_all.deliveries, before_all.earlier, before_all.later) == ([], False, True)
        whole = await store.conversation_slice("m|k", 500)
        assert ([d.id for d in whole.deliveries], whole.earlier, whole.later) == (ids, False, False)
        assert (await store.conversation_slice("m|nothing", 5)).deliveries == []

    async def test_a_conversation_s_last_slice_is_its_newest_with_how_many_come_before(self, store: Store) -> None:
        """`conversation_slice(..., last=True)` reads a conversation's last deliveries, those taken latest (a reply
        with a smaller id taken later among them), in arrival order, with how many come before them (`ahead`);
        the slice before its first reads back from there, and a purge of the conversation's first deliveries is
        counted off. A conversation with none has an empty last slice."""
        ids = []
        for n in range(7):
            d = make_delivery(destination="d-old" if n < 2 else "kapture-support", conversation="m|k",
                              conversation_key="k", delivery_id=id_made_behind() if n == 6 else None)
            await accept_one(store, d)
            await accept_one(store, make_delivery(conversation="m|other", conversation_key="other"))
            ids.append(d.id)
        tail = await store.conversation_slice("m|k", 3, last=True)
        assert ([d.id for d in tail.deliveries], tail.earlier, tail.later, tail.ahead) == (ids[4:], True, False, 4)
        assert [a[1] for a in tail.arrivals] == ids[4:] and tail.arrivals == sorted(tail.arrivals)
        back = await store.conversation_slice("m|k", 3, before=tail.arrivals[0])
        assert ([d.id for d in back.deliveries], back.earlier, back.later) == (ids[1:4], True, True)
        whole = await store.conversation_slice("m|k", 500, last=True)
        assert ([d.id for d in whole.deliveries], whole.earlier, whole.later, whole.ahead) == (ids, False, False, 0)
        for d in ids[:2]:  # sent in order: the second waits for the first's ticket
            assert [c.id for c in (await store.claim("d-old", 10, "w", 30)).items] == [d]
            await store.record(result(d, "succeeded", ticket_id="T-1"))
        assert (await store.purge(Cutoffs(events_ms=after_now()), 500)).deliveries == 2
        after_purge = await store.conversation_slice("m|k", 3, last=True)
        assert ([d.id for d in after_purge.deliveries], after_purge.ahead) == (ids[4:], 2)
        empty = await store.conversation_slice("m|nothing", 5, last=True)
        assert (empty.deliveries, empty.arrivals, empty.earlier, empty.later, empty.ahead) == ([], [], False, False, 0)

    async def test_a_slice_read_after_a_place_takes_what_arrived_since_once(self, store: Store) -> None:
        """A conversation read slice after slice while messages arrive lists each of its deliveries once, in
        arrival order: a slice starts after the last one read, not at a count from the start, so a message
        arriving meanwhile neither shifts the later slices nor is skipped."""
        ids = []
        for _ in range(4):
            d = make_delivery(conversation="m|k", conversation_key="k")
            await accept_one(store, d)
            ids.append(d.id)
        read: list[str] = []
        got = await store.conversation_slice("m|k", 3)
        while got.deliveries:
            read += [d.id for d in got.deliveries]
            if len(ids) < 8:  # two more arrive while the conversation is being read
                for _ in range(2):
                    d = make_delivery(conversation="m|k", conversation_key="k", delivery_id=id_made_behind())
                    await accept_one(store, d)
                    ids.append(d.id)
            got = await store.conversation_slice("m|k", 3, after=got.arrivals[-1])
        assert read == ids
        assert not got.later and got.earlier

    async def test_a_slice_after_a_place_a_purge_deleted_is_stale_or_takes_all_stored_since(
            self, store: Store) -> None:
        """A place whose delivery a purge has deleted either still orders every delivery stored since after it
        (PostgreSQL's sequence, the memory store's count), or is said to be stale (SQLite, whose rowids are given
        again once the rows with the largest are gone): never a slice that skips the deliveries stored since."""
        first = make_delivery(destination="d-gone", conversation="m|k", conversation_key="k")
        await accept_one(store, first)
        place = (await store.conversation_slice("m|k", 5)).arrivals[-1]
        await settle(store, first.id, "succeeded", "d-gone")
        assert (await store.purge(Cutoffs(events_ms=after_now()), 500)).deliveries == 1
        since = []
        for _ in range(2):
            d = make_delivery(conversation="m|k", conversation_key="k")
            await accept_one(store, d)
            since.append(d.id)
        after = await store.conversation_slice("m|k", 5, after=place)
        assert after.stale or [d.id for d in after.deliveries] == since
        before = await store.conversation_slice("m|k", 5, before=place)
        assert before.stale or before.deliveries == []
        still = await store.conversation_slice("m|k", 5, after=(await store.conversation_slice("m|k", 1)).arrivals[0])
        assert ([d.id for d in still.deliveries], still.stale) == (since[1:], False)

    async def test_a_held_create_keeps_a_reply_with_a_smaller_id_waiting(self, store: Store) -> None:
        """A create held in doubt keeps the conversation's next message waiting even when that message's id sorts
        before the create's (accepted later by a process whose clock is behind): sent, it would be a second create,
        a second ticket for one thread."""
        first = make_delivery(conversation="m|k", conversation_key="k")
        await accept_one(store, first)
        reply = make_delivery(conversation="m|k", conversation_key="k", delivery_id=id_made_behind())
        await accept_one(store, reply)
        (got,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert got.id == first.id
        await store.record(msgspec.structs.replace(
            result(first.id, "dead", http_status=None, classification="unknown", error="timed out; held"),
            role="create"))
        batch = await store.claim("kapture-support", 10, "w", 30)
        assert batch.items == [] and batch.next_due_ms is None
        assert (await row(store, reply.id)).waiting is True

    async def test_a_held_create_of_an_earlier_round_holds_nothing(self, store: Store) -> None:
        """A message after the quiet period restarts the conversation: the held create of the round before holds
        no ticket of this round, so the conversation's messages go on (an operator still settles the held one)."""
        _first, second = await self._held_create(store)
        tick()
        later = make_delivery(conversation="m|k", conversation_key="k", reopen_after_ms=-1)
        await accept_one(store, later)
        (got,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert got.id == second.id and got.ticket is None
        assert (await row(store, later.id)).waiting is True  # behind the second, as any conversation's message

    async def test_a_reset_starts_a_new_round_that_a_held_create_does_not_hold(self, store: Store) -> None:
        """An operator's reset detaches the conversation and starts a new round: a held create from before it no
        longer keeps its messages waiting."""
        _first, second = await self._held_create(store)
        tick()
        assert [c.id for c in await store.reset_conversation("k")] == ["m|k"]
        (got,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert got.id == second.id and got.ticket is None

    async def test_a_reset_conversation_loses_its_ticket_and_its_next_message_creates(self, store: Store) -> None:
        """reset_conversation clears the ticket of the conversations with that key (returning them as they were):
        a dead follow-up replayed, and the next message, are claimed without a ticket (creates), the replayed one
        saying it was last sent as a follow-up."""
        first, second = (make_delivery(conversation="m|k", conversation_key="k") for _ in range(2))
        await accept_one(store, first)
        await accept_one(store, second)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(first.id, "succeeded", ticket_id="T-1"), role="create",
                                                   ticket_key="#1"))
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(
            result(second.id, "dead", classification="permanent", error="No Data found"), role="follow_up",
            action="update_ticket", body={"comment": "hi"}))
        assert await store.reset_conversation("nothing") == []
        (was,) = await store.reset_conversation("k")
        assert (was.id, was.ticket_id, was.ticket_key) == ("m|k", "T-1", "#1")
        (found,) = await store.get_conversations("m|k")
        c = found.conversation
        assert (c.ticket_id, c.ticket_key, c.ticket_uuid, c.ticket_at_ms) == (None, None, None, None)
        assert await store.replay([second.id]) == [second.id]
        (again,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert (again.id, again.ticket, again.role) == (second.id, None, "follow_up")
        await store.record(msgspec.structs.replace(result(second.id, "succeeded", ticket_id="T-2"), role="create"))
        third = make_delivery(conversation="m|k", conversation_key="k")
        await accept_one(store, third)
        (nxt,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert nxt.ticket is not None and nxt.ticket["id"] == "T-2"

    async def test_a_subject_token_joins_the_named_ticket(self, store: Store) -> None:
        """A message naming a ticket (`known_ticket`) is a follow-up on it from the start."""
        d = make_delivery(conversation="m|ticket:713", conversation_key="ticket:713", known_ticket="713")
        await accept_one(store, d)
        (got,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert got.ticket is not None and got.ticket["id"] == "713"

    async def test_a_thread_is_joined_only_by_its_first_sender(self, store: Store) -> None:
        """A message whose key any sender may write (`sender_checked`: an email's References, subject token) joins
        the conversation only from the sender who opened it; another sender's message opens a conversation of its
        own (`split:<delivery id>`), a create, and leaves the first one as it was."""
        conv, key = "m|mail:root@corp.example", "mail:root@corp.example"

        def mail(sender: str, **kw: Any) -> NewDelivery:
            return make_delivery(conversation=conv, conversation_key=key, sender=sender, sender_checked=True, **kw)

        first = mail("victim@corp.example")
        await accept_one(store, first)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(first.id, "succeeded", ticket_id="T-1"), role="create"))
        intruders = [mail("attacker@evil.example") for _ in range(3)]
        reply = mail("victim@corp.example")
        await asyncio.gather(*(accept_one(store, d) for d in [*intruders, reply]))  # one group, where grouped
        (found,) = await store.get_conversations(key)
        assert (found.conversation.messages, found.conversation.ticket_id) == (2, "T-1")
        assert found.conversation.sender == "victim@corp.example"
        assert [d.id for d in found.deliveries] == [first.id, reply.id]
        for d in intruders:
            assert (await row(store, d.id)).conversation == f"contact-to-kapture|split:{d.id}"
            (own,) = await store.get_conversations(f"split:{d.id}")
            assert (own.conversation.messages, own.conversation.ticket_id, own.conversation.sender) == (
                1, None, "attacker@evil.example")
        got = {c.id: c for c in (await store.claim("kapture-support", 10, "w", 30)).items}
        assert sorted(got) == sorted([reply.id, *(d.id for d in intruders)])
        assert all(got[d.id].ticket is None for d in intruders)  # creates: a ticket each
        ticket = got[reply.id].ticket
        assert ticket is not None and (ticket["id"], ticket["first_sender"]) == ("T-1", "victim@corp.example")

    async def test_a_subject_token_names_only_a_ticket_its_sender_opened(self, store: Store) -> None:
        """A checked `[#id]` token joins the ticket only when a conversation its sender opened (to the same
        destination) holds it; a ticket nobody's conversation holds, or another sender's, is not joined."""
        first = make_delivery(conversation="m|mail:v@x", conversation_key="mail:v@x", sender="v@x.io",
                              sender_checked=True)
        await accept_one(store, first)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(first.id, "succeeded", ticket_id="713"), role="create"))

        def token(sender: str, ticket: str) -> NewDelivery:
            return make_delivery(conversation=f"m|ticket:{ticket}", conversation_key=f"ticket:{ticket}",
                                 known_ticket=ticket, sender=sender, sender_checked=True)

        stranger, unknown, owner = token("a@evil.io", "713"), token("v@x.io", "714"), token("v@x.io", "713")
        for d in (stranger, unknown, owner):
            await accept_one(store, d)
        got = {c.id: c for c in (await store.claim("kapture-support", 10, "w", 30)).items}
        assert got[stranger.id].ticket is None and got[unknown.id].ticket is None
        assert (await row(store, stranger.id)).conversation == f"contact-to-kapture|split:{stranger.id}"
        assert got[owner.id].ticket is not None and got[owner.id].ticket["id"] == "713"
        (joined,) = await store.get_conversations("ticket:713")
        assert [d.id for d in joined.deliveries] == [owner.id]

    async def test_a_senders_other_forms_join_its_conversation_and_ticket(self, store: Store) -> None:
        """A message whose sender has other forms (`sender_also`: its address at the domains its source names as
        aliases of its own) joins a conversation, or by token a ticket, first sent by any of them, as by itself;
        no one else's, and its other forms name no one else."""
        conv, key = "m|mail:jo1@contoso.com", "mail:jo1@contoso.com"
        first = make_delivery(conversation=conv, conversation_key=key, sender="jo@contoso.onmicrosoft.com",
                              sender_checked=True)
        await accept_one(store, first)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(first.id, "succeeded", ticket_id="T-9"), role="create"))

        def mail(sender: str, *also: str, **kw: Any) -> NewDelivery:
            return make_delivery(conversation=conv, conversation_key=key, sender=sender, sender_checked=True,
                                 sender_also=also, **kw)

        reply = mail("jo@contoso.com", "jo@contoso.onmicrosoft.com", "jo@contoso.de")
        other = mail("ann@contoso.com", "ann@contoso.onmicrosoft.com")
        plain = mail("jo@contoso.com")  # no aliases named: another sender
        token = make_delivery(conversation="m|ticket:T-9", conversation_key="ticket:T-9", known_ticket="T-9",
                              sender="jo@contoso.com", sender_checked=True, sender_also=("jo@contoso.onmicrosoft.com",))
        stranger = make_delivery(conversation="m|ticket:T-9", conversation_key="ticket:T-9", known_ticket="T-9",
                                 sender="ann@contoso.com", sender_checked=True,
                                 sender_also=("ann@contoso.onmicrosoft.com",))
        for d in (reply, other, plain, token, stranger):
            await accept_one(store, d)
        (found,) = await store.get_conversations(key)
        assert (found.conversation.sender, found.conversation.ticket_id) == ("jo@contoso.onmicrosoft.com", "T-9")
        assert [d.id for d in found.deliveries] == [first.id, reply.id]
        for d in (other, plain, stranger):
            assert (await row(store, d.id)).conversation == f"contact-to-kapture|split:{d.id}"
        got = {c.id: c for c in (await store.claim("kapture-support", 10, "w", 30)).items}
        assert got[reply.id].ticket is not None and got[reply.id].ticket["id"] == "T-9"
        assert got[token.id].ticket is not None and got[token.id].ticket["id"] == "T-9"
        assert got[stranger.id].ticket is None and got[other.id].ticket is None

    async def test_a_conversation_without_a_first_sender_is_joined_as_before(self, store: Store) -> None:
        """A conversation opened before the sender was kept (no sender) takes every sender's message."""
        old = make_delivery(conversation="m|mail:old@x", conversation_key="mail:old@x")
        await accept_one(store, old)
        later = make_delivery(conversation="m|mail:old@x", conversation_key="mail:old@x", sender="b@x.io",
                              sender_checked=True)
        await accept_one(store, later)
        (found,) = await store.get_conversations("mail:old@x")
        assert (found.conversation.messages, found.conversation.sender) == (2, None)
        assert [d.id for d in found.deliveries] == [old.id, later.id]

    async def test_a_message_after_the_quiet_period_starts_a_new_ticket(self, store: Store) -> None:
        """A message later than reopen_after (here -1 ms: any message is) clears the conversation's ticket, so it
        becomes a create."""
        first = make_delivery(conversation="m|k", conversation_key="k", reopen_after_ms=-1)
        await accept_one(store, first)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(first.id, "succeeded", ticket_id="T-1"), role="create"))
        second = make_delivery(conversation="m|k", conversation_key="k", reopen_after_ms=-1)
        await accept_one(store, second)
        (got,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert got.id == second.id and got.ticket is None

    async def test_a_create_recorded_without_the_lease_gives_no_ticket(self, store: Store) -> None:
        """A create's success recorded by a sender whose lease was taken is refused (LeaseLost) and leaves the
        conversation without a ticket; the lease holder's record gives it one."""
        d = make_delivery(conversation="m|k", conversation_key="k")
        await accept_one(store, d)
        await store.claim("kapture-support", 1, "slow", -1)
        assert await store.release_expired() == 1
        await store.claim("kapture-support", 1, "fresh", 60)
        with pytest.raises(LeaseLost):
            await store.record(msgspec.structs.replace(result(d.id, "succeeded", ticket_id="T-1"), role="create"),
                               owner="slow")
        (found,) = await store.get_conversations("k")
        assert found.conversation.ticket_id is None
        await store.record(msgspec.structs.replace(result(d.id, "succeeded", ticket_id="T-2"), role="create"),
                           owner="fresh")
        (found,) = await store.get_conversations("k")
        assert found.conversation.ticket_id == "T-2"

    async def test_a_result_recorded_without_an_owner_after_the_lease_went_keeps_only_the_attempt(
            self, store: Store) -> None:
        """record() without an owner for a delivery no longer in flight keeps the attempt and changes nothing else:
        not its status, role, action or body, nor its conversation's ticket."""
        d = make_delivery(conversation="m|k", conversation_key="k")
        await accept_one(store, d)
        await store.claim("kapture-support", 1, "slow", -1)
        assert await store.release_expired() == 1
        await store.record(msgspec.structs.replace(result(d.id, "succeeded", ticket_id="T-1"), role="create",
                                                   action="update_ticket", body={"comment": "late"}))
        detail = await store.get_delivery(d.id)
        assert (detail.delivery.status, detail.delivery.attempts, detail.delivery.role) == ("pending", 1, None)
        assert (detail.delivery.action, detail.body, detail.delivery.ticket_id) == (d.action, d.body, None)
        assert [a.n for a in detail.attempts] == [1]
        (found,) = await store.get_conversations("k")
        assert found.conversation.ticket_id is None

    async def test_get_conversations_lists_its_deliveries_in_order(self, store: Store) -> None:
        """A conversation is found by its key or scoped id, with its ticket, message count and deliveries."""
        first, second = (make_delivery(conversation="m|k", conversation_key="k") for _ in range(2))
        await accept_one(store, first)
        await accept_one(store, second)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(first.id, "succeeded", ticket_id="T-9"), role="create"))
        for key in ("k", "m|k"):
            (found,) = await store.get_conversations(key)
            c = found.conversation
            got = (c.id, c.key, c.mapping, c.destination, c.messages, c.ticket_id)
            assert got == ("m|k", "k", "contact-to-kapture", "kapture-support", 2, "T-9"), got
            assert [d.id for d in found.deliveries] == [first.id, second.id]
        assert await store.get_conversations("nothing") == []
        listed = await store.list_deliveries(DeliveryFilter(conversation="m|k"))
        assert sorted(r.id for r in listed) == sorted([first.id, second.id])

    async def test_events_without_deliveries_are_listed_as_unmatched(self, store: Store) -> None:
        """An event stored with no delivery is listed by list_unmatched, newest first; others are not."""
        lone, other = make_event(), make_event()
        assert not (await store.accept(lone, [], WEEK)).duplicate
        await accept_one(store, make_delivery(), event=other)
        later = make_event()
        await store.accept(later, [], WEEK)
        assert [e.id for e in await store.list_unmatched()] == [later.id, lone.id]
        assert [e.id for e in await store.list_unmatched(limit=10, before_id=later.id)] == [lone.id]
    async def test_accept_refuses_text_that_is_not_utf8_before_writing_anything(self, store: Store) -> None:
        """An event or delivery body holding a lone surrogate raises UnicodeEncodeError and stores nothing:
        intake relies on it to store the event again with that text escaped."""
        bad = [(make_event(note="x\udcff"), make_delivery()), (make_event(dedup_key="k\udcff"), make_delivery()),
               (make_event(), make_delivery(body={"title": "x\ud800"}))]
        for event, delivery in bad:
            with pytest.raises(UnicodeEncodeError):
                await store.accept(event, [delivery], WEEK)
            with pytest.raises(NotFound):
                await store.get_event(event.id)
        assert await store.list_deliveries(DeliveryFilter()) == []
        ok, _ = await accept_one(store, event=make_event(dedup_key="k\\xff"))
        assert (await store.get_event(ok.id)).dedup_key == "k\\xff"

    async def test_accept_refuses_data_nested_past_the_encoder_before_writing_anything(self, store: Store) -> None:
        """An event payload or delivery body nested deeper than the JSON encoder follows raises StoreRefused (the
        data's fault: intake answers 422), never a RecursionError, and stores nothing; its nonce stays unused."""
        deep: dict[str, Any] = {"leaf": "x"}
        for _ in range(5000):
            deep = {"a": deep}
        bad = [(make_event(dedup_key="deep-1", envelope=deep), make_delivery(), nonce("tok-deep", "body-a")),
               (make_event(), make_delivery(body={"title": deep}), None)]
        for event, delivery, signed in bad:
            with pytest.raises(StoreRefused, match="nest") as refused:
                await store.accept(event, [delivery], WEEK, signed)
            assert refused.value.code == "nested_too_deeply"
            with pytest.raises(NotFound):
                await store.get_event(event.id)
        assert await store.list_deliveries(DeliveryFilter()) == []
        retry = await store.accept(make_event(dedup_key="deep-1"), [make_delivery()], WEEK, nonce("tok-deep", "b"))
        assert (retry.duplicate, retry.replayed) == (False, False)

    # -- text holding a NUL (PostgreSQL's text refuses it) ---------------------------------------

    async def test_a_dedup_key_holding_a_nul_is_kept_written_out_and_still_matches(self, store: Store) -> None:
        """A dedup key holding a NUL is stored written out (`\\0~`, the NUL `\\x00`; in its event too), and the same
        key again is a duplicate of that event, while a key holding `\\x00` as text is not; the payload keeps its NUL
        as it came."""
        first = make_event(dedup_key="id-\x00-1", subject="Router\x00down")
        await accept_one(store, event=first)
        stored = await store.get_event(first.id)
        assert (stored.dedup_key, stored.payload) == ("\\0~id-\\x00-1", {"subject": "Router\x00down"})
        res = await store.accept(make_event(dedup_key="id-\x00-1"), [make_delivery()], WEEK)
        assert (res.duplicate, res.event_id) == (True, first.id)
        literal = await store.accept(make_event(dedup_key="id-\\x00-1"), [make_delivery()], WEEK)
        assert literal.duplicate is False

    async def test_a_conversation_key_holding_a_nul_is_kept_written_out_and_finds_itself(self, store: Store) -> None:
        """Two messages of a conversation whose key holds a NUL (a Message-ID, a chat id) are one conversation,
        kept with the NUL written `\\x00`, found by that key and by the key as it came, which lists them too; a
        ticket their message names the same."""
        conv, key = "m|mail:r\x00t@x", "mail:r\x00t@x"
        first, second = (make_delivery(conversation=conv, conversation_key=key, known_ticket="7\x001")
                         for _ in range(2))
        await accept_one(store, first)
        await accept_one(store, second)
        for asked in (key, "\\0~mail:r\\x00t@x", conv, "\\0~m|mail:r\\x00t@x"):
            (found,) = await store.get_conversations(asked)
            assert (found.conversation.id, found.conversation.key, found.conversation.messages) == (
                "\\0~m|mail:r\\x00t@x", "\\0~mail:r\\x00t@x", 2)
            assert found.conversation.ticket_id == "\\0~7\\x001"
            assert [d.id for d in found.deliveries] == [first.id, second.id]
        for shown in (conv, "\\0~m|mail:r\\x00t@x"):
            listed = await store.list_deliveries(DeliveryFilter(conversation=shown))
            assert sorted(r.id for r in listed) == sorted([first.id, second.id])
            assert {r.conversation for r in listed} == {"\\0~m|mail:r\\x00t@x"}
        assert await store.get_conversations("mail:r\\x00t@x") == []  # the text `\\x00` is another key
        (head,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert head.id == first.id and head.ticket is not None and head.ticket["id"] == "\\0~7\\x001"

    async def test_a_key_holding_a_nul_and_one_holding_its_written_form_are_two_conversations(
            self, store: Store) -> None:
        """A conversation key holding a NUL and one holding the text `\\x00` where the NUL was (a Message-ID a
        sender wrote so) are kept apart: two conversations, each message the head of its own;
        so is a key beginning with the written form's mark."""
        keys = ("mail:r\x00t@x", "mail:r\\x00t@x", "\\0~mail:r\\x00t@x")
        made = [make_delivery(conversation=f"m|{key}", conversation_key=key) for key in keys]
        for d in made:
            await accept_one(store, d)
        claimed = (await store.claim("kapture-support", 10, "w", 30)).items
        assert sorted(c.id for c in claimed) == sorted(d.id for d in made)  # each the head of its own
        ids = {(await row(store, d.id)).conversation for d in made}
        assert ids == {"\\0~m|mail:r\\x00t@x", "m|mail:r\\x00t@x", "m|\\0~mail:r\\x00t@x"}
        # As the store shows a written key: the first; and as the third came, which is the same text.
        marked = await store.get_conversations("\\0~mail:r\\x00t@x")
        assert [c.conversation.id for c in marked] == ["\\0~m|mail:r\\x00t@x", "m|\\0~mail:r\\x00t@x"]
        (own,) = await store.get_conversations("\\0~\\\\0~mail:r\\\\x00t@x")  # the third key, as it is kept
        assert own.conversation.id == "m|\\0~mail:r\\x00t@x"

    async def test_a_render_error_holding_a_nul_is_kept_written_out(self, store: Store) -> None:
        """A dead delivery's error quoting a NUL of the payload is stored with it written `\\x00`."""
        dead = make_delivery(body=None, status="dead", error="title: bad value 'a\x00b'")
        await accept_one(store, dead)
        assert (await row(store, dead.id)).last_error == "\\0~title: bad value 'a\\x00b'"

    async def test_what_a_vendor_answers_holding_a_nul_is_recorded_written_out(self, store: Store) -> None:
        """An attempt whose error, answer excerpt and ticket references hold a NUL is recorded with each written
        `\\x00`, on the delivery, its attempt and its conversation alike; the exchange keeps its NUL as it came."""
        d = make_delivery(conversation="m|k", conversation_key="k")
        await accept_one(store, d)
        await store.claim("kapture-support", 1, "w", 30)
        sent = {"request": {"body": "a\x00b"}, "response_headers": {}}
        await store.record(msgspec.structs.replace(
            result(d.id, "succeeded", error="vendor said \x00", ticket_id="T\x001"), role="create",
            response_excerpt='{"id": "T\x001"}', ticket_key="#\x00", ticket_uuid="u\x00", exchange=sent), owner="w")
        detail = await store.get_delivery(d.id)
        got = detail.delivery
        assert (got.last_error, got.ticket_id, got.ticket_key, got.ticket_uuid) == (
            "\\0~vendor said \\x00", "\\0~T\\x001", "\\0~#\\x00", "\\0~u\\x00")
        (attempt,) = detail.attempts
        assert (attempt.error, attempt.response_excerpt, attempt.exchange) == (
            "\\0~vendor said \\x00", '\\0~{"id": "T\\x001"}', sent)
        (conv,) = await store.get_conversations("k")
        assert (conv.conversation.ticket_id, conv.conversation.ticket_key, conv.conversation.ticket_uuid) == (
            "\\0~T\\x001", "\\0~#\\x00", "\\0~u\\x00")

    async def test_an_operators_mark_holding_a_nul_is_kept_written_out(self, store: Store) -> None:
        """A delivery marked succeeded with a ticket and note holding a NUL keeps them written `\\x00`; so does an
        audit entry's actor and target, its detail keeping its NUL as it came."""
        _, (d,) = await accept_one(store)
        marked = result(d, "succeeded", http_status=None, classification="marked", error="by ops: \x00",
                        ticket_id="T\x00")
        assert await store.mark_succeeded(d, marked) is True
        detail = await store.get_delivery(d)
        assert (detail.delivery.ticket_id, detail.delivery.last_error, detail.attempts[-1].error) == (
            "\\0~T\\x00", "\\0~by ops: \\x00", "\\0~by ops: \\x00")
        entry = AuditEntry(id=new_id("aud"), at_ms=now_ms(), actor="o\x00ps", action="mark_succeeded",
                           target=f"{d}\x00", detail={"note": "\x00"})
        await store.add_audit(entry)
        (kept,) = await store.list_audit()
        assert (kept.actor, kept.target, kept.detail) == ("\\0~o\\x00ps", f"\\0~{d}\\x00", {"note": "\x00"})

    async def test_a_nonce_holding_a_nul_is_kept_written_out_and_still_matches(self, store: Store) -> None:
        """A nonce holding a NUL is taken again by its own request and refused to another one."""
        first = await store.accept(make_event(), [make_delivery()], WEEK, nonce("tok-\x00", "body-a"))
        again = await store.accept(make_event(), [make_delivery()], WEEK, nonce("tok-\x00", "body-a"))
        other = await store.accept(make_event(), [make_delivery()], WEEK, nonce("tok-\x00", "body-b"))
        assert (first.replayed, again.replayed, other.replayed) == (False, False, True)

    # -- retention ------------------------------------------------------------------------------

    async def test_purge_deletes_settled_events_with_their_deliveries_and_attempts(self, store: Store) -> None:
        """An event whose deliveries all succeeded before the cutoff goes with them and their attempts, and so
        does an event that had no delivery; pending work stays."""
        done, done_d = await settled_event(store)
        bare, _ = await accept_one(store)  # one delivery, still pending
        nothing = make_event()
        assert (await store.accept(nothing, [], WEEK)).deliveries == 0
        got = await store.purge(Cutoffs(events_ms=after_now()), 500)
        assert (got.events, got.deliveries, got.attempts, got.busy) == (2, 1, 1, False)
        assert not await kept(store, done) and not await kept(store, nothing.id)
        with pytest.raises(NotFound):
            await store.get_delivery(done_d)
        assert await kept(store, bare.id)
        assert (await store.purge(Cutoffs(events_ms=after_now()), 500)).events == 0

    async def test_purge_never_touches_pending_or_in_flight_work(self, store: Store) -> None:
        """An event with any delivery pending or in flight stays, even when its other deliveries succeeded."""
        mixed_done, mixed_waiting = make_delivery(destination="d-a"), make_delivery(destination="d-b")
        mixed, _ = await accept_one(store, mixed_done, mixed_waiting)
        await settle(store, mixed_done.id, "succeeded", "d-a")
        flying = make_delivery(destination="d-c")
        leased, _ = await accept_one(store, flying)
        assert len((await store.claim("d-c", 10, "w", 30)).items) == 1
        got = await store.purge(Cutoffs(events_ms=after_now(), dead_ms=after_now(), attempts_ms=after_now()), 500)
        assert (got.events, got.deliveries) == (0, 0)
        assert await kept(store, mixed.id) and await kept(store, leased.id)
        assert (await row(store, flying.id)).status == "in_flight"
        assert [a.n for a in (await store.get_delivery(mixed_done.id)).attempts] == [1]

    async def test_dead_deliveries_keep_their_event_for_the_dead_limit(self, store: Store) -> None:
        """An event with a dead delivery goes only by the dead cutoff (None keeps it), whatever the events one."""
        dead, _ = await settled_event(store, "dead")
        ok, _ = await settled_event(store)
        got = await store.purge(Cutoffs(events_ms=after_now(), dead_ms=None), 500)
        assert got.events == 1 and not await kept(store, ok) and await kept(store, dead)
        assert (await store.purge(Cutoffs(events_ms=after_now(), dead_ms=now_ms() - 3_600_000), 500)).events == 0
        assert await kept(store, dead)
        assert (await store.purge(Cutoffs(events_ms=after_now(), dead_ms=after_now()), 500)).events == 1
        assert not await kept(store, dead)

    async def test_a_held_create_something_waits_on_keeps_its_event_past_the_dead_cutoff(self, store: Store) -> None:
        """A held create (dead in doubt: the vendor may hold its ticket) older than every cutoff stays while a later
        message of its conversation waits on it: deleted, it would let that message go as a second create (a
        duplicate ticket). A dry run counts it kept. Once nothing of the conversation is left unfinished, it goes."""
        first, second = await self._held_create(store)
        everything = Cutoffs(events_ms=after_now(), dead_ms=after_now())
        assert (await store.purge(everything, 500, dry_run=True)).events == 0
        got = await store.purge(everything, 500)
        assert (got.events, got.deliveries) == (0, 0)
        assert (await row(store, first.id)).status == "dead"
        assert (await row(store, second.id)).waiting is True
        assert (await store.claim("kapture-support", 10, "w", 30)).items == []
        gave_up = msgspec.structs.replace(result(second.id, "succeeded", http_status=None, classification="marked"),
                                          role="follow_up")
        assert await store.mark_succeeded(second.id, gave_up) is True
        got = await store.purge(Cutoffs(events_ms=after_now(), dead_ms=after_now()), 500)
        assert (got.events, got.deliveries) == (2, 2)

    async def test_a_delivery_settled_after_the_cutoff_keeps_its_event(self, store: Store) -> None:
        """The age that counts is the deliveries' last change: an old event replayed (or finished) within the
        limit stays for the whole limit."""
        d = make_delivery(destination="d-late")
        ev, _ = await accept_one(store, d)
        cutoff = tick()
        await settle(store, d.id, "succeeded", "d-late")
        assert (await store.purge(Cutoffs(events_ms=cutoff, dead_ms=cutoff), 500)).events == 0
        assert await kept(store, ev.id)
        assert (await store.purge(Cutoffs(events_ms=after_now()), 500)).events == 1

    async def test_old_attempts_are_trimmed_but_each_deliverys_latest_stays(self, store: Store) -> None:
        """Attempts older than their cutoff go from kept deliveries, except the latest of each."""
        _, (d,) = await accept_one(store)
        for n in range(3):
            await store.claim("kapture-support", 1, "w", 30)
            await store.record(result(d, "pending", http_status=500 + n, classification="retry",
                                      error=f"HTTP {500 + n}", next_attempt_at_ms=now_ms() - 1))
        cutoff = tick()
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(result(d, "pending", http_status=503, classification="retry", error="HTTP 503",
                                  next_attempt_at_ms=now_ms() + 60_000))
        got = await store.purge(Cutoffs(attempts_ms=cutoff), 500)
        assert (got.events, got.attempts) == (0, 3)
        assert [a.n for a in (await store.get_delivery(d)).attempts] == [4]
        assert (await row(store, d)).attempts == 4
        got = await store.purge(Cutoffs(attempts_ms=after_now()), 500)
        assert got.attempts == 0 and [a.n for a in (await store.get_delivery(d)).attempts] == [4]

    async def test_purge_deletes_a_conversation_once_none_of_its_deliveries_is_kept(self, store: Store) -> None:
        """A conversation goes, in the purge that deletes its last delivery or a later one, once its last message
        is older than its cutoff; one with a delivery kept (pending, or dead within the dead limit) stays, as does
        one whose last message is newer than the cutoff. A dry run counts those that would go now."""
        threads = {}
        for name in ("done", "waiting", "dead"):
            d = make_delivery(destination=f"d-{name}", conversation=f"m|chat:{name}", conversation_key=f"chat:{name}")
            await accept_one(store, d)
            threads[name] = d
        await settle(store, threads["done"].id, "succeeded", "d-done")
        await settle(store, threads["dead"].id, "dead", "d-dead")
        quiet_since = tick()
        kept_back = await store.purge(Cutoffs(events_ms=after_now(), conversations_ms=quiet_since - 60_000), 500)
        assert (kept_back.events, kept_back.conversations) == (1, 0)  # its messages gone, but not quiet long enough
        assert (await store.purge(Cutoffs(conversations_ms=after_now()), 500, dry_run=True)).conversations == 1
        got = await store.purge(Cutoffs(events_ms=after_now(), conversations_ms=after_now()), 500)
        assert got.conversations == 1
        assert await store.get_conversations("chat:done") == []
        assert [len(await store.get_conversations(k)) for k in ("chat:waiting", "chat:dead")] == [1, 1]
        got = await store.purge(Cutoffs(events_ms=after_now(), dead_ms=after_now(), conversations_ms=after_now()),
                                500)
        assert (got.events, got.conversations) == (1, 1)
        assert await store.get_conversations("chat:dead") == []
        assert len(await store.get_conversations("chat:waiting")) == 1

    async def test_a_purge_keeps_a_senders_ticket_reference_until_the_tickets_cutoff(self, store: Store) -> None:
        """A conversation that holds a ticket and knows its first sender stays past the conversations' cutoff
        until the tickets' cutoff (`tickets_ms`; None: kept), so that its sender's `[#id]` reply still follows
        up on the ticket after retention took every message of the thread; another sender's reply still gets a
        ticket of its own. Past the tickets' cutoff it goes; a conversation without a ticket or without a
        sender goes at the conversations' cutoff, as before."""
        first = make_delivery(conversation="m|mail:v1@x", conversation_key="mail:v1@x", sender="v@x.io",
                              sender_checked=True)
        chat = make_delivery(conversation="m|chat:+91", conversation_key="chat:+91")
        await accept_one(store, first, chat)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(first.id, "succeeded", ticket_id="713"), role="create"))
        await store.record(msgspec.structs.replace(result(chat.id, "succeeded", ticket_id="714"), role="create"))
        purged = await store.purge(Cutoffs(events_ms=after_now()), 500)
        assert purged.events == 1
        got = await store.purge(Cutoffs(conversations_ms=after_now()), 500)
        assert got.conversations == 1  # the chat's: no sender to answer its ticket by token
        assert await store.get_conversations("chat:+91") == []
        (kept_row,) = await store.get_conversations("mail:v1@x")
        assert (kept_row.conversation.ticket_id, kept_row.deliveries) == ("713", [])

        def token(sender: str) -> NewDelivery:
            return make_delivery(conversation="m|ticket:713", conversation_key="ticket:713", known_ticket="713",
                                 sender=sender, sender_checked=True)

        owner, stranger = token("v@x.io"), token("a@evil.io")
        await accept_one(store, owner)
        await accept_one(store, stranger)
        got_items = {c.id: c for c in (await store.claim("kapture-support", 10, "w", 30)).items}
        assert got_items[owner.id].ticket is not None and got_items[owner.id].ticket["id"] == "713"
        assert got_items[stranger.id].ticket is None
        assert (await row(store, stranger.id)).conversation == f"contact-to-kapture|split:{stranger.id}"
        for d in (owner, stranger):
            await store.record(result(d.id, "succeeded"))
        assert (await store.purge(Cutoffs(events_ms=after_now()), 500)).events == 2
        cutoff = after_now()
        assert (await store.purge(Cutoffs(conversations_ms=cutoff, tickets_ms=cutoff), 500, dry_run=True)
                ).conversations == 3
        got = await store.purge(Cutoffs(conversations_ms=cutoff, tickets_ms=cutoff), 500)
        assert got.conversations == 3
        assert [await store.get_conversations(k) for k in ("mail:v1@x", "ticket:713", f"split:{stranger.id}")] == [
            [], [], []]

    async def test_a_ticket_reference_is_kept_until_both_cutoffs_have_passed_it(self, store: Store) -> None:
        """A conversation holding a sender's ticket goes only once its last message is older than both the
        conversations' and the tickets' cutoff, whichever comes first: a tickets limit shorter than the
        conversations' (a later cutoff) does not make it go sooner."""
        first = make_delivery(conversation="m|mail:v2@x", conversation_key="mail:v2@x", sender="v@x.io",
                              sender_checked=True)
        await accept_one(store, first)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(first.id, "succeeded", ticket_id="715"), role="create"))
        assert (await store.purge(Cutoffs(events_ms=after_now()), 500)).events == 1
        for kept in (Cutoffs(conversations_ms=1, tickets_ms=after_now()),
                     Cutoffs(conversations_ms=after_now(), tickets_ms=1)):
            assert (await store.purge(kept, 500, dry_run=True)).conversations == 0
            assert (await store.purge(kept, 500)).conversations == 0
            assert len(await store.get_conversations("mail:v2@x")) == 1
        assert (await store.purge(Cutoffs(conversations_ms=after_now(), tickets_ms=after_now()), 500)
                ).conversations == 1

    async def test_only_an_email_threads_ticket_reference_outlives_its_messages(self, store: Store) -> None:
        """Only an email-keyed conversation (`mail:`, `ticket:`, `split:`) is kept past the conversations' cutoff
        for its ticket: a chat's, whose sender is the customer's phone number, and an expression's go with their
        messages even though each holds a ticket and a sender (no `[#id]` token needs them)."""
        mail = make_delivery(conversation="m|mail:v1@x", conversation_key="mail:v1@x", sender="v@x.io",
                             sender_checked=True)
        chat = make_delivery(conversation="m|chat:919876543210", conversation_key="chat:919876543210",
                             sender="919876543210")
        given = make_delivery(conversation="m|key:order-7", conversation_key="key:order-7", sender="v@x.io")
        await accept_one(store, mail, chat, given)
        await store.claim("kapture-support", 10, "w", 30)
        for n, d in enumerate((mail, chat, given)):
            await store.record(msgspec.structs.replace(result(d.id, "succeeded", ticket_id=f"71{n}"), role="create"))
        (chat_row,) = await store.get_conversations("chat:919876543210")
        assert (chat_row.conversation.ticket_id, chat_row.conversation.sender) == ("711", "919876543210")
        assert (await store.purge(Cutoffs(events_ms=after_now()), 500)).events == 1
        cutoffs = Cutoffs(conversations_ms=after_now())  # tickets_ms None: a ticket's reference kept forever
        assert (await store.purge(cutoffs, 500, dry_run=True)).conversations == 2
        assert (await store.purge(cutoffs, 500)).conversations == 2
        assert await store.get_conversations("chat:919876543210") == []
        assert await store.get_conversations("key:order-7") == []
        (kept,) = await store.get_conversations("mail:v1@x")
        assert kept.conversation.ticket_id == "710"

    async def test_destinations_of_names_each_known_deliverys_destination(self, store: Store) -> None:
        """One look-up gives the destination of each id the store has, and leaves out the others."""
        a, b = make_delivery(destination="d-a"), make_delivery(destination="d-b")
        await accept_one(store, a, b)
        assert await store.destinations_of([b.id, "dlv_missing", a.id, "dlv_\x00nul"]) == {
            a.id: "d-a", b.id: "d-b"}
        assert await store.destinations_of([]) == {}

    async def test_conversations_are_purged_in_batches(self, store: Store) -> None:
        """Each batch looks at `limit` conversations after the last one looked at; the batches go on to the end."""
        for n in range(5):
            d = make_delivery(destination="d-b", conversation=f"m|chat:{n}", conversation_key=f"chat:{n}")
            await accept_one(store, d)
            await settle(store, d.id, "succeeded", "d-b")
        cutoffs = Cutoffs(events_ms=after_now(), conversations_ms=after_now())
        assert (await store.purge(Cutoffs(events_ms=after_now()), 500)).events == 5
        total, after, batches = 0, None, 0
        while True:
            got = await store.purge(Cutoffs(conversations_ms=cutoffs.conversations_ms), 2, after=after)
            total += got.conversations
            batches += 1
            assert got.conversations <= 2
            if not got.more:
                break
            after = got.after
        assert total == 5 and batches >= 3
        assert [await store.get_conversations(f"chat:{n}") for n in range(5)] == [[]] * 5

    async def test_expired_dedup_keys_are_deleted_and_live_ones_still_match(self, store: Store) -> None:
        """Dedup keys whose window has passed go; a key within its window still answers duplicates."""
        old = make_event(dedup_key="msg-old")
        assert (await store.accept(old, [], 0)).duplicate is False
        live = make_event(dedup_key="msg-live")
        assert (await store.accept(live, [], WEEK)).duplicate is False
        got = await store.purge(Cutoffs(dedup_ms=after_now()), 500)
        assert (got.dedup, got.events) == (1, 0)
        again = await store.accept(make_event(dedup_key="msg-live"), [], WEEK)
        assert (again.duplicate, again.event_id) == (True, live.id)
        assert (await store.accept(make_event(dedup_key="msg-old"), [], WEEK)).duplicate is False
        assert (await store.purge(Cutoffs(dedup_ms=now_ms()), 500)).dedup == 0

    async def test_purge_goes_in_batches_past_the_events_it_keeps(self, store: Store) -> None:
        """A batch deletes at most `limit` events; `more` and `after` lead the next batch on, past events kept."""
        settled_ids = []
        for i in range(7):
            settled_ids.append((await settled_event(store))[0])
            if i % 2 == 0:
                await accept_one(store)  # pending: kept, and in the way of every batch that starts before it
        cutoffs = Cutoffs(events_ms=after_now())
        first = await store.purge(cutoffs, 3)
        assert first.more and first.after.events is not None and 1 <= first.events <= 3
        total, after, calls = first.events, first.after, 1
        while True:
            got = await store.purge(cutoffs, 3, after=after)
            calls += 1
            total += got.events
            after = got.after
            if not got.more:
                break
        assert total == 7 and calls == 4  # 11 events looked at, 3 a batch
        assert not any([await kept(store, e) for e in settled_ids])
        assert len(await store.list_deliveries(DeliveryFilter(status="pending"))) == 4

    async def test_attempt_trimming_goes_in_batches_past_the_attempts_it_keeps(self, store: Store) -> None:
        """Each delivery's latest attempt stays and is not looked at again: batches of `limit` go past them."""
        for _ in range(4):
            await settled_event(store, "dead")  # one attempt each: the latest, kept
        _, (d,) = await accept_one(store)
        for _ in range(3):
            await store.claim("kapture-support", 1, "w", 30)
            await store.record(result(d, "pending", http_status=500, classification="retry", error="HTTP 500",
                                      next_attempt_at_ms=now_ms() - 1))
        cutoffs = Cutoffs(attempts_ms=after_now())
        deleted, after, calls = 0, None, 0
        while True:
            got = await store.purge(cutoffs, 2, after=after)
            deleted, after, calls = deleted + got.attempts, got.after, calls + 1
            if not got.more:
                break
        assert (deleted, calls) == (2, 4)  # 7 attempts looked at, 2 a batch
        assert [a.n for a in (await store.get_delivery(d)).attempts] == [3]

    async def test_dry_run_counts_what_would_go_and_deletes_nothing(self, store: Store) -> None:
        """A dry run counts every row a purge would delete (no batch limit), and deletes none of them."""
        events = [(await settled_event(store))[0] for _ in range(3)]
        _, (waiting,) = await accept_one(store)
        for _ in range(2):
            await store.claim("kapture-support", 1, "w", 30)
            await store.record(result(waiting, "pending", http_status=500, classification="retry", error="HTTP 500",
                                      next_attempt_at_ms=now_ms() - 1))
        assert (await store.accept(make_event(dedup_key="k"), [], 0)).duplicate is False
        cutoffs = Cutoffs(events_ms=after_now(), attempts_ms=after_now(), dedup_ms=after_now())
        dry = await store.purge(cutoffs, 1, dry_run=True)
        assert (dry.events, dry.deliveries, dry.attempts, dry.dedup) == (4, 3, 4, 1)
        assert all([await kept(store, e) for e in events])
        real = await store.purge(cutoffs, 500)
        assert (real.events, real.deliveries, real.attempts, real.dedup) == (4, 3, 4, 1)

    async def test_attachment_refs_name_the_files_of_events_received_before(self, store: Store) -> None:
        """The sha256 of every attachment an event names is found, for events received before the time given."""
        a, b = "a" * 64, "b" * 64
        files = [{"name": "x.pdf", "sha256": a, "stored": True}, {"name": "link", "sha256": None, "stored": False}]
        ev = make_event(attachments=files, nested={"attachments": [{"sha256": b}]})
        await accept_one(store, event=ev)
        assert await store.attachment_refs(after_now()) == {a, b}
        assert await store.attachment_refs(int(ev.received_at.timestamp() * 1000)) == set()

    # -- unknown outcomes -------------------------------------------------------------------------

    async def test_a_taken_back_lease_leaves_the_delivery_in_doubt_since_its_claim(self, store: Store) -> None:
        """A delivery whose lease ran out (its sender died) goes back pending in doubt since its claim, counted
        as one unknown outcome, and the next claim carries that time."""
        _, (d,) = await accept_one(store)
        before = now_ms()
        await store.claim("kapture-support", 10, "crashed-worker", -1)
        assert await store.release_expired() == 1
        r = await row(store, d)
        assert r.status == "pending" and r.unknowns == 1 and r.in_doubt_since_ms is not None
        assert before <= r.in_doubt_since_ms <= now_ms()
        (item,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert item.in_doubt_since_ms == r.in_doubt_since_ms

    async def test_an_unknown_attempt_keeps_the_first_doubt_and_a_success_clears_it(self, store: Store) -> None:
        """An `unknown` attempt puts the delivery in doubt from its start (a later one keeps the earlier time);
        a success clears the doubt and counts a duplicate when the attempt says so; unknowns stay counted."""
        _, (d,) = await accept_one(store)
        first = now_ms() - 5000
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(msgspec.structs.replace(result(d, "pending", http_status=None, classification="unknown"),
                                                   started_at_ms=first, next_attempt_at_ms=0), owner="w")
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(msgspec.structs.replace(result(d, "pending", http_status=None, classification="unknown"),
                                                   next_attempt_at_ms=0), owner="w")
        r = await row(store, d)
        assert (r.in_doubt_since_ms, r.unknowns, r.duplicates) == (first, 2, 0)
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(msgspec.structs.replace(result(d, "succeeded", ticket_id="9"), duplicate=True), owner="w")
        r = await row(store, d)
        assert (r.status, r.in_doubt_since_ms, r.unknowns, r.duplicates) == ("succeeded", None, 2, 1)
        assert [a.classification for a in (await store.get_delivery(d)).attempts] == ["unknown", "unknown", "success"]

    async def test_a_plain_failure_keeps_the_doubt_and_replay_clears_it(self, store: Store) -> None:
        """A retry or a dead end after an unknown outcome leaves the delivery in doubt (the earlier send may still
        have made a ticket); an operator's replay clears it."""
        _, (d,) = await accept_one(store)
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(result(d, "pending", http_status=None, classification="unknown", next_attempt_at_ms=0))
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(result(d, "dead", classification="held", http_status=None))
        assert (await row(store, d)).in_doubt_since_ms is not None
        assert await store.replay([d]) == [d]
        r = await row(store, d)
        assert (r.status, r.in_doubt_since_ms, r.unknowns) == ("pending", None, 1)

    async def test_mark_succeeded_settles_a_held_delivery_with_its_ticket(self, store: Store) -> None:
        """mark_succeeded makes a dead (held) or pending delivery succeeded with the ticket given, its doubt
        cleared and the marking recorded as an attempt; a conversation's create gives the conversation its
        ticket. A delivery in flight or succeeded is refused (False); an unknown id raises NotFound."""
        d = make_delivery(conversation="m|k", conversation_key="k")
        later = make_delivery(conversation="m|k", conversation_key="k")
        await accept_one(store, d, later)
        await store.claim("kapture-support", 1, "w", 30)
        await store.record(result(d.id, "dead", http_status=None, classification="unknown"))
        marked = msgspec.structs.replace(result(d.id, "succeeded", http_status=None, classification="marked",
                                                error="marked succeeded by ops", ticket_id="T-1"))
        assert await store.mark_succeeded(d.id, marked) is True
        detail = await store.get_delivery(d.id)
        assert (detail.delivery.status, detail.delivery.ticket_id, detail.delivery.in_doubt_since_ms) == \
            ("succeeded", "T-1", None)
        assert (detail.attempts[-1].classification, detail.attempts[-1].error) == ("marked", "marked succeeded by ops")
        (conv,) = await store.get_conversations("k")
        assert conv.conversation.ticket_id == "T-1"
        (item,) = (await store.claim("kapture-support", 1, "w", 30)).items
        assert (item.id, (item.ticket or {}).get("id")) == (later.id, "T-1")
        assert await store.mark_succeeded(later.id, msgspec.structs.replace(marked, delivery_id=later.id)) is False
        assert await store.mark_succeeded(d.id, marked) is False
        with pytest.raises(NotFound):
            await store.mark_succeeded("dlv_none", msgspec.structs.replace(marked, delivery_id="dlv_none"))

    async def test_mark_succeeded_announces_the_conversations_destination(self, store: Store) -> None:
        """Marking a conversation's create succeeded tells the subscribers its destination (its lane wakes, and the
        conversation's next message goes), on every store; marking a delivery outside a conversation does not."""
        d, alone = make_delivery(conversation="m|k", conversation_key="k"), make_delivery()
        await accept_one(store, d, make_delivery(conversation="m|k", conversation_key="k"))
        await accept_one(store, alone)
        heard: list[str] = []
        await store.subscribe(heard.append)  # after the accepts: a shared store announces new work too
        for delivery_id in (alone.id, d.id):
            marked = result(delivery_id, "succeeded", http_status=None, classification="marked", ticket_id="T-1")
            assert await store.mark_succeeded(delivery_id, marked) is True
        await eventually(lambda: "kapture-support" in heard)
        assert heard == ["kapture-support"]

    async def test_set_ticket_gives_a_ticketless_create_and_its_conversation_the_ticket(self, store: Store) -> None:
        """set_ticket on a succeeded create whose answer named no ticket gives it the ticket (ticket_missing cleared,
        the operator's attempt recorded, still succeeded) and gives its conversation the ticket, announcing its
        destination: the thread's next message is claimed as a follow-up on it."""
        first, second = await ticketless_create(store)
        heard: list[str] = []
        await store.subscribe(heard.append)
        assert await store.set_ticket(first.id, ticket_given(first.id)) is None
        detail = await store.get_delivery(first.id)
        d = detail.delivery
        assert (d.status, d.ticket_id, d.ticket_key, d.ticket_missing, d.attempts) == (
            "succeeded", "T-1", "K-1", False, 2)
        assert (detail.attempts[-1].classification, detail.attempts[-1].error) == (
            "marked", "ticket T-1 set by ops: found at the vendor")
        (conv,) = await store.get_conversations("k")
        assert (conv.conversation.ticket_id, conv.conversation.ticket_key) == ("T-1", "K-1")
        await eventually(lambda: "kapture-support" in heard)
        (nxt,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert nxt.id == second.id and (nxt.ticket or {}).get("id") == "T-1"

    async def test_set_ticket_refuses_a_conversation_that_has_a_ticket_and_changes_nothing(
            self, store: Store) -> None:
        """When a later message made the conversation a ticket of its own, set_ticket refuses, naming the
        conversation and its ticket, and changes neither the delivery nor the conversation."""
        first, second = await ticketless_create(store)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(second.id, "succeeded", ticket_id="T-2"), role="create"))
        why_not = await store.set_ticket(first.id, ticket_given(first.id))
        assert why_not is not None and "conversation m|k has ticket 'T-2' already" in why_not
        d = await row(store, first.id)
        assert (d.ticket_id, d.ticket_missing, d.attempts) == (None, True, 1)
        (conv,) = await store.get_conversations("k")
        assert conv.conversation.ticket_id == "T-2"

    async def test_set_ticket_refuses_while_a_message_of_the_conversation_is_sent(self, store: Store) -> None:
        """While the conversation's next message is in flight (as a create: the conversation has no ticket), set_ticket
        refuses, naming it; once its attempt is recorded (retry later), the ticket is given and the message follows
        up on it."""
        first, second = await ticketless_create(store)
        (sent,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert sent.id == second.id and sent.ticket is None
        why_not = await store.set_ticket(first.id, ticket_given(first.id))
        assert why_not is not None and f"delivery {second.id} of its conversation m|k is being sent now" in why_not
        assert (await row(store, first.id)).ticket_id is None
        await store.record(result(second.id, "pending", http_status=503, classification="retry",
                                  next_attempt_at_ms=0))
        assert await store.set_ticket(first.id, ticket_given(first.id)) is None
        (nxt,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert nxt.id == second.id and (nxt.ticket or {}).get("id") == "T-1"

    async def test_set_ticket_refuses_while_a_create_of_the_conversation_is_in_doubt(self, store: Store) -> None:
        """The conversation's next message went as a create (it had no ticket) and its outcome is unknown, to be looked
        up or sent again: set_ticket refuses, naming it (it may have made the conversation's ticket, which it would
        not look up once claimed as a follow-up on the one given); once it settles with a ticket, the conversation has
        that one."""
        first, second = await ticketless_create(store)
        (sent,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert sent.id == second.id and sent.ticket is None
        await store.record(msgspec.structs.replace(
            result(second.id, "pending", http_status=None, classification="unknown", error="timed out once written"),
            next_attempt_at_ms=0), owner="w")
        why_not = await store.set_ticket(first.id, ticket_given(first.id))
        assert why_not is not None and (f"delivery {second.id} of its conversation m|k was sent as a new ticket" in
                                        why_not and "its outcome is not known" in why_not), why_not
        assert (await row(store, first.id)).ticket_id is None
        (again,) = (await store.claim("kapture-support", 10, "w", 30)).items
        assert again.id == second.id and again.ticket is None
        await store.record(msgspec.structs.replace(result(second.id, "succeeded", ticket_id="T-2"), role="create"),
                           owner="w")
        (conv,) = await store.get_conversations("k")
        assert conv.conversation.ticket_id == "T-2"
        assert "has ticket 'T-2' already" in (await store.set_ticket(first.id, ticket_given(first.id)) or "")

    async def test_set_ticket_refuses_what_is_no_ticketless_create(self, store: Store) -> None:
        """set_ticket takes only a succeeded create that names no ticket: a pending or dead delivery (mark-succeeded's),
        one with a ticket, a follow-up, a create of a round the conversation has restarted since, or one again after
        it was given a ticket are refused, each saying why; an unknown id raises NotFound."""
        _, (pending,) = await accept_one(store, make_delivery(destination="other"))
        assert "it is pending, not succeeded" in (await store.set_ticket(pending, ticket_given(pending)) or "")
        _, dead = await settled_event(store, "dead")
        assert "it is dead, not succeeded" in (await store.set_ticket(dead, ticket_given(dead)) or "")
        _, done = await settled_event(store, "succeeded")
        assert "not one to name a ticket" in (await store.set_ticket(done, ticket_given(done)) or "")
        first, second = await ticketless_create(store)
        assert await store.set_ticket(first.id, ticket_given(first.id)) is None
        assert "has ticket 'T-1' already" in (await store.set_ticket(first.id, ticket_given(first.id, "T-9")) or "")
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(second.id, "succeeded"), role="follow_up"))
        assert "it is a follow-up" in (await store.set_ticket(second.id, ticket_given(second.id)) or "")
        with pytest.raises(NotFound):
            await store.set_ticket("dlv_none", ticket_given("dlv_none"))

    async def test_set_ticket_refuses_a_create_of_an_earlier_round(self, store: Store) -> None:
        """A create answered without a ticket id whose conversation an operator reset since (or a quiet period
        restarted) is refused: its ticket is not the conversation's now."""
        first, _ = await ticketless_create(store)
        tick()
        assert len(await store.reset_conversation("k")) == 1
        why_not = await store.set_ticket(first.id, ticket_given(first.id))
        assert why_not is not None and "its conversation m|k started again after it" in why_not
        (conv,) = await store.get_conversations("k")
        assert conv.conversation.ticket_id is None

    async def test_set_ticket_gives_a_delivery_outside_conversations_its_ticket(self, store: Store) -> None:
        """A delivery outside any conversation whose answer named no ticket takes the ticket given; nothing else."""
        d = make_delivery()
        await accept_one(store, d)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(d.id, "succeeded"), ticket_missing=True))
        assert await store.set_ticket(d.id, ticket_given(d.id, ticket_key=None)) is None
        r = await row(store, d.id)
        assert (r.ticket_id, r.ticket_key, r.ticket_missing) == ("T-1", None, False)

    async def test_set_ticket_keeps_the_key_and_uuid_an_answer_gave_beside_a_dropped_id(self, store: Store) -> None:
        """A create whose answer's id was dropped but whose key and uuid were kept keeps them when the operator gives
        only the id, and its conversation takes all three; a key given replaces the one kept."""
        first = make_delivery(conversation="m|k", conversation_key="k")
        await accept_one(store, first)
        await store.claim("kapture-support", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(first.id, "succeeded"), role="create", ticket_missing=True,
                                                   ticket_key="K-0", ticket_uuid="U-0"))
        assert await store.set_ticket(first.id, ticket_given(first.id, ticket_key=None)) is None
        r = await row(store, first.id)
        assert (r.ticket_id, r.ticket_key, r.ticket_uuid) == ("T-1", "K-0", "U-0")
        (conv,) = await store.get_conversations("k")
        c = conv.conversation
        assert (c.ticket_id, c.ticket_key, c.ticket_uuid) == ("T-1", "K-0", "U-0")
        second = make_delivery(destination="other")
        await accept_one(store, second)
        await store.claim("other", 10, "w", 30)
        await store.record(msgspec.structs.replace(result(second.id, "succeeded"), ticket_missing=True,
                                                   ticket_key="K-0"))
        assert await store.set_ticket(second.id, ticket_given(second.id, ticket_key="K-9")) is None
        assert (await row(store, second.id)).ticket_key == "K-9"
