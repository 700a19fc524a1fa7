ALTER TABLE deliveries ADD COLUMN ticket_key TEXT;
