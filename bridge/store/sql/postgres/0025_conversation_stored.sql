-- How many deliveries of each conversation the store holds, kept with the conversation: every delivery an accept
-- makes in it adds one (bridge/store/pg_batch.py: the group's upsert, _JOIN_CHECKED, a split), every one a purge
-- deletes takes one off. A follow-up's `ticket.messages`, the conversation's deliveries up to it in arrival order,
-- is then this number less those that came after it (rows.tickets_of_claimed): counting those before it read the
-- thread's whole history at each claim, the cost of a follow-up growing with the thread (a chat of thousands of
-- messages). Counted here once for the deliveries already stored. Adding the column takes the ACCESS EXCLUSIVE lock
-- on conversations first, so no accept of a thread is under way while they are counted; deliveries are only read.
ALTER TABLE conversations ADD COLUMN stored INTEGER NOT NULL DEFAULT 0;
UPDATE conversations c SET stored = g.n FROM (SELECT conversation, count(*)::int AS n FROM deliveries
    WHERE conversation IS NOT NULL GROUP BY conversation) g WHERE c.id = g.conversation
