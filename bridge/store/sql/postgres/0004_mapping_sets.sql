CREATE TABLE mapping_sets (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    version   TEXT NOT NULL,
    files     BYTEA NOT NULL,
    saved_at  BIGINT NOT NULL
);
