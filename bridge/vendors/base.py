"""The adapter interface and the response classification every vendor shares."""

from __future__ import annotations

import email.utils
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, NamedTuple
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec
from yarl import URL

# Re-exported where adapters and the delivery loop have always imported them from (mypy's strict mode wants `as`).
from bridge.bodies import read_bounded as read_bounded  # noqa: PLC0414
from bridge.bodies import read_capped as read_capped  # noqa: PLC0414
from bridge.config import DestinationConfig
from bridge.delivery.redaction import Matcher, Redactor
from bridge.errors import BridgeError, MappingError
from bridge.escaping import NUL, escape_text
from bridge.offload import lenient_here
from bridge.vendors.credentials import Admit, Credentials

# Re-exported where adapters and the delivery loop have always imported them from (mypy's strict mode wants `as`).
from bridge.vendors.failures import VendorAuthFailed as VendorAuthFailed  # noqa: PLC0414
from bridge.vendors.failures import VendorBusy as VendorBusy  # noqa: PLC0414
from bridge.vendors.failures import VendorRateLimited as VendorRateLimited  # noqa: PLC0414
from bridge.vendors.failures import VendorUnavailable as VendorUnavailable  # noqa: PLC0414
from bridge.vendors.files import FileSet, attachment_list, with_text

Classification = Literal["success", "retry", "permanent", "auth", "skipped", "unknown", "reconciled", "held"]
"""`skipped`: a follow-up settled without a request (its mapping says skip, or its `when` is false).
`unknown`: the request may have reached the vendor but its answer was lost (a timeout once connected, a reset).
`reconciled`: not sent, its ticket found at the vendor after an unknown outcome. `held`: not sent, after an
unknown outcome, until an operator replays it or marks it succeeded (`on_unknown: hold`)."""
# GET a vendor URL: (url, headers) -> (status, body); the delivery loop supplies one bound to its session.
Fetch = Callable[[str, dict[str, str]], Awaitable[tuple[int, bytes]]]
ID_CHARS = 256
"""The longest id (ticket id, key or uuid) kept from a vendor's answer: a longer one is no id, and would fill the
store, logs and follow-up URLs."""


class CannotReconcile(BridgeError):
    """A delivery whose outcome is unknown cannot be looked up at the vendor (e.g. its body lacks the reference
    the look-up matches on): it is held for an operator rather than risk a second ticket."""


class SearchStopped(BridgeError):
    """A reconciliation stopped before it could tell whether the vendor holds the ticket: its deadline passed, or
    it reached the most it may pull. The outcome stays unknown (never a guess that the ticket is there or not);
    the message says what was searched and why it stopped."""


class VendorRequest(msgspec.Struct, kw_only=True):
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    encoded: bool = False
    """Whether `url` is sent exactly as written (its parts percent-encoded by the adapter): never requoted nor
    normalised (yarl would remove a `..` segment and decode `%2E`), so the request goes to the path it names."""

    def target(self) -> str | URL:
        """The URL to hand aiohttp: `url`, or with `encoded` a yarl URL taken as already encoded."""
        return URL(self.url, encoded=True) if self.encoded else self.url


# Make a vendor request: request -> (status, body); the delivery loop supplies one bound to its session.
Call = Callable[[VendorRequest], Awaitable[tuple[int, bytes]]]


class Found(msgspec.Struct, kw_only=True, frozen=True):
    """A ticket a reconciliation found at the vendor: the one an earlier send of unknown outcome created."""

    ticket_id: str
    ticket_key: str | None = None
    ticket_uuid: str | None = None
    detail: str = ""
    """What matched, for the attempt's record (e.g. "bridge_ref = evt_…, pulled 2024-04-19")."""


class Outcome(msgspec.Struct, kw_only=True):
    """What a response means for the delivery."""

    classification: Classification
    ticket_id: str | None = None
    error: str | None = None
    retry_after: float | None = None
    # A second, human-facing reference some vendors give beside the id (LeadSquared's `Key`, e.g. "#034").
    ticket_key: str | None = None
    # A third reference some vendors give beside the id and key (LeadSquared's `TicketId`, a UUID).
    ticket_uuid: str | None = None
    # The vendor said to slow down (a 429, a rate limit inside a 200 as LeadSquared's, a look-up's 429 or 503 with
    # Retry-After): the delivery loop pauses the destination for `retry_after` (else its rate window), whatever the
    # HTTP status.
    rate_limited: bool = False
    # A success whose answer held a ticket id that is no id (an object, an array, a boolean, a fraction, empty text,
    # text too long): the id is not kept (`ticket_id` is None) and `error` says where it was and what it was.
    ticket_id_dropped: bool = False


