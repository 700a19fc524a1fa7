CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    channel     TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    dedup_key   TEXT,
    spam        BOOLEAN NOT NULL DEFAULT FALSE,
    data        BYTEA NOT NULL
);

CREATE TABLE dedup_keys (
    source     TEXT NOT NULL,
    key        TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (source, key)
);

CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL REFERENCES events (id),
    source          TEXT NOT NULL,
    mapping         TEXT NOT NULL,
    mapping_version TEXT NOT NULL,
    destination     TEXT NOT NULL,
    action          TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'in_flight', 'succeeded', 'dead')),
    body            BYTEA,
    options         BYTEA NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    tries           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    last_error      TEXT,
    ticket_id       TEXT
);
CREATE INDEX deliveries_due ON deliveries (destination, next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE status = 'in_flight';
CREATE INDEX deliveries_dead ON deliveries (destination, id) WHERE status = 'dead';

CREATE TABLE attempts (
    delivery_id      TEXT NOT NULL REFERENCES deliveries (id),
    n                INTEGER NOT NULL,
    started_at       BIGINT NOT NULL,
    duration_ms      DOUBLE PRECISION NOT NULL,
    http_status      INTEGER,
    response_excerpt TEXT,
    classification   TEXT NOT NULL,
    error            TEXT,
    PRIMARY KEY (delivery_id, n)
);
