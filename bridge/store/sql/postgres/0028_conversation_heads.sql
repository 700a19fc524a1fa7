-- A claim reads a conversation's head, not the messages waiting behind it. A conversation's messages are sent one at a
-- time in arrival order (rows.head_of_conversation), and the claim walked its destination's due deliveries
-- (deliveries_due) testing each: with thousands pending in one conversation (a chat flood, a thread piled up while its
-- vendor was down) every claim of the destination read them all, and found one.
--
-- `queued` is 1 on a pending delivery stored while an earlier delivery of its conversation (by arrival) was not
-- finished (pending or in flight): it is not its conversation's head. deliveries_due, the index of the pending
-- deliveries, is made again with `queued` before the due time: the claim reads a destination's deliveries not queued,
-- in due order, without stepping over those queued, and the readers of every pending delivery (the gauges, mark_dead)
-- read it as before. A pending delivery keeps one index entry, so that an accept writes no more than before.
-- When a delivery of a conversation is finished (succeeded, dead) or deleted, the conversation's first unfinished
-- delivery is its head (or will be, once nothing is in flight): its `queued` is cleared. A delivery made pending again
-- (a replay) has it cleared too. So a head is never queued; a delivery not queued may still wait (a replayed delivery
-- earlier than it, a held create), which the claim's own test (head_of_conversation) says, as before.
--
-- `conversations.unsettled` counts a conversation's unfinished deliveries, so that a claimed follow-up's
-- `ticket.messages` counts those after it without reading them (rows.tickets_of_claimed); deliveries_settled_conversation
-- finds the finished ones after it (none, unless an operator replayed it after later ones were sent), and
-- deliveries_sending_conversation whether one of the conversation is in flight, without reading those waiting.
--
-- Kept by triggers, so that every statement that changes a delivery's status keeps them (an accept, a record, a
-- replay, a purge, an operator's verb), in any process. Each first updates the conversation's count, which locks its
-- row until the transaction ends, and only then reads the conversation's deliveries, in a statement of its own (so,
-- read committed, from a snapshot taken after the lock): an accept that queues a delivery behind one a record is
-- finishing meanwhile, in another process, reads that record's result, or the record reads the accept's delivery, and
-- a head is never left queued. The queued flag of a delivery being stored is set before it is written (no second
-- version of the row); the others' after the statement, as PostgreSQL asks of a trigger changing other rows.
ALTER TABLE deliveries ADD COLUMN queued INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN unsettled INTEGER NOT NULL DEFAULT 0;
UPDATE conversations c SET unsettled = g.n FROM (SELECT conversation, count(*)::int AS n FROM deliveries
    WHERE conversation IS NOT NULL AND status IN ('pending', 'in_flight') GROUP BY conversation) g
    WHERE c.id = g.conversation;
UPDATE deliveries d SET queued = 1 WHERE status = 'pending' AND conversation IS NOT NULL AND EXISTS (SELECT 1
    FROM deliveries o WHERE o.conversation = d.conversation AND o.status IN ('pending', 'in_flight')
    AND (o.arrival, o.id) < (d.arrival, d.id));
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (destination, queued, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_sending_conversation ON deliveries (conversation)
    WHERE conversation IS NOT NULL AND status = 'in_flight';
CREATE INDEX deliveries_settled_conversation ON deliveries (conversation, arrival, id)
    WHERE conversation IS NOT NULL AND status IN ('succeeded', 'dead');

CREATE FUNCTION deliveries_joined() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A delivery stored, or made unfinished again: counted, and queued when it is stored behind an unfinished one.
    UPDATE conversations SET unsettled = unsettled + 1 WHERE id = NEW.conversation;
    IF TG_OP = 'INSERT' THEN
        -- The conversation's first unfinished delivery, read as the first entry of deliveries_open_conversation:
        -- an EXISTS of an earlier one, all of a long conversation's rows matching its conversation, was planned as
        -- a scan of the table.
        NEW.queued := CASE WHEN NEW.status = 'pending' AND (SELECT (o.arrival, o.id) < (NEW.arrival, NEW.id)
            FROM deliveries o WHERE o.conversation = NEW.conversation AND o.status IN ('pending', 'in_flight')
            ORDER BY o.arrival, o.id LIMIT 1) THEN 1 ELSE 0 END;
    ELSE
        NEW.queued := 0;
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION deliveries_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A delivery finished or deleted: the conversation's first unfinished one is no longer queued.
    UPDATE conversations SET unsettled = unsettled - 1 WHERE id = OLD.conversation;
    UPDATE deliveries SET queued = 0 WHERE id = (SELECT o.id FROM deliveries o WHERE o.conversation = OLD.conversation
        AND o.status IN ('pending', 'in_flight') ORDER BY o.arrival, o.id LIMIT 1) AND queued = 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER deliveries_joined BEFORE INSERT ON deliveries FOR EACH ROW
    WHEN (NEW.conversation IS NOT NULL AND NEW.status IN ('pending', 'in_flight'))
    EXECUTE FUNCTION deliveries_joined();
CREATE TRIGGER deliveries_reopened BEFORE UPDATE OF status ON deliveries FOR EACH ROW
    WHEN (NEW.conversation IS NOT NULL AND OLD.status NOT IN ('pending', 'in_flight')
          AND NEW.status IN ('pending', 'in_flight'))
    EXECUTE FUNCTION deliveries_joined();
CREATE TRIGGER deliveries_finished AFTER UPDATE OF status ON deliveries FOR EACH ROW
    WHEN (OLD.conversation IS NOT NULL AND OLD.status IN ('pending', 'in_flight')
          AND NEW.status NOT IN ('pending', 'in_flight'))
    EXECUTE FUNCTION deliveries_finished();
CREATE TRIGGER deliveries_unfinished_deleted AFTER DELETE ON deliveries FOR EACH ROW
    WHEN (OLD.conversation IS NOT NULL AND OLD.status IN ('pending', 'in_flight'))
    EXECUTE FUNCTION deliveries_finished();
