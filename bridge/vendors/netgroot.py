"""The Netgroot ISP CRM: tickets whose subject a mapping may name, resolved through getSubjects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

import aiohttp
import msgspec
import structlog
from msgspec import Meta

from bridge.config import Base, DestinationConfig, check_duration
from bridge.durations import parse_duration
from bridge.errors import MappingError
from bridge.logs import mask_text
from bridge.offload import read_answer_off_loop
from bridge.vendors.base import (
    NO_ID,
    Adapter,
    Diagnosis,
    Fetch,
    Outcome,
    VendorAuthFailed,
    VendorRequest,
    VendorUnavailable,
    answer_id,
    blank,
    classify_status,
    decode_json,
    excerpt,
    read_bounded,
    succeeded,
    text_or_none,
    token_answer,
    unreadable_success,
)
from bridge.vendors.credentials import (
    Admit,
    Credentials,
    StaticCredentials,
    Token,
    TokenCredentials,
    jwt_expiry,
)
from bridge.vendors.files import split_files
from bridge.yamlfile import KeyPath, KeyValueError

log = structlog.get_logger("ticketbridge.vendors")

SUBJECTS_PATH = "/api/v1/Tickets/getSubjects"
CREATE_PATH = "/api/v1/subscriber/CreateTicket"
LOGIN_PATH = "/api/v1/subscriber/Login"
LOGOUT_PATH = "/api/v1/subscriber/Logout"
TICKETS_PATH = "/api/v1/subscriber/getCustomerTickets"
SANDBOX_TOKEN = "sandbox-token"  # noqa: S105 - the built-in simulator's well-known demo key, not a secret
SANDBOX_USERNAME = "sandbox"
SANDBOX_PASSWORD = "sandbox-password"  # noqa: S105 - the simulator's demo log-in, not a secret
ID_FIELDS = ("type_id", "status_id", "priority_id", "group_id")
# An unknown subject name refreshes the list at most this often, so a burst of bad events costs one GET.
UNKNOWN_REFRESH_MIN_SECONDS = 5.0

ANSWER_BYTES = 64 * 1024  # the most of a Login answer read

Subjects = dict[str, tuple[int, str]]  # folded name → (id, name as the CRM writes it)


def _parsed_answer(body: bytes) -> tuple[dict[str, Any], str, bool]:
    """An answer's JSON object (empty when it is not one), what it says (its `message`, else an excerpt), and
    whether it is a JSON object: the body decoded once (an unreadable one may be read leniently, at a cost)."""
    parsed = decode_json(body)
    data = parsed if isinstance(parsed, dict) else {}
    return data, text_or_none(data.get("message")) or excerpt(body), isinstance(parsed, dict)


class NetgrootLogin(Base):
    """A subscriber's log-in: every ticket of the destination is filed for this subscriber."""

    username: str
    password: str

    def __post_init__(self) -> None:
        for key in ("username", "password"):
            if not getattr(self, key).strip():
                raise KeyValueError((key,), f"`{key}` is empty: give the subscriber's {key} (from the environment, "
                                    f"e.g. \"${{ISPCRM_{key.upper()}}}\")")


class NetgrootAuth(Base):
    """`login` (a subscriber's username and password: a JWT obtained and renewed by the bridge) or `token`
    (an API token made in the CRM's admin UI for one subscriber, sent as it is)."""

    login: NetgrootLogin | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if (self.login is None) == (self.token is None):
            raise ValueError("give one of `login: {username, password}` (a subscriber's log-in) or `token` "
                             "(an API token made for one subscriber)")
        if self.token is not None and not self.token.strip():
            raise KeyValueError(("token",), "`token` is empty: give the API token (from the environment)")


