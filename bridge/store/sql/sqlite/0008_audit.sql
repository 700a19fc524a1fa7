CREATE TABLE audit_log (
    id      TEXT PRIMARY KEY,
    at      INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  BLOB NOT NULL
);
-- What each attempt sent and what came back (secrets redacted), as JSON: request method, URL, headers and
-- body excerpt; response headers. Empty for attempts recorded before this migration.
ALTER TABLE attempts ADD COLUMN exchange BLOB;
