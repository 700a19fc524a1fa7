-- An operator's pause of a destination (the console's pause), shared by every process: admit nothing
-- while held_until (ms at the database's clock; 2^63-1: until resumed) lies ahead.
ALTER TABLE destination_gates ADD COLUMN held_until BIGINT NOT NULL DEFAULT 0;
