-- A destination's common admit in one statement (bridge/store/pg_coordination.py, PgGate.admit): with the breaker
-- closed, no hold and no 429 pause, grant up to `p_want` sends (with a rate limit, as many as the window has room
-- for), under the gate row's lock, as the transaction the gate runs otherwise does, statement for statement: each
-- statement here sees what was committed before it (a volatile function's snapshot is taken per statement), so
-- the slots another process took under the lock before this one count. `slots` is NULL in any other state (the
-- caller decides in a transaction of its own); with the window full, empty, and `wait_ms` until one is free.
CREATE FUNCTION gate_admit(p_destination TEXT, p_want INTEGER, p_requests INTEGER, p_window_ms BIGINT,
                           OUT slots BIGINT[], OUT wait_ms BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    g destination_gates%ROWTYPE;
    now_ms BIGINT;
    taken INTEGER;
    n INTEGER;
BEGIN
    SELECT * INTO g FROM destination_gates WHERE destination = p_destination FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO destination_gates (destination) VALUES (p_destination) ON CONFLICT DO NOTHING;
        SELECT * INTO g FROM destination_gates WHERE destination = p_destination FOR UPDATE;
    END IF;
    now_ms := (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
    IF g.held_until > now_ms OR g.breaker_state <> 'closed' OR g.paused_until > now_ms THEN
        RETURN;
    END IF;
    wait_ms := 0;
    slots := '{}';
    IF p_requests IS NULL THEN
        RETURN;
    END IF;
    DELETE FROM send_slots WHERE destination = p_destination AND at_ms < now_ms - 2 * p_window_ms;
    SELECT count(*) INTO taken FROM send_slots WHERE destination = p_destination AND at_ms > now_ms - p_window_ms;
    IF taken >= p_requests THEN
        -- the send that must leave the window before one more fits
        SELECT at_ms + p_window_ms - now_ms + 1 INTO wait_ms FROM send_slots
        WHERE destination = p_destination AND at_ms > now_ms - p_window_ms
        ORDER BY at_ms DESC OFFSET p_requests - 1 LIMIT 1;
        RETURN;
    END IF;
    n := LEAST(p_want, p_requests - taken);
    IF n > 0 THEN
        WITH granted AS (
            INSERT INTO send_slots (destination, at_ms) SELECT p_destination, now_ms FROM generate_series(1, n)
            RETURNING id)
        SELECT array_agg(id ORDER BY id) INTO slots FROM granted;
    END IF;
END
$$;
