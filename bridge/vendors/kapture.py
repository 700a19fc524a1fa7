"""Kapture CRM: tickets created and updated from other sources, one JSON array per request."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import msgspec

from bridge.config import DestinationConfig
from bridge.errors import MappingError
from bridge.offload import read_answer_off_loop
from bridge.vendors.base import (
    Adapter,
    AnswerId,
    Call,
    Found,
    Outcome,
    VendorAuthFailed,
    VendorRequest,
    VendorUnavailable,
    blank,
    classify_status,
    decode_json,
    excerpt,
    first_id,
    lower_keys,
    succeeded,
    ticket_id_from,
    unreadable_success,
)
from bridge.vendors.files import split_files
from bridge.vendors.json_steps import decode_lookup, release
from bridge.yamlfile import KeyPath

CREATE_PATH = "/add-ticket-from-other-source.html/v.2.0"
UPDATE_PATH = "/update-ticket-from-other-source.html/v.2.0"
PULL_PATH = "/select-ticket-between-start-and-end-dates.html/v.2.0"
GET_PATH = "/search-ticket-by-ticket-id.html/v.2.0"
SANDBOX_TOKEN = "sandbox-token"  # noqa: S105 - the built-in simulator's well-known demo key, not a secret
# Messages that say the key is refused, whatever the HTTP code: the current pages' "Invalid Auth Key"
# (missing, wrong, expired or disabled) and the legacy pages' `"Status": "Fail"` / "Auth Key Expired".
AUTH_MESSAGES = ("invalid auth key", "auth key expired")
# Kapture's `yyyy-MM-dd HH:mm:ss`, as strptime writes it.
CALLBACK_FORMAT = "%Y-%m-%d %H:%M:%S"
CALLBACK_EXAMPLE = "2024-04-19 14:19:11"
PATHS = {"create_ticket": CREATE_PATH, "update_ticket": UPDATE_PATH}
# Fields a mapping must give; an update's `ticket_id` may instead come from the follow-up's ticket.
REQUIRED = {"create_ticket": ("title",), "update_ticket": ("sub_status",)}
# Where the names and sizes of a `files` field's attachments go (Kapture has no file endpoint).
TEXT_FIELDS = {"create_ticket": "ticket_details", "update_ticket": "comment"}


Operation = Literal["add", "update", "pull", "get"]
ALL_OPERATIONS: tuple[Operation, ...] = get_args(Operation)
# What each action calls, for its Auth Key.
OPERATIONS: dict[str, Operation] = {"create_ticket": "add", "update_ticket": "update"}
# Mapping `options:` Kapture takes: how the one item is sent (the docs' one-element array, or a bare object,
# which some accounts take [3rd]).
MAPPING_OPTIONS = {"body": ("array", "object")}
# How Kapture refuses an array where it wants an object ("Invalid Json … should be in object format").
REFUSES_ARRAY = ("invalid json", "object format")


class KaptureKeys(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One Auth Key per API, as Kapture's Partner configuration issues them (each with its own expiry);
    an operation without one uses the destination's `token`."""

    add: str = ""
    update: str = ""
    pull: str = ""
    get: str = ""


