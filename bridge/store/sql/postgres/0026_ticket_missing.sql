-- A delivery that succeeded without a ticket id where its vendor answers one (AttemptResult.ticket_missing): the
-- vendor made a ticket the delivery cannot name. Written by each attempt's record (the attempt's value) and cleared
-- by an operator's mark-succeeded. A constant default: PostgreSQL records it once, without rewriting the table.
ALTER TABLE deliveries ADD COLUMN ticket_missing boolean NOT NULL DEFAULT false
