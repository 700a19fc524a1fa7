"""The handler interface: verify the raw request, parse it, normalise it, name its dedup key."""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import msgspec
from aiohttp import web

from bridge.config import ServerConfig, SourceConfig
from bridge.errors import Rejected
from bridge.escaping import quoted_sent
from bridge.events import Channel
from handlers.attachments import Attachment

KEEP_HEADERS = ("content-type", "user-agent", "referer", "origin", "x-request-id", "x-forwarded-for")

Clock = Callable[[], float]
"""Seconds since the epoch; handlers read time only through one, so tests can set it."""


class Count(Protocol):
    """Counts an event for /metrics (`Runtime.count`, the source's name added): `count(name, reason="rate")`."""

    def __call__(self, name: str, n: int = 1, **labels: str) -> None: ...


def not_counted(name: str, n: int = 1, **labels: str) -> None:
    """The `Count` of a handler made outside an app (a unit test's): counts nowhere."""


T = TypeVar("T")


class Inbound(msgspec.Struct, kw_only=True):
    """One event a request carries (most carry one)."""

    payload: dict[str, Any]
    dedup_key: str | None = None
    spam: bool = False
    attachments: list[Attachment] = []
    """Files whose metadata dicts sit in `payload`; intake writes their content before the event is stored."""


class SignedNonce(msgspec.Struct, kw_only=True, frozen=True):
    """A value the provider signs once per request without signing the body (Mailgun's `token`): another
    request carrying it is a replay, refused while the signed timestamp is within the tolerance."""

    value: str
    name: str
    """How an answer names it, e.g. "Mailgun `token`"."""
    valid_for_s: float
    """How much longer the request's signed timestamp stays within the tolerance."""
    scope: str | None = None
    """Where the value must be unique (signing.key_scope of the key that signs it): every source with that key;
    None, this source alone. A replay is a reuse anywhere in the scope."""


@dataclass(frozen=True)
class Intercepted:
    """A POST answered without storing an event: a provider's handshake, or a notification the source ignores."""

    response: web.StreamResponse
    outcome: Literal["handshake", "ignored"]
    reason: str
    code: str = "other"
    """A stable word for the metric's `reason` label (`reason` itself is free text, for the log and the answer)."""


def ignored(reason: str, code: str = "other") -> Intercepted:
    """Answer 200 so the provider stops retrying, and store nothing; counted under `code`."""
    body = msgspec.json.encode({"accepted": True, "ignored": reason})
    return Intercepted(web.Response(body=body, status=200, content_type="application/json"), "ignored", reason,
                       code)


_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
"""What every provider's event and record names look like (`inbound.message`, `MessageLinkClicked`)."""

_JSON_TYPES = {bool: "boolean", int: "number", float: "number", dict: "object", list: "array"}


def named(value: Any) -> str:
    """A provider's event, record or update name for a reason a person reads (logged, and sent back): quoted when
    it looks like a name, else only its type and length. Request text is never echoed, whole or cut: a cut can
    leave an address the log's mask no longer recognises (`<asha.rao@ex`)."""
    if isinstance(value, str):
        return repr(value) if _NAME.fullmatch(value) else f"<text of {len(value)} characters>"
    if value is None:
        return "<none>"
    return f"<a JSON {_JSON_TYPES.get(type(value), type(value).__name__)}>"


def not_a_message(code: str, reason: str) -> Intercepted:
    """A provider's post that carries no inbound message (a delivery notification, a stored-message notice, a
    dashboard check): answered 200 so the provider calls the integration healthy and stops retrying, never
    stored, counted as `intake.ignored{reason="not_a_message:<code>"}`. Any handler's `intercept` may return
    it; `code` is a stable word such as `delivery`, `stored` or `check`."""
    return ignored(f"not a message: {reason}", f"not_a_message:{code}")


def handshake_answer(response: web.StreamResponse, reason: str) -> Intercepted:
    """Answer a provider's handshake made by POST (Slack, SNS): counted as a handshake, nothing stored."""
    return Intercepted(response, "handshake", reason)


