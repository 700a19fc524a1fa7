-- Per-destination send permissions shared by every process on this store.
-- send_slots: one row per send granted, at the database's clock; a destination limited to N per T
-- grants a send only while fewer than N of its rows lie in the last T (plus a margin). Old rows are
-- deleted as new ones are granted.
CREATE TABLE send_slots (
    id          BIGSERIAL PRIMARY KEY,
    destination TEXT NOT NULL,
    at_ms       BIGINT NOT NULL
);
CREATE INDEX send_slots_destination_at ON send_slots (destination, at_ms);
-- destination_gates: one row per destination, locked (FOR UPDATE) by whoever grants sends for it, so
-- grants are taken one process at a time; it also holds a 429's pause and the circuit breaker.
CREATE TABLE destination_gates (
    destination   TEXT PRIMARY KEY,
    paused_until  BIGINT NOT NULL DEFAULT 0,
    breaker_state TEXT NOT NULL DEFAULT 'closed' CHECK (breaker_state IN ('closed', 'open', 'half_open')),
    failures      INTEGER NOT NULL DEFAULT 0,
    opened        INTEGER NOT NULL DEFAULT 0,
    open_until    BIGINT NOT NULL DEFAULT 0,
    probe_until   BIGINT NOT NULL DEFAULT 0
);
