"""The Netgroot ISP CRM: tickets whose subject a mapping may name, resolved through getSubjects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

import msgspec
import structlog
from msgspec import Meta

from bridge.config import DestinationConfig, check_duration
from bridge.durations import parse_duration
from bridge.errors import MappingError
from bridge.vendors.base import (
    Adapter,
    Fetch,
    Outcome,
    VendorAuthFailed,
    VendorRequest,
    VendorUnavailable,
    blank,
    classify_status,
    decode_json,
    excerpt,
    text_or_none,
)
from bridge.vendors.files import split_files

log = structlog.get_logger("ticketbridge.vendors")

SUBJECTS_PATH = "/api/v1/Tickets/getSubjects"
CREATE_PATH = "/api/v1/subscriber/CreateTicket"
SANDBOX_TOKEN = "sandbox-token"  # noqa: S105 - the built-in simulator's well-known demo key, not a secret
ID_FIELDS = ("type_id", "status_id", "priority_id", "group_id")
# An unknown subject name refreshes the list at most this often, so a burst of bad events costs one GET.
UNKNOWN_REFRESH_MIN_SECONDS = 5.0

Subjects = dict[str, tuple[int, str]]  # folded name → (id, name as the CRM writes it)


class NetgrootOptions(DestinationConfig, kw_only=True, forbid_unknown_fields=True):
    token: str = ""
    # Defaults for the ids the API has no look-up for; a mapping field of the same name wins.
    type_id: Annotated[int, Meta(ge=0)] | None = None
    status_id: Annotated[int, Meta(ge=0)] | None = None
    priority_id: Annotated[int, Meta(ge=0)] | None = None
    group_id: Annotated[int, Meta(ge=0)] | None = None
    subjects_ttl: str | float = "10m"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.token and not self.sandbox:
            raise ValueError("`token` is required: the ISP CRM's API bearer token")
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


class NetgrootAdapter(Adapter):
    vendor: ClassVar[str] = "netgroot"
    Options: ClassVar[type[DestinationConfig]] = NetgrootOptions
    actions: ClassVar[frozenset[str]] = frozenset({"create_ticket"})

    def __init__(self, name: str, config: DestinationConfig, base_url: str | Callable[[], str], *,
                 attachments_dir: Path | None = None) -> None:
        super().__init__(name, config, base_url, attachments_dir=attachments_dir)
        self.subjects = SubjectCache(parse_duration(self.options.subjects_ttl))

    @classmethod
    def static_check(cls, action: str, fields: list[str], options: Mapping[str, Any]) -> list[str]:
        problems = []
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

    @property
    def headers(self) -> dict[str, str]:
        token = self.options.token or (SANDBOX_TOKEN if self.options.sandbox else "")
        return {"Authorization": f"Bearer {token}"}

    async def prepare(self, action: str, fields: dict[str, Any], fetch: Fetch) -> dict[str, Any]:
        if "subject" not in fields:
            return fields
        name = fields["subject"]
        if blank(name) or not isinstance(name, str | int):
            raise MappingError(f"{name!r} is not a subject name", path="subject")

        async def load() -> Subjects:
            status, body = await fetch(self.base_url + SUBJECTS_PATH, self.headers)
            return parse_subjects(status, body)

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
                             headers={**self.headers, "Content-Type": "application/json"},
                             body=msgspec.json.encode(body))

    def classify(self, action: str, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        parsed = decode_json(body)
        data = parsed if isinstance(parsed, dict) else {}
        message = text_or_none(data.get("message")) or excerpt(body)
        if status in (401, 403) or (data.get("success") is False and message.lower() == "unauthorized"):
            return Outcome(classification="auth", error=f"netgroot: HTTP {status}: {message}: check the token")
        by_status = classify_status(status, headers)
        if by_status is not None:
            by_status.error = f"netgroot: {by_status.error}: {message}"
            return by_status
        if 200 <= status < 300 and data.get("success") is True:
            ticket = data.get("data")
            ticket_id = text_or_none(ticket.get("ticket_id")) if isinstance(ticket, dict) else None
            return Outcome(classification="success", ticket_id=ticket_id)
        return Outcome(classification="permanent", error=f"netgroot: HTTP {status}: {message}")
