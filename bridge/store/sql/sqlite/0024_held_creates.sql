-- A conversation's held creates (dead while in doubt: the vendor may hold their ticket), the only deliveries the
-- second test of the head of a conversation (rows.head_of_conversation) and a listed delivery's `waiting` look for
-- while the conversation has no ticket. Walked by deliveries_conversation, that test read every earlier delivery of
-- the conversation, settled ones too: a long chat restarted after its quiet period read its whole history at each
-- claim of its create. This index holds those deliveries alone, so the look-up reads what it looks for; the
-- condition is the test's own terms (a comparison on `conversation` implies it is not NULL), so SQLite takes it.
CREATE INDEX deliveries_held_create ON deliveries (conversation)
    WHERE conversation IS NOT NULL AND status = 'dead' AND in_doubt_since IS NOT NULL AND role = 'create'