class KaptureOptions(DestinationConfig, kw_only=True, forbid_unknown_fields=True):
    token: str = ""
    tokens: KaptureKeys = msgspec.field(default_factory=KaptureKeys)
    # How the pull API reads `end_date` (its page shows both): `same_day` asks for one day as
    # start_date = end_date (the documented body), `next_day` as end_date = the day after (the curl example).
    pull_end_date: Literal["same_day", "next_day"] = "same_day"
    # The create body's field (a dotted path, e.g. `ref_details.bridge_ref`) where the mapping puts a reference
    # of its own (such as the event id) that the account keeps and the pull answer returns under
    # `additional_info`: how a create whose outcome is unknown is found again (`on_unknown: reconcile`).
    reference_field: str | None = None
    # Before each follow-up, ask Kapture (get by ticket id) whether the conversation's ticket still exists: one
    # request more per follow-up; a ticket gone makes the follow-up fail, naming it, rather than update nothing.
    check_ticket: bool = False

    def can_reconcile(self) -> str | None:
        if self.reference_field:
            return None
        return ("kapture finds a ticket by pulling the day's tickets and matching a reference the mapping put in "
                "the ticket: set `reference_field` (e.g. `ref_details.bridge_ref`, filled with "
                "\"{{ event.id }}\" by the mapping)")

    def credentials(self) -> dict[KeyPath, str]:
        keys = {("token",): self.token} | {("tokens", op): getattr(self.tokens, op) for op in ALL_OPERATIONS}
        return {key: value for key, value in keys.items() if value}

    def demo_credentials(self) -> dict[KeyPath, str]:
        return {("token",): SANDBOX_TOKEN} | {("tokens", op): SANDBOX_TOKEN for op in ALL_OPERATIONS}

    def header_texts(self) -> dict[KeyPath, str]:
        """`token` and `tokens.*`, each sent in an `Authorization` header."""
        return {("token",): self.token} | {("tokens", op): getattr(self.tokens, op) for op in ALL_OPERATIONS}

    def secret_values(self) -> dict[str, str]:
        keys = {"token": self.token} | {f"tokens.{op}": getattr(self.tokens, op) for op in ALL_OPERATIONS}
        return {key: value for key, value in keys.items() if value}

    def default_on_unknown(self) -> Literal["resend", "reconcile", "hold"]:
        # With a reference, look the ticket up; without one nothing can tell whether the earlier send made a
        # ticket, and holding every timed-out create would stop tickets on each network blip: resend, and
        # count and flag each possible duplicate.
        return "reconcile" if self.reference_field else "resend"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.token and not self.sandbox:
            missing = [op for op in ALL_OPERATIONS if not getattr(self.tokens, op)]
            if missing:
                raise ValueError("`token` is required (the Auth Key from Kapture's Partner/API configuration), "
                                 f"or a key per operation in `tokens`: {', '.join(missing)} has none")


def ticket_id_of(body: Mapping[str, Any]) -> AnswerId:
    """`ticket_id`, else `Ticket Id`, else `ticket.ticketId` (`first_id`: a place holding what is no id, such as an
    object or empty text, is passed over and said; none kept, the id is dropped, saying why)."""
    ticket = body.get("ticket")
    nested = ticket.get("ticketId") if isinstance(ticket, Mapping) else None
    return first_id((("ticket_id", body.get("ticket_id")), ("Ticket Id", body.get("Ticket Id")),
                     ("ticket.ticketId", nested)))


def read_answer(status: int, headers: Mapping[str, str], body: bytes,
                decode: Callable[[bytes], Any] = decode_json) -> tuple[Outcome, Any]:
    """The classification every Kapture call shares, and the decoded answer (a one-item array unwrapped; decoded
    by `decode`: `decode_in_steps` for a look-up's, which may be large).

    `status`/`Status` and its value are read case-insensitively; anything but `success` is a failure,
    whatever the HTTP code; "Invalid Auth Key" and "Auth Key Expired" (any case) are auth failures even inside
    an HTTP 200, so the destination pauses rather than dropping each delivery as permanent."""
    parsed = decode(body)
    if isinstance(parsed, list) and len(parsed) == 1 and isinstance(parsed[0], dict):
        parsed = parsed[0]
    data = lower_keys(parsed) if isinstance(parsed, dict) else None
    raw_message = data.get("message") if data else None
    message = raw_message if isinstance(raw_message, str) else ""
    if any(m in message.lower() for m in AUTH_MESSAGES):
        return Outcome(classification="auth", error=f"kapture: {message}"), parsed
    by_status = classify_status(status, headers)
    if by_status is not None:
        if message:
            by_status.error = f"{by_status.error}: {message}"
        return by_status, parsed
    if data is None and 200 <= status < 300:
        return unreadable_success("kapture", status, body), parsed
    if data is None:
        return Outcome(classification="permanent",
                       error=f"kapture: HTTP {status} with a body that is not a JSON object: {excerpt(body)}"), parsed
    state = str(data.get("status") or "").lower()
    if state == "success" and 200 <= status < 300:
        return Outcome(classification="success"), parsed
    reason = message or f"status {data.get('status')!r}"
    return Outcome(classification="permanent", error=f"kapture: HTTP {status}: {reason}"), parsed