def obj(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: optional nested objects are read without ceremony."""
    return value if isinstance(value, dict) else {}


def items(value: Any) -> list[Any]:
    """`value` if it is a JSON array, else an empty one: optional lists are walked without ceremony."""
    return value if isinstance(value, list) else []


# One request key, made at import: aiohttp names a key after the module that makes it by walking the stack,
# which fails in the worker thread that verifies and parses a large body.
_request_key = getattr(web, "RequestKey", None)  # aiohttp >= 3.13 wants typed request keys; older take strings
_PARSED: Any = _request_key("ticketbridge.parsed", dict) if _request_key else "ticketbridge.parsed"


_UNCHECKED: Any = _request_key("ticketbridge.unchecked", bool) if _request_key else "ticketbridge.unchecked"
_FETCHED: Any = _request_key("ticketbridge.fetched", int) if _request_key else "ticketbridge.fetched"
_HELD: Any = _request_key("ticketbridge.held", list) if _request_key else "ticketbridge.held"


def skip_signatures(request: web.Request) -> None:
    """Mark a request whose auth and signature are not to be checked (the console's playground with `verify`
    off): `verify` is not called for it, and an `intercept` that finishes a signature check skips that part."""
    request[_UNCHECKED] = True


def signatures_checked(request: web.Request) -> bool:
    """Whether the request's signature is checked: false only for one marked by `skip_signatures`."""
    return not request.get(_UNCHECKED, False)


def read_content_type(request: web.Request) -> str | Exception:
    """The request's media type, as aiohttp reads it (once; its charset and parameters are then read too), or what
    reading it raised: aiohttp reads it with the email package's header parser, which raises on some malformed
    parameters (`application/json; x=;+*`: IndexError) rather than leaving them out. Read it here first, for any
    body: a later read of the charset or a form meets the same header."""
    try:
        return request.content_type
    except Exception as exc:  # whatever the header parser raises: a bad header, not a handler bug
        return exc


def content_type(request: web.Request) -> str:
    """`read_content_type`, or Rejected(400) naming the header it cannot read."""
    try:
        return request.content_type  # read_content_type's read, without one call more on every request
    except Exception as exc:  # whatever the header parser raises: a bad header, not a handler bug
        failed = type(exc).__name__
    raw = request.headers.get("Content-Type", "")
    shown = raw if len(raw) <= 100 else raw[:100] + "…"
    raise Rejected(400, f"the Content-Type header {shown!r} cannot be read ({failed}); send a "
                        "media type with well-formed parameters, e.g. application/json; charset=utf-8",
                   check="content_type")


def per_request(request: web.Request, key: str, make: Callable[[], T]) -> T:
    """`make()` once per request: verify, intercept and parse share one parse of the body."""
    parsed: dict[str, Any] | None = request.get(_PARSED)
    if parsed is None:
        parsed = request[_PARSED] = {}
    if key not in parsed:
        parsed[key] = make()
    value: T = parsed[key]
    return value


def count_fetched(request: web.Request, size: int) -> None:
    """Count `size` bytes a handler fetched for the request (an S3 object, a provider's download). The request's
    body alone decides where it is parsed; what `intercept` fetches is weighed as well (`fetched_bytes`), so that
    a small notification whose fetched message is large is parsed and rendered in the parser thread, as a large
    body is."""
    request[_FETCHED] = request.get(_FETCHED, 0) + size


def fetched_bytes(request: web.Request) -> int:
    """The bytes `count_fetched` counted for the request."""
    if not len(request):  # nothing kept for it (most requests): no look-up, which would raise and catch a KeyError
        return 0
    count: int = request.get(_FETCHED, 0)
    return count


def hold_until_answered(request: web.Request, release: Callable[[], object]) -> None:
    """Keep a turn of something bounded (an S3 read's, which bounds the messages held at once) for the rest of
    the request: `release` is called by `answered` once intake has answered it (its events stored, or the
    request refused), so that what the turn guards stays held through the parse and the store, not only the read."""
    held: list[Callable[[], object]] | None = request.get(_HELD)
    if held is None:
        held = request[_HELD] = []
    held.append(release)


def answered(request: web.Request) -> None:
    """The request is answered (intake, or the console's playground, calls this last): give back the turns
    `hold_until_answered` kept, and drop what `per_request` kept (a message fetched for it, its parse). aiohttp
    keeps a keep-alive connection's last request until the next one arrives on it, or the connection has been
    idle for the keep-alive timeout: each idle connection would otherwise hold its last message and payload."""
    if not len(request):  # nothing held or kept (most requests): no look-ups, each of which would raise a KeyError
        return
    held: list[Callable[[], object]] = request.pop(_HELD, [])
    request.pop(_PARSED, None)
    for release in held:
        release()


class Handler(ABC):
    """One source's handling of its provider's requests."""

    kind: ClassVar[str]
    channel: ClassVar[Channel]
    Options: ClassVar[type[SourceConfig]]
    content_types: ClassVar[frozenset[str]] = frozenset()
    keep_headers: ClassVar[tuple[str, ...]] = KEEP_HEADERS
    saves_attachments: ClassVar[bool] = False
    """Whether its events can carry files (`Inbound.attachments` with content), which intake writes to
    `attachments.dir`: a server with such a source refuses to start when that folder cannot be written; one
    without never writes it. Set by what `parse` gives, whatever the channel: tests/unit/handlers/test_registry.py
    holds it to each kind's documented samples."""

    defines_verify: ClassVar[bool] = False
    defines_prepare: ClassVar[bool] = False
    defines_intercept: ClassVar[bool] = False
    defines_nonce: ClassVar[bool] = False
    """Whether the class has its own `verify`, `prepare`, `intercept` and `nonce` (set once per class, as it is made):
    a hook a handler leaves as it is does nothing (`nonce`: gives None), and intake does not run it (a web form's
    every request)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.defines_verify = cls.verify is not Handler.verify
        cls.defines_prepare = cls.prepare is not Handler.prepare
        cls.defines_intercept = cls.intercept is not Handler.intercept
        cls.defines_nonce = cls.nonce is not Handler.nonce

    def __init__(self, name: str, options: SourceConfig, server: ServerConfig) -> None:
        self.name = name
        self.options = options
        self.server = server
        self.clock: Clock = time.time
        self.count: Count = not_counted
        """Counts the handler's own events for /metrics; the app sets it (`build_runtime`)."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Make what the handler keeps between requests (a client) as the app starts, before it serves: setup
        that costs CPU is paid there, not by a request. A failure is logged; the handler retries at first use."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the handler holds open (a client kept between requests) when the app stops."""

    async def handshake(self, request: web.Request) -> web.StreamResponse | None:
        """Answer a provider's GET verification handshake; None when the provider has none."""
        return None

    def verify(self, request: web.Request, body: bytes) -> None:  # noqa: B027 - optional hook
        """Check the signature on the raw bytes; raise Rejected(401) naming the failed check."""

    def nonce(self, request: web.Request, body: bytes) -> SignedNonce | None:
        """After `verify`: the signed value a replay with another body could reuse, for the store to refuse a
        second use of; None when the signature covers the body (a new body needs a new signature)."""
        return None

    def prepare(self, request: web.Request, body: bytes) -> None:  # noqa: B027 - optional hook
        """Read what `intercept` reads from the body (with `per_request`, so that `intercept` and `parse` find it
        read): run after `verify` and before `intercept`, where the parse runs, in the parser thread for a large
        body, whereas `intercept` runs on the event loop."""

    async def intercept(self, request: web.Request, body: bytes) -> Intercepted | None:
        """Run after `verify` and `prepare`, before `parse`: answer a POST that must not become an event (a handshake, a
        notification this source ignores), or finish a check that needs I/O, raising Rejected.
        None lets the request go on to `parse`. It runs also when `verify` did not (the playground with `verify`
        off: `signatures_checked` is false), and then skips any signature check of its own and makes no request
        with the source's credentials (a fetch of what the body names): anyone with a read token may post one."""
        return None

    @abstractmethod
    def parse(self, request: web.Request, body: bytes) -> list[Inbound]:
        """The events in the request; raise Rejected(400/415) with the parser's reason."""

    def allowed_origin(self, origin: str) -> bool:
        """Whether browsers on `origin` may post here (CORS)."""
        return False

    def redirect_to(self, request: web.Request) -> str | None:
        """Where to send a browser after a successful post, if anywhere."""
        return None

    def check_content_type(self, request: web.Request) -> None:
        """Rejected(415) for a content type the source does not take; Rejected(400) for a Content-Type header that
        cannot be read at all (read here first, for every source, so that no later step meets it)."""
        ctype = content_type(request)
        if not self.content_types:
            return
        if ctype not in self.content_types and not (
            "application/json" in self.content_types and ctype.endswith("+json")
        ):
            got = ctype if request.headers.get("Content-Type") else "none"
            raise Rejected(415, f"content type {quoted_sent(got)} is not taken by this source; send one of: "
                                f"{', '.join(sorted(self.content_types))}", check="content_type")

    def kept_headers(self, request: web.Request) -> dict[str, str]:
        out = {}
        headers = request.headers  # a property: read once, not once per name
        for name in self.keep_headers:
            value = headers.get(name)
            if value is not None:
                out[name] = value
        return out


MAX_JSON_DEPTH = 128
"""How deep a request's JSON may nest. Providers nest a dozen levels; the parser itself stops near Python's
recursion limit (about a thousand, less the stack in use), and a value nested just under that would make any
later recursive step (encoding the event, str() of a list) fail instead; this keeps 850 levels of headroom."""
MAX_JSON_CONTAINERS = 100_000
"""Arrays and objects in one JSON text at most, counted as its `[` and `{` (those in strings too) before it is
parsed: the parser builds them all in one call that holds the interpreter (some 7 ms per 100,000 here, with the
collections they set off), so a body of 1 MiB made of `[],` would hold the event loop some 40 ms even from the
parser thread. Real payloads hold a few thousand (a batch of 1,000 messages, some ten each)."""


# A JSON string (the text is valid JSON: parsed already); what is left once they are out is read for its
# brackets alone, both kinds as one, each a step in or out.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_STEP = {ord("["): 1, ord("]"): -1}
TEXT_DEPTH_BYTES = 64 * 1024
"""Up to this size, JSON text's depth is read from its brackets, in C: some 2 ms at most, fewer steps than a walk
of the value (a body of `[],` holds an array every three bytes), and what a body the event loop parses may be
(bridge/intake.py's OFFLOAD_BYTES). Past it, the parsed value is walked in Python instead: C code holds the
interpreter lock throughout, and over 1 MB of strings (`"",` or `\\"`) the one pass took 60-160 ms, the loop
held all along even from the parser thread, where the walk lets it in every few milliseconds."""


def _deeper_than(text: bytes | str, limit: int) -> bool:
    """Whether JSON text, valid (parsed already), nests arrays and objects deeper than `limit`: the highest
    running sum of its brackets outside strings, each step summed in C. For text up to TEXT_DEPTH_BYTES."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    brackets = _JSON_STRING.sub(b"", raw).translate(_BRACKETS, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets), initial=0)) > limit


def _value_deeper_than(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests arrays and objects deeper than `limit`, walked in Python, without
    recursion, and stopping at the first container past it."""
    if not isinstance(value, dict | list):
        return limit < 0
    if limit < 1:
        return True
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        depth += 1
        for child in node.values() if type(node) is dict else node:
            kind = type(child)
            if kind is list or kind is dict:
                if depth > limit:
                    return True
                if child:
                    stack.append((child, depth))
    return False


def _too_deep(data: bytes | str, value: Any, limit: int) -> bool:
    """Whether `value`, parsed from `data`, nests deeper than `limit`: read from the text when it is small (see
    TEXT_DEPTH_BYTES), else walked."""
    if len(data) <= TEXT_DEPTH_BYTES:
        return _deeper_than(data, limit)
    return _value_deeper_than(value, limit)


# A high surrogate escape not followed by a low one, after a backslash that is not itself escaped (an odd run).
_LONE = r"(?<!\\)(?:\\\\)*+(\\u[dD][89abAB][0-9a-fA-F]{2})(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
_LONE_TEXT = re.compile(_LONE)
_LONE_BYTES = re.compile(_LONE.encode())


def lone_surrogate(data: bytes | str) -> str | None:
    """Why `data` is not JSON when it holds a lone high surrogate escape (`\ud800` and no `\udc00`-`\udfff`
    after it), which msgspec reports as "Input data was truncated"; None when it holds none. Linear: a start
    inside a run of backslashes is refused by the look-behind, so each run is read once."""
    found = (_LONE_BYTES if isinstance(data, bytes) else _LONE_TEXT).search(data)  # type: ignore[arg-type]
    if found is None:
        return None
    escape = found.group(1)
    shown = escape.decode() if isinstance(escape, bytes) else escape
    unit = "byte" if isinstance(data, bytes) else "character"
    return (f"the escape {shown} at {unit} {found.start(1)} is a lone UTF-16 surrogate: a high surrogate "
            "(\\ud800-\\udbff) must be followed by a low one (\\udc00-\\udfff), the two escaping one character")


def decode_json(data: bytes | str, field: str | None = None, check: str = "json") -> Any:
    """`data` (the body, or the named `field` of it) parsed as JSON, or Rejected(400, check) with the parser's
    reason: malformed text, bytes that are not UTF-8, or nesting deeper than MAX_JSON_DEPTH. The depth is only
    walked when the text holds that many brackets at all (two counts in C), so ordinary bodies never pay."""
    what = field or "the JSON body"
    brackets = data.count(b"[") + data.count(b"{") if isinstance(data, bytes) else data.count("[") + data.count("{")
    if brackets > MAX_JSON_CONTAINERS:  # an upper bound on its arrays and objects: checked before any is built
        raise Rejected(413, f"{what} holds too many arrays and objects: {brackets} `[` and `{{`, at most "
                            f"{MAX_JSON_CONTAINERS}", check=check)
    try:
        value = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeError) as exc:  # msgspec raises the latter for bad UTF-8 in strings
        reason = str(exc)
        if reason == "Input data was truncated":  # also what msgspec says of a lone high surrogate escape
            reason = lone_surrogate(data) or reason
        raise Rejected(400, f"{field} is not JSON: {reason}" if field else f"malformed JSON: {reason}",
                       check=check) from None
    except RecursionError:
        pass  # deeper than the parser goes: refused below, as any value past the limit
    else:
        if (brackets <= MAX_JSON_DEPTH or not isinstance(value, dict | list)
                or not _too_deep(data, value, MAX_JSON_DEPTH)):
            return value
    raise Rejected(400, f"{what} is nested too deeply: more than {MAX_JSON_DEPTH} levels of arrays and objects",
                   check=check)


def optional_json_object(data: bytes | str) -> dict[str, Any] | None:
    """An optional field's JSON object; None when it is not JSON, or not an object (read as absent)."""
    try:
        value = decode_json(data)
    except Rejected:
        return None
    return value if isinstance(value, dict) else None


def decode_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or Rejected(400) with the parser's reason."""
    value = decode_json(body)
    if not isinstance(value, dict):
        raise Rejected(400, f"expected a JSON object, got a JSON {type(value).__name__}", check="json")
    return value


def json_body(request: web.Request, body: bytes) -> dict[str, Any]:
    """`decode_json_object(body)` once per request, under the key the JSON handlers share ("json")."""
    return per_request(request, "json", lambda: decode_json_object(body))