class NetgrootOptions(DestinationConfig, kw_only=True, forbid_unknown_fields=True):
    token: str = ""
    auth: NetgrootAuth | None = None
    # Defaults for the ids the API has no look-up for; a mapping field of the same name wins.
    type_id: Annotated[int, Meta(ge=0)] | None = None
    status_id: Annotated[int, Meta(ge=0)] | None = None
    priority_id: Annotated[int, Meta(ge=0)] | None = None
    group_id: Annotated[int, Meta(ge=0)] | None = None
    subjects_ttl: str | float = "10m"

    def secret_values(self) -> dict[str, str]:
        keys = {"token": self.token}
        if self.auth is not None:
            keys["auth.token"] = self.auth.token or ""
            if self.auth.login is not None:
                keys["auth.login.password"] = self.auth.login.password
        return {key: value for key, value in keys.items() if value}

    def credentials(self) -> dict[KeyPath, str]:
        keys: dict[KeyPath, str] = {("token",): self.token}
        if self.auth is not None:
            keys[("auth", "token")] = self.auth.token or ""
            if self.auth.login is not None:
                keys[("auth", "login", "username")] = self.auth.login.username
                keys[("auth", "login", "password")] = self.auth.login.password
        return {key: value for key, value in keys.items() if value}

    def demo_credentials(self) -> dict[KeyPath, str]:
        return {("token",): SANDBOX_TOKEN, ("auth", "token"): SANDBOX_TOKEN,
                ("auth", "login", "username"): SANDBOX_USERNAME, ("auth", "login", "password"): SANDBOX_PASSWORD}

    def header_texts(self) -> dict[KeyPath, str]:
        """The API token (`token`, `auth.token`), sent as a bearer token."""
        texts: dict[KeyPath, str] = {("token",): self.token}
        if self.auth is not None and self.auth.token is not None:
            texts[("auth", "token")] = self.auth.token
        return texts

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.token and self.auth is not None:
            raise KeyValueError(("token",), "give `auth` or `token`, not both (`token` is `auth: {token: …}`)")
        if not self.token and self.auth is None and not self.sandbox:
            raise ValueError("`auth` is required: `auth: {login: {username, password}}` (a subscriber's "
                             "log-in) or `auth: {token: …}` (an API token made for one subscriber)")
        check_duration(self.subjects_ttl, ("subjects_ttl",))


def _fold(name: str) -> str:
    return " ".join(name.split()).casefold()


def as_id(name: str, value: Any) -> int:
    """An integer id from a rendered value (an int, or text of digits); MappingError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise MappingError(f"{value!r} is not an integer id: the ISP CRM takes a whole number here", path=name)


def parse_subjects(status: int, body: bytes) -> Subjects:
    """getSubjects' answer as folded name → (id, name); raises for each way the look-up can fail."""
    by_status = classify_status(status, {})
    if by_status is not None and by_status.classification == "auth":
        raise VendorAuthFailed(f"netgroot: getSubjects: HTTP {status}: the token was refused: {excerpt(body)}")
    if by_status is not None:
        raise VendorUnavailable(f"netgroot: getSubjects: HTTP {status}: {excerpt(body)}")
    parsed = decode_json(body)
    data = parsed.get("data") if isinstance(parsed, dict) else None
    if status != 200 or not isinstance(parsed, dict) or parsed.get("success") is not True \
            or not isinstance(data, list):
        raise MappingError(f"the subject list could not be read (getSubjects answered HTTP {status}: "
                           f"{excerpt(body)})", path="subject")
    subjects: Subjects = {}
    for item in data:
        if not isinstance(item, dict):
            continue
        ident, name = item.get("subject_id", item.get("id")), item.get("name", item.get("subject_name"))
        if isinstance(ident, int) and not isinstance(ident, bool) and isinstance(name, str):
            subjects.setdefault(_fold(name), (ident, name))
    return subjects


