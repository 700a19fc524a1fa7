-- A conversation's order is the order its deliveries reached the store, not their ids: an id holds the clock of the
-- host that accepted it, so with two processes whose clocks differ a reply could sort before the message it
-- answers. `arrival` is the next value of deliveries_arrival, taken by the insert itself (the column's default): a
-- delivery accepted after another's commit takes a larger one, whichever process took each. The deliveries already
-- stored get 0, the default the column is added with, which PostgreSQL (11 and later) records once rather than
-- writing into every row: the migration does not rewrite the table. A conversation is ordered by (arrival, id), so
-- those deliveries come before every later one, and among themselves in id order, the order that decided before.
-- The conversation indexes are made again on (conversation, arrival, id), which the head of a conversation, a
-- listed delivery's `waiting`, the messages a follow-up counts and `conversations show` read.
CREATE SEQUENCE deliveries_arrival AS BIGINT;
ALTER TABLE deliveries ADD COLUMN arrival BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deliveries ALTER COLUMN arrival SET DEFAULT nextval('deliveries_arrival');
ALTER SEQUENCE deliveries_arrival OWNED BY deliveries.arrival;
DROP INDEX deliveries_open_conversation;
CREATE INDEX deliveries_open_conversation ON deliveries (conversation, arrival, id)
    WHERE conversation IS NOT NULL AND status IN ('pending', 'in_flight');
DROP INDEX deliveries_conversation;
CREATE INDEX deliveries_conversation ON deliveries (conversation, arrival, id) WHERE conversation IS NOT NULL
