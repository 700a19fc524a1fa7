-- A claim's token: a lease was matched by its owner alone, so a release (or a record) of an earlier claim, late or
-- asked again after its answer was lost, could meet the claim that followed it and give it back (or write over it)
-- while its request was out. Each claim now gives its rows a token no earlier claim of the store was given (the
-- store's counter: bridge/store/sqlite.py), and release, record and extend_leases match it. Added without a
-- default: SQLite changes the table's schema only, not its rows.
ALTER TABLE deliveries ADD COLUMN lease_token INTEGER
