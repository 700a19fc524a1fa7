-- A delivery's body larger than BODY_INLINE (bridge/store/sqlite.py) is kept here, its row's body NULL: SQLite
-- writes a row whole whenever one of its columns changes, so every change of a delivery's status (a claim, a
-- record, a replay) wrote its body again, a large mail's too. A body kept apart is written when it is stored or
-- replaced, never by a status change. The bodies stored before this migration stay in their rows (moving them
-- would write them all at once, on the upgrade's start), and are read as before.
CREATE TABLE delivery_bodies (
    id   TEXT PRIMARY KEY REFERENCES deliveries (id) ON DELETE CASCADE,
    body BLOB NOT NULL
)
