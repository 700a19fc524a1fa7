-- A large value of a heavy accept (a large mail's event, a delivery's body quoting its text) is sent to the server a
-- piece at a time before the accept's statement, which joins its pieces into the row it writes
-- (bridge/store/pg_pieces.py): bound as one parameter, the driver copied and sent the whole value in one turn of the
-- event loop. Each piece is committed by itself, read by the accept's statement, and deleted once the accept is
-- answered; what a process that stopped meanwhile left is deleted by a later heavy accept (`staged_at`). UNLOGGED:
-- nothing in it outlives its accept, so it is not written to the WAL (a server crash empties it).
CREATE UNLOGGED TABLE accept_pieces (
    owner     TEXT NOT NULL,
    n         INTEGER NOT NULL,
    staged_at BIGINT NOT NULL,
    data      BYTEA NOT NULL,
    PRIMARY KEY (owner, n)
)
