"""One delivery attempt: build the vendor request, send it, classify the answer. Never raises for the
vendor's faults: every failure becomes an Outcome."""

from __future__ import annotations

import asyncio
import functools
import io
import re
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import msgspec
import structlog
from aiohttp.connector import Connection
from aiohttp_retry import ExponentialRetry, RetryClient
from yarl import URL

from bridge.bodies import UndecodableBody, read_decoding
from bridge.delivery.exchange import clip, exchange
from bridge.delivery.ratelimit import slot_of_request
from bridge.errors import BridgeError, MappingError, StoreUnavailable
from bridge.escaping import NUL, header_problem
from bridge.offload import INFLATING, LOOP_ANSWER_BYTES, in_parser
from bridge.store.base import Claimed
from bridge.vendors.base import ID_CHARS as ID_CHARS  # noqa: PLC0414 - where the delivery loop has imported it from
from bridge.vendors.base import (
    Adapter,
    Outcome,
    VendorAuthFailed,
    VendorBusy,
    VendorRateLimited,
    VendorRequest,
    VendorUnavailable,
    classify_status,
    interim_answer,
    look_up_limited,
    parse_retry_after,
    rate_limited,
    read_bounded,
)
from bridge.vendors.credentials import authorized

log = structlog.get_logger("ticketbridge.delivery")

MAX_RESPONSE_BYTES = 256 * 1024
EXCERPT_CHARS = 2000
# What of a vendor's words an attempt's error keeps (a message field may hold the whole 256 KiB read).
ERROR_CHARS = 2000
# What a request can fail with before the vendor answers: each is a retry.
# Failures of a connection that was made, before the whole answer came: the request may have been acted on.
LOST_ANSWER = (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError,
               ConnectionResetError, asyncio.IncompleteReadError)
# A connection not made within this is a plain retry (nothing was sent); a send timing out later is `unknown`.
CONNECT_TIMEOUT_S = 10.0
TRANSPORT_ERRORS = (TimeoutError, aiohttp.ClientError, OSError, asyncio.IncompleteReadError)


def lookup_retry() -> ExponentialRetry:
    """How a vendor look-up (a GET made while preparing a delivery, such as Netgroot's subject list) is
    retried when it fails in passing: twice more, 0.2 s then 0.4 s later, on a 429, a 5xx or a transport
    error. The delivery itself is retried on its schedule, which lives in the store."""
    return ExponentialRetry(attempts=3, start_timeout=0.1, max_timeout=1.0, retry_all_server_errors=False,
                            evaluate_response_callback=_lookup_settled, exceptions=set(TRANSPORT_ERRORS))


