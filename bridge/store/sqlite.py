"""The embedded SQLite store: WAL, durable commits, and group commit.

Writes are queued as functions. A flusher takes everything queued (up to `group_commit_max` writes or GROUP_BYTES
of what they write, _Op.size, whichever comes first; a write larger than that alone), runs
the statements on the event loop's thread (microseconds each, with no hand-over of the GIL between
threads), and runs only the COMMIT, whose fsync is the slow part, on a worker thread. Requests that
arrive meanwhile queue for the next group, and each caller's future is resolved only once its group
is on disk. A write whose statements may take longer goes alone, begun and run on the store's writer thread
(`off_loop`, a thread of its own): a replay's, cut into parts bounded as a group is; any write larger than a group (an
accept of a large mail: about 3 ms per MiB on the loop); and a heavy accept (one whose text weighs over
LARGE_ACCEPT_BYTES), encoded there as well. What that frees the loop of is the statements' time: sqlite3 runs each
step without the GIL. Encoding a value (msgspec: one call into C, about 1 ms per MiB) and binding it to a statement
(sqlite3 copies a blob whole) hold the GIL, wherever they run, so a heavy accept encodes its long strings and writes
them into their rows a piece at a time (_json_pieces, _Pieces): the loop waits for the GIL a piece at most, not a
whole mail.
Reads use a second connection on worker threads.

One process owns a store file at a time: an exclusive lock file makes that explicit, which is what
lets start-up hand every delivery left in flight straight back to the queue. The CLI still writes to it beside
the server (a replay, a delivery marked succeeded): every WATCH_SECONDS the owner asks its writer connection's
`PRAGMA data_version`, which changes only when another connection commits, and wakes its lanes when it has.

A store file deleted or replaced while open would go on taking commits into an inode nobody can
reach again, so every group commit checks that the path still names the file it opened (an `os.stat`
before and after COMMIT, on the commit thread). Once it does not, the store is lost: nothing more is
committed, every write fails with StoreUnavailable (intake answers 503), and the orphaned database,
still readable through the open connection, is copied back to its path (or, when another file has
been put there, beside it as `<name>.lost-<time>`). Only after that copy does `wait_lost` return,
telling the server to stop so that its supervisor starts it again on the restored file; when the copy
fails the process stays up, refusing work, since it holds the only copy (its log says where).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fcntl
import functools
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
import structlog

from bridge.errors import LeaseLost, NotFound, StoreLocked, StoreRefused, StoreUnavailable, named
from bridge.escaping import legacy_nul
from bridge.events import Event
from bridge.folders import folder_problem
from bridge.store.base import (
    AcceptResult,
    Arrival,
    AttemptResult,
    AuditEntry,
    ClaimBatch,
    ConversationDetail,
    ConversationRow,
    ConversationSlice,
    Cutoffs,
    DeliveryDetail,
    DeliveryFilter,
    DeliveryRow,
    NewDelivery,
    Nonce,
    PurgeCounts,
    PurgeMark,
    Store,
    StoredMappingSet,
    StoreProblem,
)
from bridge.store.pieces import DECODE_AT_ONCE_BYTES, PIECE_READ_BYTES, decode_in_pieces, json_chunks
from bridge.store.rows import (
    ATTEMPT_COLUMNS,
    CONVERSATION_COLUMNS,
    CONVERSATION_GONE,
    DELIVERY_COUNTS,
    GROUP_BYTES,
    MAPPING_CONVERSATIONS,
    NEVER,
    NEW_DELIVERY_COLUMNS,
    OLDEST_UNSETTLED,
    REAPED_IN_DOUBT,
    REFS_PAGE,
    REFS_PAGE_BYTES,
    RESET_CONVERSATION,
    ROW_WIDTH,
    SHA256_SPAN,
    TICKET_TARGET_COLUMNS,
    attachment_hashes,
    attempt_row,
    audit_entry,
    claimed_items,
    conversation_forms,
    conversation_row,
    decode_dict,
    decode_event,
    decode_files,
    delivery_row,
    doubt_after,
    encode,
    gives_ticket,
    head_of_conversation,
    in_legacy_conversation,
    kept_condition,
    last_slice,
    lease_lost,
    leases,
    lookups,
    now_ms,
    row_columns,
    sender_mismatch,
    split_conversation_id,
    status_condition,
    storable,
    storable_accept,
    storable_audit,
    storable_result,
    take_group,
    ticket_refusal,
    ticket_target,
    tickets_of_claimed,
    too_deep,
    with_tickets,
)
from bridge.store.sqlite_binds import NullsWritten
from bridge.store.sqlite_rewrites import CODE_MIGRATIONS

log = structlog.get_logger("ticketbridge.store")
ARRIVAL = "{t}.rowid"
"""What orders a conversation's deliveries (rows.head_of_conversation): the rowid SQLite gives each row as it is
inserted (one more than the largest), with the store's one writer the order the store wrote them in, at no cost to
the insert. VACUUM, VACUUM INTO and a backup keep each row's rowid (the table has indexes, so its rows are copied
with them); migration 0022 indexes a conversation's deliveries by it."""
HEAD_OF_CONVERSATION = head_of_conversation(ARRIVAL)
ROW_COLUMNS = row_columns(ARRIVAL)
TICKETS_OF_CLAIMED = tickets_of_claimed(ARRIVAL)
CLAIM = ("UPDATE deliveries SET status = 'in_flight', lease_owner = ?, lease_until = ?, updated_at = ?, "  # noqa: S608
         "lease_token = ? WHERE id IN (SELECT id FROM deliveries d WHERE status = 'pending' AND queued = 0 "
         f"AND destination = ? AND next_attempt_at <= ? AND {HEAD_OF_CONVERSATION} "
         "ORDER BY next_attempt_at, id LIMIT ?) "
         "RETURNING id, event_id, mapping, destination, action, CASE WHEN length(body) <= ? THEN body END, "
         "options, tries, attempts, next_attempt_at, conversation, in_doubt_since, role, length(body)")
NEXT_DUE = ("SELECT next_attempt_at FROM deliveries d WHERE status = 'pending' AND queued = 0 "  # noqa: S608
            f"AND destination = ? AND {HEAD_OF_CONVERSATION} ORDER BY next_attempt_at LIMIT 1")
"""A claim: a destination's due heads of conversations (and deliveries outside any), read from deliveries_due's entries
with `queued = 0` (migration 0028), so that the deliveries queued behind an earlier one of their conversation, a
conversation's backlog, are not walked; then, when none is due, when the first will be, in due order, stopping at the
first head."""
_SLICE = f"SELECT {ROW_COLUMNS}, rowid FROM deliveries WHERE conversation = ?1 "  # noqa: S608 - constants
SLICE_FIRST = _SLICE + "ORDER BY rowid LIMIT ?2"
SLICE_AFTER = _SLICE + "AND rowid > ?3 ORDER BY rowid LIMIT ?2"
SLICE_BEFORE = _SLICE + "AND rowid < ?3 ORDER BY rowid DESC LIMIT ?2"
"""A conversation's deliveries in arrival order (Store.conversation_slice): a range of the index
deliveries_conversation, which holds each delivery's rowid after its conversation, read from where the slice
starts, never counted from the conversation's first message."""
SLICE_LAST = (f"SELECT {ROW_COLUMNS}, rowid, (SELECT stored FROM conversations WHERE id = ?1) "  # noqa: S608 - constants
              "FROM deliveries WHERE conversation = ?1 ORDER BY rowid DESC LIMIT ?2")
"""A conversation's last deliveries: the same index read from its end, each row with the count the conversation
keeps of its deliveries (`conversations.stored`, migration 0025), read by its primary key in the same statement, so
from the same snapshot: how many come before the slice, without counting them."""
_KEY_OR_ID = "(key IN (?1, ?2, ?3) OR id IN (?1, ?2, ?3))"
"""A conversation looked up by any form of an operator's key or id (rows.lookups)."""
SLICE_PROBE = {op: f"SELECT EXISTS (SELECT 1 FROM deliveries WHERE conversation = ?1 AND rowid {op} ?2)"  # noqa: S608
               for op in ("<", "<=", ">", ">=")}
"""Whether the conversation has a delivery before (or after) a place: one look-up in the same index."""
SLICE_PLACE = "SELECT 1 FROM deliveries WHERE rowid = ?1 AND id = ?2 AND conversation = ?3"
"""Whether the delivery a slice starts after (or ends before) is still there. A rowid is one more than the largest
when its row is inserted, and `deliveries` has no AUTOINCREMENT: once a purge has deleted the rows with the largest
rowids (retention emptying the table, or its newest rows), their rowids are given again, to deliveries that came
later. While a place's row is there, every row inserted since has a larger rowid, so the slice is sound; once it is
gone, the conversation's later deliveries may hold rowids below it (or its own), and the place is stale."""
WRITABLE = "store.url must name a file in a folder this process can write"
BUSY_SECONDS = 10.0
BUSY_DELAY_MAX = 0.05
"""The longest a writer waits between two tries of BEGIN IMMEDIATE while another process holds the write lock."""
HAND_OVER_SECONDS = 2 * BUSY_DELAY_MAX
"""How long a store opened beside the owner (the CLI: a purge, a replay) leaves the write lock free after each of its
commits before its next BEGIN: longer than the owner waits between two tries (BUSY_DELAY_MAX), so that an owner
waiting for the lock (an intake, a lane's record) takes it between two of the CLI's transactions rather than waiting
for the CLI's whole run. Only while an owner holds the store (_owner_there): with no server running, a purge or a
replay commits back to back."""
OWNER_LOOK_SECONDS = 1.0
"""How often a store beside the owner looks again whether an owner holds the store (_owner_there), so that a server
started during a long purge is handed the write lock within about this long. A look takes the lock file's lock shared
for a moment, which a server starting then finds taken: it tries again (LOCK_TRIES)."""
LOCK_TRIES = 20
LOCK_TRY_SECONDS = 0.01
"""An owner opening the store tries LOCK_TRIES times, LOCK_TRY_SECONDS apart, to take the lock file's lock before it
says another process holds it: a CLI beside it holds the lock shared for the moment of a look (OWNER_LOOK_SECONDS),
never 0.2 s; a server holds it for its whole run."""
SMALL_GROUP = 8
NONCE_SWEEP = 32
NONCE_SWEEP_EVERY = 16
"""Every NONCE_SWEEP_EVERY-th nonce recorded deletes up to NONCE_SWEEP expired ones: two per nonce on average,
so the table shrinks back after a burst, in one statement rather than sixteen."""
RECOVERY_FREE_BYTES = 1 << 20
BODY_INLINE = 2048
"""The largest body (encoded) a delivery's row keeps; a larger one is kept in delivery_bodies (migration 0021), the
row's body NULL. SQLite writes a row whole whenever one of its columns changes: a body kept in it is written again by
every change of its status (a claim, a record, a replay), about 14 ms per MiB. A row with a body this size still fits
in one page (4 KiB), so a status change writes at most that page; a body kept apart costs its own insert when stored.
The rows stored before 0021 keep their bodies, whatever their size."""
CLAIM_READ_BYTES = 1 << 20
"""The most bytes of the bodies kept apart (BODY_INLINE) a claim's write reads, on the loop: about 1.3 ms per MiB.
The claim's other bodies are read after it on the read thread (`_large_bodies`): read by the write, 40 bodies of
0.7 MiB held the loop 31-38 ms."""
LARGE_ACCEPT_BYTES = 1 << 20
"""An accept that weighs more than this (Store.accept's `weight`: about what its event and deliveries encode to, a
large mail's text two or three times over in its event and once more in a body that quotes it) is heavy: encoded and
written on the store's writer thread, in a write by itself (see SqliteStore.accept), its long strings a piece at a
time. Below it, the loop encodes it and writes it with its group (about 1 ms per MiB to encode, 3 to write: a few
milliseconds at most, a group bounded by GROUP_BYTES), and such accepts keep sharing their groups' commits."""
WATCH_SECONDS = 0.1
"""How often the owner looks for a commit made by another process (the CLI), so that a replay run beside the server
is sent within about this long. A look reads a counter from the WAL's shared memory (4 us); with the wake-up it
needs, ten a second cost an idle server about 8 CPU seconds an hour."""
# The accept's statements bind only values of the exact types sqlite3 binds directly (str, int, bytearray): a None,
# a bytes or a bool goes through its adaptation protocol first, a registry lookup and two attribute probes (about
# 3k instructions each, six per accepted event). So a JSON column is bound as a bytearray (stored as the same
# BLOB), and the NULLs of an ordinary event and delivery are written in the statement: its dedup key, and its
# delivery's last error and conversation.
_encode_into = msgspec.json.Encoder().encode_into
_INSERT_EVENT = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_EVENT_NO_KEY = "INSERT INTO events VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?)"
_INSERT_EVENT_ZEROBLOB = "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, zeroblob(?), ?)"
_INSERT_EVENT_NO_KEY_ZEROBLOB = "INSERT INTO events VALUES (?, ?, ?, ?, ?, NULL, ?, zeroblob(?), ?)"
_INSERT_DELIVERY = (f"INSERT INTO deliveries ({NEW_DELIVERY_COLUMNS}, queued) "  # noqa: S608 - constants
                    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?8 = 'pending' AND "
                    "EXISTS (SELECT 1 FROM deliveries o WHERE o.conversation = ?15 AND o.status IN ('pending', "
                    "'in_flight')))")
"""A delivery that may be in a conversation is stored `queued` (migration 0028) when an unfinished delivery of its
conversation is stored already: written so by its insert, where a trigger, which on SQLite cannot set the row it
fires for, wrote the row a second time (and moved its index entry) for every message accepted behind another."""
_INSERT_PLAIN_DELIVERY = (f"INSERT INTO deliveries ({NEW_DELIVERY_COLUMNS}) "  # noqa: S608 - constants
                          "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL)")
