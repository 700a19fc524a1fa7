-- A conversation's order is the order its deliveries reached the store, not their ids: an id holds the clock of the
-- host that made it (a clock set back between two runs would sort a reply before the message it answers). SQLite
-- gives each row its rowid as it is inserted, one more than the largest, so with the store's one writer the rowid
-- is that order, for the deliveries already stored as for new ones, at no cost to the insert. The conversation
-- indexes are made again on the conversation alone: an index entry ends with its row's rowid, so they are ordered
-- by (conversation, rowid), which the head of a conversation, a listed delivery's `waiting`, the messages a
-- follow-up counts and `conversations show` read. Made in the order 0005 and 0009 made them: of two indexes that
-- serve a look-up alike, SQLite takes the one made last, and the look-up of a conversation's unsettled deliveries
-- must take the partial one, which holds only those.
DROP INDEX deliveries_conversation;
CREATE INDEX deliveries_conversation ON deliveries (conversation) WHERE conversation IS NOT NULL;
DROP INDEX deliveries_open_conversation;
CREATE INDEX deliveries_open_conversation ON deliveries (conversation)
    WHERE conversation IS NOT NULL AND status IN ('pending', 'in_flight')