class _Paced:
    """A session whose requests after the first wait for `admit` (the destination's gate) before they go out, for
    a look-up's retries: aiohttp-retry calls only `.request` of the session it is given, once per try."""

    def __init__(self, session: aiohttp.ClientSession, admit: Callable[[], Awaitable[None]]) -> None:
        self.session = session
        self.admit = admit
        self.tries = 0

    async def request(self, method: str, url: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        self.tries += 1
        if self.tries > 1:
            await self.admit()
        return await self.session.request(method, url, **kwargs)


async def _lookup_settled(response: aiohttp.ClientResponse) -> bool:
    """Whether a look-up's answer is final; one that is not is released here, as it is dropped for another try. A
    rate limit's (a 429, a 503 with Retry-After) is final: tried again at once it would only be refused again, so
    the delivery is retried later, and after a 429 the destination paused (`look_up_limited`)."""
    if rate_limited(response.status, parse_retry_after(response.headers.get("Retry-After"))):
        return True
    if response.status >= 500:
        response.release()
        return False
    return True


class VendorResponse(aiohttp.ClientResponse):
    """The delivery session's answers (its `response_class`). One with an interim status (1xx) closes its
    connection, which is then never used again: aiohttp hands a `101 Switching Protocols` over as the answer (other
    1xx it reads past, waiting for the final answer) and, unless the 101 says `Upgrade`, gives its connection back
    to the pool at once, though what follows on it (a body the 101 announced, the other protocol's bytes) is no
    answer to the next request sent there."""

    async def start(self, connection: Connection) -> aiohttp.ClientResponse:
        protocol = connection.protocol
        started = await super().start(connection)
        if self.status < 200 and protocol is not None:  # interim (1xx): see interim_answer
            # Already back in the pool (its empty body ended as it started): closed, the pool drops it unused.
            protocol.close()
        return started


@functools.lru_cache(maxsize=64)
def send_timeout(timeout_s: float) -> aiohttp.ClientTimeout:
    """A send's timeouts: `timeout_s` in all, the connection (the host name's look-up, the socket's connect and a TLS
    handshake: `connect`) within CONNECT_TIMEOUT_S of it. Made once per value (a destination's `timeout_seconds`),
    not per attempt: a ClientTimeout is frozen, and shared."""
    connect = min(timeout_s, CONNECT_TIMEOUT_S)
    return aiohttp.ClientTimeout(total=timeout_s, connect=connect, sock_connect=connect)


class Written:
    """Whether the vendor may have seen a request (`maybe_sent`), as the delivery session's `WrittenRequest` marks
    the one its send set in `_WRITING`: made on such a session, it is not yet (false); its head handed to the
    connection, it may have (true). A failure before that (the host name's look-up, the connect, the TLS handshake,
    the wait for a connection) sent nothing. A request made on another session marks nothing: it may have (true)."""

    __slots__ = ("maybe_sent",)

    def __init__(self) -> None:
        self.maybe_sent = True


_WRITING: ContextVar[Written | None] = ContextVar("ticketbridge_written", default=None)
"""The `Written` of the send running in this task (`_exchange`): aiohttp makes and sends a request in the task that
asked for it."""


class WrittenRequest(aiohttp.ClientRequest):
    """The delivery session's request class (`delivery_session`): made before its connection is looked for, it marks
    its send's `Written` not sent; sent once the connection is made (`send` buffers the head, then writes it), it
    marks it maybe sent, before any byte of it can reach the vendor; once it is written, the rate limit counts the slot
    its task took for it from then (`ratelimit.slot_of_request`). (aiohttp's own tracing, a TraceConfig on the
    session, told the same through `on_request_headers_sent` at about 75k instructions a delivered event: a session
    with a trace config traces every step of every request.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if (written := _WRITING.get()) is not None:
            written.maybe_sent = False

    async def send(self, conn: Any) -> aiohttp.ClientResponse:
        if (written := _WRITING.get()) is not None:
            written.maybe_sent = True
        if (slot := slot_of_request()) is None:
            return await super().send(conn)
        try:
            response = await super().send(conn)
        except BaseException:
            slot()  # whatever of it went out went by now
            raise
        # The rate limit counts the request from when it was written, not from its slot: aiohttp buffers the head
        # and writes it with the body in a task of its own (the response's `_writer`, None once written), which may
        # run after a collection or other work. Counted when that task has ended, after the write; at once if aiohttp
        # keeps that task elsewhere (a test pins where it is).
        writing = getattr(response, "_writer", None)
        if isinstance(writing, asyncio.Task) and not writing.done():
            writing.add_done_callback(lambda _task: slot())
        else:
            slot()
        return response


def transport_failure(exc: BaseException, timeout_s: float) -> Outcome:
    """The retry a timeout or a connection failure stands for, its error naming which."""
    if isinstance(exc, TimeoutError):
        return Outcome(classification="retry", error=f"timed out after {timeout_s:g}s")
    return Outcome(classification="retry", error=f"connection failed: {type(exc).__name__}: {exc}")


def send_failure(exc: BaseException, timeout_s: float, *, maybe_sent: bool = True) -> Outcome:
    """What a send's transport failure means: a retry when the connection was never made or the request's head
    never written to it (`maybe_sent` false: nothing reached the vendor); otherwise `unknown`, as the request may
    have been written and acted on before the answer was lost (a timeout once written, a reset, a connection
    closed before the answer, an answer that cannot be parsed)."""
    if not maybe_sent and isinstance(exc, TimeoutError):
        return Outcome(classification="retry", error=f"timed out after {timeout_s:g}s before the request was written "
                                                     "(resolving the host name, connecting, or the TLS handshake): "
                                                     "nothing reached the vendor")
    if not maybe_sent:
        return Outcome(classification="retry", error=f"connection failed before the request was written: "
                                                     f"{type(exc).__name__}: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return Outcome(classification="retry", error=f"connection failed: {type(exc).__name__}: {exc}")
    if isinstance(exc, TimeoutError):
        return Outcome(classification="unknown",
                       error=f"timed out after {timeout_s:g}s once connected: the vendor may have acted on it")
    if isinstance(exc, aiohttp.ClientResponseError):
        # The answer's head came and could not be parsed (thousands of headers, a header or status line past
        # aiohttp's 8 KiB; a send's body is decoded by `read_decoding`, not as the head is read): the request was
        # written. Its message, not its str(), which adds the request's URL; without the vendor's bytes it quotes
        # (`head_problem`).
        return Outcome(classification="unknown", error=f"the vendor's answer could not be read: "
                                                       f"{head_problem(exc.message)}: the vendor may have acted on it")
    if isinstance(exc, LOST_ANSWER):
        return Outcome(classification="unknown", error=f"connection lost before the answer: {type(exc).__name__}: "
                                                       f"{exc}: the vendor may have acted on it")
    return transport_failure(exc, timeout_s)


# What aiohttp's parser quotes of an answer's head (`b'session=…'`, `'…'`), to its end when cut.
_QUOTED = re.compile(r"""b?'(?:[^'\\]|\\.)*(?:'|$)|b?"(?:[^"\\]|\\.)*(?:"|$)""")
NOT_KEPT = "<the vendor's text, not kept>"


def head_problem(message: str) -> str:
    """Why aiohttp could not parse an answer's head (`message`), fit to store and log: its first line, each piece of
    the answer it quotes left out. A line over the limit is quoted from its start, and that may be a header's
    value (a session cookie, a token); which header it was, aiohttp does not say."""
    first = str(message).split("\n", 1)[0].strip()
    return _QUOTED.sub(NOT_KEPT, first)[:200].rstrip(": .") or "malformed answer"


def bounded(outcome: Outcome) -> Outcome:
    """`outcome` as it is logged and recorded: its error cut at ERROR_CHARS (the lane cuts it as it redacts it,
    `Matcher.clip`, before this), and a ticket id, key or uuid longer than ID_CHARS or holding a NUL left out, the
    error saying so (a success stays a success: the vendor took the request; a ticket id so left out sets
    `ticket_id_dropped`). The adapters read the ids of an answer by `answer_id`, and so do their reconciliations
    the ids of a ticket they find (the http look-up's, Kapture's pulled ticket's), which refuses these and more
    (an object, `true`, 12.5); this is the last guard, for every outcome, whatever made it (Kapture's task id,
    taken when a pulled ticket has no ticket id at all, is read by no such rule)."""
    dropped = {key: why for key in ("ticket_id", "ticket_key", "ticket_uuid")
               if (value := getattr(outcome, key)) is not None and (why := _not_an_id(key, value)) is not None}
    error = outcome.error
    if error is not None:
        error = clip(error, ERROR_CHARS)
    if not dropped and error is outcome.error:
        return outcome
    lost = {"ticket_id_dropped": True} if "ticket_id" in dropped else {}
    return msgspec.structs.replace(outcome, error="; ".join(p for p in (error, *dropped.values()) if p),
                                   **dict.fromkeys(dropped), **lost)


def _not_an_id(key: str, value: str) -> str | None:
    """Why the vendor's `key` (ticket_id, …) is not kept, or None when it is an id. One longer than ID_CHARS would
    fill the store, logs and follow-up URLs; one holding a NUL could only be kept written out (`\\x00`), and a
    follow-up or a look-up naming the ticket by it would name another."""
    name = key.replace("_", " ")
    if len(value) > ID_CHARS:
        return f"the vendor's {name} is {len(value)} characters long, more than the {ID_CHARS} an id may have: not kept"
    if NUL in value:
        return f"the vendor's {name} holds a NUL character (\\x00), which no id has: not kept"
    return None


@dataclass
class Sent:
    outcome: Outcome
    started_at_ms: int
    duration_ms: float
    http_status: int | None
    excerpt: str | None
    exchange: dict[str, Any] | None = None
    resend_unsent: bool = False
    """The request written was refused for its credentials, and the store failed before its resend went out: the
    attempt ends with that refusal (`send_once`), which tells nothing of the vendor's health (its old token was
    refused; the store failed): the breaker is told nothing of it unless it was the probe (`Lane._answer_gate`)."""


Answer = tuple[int | None, str | None, dict[str, str] | None, Outcome]
"""An exchange's status, excerpt and headers (None when no answer came), and its outcome."""


class UnsendableHeader(BridgeError):
    """A request's header holds what no HTTP header can carry (`header_problem`): the request is not made (aiohttp
    would refuse to write it, before any byte goes out), and sending it again would fail alike."""


def check_headers(headers: Mapping[str, str], credentials: Collection[str], what: str) -> None:
    """Raise when a header of `headers` (those of `what`: "the request", "a look-up (GET /path)") cannot be sent:
    VendorAuthFailed when it is one the destination's credentials added (`credentials`, their names), else
    UnsendableHeader. The error names the header and what is wrong, never its value (a secret, often)."""
    for name, value in headers.items():
        if value.isprintable() and name.isprintable():  # no control character (each forbidden one is one): no search
            continue
        problem = header_problem(value)
        part = "value"
        if problem is None:
            problem, part = header_problem(name), "name"
            if problem is None:
                continue
        said = f"{what}'s header {name!r}: its {part} {problem}, which no HTTP header can carry"
        if name in credentials:
            raise VendorAuthFailed(f"{said} (the destination's credentials: check its auth)")
        raise UnsendableHeader(said)


LOOKUP_ERRORS = (VendorAuthFailed, VendorUnavailable, UnsendableHeader, *TRANSPORT_ERRORS)
"""What getting credentials or looking something up for a delivery can fail with (`lookup_failure`: what each means),
and what a request whose header cannot be sent raises (UnsendableHeader: `check_headers`)."""


async def send_once(session: aiohttp.ClientSession, adapter: Adapter, item: Claimed, timeout_s: float,
                    on_send: Callable[[], Awaitable[None]] | None = None,
                    *, on_lookup: Callable[[], Awaitable[None]] | None = None) -> Sent:
    """`on_send` is awaited just before each request goes out (a resend after refused credentials too): the rate
    limit notes the time, or holds a send that is late for its slot until it may go. `on_lookup` is awaited before
    each request a look-up makes while the request is prepared (`Adapter.prepare`; each of its retries too) and
    before each request for a token (`authorized`): the vendor counts those against its limit as well. The request
    and its look-ups carry the destination's credentials (`authorized`): refused, they are renewed and the attempt
    made once more, in this attempt.

    The store failing (StoreUnavailable, from `on_send` or `on_lookup`: a gate kept in the database) before any
    request of the send was written is raised: nothing reached the vendor. Once a request was written and refused
    for its credentials, the store failing before its resend went out (the new token's slot, a look-up's, the
    resend's own) ends the attempt with that refusal, the one answer the vendor gave: a `retry` keeping its status,
    excerpt and exchange, its error saying the resend was not made (`Sent.resend_unsent`: recorded without using a
    try)."""
    started_ms = time.time_ns() // 1_000_000
    t0 = time.perf_counter()
    answered: list[tuple[VendorRequest, Answer]] = []
    hidden = set(adapter.secret_headers())  # and each header the credentials add, as they add it

    async def attempt(auth: dict[str, str]) -> Answer:
        hidden.update(name.lower() for name in auth)
        async def fetch(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
            what = f"a look-up (GET {URL(url).path})"
            sent = {**headers, **auth}
            check_headers(sent, auth, what)  # before its slot: a look-up never made takes none
            client = session
            if on_lookup is not None:
                await on_lookup()  # the first try's slot, waited for before the look-up's timeout runs
                client = cast(aiohttp.ClientSession, _Paced(session, on_lookup))
            lookups = RetryClient(client_session=client, retry_options=lookup_retry())  # only a send that looks up
            async with asyncio.timeout(timeout_s):  # the look-up, its retries included, within one timeout
                # Not followed: a redirect would carry the look-up, and what it reads into a stored error, to any
                # host the vendor names (an admin port on this machine); the adapter sees the 3xx.
                async with lookups.get(url, headers=sent, allow_redirects=False) as resp:
                    look_up_limited(resp.status, resp.headers, what)
                    return resp.status, await read_bounded(resp, MAX_RESPONSE_BYTES)

        fields = await adapter.prepare(item.action, item.body, fetch)
        request = adapter.build_request(item.action, fields, item.options, ticket=item.ticket)
        request.headers.update(auth)
        check_headers(request.headers, auth, "the request")  # before it counts as written (`on_send`)
        if on_send is not None:
            # A resend after a refusal too: the vendor counts the refused request against its limit, and this one.
            await on_send()
        answer = await _exchange(session, adapter, item.action, request, timeout_s, delivery_id=item.id)
        answered.append((request, answer))
        return answer

    try:
        status, excerpt, headers, outcome = await authorized(session, adapter.credentials, attempt,
                                                             lambda a: a[3].classification == "auth",
                                                             admit=on_lookup)
    except StoreUnavailable as exc:
        if not answered:
            raise  # nothing was written: the caller gives the delivery back unsent
        # The one request written was refused for its credentials and answered (`authorized` makes a resend only
        # then); its resend, not written, needed the store. The vendor acted on neither.
        request, (status, excerpt, headers, refusal) = answered[0]
        outcome = Outcome(classification="retry",
                          error=f"{refusal.error}; its resend with renewed credentials was not made: the store "
                                f"failed before it went out: {exc}")
        return Sent(outcome, started_ms, (time.perf_counter() - t0) * 1000, status, excerpt,
                    exchange(request.method, request.url, request.headers, request.body, headers,
                             hidden=frozenset(hidden)), resend_unsent=True)
    except (MappingError, *LOOKUP_ERRORS) as exc:
        duration = (time.perf_counter() - t0) * 1000
        if not answered:
            return Sent(_not_sent(exc), started_ms, 0.0 if isinstance(exc, MappingError) else duration, None, None)
        # The vendor refused the token, and a new one could not be obtained: the refusal stands, and is an
        # auth failure only when the credentials themselves were refused.
        request, (status, excerpt, headers, refusal) = answered[-1]
        outcome = Outcome(classification="auth" if isinstance(exc, VendorAuthFailed) else "retry",
                          error=f"{refusal.error}; a new token could not be obtained: {exc}")
        return Sent(outcome, started_ms, duration, status, excerpt,
                    exchange(request.method, request.url, request.headers, request.body, headers,
                         hidden=frozenset(hidden)))
    request = answered[-1][0]
    duration = (time.perf_counter() - t0) * 1000
    return Sent(outcome, started_ms, duration, status, excerpt,
                exchange(request.method, request.url, request.headers, request.body, headers,
                         hidden=frozenset(hidden)))


def lookup_failure(exc: BaseException, *, failed: str, refused: str = "", name_unavailable: bool = True) -> Outcome:
    """The outcome of a delivery not sent because a look-up made for it failed (one made while its request is
    prepared, a follow-up's ticket check, a reconciliation): `auth` when the vendor refused the credentials,
    else `retry` (the vendor or the network failing in passing: `VendorUnavailable` or a transport error).
    The error says it was not sent; `refused` (auth) or `failed` (retry) names the look-up, and a retry's names
    the exception's type, unless `name_unavailable` is false and it is a VendorUnavailable (whose message
    names its look-up already). A request whose header cannot be sent (UnsendableHeader, naming it) is `permanent`:
    made again, it would fail alike."""
    if isinstance(exc, UnsendableHeader):
        return Outcome(classification="permanent", error=f"not sent: {exc}")
    if isinstance(exc, VendorAuthFailed):
        return Outcome(classification="auth", error=f"not sent: {refused}{exc}")
    if isinstance(exc, VendorBusy):  # retried no sooner than asked; a rate limit pauses the destination too
        return Outcome(classification="retry", error=f"not sent: {exc}", retry_after=exc.retry_after,
                       rate_limited=isinstance(exc, VendorRateLimited))
    if isinstance(exc, VendorUnavailable) and not name_unavailable:
        return Outcome(classification="retry", error=f"not sent: {exc}")
    return Outcome(classification="retry", error=f"not sent: {failed}{type(exc).__name__}: {exc}")


def _not_sent(exc: BaseException) -> Outcome:
    """The outcome of an attempt that failed before its request went out: a mapping the vendor cannot take
    (permanent), else a look-up's failure (`lookup_failure`: refused credentials, or failing in passing)."""
    if isinstance(exc, MappingError):
        return Outcome(classification="permanent", error=f"not sent: {exc}")
    return lookup_failure(exc, failed="a look-up failed: ", name_unavailable=False)


LARGE_BODY_BYTES = 2**20
"""aiohttp writes a request body given as bytes in one go, and warns (ResourceWarning) over 1 MiB that it may hold
the event loop (aiohttp.payload.TOO_LARGE_BYTES_BODY)."""


def request_data(body: bytes) -> bytes | io.BytesIO:
    """What aiohttp is given to send `body`: the bytes themselves, or, over LARGE_BODY_BYTES (a mail's attachments),
    a BytesIO over them, which aiohttp writes in chunks, giving the loop back between them, and does not warn of.
    Made for each request: aiohttp reads it once."""
    return io.BytesIO(body) if len(body) > LARGE_BODY_BYTES else body


async def _exchange(session: aiohttp.ClientSession, adapter: Adapter, action: str, request: VendorRequest,
                    timeout_s: float, *, delivery_id: str | None = None) -> Answer:
    """Send `request` once: the answer's status, excerpt and headers (None when none came), and its outcome. The
    adapter crashing on an answer whose status alone says what became of the request (`classify_status`: 5xx,
    429, 401…) gives that status's outcome (`classified_anyway`); on any other, the crash is raised."""
    written = Written()
    writing = _WRITING.set(written)
    try:
        # Its body is decoded here (`read_decoding`), not by aiohttp: aiohttp refuses a coding it cannot decode (zstd)
        # as it parses the head, before the status line that says what became of the request is known.
        async with session.request(
            request.method, request.target(), headers=request.headers, data=request_data(request.body),
            timeout=send_timeout(timeout_s), allow_redirects=False, auto_decompress=False,
        ) as response:
            if response.status < 200 and (interim := interim_answer(response.status)) is not None:
                # a 101 (VendorResponse has closed its connection): no body, no adapter's say
                return response.status, None, dict(response.headers), interim
            try:
                body, cut = await read_decoding(response, MAX_RESPONSE_BYTES)
            except UndecodableBody as exc:
                return response.status, None, dict(response.headers), undecodable_answer(response.status,
                                                                                         response.headers, exc)
            except TRANSPORT_ERRORS as exc:
                refused = unread_refusal(response.status, response.headers, exc, timeout_s)
                if refused is None:
                    raise
                return response.status, None, dict(response.headers), refused
            try:
                # An answer past LOOP_ANSWER_BYTES is classified in a thread: decoding it (leniently at worst) would
                # hold the loop.
                outcome = adapter.classify(action, response.status, response.headers, body) \
                    if len(body) <= LOOP_ANSWER_BYTES else await _classified_apart(
                        adapter, action, response.status, response.headers, body)
            except Exception as exc:
                outcome = classified_anyway(response.status, response.headers, exc, delivery_id)
            if cut:
                outcome = cut_answer(response.status, outcome)
            return (response.status, body[:EXCERPT_CHARS].decode("utf-8", "replace"), dict(response.headers),
                    outcome)
    except TRANSPORT_ERRORS as exc:
        return None, None, None, send_failure(exc, timeout_s, maybe_sent=written.maybe_sent)
    finally:
        _WRITING.reset(writing)


async def _classified_apart(adapter: Adapter, action: str, status: int, headers: Mapping[str, str],
                            body: bytes) -> Outcome:
    """`adapter.classify` of an answer past LOOP_ANSWER_BYTES, in the INFLATING thread. The vendor has answered: a
    stop that cancels the send meanwhile waits for the classification (one answer's read, 130 ms at worst) rather
    than lose it, and is raised again at the task's next wait, where the delivery loop records the answer before it
    stops (`Lane._answer_gate`, `Lane._record`). Cut off here, the send was recorded `unknown`, "stopped before the
    vendor answered", and a success's ticket was held in doubt or looked up (or, `on_unknown: resend`, made twice)."""
    classifying = asyncio.ensure_future(in_parser(adapter.classify, action, status, headers, body, pool=INFLATING))
    try:
        return await asyncio.shield(classifying)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        try:
            return await classifying  # a second stop gives it up
        finally:
            if task is not None:
                task.cancel()  # the stop, raised again at the next wait


def status_says(status: int, headers: Mapping[str, str], why: str) -> Outcome | None:
    """What an answer's status line alone decides (`classify_status`: 5xx, 429, 408, 425 a retry; 401, 403 auth; a
    3xx as `redirect_answer` says), its error followed by `why` its body had no say; None when only the body could
    tell."""
    by_status = classify_status(status, headers)
    return None if by_status is None else msgspec.structs.replace(by_status, error=f"{by_status.error}; {why}")


def classified_anyway(status: int, headers: Mapping[str, str], exc: Exception, delivery_id: str | None) -> Outcome:
    """The outcome of an answer whose classification crashed with `exc` (a bug): what its status alone says
    (`status_says`) when it says the vendor did not act, its error naming the crash, logged; else `exc` is raised
    (the delivery loop records the outcome as unknown: the vendor may have acted on it)."""
    by_status = status_says(status, headers, f"internal error classifying its answer: {type(exc).__name__}: {exc}")
    if by_status is None or by_status.classification == "unknown":
        raise exc
    log.error("delivery.classify_crashed", delivery_id=delivery_id, status=status,
              classification=by_status.classification, exc_info=exc, note="recorded as its status alone says")
    return by_status


def unread_refusal(status: int, headers: Mapping[str, str], exc: BaseException, timeout_s: float) -> Outcome | None:
    """What an answer whose body could not be read to its end (cut off, or timed out) means when its status line
    already said what became of the request (`status_says`), the error naming the status and why the body could not
    be read; None when only the body could tell (the outcome is then unknown). A body that cannot be decoded is
    `undecodable_answer`'s."""
    reason = f"timed out after {timeout_s:g}s" if isinstance(exc, TimeoutError) else \
        " ".join(f"{type(exc).__name__}: {exc}".split())
    return status_says(status, headers, f"its body could not be read: {reason}")


def undecodable_answer(status: int, headers: Mapping[str, str], exc: UndecodableBody) -> Outcome:
    """What an answer whose body cannot be decoded means (in a coding ticketbridge does not read, such as zstd, or
    not decoding as its coding says): what its status line says, as for a body cut off (`status_says`); a 2xx
    `unknown`, as a 2xx that cannot be read is (the vendor said it acted, and only its body could name the ticket or
    say it failed: never a quiet success); any other (a 4xx) `permanent`, the vendor's refusal of the request
    whatever its body said."""
    why = f"its body could not be read: {exc}"
    if (by_status := status_says(status, headers, why)) is not None:
        return by_status
    if 200 <= status < 300:
        return Outcome(classification="unknown", error=f"HTTP {status}; {why}: the vendor may have acted on it")
    return Outcome(classification="permanent", error=f"HTTP {status}; {why}")


def cut_answer(status: int, outcome: Outcome) -> Outcome:
    """The outcome of an answer longer than MAX_RESPONSE_BYTES, classified on its first MAX_RESPONSE_BYTES. A 2xx
    that does not read as a success is unknown, not the vendor's refusal: it may have made the ticket and said so
    past the cut. A success stands, saying the id may have been past the cut when none was read, after what the
    adapter said of an id it left out (where it was and what: `answer_id`)."""
    limit = f"{MAX_RESPONSE_BYTES // 1024} KiB" if MAX_RESPONSE_BYTES % 1024 == 0 else f"{MAX_RESPONSE_BYTES:,} bytes"
    said = f"HTTP {status}: the answer is longer than the {limit} read limit and was cut there"
    if not 200 <= status < 300:
        return outcome
    if outcome.classification != "success":
        return Outcome(classification="unknown",
                       error=f"{said}, so what it says could not be read: the vendor may have acted on it")
    if outcome.ticket_id is None:
        cut = f"{said}: no ticket id was read before the cut"
        return msgspec.structs.replace(outcome, error="; ".join(p for p in (outcome.error, cut) if p))
    return outcome
