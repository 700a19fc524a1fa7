-- A claim's token: a lease was matched by its owner alone, so a release (or a record) of an earlier claim, late or
-- asked again after its answer was lost, could meet the claim that followed it from the same process and give it
-- back (or write over it) while its request was out. Each claim now gives its rows a token no other claim is given,
-- and release, record and extend_leases match it. A process takes its tokens a block at a time (TOKEN_BLOCK in
-- bridge/store/postgres.py): each value of lease_tokens stands for a block, so a claim costs no round trip of its
-- own for its token. The column is added without a default, which PostgreSQL records in its catalogue only: the
-- table is not rewritten. A replica older than this leaves the column as it was when it claims, and matches its
-- leases by owner as before.
CREATE SEQUENCE lease_tokens AS BIGINT;
ALTER TABLE deliveries ADD COLUMN lease_token BIGINT;
ALTER SEQUENCE lease_tokens OWNED BY deliveries.lease_token