class SubjectCache:
    """One destination's subject names, fetched when missing or older than the TTL, and fetched once
    more when a name is unknown; concurrent look-ups share one fetch."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self.subjects: Subjects = {}
        self.fetched_at: float | None = None
        self.fetches = 0
        self._lock = asyncio.Lock()

    async def _refresh(self, load: Callable[[], Awaitable[Subjects]], asked_at: float, reason: str,
                       destination: str) -> None:
        async with self._lock:
            if self.fetched_at is not None and self.fetched_at >= asked_at:
                return  # another look-up refreshed the list while this one waited
            subjects = await load()
            self.subjects, self.fetched_at = subjects, self.clock()
            self.fetches += 1
        log.info("vendor.subjects_refreshed", destination=destination, count=len(subjects), reason=reason)

    async def resolve(self, name: str, load: Callable[[], Awaitable[Subjects]], destination: str) -> int:
        asked_at = self.clock()
        if self.fetched_at is None or asked_at - self.fetched_at >= self.ttl_s:
            await self._refresh(load, asked_at, "expired" if self.fetched_at is not None else "first use",
                                destination)
        found = self.subjects.get(_fold(name))
        if found is None and self.fetched_at is not None \
                and asked_at - self.fetched_at >= UNKNOWN_REFRESH_MIN_SECONDS:
            await self._refresh(load, asked_at, "unknown name", destination)
            found = self.subjects.get(_fold(name))
        if found is None:
            known = ", ".join(repr(n) for _, n in sorted(self.subjects.values())) or "(none)"
            raise MappingError(f"unknown subject {name!r}; the ISP CRM knows: {known}", path="subject")
        return found[0]


class NetgrootLoginCredentials(TokenCredentials):
    """A subscriber's JWT from Login, renewed before its `exp` and once when refused; Logout at shutdown."""

    def __init__(self, destination: str, login: NetgrootLogin, base_url: Callable[[], str], timeout_s: float,
                 *, clock: Callable[[], float] = time.time) -> None:
        super().__init__(destination, clock=clock)
        self.login = login
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.subscriber: str | None = None  # the username Login answered with, for the logs

    def token_named(self) -> str:
        return "netgroot: Login: the answer's token"

    async def obtain(self, session: aiohttp.ClientSession) -> Token:
        url = self.base_url() + LOGIN_PATH
        body = {"username": self.login.username, "password": self.login.password}
        async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                allow_redirects=False) as resp:
            status, raw = resp.status, await read_bounded(resp, ANSWER_BYTES)
            content_type = resp.headers.get("Content-Type")
        # Up to 64 KiB, read on the loop, leniently there only when short (`read_answer_off_loop`).
        data, message = await read_answer_off_loop(token_answer, raw, content_type, "message")
        if status in (400, 401, 403, 404):
            # The username is not repeated: it is often an email address, and this text is stored and shown.
            raise VendorAuthFailed(f"netgroot: Login: HTTP {status}: {message}: check auth.login.username and "
                                   "password (the subscriber's portal log-in)")
        token = text_or_none(data.get("token"))
        if not 200 <= status < 300:
            raise VendorUnavailable(f"netgroot: Login: HTTP {status}: {message}")
        if token is None:  # any 2xx with a token is the log-in's answer (the CRM's page shows no status)
            raise VendorUnavailable(f"netgroot: Login: HTTP {status} without a token: {message}")
        subscriber = data.get("subscriber")
        if isinstance(subscriber, dict):
            self.subscriber = text_or_none(subscriber.get("username"))
        now = self.clock()
        return Token(value=token, expires_at=jwt_expiry(token), obtained_at=now)

    async def revoke(self, session: aiohttp.ClientSession, token: Token, admit: Admit | None = None) -> None:
        """Logout, once the destination's rate limit lets it out (`admit`): it counts against the vendor's limit as
        any request does, so a shutdown beside a busy lane does not make one request more than the limit allows. The
        wait is bounded by the caller (`app.close_adapters`); a token not revoked expires by itself."""
        if admit is not None:
            await admit()
        try:
            async with session.post(self.base_url() + LOGOUT_PATH, headers=self.header_for(token),
                                    timeout=aiohttp.ClientTimeout(total=self.timeout_s), allow_redirects=False) as resp:
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("vendor.logout_failed", destination=self.destination, error=f"{type(exc).__name__}: {exc}")
            return
        if status >= 300:
            log.warning("vendor.logout_failed", destination=self.destination, error=f"HTTP {status}")


