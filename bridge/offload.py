"""Work whose cost is set by what a request or a vendor sent (a large body's parse, a template that loops over
a large payload): done on the event loop while it is cheap, in one worker thread otherwise, so that the loop,
which answers every other request and /healthz, is never held for long. A parse placed on the loop by its body
alone is marked (`start_loop_parse`): one that meets costly work inside it (a long address list the fast path
cannot read, a decoded raw message of many parts) stops with OffLoop and is run again in the thread.

One thread for it all: CPU-bound threads take the GIL in turns with the loop, so each more thread working at
once would delay every other request further; heavy work queues for the thread instead.
"""

from __future__ import annotations

import asyncio
import gc
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextvars import ContextVar, Token
from typing import Any, TypeVar

import structlog

from bridge.mapping.limits import SliceOver, end_slice, start_slice

log = structlog.get_logger("ticketbridge.offload")

T = TypeVar("T")


class DaemonWorker(Executor):
    """One daemon thread that runs what is submitted, in turn. A ThreadPoolExecutor's thread is joined when the
    interpreter exits, after it has run all that was queued for it: a stop would wait out every queued read.
    This one's thread is left behind at exit: the process ends once the thread's current call into C returns
    (a read's step, or its one whole decode), what was queued behind it never run."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]]
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((future, fn, args, kwargs))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
                self._thread.start()
        return future

    def _work(self) -> None:
        while True:
            future, fn, args, kwargs = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # handed to whoever awaits the future
                future.set_exception(exc)
            del future, fn, args, kwargs  # the answer read is freed before the next waits


PARSER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ticketbridge-parse")
CONSOLE = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ticketbridge-console")
"""The console's own thread (explanations an operator or a read token asks for): what it queues never delays
intake's parses and renders, nor a follow-up's."""
FILES = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ticketbridge-files")
"""Intake's file work (a request's attachments written to disk, a large body's nonce digest) and a delivery's
attachments read: threads of their own, not the event loop's default executor, so that a slow disk delays only
this work, and nothing else queued on a shared pool delays it."""
LOOKUPS = DaemonWorker("ticketbridge-lookup")
"""Where a vendor's look-up answer (a reconciliation's day of tickets, up to 32 MiB) is decoded and scanned when
it is not small: its own thread, so that a look-up never queues behind intake's parses, nor they behind it. A
daemon thread: a stop waits for no look-up still queued or being read."""
INFLATING = DaemonWorker("ticketbridge-inflate")
"""Where a send's encoded answer is decoded past its first ON_LOOP_ENCODED bytes (`bodies.read_decoding`), and a
send's answer longer than LOOP_ANSWER_BYTES classified (`sender._exchange`): a thread of its own, so that a send
never queues behind a look-up's read nor intake's parses; zlib and brotli let go of the GIL as they work."""
SMALL_ANSWER_BYTES = 64 * 1024
"""A look-up answer up to this long is read on the loop (well under a millisecond); a longer one in LOOKUPS."""
LOOP_ANSWER_BYTES = 16 * 1024
"""A send's answer up to this long is classified on the loop (a vendor's answer is a few KiB: no thread hop); a
longer one (up to the 256 KiB read) in INFLATING. The adapter decodes it (`vendors.base.decode_json`), and when
msgspec refuses its text, again leniently with Python's decoder, escaping every text in it: about 0.2 µs a byte
(0.4 on a busy machine) for a body crafted of empty objects or keys each with a byte that is not UTF-8, so 16 KiB
holds the loop about 3 ms at most, as ON_LOOP_ENCODED does, where 256 KiB held it 40-130 ms (and 64 KiB 12 ms).
Also the longest look-up or token answer read leniently on the loop: one longer, up to SMALL_ANSWER_BYTES, is
decoded there strictly only (`read_answer_off_loop`); should msgspec refuse it, it is read again in LOOKUPS."""
LOOP_SLICE_S = 0.005
"""How long a render may hold the event loop before it is run again, from the start, in the parser thread."""
LOOP_BYTES = 64 * 1024
"""A request body (or a raw message decoded from one) larger than this is parsed in the parser thread."""
LOOP_MIME_LINES = 32
"""A raw message with more MIME delimiter lines than this is parsed in the parser thread: a part costs most of a
millisecond."""
LOOP_PARSER_LINES = 500
"""Lines of MIME text (`text_lines`) the email package's parser may be handed in a parse on the loop: a raw message,
or a multipart form that handlers/multipart_split.py cannot build itself. The parser reads a line in 1 to 5 µs
(blank lines the fastest; header and continuation lines, and a nested part's, the slowest), so this bounds the
loop's hold at a few milliseconds: 64 KB of lines (a part of 31,900 continuation lines, a nested part of 21,300
header lines or 63,800 blank ones) held it 100-170 ms. Past it, the parse goes on in the parser thread, with the
hand-off's cost (a small fraction of such a parse's). A multipart form of more lines is read on the loop only
when its parts are built without the parser, of at most this many header lines in all (the lines of their
content are cut out unread): a form's textarea of many lines stays on the loop."""
LOOP_ADDRESS_CHARS = 1024
"""Characters of address header text a parse on the loop may hand the standard library's address parser, over
all of a request's fields: it reads a character in 1 to 6 µs (runs of `[`, `<`, `;`, `@`, `:` the slowest), so
this bounds the loop's hold at a few milliseconds. The fast path (ordinary addresses, read by one regular
expression) costs nothing from it."""