_EVENT_WIDTH_NO_KEY = 8
_PLAIN_DELIVERY_WIDTH = 13
"""A delivery row's values up to its last error and conversation, the two the plain statement writes NULL."""
_INSERT_BODY = "INSERT INTO delivery_bodies (id, body) VALUES (?, ?)"
_INSERT_BODY_ZEROBLOB = "INSERT INTO delivery_bodies (id, body) VALUES (?, zeroblob(?))"
_HAS_BODY = "(body IS NOT NULL OR EXISTS (SELECT 1 FROM delivery_bodies b WHERE b.id = deliveries.id))"
# An attempt's record is bound in the same way, by NullsWritten: the values that may be None (an ordinary success's
# error, next due time and role; a retry's ticket and role) are written NULL in the statement when they are, its
# JSON is bound as bytearrays and its flag as an int.
_RECORD = NullsWritten(
    "UPDATE deliveries SET status = ?1, attempts = attempts + 1, tries = tries + ?7, "
    "next_attempt_at = COALESCE({0}, next_attempt_at), lease_owner = NULL, lease_until = NULL, "
    "updated_at = ?2, last_error = {1}, ticket_id = COALESCE({2}, ticket_id), "
    "ticket_key = COALESCE({3}, ticket_key), role = COALESCE({4}, role), action = COALESCE({5}, action), "
    "body = COALESCE({6}, body), in_doubt_since = CASE WHEN ?1 = 'succeeded' THEN NULL "
    "WHEN ?3 THEN COALESCE(in_doubt_since, ?4) ELSE in_doubt_since END, unknowns = unknowns + ?3, "
    "duplicates = duplicates + ?5, ticket_missing = ?8 "
    "WHERE id = ?6 AND status = 'in_flight' AND ({7} IS NULL OR lease_owner = {7}) "
    "AND ({8} IS NULL OR lease_token = {8}) RETURNING attempts, conversation")
_INSERT_ATTEMPT = NullsWritten(
    "INSERT INTO attempts (delivery_id, n, started_at, duration_ms, http_status, response_excerpt, classification, "
    "error, exchange) VALUES (?1, ?2, ?3, ?4, {0}, {1}, ?5, {2}, {3})")
_TICKET_OF_CONVERSATION = NullsWritten(
    "UPDATE conversations SET ticket_id = {0}, ticket_key = {1}, ticket_uuid = {2}, ticket_at = ?1 WHERE id = ?2")


REFUSED: tuple[type[BaseException], ...] = (sqlite3.DataError, sqlite3.IntegrityError, OverflowError)
"""What SQLite (and Python's sqlite3 module, binding a value) raises for a statement refused for its data, which the
same data meets on every try: DataError (a string or blob past SQLITE_LIMIT_LENGTH, "string or blob too big"),
IntegrityError (a constraint the row breaks: the code expects none, as a duplicate dedup key, nonce or conversation
is handled in its statement) and OverflowError (an int past 64 bits). Every other sqlite3.Error is the store's: a
full disk, an I/O error, a locked or corrupt file."""


_STORE_ERRORS: tuple[type[BaseException], ...] = (*REFUSED, sqlite3.Error)


def refused(exc: BaseException) -> bool:
    """Whether SQLite refused a statement for its data (REFUSED), not because the store failed."""
    return isinstance(exc, REFUSED)


def _failure(exc: BaseException) -> BaseException:
    """What a write that raised `exc` answers its caller: StoreRefused for its data, StoreUnavailable for the
    store's failure, anything else (a bug, text no store takes) as it is."""
    if refused(exc):
        return StoreRefused(f"{exc} ({type(exc).__name__})", f"SQLite {type(exc).__name__}")
    return StoreUnavailable(f"sqlite: {exc}") if isinstance(exc, sqlite3.Error) else exc


class _Op:
    """One write of a group. `inserts`, when set, is all that `fn` does: an accepted event's row, its
    deliveries' rows and the bodies kept apart from them (BODY_INLINE), the deliveries that join a conversation
    (with the time they do), and the result, which the group writes together with its neighbours' (see
    SqliteStore._run_straight). `size` is what GROUP_BYTES bounds per group: the bytes the write carries that were
    encoded before it queued. An accept's are its event's JSON and its deliveries' bodies (what the request sent; a
    delivery's options come from its mapping), a record's its error, response excerpt, follow-up body and
    exchange, a replay's the bodies it writes (SqliteStore.replay). Every other write weighs 0: a claim, a release,
    a lease's extension or reaping, a purge, an audit entry, a mapping set (small or rare, and what they write is
    not at hand before they run). `off_loop`: the write is a group by itself, its statements run on a worker
    thread rather than the event loop's: a replay's part, a large event's accept (SqliteStore.accept). A write
    larger than a group (`size` over `group_bytes`) is alone too (take_group), and so runs there as well."""

    __slots__ = ("durable", "fn", "future", "inserts", "off_loop", "size")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any], durable: bool,
                 inserts: _Inserts | None, size: int, *, off_loop: bool = False) -> None:
        self.fn = fn
        self.future = future
        self.durable = durable
        self.inserts = inserts
        self.size = size
        self.off_loop = off_loop


class _Pieces:
    """A JSON value a heavy accept encoded in pieces (_json_pieces), written into its row a piece at a time by
    SQLite's incremental blob I/O, each write run without the GIL, into a zeroblob of its size that the row's INSERT
    makes (_insert_pieces). Bound to a statement as one value, it would be copied whole with the GIL held (sqlite3
    binds a blob as SQLITE_TRANSIENT): 60 MiB held it over 35 ms."""

    __slots__ = ("chunks", "size")

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.size = sum(len(chunk) for chunk in chunks)

    def __len__(self) -> int:
        return self.size

    def write(self, conn: sqlite3.Connection, table: str, column: str, rowid: int | None) -> None:
        """Into `column` of the row `rowid` of `table`, just inserted with a zeroblob of `size` there."""
        assert rowid is not None
        with conn.blobopen(table, column, rowid) as blob:
            for chunk in self.chunks:
                blob.write(chunk)


_Json = bytearray | _Pieces
_Inserts = tuple[tuple[Any, ...], list[tuple[Any, ...]], list[tuple[str, _Json]], list[tuple[NewDelivery, int]],
                 AcceptResult]


class _Staged:
    """An off-loop write (`_Op.off_loop`) in two stages, both on the store's writer thread: `prepare` encodes what
    it writes, SQLite's write lock not yet taken, and returns the write, which runs once BEGIN IMMEDIATE has taken
    it (SqliteStore._run_off_loop): the lock is held for the statements alone. Called as any write is, it runs both
    in turn."""

    __slots__ = ("prepare",)

    def __init__(self, prepare: Callable[[], Callable[[sqlite3.Connection], Any]]) -> None:
        self.prepare = prepare

    def __call__(self, conn: sqlite3.Connection) -> Any:
        return self.prepare()(conn)