class NetgrootAdapter(Adapter):
    vendor: ClassVar[str] = "netgroot"
    Options: ClassVar[type[DestinationConfig]] = NetgrootOptions
    actions: ClassVar[frozenset[str]] = frozenset({"create_ticket"})

    def __init__(self, name: str, config: DestinationConfig, base_url: str | Callable[[], str], *,
                 attachments_dir: Path | None = None) -> None:
        super().__init__(name, config, base_url, attachments_dir=attachments_dir)
        self.subjects = SubjectCache(parse_duration(self.options.subjects_ttl))
        self.credentials = self.make_credentials()

    def make_credentials(self) -> Credentials:
        """The log-in's renewed JWT, or the fixed token (`auth.token` or `token`); a sandbox's are always the
        simulator's demo log-in or demo token."""
        auth, sandbox = self.options.auth, self.options.sandbox
        if auth is not None and auth.login is not None:
            login = NetgrootLogin(username=SANDBOX_USERNAME, password=SANDBOX_PASSWORD) if sandbox else auth.login
            return NetgrootLoginCredentials(self.name, login, lambda: self.base_url, self.options.timeout_seconds)
        token = SANDBOX_TOKEN if sandbox else (auth.token if auth is not None else None) or self.options.token
        return StaticCredentials({"Authorization": f"Bearer {token}"})

    @classmethod
    def static_check(cls, action: str, fields: list[str], options: Mapping[str, Any]) -> list[str]:
        problems = [f"options.{key}: unknown netgroot option; netgroot create_ticket takes no options"
                    for key in options]
        if "subject" in fields and "subject_id" in fields:
            problems.append("subject: give either `subject` (a name) or `subject_id`, not both")
        elif "subject" not in fields and "subject_id" not in fields:
            problems.append("subject: netgroot create_ticket needs `subject` (a name) or `subject_id`")
        if "message" not in fields:
            problems.append("message: netgroot create_ticket needs a `message` field")
        return problems

    @property
    def options(self) -> NetgrootOptions:
        assert isinstance(self.config, NetgrootOptions)
        return self.config

    async def prepare(self, action: str, fields: dict[str, Any], fetch: Fetch) -> dict[str, Any]:
        if "subject" not in fields:
            return fields
        name = fields["subject"]
        if blank(name) or not isinstance(name, str | int):
            raise MappingError(f"{name!r} is not a subject name", path="subject")

        async def load() -> Subjects:
            status, body = await fetch(self.base_url + SUBJECTS_PATH, {})
            # Up to 256 KiB, read off the loop unless small (its decode, lenient at worst, is the costly part).
            return await read_answer_off_loop(lambda answer: parse_subjects(status, answer), body)

        subject_id = await self.subjects.resolve(str(name), load, self.name)
        return {"subject_id": subject_id, **{k: v for k, v in fields.items() if k != "subject"}}

    def build_request(self, action: str, fields: dict[str, Any], options: Mapping[str, Any],
                      ticket: Mapping[str, Any] | None = None) -> VendorRequest:
        # No update endpoint is published: a follow-up is a new ticket (its mapping names the first one
        # with `{{ ticket.id }}`) or is skipped; `ticket` is not needed here.
        fields, files = split_files(fields)
        self.note_files(fields, files, "message", sent=False)  # no file endpoint either: the message names them
        if action != "create_ticket":
            raise MappingError(f"netgroot has no action {action!r}; it takes: create_ticket")
        if "subject" in fields:
            raise MappingError("the subject name was not resolved to an id", path="subject")
        if blank(fields.get("subject_id")):
            raise MappingError("netgroot needs `subject` (a name) or `subject_id`", path="subject_id")
        body: dict[str, Any] = {"subject_id": as_id("subject_id", fields["subject_id"])}
        for key in ID_FIELDS:
            value = fields.get(key)
            if blank(value):
                value = getattr(self.options, key)
            if value is None:
                raise MappingError(f"required: set it in the mapping, or as `{key}` on the destination "
                                   f"{self.name!r}", path=key)
            body[key] = as_id(key, value)
        message = fields.get("message")
        if blank(message) or isinstance(message, dict | list):
            raise MappingError(f"required text, got {message!r}", path="message")
        body["message"] = str(message)
        body.update((k, v) for k, v in fields.items() if k not in body)
        return VendorRequest(method="POST", url=self.base_url + CREATE_PATH,
                             headers={"Content-Type": "application/json"},
                             body=msgspec.json.encode(body))

    def doctor_request(self) -> VendorRequest | str:
        """getCustomerTickets: a read as the subscriber the tickets are filed for (after the Login, if any)."""
        return VendorRequest(method="GET", url=self.base_url + TICKETS_PATH, headers={}, body=b"")

    def diagnose(self, status: int, headers: Mapping[str, str], body: bytes) -> Diagnosis:
        data, message, _ = _parsed_answer(body)
        login = self.options.auth.login if self.options.auth is not None else None
        who = f"subscriber {mask_text(login.username)!r}" if login is not None else "the token's subscriber"
        if status == 200 and data.get("success") is True:
            count = len(data["data"]) if isinstance(data.get("data"), list) else 0
            return Diagnosis(ok=True, said=f"host and credentials work; tickets are filed for {who} "
                                           f"(getCustomerTickets answered {count} tickets)")
        if status in (401, 403):
            fix = ("check auth.login.username and password" if login is not None else
                   "make a new API token for the subscriber in the CRM's admin UI (/Admin/getToken) and set it as "
                   "auth.token, or log in with auth.login")
            return Diagnosis(ok=False, said=f"HTTP {status}: the token was refused: {message}", fix=fix)
        if status == 404 and "subscriber" in message.lower():
            return Diagnosis(ok=False, said=f"HTTP 404: {message}: {who} does not exist in the CRM",
                             fix="make the token for an existing subscriber, or log in as one (auth.login)")
        if status == 404:
            return Diagnosis(ok=False, said=f"HTTP 404: {message}: this host does not serve the ISP CRM API",
                             fix="set base_url to the CRM's address (the one its /api/v1/… pages are under)")
        return Diagnosis(ok=False, said=f"HTTP {status}: {message}")

    def ticket_id_at(self, action: str) -> str | None:
        return "data.ticket_id" if action == "create_ticket" else None

    def classify(self, action: str, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        data, message, an_object = _parsed_answer(body)
        if status in (401, 403) or (data.get("success") is False and message.lower() == "unauthorized"):
            return Outcome(classification="auth", error=f"netgroot: HTTP {status}: {message}: check the destination's "
                                                        "auth (the log-in, or the API token)")
        by_status = classify_status(status, headers)
        if by_status is not None:
            by_status.error = f"netgroot: {by_status.error}: {message}"
            return by_status
        if 200 <= status < 300 and data.get("success") is True:
            ticket = data.get("data")
            return succeeded(answer_id(ticket.get("ticket_id"), "data.ticket_id") if isinstance(ticket, dict)
                             else NO_ID)
        if 200 <= status < 300 and not an_object:
            return unreadable_success("netgroot", status, body)
        return Outcome(classification="permanent", error=f"netgroot: HTTP {status}: {message}")