class Diagnosis(msgspec.Struct, kw_only=True):
    """What `ticketbridge doctor` concludes from one harmless look-up: whether host, keys and permissions work,
    in plain words, and the fix when they do not."""

    ok: bool
    said: str
    fix: str | None = None


class Adapter(ABC):
    """One vendor's requests and answers, as plain code without I/O."""

    vendor: ClassVar[str]
    Options: ClassVar[type[DestinationConfig]]
    actions: ClassVar[frozenset[str]]

    def __init__(self, name: str, config: DestinationConfig, base_url: str | Callable[[], str], *,
                 attachments_dir: Path | None = None) -> None:
        self.name = name
        self.config = config
        self._base_url = base_url
        # Where intake keeps attachment content (by sha256), for adapters that send files.
        self.attachments_dir = attachments_dir
        # Headers the delivery loop adds to every request (and to `prepare`'s look-ups); None: the adapter
        # puts its credentials in the request itself.
        self.credentials: Credentials | None = None
        self.redactor = Redactor(config.secret_values(), secret_url=config.secret_url())
        """The destination's secrets, found by value in what its attempts keep and log (compiled once, here)."""

    def redaction(self, options: Mapping[str, Any] | None = None) -> Matcher:
        """What redacts the destination's secrets now: those configured, those its credentials hold, and those in
        the attempt's mapping `options` (`option_secrets`)."""
        held = () if self.credentials is None else self.credentials.held()
        extra = self.option_secrets(options) if options else ()
        return self.redactor.matcher([*held, *extra] if extra else held)

    def option_secrets(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        """The secret values a mapping's `options:` for this destination hold (an http destination's secret
        `path`), redacted from its attempts beside the configured ones. The default: none."""
        return ()

    async def close(self, session: aiohttp.ClientSession, admit: Admit | None = None) -> None:
        """Give back what the destination's credentials obtained (a log-out), at shutdown; its request waits for
        `admit` (the destination's gate: its rate limit, a 429's pause) first, as every request to the vendor does."""
        if self.credentials is not None:
            await self.credentials.close(session, admit)

    def secret_headers(self) -> frozenset[str]:
        """Lower-case names of the headers the destination's configuration puts on its requests that may hold
        its secrets, whatever they are called: never shown in an attempt's record (the headers its
        `credentials` add are hidden too). The default: none."""
        return frozenset()

    @property
    def base_url(self) -> str:
        """The vendor's base URL; a callable for sandboxes, whose address is known once the server listens."""
        url = self._base_url if isinstance(self._base_url, str) else self._base_url()
        return url.rstrip("/")

    def note_files(self, fields: dict[str, Any], files: FileSet | None, default_field: str, *,
                   sent: bool) -> dict[str, Any]:
        """`fields` with the ticket text about `files` added to the destination's `attachments.note_field`
        (else `default_field`): for a vendor that takes files (`sent`), those that could not go and why; for
        one that does not, every file's name and size. Unchanged when there is nothing to say."""
        note = "" if files is None else files.note() if sent else attachment_list(files.metas)
        if note:
            target = self.config.attachments.note_field or default_field
            fields[target] = with_text(fields.get(target), note)
        return fields

    @classmethod
    def static_check(cls, action: str, fields: list[str], options: Mapping[str, Any]) -> list[str]:
        """Problems visible in a mapping before any event: e.g. a field the action always needs. One
        message per problem, naming the field; empty when there is nothing to say."""
        return []

    async def prepare(self, action: str, fields: dict[str, Any], fetch: Fetch) -> dict[str, Any]:
        """Resolve what needs the vendor's help before the request is built (look-ups such as subject
        names to ids), through `fetch`. Raise MappingError for a permanent problem, VendorUnavailable
        to retry later. The default needs nothing."""
        return fields

    def ticket_id_at(self, action: str) -> str | None:
        """Where a success of `action` gives the ticket id the bridge keeps (the answer's path, as the vendor writes
        it), or None when its answer gives none the bridge needs. A success of such an action whose answer holds no id
        there is a ticket the bridge cannot name (`AttemptResult.ticket_missing`). The default: a create, whose
        answer gives the conversation its ticket, at a place each vendor names."""
        return None

    def reconciles(self, action: str) -> bool:
        """Whether a delivery of `action` whose outcome is unknown can be looked up at the vendor (`find`)."""
        return False

    async def find(self, action: str, fields: dict[str, Any], since_ms: int, call: Call) -> Found | None:
        """The ticket an earlier send of these `fields` created at or after `since_ms` (ms since the epoch), or
        None when the vendor holds none; through `call`. Raise VendorUnavailable to try again later,
        VendorAuthFailed for refused credentials, CannotReconcile when no look-up can tell, SearchStopped (what
        `call` raises when the reconciliation's deadline passes, with what was searched added) when the search
        ends before it can tell. Hold one answer at a time: a look-up may pull many."""
        raise CannotReconcile(f"{self.vendor} offers no look-up for {action}")

    async def ticket_exists(self, ticket_id: str, call: Call) -> bool | None:
        """Whether the vendor still holds `ticket_id` (asked before a follow-up where the destination says
        so), through `call`; None when this adapter does not check. Raise VendorUnavailable or
        VendorAuthFailed when the look-up fails."""
        return None

    @abstractmethod
    def build_request(self, action: str, fields: dict[str, Any], options: Mapping[str, Any],
                      ticket: Mapping[str, Any] | None = None) -> VendorRequest:
        """The HTTP request for `action`; raises MappingError when the fields cannot be sent. `ticket` is the
        conversation's ticket for a follow-up (`id`, `key`, `destination`, `created_at`, `messages`,
        `last_message_at`), None for a first message; adapters read it where the vendor wants the ticket
        outside the body (a URL path), and a field of the mapping that names the ticket wins over it."""

    @abstractmethod
    def classify(self, action: str, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        """success, retry, permanent or auth, with the vendor's ticket id or error."""

    def doctor_request(self) -> VendorRequest | str:
        """The one harmless, authenticated look-up (never a create) that shows whether host, keys and
        permissions work; or why there is none (the check is then skipped). Credentials are added by the caller."""
        return f"no harmless look-up is known for {self.vendor}"

    def diagnose(self, status: int, headers: Mapping[str, str], body: bytes) -> Diagnosis:
        """What the answer to `doctor_request` says about the destination's setup."""
        if 200 <= status < 300:
            return Diagnosis(ok=True, said=f"HTTP {status}: host and credentials work")
        if status in (401, 403):
            return Diagnosis(ok=False, said=f"HTTP {status}: the credentials were refused: {excerpt(body)}",
                             fix="check the destination's keys")
        return Diagnosis(ok=False, said=f"HTTP {status}: {excerpt(body)}")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta seconds or an HTTP date); None when it is neither, or
    names a date no calendar holds (year 9999999999: the retry schedule decides then). A number that is negative
    or not finite (`-5`, `nan`, `inf`, `1e400`) is no delta (RFC 9110 §10.2.3: a non-negative integer) and reads
    as None, as any garbage does (a 429 then pauses for the limiter's window, not 0 s); a date already past is 0."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
    return max(0.0, (when - current).total_seconds())


def interim_answer(status: int) -> Outcome | None:
    """What an interim status (1xx) given as the answer means: `unknown`; None for a final status. ticketbridge
    asks for no protocol switch and waits for no interim answer, so a `101 Switching Protocols` (which aiohttp hands
    over as the answer; other 1xx it reads past, waiting for the final one) is a proxy's or the vendor's protocol
    error that came after the request was written: the vendor may or may not have acted on it."""
    if not 100 <= status < 200:
        return None
    said = "Switching Protocols, which ticketbridge never asks for" if status == 101 else "an interim status"
    return Outcome(classification="unknown",
                   error=f"HTTP {status} ({said}) came where the final answer was due: a proxy's or the vendor's "
                         "protocol error; the vendor may have acted on the request")


def rate_limited(status: int, retry_after: float | None) -> bool:
    """Whether a look-up's answer of `status` tells the caller to slow down: a 429, or a 503 that says when to come
    back (Retry-After read as `retry_after`): not tried again at once (`look_up_limited`)."""
    return status == 429 or (status == 503 and retry_after is not None)


def look_up_limited(status: int, headers: Mapping[str, str], what: str) -> None:
    """Raise, naming `what` (the look-up), when its answer of `status` says to slow down (`rate_limited`), rather
    than the look-up being tried again at once: VendorRateLimited for a 429 (the destination pauses, as after a
    send's 429), VendorBusy for a 503 with Retry-After (its delivery alone waits, as after a send's 503)."""
    wait = parse_retry_after(headers.get("Retry-After"))
    if rate_limited(status, wait):
        said = "" if wait is None else f", Retry-After {wait:g}s"
        if status == 503:
            raise VendorBusy(f"{what} answered HTTP 503 with Retry-After {wait:g}s", wait)
        raise VendorRateLimited(f"{what} was rate limited (HTTP {status}{said})", wait)


LOCATION_CHARS = 120
"""The most of a redirect's `Location` an error names."""


def _first_segment(path: str) -> str:
    """`path` cut after its first segment (without its `;` parameters), `…` standing for what followed: a
    Location's path may hold a token (`;jsessionid=`, a signed segment, a webhook's `/services/T/B/SECRET`)."""
    lead = "/" if path.startswith("/") else ""
    first, slash, rest = path[len(lead):].partition("/")
    first, semicolon, _ = first.partition(";")
    return lead + first + (";…" if semicolon else "/…" if rest else slash)


def redirect_target(headers: Mapping[str, str]) -> str:
    """A redirect's `Location` as an error names it: its scheme, host, port and first path segment, `…` for what
    followed (`_first_segment`), without its user info, query string and fragment (they may hold a token), cut at
    LOCATION_CHARS, its text written out (`escape_text`); `no Location` without one."""
    location = (headers.get("Location") or "").strip()
    if not location:
        return "no Location"
    try:
        parts = urlsplit(location)
        shown = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], _first_segment(parts.path), "", ""))
    except ValueError:  # a bracketed host that is no IPv6 address, a port that is no number
        bare = location.split("?")[0].split("#")[0]
        scheme, slashes, rest = bare.partition("//") if "//" in bare else ("", "", bare)
        authority, slash, path = rest.partition("/") if slashes else ("", "", rest)
        shown = scheme + slashes + authority.rpartition("@")[2] + _first_segment(slash + path)
    shown = escape_text(shown)
    return repr(shown if len(shown) <= LOCATION_CHARS else shown[:LOCATION_CHARS - 1] + "…")


