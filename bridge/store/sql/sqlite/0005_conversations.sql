-- Conversations: a mapping's thread or chat, and the vendor ticket its first message made.
CREATE TABLE conversations (
    id              TEXT PRIMARY KEY,
    key             TEXT NOT NULL,
    mapping         TEXT NOT NULL,
    destination     TEXT NOT NULL,
    messages        INTEGER NOT NULL,
    started_at      INTEGER NOT NULL,
    last_message_at INTEGER NOT NULL,
    ticket_id       TEXT,
    ticket_key      TEXT,
    ticket_at       INTEGER
);
CREATE INDEX conversations_key ON conversations (key);
ALTER TABLE deliveries ADD COLUMN conversation TEXT;
ALTER TABLE deliveries ADD COLUMN role TEXT;
CREATE INDEX deliveries_conversation ON deliveries (conversation, id) WHERE conversation IS NOT NULL;
-- How many deliveries each event made: 0 when no mapping took it (none for its source, or every `when` false).
ALTER TABLE events ADD COLUMN routed INTEGER;
CREATE INDEX events_unrouted ON events (id) WHERE routed = 0
