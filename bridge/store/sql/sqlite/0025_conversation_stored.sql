-- How many deliveries of each conversation the store holds, kept with the conversation: every delivery an accept
-- makes in it adds one (bridge/store/sqlite.py, _join_conversation), every one a purge deletes takes one off. A
-- follow-up's `ticket.messages`, the conversation's deliveries up to it in arrival order, is then this number less
-- those that came after it (rows.tickets_of_claimed): counting those before it read the thread's whole history at
-- each claim, the cost of a follow-up growing with the thread (a chat of thousands of messages). Counted here once
-- for the deliveries already stored, from deliveries_conversation.
ALTER TABLE conversations ADD COLUMN stored INTEGER NOT NULL DEFAULT 0;
UPDATE conversations SET stored = (SELECT count(*) FROM deliveries d WHERE d.conversation = conversations.id)