SAME_REQUEST_REDIRECTS = frozenset({301, 307, 308})
"""The redirects that ask for the same request at another URL (a moved base_url, http to https): the vendor did
not act on it. Any other, after a send, may be a Post/Redirect/Get: "done, see there"."""


def redirect_answer(status: int, headers: Mapping[str, str]) -> Outcome:
    """What a redirect (3xx) as the answer to a send means; ticketbridge follows none (the request and its
    credentials would go to another URL). A 303 See Other, and any redirect but 301, 307 and 308, is how many APIs
    say "done, see there" after a create (Post/Redirect/Get): the vendor may have acted, so it is `unknown` (held or
    looked up, never sent again blindly), whatever the request's method (an adapter classifies an answer without
    it). A 301, 307 or 308 says the URL is not where the API answers: the request was not acted on, and every
    request of the destination will be answered so until its URL is fixed. It is a `retry` that counts against the
    destination (after 5 the lane pauses and probes, its deliveries keeping their tries), not a `permanent` failure
    that would kill the whole backlog: fix `base_url` (or `path`), and what waits is sent (what died meanwhile is
    replayed)."""
    where = redirect_target(headers)
    if status == 303:
        return Outcome(classification="unknown",
                       error=f"HTTP 303 See Other to {where} (not followed): the vendor may have acted on the request")
    if status not in SAME_REQUEST_REDIRECTS:
        return Outcome(classification="unknown",
                       error=f"HTTP {status} redirect to {where} (not followed): the vendor may have acted on the "
                             "request")
    return Outcome(classification="retry",
                   error=f"HTTP {status} redirect to {where} (not followed): the destination's URL is not where the "
                         "API answers; fix its base_url or path")


