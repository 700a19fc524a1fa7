-- Nonces a provider signs once per request (Mailgun's token), kept while the request's timestamp is
-- within the source's tolerance: another request with the same nonce is a replay.
CREATE TABLE nonces (
    source     TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    digest     TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (source, nonce)
) WITHOUT ROWID;
CREATE INDEX nonces_expiry ON nonces (expires_at);
