-- Whose breaker probe `probe_until` holds the other processes back for (bridge/store/pg_coordination.py): a mark
-- the granting process chose. A probe given back unsent, or renewed, touches the hold only while it is still its
-- own: after a stall longer than the hold, another process may have taken the probe, which must stay the only one.
ALTER TABLE destination_gates ADD COLUMN probe_owner TEXT;