class OffLoop(BaseException):
    """A parse on the event loop met work too costly for it (see `spend_on_loop`, `on_loop`): the parse is run
    again, from the start, in the parser thread. A BaseException, as SliceOver is, so that no handler's `except
    Exception` takes it for the parse's own failure."""


_LOOP_PARSE: ContextVar[list[int] | None] = ContextVar("loop_parse", default=None)
"""While a parse runs on the loop: what is left of its budget, a list (no object to build per request) indexed by
the positions below."""
_ADDRESS_CHARS, _RAW_BYTES, _MIME_LINES, _PARSER_LINES = range(4)
"""The budget's positions: address characters (LOOP_ADDRESS_CHARS), raw message bytes (LOOP_BYTES), MIME delimiter
lines (LOOP_MIME_LINES), and lines for the email package's parser (LOOP_PARSER_LINES)."""


def text_lines(data: bytes) -> int:
    """How many line ends `data` holds as the email package's parser splits lines (at \r\n, \r and \n),
    counted in C: three scans, some 10 µs over LOOP_BYTES."""
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n")


def start_loop_parse() -> Token[list[int] | None]:
    """Mark the parse that follows as running on the loop, with a fresh budget; `end_loop_parse` unmarks it. A
    parse in a thread runs unmarked (an executor does not carry the loop's context): nothing bounds it there."""
    return _LOOP_PARSE.set([LOOP_ADDRESS_CHARS, LOOP_BYTES, LOOP_MIME_LINES, LOOP_PARSER_LINES])  # by position


def end_loop_parse(token: Token[list[int] | None]) -> None:
    _LOOP_PARSE.reset(token)


def on_loop() -> bool:
    """Whether a parse marked by `start_loop_parse` is running: the caller raises OffLoop for costly work."""
    return _LOOP_PARSE.get() is not None


def spend_on_loop(address_chars: int, what: str) -> None:
    """Take `address_chars` from the loop parse's budget of LOOP_ADDRESS_CHARS; OffLoop(`what`) once it is spent.
    Nothing outside a loop parse."""
    parse = _LOOP_PARSE.get()
    if parse is None:
        return
    parse[_ADDRESS_CHARS] -= address_chars
    if parse[_ADDRESS_CHARS] < 0:
        raise OffLoop(what)


def spend_raw_on_loop(raw: bytes) -> None:
    """Take a raw message a body held encoded (base64, URL-encoded: a look at the body did not see its parts) from
    the loop parse's budget of LOOP_BYTES, LOOP_MIME_LINES and LOOP_PARSER_LINES, over all the raw messages of a
    request (a batch of SparkPost relay messages, each of a few parts); OffLoop once any is spent.
    Nothing outside a loop parse."""
    parse = _LOOP_PARSE.get()
    if parse is None:
        return
    lines = raw.count(b"\n--")
    if len(raw) > parse[_RAW_BYTES] or lines > parse[_MIME_LINES]:
        alone = len(raw) > LOOP_BYTES or lines > LOOP_MIME_LINES
        raise OffLoop(f"the raw message is {len(raw)} bytes with {lines} MIME delimiter lines"
                      + ("" if alone else ", past the loop's share with the request's messages before it"))
    read = text_lines(raw)  # each read by the parser, in Python
    if read > parse[_PARSER_LINES]:
        raise OffLoop(f"the raw message is {read} lines"
                      + ("" if read > LOOP_PARSER_LINES else ", past the loop's share with the request's messages "
                                                             "before it"))
    parse[_RAW_BYTES] -= len(raw)
    parse[_MIME_LINES] -= lines
    parse[_PARSER_LINES] -= read


