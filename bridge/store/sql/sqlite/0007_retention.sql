-- What the retention sweep looks up: events by age (in scan order), an event's deliveries (also what
-- deleting an event checks its references with), attempts by age, and dedup keys by expiry.
CREATE INDEX events_received ON events (received_at, id);
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX attempts_started ON attempts (started_at);
CREATE INDEX dedup_keys_expiry ON dedup_keys (expires_at);
