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