def read_tickets(status: int, body: bytes) -> list[dict[str, Any]]:
    """A get-by-id answer: a top-level array of `{additional_info, history, task_details}` [doc]; an empty
    array, or a "No Data found" failure, is no ticket. Raises VendorAuthFailed or VendorUnavailable (an answer
    holding more objects than a look-up reads among them, `too_many_containers`)."""
    parsed = decode_lookup(body, "the ticket look-up's answer",
                           lambda reason: VendorUnavailable(f"the ticket look-up failed: {reason}"))
    if 200 <= status < 300 and isinstance(parsed, list):
        return [t for t in parsed if isinstance(t, dict)]
    outcome, _ = read_answer(status, {}, body, lambda _: parsed)  # decoded once, above
    if outcome.classification == "auth":
        raise VendorAuthFailed(f"the ticket look-up was refused: {outcome.error}")
    if "no data found" in (outcome.error or "").lower():
        return []
    raise VendorUnavailable(f"the ticket look-up failed: {outcome.error or 'an answer that is not a list'}")


def _holds_tickets(body: bytes, status: int) -> bool:
    """Whether a get-by-id answer holds a ticket (`read_tickets`), what it built freed where it is read
    (`release`)."""
    tickets = read_tickets(status, body)
    held = bool(tickets)
    release(tickets)
    return held


def check_callback_time(value: Any) -> None:
    """Refuse a `callback_time` Kapture would reject ("Invalid Format."), before it is sent."""
    if blank(value):
        return  # the documented body sends "" for no callback
    if isinstance(value, str):
        try:
            datetime.strptime(value, CALLBACK_FORMAT)
            return
        except ValueError:
            pass
    raise MappingError(f"{value!r} is not a date and time in Kapture's format yyyy-MM-dd HH:mm:ss "
                       f"(e.g. {CALLBACK_EXAMPLE!r})", path="callback_time")


