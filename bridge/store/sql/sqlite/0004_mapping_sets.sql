CREATE TABLE mapping_sets (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    version   TEXT NOT NULL,
    files     BLOB NOT NULL,
    saved_at  INTEGER NOT NULL
);
