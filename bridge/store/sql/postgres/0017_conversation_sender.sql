-- A conversation's first sender (an email's lower-cased address): a later message whose key any sender may write
-- (an email's subject token or References) joins the conversation only when it comes from that sender. NULL for
-- conversations opened before this column: they keep joining every message, as before.
ALTER TABLE conversations ADD COLUMN sender TEXT;
-- The conversations holding a vendor ticket: what a `[#id]` subject token is checked against.
CREATE INDEX conversations_ticket ON conversations (destination, ticket_id) WHERE ticket_id IS NOT NULL
