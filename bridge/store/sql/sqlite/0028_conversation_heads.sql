-- A claim reads a conversation's head, not the messages waiting behind it. A conversation's messages are sent one at a
-- time in arrival order (rows.head_of_conversation), and the claim walked its destination's due deliveries
-- (deliveries_due) testing each: with thousands pending in one conversation (a chat flood, a thread piled up while its
-- vendor was down) every claim of the destination read them all, and found one.
--
-- `queued` is 1 on a pending delivery stored while an earlier delivery of its conversation was not finished (pending
-- or in flight): it is not its conversation's head. deliveries_due, the index of the pending deliveries, is made again
-- with `queued` before the due time: the claim reads a destination's deliveries not queued, in due order, without
-- stepping over those queued, and the readers of every pending delivery (the gauges, mark_dead) read it as before.
-- A pending delivery keeps one index entry, so that an accept writes no more than before.
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
-- replay, a purge, an operator's verb), but for the `queued` of a delivery being stored: a trigger cannot set the row
-- it fires for, and writing it again cost every message accepted behind another a second write of its row, so the
-- accept's insert sets it (sqlite._INSERT_DELIVERY). A delivery stored otherwise is not queued: it is read by the
-- claim, whose own test keeps it waiting, as before this migration. A trigger's statements end with "; " rather than a
-- line's end: the migration runner splits a script at each ";" that ends a line.
ALTER TABLE deliveries ADD COLUMN queued INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN unsettled INTEGER NOT NULL DEFAULT 0;
UPDATE conversations SET unsettled = (SELECT count(*) FROM deliveries d WHERE d.conversation = conversations.id
    AND d.status IN ('pending', 'in_flight'));
UPDATE deliveries SET queued = 1 WHERE status = 'pending' AND conversation IS NOT NULL AND EXISTS (SELECT 1
    FROM deliveries o WHERE o.conversation = deliveries.conversation AND o.status IN ('pending', 'in_flight')
    AND o.rowid < deliveries.rowid);
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (destination, queued, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_sending_conversation ON deliveries (conversation)
    WHERE conversation IS NOT NULL AND status = 'in_flight';
CREATE INDEX deliveries_settled_conversation ON deliveries (conversation)
    WHERE conversation IS NOT NULL AND status IN ('succeeded', 'dead');
CREATE TRIGGER deliveries_joined AFTER INSERT ON deliveries
    WHEN NEW.conversation IS NOT NULL AND (NEW.status = 'pending' OR NEW.status = 'in_flight')
BEGIN
    UPDATE conversations SET unsettled = unsettled + 1 WHERE id = NEW.conversation; END;
CREATE TRIGGER deliveries_finished AFTER UPDATE OF status ON deliveries
    WHEN NEW.conversation IS NOT NULL AND (OLD.status = 'pending' OR OLD.status = 'in_flight')
    AND NEW.status <> 'pending' AND NEW.status <> 'in_flight'
BEGIN
    UPDATE conversations SET unsettled = unsettled - 1 WHERE id = NEW.conversation; UPDATE deliveries SET queued = 0
    WHERE rowid = (SELECT o.rowid FROM deliveries o WHERE o.conversation = NEW.conversation
        AND o.status IN ('pending', 'in_flight') ORDER BY o.rowid LIMIT 1) AND queued = 1; END;
CREATE TRIGGER deliveries_reopened AFTER UPDATE OF status ON deliveries
    WHEN NEW.conversation IS NOT NULL AND OLD.status <> 'pending' AND OLD.status <> 'in_flight'
    AND (NEW.status = 'pending' OR NEW.status = 'in_flight')
BEGIN
    UPDATE conversations SET unsettled = unsettled + 1 WHERE id = NEW.conversation; UPDATE deliveries SET queued = 0
    WHERE rowid = NEW.rowid AND queued = 1; END;
CREATE TRIGGER deliveries_unfinished_deleted AFTER DELETE ON deliveries
    WHEN OLD.conversation IS NOT NULL AND (OLD.status = 'pending' OR OLD.status = 'in_flight')
BEGIN
    UPDATE conversations SET unsettled = unsettled - 1 WHERE id = OLD.conversation; UPDATE deliveries SET queued = 0
    WHERE rowid = (SELECT o.rowid FROM deliveries o WHERE o.conversation = OLD.conversation
        AND o.status IN ('pending', 'in_flight') ORDER BY o.rowid LIMIT 1) AND queued = 1; END