def classify_status(status: int, headers: Mapping[str, str]) -> Outcome | None:
    """The classification an HTTP status alone decides, or None when the body must be read. An interim status
    (1xx) is `unknown` (`interim_answer`), a redirect (3xx) as `redirect_answer` says."""
    if status < 200:  # a status line aiohttp read has three digits: 1xx (a call only then: this runs per answer)
        return interim_answer(status)
    if 300 <= status < 400:
        return redirect_answer(status, headers)
    if status in (408, 425, 429) or status >= 500:
        wait = parse_retry_after(headers.get("Retry-After"))
        return Outcome(classification="retry", error=f"HTTP {status}", retry_after=wait, rate_limited=status == 429)
    if status in (401, 403):
        return Outcome(classification="auth", error=f"HTTP {status}: the vendor refused the credentials")
    return None


LOOKUP_MAX_CONTAINERS = 400_000
"""The most objects and arrays a look-up answer may hold (a day of 36,000 Kapture tickets holds about 110,000 in
32 MiB): past it the answer is refused before it is decoded, so that what decoding it builds stays bounded (about
a gigabyte, for an answer of 32 MiB of empty objects, without it)."""


def containers_over(body: bytes, limit: int = LOOKUP_MAX_CONTAINERS) -> int | None:
    """How many objects and arrays `body` may hold, when that is more than `limit` (None otherwise): its `{` and
    `[` counted, in text too (an over-count, never an under-count), a megabyte at a time."""
    count = 0
    for start in range(0, len(body), 1 << 20):
        end = start + (1 << 20)
        count += body.count(b"{", start, end) + body.count(b"[", start, end)
        if count > limit:
            return count
    return None


