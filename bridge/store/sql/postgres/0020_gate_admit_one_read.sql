-- gate_admit (0016) read the window twice: it counted the slots in one statement and, the window full, read the
-- slot to wait for in another, each with a snapshot of its own. A slot given back in between (its row deleted
-- without the gate row's lock: PgGate._give_back) left the second read short: no row, `wait_ms` NULL. Here one
-- statement reads both, the count and the slot the next grant waits for, from one snapshot, so that the slot to
-- wait for is among those counted; and a window full without such a slot (none can be: the defence is cheap)
-- waits 1 ms rather than say nothing.
CREATE OR REPLACE FUNCTION gate_admit(p_destination TEXT, p_want INTEGER, p_requests INTEGER, p_window_ms BIGINT,
                                      OUT slots BIGINT[], OUT wait_ms BIGINT)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    g destination_gates%ROWTYPE;
    now_ms BIGINT;
    taken INTEGER;
    nth BIGINT;
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
    -- the window's count and its p_requests-th newest slot (the send that must leave it before one more fits)
    SELECT count(*), (array_agg(at_ms ORDER BY at_ms DESC))[p_requests] INTO taken, nth
    FROM send_slots WHERE destination = p_destination AND at_ms > now_ms - p_window_ms;
    IF taken >= p_requests THEN
        wait_ms := GREATEST(COALESCE(nth + p_window_ms - now_ms + 1, 1), 1);
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
