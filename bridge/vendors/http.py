"""A generic JSON HTTP API, configured rather than coded: for the next vendor a customer brings.

The body is the rendered fields as one JSON object. The destination says the method, the path (with
`{field}` placeholders filled from the rendered fields), the headers (secrets through `${VAR}`), which
statuses mean success, optionally a body path that must hold a value, and where the ticket id is.
A mapping's `options:` may override `method` and `path`, so one destination serves several actions.

A follow-up's path may name its ticket with `{ticket.id}` or `{ticket.key}` (e.g.
`path: /tickets/{ticket.id}/comments`); a first message has no ticket, so such a path fails it clearly.
With `body: multipart` the request is multipart/form-data: the fields as JSON in one part
(`multipart_json_part`, default `data`) and each attachment of the `files` field as a part named
`multipart_files_part` (default `files`); with the default `body: json` a `files` field is sent as the
attachments' metadata like any other field.
"""

from __future__ import annotations

import functools
import pathlib
import re
import string
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal
from urllib.parse import quote, unquote

import msgspec
from yarl import URL

from bridge.bodies import ACCEPT_ENCODING, READ_CODINGS
from bridge.config import Base, DestinationConfig
from bridge.delivery.redaction import MIN_SECRET_CHARS, base_url_secrets, url_secrets
from bridge.errors import VALUE, MappingError, ValueProblem, quoted
from bridge.mapping.paths import MISSING, Path, PathSyntaxError, compile_path
from bridge.offload import read_answer_off_loop
from bridge.vendors.base import (
    NO_ID,
    Adapter,
    Call,
    CannotReconcile,
    Diagnosis,
    Fetch,
    Found,
    Outcome,
    SearchStopped,
    VendorAuthFailed,
    VendorRequest,
    VendorUnavailable,
    answer_id,
    classify_status,
    decode_json,
    excerpt,
    succeeded,
    text_or_none,
    ticket_ref,
    unreadable_success,
)
from bridge.vendors.files import FILES_FIELD, Part, file_parts, multipart_body, read_files, split_files
from bridge.vendors.http_auth import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, HttpAuth, basic, http_credentials
from bridge.vendors.json_steps import decode_lookup, release
from bridge.yamlfile import KeyPath, KeyValueError

Method = Literal["POST", "PUT", "PATCH"]
METHODS = ("POST", "PUT", "PATCH")
MAPPING_OPTIONS = ("method", "path")
# Placeholders a path may hold beside field names: the follow-up's ticket.
TICKET_PLACEHOLDERS = {"ticket.id": "id", "ticket.key": "key"}
JSON_WHITESPACE = b" \t\r\n"
"""What JSON allows around a value (RFC 8259 §2)."""
NOTE_KEY = "attachments_note"  # where the names of unsent files go unless `attachments.note_field` says


def body_path(text: str) -> Path:
    """A path into a JSON answer (`data.ticket_id`, `items[0].id`); ValueProblem when it cannot be read."""
    src = text.strip()
    try:
        return compile_path(("body" if src.startswith("[") else "body.") + src, frozenset({"body"}))
    except PathSyntaxError:
        raise ValueProblem(f"bad body path {VALUE}: write parts like data.ticket_id or items[0].id", text) from None