def too_many_containers(body: bytes, what: str) -> str | None:
    """Why the look-up answer `body` (of `what`) is not read (`containers_over`), or None to read it."""
    count = containers_over(body)
    if count is None:
        return None
    return (f"{what} holds more than {LOOKUP_MAX_CONTAINERS:,} objects and arrays ({count:,} or more, in "
            f"{len(body):,} bytes), the most a look-up answer is read with")


LENIENT_BYTES = 256 * 1024
"""The longest body `decode_json` reads leniently when the strict decode refuses it: an answer to a send or a token
request (capped at this size when read); a larger look-up answer is read strictly only. A lenient read costs up to
0.2-0.4 µs a byte (40-130 ms for 256 KiB): a send's answer over `offload.LOOP_ANSWER_BYTES` is classified off
the event loop, a look-up's over `offload.SMALL_ANSWER_BYTES` read off it, and a look-up's or token's answer over
`offload.LOOP_ANSWER_BYTES` read on it is read there strictly only (`offload.lenient_here`)."""


def decode_json(body: bytes) -> Any:
    """The body as JSON, or None when it is not JSON: malformed, a number out of range, or nesting too deep to
    follow (msgspec's RecursionError), as a hostile or broken vendor may answer. A body of at most LENIENT_BYTES
    that msgspec refuses only for its text is read leniently (`decode_lenient`): a vendor that echoes a title cut
    inside an emoji (`"\\ud83d"`) or one Latin-1 byte has still made the ticket its answer names."""
    try:
        return msgspec.json.decode(body)
    except RecursionError:
        return None
    except (msgspec.DecodeError, UnicodeDecodeError):
        if len(body) > LENIENT_BYTES:
            return None
        lenient_here(len(body))  # on the loop past its share: raises, and the answer is read again in a thread
        return decode_lenient(body)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    """A JSON number with a fraction or exponent, refused as msgspec refuses it when out of range (`1e400`)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is out of range")
    return value


def decode_lenient(body: bytes) -> Any:
    """The body as JSON read by Python's decoder, which takes what msgspec refuses in text alone: a byte that is not
    UTF-8 (read with surrogateescape) and an escaped lone surrogate (`"\\ud83d"`); each such code point in its text
    (keys too) then written out as the store keeps text (`escape_text`: `\\xe9`, `\\ud83d`). None when it is
    still not JSON (NaN, Infinity and a number out of range are not, as for msgspec); linear in the body."""
    try:
        value = json.loads(body.decode("utf-8", "surrogateescape"), parse_constant=_no_constant,
                           parse_float=_finite)
        return _escaped(value)
    except (ValueError, RecursionError):  # JSONDecodeError, digits past Python's limit; nesting too deep
        return None


def _escaped(value: Any) -> Any:
    """`value` (decoded JSON) with every text in it (keys too) encodable (`escape_text`)."""
    if isinstance(value, str):
        return escape_text(value)
    if isinstance(value, dict):
        return {escape_text(k): _escaped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    return value


TOKEN_ANSWER_CHARS = 200
"""The most of a token endpoint's answer (the names of its JSON object's keys) an error quotes."""


def _key_names(answer: dict[Any, Any]) -> Iterable[str]:
    """The names of `answer`'s keys, those of an object under one dotted after it (`data.access_token`), an
    array's written `name[…]`, depth first and lazily (the caller stops at TOKEN_ANSWER_CHARS), never a value."""
    stack: list[tuple[str, Iterable[tuple[Any, Any]]]] = [("", iter(answer.items()))]
    while stack:
        prefix, items = stack[-1]
        for key, value in items:
            name = prefix + escape_text(str(key))
            if isinstance(value, dict) and value:
                stack.append((name + ".", iter(value.items())))
                break
            yield name + "[…]" if isinstance(value, list) else name
        else:
            stack.pop()


