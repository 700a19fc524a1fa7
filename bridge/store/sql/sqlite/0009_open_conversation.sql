-- A conversation's deliveries not yet settled: what a claim checks to find a conversation's head, and what
-- tells a listed delivery it waits, without walking the conversation's settled history.
CREATE INDEX deliveries_open_conversation ON deliveries (conversation, id)
    WHERE conversation IS NOT NULL AND status IN ('pending', 'in_flight');
