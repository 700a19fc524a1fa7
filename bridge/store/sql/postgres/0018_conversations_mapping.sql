-- A mapping's conversations by their last message: what a reload that drops a mapping counts (mapping_backlog,
-- the conversations still open that its removal cuts off), one index range rather than a walk of the table.
CREATE INDEX conversations_mapping ON conversations (mapping, last_message_at)