def token_answer_said(raw: bytes, content_type: str | None, parsed: Any) -> str:
    """What a token endpoint's answer (`raw`, decoded as `parsed`) says, for an error a human reads, without any
    token it carries: a JSON object by the names of its keys alone (`_key_names`), cut at TOKEN_ANSWER_CHARS, no
    value quoted (a token may be under any name: `jwt`, `sid`, `result`); any other answer (text, HTML, a JSON
    string that may be the token itself) only by its content type and length, never quoted. The bridge's value
    redaction knows only tokens it holds; this answer's are not held yet. What the endpoint said of a refusal its
    caller quotes from the keys that say it (`error`, `error_description`, `message`)."""
    if isinstance(parsed, dict):
        names: list[str] = []
        length = 0
        for name in _key_names(parsed):
            names.append(name)
            length += len(name) + 2
            if length > TOKEN_ANSWER_CHARS:
                break
        listed = ", ".join(names)
        listed = listed if len(listed) <= TOKEN_ANSWER_CHARS else listed[:TOKEN_ANSWER_CHARS - 1] + "…"
        return f"a JSON object with the keys {listed or '(none)'}, values not quoted"
    kind = escape_text((content_type or "no content type").split(";")[0].strip()[:60]) or "no content type"
    return f"a body of {len(raw):,} bytes ({kind}), not quoted: not a JSON object"


def token_answer(raw: bytes, content_type: str | None, *said_by: str) -> tuple[dict[str, Any], str]:
    """A token endpoint's answer (`raw`, of `content_type`): its JSON object (empty when it is not one), and what it
    says for an error a human reads: the texts under the keys `said_by` names (`error`, `error_description`), else
    `token_answer_said`; never the answer as it came, which may carry a live token no redaction knows yet."""
    parsed = decode_json(raw)
    data = parsed if isinstance(parsed, dict) else {}
    said = ": ".join(text for key in said_by if (text := text_or_none(data.get(key))))
    return data, said or token_answer_said(raw, content_type, parsed)


def unreadable_success(vendor: str, status: int, body: bytes, what: str = "a JSON object") -> Outcome:
    """The outcome of a 2xx whose answer cannot be read (not `what`, even leniently): `unknown`, not `permanent`.
    The vendor said it acted and may have made the ticket its answer would name: it is held (or looked up) as any
    outcome in doubt, never dropped, nor sent again as a second ticket."""
    said = f"{vendor}: HTTP {status} but the answer is not {what}, so no ticket is named"
    return Outcome(classification="unknown", error=f"{said}: {excerpt(body)}")


def lower_keys(body: Mapping[Any, Any]) -> dict[str, Any]:
    """A JSON object with lower-cased keys, for vendors whose key case varies (`status`/`Status`)."""
    return {str(k).lower(): v for k, v in body.items()}


def blank(value: Any) -> bool:
    """Whether a rendered value holds nothing to send: None, or text of spaces only."""
    return value is None or (isinstance(value, str) and not value.strip())


def text_or_none(value: Any) -> str | None:
    """A vendor's id or message as text; None for null, empty text, or a table or list."""
    if value is None or isinstance(value, dict | list) or value == "":
        return None
    return str(value)


class AnswerId(NamedTuple):
    """An id read from a vendor's answer: its text (None when there is none to keep), and what was wrong with what
    the answer held (None when nothing was): with no text, the id the answer gave was dropped; with text, an
    earlier place of the id held something that is no id, and the text came from a later one."""

    text: str | None = None
    problem: str | None = None


NO_ID = AnswerId()
_SHOWN_CHARS = 60


def _shown(value: Any) -> str:
    """`value` as JSON, cut to _SHOWN_CHARS: enough to recognise it in an attempt's error, never the whole of it."""
    try:
        text = msgspec.json.encode(value).decode()
    except (TypeError, ValueError, OverflowError):  # not from a JSON answer; never fails for one
        text = type(value).__name__
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 1] + "…"