class SqliteStore(Store):
    """`owner=True` for the serving process (takes the lock, recovers in-flight work); False for CLI use."""

    records_at_once = True
    """record queues its write (`_write`) before it first waits; the flusher runs every queued write, whether or not
    its caller still waits for it, and close() lets it finish."""

    def __init__(self, path: Path, *, group_commit_max: int = 512, owner: bool = True,
                 watch_s: float = WATCH_SECONDS, shown: str | None = None) -> None:
        self.path = path
        self.shown = shown or str(path)
        """The file as a message or a log line names it: its path, or, when `store.url` took it from an environment
        variable, `shown` (`the file named by ${BRIDGE_DB}`, Config.shown_store_file), and then neither the path
        nor a file or folder beside it (its lock, its folder, a salvaged copy) is named by its path."""
        self._hidden = shown is not None
        self.group_commit_max = group_commit_max
        self.owner = owner
        self.watch_s = watch_s
        self._pending: list[_Op] = []
        self._pending_size = 0
        """The sum of the queued writes' sizes (_Op.size)."""
        self._off_loop_queued = 0
        """How many of the queued writes are `off_loop` (each a group by itself)."""
        self.group_bytes = GROUP_BYTES
        self.large_accept_bytes = LARGE_ACCEPT_BYTES
        self._flusher: asyncio.Task[None] | None = None
        self._full = True
        self._commits: queue.SimpleQueue[tuple[sqlite3.Connection, asyncio.Future[None]] | None] = queue.SimpleQueue()
        self._committer: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._closed = True
        self.batches = 0
        self.batched_ops = 0
        self._nonces_recorded = 0
        self.commit_failures = 0
        self._identity: tuple[int, int] | None = None  # (device, inode) of the file opened
        self._lost: str | None = None
        self._failing: str | None = None
        self._gone = asyncio.Event()
        self._gone_reason = ""
        self._subscribers: list[Callable[[str], None]] = []
        self._watch_timer: asyncio.TimerHandle | None = None
        self._data_version: int | None = None  # the writer's PRAGMA data_version at the last look
        self._last_token = 0
        """The last claim's token (`Claimed.token`): each claim takes the next, so none is given twice while this
        store holds the file; it starts past the tokens of the deliveries in flight when it opens."""
        self._elsewhere: asyncio.Future[Any] | None = None
        """The writer's work on another thread (its COMMIT, an off-loop write's statements), while it runs."""
        self._recovered = 0
        """How many deliveries in flight the owner gave back when it opened (recovered_at_open)."""
        self._owner_seen: tuple[float, bool] | None = None
        """Beside the owner: when (time.monotonic) this store last looked whether an owner holds the store, and
        whether one did (_beside_owner)."""
        self._committed_at: float | None = None
        """When (time.monotonic) this store's last commit ended: a store beside the owner waits HAND_OVER_SECONDS
        from then before it begins another transaction."""
        self._off_loop: ThreadPoolExecutor | None = None
        """The thread the off-loop writes run on (_run_off_loop): the store's own, so that no other work queued on
        a shared pool (the loop's default executor) keeps them waiting."""
        self._reading: ThreadPoolExecutor | None = None
        """The thread reads run on (_read; one at a time, on the one reader connection, anyway): the store's own, so
        that a read (a follow-up's event, the admin API's) never queues behind other work on a shared pool (the
        loop's default executor, which a slow disk or anything else may fill)."""

    # -- life cycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open_sync)
        self._closed = False
        self._committer = threading.Thread(target=self._commit_worker, name="sqlite-commit", daemon=True)
        self._committer.start()
        self._off_loop = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-write")
        self._reading = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-read")

    def _connect(self) -> sqlite3.Connection:
        # Statements are kept prepared per text: an attempt's record writes its NULLs into its text (sqlite_binds),
        # so a few dozen texts are in use beside the others, more than sqlite3's default of 128 would keep.
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0,
                               cached_statements=512)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _open_sync(self) -> None:
        try:
            self._make_folder()
            if self.owner:
                self._take_lock()
            writer = self._connect()
            mode = writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StoreUnavailable(f"{self.shown}: SQLite would not switch to WAL mode (got {mode!r})")
            writer.execute("PRAGMA synchronous = FULL")
            self._migrate(writer)
            self._last_token = writer.execute(
                "SELECT COALESCE(MAX(lease_token), 0) FROM deliveries WHERE status = 'in_flight'").fetchone()[0]
            if self.owner:
                moved = writer.execute(
                    "UPDATE deliveries SET status = 'pending', lease_owner = NULL, lease_until = NULL, "  # noqa: S608
                    f"next_attempt_at = MIN(next_attempt_at, ?), {REAPED_IN_DOUBT} WHERE status = 'in_flight'",
                    (now_ms(),),
                ).rowcount
                self._recovered = moved
                if moved:
                    log.warning("store.recovered_in_flight", count=moved, path=self.shown)
            # The writer runs its statements on the event loop: it must never sleep in SQLite's busy
            # handler. A busy database is retried with an asynchronous wait instead (see _begin).
            writer.execute("PRAGMA busy_timeout = 0")
            st = os.stat(self.path)
            self._identity = (st.st_dev, st.st_ino)
            self._writer = writer
            self._reader = self._connect()
        except sqlite3.Error as exc:
            self._drop_lock()
            raise StoreUnavailable(f"{self.shown}: {exc}") from exc
        except OSError as exc:  # the lock file or the database's own, on a read-only or failing file system
            self._drop_lock()
            raise StoreUnavailable(f"{self.shown}: {self._os_error(exc)}; {WRITABLE}") from exc
        except BaseException:
            self._drop_lock()
            raise

    def recovered_at_open(self) -> int:
        return self._recovered

    def _os_error(self, exc: OSError) -> str:
        """What `exc` says, without the file it names when the store's path is not to be shown (`shown`)."""
        return (exc.strerror or type(exc).__name__) if self._hidden else str(exc)

    def _make_folder(self) -> None:
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if self._hidden:  # neither the folder nor what folder_problem says of the folders on its way
                raise StoreUnavailable(f"{self.shown}: cannot make its folder: {self._os_error(exc)}; "
                                       f"{WRITABLE}") from None
            why = folder_problem(folder) or exc.strerror
            raise StoreUnavailable(f"{self.path}: cannot make its folder {folder}: {why}; {WRITABLE}") from None

    def _lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _take_lock(self) -> None:
        fd = os.open(self._lock_path(), os.O_RDWR | os.O_CREAT, 0o644)
        for tried in range(1, LOCK_TRIES + 1):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if tried < LOCK_TRIES:  # perhaps a CLI's look (_owner_there), over in microseconds
                    time.sleep(LOCK_TRY_SECONDS)
                    continue
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise StoreLocked(
                    f"{self.shown} is in use by another ticketbridge process (pid {holder}); an SQLite store "
                    "serves one process: stop the other one, or use PostgreSQL to run several"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _drop_lock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            self._lock_fd = None

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                     "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)")
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        folder = resources.files("bridge.store.sql.sqlite")
        scripts: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
            (f.name, functools.partial(_run_script, f.read_text(encoding="utf-8")))
            for f in folder.iterdir() if f.name.endswith(".sql")]
        for name, migration in sorted([*scripts, *CODE_MIGRATIONS.items()], key=lambda s: s[0]):
            version = int(name.split("_", 1)[0])
            if version in done:
                continue
            try:
                conn.execute("BEGIN IMMEDIATE")
                migration(conn)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)", (version, name, now_ms()))
                conn.execute("COMMIT")
            except sqlite3.Error:
                conn.execute("ROLLBACK")
                raise
            if done:  # an earlier version's schema, upgraded (a new one is made, not migrated)
                self.migrated = (*self.migrated, name)
            log.info("store.migrated", version=version, name=name)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watch_timer is not None:
            self._watch_timer.cancel()
            self._watch_timer = None
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._committer is not None:
            self._commits.put(None)
            await asyncio.to_thread(self._committer.join)
            self._committer = None
        if self._off_loop is not None:
            # After anything it runs (a write whose flusher was cancelled at shutdown), before the writer is closed.
            await asyncio.wrap_future(self._off_loop.submit(lambda: None))
            self._off_loop.shutdown(wait=False)
            self._off_loop = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        reader = self._reader
        if reader is not None:
            # A read may still run on a worker thread (its caller cancelled at shutdown, or started just before):
            # closing the connection under it would free what SQLite is using. Close it between reads.
            def close_reader() -> None:
                with self._read_lock:
                    self._reader = None
                    reader.close()

            await asyncio.to_thread(close_reader)
        if self._reading is not None:
            self._reading.shutdown(wait=False)  # no read left to run: the reader is closed
            self._reading = None
        self._drop_lock()

    # -- the writer thread ------------------------------------------------------------------------

    async def _write(self, fn: Callable[[sqlite3.Connection], Any], durable: bool = True,
                     inserts: _Inserts | None = None, size: int = 0, off_loop: bool = False) -> Any:
        if self._closed or self._loop is None:
            raise StoreUnavailable("the store is closed")
        if self._lost is not None:
            raise StoreUnavailable(self._lost)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.append(_Op(fn, future, durable, inserts, size, off_loop=off_loop))
        self._pending_size += size
        self._off_loop_queued += off_loop
        if self._flusher is None or self._flusher.done():
            self._flusher = self._loop.create_task(self._flush(), name="sqlite group commit")
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the requests of this turn of the loop join the group
        while self._pending:
            if len(self._pending) < SMALL_GROUP:
                await asyncio.sleep(0)  # a small group: one more turn lets writes completing now join it
            batch = self._take()
            results = await self._commit(batch)
            self.batches += 1
            self.batched_ops += len(batch)
            _resolve(batch, results)

    def _take(self) -> list[_Op]:
        """The next group, taken off the queue (which holds one write at least): its first writes, up to
        `group_commit_max` of them and `group_bytes` of their sizes, the first write whatever its size. The
        statements of a group run on the event loop's thread, so the bound is what keeps a burst of large accepts
        from holding the loop: about 3 ms per MiB. A write larger than that, alone, runs on a worker thread
        (_commit)."""
        group, self._pending, self._pending_size = take_group(self._pending, self._pending_size,
                                                              self.group_commit_max, self.group_bytes)
        if self._off_loop_queued and (cut := next((n for n, op in enumerate(group) if op.off_loop), None)) is not None:
            cut = cut or 1  # an off-loop write goes alone: first, by itself; later, the group ends before it
            if cut < len(group):
                rest = group[cut:]
                group = group[:cut]
                self._pending[:0] = rest
                self._pending_size += sum(op.size for op in rest)
            self._off_loop_queued -= sum(op.off_loop for op in group)
        return group

    def _commit_worker(self) -> None:
        """The thread that runs COMMIT (the fsync), so that the event loop never waits on the disk."""
        while (item := self._commits.get()) is not None:
            conn, future = item
            error: BaseException | None = None
            try:
                if (gone := self._moved()) is not None:
                    conn.execute("ROLLBACK")  # not into a file nobody will read again
                    error = self._lose(conn, gone)
                else:
                    conn.execute("COMMIT")
                    if (gone := self._moved()) is not None:  # deleted while committing: not durable either
                        error = self._lose(conn, gone)
            except BaseException as exc:
                error = exc
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(_settle, future, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def _moved(self) -> str | None:
        """Why the store's path no longer names the file opened; None while it does."""
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            return f"{self.shown} was deleted while the store was open"
        except OSError:
            return None  # not a sign of loss by itself; the commit says whether the disk works
        if (st.st_dev, st.st_ino) != self._identity:
            return f"{self.shown} was replaced by another file while the store was open"
        return None

    def _lose(self, conn: sqlite3.Connection, reason: str) -> StoreUnavailable:
        """Mark the store lost (on the commit thread), save what the orphaned file holds, and say so."""
        self._lost = f"the store is lost: {reason}; nothing more is stored until ticketbridge is restarted"
        log.error("store.lost", path=self.shown, reason=reason,
                  note="every write is refused (intake answers 503) until a restart; saving the data it held")
        try:
            saved = self._salvage(conn)
        except (OSError, sqlite3.Error) as exc:
            log.error("store.salvage_failed", path=self.shown,
                      error=self._os_error(exc) if isinstance(exc, OSError) else str(exc),
                      orphan=_orphan_fd(self.path),
                      note="this process holds the only copy of the lost database: copy it from the orphan "
                           "path before stopping the process; until then every write is refused")
        else:
            restored = saved == self.path
            log.error("store.salvaged", path=self._beside(saved), restored=restored,
                      note="the lost database was copied back to its path; the server stops so that it is "
                           "started again on it" if restored else
                           "another file now stands at the store's path; the lost database was copied beside "
                           "it; the server stops so that it is started again on the file in place")
            self._gone_reason = f"{reason}; what it held was saved to {self._beside(saved)}"
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._gone.set)
        return StoreUnavailable(self._lost)

    def _beside(self, saved: Path) -> str:
        """A file beside the store's, named as `shown` allows: its path, or the store's `shown` and what its name
        adds to the store file's (`.lost-20260101T000000Z`)."""
        if not self._hidden:
            return str(saved)
        added = saved.name.removeprefix(self.path.name)
        return self.shown if saved == self.path else f"{self.shown}, with {added!r} added to its name"

    def _salvage(self, conn: sqlite3.Connection) -> Path:
        """Copy the database through its open connection to its path when free, else beside it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.salvage-{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        target = sqlite3.connect(tmp)
        try:
            conn.backup(target)
        finally:
            target.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, self.path)  # exclusive: a file put there meanwhile is never replaced
            saved = self.path
        except FileExistsError:
            saved = self.path.with_name(f"{self.path.name}.lost-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
            os.link(tmp, saved)
        tmp.unlink()
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return saved

    def _has_room(self) -> bool:
        """Whether the disk has RECOVERY_FREE_BYTES free: after a full disk, a small commit can succeed in the
        space failed ones left in the WAL, so one success alone does not mean the store takes work again."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return True
        return st.f_bavail * st.f_frsize >= RECOVERY_FREE_BYTES

    def problem(self) -> StoreProblem | None:
        if self._lost is not None:
            return StoreProblem(kind="lost", reason=self._lost)
        if self._failing is not None:
            return StoreProblem(kind="failing", reason=f"commits fail: {self._failing}")
        return None

    async def check(self) -> StoreProblem | None:
        """A store seen failing, or whose path no longer names its file, is tried with a small write
        (which finds out for sure, on the commit path)."""
        if self._lost is None and not self._closed and (self._failing is not None or self._moved() is not None):
            with contextlib.suppress(StoreUnavailable):
                await self._write(_touch)
        return self.problem()

    async def wait_lost(self) -> str:
        await self._gone.wait()
        return self._gone_reason

    async def _commit_off_loop(self, conn: sqlite3.Connection) -> None:
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        self._elsewhere = future
        self._commits.put((conn, future))
        await asyncio.shield(future)  # a cancelled caller must not leave the connection mid-commit

    async def _begin(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, tried again while another process writes (_begin_tries), waiting asynchronously."""
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            for delay in _begin_tries(conn, exc):
                await asyncio.sleep(delay)

    async def _commit(self, batch: list[_Op]) -> list[tuple[bool, Any]]:
        """Run a group of writes in one transaction and one commit. Optimistically the whole group runs
        straight through; only when one write fails is the group run again with a savepoint around each,
        so that the failure costs that write alone."""
        conn = self._writer
        assert conn is not None
        if self._lost is not None:
            return [(False, StoreUnavailable(self._lost))] * len(batch)
        durable = any(op.durable for op in batch)
        changes = conn.total_changes
        try:
            if durable != self._full:
                # In WAL mode a NORMAL commit is atomic but may be lost on power failure; only
                # lease-taking batches use it, and losing a lease just makes the work due again.
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._full = durable
            if not self.owner:
                await self._hand_over()
            if batch[0].off_loop or (len(batch) == 1 and batch[0].size > self.group_bytes):
                # By itself (_take), or larger than a group, which take_group leaves alone: off the loop, whose turns
                # its statements would hold about 3 ms per MiB. It begins there.
                results = [(True, await self._run_off_loop(conn, batch[0].fn))]
            else:
                await self._begin(conn)
                if len(batch) == 1:
                    results = self._run_isolated(conn, batch)
                else:
                    straight = self._run_straight(conn, batch)
                    if straight is None:  # one write failed and the group was rolled back
                        await self._begin(conn)
                        straight = self._run_isolated(conn, batch)
                    results = straight
            await self._commit_off_loop(conn)
        except Exception as exc:
            self._committed_at = time.monotonic()
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            failure = _failure(exc)
            if isinstance(exc, sqlite3.Error) and not refused(exc):  # the store's failure, not the data's
                self.commit_failures += 1
                if self._failing is None:
                    log.error("store.failing", path=self.shown, error=str(exc),
                              note="/readyz answers 503 until a commit succeeds again with room on the disk")
                self._failing = str(exc)
                log.error("store.commit_failed", error=str(exc), batch=len(batch))
            results = [(False, failure)] * len(batch)
        else:
            self._committed_at = time.monotonic()
            if self._failing is not None and conn.total_changes != changes and self._has_room():
                log.info("store.recovered", path=self.shown, failed_commits=self.commit_failures)
                self._failing = None
        return results

    async def _hand_over(self) -> None:
        """Beside the owner, wait until HAND_OVER_SECONDS have passed since this store's last commit (or rollback):
        the owner, trying BEGIN at least every BUSY_DELAY_MAX, takes the write lock in between. With no owner
        holding the store (no server running), no wait."""
        if self._committed_at is not None and (wait := self._committed_at + HAND_OVER_SECONDS - time.monotonic()) > 0 \
                and self._beside_owner():
            await asyncio.sleep(wait)

    def _beside_owner(self) -> bool:
        """Whether an owner holds the store, as _owner_there last said, looked at again once OWNER_LOOK_SECONDS have
        passed since."""
        now = time.monotonic()
        if self._owner_seen is None or now - self._owner_seen[0] >= OWNER_LOOK_SECONDS:
            self._owner_seen = (now, self._owner_there())
        return self._owner_seen[1]

    def _owner_there(self) -> bool:
        """Whether a process holds the store's lock file (the owner: a running server), found by taking its lock
        shared without waiting and giving it back at once; the file left as it is (never made, never written). A
        lock file that cannot be read says an owner may be there: the CLI then hands over as before."""
        try:
            fd = os.open(self._lock_path(), os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: held
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    async def _run_off_loop(self, conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """`fn`'s statements in a transaction of their own, begun and run on the store's writer thread (`_off_loop`,
        no pool another task shares): the event loop goes on meanwhile, while the writes queued behind wait for
        the group after. BEGIN IMMEDIATE is issued there, once `fn` (a _Staged write's preparation first) is about to
        run, so SQLite's write lock is taken only then; while another process holds it, that thread waits (up to
        BUSY_SECONDS), not the loop. Nothing else uses the writer until it is done (the flusher waits for it, and
        look_for_others keeps off while it runs); COMMIT follows on the commit thread (_commit)."""
        assert self._loop is not None
        assert self._off_loop is not None

        def run() -> Any:
            write = fn.prepare() if isinstance(fn, _Staged) else fn
            _begin_waiting(conn)
            return write(conn)

        future: asyncio.Future[Any] = self._loop.run_in_executor(self._off_loop, run)
        self._elsewhere = future
        return await asyncio.shield(future)  # a cancelled caller must not leave the connection mid-statement

    @staticmethod
    def _run_straight(conn: sqlite3.Connection, batch: list[_Op]) -> list[tuple[bool, Any]] | None:
        """Every write of the open transaction; None (rolled back) when one fails. The rows of consecutive
        plain accepts (`_Op.inserts`) go in with one statement per table, before the next other write runs:
        the same rows in the same order as one accept after another, for a third of the cost per event. Their
        conversations are counted in between, one after another in arrival order: a conversation's count reads
        nothing of the events' or deliveries' rows, nor they of it."""
        results: list[tuple[bool, Any]] = []
        events: list[tuple[Any, ...]] = []
        deliveries: list[tuple[Any, ...]] = []
        bodies: list[tuple[str, _Json]] = []
        joins: list[tuple[NewDelivery, int]] = []
        try:
            for op in batch:
                if op.inserts is not None:
                    event, rows, apart, joining, result = op.inserts
                    events.append(event)
                    deliveries.extend(rows)
                    if apart:
                        bodies.extend(apart)
                    joins.extend(joining)
                    results.append((True, result))
                    continue
                if events:
                    _insert(conn, events, joins, deliveries, bodies)
                    events, joins, deliveries, bodies = [], [], [], []
                results.append((True, op.fn(conn)))
            if events:
                _insert(conn, events, joins, deliveries, bodies)
        except Exception:
            conn.execute("ROLLBACK")
            return None
        return results

    @staticmethod
    def _run_isolated(conn: sqlite3.Connection, batch: list[_Op]) -> list[tuple[bool, Any]]:
        """Every write of the open transaction, each in a savepoint so that one failure stays its own."""
        if len(batch) == 1:
            return [(True, batch[0].fn(conn))]
        results: list[tuple[bool, Any]] = []
        for op in batch:
            conn.execute("SAVEPOINT op")
            try:
                results.append((True, op.fn(conn)))
                conn.execute("RELEASE op")
            except Exception as exc:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                results.append((False, _failure(exc)))
        return results

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._closed or self._reader is None or self._reading is None:
            raise StoreUnavailable("the store is closed")
        reader = self._reader
        reading = self._reading

        def run() -> Any:
            with self._read_lock:
                if self._reader is None:
                    raise StoreUnavailable("the store is closed")
                try:
                    return fn(reader)
                except _STORE_ERRORS as exc:
                    raise _failure(exc) from exc

        return await asyncio.get_running_loop().run_in_executor(reading, contextvars.copy_context().run, run)

    # -- intake ---------------------------------------------------------------------------------

    async def accept(self, event: Event, deliveries: list[NewDelivery], dedup_window_s: float,
                     nonce: Nonce | None = None, *, weight: int = 0) -> AcceptResult:
        """An accept weighing more than `large_accept_bytes` (`weight`) is heavy: encoded and written by a write by
        itself on the store's writer thread (`off_loop`), as its JSON and its deliveries' bodies (a large mail's text,
        kept as `text` and `stripped_text`, and again in a body that quotes it) would hold the loop about 1 ms per MiB
        to encode and 3 to write. The statements run there without the GIL; the encoding holds it, so the long
        strings are encoded, and written into their rows, a piece at a time (_json_pieces): the loop waits for the
        GIL at most a piece, not 50-70 ms (a 20 MiB mail). Any other is encoded here, and written with its group; one
        that encodes to more than a group (`group_bytes`) goes alone and off the loop all the same (_commit), bound
        whole."""
        if weight > self.large_accept_bytes:
            heavy: AcceptResult = await self._write(
                _Staged(lambda: self._accept_op(event, deliveries, dedup_window_s, nonce, pieces=True)[0]),
                size=weight, off_loop=True)
            return heavy
        op, inserts, size = self._accept_op(event, deliveries, dedup_window_s, nonce)
        result: AcceptResult = await self._write(op, inserts=inserts, size=size)
        return result

    def _accept_op(self, event: Event, deliveries: list[NewDelivery], dedup_window_s: float, nonce: Nonce | None,
                   *, pieces: bool = False,
                   ) -> tuple[Callable[[sqlite3.Connection], AcceptResult], _Inserts | None, int]:
        """An accept's write (its rows encoded; with `pieces`, a heavy accept's, their long strings a piece at a time
        and written so, _json_pieces), its rows for `_run_straight` when it checks nothing first, and its size
        (_Op.size)."""
        event, deliveries, nonce = storable_accept(event, deliveries, nonce)
        received = int(event.received_at.timestamp() * 1000)
        window_ms = int(dedup_window_s * 1000)
        created = now_ms()
        blob = _json_pieces if pieces else _json_blob
        insert = _insert_pieces if pieces else _insert
        rows, apart = _delivery_rows(event, deliveries, created, blob)
        event_row = _event_row(event, received, len(rows), blob)
        joins = [(d, created) for d in deliveries if d.conversation is not None]
        stored = AcceptResult(event_id=event.id, duplicate=False, deliveries=len(rows))
        size = len(event_row[-2])  # the event's JSON, and each delivery's body (_Op.size)
        for row in rows:
            if (body := row[8]) is not None:
                size += len(body)
        for _, body in apart:
            size += len(body)

        def op(conn: sqlite3.Connection) -> AcceptResult:
            if event.dedup_key is not None:
                seen = conn.execute("SELECT event_id, expires_at FROM dedup_keys WHERE source = ? AND key = ?",
                                    (event.source, event.dedup_key)).fetchone()
                if seen is not None and seen[1] > created:
                    return AcceptResult(event_id=seen[0], duplicate=True, deliveries=0)
                if (legacy := legacy_nul(event.dedup_key)) is not None:  # a key holding a NUL, kept so before 0026
                    seen = conn.execute("SELECT event_id FROM dedup_keys WHERE source = ? AND key = ? "
                                        "AND expires_at > ?", (event.source, legacy, created)).fetchone()
                    if seen is not None:
                        return AcceptResult(event_id=seen[0], duplicate=True, deliveries=0)
            # Checked before anything is written, so that a replay leaves the transaction as it found it.
            if nonce is not None:
                if not _claim_nonce(conn, event.source, nonce, created):
                    return AcceptResult(event_id="", duplicate=False, deliveries=0, replayed=True)
                if self._nonces_recorded % NONCE_SWEEP_EVERY == 0:
                    _sweep_nonces(conn, created)
                self._nonces_recorded += 1
            if event.dedup_key is not None:
                conn.execute("INSERT OR REPLACE INTO dedup_keys VALUES (?, ?, ?, ?)",
                             (event.source, event.dedup_key, event.id, created + window_ms))
            insert(conn, [event_row], joins, rows, apart)
            return stored

        plain = event.dedup_key is None and nonce is None  # nothing to check first: it is stored, whatever the group
        return op, (event_row, rows, apart, joins, stored) if plain else None, size

    # -- delivery -------------------------------------------------------------------------------

    async def claim(self, destination: str, limit: int, owner: str, lease_s: float) -> ClaimBatch:
        """A body longer than DECODE_AT_ONCE_BYTES (quoting a large mail's text) is left out of the claim's write,
        which runs on the loop, and read once it is committed, on the read thread, a piece at a time, and decoded so
        (`_large_bodies`): read and decoded by the claim, a 40 MiB body held the loop 72-114 ms. The others, read by
        the write up to CLAIM_READ_BYTES in all (the rest so read after it), are decoded after it with a turn of the
        loop between them once they pass TURN_BYTES (`claimed_items`): read and decoded by the write, 40 bodies of
        0.7 MiB held the loop 62-64 ms. Should that read or decoding fail, or the claim be cancelled meanwhile, the
        claim's leases are given back."""
        self._last_token += 1
        token = self._last_token

        def op(conn: sqlite3.Connection) -> tuple[list[Any], list[Any], list[str], int | None]:
            now = now_ms()
            got = conn.execute(CLAIM, (owner, now + int(lease_s * 1000), now, token, destination, now,
                                       limit, DECODE_AT_ONCE_BYTES)).fetchall()
            if got:
                large = [r[0] for r in got if r[5] is None and r[13] is not None]  # a row's own (before 0021)
                if any(r[5] is None and r[13] is None for r in got):  # a body kept apart, or none yet (a follow-up's)
                    got, apart = _with_bodies(conn, got, 5, at_most=DECODE_AT_ONCE_BYTES, in_all=CLAIM_READ_BYTES)
                    large += apart
                threaded = [r[0] for r in got if r[10] is not None]
                found = conn.execute(TICKETS_OF_CLAIMED + f"({', '.join('?' * len(threaded))})",
                                     threaded).fetchall() if threaded else []
                return got, found, large, None
            first = conn.execute(NEXT_DUE, (destination,)).fetchone()
            return [], [], [], None if first is None else first[0]

        got, found, large, nxt = await self._write(op, durable=False)
        if not got:
            return ClaimBatch(items=[], next_due_ms=nxt)
        try:
            items = with_tickets(await claimed_items(got, token), found)
            if large:
                bodies: dict[str, dict[str, Any]] = await self._read(functools.partial(_large_bodies, ids=large))
                items = [msgspec.structs.replace(i, body=bodies.get(i.id, {})) if i.id in large else i for i in items]
        except BaseException:
            with contextlib.suppress(StoreUnavailable):
                await self.release([r[0] for r in got], owner=owner, tokens=[token] * len(got))
            raise
        return ClaimBatch(items=items)

    async def record(self, result: AttemptResult, *, owner: str | None = None, token: int | None = None) -> None:
        r = storable_result(result)
        role_action, role_body = (r.action, r.body) if r.role is not None else (None, None)
        unknown, duplicates = doubt_after(r)
        body = None if role_body is None else _json_blob(role_body)
        apart = body if body is not None and len(body) > BODY_INLINE else None  # written after the row (BODY_INLINE)
        exchange = None if r.exchange is None else _json_blob(r.exchange)
        size = len(r.error or "") + len(r.response_excerpt or "")  # its texts (_Op.size)
        if body is not None:
            size += len(body)
        if exchange is not None:
            size += len(exchange)

        def op(conn: sqlite3.Connection) -> None:
            now = now_ms()
            updated = conn.execute(*_RECORD.bind(
                (r.next_status, now, int(unknown), r.started_at_ms, duplicates, r.delivery_id, int(r.uses_try),
                 int(r.ticket_missing)),
                (r.next_attempt_at_ms, r.error, r.ticket_id, r.ticket_key, r.role, role_action,
                 None if apart is not None else body, owner, token)),
            ).fetchone()
            if updated is not None and body is not None:
                _put_body(conn, r.delivery_id, body)
            if updated is not None and r.ticket_uuid is not None:
                # Apart from the statement above: only a few vendors give a third reference (LeadSquared).
                conn.execute("UPDATE deliveries SET ticket_uuid = ? WHERE id = ?", (r.ticket_uuid, r.delivery_id))
            if updated is None:
                if owner is not None or token is not None:
                    if conn.execute("SELECT 1 FROM deliveries WHERE id = ?", (r.delivery_id,)).fetchone() is None:
                        raise NotFound(f"no delivery {r.delivery_id}")
                    raise LeaseLost(lease_lost(r.delivery_id, owner, token))
                # Its lease was taken back meanwhile: keep the attempt, leave the state to whoever holds it now.
                found = conn.execute("UPDATE deliveries SET attempts = attempts + 1 WHERE id = ? RETURNING attempts",
                                     (r.delivery_id,)).fetchone()
                if found is None:
                    raise NotFound(f"no delivery {r.delivery_id}")
                log.warning("store.record_without_lease", delivery_id=r.delivery_id)
                updated = (found[0], None)
            n, conversation = updated
            conn.execute(*_INSERT_ATTEMPT.bind(
                (r.delivery_id, n, r.started_at_ms, r.duration_ms, r.classification),
                (r.http_status, r.response_excerpt, r.error, exchange)))
            if conversation is not None and gives_ticket(r):
                conn.execute(*_TICKET_OF_CONVERSATION.bind((now, conversation),
                                                           (r.ticket_id, r.ticket_key, r.ticket_uuid)))

        await self._write(op, size=size)

    async def release(self, delivery_ids: list[str], *, owner: str | None = None,
                      tokens: Sequence[int] | None = None) -> None:
        if not delivery_ids:
            return
        held = leases(delivery_ids, tokens)

        def op(conn: sqlite3.Connection) -> None:
            now = now_ms()
            conn.executemany(
                "UPDATE deliveries SET status = 'pending', lease_owner = NULL, lease_until = NULL, "
                "next_attempt_at = MIN(next_attempt_at, ?1), updated_at = ?1 WHERE id = ?2 AND status = 'in_flight' "
                "AND (?3 IS NULL OR lease_owner = ?3) AND (?4 IS NULL OR lease_token = ?4)",
                [(now, i, owner, token) for i, token in held])

        await self._write(op)

    async def extend_leases(self, delivery_ids: list[str], owner: str, lease_s: float,
                            tokens: Sequence[int] | None = None) -> list[str]:
        if not delivery_ids:
            return []
        asked = leases(delivery_ids, tokens)

        def op(conn: sqlite3.Connection) -> list[str]:
            until = now_ms() + int(lease_s * 1000)
            update = ("UPDATE deliveries SET lease_until = ?1 WHERE id = ?2 AND status = 'in_flight' "
                      "AND lease_owner = ?3 AND (?4 IS NULL OR lease_token = ?4) RETURNING id")
            return [i for i, token in asked if conn.execute(update, (until, i, owner, token)).fetchone() is not None]

        held: list[str] = await self._write(op, durable=False)
        return held

    async def release_expired(self) -> int:
        def op(conn: sqlite3.Connection) -> int:
            now = now_ms()
            count: int = conn.execute(
                "UPDATE deliveries SET status = 'pending', lease_owner = NULL, lease_until = NULL, updated_at = ?, "  # noqa: S608
                f"{REAPED_IN_DOUBT} WHERE status = 'in_flight' AND lease_until < ?", (now, now)).rowcount
            return count

        count: int = await self._write(op)
        return count

    # -- inspection and replay ------------------------------------------------------------------

    async def list_deliveries(self, flt: DeliveryFilter) -> list[DeliveryRow]:
        where, args = [], []
        if flt.status is not None:
            where.append(status_condition(flt.status))
        for column, value in (("destination", flt.destination), ("source", flt.source), ("mapping", flt.mapping)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if (forms := conversation_forms(flt)) is not None:
            where.append("conversation = ?" if len(forms) == 1 else "conversation IN (?, ?)")
            args.extend(forms)
        if flt.before_id is not None:
            where.append("id < ?")
            args.append(flt.before_id)
        sql = f"SELECT {ROW_COLUMNS} FROM deliveries"  # noqa: S608 - columns are constants, values bound
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(str(flt.limit))

        def run(conn: sqlite3.Connection) -> list[DeliveryRow]:
            return [delivery_row(r) for r in conn.execute(sql, args)]

        rows: list[DeliveryRow] = await self._read(run)
        return rows

    async def get_delivery(self, delivery_id: str) -> DeliveryDetail:
        """Its event and body, when longer than DECODE_AT_ONCE_BYTES (a large mail's, a body quoting its text), are
        read a piece at a time and decoded so, as `get_event` reads an event: fetched whole and decoded at once, a
        60 MiB event and a 40 MiB body held the GIL, and so the loop, 70 ms."""
        def run(conn: sqlite3.Connection) -> DeliveryDetail:
            with _snapshot(conn):
                r = conn.execute(f"SELECT {ROW_COLUMNS}, options FROM deliveries WHERE id = ?",  # noqa: S608
                                 (delivery_id,)).fetchone()
                if r is None:
                    raise NotFound(f"no delivery {named(delivery_id)}")
                body = _body_data(conn, delivery_id)
                event = _event_data(conn, r[1])
                attempts = [attempt_row(a) for a in conn.execute(
                    f"SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id = ? ORDER BY n",  # noqa: S608
                    (delivery_id,))]
            if event is None:
                raise NotFound(f"no event {named(r[1])} for delivery {named(delivery_id)}")
            return DeliveryDetail(delivery=delivery_row(r),
                                  body=decode_in_pieces(body, decode_dict) if body is not None else None,
                                  options=decode_dict(r[ROW_WIDTH]), event=decode_in_pieces(event, decode_event),
                                  attempts=attempts)

        detail: DeliveryDetail = await self._read(run)
        return detail

    async def get_event(self, event_id: str) -> Event:
        def run(conn: sqlite3.Connection) -> Event:
            # A large mail's, read back for each follow-up of its thread: fetched whole, sqlite3 reads its pages and
            # copies it with the GIL held (60 MiB: about 200 ms); read a piece at a time, and decoded so, it is not.
            with _snapshot(conn):
                data = _event_data(conn, event_id)
            if data is None:
                raise NotFound(f"no event {named(event_id)}")
            return decode_in_pieces(data, decode_event)

        event: Event = await self._read(run)
        return event

    async def replay(
        self, delivery_ids: list[str], bodies: dict[str, tuple[dict[str, Any], str]] | None = None,
        mapping: str | None = None,
    ) -> list[str]:
        """Written in parts, each a write by itself whose statements run off the event loop's thread (`off_loop`),
        bounded as a group is: at most `group_commit_max` deliveries and `group_bytes` of what it writes besides
        their statuses, the first whatever its size (a new body; a body stored in its row before 0021, which SQLite
        writes again with the row, its size read first). So the loop goes on meanwhile, and the intake waiting
        behind a part waits for that part alone. The new bodies are encoded by the part that writes them, on its
        worker thread, as it takes its deliveries in order (`_replay`): none is encoded on the loop's thread, and no
        more than a part's are held encoded at once."""
        renamed = storable(mapping) if mapping else None
        fresh = bodies or {}
        kept: dict[str, int] = await self._read(
            functools.partial(_bodies_in_rows, delivery_ids=[i for i in delivery_ids if i not in fresh]))
        moved: list[str] = []
        rest = delivery_ids
        carried: dict[str, _Json] = {}
        while rest:
            # Its size is found as its bodies are encoded, off the loop; the part goes alone whatever it is.
            done, taken, carried = await self._write(_Staged(
                functools.partial(_replay, delivery_ids=rest, fresh=fresh, kept=kept, carried=carried,
                                  renamed=renamed, max_items=self.group_commit_max, max_bytes=self.group_bytes)),
                size=self.group_bytes, off_loop=True)
            moved.extend(done)
            rest = rest[taken:]
        return moved

    async def subscribe(self, callback: Callable[[str], None]) -> None:
        """`callback` hears "*" within `watch_s` of a commit by another process (the CLI on the same file), as well
        as the destinations `mark_succeeded` gives a ticket to."""
        self._subscribers.append(callback)
        if self._watch_timer is None and not self._closed and self._loop is not None:
            self.look_for_others()  # from now on
            self._watch_timer = self._loop.call_later(self.watch_s, self._watch)

    def _watch(self) -> None:
        # A timer, not a task: idle, a wake-up is most of what a look costs (a task's adds a fifth to it).
        assert self._loop is not None
        self._watch_timer = self._loop.call_later(self.watch_s, self._watch)  # first: a subscriber may raise
        self.look_for_others()

    def look_for_others(self) -> bool:
        """Whether another connection (another process) committed since the last look; if one did, the subscribers
        hear "*" (any lane may have work now). The writer connection is asked, on the event loop's thread where its
        statements run, and not while another thread uses it (the next look sees what this one missed):
        its `data_version` never moves for its own commits, so the server's own writes wake nothing here."""
        conn = self._writer
        if conn is None or self._lost is not None or (self._elsewhere is not None and not self._elsewhere.done()):
            return False
        try:
            version: int = conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            return False  # a locked or failing file: the commits say so; the next look tries again
        seen, self._data_version = self._data_version, version
        if seen is None or version == seen:
            return False
        for callback in self._subscribers:
            callback("*")
        return True

    async def mark_succeeded(self, delivery_id: str, attempt: AttemptResult) -> bool:
        r = storable_result(attempt)
        woken: list[str] = []  # the destination whose conversation's next message may now go

        def op(conn: sqlite3.Connection) -> bool:
            now = now_ms()
            row = conn.execute(
                "UPDATE deliveries SET status = 'succeeded', attempts = attempts + 1, updated_at = ?, last_error = ?, "
                "ticket_id = ?, ticket_key = COALESCE(?, ticket_key), ticket_uuid = COALESCE(?, ticket_uuid), "
                "in_doubt_since = NULL, ticket_missing = 0 WHERE id = ? AND status IN ('pending', 'dead') "
                "RETURNING attempts, conversation, role, destination",
                (now, r.error, r.ticket_id, r.ticket_key, r.ticket_uuid, delivery_id)).fetchone()
            if row is None:
                if conn.execute("SELECT 1 FROM deliveries WHERE id = ?", (delivery_id,)).fetchone() is None:
                    raise NotFound(f"no delivery {named(delivery_id)}")
                return False
            n, conversation, role, destination = row
            conn.execute("INSERT INTO attempts (delivery_id, n, started_at, duration_ms, http_status, "
                         "response_excerpt, classification, error, exchange) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (delivery_id, n, r.started_at_ms, 0.0, None, None, r.classification, r.error, None))
            if conversation is not None and role != "follow_up":
                conn.execute("UPDATE conversations SET ticket_id = ?, ticket_key = ?, ticket_uuid = ?, ticket_at = ? "
                             "WHERE id = ? AND ticket_id IS NULL",
                             (r.ticket_id, r.ticket_key, r.ticket_uuid, now, conversation))
                woken.append(destination)
            return True

        done: bool = await self._write(op)
        for destination in woken:  # committed: wake its lane, as PostgreSQL's NOTIFY does
            for callback in self._subscribers:
                callback(destination)
        return done

    async def set_ticket(self, delivery_id: str, attempt: AttemptResult) -> str | None:
        r = storable_result(attempt)
        woken: list[str] = []  # the destination whose conversation's next message may now go

        def op(conn: sqlite3.Connection) -> str | None:
            found = conn.execute(f"SELECT {TICKET_TARGET_COLUMNS} FROM deliveries WHERE id = ?",  # noqa: S608
                                 (delivery_id,)).fetchone()
            if found is None:
                raise NotFound(f"no delivery {named(delivery_id)}")
            d = ticket_target(found)
            c, busy = None, None
            if d.conversation is not None:
                got = conn.execute(f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE id = ?",  # noqa: S608
                                   (d.conversation,)).fetchone()
                c = None if got is None else conversation_row(got)
                sent = conn.execute("SELECT id, status = 'pending' FROM deliveries WHERE conversation = ? AND "
                                    "(status = 'in_flight' OR (status = 'pending' AND in_doubt_since IS NOT NULL)) "
                                    "ORDER BY status = 'pending' LIMIT 1", (d.conversation,)).fetchone()
                busy = None if sent is None else (sent[0], bool(sent[1]))
            why_not = ticket_refusal(d, c, busy)
            if why_not is not None:
                return why_not
            now = now_ms()
            # A key or uuid the answer gave beside an id that was dropped is kept unless one is given.
            n, key, uuid = conn.execute(
                "UPDATE deliveries SET attempts = attempts + 1, updated_at = ?, last_error = ?, ticket_id = ?, "
                "ticket_key = COALESCE(?, ticket_key), ticket_uuid = COALESCE(?, ticket_uuid), ticket_missing = 0 "
                "WHERE id = ? RETURNING attempts, ticket_key, ticket_uuid",
                (now, r.error, r.ticket_id, r.ticket_key, r.ticket_uuid, delivery_id)).fetchone()
            conn.execute("INSERT INTO attempts (delivery_id, n, started_at, duration_ms, http_status, "
                         "response_excerpt, classification, error, exchange) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (delivery_id, n, r.started_at_ms, 0.0, None, None, r.classification, r.error, None))
            if c is not None:
                conn.execute("UPDATE conversations SET ticket_id = ?, ticket_key = ?, ticket_uuid = ?, ticket_at = ? "
                             "WHERE id = ?", (r.ticket_id, key, uuid, now, c.id))
                woken.append(d.destination)
            return None

        why_not: str | None = await self._write(op)
        for destination in woken:  # committed: wake its lane, as PostgreSQL's NOTIFY does
            for callback in self._subscribers:
                callback(destination)
        return why_not

    async def mapping_backlog(self, open_since_ms: dict[str, int]) -> dict[str, dict[str, int]]:
        since = {storable(name): at for name, at in open_since_ms.items()}

        def run(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for name, at in since.items():
                for status in ("pending", "in_flight", "dead"):  # each through its partial index
                    n = conn.execute(f"SELECT COUNT(*) FROM deliveries WHERE status = '{status}' "  # noqa: S608
                                     "AND mapping = ?", (name,)).fetchone()[0]
                    if n:
                        out.setdefault(name, {})[status] = n
                n = conn.execute(MAPPING_CONVERSATIONS.format("?", "?"), (name, at)).fetchone()[0]
                if n:
                    out.setdefault(name, {})["conversations"] = n
            return out

        found: dict[str, dict[str, int]] = await self._read(run)
        return found

    async def mark_dead(self, destination: str, error: str, limit: int) -> int:
        destination, error = storable(destination), storable(error)

        def op(conn: sqlite3.Connection) -> int:
            now = now_ms()
            marked: int = conn.execute(
                "UPDATE deliveries SET status = 'dead', last_error = ?, updated_at = ? WHERE id IN "
                "(SELECT id FROM deliveries WHERE destination = ? AND status = 'pending' ORDER BY id LIMIT ?)",
                (error, now, destination, limit)).rowcount
            return marked

        marked: int = await self._write(op)
        return marked

    async def destinations_of(self, delivery_ids: list[str]) -> dict[str, str]:
        asked = {storable(i): i for i in delivery_ids}

        def run(conn: sqlite3.Connection) -> dict[str, str]:
            out: dict[str, str] = {}
            keys = list(asked)
            for start in range(0, len(keys), 500):  # bound to the statement's host parameters
                part = keys[start:start + 500]
                marks = ", ".join("?" * len(part))
                out.update((asked[i], dest) for i, dest in conn.execute(
                    f"SELECT id, destination FROM deliveries WHERE id IN ({marks})", part))  # noqa: S608
            return out

        found: dict[str, str] = await self._read(run)
        return found

    async def counts(self) -> dict[str, dict[str, int]]:
        def run(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for dest, status, n in conn.execute(
                    DELIVERY_COUNTS):
                out.setdefault(dest, {})[status] = n
            return out

        counts: dict[str, dict[str, int]] = await self._read(run)
        return counts

    async def list_unmatched(self, limit: int = 50, before_id: str | None = None) -> list[Event]:
        def run(conn: sqlite3.Connection) -> list[Event]:
            # A large mail's read and decoded a piece at a time, as get_event reads it: whole, a 60 MiB one held the
            # GIL, and so the loop, 58 ms.
            with _snapshot(conn):
                rows = conn.execute(f"SELECT rowid, {_AT_MOST.format('data')} FROM events WHERE routed = 0 "  # noqa: S608
                                    "AND id < ? ORDER BY id DESC LIMIT ?",
                                    (DECODE_AT_ONCE_BYTES, before_id or "~", limit)).fetchall()
                data = [d if d is not None else _blob_read(conn, "events", "data", rowid) for rowid, d in rows]
            return [decode_in_pieces(d, decode_event) for d in data]

        found: list[Event] = await self._read(run)
        return found

    async def get_conversations(self, key: str, limit: int | None = None) -> list[ConversationDetail]:
        forms = lookups(key)

        def run(conn: sqlite3.Connection) -> list[ConversationDetail]:
            out = []
            for c in conn.execute(f"SELECT {CONVERSATION_COLUMNS} FROM conversations "  # noqa: S608 - constants
                                  f"WHERE {_KEY_OR_ID} ORDER BY id", forms).fetchall():
                rows = [delivery_row(r) for r in conn.execute(
                    f"SELECT {ROW_COLUMNS} FROM deliveries WHERE conversation = ? ORDER BY rowid "  # noqa: S608
                    "LIMIT ?", (c[0], -1 if limit is None else limit))]
                out.append(ConversationDetail(conversation=conversation_row(c), deliveries=rows))
            return out

        found: list[ConversationDetail] = await self._read(run)
        return found

    async def conversation_slice(self, conversation: str, limit: int, *, after: Arrival | None = None,
                                 before: Arrival | None = None, last: bool = False) -> ConversationSlice:
        conversation = storable(conversation)
        place = after or before
        statement = SLICE_FIRST if place is None else SLICE_AFTER if after is not None else SLICE_BEFORE
        args: tuple[Any, ...] = (conversation, limit + 1) + (() if place is None else (place[0],))

        def probe(conn: sqlite3.Connection, op: str, at: int) -> bool:
            return bool(conn.execute(SLICE_PROBE[op], (conversation, at)).fetchone()[0])

        def run_last(conn: sqlite3.Connection) -> ConversationSlice:
            return last_slice(conn.execute(SLICE_LAST, (conversation, limit + 1)).fetchall(), limit)

        if last:
            tail: ConversationSlice = await self._read(run_last)
            return tail

        def run(conn: sqlite3.Connection) -> ConversationSlice:
            if place is not None and conn.execute(SLICE_PLACE, (place[0], place[1], conversation)).fetchone() is None:
                return ConversationSlice(deliveries=[], arrivals=[], earlier=False, later=False, stale=True)
            found = conn.execute(statement, args).fetchall()
            rows = found[:limit]
            if before is not None:
                rows.reverse()
            arrivals = [(r[ROW_WIDTH], r[0]) for r in rows]
            if before is not None:
                earlier, later = len(found) > limit, probe(conn, *((">", arrivals[-1][0]) if rows else
                                                                   (">=", before[0])))
            else:
                later = len(found) > limit
                earlier = after is not None and probe(conn, *(("<", arrivals[0][0]) if rows else ("<=", after[0])))
            return ConversationSlice(deliveries=[delivery_row(r) for r in rows], arrivals=arrivals, earlier=earlier,
                                     later=later)

        found: ConversationSlice = await self._read(run)
        return found

    async def reset_conversation(self, key: str) -> list[ConversationRow]:
        forms = lookups(key)

        def op(conn: sqlite3.Connection) -> list[ConversationRow]:
            found = [conversation_row(c) for c in conn.execute(
                f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE {_KEY_OR_ID} ORDER BY id",  # noqa: S608
                forms).fetchall()]
            conn.execute(RESET_CONVERSATION.format(now="?4") + f"WHERE {_KEY_OR_ID}", (*forms, now_ms()))
            return found

        found: list[ConversationRow] = await self._write(op)
        return found

    async def save_mapping_set(self, files: dict[str, str], version: str) -> None:
        data = encode(files)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO mapping_sets (id, version, files, saved_at) VALUES (1, ?, ?, ?) "
                         "ON CONFLICT (id) DO UPDATE SET version = excluded.version, files = excluded.files, "
                         "saved_at = excluded.saved_at", (version, data, now_ms()))

        await self._write(op)

    async def load_mapping_set(self) -> StoredMappingSet | None:
        def run(conn: sqlite3.Connection) -> StoredMappingSet | None:
            row = conn.execute("SELECT version, files, saved_at FROM mapping_sets WHERE id = 1").fetchone()
            if row is None:
                return None
            return StoredMappingSet(files=decode_files(row[1]), version=row[0], saved_at_ms=row[2])

        stored: StoredMappingSet | None = await self._read(run)
        return stored

    # -- retention ------------------------------------------------------------------------------

    async def purge(self, cutoffs: Cutoffs, limit: int, dry_run: bool = False,
                    after: PurgeMark | None = None) -> PurgeCounts:
        """Each kind is one write by itself, whose statements run off the event loop's thread (`off_loop`), as a
        replay's parts do: deleting rows reads every page they fill, and a batch of large events took seconds. The
        events and attempts it deletes are bounded by their bytes too (`group_bytes`, the first whatever its size;
        `more` then says there is more), so that the writes queued behind it (intake's) wait for a short
        transaction, not a batch of large mails."""
        if dry_run:
            counted: PurgeCounts = await self._read(lambda conn: _count_purgeable(conn, cutoffs))
            return counted
        mark = after or PurgeMark()
        out = PurgeCounts(after=mark)
        if cutoffs.events_ms is not None:
            got: PurgeCounts = await self._write(
                functools.partial(_purge_events, cutoffs=cutoffs, limit=limit, after=mark.events,
                                  max_bytes=self.group_bytes), size=self.group_bytes, off_loop=True)
            out.add(got)
            out.more = got.more
            out.after = msgspec.structs.replace(out.after, events=got.after.events)
        if cutoffs.attempts_ms is not None:
            trimmed: tuple[int, bool, tuple[int, str, int] | None] = await self._write(
                functools.partial(_trim_attempts, cutoffs=cutoffs, limit=limit, after=mark.attempts,
                                  max_bytes=self.group_bytes), size=self.group_bytes, off_loop=True)
            out.attempts += trimmed[0]
            out.more = out.more or trimmed[1]
            out.after = msgspec.structs.replace(out.after, attempts=trimmed[2])
        if cutoffs.dedup_ms is not None:
            dedup_ms = cutoffs.dedup_ms
            expired: int = await self._write(lambda conn: conn.execute(
                "DELETE FROM dedup_keys WHERE (source, key) IN "
                "(SELECT source, key FROM dedup_keys WHERE expires_at <= ? LIMIT ?)", (dedup_ms, limit)).rowcount,
                size=self.group_bytes, off_loop=True)
            out.dedup = expired
            out.more = out.more or expired >= limit
        if cutoffs.conversations_ms is not None:
            cutoff, tickets = cutoffs.conversations_ms, cutoffs.tickets_ms
            gone, more, last = await self._write(lambda conn: _purge_conversations(conn, cutoff, tickets, limit,
                                                                                   mark.conversations),
                                                 size=self.group_bytes, off_loop=True)
            out.conversations = gone
            out.more = out.more or more
            out.after = msgspec.structs.replace(out.after, conversations=last)
        return out

    async def attachment_refs(self, received_before_ms: int) -> set[str]:
        """A page at a time, each a read on the read thread (`_refs_page`): REFS_PAGE events at most, and ended by
        the event whose data takes it to REFS_PAGE_BYTES. The next page starts after the last event looked through,
        by (received_at, id): each event before the cutoff is looked through once, however many share its time."""
        refs: set[str] = set()
        position: tuple[int, str] | None = (NEVER, "")
        while position is not None:
            found, position = await self._read(functools.partial(_refs_page, before_ms=received_before_ms,
                                                                 start=position))
            refs |= found
        return refs

    async def oldest_pending(self) -> dict[str, int]:
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            return {dest: oldest for dest, oldest in conn.execute(OLDEST_UNSETTLED)}

        oldest: dict[str, int] = await self._read(run)
        return oldest

    async def add_audit(self, entry: AuditEntry) -> None:
        entry = storable_audit(entry)
        row = (entry.id, entry.at_ms, entry.actor, entry.action, entry.target, encode(entry.detail))

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO audit_log (id, at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)",
                         row)

        await self._write(op)

    async def list_audit(self, limit: int = 50, before_id: str | None = None) -> list[AuditEntry]:
        def run(conn: sqlite3.Connection) -> list[AuditEntry]:
            rows = conn.execute("SELECT id, at, actor, action, target, detail FROM audit_log WHERE id < ? "
                                "ORDER BY id DESC LIMIT ?", (before_id or "\uffff", limit))
            return [audit_entry(r) for r in rows]

        entries: list[AuditEntry] = await self._read(run)
        return entries


_Replayed = tuple[list[str], int, dict[str, _Json]]


def _replay(*, delivery_ids: list[str], fresh: dict[str, tuple[dict[str, Any], str]], kept: dict[str, int],
            carried: dict[str, _Json], renamed: str | None, max_items: int,
            max_bytes: int) -> Callable[[sqlite3.Connection], _Replayed]:
    """SqliteStore.replay's write of one part (a _Staged write's preparation, on the writer thread): the first of
    `delivery_ids` that fit in a part (at most `max_items`, and `max_bytes` of their sizes, the first whatever its
    size), in order, each succeeded or dead one back to pending, with its new body (`fresh`, encoded here, before
    the write lock is taken, its long strings a piece at a time as a heavy accept's, _json_pieces, unless `carried`
    holds it encoded; and its mapping version, and mapping when renamed)
    when it has one, else only if it has a body (whose size, when kept in its row, `kept` gives). The write returns
    those moved, how many of `delivery_ids` the part took, and the new body encoded and found not to fit (the next
    part's first), by id."""
    part: dict[str, _Json | None] = {}
    total = 0
    left: dict[str, _Json] = {}
    for i in delivery_ids:
        if len(part) >= max_items:
            break
        body: _Json | None = None
        if i in fresh:
            body = carried.get(i)
            if body is None:
                body = _json_pieces(fresh[i][0])
        size = len(body) if body is not None else kept.get(i, 0)
        if part and total + size > max_bytes:
            if body is not None:
                left[i] = body
            break
        part[i] = body
        total += size
    return functools.partial(_replay_part, part=part, fresh=fresh, renamed=renamed, left=left)


def _replay_part(conn: sqlite3.Connection, *, part: dict[str, _Json | None],
                 fresh: dict[str, tuple[dict[str, Any], str]], renamed: str | None,
                 left: dict[str, _Json]) -> _Replayed:
    """The statements of a replay's part (_replay), in order."""
    now = now_ms()
    moved = []
    for i, body in part.items():
        if body is not None:
            row = conn.execute(
                "UPDATE deliveries SET status = 'pending', tries = 0, next_attempt_at = ?, updated_at = ?, "
                "last_error = NULL, in_doubt_since = NULL, body = ?, mapping_version = ?, "
                "mapping = COALESCE(?, mapping) WHERE id = ? AND status IN ('succeeded', 'dead') RETURNING id",
                (now, now, body if isinstance(body, bytearray) and len(body) <= BODY_INLINE else None, fresh[i][1],
                 renamed, i)).fetchone()
            if row is not None:
                _put_body(conn, i, body)
        else:
            row = conn.execute(
                "UPDATE deliveries SET status = 'pending', tries = 0, next_attempt_at = ?, updated_at = ?, "  # noqa: S608
                "last_error = NULL, in_doubt_since = NULL WHERE id = ? AND status IN ('succeeded', 'dead') "
                f"AND {_HAS_BODY} RETURNING id", (now, now, i)).fetchone()
        if row is not None:
            moved.append(i)
    return moved, len(part), left


def _bodies_in_rows(conn: sqlite3.Connection, *, delivery_ids: list[str]) -> dict[str, int]:
    """The size of each body kept in its delivery's row among `delivery_ids` (length() reads a row's header, not
    its body)."""
    out: dict[str, int] = {}
    for start in range(0, len(delivery_ids), 500):  # bound to the statement's host parameters
        part = delivery_ids[start:start + 500]
        out.update(conn.execute(f"SELECT id, length(body) FROM deliveries WHERE id IN ({', '.join('?' * len(part))}) "  # noqa: S608
                                "AND body IS NOT NULL", part).fetchall())
    return out


def _put_body(conn: sqlite3.Connection, delivery_id: str, body: _Json) -> None:
    """What keeps a body just written where BODY_INLINE says: a small one, written in the row, loses any kept apart
    before; a large one, written NULL in the row (or not at all), is kept apart, and the row loses any it held. One
    encoded in pieces (_Pieces) is written a piece at a time, into a zeroblob of its size."""
    if isinstance(body, bytearray) and len(body) <= BODY_INLINE:
        conn.execute("DELETE FROM delivery_bodies WHERE id = ?", (delivery_id,))
        return
    conn.execute("UPDATE deliveries SET body = NULL WHERE id = ? AND body IS NOT NULL", (delivery_id,))
    if isinstance(body, _Pieces):
        body.write(conn, "delivery_bodies", "body", conn.execute(
            "INSERT OR REPLACE INTO delivery_bodies (id, body) VALUES (?, zeroblob(?))", (delivery_id, body.size),
        ).lastrowid)
        return
    conn.execute("INSERT OR REPLACE INTO delivery_bodies (id, body) VALUES (?, ?)", (delivery_id, body))


def _with_bodies(conn: sqlite3.Connection, rows: list[Any], at: int, at_most: int,
                 in_all: int) -> tuple[list[Any], list[str]]:
    """`rows` (each a delivery's id first, its body at `at`) with the bodies kept apart filled in where the row's
    own is NULL (BODY_INLINE), one look-up of them all; and the ids of those left NULL: longer than `at_most`, or
    past `in_all` bytes of the bodies read before them (in the order of their ids)."""
    wanted = [r[0] for r in rows if r[at] is None]
    ids = ", ".join(f"?{n}" for n in range(3, 3 + len(wanted)))
    got = conn.execute(_BODIES_APART.format(ids=ids), [at_most, in_all, *wanted]).fetchall()
    found = {i: body for i, body in got if body is not None}
    large = [i for i, body in got if body is None]
    if not found:
        return rows, large
    return [(*r[:at], found[r[0]], *r[at + 1:]) if r[0] in found else r for r in rows], large


_AT_MOST = "CASE WHEN length({0}) <= ? THEN {0} END"
"""SQL for a column (a blob) when it is at most ? bytes long, else NULL; its length read without its pages."""
_BODIES_APART = ("WITH s AS MATERIALIZED (SELECT id, length(body) AS n FROM delivery_bodies WHERE id IN ({ids})), "
                 "f AS MATERIALIZED (SELECT id, n <= ?1 AND sum(CASE WHEN n <= ?1 THEN n ELSE 0 END) "
                 "OVER (ORDER BY id ROWS UNBOUNDED PRECEDING) <= ?2 AS fits FROM s) "
                 "SELECT b.id, CASE WHEN f.fits THEN b.body END FROM f JOIN delivery_bodies AS b ON b.id = f.id")
"""The bodies kept apart of the deliveries `ids` (?3 on): each when it is at most ?1 bytes long and, with those of
them before it (by id), at most ?2 bytes in all; else NULL. Their lengths are read first (`s`, without the bodies'
pages) and added up (`f`), each step MATERIALIZED: a window over the bodies themselves, or over a subquery SQLite
flattens into it, read every body whole (40 MiB held the loop 160 ms), and only those that fit are read then."""


@contextlib.contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """A read transaction on the reader: what is read in it, a rowid then its blob, is of one snapshot."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _event_data(conn: sqlite3.Connection, event_id: str) -> bytes | None:
    """An event's data, one longer than DECODE_AT_ONCE_BYTES read a piece at a time (_blob_read); None when there is
    no such event. In a `_snapshot`."""
    row = conn.execute(f"SELECT rowid, {_AT_MOST.format('data')} FROM events WHERE id = ?",  # noqa: S608
                       (DECODE_AT_ONCE_BYTES, event_id)).fetchone()
    if row is None:
        return None
    return row[1] if row[1] is not None else _blob_read(conn, "events", "data", row[0])


def _body_data(conn: sqlite3.Connection, delivery_id: str) -> bytes | None:
    """A delivery's body (encoded), from its row or delivery_bodies (BODY_INLINE), one longer than
    DECODE_AT_ONCE_BYTES read a piece at a time (_blob_read); None when it has none. In a `_snapshot`."""
    for table in ("deliveries", "delivery_bodies"):
        row = conn.execute(f"SELECT rowid, {_AT_MOST.format('body')}, length(body) FROM {table} "  # noqa: S608
                           "WHERE id = ?", (DECODE_AT_ONCE_BYTES, delivery_id)).fetchone()
        if row is not None and row[2] is not None:
            return row[1] if row[1] is not None else _blob_read(conn, table, "body", row[0])
    return None


def _large_bodies(conn: sqlite3.Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The bodies of the deliveries `ids`, read a piece at a time and decoded so (on the read thread)."""
    out = {}
    with _snapshot(conn):
        data = {i: _body_data(conn, i) for i in ids}
    for i, body in data.items():
        if body is not None:
            out[i] = decode_in_pieces(body, decode_dict)
    return out


_REFS_PAGE = (f"SELECT received_at, id, rowid, length(data), {_AT_MOST.format('data')} FROM events "  # noqa: S608
              "WHERE received_at < ? AND received_at >= ? AND NOT (received_at = ? AND id <= ?) "
              "ORDER BY received_at, id LIMIT ?")
"""A page of retention's attachment scan: the events received before ?2 after (?3, ?5) by (received_at, id), at most
?6 of them, each with its length and its data when that is at most ?1 bytes long."""


def _refs_page(conn: sqlite3.Connection, *, before_ms: int,
               start: tuple[int, str]) -> tuple[set[str], tuple[int, str] | None]:
    """The attachments a page of retention's scan names (see SqliteStore.attachment_refs), and the position of its
    last event when a page may follow it (None: none does). Its rows are taken from the cursor one at a time, each
    let go once looked through (fetched all at once, a page of events just under DECODE_AT_ONCE_BYTES was 2 GiB of
    them); a large mail's is looked through a piece at a time (_blob_hashes): whole, a 60 MiB one held the GIL, and
    so the loop, 34 ms. On the read thread, in a `_snapshot`."""
    found: set[str] = set()
    rows = size = 0
    with _snapshot(conn), contextlib.closing(conn.execute(_REFS_PAGE, (
            DECODE_AT_ONCE_BYTES, before_ms, start[0], start[0], start[1], REFS_PAGE))) as cursor:
        for received_at, event_id, rowid, length, data in cursor:
            found.update(attachment_hashes(data) if data is not None else _blob_hashes(conn, "events", "data", rowid))
            del data  # let go before the next row is fetched
            rows += 1
            size += length
            if rows >= REFS_PAGE or size >= REFS_PAGE_BYTES:
                return found, (received_at, event_id)
    return found, None


def _blob_hashes(conn: sqlite3.Connection, table: str, column: str, rowid: int) -> set[str]:
    """The sha256 of each attachment the JSON in `column` of the row `rowid` names, looked for a piece at a time,
    each with the end of the one before it, so that one cut between two is whole in the second."""
    found: set[str] = set()
    tail = b""
    with conn.blobopen(table, column, rowid, readonly=True) as blob:
        while chunk := blob.read(PIECE_READ_BYTES):
            found.update(attachment_hashes(tail + chunk))
            tail = chunk[-(SHA256_SPAN - 1):]
    return found


def _blob_read(conn: sqlite3.Connection, table: str, column: str, rowid: int) -> bytes:
    """The blob in `column` of the row `rowid` of `table`, read by incremental blob I/O a piece at a time (each read
    runs without the GIL) and joined by bytes.join, which copies without it too: no call holds the GIL for the
    whole of a large value, as fetching it in a row does."""
    chunks: list[bytes] = []
    with conn.blobopen(table, column, rowid, readonly=True) as blob:
        while chunk := blob.read(PIECE_READ_BYTES):
            chunks.append(chunk)
    return b"".join(chunks)


def _json_blob(value: Any) -> bytearray:
    """`value` as JSON (as rows.encode writes it), encoded straight into a bytearray: no copy of a large mail's."""
    blob = bytearray()
    try:
        _encode_into(value, blob)
    except RecursionError:
        raise too_deep(value) from None
    return blob


def _json_pieces(value: Any) -> _Json:
    """`value` as `_json_blob` encodes it, byte for byte, each string of it longer than a piece encoded a slice at a
    time (pieces.json_chunks): then in _Pieces, written a piece at a time too. A value with no long string is encoded
    at once, as `_json_blob` does."""
    chunks = json_chunks(value, _json_blob)
    return _json_blob(value) if chunks is None else _Pieces(chunks)


def _event_row(event: Event, received_ms: int, deliveries: int, blob: Callable[[Any], _Json]) -> tuple[Any, ...]:
    """The event's row for _INSERT_EVENT or, without a dedup key, _INSERT_EVENT_NO_KEY (one value fewer), its JSON
    encoded by `blob`."""
    if event.dedup_key is None:
        return (event.id, event.source, event.kind, event.channel, received_ms, int(event.spam), blob(event),
                deliveries)
    return (event.id, event.source, event.kind, event.channel, received_ms, event.dedup_key, int(event.spam),
            blob(event), deliveries)


def _delivery_rows(event: Event, deliveries: list[NewDelivery], created_ms: int,
                   blob: Callable[[Any], _Json]) -> tuple[list[tuple[Any, ...]], list[tuple[str, _Json]]]:
    """NEW_DELIVERY_COLUMNS' values (new_delivery_rows') with the JSON as bytearrays (encoded by `blob`), and without
    the last error and conversation when both are None (for _INSERT_PLAIN_DELIVERY); with the bodies kept apart from
    their rows (over BODY_INLINE: the row's body is NULL), as (delivery id, body)."""
    rows: list[tuple[Any, ...]] = []
    apart: list[tuple[str, _Json]] = []
    for d in deliveries:
        body = None if d.body is None else blob(d.body)
        if body is not None and len(body) > BODY_INLINE:
            apart.append((d.id, body))
            body = None
        row = (d.id, event.id, event.source, d.mapping, d.mapping_version, d.destination, d.action, d.status, body,
               _json_blob(d.options), created_ms, created_ms, created_ms)
        rows.append(row if d.error is None and d.conversation is None else (*row, d.error, d.conversation))
    return rows, apart


def _insert(conn: sqlite3.Connection, events: list[tuple[Any, ...]], joins: list[tuple[NewDelivery, int]],
            deliveries: list[tuple[Any, ...]], bodies: list[tuple[str, _Json]]) -> None:
    """Write accepted events: their rows first (deliveries refer to them), then the conversations they join, in
    arrival order, then their deliveries' rows and the bodies kept apart from them (which refer to those); one
    accept's or, gathered by _run_straight, a group's. Rows without the ordinary NULLs' values (see _event_row,
    _delivery_rows) go in by the statements that write them NULL, unless a row of the same call has them."""
    if all(len(row) == _EVENT_WIDTH_NO_KEY for row in events):
        conn.executemany(_INSERT_EVENT_NO_KEY, events)
    else:
        conn.executemany(_INSERT_EVENT, [(*row[:5], None, *row[5:]) if len(row) == _EVENT_WIDTH_NO_KEY else row
                                         for row in events])
    moved: dict[str, str] = {}
    for d, created in joins:
        if (legacy := _legacy_conversation(conn, d)) is not None:
            d = in_legacy_conversation(d, legacy)  # noqa: PLW2901 - the message joins the row as it is kept
            moved[d.id] = legacy
        if (own := _join_conversation(conn, d, created)) is not None:
            moved[d.id] = own
    if not deliveries:
        return
    if moved:  # a message its sender may not add to the conversation it names: in its own (a row with a conversation
        # has every column, see _delivery_rows)
        deliveries = [(*row[:-1], moved[row[0]]) if row[0] in moved else row for row in deliveries]
    if all(len(row) == _PLAIN_DELIVERY_WIDTH for row in deliveries):
        conn.executemany(_INSERT_PLAIN_DELIVERY, deliveries)
    else:
        conn.executemany(_INSERT_DELIVERY, [(*row, None, None) if len(row) == _PLAIN_DELIVERY_WIDTH else row
                                            for row in deliveries])
    if bodies:
        conn.executemany(_INSERT_BODY, bodies)


def _insert_pieces(conn: sqlite3.Connection, events: list[tuple[Any, ...]], joins: list[tuple[NewDelivery, int]],
                   deliveries: list[tuple[Any, ...]], bodies: list[tuple[str, _Json]]) -> None:
    """`_insert` for a heavy accept (one event), whose event's JSON and bodies kept apart may be _Pieces: each such
    row is inserted with a zeroblob of its size, its pieces then written into it."""
    [event] = events
    data = event[-2]
    if isinstance(data, _Pieces):
        statement = _INSERT_EVENT_NO_KEY_ZEROBLOB if len(event) == _EVENT_WIDTH_NO_KEY else _INSERT_EVENT_ZEROBLOB
        data.write(conn, "events", "data", conn.execute(statement, (*event[:-2], data.size, event[-1])).lastrowid)
        events = []
    _insert(conn, events, joins, deliveries, [(i, body) for i, body in bodies if not isinstance(body, _Pieces)])
    for delivery_id, body in bodies:
        if isinstance(body, _Pieces):
            body.write(conn, "delivery_bodies", "body", conn.execute(_INSERT_BODY_ZEROBLOB,
                                                                     (delivery_id, body.size)).lastrowid)


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Whether `exc` says another connection holds the lock asked for (a BEGIN IMMEDIATE met a write elsewhere)."""
    return "locked" in str(exc) or "busy" in str(exc)


def _begin_tries(conn: sqlite3.Connection, refused: sqlite3.OperationalError) -> Iterator[float]:
    """After a BEGIN IMMEDIATE `refused` (raised again unless another process writes): how long to wait before each
    next try (from 1 ms, doubling up to BUSY_DELAY_MAX), until one begins; the busy error raised once BUSY_SECONDS
    have passed. The writer's own busy_timeout is 0, for the loop's sake; its caller waits as its thread may:
    SqliteStore._begin on the loop without blocking it, _begin_waiting on the store's writer thread. The first try is
    the caller's own, so that a BEGIN that goes through costs nothing more."""
    if not _busy(refused):
        raise refused
    deadline = time.monotonic() + BUSY_SECONDS
    delay = 0.001
    while True:
        yield delay
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() > deadline:
                raise
        delay = min(delay * 2, BUSY_DELAY_MAX)


def _begin_waiting(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE on a thread that may wait (the store's writer thread), tried again as _begin_tries says."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        for delay in _begin_tries(conn, exc):
            time.sleep(delay)


def _run_script(sql: str, conn: sqlite3.Connection) -> None:
    """A migration script's statements, one after another."""
    for statement in sql.split(";\n"):
        if statement.strip():
            conn.execute(statement)


def _claim_nonce(conn: sqlite3.Connection, source: str, nonce: Nonce, now: int) -> bool:
    """Record `nonce` in its scope for an event of `source`; False, writing nothing, when another request holds it
    there, or (a scoped nonce) under `source` alone (Nonce.unscoped_for). One statement: an insert of nothing
    when the unscoped row holds it (NULL, for an unscoped nonce, matches no row), else an upsert whose update
    applies only to an expired row or one of the same digest."""
    if (legacy := legacy_nul(nonce.value)) is not None and conn.execute(
            "SELECT 1 FROM nonces WHERE source IN (?1, ?2) AND nonce = ?3 AND expires_at > ?4 AND digest <> ?5",
            (nonce.scope_for(source), nonce.unscoped_for(source), legacy, now, nonce.digest)).fetchone() is not None:
        return False  # held by a request accepted before 0026, which kept a NUL in the nonce as `\x00`
    claimed = conn.execute(
        "INSERT INTO nonces SELECT ?1, ?2, ?3, ?4 WHERE NOT EXISTS (SELECT 1 FROM nonces WHERE source = ?6 "
        "AND nonce = ?2 AND expires_at > ?5 AND digest <> ?3) ON CONFLICT (source, nonce) DO UPDATE "
        "SET digest = excluded.digest, expires_at = max(expires_at, excluded.expires_at) "
        "WHERE expires_at <= ?5 OR digest = excluded.digest RETURNING 1",
        (nonce.scope_for(source), nonce.value, nonce.digest, nonce.expires_at_ms, now,
         nonce.unscoped_for(source))).fetchone()
    return claimed is not None


def _sweep_nonces(conn: sqlite3.Connection, now: int) -> None:
    """Delete up to NONCE_SWEEP expired nonces, oldest first."""
    conn.execute("DELETE FROM nonces WHERE (source, nonce) IN "
                 "(SELECT source, nonce FROM nonces WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)",
                 (now, NONCE_SWEEP))


def _legacy_conversation(conn: sqlite3.Connection, d: NewDelivery) -> str | None:
    """The id of the conversation `d` names as a row written before NUL_MARK keeps it (its key held a NUL, kept
    `\\x00` then), when that row exists: the conversation the message belongs to. None, without a look-up, for
    the usual conversation, whose id holds no NUL."""
    if d.conversation is None or (legacy := legacy_nul(d.conversation)) is None:
        return None
    found = conn.execute("SELECT 1 FROM conversations WHERE id = ?", (legacy,)).fetchone()
    return None if found is None else legacy


def _join_conversation(conn: sqlite3.Connection, d: NewDelivery, now: int) -> str | None:
    """Count the message in its conversation: the first message opens it, and a message after the quiet period
    (`reopen_after`) starts it anew, without a ticket, so that it becomes a create. The usual case, a message
    within the period of an open conversation, is one plain UPDATE by key; only when that finds no row to count
    in does the upsert that opens or restarts the conversation run. A message whose key any sender may write
    (`sender_checked`) counts only in a conversation its sender opened (or one older than the sender column), and
    names a ticket only one such conversation holds; else it opens a conversation of its own, whose id it returns
    (None: it joined the one it named). Either way the conversation it is counted in holds one more delivery
    (`stored`, migration 0025)."""
    checked = d.sender_checked
    sender = d.sender or ""
    also = d.sender_also if checked else ()
    same_sender = f" AND (sender IS NULL OR {_sender_in(4, also)})" if checked else ""
    counted = conn.execute(
        "UPDATE conversations SET messages = messages + 1, stored = stored + 1, "  # noqa: S608
        "last_message_at = max(last_message_at, ?1) "
        f"WHERE id = ?2 AND ?1 - last_message_at <= ?3{same_sender}",
        (now, d.conversation, d.reopen_after_ms, *((sender, *also) if checked else ()))).rowcount
    if counted:
        return None
    if checked and d.known_ticket is not None and conn.execute(
            "SELECT 1 FROM conversations WHERE destination = ?1 AND ticket_id = ?2 "  # noqa: S608
            f"AND (sender IS NULL OR {_sender_in(3, also)}) LIMIT 1",
            (d.destination, d.known_ticket, sender, *also)).fetchone() is None:
        return _split_conversation(conn, d, now, sender, "ticket")
    opened = conn.execute(
        "INSERT INTO conversations (id, key, mapping, destination, messages, stored, started_at, last_message_at, "  # noqa: S608
        "ticket_id, ticket_at, sender) VALUES (?1, ?2, ?3, ?4, 1, 1, ?5, ?5, ?6, "
        "CASE WHEN ?6 IS NULL THEN NULL ELSE ?5 END, ?8) ON CONFLICT (id) DO UPDATE SET "
        "messages = CASE WHEN ?5 - last_message_at > ?7 THEN 1 ELSE messages + 1 END, stored = stored + 1, "
        "started_at = CASE WHEN ?5 - last_message_at > ?7 THEN ?5 ELSE started_at END, "
        "ticket_id = CASE WHEN ?5 - last_message_at > ?7 THEN ?6 ELSE ticket_id END, "
        "ticket_key = CASE WHEN ?5 - last_message_at > ?7 THEN NULL ELSE ticket_key END, "
        "ticket_uuid = CASE WHEN ?5 - last_message_at > ?7 THEN NULL ELSE ticket_uuid END, "
        "ticket_at = CASE WHEN ?5 - last_message_at > ?7 THEN excluded.ticket_at ELSE ticket_at END, "
        "last_message_at = max(last_message_at, ?5)"
        + (f" WHERE sender IS NULL OR {_sender_in(8, also)}" if checked else "") + " RETURNING 1",
        (d.conversation, d.conversation_key or d.conversation, d.mapping, d.destination, now, d.known_ticket,
         d.reopen_after_ms, sender if checked else d.sender, *also)).fetchone()
    if opened is None:
        return _split_conversation(conn, d, now, sender, "conversation")
    return None


def _sender_in(first: int, also: tuple[str, ...]) -> str:
    """`sender = ?first`, or with the sender's other forms (`NewDelivery.sender_also`, bound after it) `sender IN
    (?first, ?first+1, …)`."""
    if not also:
        return f"sender = ?{first}"
    return "sender IN (" + ", ".join(f"?{first + i}" for i in range(len(also) + 1)) + ")"


def _split_conversation(conn: sqlite3.Connection, d: NewDelivery, now: int, sender: str, named: str) -> str:
    """Open the conversation of its own that `d` gets when its sender is not the first sender of the conversation
    (or of the ticket: `named`) its key names; its id."""
    assert d.conversation is not None
    first = conn.execute("SELECT sender FROM conversations WHERE id = ?", (d.conversation,)).fetchone()
    own, key = split_conversation_id(d)
    sender_mismatch(d, named, sender, None if first is None else first[0], own)
    conn.execute("INSERT INTO conversations (id, key, mapping, destination, messages, stored, started_at, "
                 "last_message_at, sender) VALUES (?1, ?2, ?3, ?4, 1, 1, ?5, ?5, ?6)",
                 (own, key, d.mapping, d.destination, now, sender))
    return own


_ATTEMPT_BYTES = ("COALESCE(length(a.exchange), 0) + COALESCE(length(a.response_excerpt), 0) "
                  "+ COALESCE(length(a.error), 0)")
"""What deleting an attempt `a` frees, about: its exchange and texts (length() of a BLOB reads its row's header)."""
_EVENT_BYTES = ("length(e.data) + COALESCE((SELECT SUM(COALESCE(length(d.body), 0) "  # noqa: S608 - constants
                "+ COALESCE((SELECT length(b.body) FROM delivery_bodies b WHERE b.id = d.id), 0) "
                f"+ COALESCE((SELECT SUM({_ATTEMPT_BYTES}) FROM attempts a WHERE a.delivery_id = d.id), 0)) "
                "FROM deliveries d WHERE d.event_id = e.id), 0)")
"""What deleting an event `e` with its deliveries and attempts frees, about: its JSON (the payload, a mail's raw
message), its deliveries' bodies (in their rows, or kept apart: BODY_INLINE) and its attempts' (_ATTEMPT_BYTES)."""


def _taken(candidates: Sequence[Sequence[Any]], max_bytes: int) -> tuple[int, list[Sequence[Any]]]:
    """How many of a purge's `candidates` (in scan order: each with whether it goes second to last and its size
    last) one write looks at, and those it deletes: up to `max_bytes` of their sizes, the first whatever its size.
    Deleting a row frees every page it fills, which SQLite reads to free: a batch bounded by its rows alone held the
    writer for seconds (200 events of a 900 kB mail)."""
    gone: list[Sequence[Any]] = []
    total = 0
    for looked, c in enumerate(candidates):
        if c[-2]:
            if gone and total + c[-1] > max_bytes:
                return looked, gone
            gone.append(c)
            total += c[-1]
    return len(candidates), gone


def _trim_attempts(conn: sqlite3.Connection, cutoffs: Cutoffs, limit: int,
                   after: tuple[int, str, int] | None,
                   max_bytes: int = GROUP_BYTES) -> tuple[int, bool, tuple[int, str, int] | None]:
    """Look at the next `limit` attempts older than the cutoff (after `after`, oldest first) and delete those
    that are not their delivery's latest, up to `max_bytes` of them (_taken): (deleted, more to look at, where the
    scan stopped)."""
    start_at, start_id, start_n = after or (NEVER, "", 0)
    candidates = conn.execute(
        f"SELECT a.started_at, a.delivery_id, a.n, a.n < d.attempts, {_ATTEMPT_BYTES} "  # noqa: S608 - constants
        "FROM attempts a JOIN deliveries d "
        "ON d.id = a.delivery_id WHERE a.started_at < ?1 AND a.started_at >= ?2 "
        "AND NOT (a.started_at = ?2 AND (a.delivery_id < ?3 OR (a.delivery_id = ?3 AND a.n <= ?4))) "
        "ORDER BY a.started_at, a.delivery_id, a.n LIMIT ?5",
        (cutoffs.attempts_ms, start_at, start_id, start_n, limit)).fetchall()
    looked, gone = _taken(candidates, max_bytes)
    deleted = conn.executemany("DELETE FROM attempts WHERE delivery_id = ? AND n = ?",
                               [(c[1], c[2]) for c in gone]).rowcount if gone else 0
    last = candidates[looked - 1] if looked else None
    return (deleted, looked < len(candidates) or len(candidates) >= limit,
            (last[0], last[1], last[2]) if last is not None else after)


def _purge_events(conn: sqlite3.Connection, cutoffs: Cutoffs, limit: int,
                  after: tuple[int, str] | None, max_bytes: int = GROUP_BYTES) -> PurgeCounts:
    """Look at the next `limit` events older than the cutoff (after `after`, oldest first) and delete those
    whose deliveries are all settled long enough, with their deliveries and attempts, up to `max_bytes` of them
    (_taken, _EVENT_BYTES)."""
    assert cutoffs.events_ms is not None
    dead = cutoffs.dead_ms if cutoffs.dead_ms is not None else NEVER
    start_at, start_id = after or (NEVER, "")
    candidates = conn.execute(
        f"SELECT e.id, e.received_at, NOT {kept_condition('?1', '?2')}, {_EVENT_BYTES} "  # noqa: S608 - constants
        "FROM events e WHERE e.received_at < ?1 AND e.received_at >= ?3 AND NOT (e.received_at = ?3 AND e.id <= ?4) "
        "ORDER BY e.received_at, e.id LIMIT ?5", (cutoffs.events_ms, dead, start_at, start_id, limit)).fetchall()
    looked, taken = _taken(candidates, max_bytes)
    gone = [(c[0],) for c in taken]
    last = candidates[looked - 1] if looked else None
    out = PurgeCounts(more=looked < len(candidates) or len(candidates) >= limit,
                      after=PurgeMark(events=(last[1], last[0]) if last is not None else after))
    if gone:
        out.attempts = conn.executemany("DELETE FROM attempts WHERE delivery_id IN "
                                        "(SELECT id FROM deliveries WHERE event_id = ?)", gone).rowcount
        conn.executemany(_UNSTORED, gone)
        out.deliveries = conn.executemany("DELETE FROM deliveries WHERE event_id = ?", gone).rowcount
        out.events = conn.executemany("DELETE FROM events WHERE id = ?", gone).rowcount
    return out


_UNSTORED = ("UPDATE conversations SET stored = stored - (SELECT count(*) FROM deliveries d WHERE d.event_id = ?1 "
             "AND d.conversation = conversations.id) WHERE id IN (SELECT conversation FROM deliveries "
             "WHERE event_id = ?1 AND conversation IS NOT NULL)")
"""Before an event's deliveries are deleted: their conversations hold as many fewer (`stored`, migration 0025)."""


def _purge_conversations(conn: sqlite3.Connection, cutoff: int, tickets: int | None, limit: int,
                         after: str | None) -> tuple[int, bool, str | None]:
    """Look at the next `limit` conversations (by id, after `after`) and delete those CONVERSATION_GONE: how many
    went, whether there may be more, the last id looked at."""
    looked = conn.execute(f"SELECT c.id, {CONVERSATION_GONE.format('?1', '?4')} FROM conversations c "  # noqa: S608
                          "WHERE c.id > ?2 ORDER BY c.id LIMIT ?3", (cutoff, after or "", limit, tickets)).fetchall()
    gone = [(cutoff, r[0], tickets) for r in looked if r[1]]
    deleted = 0
    if gone:
        deleted = conn.executemany(f"DELETE FROM conversations AS c WHERE {CONVERSATION_GONE.format('?1', '?3')} "  # noqa: S608
                                   "AND c.id = ?2", gone).rowcount
    return deleted, len(looked) >= limit, looked[-1][0] if looked else after


def _count_purgeable(conn: sqlite3.Connection, cutoffs: Cutoffs) -> PurgeCounts:
    """What a purge with these cutoffs would delete, counted without deleting anything."""
    out = PurgeCounts()
    dead = cutoffs.dead_ms if cutoffs.dead_ms is not None else NEVER
    events = cutoffs.events_ms if cutoffs.events_ms is not None else NEVER
    gone = f"SELECT e.id FROM events e WHERE e.received_at < ?1 AND NOT {kept_condition('?1', '?2')}"  # noqa: S608
    args = (events, dead)
    out.events = conn.execute(f"SELECT COUNT(*) FROM ({gone})", args).fetchone()[0]  # noqa: S608 - constants
    out.deliveries = conn.execute(f"SELECT COUNT(*) FROM deliveries WHERE event_id IN ({gone})",  # noqa: S608
                                  args).fetchone()[0]
    out.attempts = conn.execute(f"SELECT COUNT(*) FROM attempts a JOIN deliveries dd ON dd.id = a.delivery_id "  # noqa: S608
                                f"WHERE dd.event_id IN ({gone})", args).fetchone()[0]
    if cutoffs.attempts_ms is not None:
        out.attempts += conn.execute(
            f"SELECT COUNT(*) FROM attempts a JOIN deliveries dd ON dd.id = a.delivery_id "  # noqa: S608 - constants
            f"WHERE a.started_at < ?3 AND a.n < dd.attempts AND dd.event_id NOT IN ({gone})",
            (*args, cutoffs.attempts_ms)).fetchone()[0]
    if cutoffs.dedup_ms is not None:
        out.dedup = conn.execute("SELECT COUNT(*) FROM dedup_keys WHERE expires_at <= ?",
                                 (cutoffs.dedup_ms,)).fetchone()[0]
    if cutoffs.conversations_ms is not None:
        # Those a purge would delete now, before the events it would delete: a conversation of those goes in a later
        # sweep.
        out.conversations = conn.execute(f"SELECT COUNT(*) FROM conversations c WHERE "  # noqa: S608 - constants
                                         f"{CONVERSATION_GONE.format('?1', '?2')}",
                                         (cutoffs.conversations_ms, cutoffs.tickets_ms)).fetchone()[0]
    return out


def _touch(conn: sqlite3.Connection) -> None:
    """A write that changes a row without changing anything: it commits only when the disk takes it."""
    conn.execute("UPDATE schema_migrations SET applied_at = applied_at "
                 "WHERE version = (SELECT MAX(version) FROM schema_migrations)")


def _orphan_fd(path: Path) -> str | None:
    """Where this process's open descriptor of the deleted `path` can still be read (Linux)."""
    wanted = f"{path.absolute()} (deleted)"
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}") == wanted:
                    return f"/proc/{os.getpid()}/fd/{fd}"
    return None


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _resolve(batch: list[_Op], results: list[tuple[bool, Any]]) -> None:
    for op, (ok, value) in zip(batch, results, strict=True):
        if op.future.done():
            continue
        if ok:
            op.future.set_result(value)
        else:
            op.future.set_exception(value)
