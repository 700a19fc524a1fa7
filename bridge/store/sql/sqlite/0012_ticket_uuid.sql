-- A third reference a vendor gives a ticket beside its id and key (LeadSquared's `TicketId`, a UUID): kept on
-- the delivery that made it and on its conversation, where follow-ups read it as `ticket.uuid`.
ALTER TABLE deliveries ADD COLUMN ticket_uuid TEXT;
ALTER TABLE conversations ADD COLUMN ticket_uuid TEXT;