def id_problem(value: Any) -> str | None:
    """Why `value` (read from a vendor's answer where an id goes, not null) is no id, or None when it is one: an id
    is a whole number (kept as its decimal text) or text, of at most ID_CHARS characters, not blank and without a
    NUL (which no id has; a follow-up or a look-up naming the ticket by it would name another)."""
    if isinstance(value, bool):
        return f"a boolean ({_shown(value)})"
    if isinstance(value, int):
        try:
            digits = len(str(value))
        except ValueError:  # more digits than Python writes out (msgspec reads no such number from JSON)
            return f"a whole number of more than {ID_CHARS} characters"
        return None if digits <= ID_CHARS else f"a whole number of {digits} characters"
    if isinstance(value, float):
        return f"a number with a fraction or an exponent ({_shown(value)})"
    if isinstance(value, dict):
        return f"an object ({_shown(value)})"
    if isinstance(value, list):
        return f"an array ({_shown(value)})"
    if not isinstance(value, str):
        return f"a {type(value).__name__}"
    if not value.strip():
        return "empty text" if not value else f"blank text ({_shown(value)})"
    if len(value) > ID_CHARS:
        return f"text of {len(value)} characters"
    if NUL in value:
        return "text holding a NUL character (\\x00)"
    return None


def answer_id(value: Any, where: str, name: str = "ticket id") -> AnswerId:
    """The id a vendor's answer holds at `where` (its path, as the vendor writes it): its text, nothing (null or
    absent), or why what it holds is not kept (`id_problem`), in words naming `where`, the value and what an id
    would be."""
    if value is None:
        return NO_ID
    problem = id_problem(value)
    if problem is None:
        return AnswerId(str(value))
    return AnswerId(problem=f"the answer's {name} at `{where}` is {problem}, not kept (an id is a whole number or "
                            f"non-blank text of at most {ID_CHARS} characters, no NUL)")


def first_id(places: Iterable[tuple[str, Any]], name: str = "ticket id") -> AnswerId:
    """The first id kept of `places` ((path, value) in the order the vendor's answer is read); an earlier place
    holding what is no id is said in `problem` beside it. None anywhere: NO_ID."""
    problems: list[str] = []
    for where, value in places:
        found = answer_id(value, where, name)
        if found.problem is not None:
            problems.append(found.problem)
        if found.text is not None:
            return AnswerId(found.text, "; ".join(problems) or None)
    return AnswerId(problem="; ".join(problems) or None)


def succeeded(ticket: AnswerId = NO_ID, *, key: AnswerId = NO_ID, uuid: AnswerId = NO_ID) -> Outcome:
    """A success with the ids its answer gave: an id that is no id is left out, `error` saying where and what it
    was; one left out of `ticket` sets `ticket_id_dropped`, so that the delivery loop makes it loud."""
    problems = [found.problem for found in (ticket, key, uuid) if found.problem is not None]
    return Outcome(classification="success", ticket_id=ticket.text, ticket_key=key.text, ticket_uuid=uuid.text,
                   error="; ".join(problems) or None,
                   ticket_id_dropped=ticket.text is None and ticket.problem is not None)


def ticket_ref(ticket: Mapping[str, Any] | None, key: str = "id") -> str | None:
    """The follow-up ticket's `id` (or `key`) as text, or None when there is no ticket or no such value."""
    if ticket is None:
        return None
    return text_or_none(ticket.get(key))


def ticket_id_from(fields: Mapping[str, Any], names: tuple[str, ...], ticket: Mapping[str, Any] | None,
                   vendor: str) -> str:
    """The ticket a follow-up addresses: the first of the fields `names` with a value, else the ticket's id;
    MappingError naming the field when neither has one."""
    for name in names:
        value = fields.get(name)
        if not blank(value):
            if isinstance(value, dict | list | bool):
                raise MappingError(f"{vendor} takes a ticket id here, got {value!r}", path=name)
            return str(value).strip()
    found = ticket_ref(ticket)
    if found is None:
        raise MappingError(f"{vendor} needs the ticket to act on: set `{names[0]}` (e.g. "
                           f"\"{{{{ ticket.id }}}}\") or send this as a follow-up of a ticket", path=names[0])
    return found


def excerpt(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", "replace")
    return text + ("…" if len(body) > limit else "")