async def in_parser(fn: Callable[..., T], *args: Any, pool: Executor = PARSER) -> T:
    """`fn(*args)` in the parser thread (or `pool`'s)."""
    return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)


async def render_sliced(fn: Callable[..., T], *args: Any, what: str, pool: Executor = PARSER,
                        **ids: str) -> T:
    """`fn(*args)`, a render (pure: it may be begun again), on the loop under a loop slice of LOOP_SLICE_S, which
    every mapping's render looks at (limits.start_slice); when it runs past the slice, again from the start in the
    parser thread (or `pool`'s) under the whole render budget. `what` and `ids` name it in the `render.offloaded`
    line."""
    token = start_slice(LOOP_SLICE_S)
    try:
        return fn(*args)
    except SliceOver:
        log.info("render.offloaded", what=what, slice_ms=LOOP_SLICE_S * 1000, **ids)
    finally:
        end_slice(token)
    return await in_parser(fn, *args, pool=pool)


class LenientOffLoop(OffLoop):
    """A vendor's answer read on the loop for its length (`read_answer_off_loop`) that msgspec refused, too long to
    be read again leniently there (`lenient_here`): it is read again, from the start, in the LOOKUPS thread."""


_STRICT_ON_LOOP: ContextVar[bool] = ContextVar("strict_on_loop", default=False)
"""While `read_answer_off_loop` reads an answer longer than LOOP_ANSWER_BYTES on the loop. A thread (LOOKUPS,
INFLATING) does not carry the loop's context: there it is false."""


def lenient_here(size: int) -> None:
    """Before `vendors.base.decode_json` reads `size` bytes leniently (msgspec refused them): LenientOffLoop when
    that read would be on the loop, in a read `read_answer_off_loop` placed there, and `size` is over
    LOOP_ANSWER_BYTES. Nothing elsewhere: in a thread, or in a send's classification (which its length placed)."""
    if size > LOOP_ANSWER_BYTES and _STRICT_ON_LOOP.get():
        raise LenientOffLoop(f"an answer of {size} bytes that msgspec refused is read leniently off the loop")


async def read_answer_off_loop(fn: Callable[..., T], body: bytes, *args: Any) -> T:
    """`fn(body, *args)`, reading a vendor's look-up (or token) answer: on the loop when `body` is at most
    SMALL_ANSWER_BYTES, else in the LOOKUPS thread, the cyclic collector paused meanwhile (`_uncollected`). On the
    loop, a body longer than LOOP_ANSWER_BYTES is decoded strictly only (`lenient_here`): when msgspec refuses it,
    `fn` is run again in LOOKUPS, where it is read leniently (up to 12 ms for 64 KiB, not on the loop). `fn` is
    plain code that decodes `body` before it acts on it, so that it may be begun again."""
    if len(body) <= LOOP_ANSWER_BYTES:
        return fn(body, *args)
    if len(body) <= SMALL_ANSWER_BYTES:
        token = _STRICT_ON_LOOP.set(True)
        try:
            return fn(body, *args)
        except LenientOffLoop:
            pass  # read again, from the start, below
        finally:
            _STRICT_ON_LOOP.reset(token)
    return await in_parser(_uncollected, fn, body, *args, pool=LOOKUPS)


def _uncollected(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` with the cyclic garbage collector paused. A look-up answer decoded in steps (vendors/json_steps)
    lets the loop run between them, but the tens of thousands of objects it builds call for collections, and one
    of the oldest generation, walking every ticket built so far, holds the GIL for tens of milliseconds (as the
    whole answer's decode did). The readers free what they built before they return (`json_steps.release`), so
    that the collector has little to walk once it runs again. Only the LOOKUPS thread pauses it, one read at a
    time; a collector paused by someone else is left so."""
    if not gc.isenabled():
        return fn(*args)
    gc.disable()
    try:
        return fn(*args)
    finally:
        gc.enable()