def template_parts(template: str) -> list[tuple[str, str | None]]:
    """A path template as (literal text, placeholder name or None) pairs; ValueProblem for a malformed one."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueProblem(f"bad path template {VALUE}: {exc}; write e.g. /tickets/{{ticket_id}}", template) from None
    for _, name, spec, conversion in parsed:
        if name is not None and ((not name.isidentifier() and name not in TICKET_PLACEHOLDERS)
                                 or spec or conversion):
            raise ValueProblem(f"bad placeholder in path {VALUE}: write {{field_name}}, naming a rendered "
                               "field (letters, digits and _), or {ticket.id} / {ticket.key}, with no format "
                               "or conversion", template)
    return [(literal, name) for literal, name, _, _ in parsed]


def placeholders(template: str) -> list[str]:
    """The `{name}` placeholders of a path template."""
    return [name for _, name in template_parts(template) if name is not None]


def path_secrets(key: str, template: str) -> dict[str, str]:
    """With `url_secret`, the secret parts of a path template configured at `key`: those `url_secrets` finds in
    each of its literal parts (`key`, or `key.i` for the i-th when placeholders part them). A placeholder is
    filled from the event's fields, which are no secret, and a templated path's literal part shorter than
    MIN_SECRET_CHARS is one of the API's words (`/tickets/`, `/v1/`): left out; a whole path that short is kept,
    to be named as too short. ValueError for a malformed template."""
    parts = template_parts(template)
    if all(name is None for _, name in parts):
        return url_secrets(key, template)
    found = {k: v for i, (literal, _) in enumerate(parts) for k, v in url_secrets(f"{key}.{i}", literal).items()}
    return {k: v for k, v in found.items() if len(v) >= MIN_SECRET_CHARS}


@functools.lru_cache(maxsize=256)
def _mapping_path_secrets(template: str) -> tuple[str, ...]:
    """A mapping's `options.path`'s secret parts (`path_secrets`), worked out once per path; none for a
    malformed one (the mapping's check refuses it, and the attempt fails on it before it sends)."""
    try:
        return tuple(sorted(set(path_secrets("options.path", template).values())))
    except ValueError:
        return ()


NOT_SHOWN = "(not shown: url_secret)"
"""What a config error says for a path that may be the credential (`url_secret`)."""


LITERAL_SAFE = "/?&=%:@!$'()*+,;~#[]"
"""What a path template's literal text keeps as written (it is the operator's: reserved characters and its own
percent-escapes); anything else (a space, a non-ASCII letter) is percent-encoded, as the URL is sent encoded."""
DOT_SEGMENTS = frozenset({".", ".."})


def _refuse_dot_segments(template: str, path: str, filled: list[tuple[int, int, str, str]]) -> None:
    """MappingError when a segment of `path` (before its query) reads `.` or `..` once percent-decoded: naming the
    placeholder whose value made it (`filled`: its span, name and value), else the template itself."""
    end = path.find("?")
    start = 0
    for segment in path[:len(path) if end < 0 else end].split("/"):
        stop = start + len(segment)
        if unquote(segment) in DOT_SEGMENTS:
            for begin, finish, where, value in filled:
                if begin < stop and finish > start:
                    if where.startswith("{"):
                        raise MappingError(f"the path {template!r} would read the segment {segment!r} from "
                                           f"{where} {value!r}: a dot segment would send the request to another "
                                           "path of the API, so it is not sent", path="options.path")
                    raise MappingError(f"the path {template!r} would read the segment {segment!r} from this "
                                       f"field's value {value!r}: a dot segment would send the request to another "
                                       "path of the API; give a value that is not `.` or `..`", path=where)
            raise MappingError(f"the path {template!r} holds the dot segment {segment!r}: write the path the API "
                               "takes, without `.` or `..` segments", path="options.path")
        start = stop + 1


STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
"""A `%` that starts no percent-escape: a path template's literal text keeps `%` as written (LITERAL_SAFE)."""


def _check_literal_text(template: str) -> None:
    """ValueProblem when `template`'s literal text holds a `%` not followed by two hex digits (it would go out
    as written, a malformed URL each server reads its own way), or when a whole segment before its query (one
    with no placeholder) is `.` or `..`, percent-decoded: it would be refused by each delivery
    (`_refuse_dot_segments`), the backlog dying, while the config loads."""
    for literal, _ in template_parts(template):
        if STRAY_PERCENT.search(literal):
            raise ValueProblem(f"`path` {VALUE} holds a `%` that starts no percent-escape (two hex digits): "
                               "write %25 for a literal %", template)
    for segment in template.split("?", 1)[0].split("/"):
        if "{" not in segment and unquote(segment) in DOT_SEGMENTS:
            raise ValueProblem(f"`path` {VALUE} holds the dot segment {segment!r}: write the path the API takes, "
                               "without `.` or `..` segments (e.g. /v1/./tickets/../tickets is /v1/tickets)",
                               template)


def _check_path(template: str) -> None:
    """ValueProblem, about `template` (or the part of it checked), when it cannot be a path."""
    if not template.startswith("/"):
        raise ValueProblem(f"`path` {VALUE} must start with /, e.g. /api/tickets", template)
    if "{{" in template or "}}" in template:
        raise ValueProblem(f"`path` {VALUE} holds a template: path placeholders take single braces, "
                           "e.g. /tickets/{ticket.id} or /tickets/{ticket_ref}", template)
    placeholders(template)
    _check_literal_text(template)


class HttpDoctor(Base):
    """The harmless request `ticketbridge doctor` makes (a look-up, never a create); a 2xx answer is OK. Its
    `path` is checked by the destination (`HttpOptions`), which knows whether it may be a secret."""

    method: Literal["GET", "HEAD", "POST"] = "GET"
    path: str = "/"
    body: dict[str, Any] | None = None


def _check_doctor_path(path: str) -> None:
    if not path.startswith("/"):
        raise ValueProblem(f"`path` {VALUE} must start with /, e.g. /api/me", path)


def _check_lookup_path(path: str) -> None:
    _check_path(path.split("?", 1)[0])
    placeholders(path)
    _check_literal_text(path)


class HttpLookup(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """How to find the ticket a create of unknown outcome may have made (`on_unknown: reconcile`): a GET of
    `path` (its `{field}` placeholders filled from the create's rendered fields, e.g. a reference the mapping
    sent), whose answer holds the ticket's id at `ticket_id_path`; a status in `not_found_statuses`, or
    nothing at that path, means the target holds no such ticket. `path` is checked by the destination
    (`HttpOptions`), which knows whether it may be a secret."""

    path: str
    ticket_id_path: str
    not_found_statuses: list[int] = msgspec.field(default_factory=lambda: [404])

    def __post_init__(self) -> None:
        try:
            body_path(self.ticket_id_path)
        except ValueProblem as exc:
            raise KeyValueError.of(("ticket_id_path",), exc, "`lookup.ticket_id_path`: ") from None


class HttpOptions(DestinationConfig, kw_only=True, forbid_unknown_fields=True):
    method: Method = "POST"
    path: str = "/"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    success_statuses: list[int] = msgspec.field(default_factory=lambda: [200, 201, 202, 204])
    success_path: str | None = None
    success_value: str | int | float | bool | None = True
    ticket_id_path: str | None = None
    error_path: str | None = None
    body: Literal["json", "multipart"] = "json"
    multipart_json_part: str = "data"
    multipart_files_part: str = "files"
    auth: HttpAuth | None = None
    doctor: HttpDoctor | None = None
    lookup: HttpLookup | None = None
    url_secret: bool = False
    """The URL is itself the credential (an incoming-webhook URL): its path and query are never shown, and the
    base URL's path and query and the literal parts of each configured path are secrets (`path_secrets`)."""

    def secret_url(self) -> bool:
        return self.url_secret

    def secret_values(self) -> dict[str, str]:
        """The configured `headers` but those that describe content, the `auth` block's secrets (a Basic
        credential also as the header it makes), and with `url_secret` the base URL's path and query and the
        secret parts of `path`, `doctor.path` and `lookup.path` (`path_secrets`). Without it, no path is a secret:
        a path is where the API takes a request."""
        keys = {f"headers.{name}": value for name, value in self.headers.items() if name.lower() not in PLAIN_HEADERS}
        auth = self.auth
        if auth is not None and auth.header is not None:
            keys["auth.header.value"] = auth.header.value
        if auth is not None and auth.basic is not None:
            keys["auth.basic.password"] = auth.basic.password
            keys["auth.basic"] = basic(auth.basic.username, auth.basic.password)
        if auth is not None and auth.bearer is not None:
            keys["auth.bearer"] = auth.bearer
        if auth is not None and auth.oauth2 is not None:
            keys["auth.oauth2.client_secret"] = auth.oauth2.client_secret
            keys["auth.oauth2"] = basic(auth.oauth2.client_id, auth.oauth2.client_secret)
        if self.url_secret:
            keys.update(base_url_secrets(self.base_url))
            keys.update(path_secrets("path", self.path))
            if self.doctor is not None:  # sent as written: no template
                keys.update(url_secrets("doctor.path", self.doctor.path))
            if self.lookup is not None:
                keys.update(path_secrets("lookup.path", self.lookup.path))
        return {key: value for key, value in keys.items() if value}

    def credentials(self) -> dict[KeyPath, str]:
        """The configured `headers` but those that describe content, the `auth` block's names and secrets, and
        `url_secret` when set (it says the URL is the credential: a sandbox's is the simulator's, never one)."""
        keys: dict[KeyPath, str] = {("headers", name): value for name, value in self.headers.items()
                                    if name.lower() not in PLAIN_HEADERS}
        if self.url_secret:
            keys[("url_secret",)] = "true"
        auth = self.auth
        if auth is not None and auth.header is not None:
            keys[("auth", "header", "value")] = auth.header.value
        if auth is not None and auth.basic is not None:
            keys[("auth", "basic", "username")] = auth.basic.username
            keys[("auth", "basic", "password")] = auth.basic.password
        if auth is not None and auth.bearer is not None:
            keys[("auth", "bearer")] = auth.bearer
        if auth is not None and auth.oauth2 is not None:
            keys[("auth", "oauth2", "client_id")] = auth.oauth2.client_id
            keys[("auth", "oauth2", "client_secret")] = auth.oauth2.client_secret
        return {key: value for key, value in keys.items() if value}

    def demo_credentials(self) -> dict[KeyPath, str]:
        """The simulator's OAuth2 demo client (its only credential: it checks no other)."""
        return {("auth", "oauth2", "client_id"): SANDBOX_CLIENT_ID,
                ("auth", "oauth2", "client_secret"): SANDBOX_CLIENT_SECRET}

    def header_texts(self) -> dict[KeyPath, str]:
        """Each configured header's value, and the `auth` block's header and bearer token (Basic and OAuth2
        credentials are sent encoded, or in a body)."""
        texts: dict[KeyPath, str] = {("headers", name): value for name, value in self.headers.items()}
        auth = self.auth
        if auth is not None and auth.header is not None:
            texts[("auth", "header", "name")] = auth.header.name
            texts[("auth", "header", "value")] = auth.header.value
        if auth is not None and auth.bearer is not None:
            texts[("auth", "bearer")] = auth.bearer
        return texts

    def can_reconcile(self) -> str | None:
        if self.lookup is not None:
            return None
        return ("the http vendor finds a ticket only through a configured look-up: set `lookup: {path, "
                "ticket_id_path}` (a GET that answers the ticket a reference names)")

    def __post_init__(self) -> None:
        super().__post_init__()
        for where, path, check in ((("path",), self.path, _check_path),
                                   (("doctor", "path"), self.doctor.path if self.doctor else None, _check_doctor_path),
                                   (("lookup", "path"), self.lookup.path if self.lookup else None,
                                    _check_lookup_path)):
            if path is None:
                continue
            try:
                check(path)
            except ValueProblem as exc:
                # About the path or the part before its query, which is quoted; with `url_secret` the path may be
                # the credential: the error says what is wrong without it, as for `base_url`.
                said = NOT_SHOWN if self.url_secret else quoted(exc.value) if exc.quote is None else exc.quote
                raise KeyValueError(where, exc.template, path, quote=said) from None
        for name, offer in self.headers.items():
            if name.lower() == "accept-encoding" and (unread := _codings_not_read(offer)):
                # It replaces the offer every request makes (ACCEPT_ENCODING), and an answer in a coding a send
                # cannot read is `unknown` at best (bodies.read_decoding). Named as an attempt's record shows the
                # header (PLAIN_HEADERS): codings, never a secret.
                raise KeyValueError(("headers", name), f"`headers.{name}` offers "
                                    f"{', '.join(quoted(c) for c in unread)}, which a vendor's answer is not read in: "
                                    f"offer only {ACCEPT_ENCODING} or identity, or leave the header out (every "
                                    f"request offers {ACCEPT_ENCODING})")
        for key in ("multipart_json_part", "multipart_files_part"):
            if not getattr(self, key).strip():
                raise ValueError(f"`{key}` must name a form part, e.g. data")
        for key, value in (("success_path", self.success_path), ("ticket_id_path", self.ticket_id_path),
                           ("error_path", self.error_path)):
            if value is not None:
                try:
                    body_path(value)
                except ValueProblem as exc:
                    raise KeyValueError.of((key,), exc, f"`{key}`: ") from None
        if not self.success_statuses:
            raise KeyValueError(("success_statuses",), "`success_statuses` [] must list HTTP statuses, e.g. [200, 201]")
        for i, status in enumerate(self.success_statuses):
            if not 100 <= status <= 599:
                raise KeyValueError(("success_statuses", i), f"`success_statuses` lists {VALUE}, which is no HTTP "
                                    "status: it must list HTTP statuses, e.g. [200, 201]", status)
            if status < 200:
                # An interim status given as the answer is a protocol error whose outcome is unknown, never a success.
                raise KeyValueError(("success_statuses", i), f"`success_statuses` lists {VALUE}: an interim status "
                                    "(1xx) is no answer, so no success; list final statuses (200-599), e.g. [200, 201]",
                                    status)


def _codings_not_read(offer: str) -> list[str]:
    """The content codings an `Accept-Encoding` value offers (`*` included; one with `q=0` is refused, not
    offered) that a send's answer is not read in (bodies.READ_CODINGS), as written."""
    unread = []
    for item in offer.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        refused = any(re.fullmatch(r"[qQ]\s*=\s*0(\.0{0,3})?", p) for p in params)
        if coding and not refused and coding.lower() not in READ_CODINGS:
            unread.append(coding)
    return unread


PLAIN_HEADERS = frozenset({"accept", "accept-encoding", "accept-language", "content-type", "user-agent"})
"""Configured headers shown as they are in an attempt's record: they describe the content, never a secret."""


class HttpAdapter(Adapter):
    vendor: ClassVar[str] = "http"
    Options: ClassVar[type[DestinationConfig]] = HttpOptions
    actions: ClassVar[frozenset[str]] = frozenset({"create_ticket", "update_ticket"})

    def __init__(self, name: str, config: DestinationConfig, base_url: str | Callable[[], str], *,
                 attachments_dir: pathlib.Path | None = None) -> None:
        super().__init__(name, config, base_url, attachments_dir=attachments_dir)
        o = self.options
        self._success = body_path(o.success_path) if o.success_path else None
        self._ticket_id = body_path(o.ticket_id_path) if o.ticket_id_path else None
        self._error = body_path(o.error_path) if o.error_path else None
        self._secret_headers: frozenset[str] | None = None
        auth = o.auth
        if auth is not None and o.sandbox:  # a sandbox logs in with the simulator's demo client, and only so
            auth = None if auth.oauth2 is None else HttpAuth(oauth2=msgspec.structs.replace(
                auth.oauth2, client_id=SANDBOX_CLIENT_ID, client_secret=SANDBOX_CLIENT_SECRET))
        if auth is not None:
            self.credentials = http_credentials(name, auth, lambda: self.base_url, o.timeout_seconds)

    def secret_headers(self) -> frozenset[str]:
        """The configured `headers` (secrets come through `${VAR}`) but the standard ones that describe content,
        and `auth.header`'s, by any name: worked out once, from options that do not change."""
        if self._secret_headers is None:
            o = self.options
            names = {k.lower() for k in o.headers} - PLAIN_HEADERS
            if o.auth is not None and o.auth.header is not None:
                names.add(o.auth.header.name.lower())
            self._secret_headers = frozenset(names)
        return self._secret_headers

    def option_secrets(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        """With `url_secret`, the secret parts of a mapping's `options.path` (`path_secrets`), beside those of
        the destination's own paths."""
        path = options.get("path")
        return _mapping_path_secrets(path) if self.options.url_secret and isinstance(path, str) else ()

    @classmethod
    def static_check(cls, action: str, fields: list[str], options: Mapping[str, Any]) -> list[str]:
        problems = [f"options.{key}: unknown http option; a mapping may set: {', '.join(MAPPING_OPTIONS)}"
                    for key in options if key not in MAPPING_OPTIONS]
        method = options.get("method")
        if method is not None and method not in METHODS:
            problems.append(f"options.method: {method!r} is not one of {', '.join(METHODS)}")
        path = options.get("path")
        if path is not None:
            try:
                _check_path(str(path))
                problems.extend(f"options.path: placeholder {{{name}}} is not a field of this mapping "
                                "(nor {ticket.id} / {ticket.key})"
                                for name in placeholders(str(path))
                                if name not in fields and name not in TICKET_PLACEHOLDERS)
            except ValueError as exc:
                problems.append(f"options.path: {exc}")
        return problems

    @property
    def options(self) -> HttpOptions:
        assert isinstance(self.config, HttpOptions)
        return self.config

    def _url(self, template: str, fields: Mapping[str, Any], ticket: Mapping[str, Any] | None = None) -> str:
        """The base URL and `template` filled: each placeholder's value percent-encoded whole (`/` too), and no
        segment of the path `.` or `..` (a sender's value, or a vendor's ticket id, would move the request to
        another path of the API, with the destination's credentials): MappingError naming where it came from.
        The URL is sent as it is written here (`VendorRequest.encoded`), never normalised."""
        try:
            parts = template_parts(template)
        except ValueError as exc:
            raise MappingError(str(exc), path="options.path") from None
        out: list[str] = []
        filled: list[tuple[int, int, str, str]] = []  # (start, end, where, value) of each placeholder's text
        at = 0
        for literal, name in parts:
            text = quote(literal, safe=LITERAL_SAFE)
            out.append(text)
            at += len(text)
            if name is None:
                continue
            if name in TICKET_PLACEHOLDERS:
                found = ticket_ref(ticket, TICKET_PLACEHOLDERS[name])
                if found is None:
                    raise MappingError(f"the path {template!r} names the follow-up's ticket, but "
                                       + ("this message has no ticket yet" if ticket is None
                                          else f"the ticket has no {TICKET_PLACEHOLDERS[name]}"),
                                       path="options.path")
                value, where = found, f"{{{name}}} (the vendor's ticket {TICKET_PLACEHOLDERS[name]})"
            else:
                raw = fields.get(name)
                if raw is None or raw == "" or isinstance(raw, dict | list | bool):
                    raise MappingError(f"the path {template!r} needs this field as text, got {raw!r}", path=name)
                value, where = str(raw), name
            text = quote(value, safe="")
            out.append(text)
            filled.append((at, at + len(text), where, value))
            at += len(text)
        path = "".join(out)
        _refuse_dot_segments(template, path, filled)
        return str(URL(self.base_url)) + path

    def ticket_id_at(self, action: str) -> str | None:
        """Only where the destination says where its answer holds the id (`ticket_id_path`)."""
        return self.options.ticket_id_path if action == "create_ticket" else None

    def reconciles(self, action: str) -> bool:
        return action == "create_ticket" and self.options.lookup is not None

    async def find(self, action: str, fields: dict[str, Any], since_ms: int, call: Call) -> Found | None:
        lookup = self.options.lookup
        if lookup is None:
            raise CannotReconcile("http: no `lookup` is configured")
        try:
            url = self._url(lookup.path, fields)
        except MappingError as exc:
            raise CannotReconcile(f"http: the look-up path cannot be filled: {exc}") from None
        headers = {k: v for k, v in self.options.headers.items() if k.lower() != "content-type"}
        status, body = await call(VendorRequest(method="GET", url=url, headers=headers, body=b"", encoded=True))
        if status in lookup.not_found_statuses:
            return None
        if 200 <= status < 300:
            value = await read_answer_off_loop(_looked_up, body, body_path(lookup.ticket_id_path))
            found = NO_ID if value is MISSING else answer_id(value, lookup.ticket_id_path)
            if found.problem is not None:
                # It names a ticket, by something that is no id: not "none found", which would send it again.
                raise CannotReconcile(f"http: the look-up answered HTTP {status}, but {found.problem}")
            return None if found.text is None else Found(ticket_id=found.text, detail=f"GET {url} -> {found.text}")
        refused = classify_status(status, {})
        if refused is not None and refused.classification == "auth":
            raise VendorAuthFailed(f"http: the look-up was refused: HTTP {status}")
        if refused is not None:
            raise VendorUnavailable(f"http: the look-up answered HTTP {status}")
        raise CannotReconcile(f"http: the look-up answered HTTP {status}: {excerpt(body)}")

    async def prepare(self, action: str, fields: dict[str, Any], fetch: Fetch) -> dict[str, Any]:
        """In multipart mode, read the `files` attachments within the destination's caps."""
        if FILES_FIELD in fields and self.options.body == "multipart":
            return await read_files(fields, self.attachments_dir, self.config.attachments)
        return fields

    def build_request(self, action: str, fields: dict[str, Any], options: Mapping[str, Any],
                      ticket: Mapping[str, Any] | None = None) -> VendorRequest:
        if action not in self.actions:
            raise MappingError(f"http has no action {action!r}; it takes: {', '.join(sorted(self.actions))}")
        method = str(options.get("method", self.options.method))
        if method not in METHODS:
            raise MappingError(f"{method!r} is not one of {', '.join(METHODS)}", path="options.method")
        url = self._url(str(options.get("path", self.options.path)), fields, ticket)
        headers = {"Content-Type": "application/json", **self.options.headers}
        if self.options.body == "json":
            return VendorRequest(method=method, url=url, headers=headers, body=msgspec.json.encode(fields),
                                 encoded=True)
        data, files = split_files(fields)
        self.note_files(data, files, NOTE_KEY, sent=True)
        body, content_type = multipart_body([
            Part(name=self.options.multipart_json_part, content=msgspec.json.encode(data),
                 content_type="application/json"),
            *file_parts(files, self.options.multipart_files_part),
        ])
        headers = {**{k: v for k, v in headers.items() if k.lower() != "content-type"}, "Content-Type": content_type}
        return VendorRequest(method=method, url=url, headers=headers, body=body, encoded=True)

    def doctor_request(self) -> VendorRequest | str:
        """The destination's `doctor:` request; without one the check is skipped (any other call might create)."""
        probe = self.options.doctor
        if probe is None:
            return ("no `doctor:` request is configured: add doctor: {method: GET, path: /…} naming a harmless "
                    "look-up of the API")
        body = b"" if probe.body is None else msgspec.json.encode(probe.body)
        headers = {**self.options.headers, **({"Content-Type": "application/json"} if body else {})}
        return VendorRequest(method=probe.method, url=self.base_url + probe.path, headers=headers, body=body)

    def diagnose(self, status: int, headers: Mapping[str, str], body: bytes) -> Diagnosis:
        if 200 <= status < 300:
            return Diagnosis(ok=True, said=f"host and credentials work (HTTP {status})")
        if status in (401, 403):
            return Diagnosis(ok=False, said=f"HTTP {status}: the credentials were refused: {excerpt(body)}",
                             fix="check the destination's auth (or headers) and what the API lets it do")
        if status in (404, 405):
            return Diagnosis(ok=False, said=f"HTTP {status}: {excerpt(body)}",
                             fix="check base_url and the doctor request's method and path")
        return Diagnosis(ok=False, said=f"HTTP {status}: {excerpt(body)}")

    def classify(self, action: str, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        parsed = decode_json(body)
        root = {"body": parsed}
        said = text_or_none(self._error.get(root)) if self._error is not None else None
        detail = said or excerpt(body)
        if status in self.options.success_statuses:
            if (parsed is None and body.strip() and body.strip(JSON_WHITESPACE) != b"null"
                    and (self._success is not None or self._ticket_id is not None)):
                # What the answer says (success_path) or names (ticket_id_path) cannot be read, even leniently
                # (a JSON null is read: it holds nothing at either path, as `[]` does not).
                return unreadable_success("http", status, body, "JSON")
            if self._success is not None:
                got = self._success.get(root)
                if got is MISSING or got != self.options.success_value:
                    shown = "nothing" if got is MISSING else repr(got)
                    return Outcome(classification="permanent",
                                   error=f"http: HTTP {status} but {self.options.success_path} is {shown}, "
                                         f"not {self.options.success_value!r}: {detail}")
            if self._ticket_id is None or (value := self._ticket_id.get(root)) is MISSING:
                return succeeded()
            return succeeded(answer_id(value, str(self.options.ticket_id_path)))
        by_status = classify_status(status, headers)
        if by_status is not None:
            by_status.error = f"http: {by_status.error}" + (f": {detail}" if detail else "")
            return by_status
        return Outcome(classification="permanent", error=f"http: HTTP {status}" + (f": {detail}" if detail else ""))


def _looked_up(body: bytes, path: Path) -> Any:
    """What a look-up's answer holds at `path` (MISSING: nothing), read where `read_answer_off_loop` puts it;
    SearchStopped for an answer holding more objects than a look-up reads (`too_many_containers`), not decoded."""
    decoded = decode_lookup(body, "the look-up's answer", lambda reason: SearchStopped(f"http: {reason}"))
    value = path.get({"body": decoded})
    if not isinstance(value, list | dict):  # else it is part of what is freed
        release(decoded)
    return value