class KaptureAdapter(Adapter):
    vendor: ClassVar[str] = "kapture"
    Options: ClassVar[type[DestinationConfig]] = KaptureOptions
    actions: ClassVar[frozenset[str]] = frozenset(PATHS)

    @classmethod
    def static_check(cls, action: str, fields: list[str], options: Mapping[str, Any]) -> list[str]:
        problems = [f"{name}: kapture {action} needs a `{name}` field"
                    for name in REQUIRED.get(action, ()) if name not in fields]
        for key, value in options.items():
            allowed = MAPPING_OPTIONS.get(key)
            if allowed is None:
                problems.append(f"options.{key}: unknown Kapture option; known: {', '.join(MAPPING_OPTIONS)}")
            elif value not in allowed:
                problems.append(f"options.{key}: {value!r} is not one of {', '.join(allowed)}")
        return problems

    pull_paged: bool = False
    """The account answered a pull without `limit` by asking for it: pull page by page from then on."""

    def __init__(self, name: str, config: DestinationConfig, base_url: str | Callable[[], str], *,
                 attachments_dir: Path | None = None) -> None:
        super().__init__(name, config, base_url, attachments_dir=attachments_dir)
        assert isinstance(config, KaptureOptions)
        self.options = config  # typed once, not looked at again on each of an attempt's reads

    limit_is_size: bool = False
    """The account showed its pull reads `limit` as a page size (pages repeat): page by `offset` from then on."""
    pull_as_object: bool = False
    """The account refused the documented array body of a pull ("object format"): send an object from then on."""

    @property
    def token(self) -> str:
        """The destination's `token`; a sandbox's is always the simulator's demo key."""
        return SANDBOX_TOKEN if self.options.sandbox else self.options.token

    def token_for(self, operation: Operation) -> str:
        """The Auth Key of `operation` (`tokens.<op>`), else the destination's `token` (a sandbox: the demo key)."""
        if self.options.sandbox:
            return SANDBOX_TOKEN
        return getattr(self.options.tokens, operation) or self.token

    def headers_for(self, operation: Operation) -> dict[str, str]:
        return {"Authorization": f"Basic {self.token_for(operation)}", "Content-Type": "application/json"}

    @property
    def headers(self) -> dict[str, str]:
        """The headers of a pull (the `kapture pull` verb's and reconciliation's call)."""
        return self.headers_for("pull")

    def build_request(self, action: str, fields: dict[str, Any], options: Mapping[str, Any],
                      ticket: Mapping[str, Any] | None = None) -> VendorRequest:
        path = PATHS.get(action)
        if path is None:
            raise MappingError(f"kapture has no action {action!r}; it takes: {', '.join(sorted(PATHS))}")
        for name in REQUIRED[action]:
            if blank(fields.get(name)):
                raise MappingError(f"kapture {action} needs a non-empty `{name}`", path=name)
        item, files = split_files(fields)
        self.note_files(item, files, TEXT_FIELDS[action], sent=False)
        if action == "update_ticket":
            check_callback_time(fields.get("callback_time"))
            # Documented as a string; a follow-up's ticket supplies it when the mapping does not.
            item["ticket_id"] = ticket_id_from(fields, ("ticket_id",), ticket, "kapture")
        shape = options.get("body", "array")
        return VendorRequest(method="POST", url=self.base_url + path, headers=self.headers_for(OPERATIONS[action]),
                             body=msgspec.json.encode(item if shape == "object" else [item]))

    def ticket_id_at(self, action: str) -> str | None:
        return "ticket_id (or Ticket Id, ticket.ticketId)" if action == "create_ticket" else None

    def reconciles(self, action: str) -> bool:
        return action == "create_ticket" and bool(self.options.reference_field)

    async def find(self, action: str, fields: dict[str, Any], since_ms: int, call: Call) -> Found | None:
        # Imported here: the pull module builds on this one.
        from bridge.vendors.kapture_pull import find_created  # noqa: PLC0415
        return await find_created(self, fields, since_ms, call)

    def get_request(self, ticket_ids: list[str]) -> VendorRequest:
        """`search-ticket-by-ticket-id`: an object (an array gets "Invalid Json.") with the ids comma-separated."""
        return VendorRequest(method="POST", url=self.base_url + GET_PATH, headers=self.headers_for("get"),
                             body=msgspec.json.encode({"ticket_ids": ",".join(ticket_ids)}))

    async def get_tickets(self, ticket_ids: list[str], call: Call) -> list[dict[str, Any]]:
        """The tickets Kapture holds of `ticket_ids`, each `{additional_info, history, task_details}`; raises
        VendorUnavailable or VendorAuthFailed when the call fails."""
        status, body = await call(self.get_request(ticket_ids))
        return await read_answer_off_loop(lambda answer: read_tickets(status, answer), body)

    async def ticket_exists(self, ticket_id: str, call: Call) -> bool | None:
        if not self.options.check_ticket:
            return None
        status, body = await call(self.get_request([ticket_id]))
        return await read_answer_off_loop(_holds_tickets, body, status)

    def classify(self, action: str, status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
        outcome, parsed = read_answer(status, headers, body)
        if outcome.classification == "success" and isinstance(parsed, dict):
            return succeeded(ticket_id_of(parsed))
        return outcome
